"""Socket.IO streaming: same events as SSE, replay after N, auth, tenant isolation."""

from __future__ import annotations

import asyncio

import pytest
import socketio

from tests.e2e.harness import collect
from tests.e2e.test_run_pipeline import start


async def subscribe(node, key: str, run_id: str, after: int = 0, timeout: float = 20.0) -> tuple[dict, list[dict]]:
    client = socketio.AsyncClient(reconnection=False)
    events: list[dict] = []
    done = asyncio.Event()

    @client.on("run_event")
    async def on_event(data):
        events.append(data)

    @client.on("run_end")
    async def on_end(data):
        done.set()

    await client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
    try:
        ack = await client.call("subscribe", {"run_id": run_id, "after": after}, timeout=10)
        if ack.get("ok"):
            await asyncio.wait_for(done.wait(), timeout)
        return ack, events
    finally:
        await client.disconnect()


async def test_socketio_streams_the_same_events_as_sse(node):
    _, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "echo", "alpha beta gamma delta")
    ack, events = await subscribe(node, key, run["id"])
    assert ack == {"ok": True}
    sse = await collect(c, run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events == [e.data for e in sse]
    ack, tail = await subscribe(node, key, run["id"], after=2)
    assert [e["seq"] for e in tail] == [e["seq"] for e in events[2:]]


async def test_socketio_auth_and_isolation(node):
    _, key_a = await node.tenant()
    _, key_b = await node.tenant()
    run = await start(node.client(key_a), "echo", "private")
    ack, events = await subscribe(node, key_b, run["id"])
    assert ack["ok"] is False and ack["code"] == "not_found" and events == []
    ack, _ = await subscribe(node, key_a, run["id"], after=-1)
    assert ack["code"] == "input.invalid"
    bad = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await bad.connect(node.base_url, auth={"token": "stk_nope"}, transports=["websocket"], wait_timeout=5)


async def test_socketio_hostile_subscriptions_get_a_clear_ack(node):
    """A NUL in the run id (PostgreSQL raised out of the handler: no ack at all), a cursor past bigint
    (the forwarding task died silently), and a client opening subscriptions without end."""
    from tests.e2e.test_run_pipeline import push

    tid, key = await node.tenant()
    await push(node, tid, "sleeper")
    c = node.client(key)
    run = await start(c, "sleeper", "30")
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
    try:
        for bad in ({"run_id": "run_\x00"}, {"run_id": run["id"], "after": 2**63}, {"run_id": "x" * 65}, ["run"]):
            ack = await client.call("subscribe", bad, timeout=10)
            assert ack["ok"] is False and ack["code"] == "input.invalid", (bad, ack)
        for _ in range(64):  # the run is live: each subscription stays open
            assert (await client.call("subscribe", {"run_id": run["id"]}, timeout=10))["ok"] is True
        ack = await client.call("subscribe", {"run_id": run["id"]}, timeout=10)
        assert ack["ok"] is False and ack["code"] == "input.too_large"
    finally:
        await client.disconnect()
        await c.post(f"/v1/runs/{run['id']}/cancel")
    assert (await collect(c, run["id"]))[-1].event == "run.canceled"
