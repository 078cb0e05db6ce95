"""A key revoked while its streams are open is cut off within app.deps.KEY_RECHECK_S, on both stacks.

Before, authentication happened once per request / connection: an SSE stream or a Socket.IO subscription
of a revoked key kept receiving its run's events until the run ended (an idle run: for ever). Revocation
goes through the product's path (DELETE /v1/keys/{id}); the runs never end on their own (idle runs fed
by a RunEmitter), and another key's stream of the same run keeps streaming throughout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import socketio

import app.deps
from supervisor.events import RunEmitter
from tests.e2e.harness import idle_runs

BOUND_S = 10.0  # far above the shortened interval: a slow CI machine, never a sleep


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch):
    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 0.05)


class Changes:
    """Something filled in the background; ``until`` waits (boundedly) for a condition on it."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def wake(self) -> None:
        self._changed.set()

    async def until(self, cond: Callable[[], bool], timeout: float = BOUND_S) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                if cond():
                    return
                await self._changed.wait()


class Tail(Changes):
    """An SSE stream read in the background: its events (data objects), its comments, whether it ended."""

    def __init__(self, client: httpx.AsyncClient, run_id: str) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.task = asyncio.create_task(self._read(client, f"/v1/runs/{run_id}/events"))
        self.task.add_done_callback(lambda _: self.wake())

    @property
    def ended(self) -> bool:
        return self.task.done()

    async def _read(self, client: httpx.AsyncClient, path: str) -> None:
        async with client.stream("GET", path) as resp:
            assert resp.status_code == 200, await resp.aread()
            cur: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "":
                    if "data" in cur:
                        self.events.append(json.loads(cur["data"]))
                        self.wake()
                    cur = {}
                else:
                    k, _, v = line.partition(":")
                    cur[k] = v[1:] if v.startswith(" ") else v

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _world(node) -> tuple[httpx.AsyncClient, str, str, str, RunEmitter]:
    """Admin client, a viewer key (secret, id) made through the API, and a run that never ends by itself."""
    tid, admin_key = await node.tenant()
    admin = node.client(admin_key)
    made = (await admin.post("/v1/keys", json={"role": "viewer"})).json()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    await emitter.emit("run.started", {})
    return admin, made["api_key"], made["id"], run_id, emitter


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
async def test_sse_stream_of_a_revoked_key_closes_within_the_bound(node, busy):
    """Quiet: the stream waits on its run with nothing to send (the keep-alive is 15 s away). Busy: an
    event every time the doomed stream receives one, so it is never idle (a check on the keep-alive
    tick alone would never run). Either way it closes, naming auth.invalid; the admin's stays open."""
    admin, viewer_key, viewer_id, run_id, emitter = await _world(node)
    doomed, kept = Tail(node.client(viewer_key), run_id), Tail(admin, run_id)
    try:
        await doomed.until(lambda: len(doomed.events) == 1)
        await kept.until(lambda: len(kept.events) == 1)
        assert (await admin.delete(f"/v1/keys/{viewer_id}")).status_code == 200
        async with asyncio.timeout(BOUND_S):
            while busy and not doomed.ended:  # it got the last one: feed it the next, and wait for that
                seen = (await emitter.emit("message.delta", {"channel": "answer", "text": "x"})).seq
                await doomed.until(lambda seen=seen: doomed.ended or len(doomed.events) >= seen)
            await doomed.until(lambda: doomed.ended)
        await doomed.task  # closed cleanly by the server, not failed
        assert doomed.comments[-1] == ": auth.invalid: stream closed"
        assert [e["seq"] for e in doomed.events] == list(range(1, len(doomed.events) + 1))  # delivered stay
        assert (await node.client(viewer_key).get(f"/v1/runs/{run_id}/events")).status_code == 401
        # the valid key's stream of the same run goes on, through the terminal event
        last = (await emitter.emit("message.delta", {"channel": "answer", "text": "after"})).seq
        await kept.until(lambda: len(kept.events) >= last)
        assert not kept.ended
        await emitter.finish("succeeded", {})
        await kept.until(lambda: kept.ended)
        await kept.task
        assert [e["seq"] for e in kept.events] == list(range(1, last + 2))
        assert kept.events[-1]["type"] == "run.completed"
    finally:
        await doomed.close()
        await kept.close()


