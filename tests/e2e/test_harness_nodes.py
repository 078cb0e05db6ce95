"""The test harness's nodes (tests/e2e/harness.py) behave as a deployment's processes do."""

from __future__ import annotations

import pytest

from tests.e2e.harness import collect, start_node

pytestmark = [pytest.mark.parametrize("stack_kind", ["embedded", "production"])]


async def test_stopping_one_node_of_a_deployment_leaves_the_shared_data_dir_to_the_other(node_config):
    """The harness itself: nodes of one deployment share a data dir (keys, runs); stopping one removed it from
    under the other (its next run found no keys dir and no run dir)."""
    a = await start_node(node_config, workers=False)
    b = await start_node(node_config)
    try:
        await a.stop()
        assert (node_config.data_dir / "keys").is_dir()
        tid, key = await b.tenant()
        r = await b.client(key).post("/v1/runs", json={"bundle": "echo", "input": "still here"})
        assert r.status_code == 201, r.text
        assert [e.event for e in await collect(b.client(key), r.json()["id"])][-1] == "run.completed"
    finally:
        await b.stop()
    assert not node_config.data_dir.exists()  # the last one out removes it


async def test_a_node_whose_server_task_ended_cancelled_still_stops_whole(node_config):
    """uvicorn's shutdown under load can leave the serve task cancelled: stop() raised CancelledError (no
    suppress(Exception) takes it) and left the runtime running, failing the test in its teardown."""
    import asyncio

    node = await start_node(node_config)
    node.task.cancel()
    await asyncio.wait({node.task})
    assert node.task.cancelled()
    await asyncio.wait_for(node.stop(), 30)
    assert node.rt.stop_event.is_set()
    assert not node_config.data_dir.exists()
