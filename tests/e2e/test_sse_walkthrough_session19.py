"""SSE findings of a walkthrough of the run streams (both stacks); each test says what it was before."""

from __future__ import annotations

import asyncio

import pytest

from app import sse
from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from tests.e2e.harness import collect, idle_runs

pytestmark = pytest.mark.timeout(60)


async def _run_with_events(node, n: int):
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    for i in range(n):
        await emitter.emit("custom", {"name": "n", "data": {"i": i}})
    return tid, key, run_id, emitter


async def test_a_replay_the_store_cannot_serve_closes_the_stream_naming_the_code(node, monkeypatch):
    """Was: the store failing mid-replay (PostgreSQL's pool exhausted by ~100 replays at once: its acquire timed
    out) tore the response down mid-chunk (`incomplete chunked read`) with an ERROR traceback in the log. Now the
    stream closes as the live tail's store failures close it: a comment naming the code; the client resumes."""
    _, key, run_id, _ = await _run_with_events(node, 3)
    c = node.client(key)
    runs = node.rt.services.runs
    real = runs.events_after

    async def away(*a, **kw):
        raise StockadeError("store.unavailable", "the store did not answer in time")

    monkeypatch.setattr(runs, "events_after", away)
    async with asyncio.timeout(20):
        async with c.stream("GET", f"/v1/runs/{run_id}/events") as r:
            assert r.status_code == 200
            body = (await r.aread()).decode()
    assert body.endswith(": store.unavailable: stream closed\n\n"), body
    monkeypatch.setattr(runs, "events_after", real)
    # resumed, nothing was lost
    async with asyncio.timeout(20):
        async with c.stream("GET", f"/v1/runs/{run_id}/events") as r:
            got = b""
            async for chunk in r.aiter_bytes():
                got += chunk
                if got.count(b"event: custom") == 3:
                    break
    assert got.count(b"event: custom") == 3


async def test_an_empty_last_event_id_is_no_id(node):
    """Was: 422 - a reconnecting client that forwards an empty id (HTML's EventSource sends none then) failed."""
    _, key, run_id, emitter = await _run_with_events(node, 2)
    await emitter.finish("succeeded", {})
    c = node.client(key)
    for empty in ("",):
        async with asyncio.timeout(20):
            events = await collect(c, run_id, headers={"Last-Event-ID": empty})
        assert [e.id for e in events] == [1, 2, 3], events
    r = await c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 422 and r.json()["code"] == "input.invalid"


def test_a_live_event_is_encoded_once_for_every_stream_of_its_run():
    """200 streams of one run encoded each live event 200 times on the loop that also runs the run."""
    from supervisor.stores.records import Event

    e = Event("run_x", 7, "custom", {"name": "n", "data": {"t": "\u2028"}}, 1.0)
    first = sse._shared_frame(e)
    assert first == sse.encode_event(e) and b"\\u2028" in first
    assert sse._shared_frame(Event("run_x", 7, "custom", {"name": "n", "data": {"t": "\u2028"}}, 1.0)) is first
    for i in range(sse.SHARED_FRAMES + 1):  # bounded
        sse._shared_frame(Event("run_y", i, "custom", {}, 1.0))
    assert len(sse._SHARED) == sse.SHARED_FRAMES and ("run_x", 7) not in sse._SHARED