class Sub(Changes):
    """A Socket.IO connection subscribed to one run, recording what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.ends: list[dict[str, Any]] = []
        self.disconnected = False
        for name, box in (("run_event", self.events), ("error", self.errors), ("run_end", self.ends)):
            self.client.on(name, self._recorder(box))
        self.client.on("disconnect", self._gone)

    def _recorder(self, box: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
        def record(data: dict[str, Any]) -> None:
            box.append(data)
            self.wake()
        return record

    def _gone(self, *args: Any) -> None:
        self.disconnected = True
        self.wake()

    async def open(self, node, key: str, run_id: str) -> None:
        await self.client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
        assert (await self.client.call("subscribe", {"run_id": run_id}, timeout=10)) == {"ok": True}


def _tasks(name: str) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ == name]


async def test_socketio_subscriptions_of_a_revoked_key_stop_with_an_error_then_a_disconnect(node):
    admin, viewer_key, viewer_id, run_id, emitter = await _world(node)
    admin_key = admin.headers["Authorization"].removeprefix("Bearer ")
    doomed, kept = Sub(), Sub()
    try:
        await doomed.open(node, viewer_key, run_id)
        await kept.open(node, admin_key, run_id)
        await doomed.until(lambda: len(doomed.events) == 1)
        await kept.until(lambda: len(kept.events) == 1)
        assert (await admin.delete(f"/v1/keys/{viewer_id}")).status_code == 200
        await doomed.until(lambda: doomed.disconnected)
        assert doomed.errors == [{"code": "auth.invalid", "message": "the API key was revoked", "retryable": False}]
        assert [e["seq"] for e in doomed.events] == [1] and doomed.ends == []  # delivered stay delivered
        # the valid key's subscription of the same run goes on, through the terminal event
        await emitter.emit("message.delta", {"channel": "answer", "text": "after"})
        await emitter.finish("succeeded", {})
        await kept.until(lambda: bool(kept.ends))
        assert [e["seq"] for e in kept.events] == [1, 2, 3] and kept.ends == [{"run_id": run_id, "seq": 3}]
        assert kept.errors == [] and kept.client.connected
        assert [e["seq"] for e in doomed.events] == [1]
    finally:
        await doomed.client.disconnect()
        await kept.client.disconnect()
    for _ in range(200):  # the server handles the disconnects in this loop: wait for them, boundedly
        if not _tasks("_watch_key") and not _tasks("_forward"):
            break
        await asyncio.sleep(0.01)
    assert _tasks("_watch_key") == [] and _tasks("_forward") == []


async def test_streams_of_one_key_share_its_lookups(node, monkeypatch):
    """Twenty SSE streams and five Socket.IO connections of one key, checking it every 20 ms, with shared
    results good for a minute: one store lookup serves them all (before, one lookup per stream per check)."""
    monkeypatch.setattr(app.deps, "key_recheck", lambda: (0.02, 60.0))
    admin, viewer_key, viewer_id, run_id, emitter = await _world(node)
    checks = node.rt.services.key_checks
    finds = Changes()
    finds.n = 0
    real_find = checks.find

    async def counted(*args: Any) -> Any:
        finds.n += 1
        finds.wake()
        return await real_find(*args)

    monkeypatch.setattr(checks, "find", counted)
    before = checks.lookups
    tails = [Tail(node.client(viewer_key), run_id) for _ in range(20)]
    subs = [Sub() for _ in range(5)]
    try:
        for s in subs:
            await s.open(node, viewer_key, run_id)
        await finds.until(lambda: finds.n >= 200)
        assert checks.lookups - before == 1
        assert not any(t.ended for t in tails) and all(s.client.connected for s in subs)
    finally:
        for t in tails:
            await t.close()
        for s in subs:
            await s.client.disconnect()
