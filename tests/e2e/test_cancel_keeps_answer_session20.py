"""A run canceled mid-answer keeps what it answered (session 20), on both stacks.

Was: an API cancel ends the run in the API process, which never saw its answer, so the run's ``output``
stayed null - while a failed or timed-out run keeps its partial answer. The next turn of the conversation
got the question without the answer the user had read, and ``GET /v1/runs/{id}`` showed nothing of it.
Now the worker, told of the end, stores the answer it streamed until then (only where none is stored).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.harness import collect, read_sse

pytestmark = pytest.mark.timeout(120)

TEST_BUNDLES = Path(__file__).parent / "bundles"


async def _start(client, bundle: str, text: str, **extra) -> dict:
    r = await client.post("/v1/runs", json={"bundle": bundle, "input": text, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def _cancel_after_first_answer(client, run_id: str) -> None:
    async with asyncio.timeout(60):
        async for e in read_sse(client, f"/v1/runs/{run_id}/events"):
            if e.event == "message.delta" and e.data["channel"] == "answer":
                break
        r = await client.post(f"/v1/runs/{run_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        events = await collect(client, run_id)
        assert events[-1].event == "run.canceled"
        # the receipt waits until the worker that carried the run has recorded all of it
        assert (await client.get(f"/v1/runs/{run_id}/receipt")).status_code == 200


async def test_a_canceled_run_keeps_its_partial_answer_as_output_and_in_the_conversation(node):
    tid, key = await node.tenant()
    for name in ("sleeper", "historian"):
        await node.rt.registry.register_dir(TEST_BUNDLES / name, tid)
    c = node.client(key)
    run = await _start(c, "sleeper", "60", conversation_id="stopped")
    await _cancel_after_first_answer(c, run["id"])
    got = (await c.get(f"/v1/runs/{run['id']}")).json()
    assert got["status"] == "canceled" and got["output"] == "started"
    async with asyncio.timeout(60):
        nxt = await _start(c, "historian", "what came before?", conversation_id="stopped")
        events = await collect(c, nxt["id"])
    assert events[-1].event == "run.completed", events[-1].data
    answer = "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")
    assert [t[:2] for t in json.loads(answer)["turns"]] == [["user", "60"], ["assistant", "started"]]


async def test_a_run_canceled_before_it_answered_keeps_no_output(node):
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "ticker", tid)
    c = node.client(key)
    run = await _start(c, "ticker", json.dumps({"wait": 60, "n": 1}))
    async with asyncio.timeout(60):
        async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
            if e.event == "run.started":
                break
        assert (await c.post(f"/v1/runs/{run['id']}/cancel")).status_code == 200
        assert (await c.get(f"/v1/runs/{run['id']}/receipt")).status_code == 200
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["output"] is None
