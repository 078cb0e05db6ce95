"""A run whose sandbox cannot be set up fails at once, saying so; a long data dir is not such a case.

Found by a walkthrough: with ``STOCKADE_DATA_DIR`` ~90 characters long, every run's socket path passed the
108 bytes of ``sun_path``; binding it raised ``OSError: AF_UNIX path too long``, logged as a traceback, and
the run, already started, sat "running" until the visibility timeout ended it as ``run.worker_lost`` - with
the worker alive and well.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from pathlib import Path

import pytest

import supervisor.runs.worker as worker_mod
from tests.e2e.harness import collect, settings_for, start_node, worker_process, worker_uid_env
from tests.e2e.test_run_pipeline import start


def _long_data_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="stockade-test-"))
    d = base / ("long-" + "d" * 80)
    d.mkdir()
    for p in (base, d):
        os.chmod(p, 0o711)
    return d


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", [0, 1], ids=["cold", "warm"])
async def test_a_long_data_dir_runs_every_run(warm):
    data_dir = _long_data_dir()
    assert len(os.fsencode(data_dir / "runs" / ("run_" + "x" * 20) / "sock" / "stockade.sock")) > 108
    node = await start_node(settings_for("embedded", data_dir, sandbox_warm_pool=warm))
    try:
        _, key = await node.tenant()
        c = node.client(key)
        for bundle in ("echo", "hello-tools"):  # hello-tools calls a tool: the socket carries frames both ways
            events = await collect(c, (await start(c, bundle, "over a long path"))["id"])
            assert events[-1].event == "run.completed", (bundle, events[-1])
    finally:
        await node.stop()


@pytest.mark.timeout(60)
async def test_a_started_run_whose_setup_fails_ends_now_as_failed(node_config, monkeypatch):
    """Any error once the run has started (here: the sandbox spec cannot be built) ends it at once as
    ``run.failed`` / ``internal``, uid and run folder given back; it was requeued, then ended a visibility
    timeout later as a lost worker's run."""
    settings = node_config.model_copy(update={"queue_visibility_s": 30.0})
    node = await start_node(settings)
    try:
        _, key = await node.tenant()
        c = node.client(key)
        broken = True

        def build_spec(*a, **kw):
            if broken:
                raise OSError(28, "No space left on device")
            return real(*a, **kw)

        real = worker_mod.build_spec
        monkeypatch.setattr(worker_mod, "build_spec", build_spec)
        pool = node.rt.services.extras.get("uid_pool")
        in_use = pool.in_use if pool is not None else 0
        run = await start(c, "echo", "x")
        events = await collect(c, run["id"])  # well within one visibility timeout (30 s)
        assert [e.event for e in events] == ["run.started", "run.failed"], events
        assert events[-1].data["code"] == "internal" and "server log" in events[-1].data["message"], events[-1]
        assert "No space" not in str(events[-1].data)  # the operator's detail stays in the operator's log
        assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "failed"
        assert not (settings.data_dir / "runs" / run["id"]).exists()
        if pool is not None:
            assert pool.in_use == in_use
        broken = False
        events = await collect(c, (await start(c, "echo", "y"))["id"])
        assert events[-1].event == "run.completed", events[-1]
        if pool is not None:  # no uid left (a pool smaller than the worker's concurrency): sandbox.unavailable
            for _ in range(500):  # the last run gives its uid back just after its terminal event
                if pool.in_use == in_use:
                    break
                await asyncio.sleep(0.01)
            taken = [pool.acquire() for _ in range(pool.count - pool.in_use)]
            try:
                events = await collect(c, (await start(c, "echo", "z"))["id"])
            finally:
                for uid in taken:
                    pool.release(uid)
            assert events[-1].event == "run.failed" and events[-1].data["code"] == "sandbox.unavailable", events[-1]
            assert "uids" not in str(events[-1].data)
    finally:
        await node.stop()



@pytest.mark.timeout(60)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_second_worker_on_the_same_uid_range_refuses_to_start(node_config, stack_kind):
    """Two `stockade worker`s on one host with the same STOCKADE_SANDBOX_UID_BASE (both left at the default,
    a copied compose service): the second stops at start-up, saying which setting to change; the first goes
    on, and a worker with a range of its own starts."""
    same = worker_uid_env()
    first = worker_process(node_config, uid_env=same)
    try:
        await asyncio.sleep(2)  # the first has claimed its range by now (or has failed: checked below)
        assert first.poll() is None, first.communicate()
        second = worker_process(node_config, uid_env=same)
        _, err = await asyncio.to_thread(second.communicate, timeout=30)
        assert second.returncode != 0, err
        assert "settings.invalid" in err.decode() and "STOCKADE_SANDBOX_UID_BASE" in err.decode(), err
        assert "Traceback" not in err.decode() and len(err.decode().strip().splitlines()) == 1, err
        assert first.poll() is None
        third = worker_process(node_config)  # a range of its own
        try:
            await asyncio.sleep(2)
            assert third.poll() is None, third.communicate()
        finally:
            third.send_signal(signal.SIGTERM)
            await asyncio.to_thread(third.communicate, timeout=20)
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.communicate, timeout=20)
