"""Socket.IO streaming: same events as SSE, replay after N, auth, tenant isolation."""

from __future__ import annotations

import asyncio

import pytest
import socketio

from supervisor.events import RunEmitter
from supervisor.tenancy import create_key
from tests.e2e.harness import collect, idle_runs
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


async def connected(node, key: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
    return client


async def test_socketio_hostile_subscriptions_get_a_clear_ack(node):
    """A NUL in the run id (PostgreSQL raised out of the handler: no ack at all), a lone surrogate (no
    store could encode it: no ack either), no payload or two (TypeError in the handler: no ack), a
    cursor past bigint (the forwarding task died silently), an unknown event (no ack), and a client
    opening subscriptions without end, all at once (the cap was checked before the run lookup's await:
    69 of 200 concurrent subscribes got through on PostgreSQL)."""
    tid, key = await node.tenant()
    runs = await idle_runs(node, tid, 100)
    client = await connected(node, key)
    try:
        for bad in ({"run_id": "run_\x00"}, {"run_id": runs[0], "after": 2**63}, {"run_id": "x" * 65}, ["run"],
                    {"run_id": "run_\ud800"}, None, ({"run_id": runs[0]}, 1)):
            ack = await client.call("subscribe", bad, timeout=10)
            assert ack["ok"] is False and ack["code"] == "input.invalid", (bad, ack)
        ack = await client.call("no-such-event", {"run_id": runs[0]}, timeout=10)
        assert ack["ok"] is False and ack["code"] == "input.invalid"
        acks = await asyncio.gather(*(client.call("subscribe", {"run_id": r}, timeout=20) for r in runs))
        assert sum(a["ok"] for a in acks) == 64
        assert {a["code"] for a in acks if not a["ok"]} == {"input.too_large"}
    finally:
        await client.disconnect()


async def test_socketio_lifecycle_events_from_the_client_change_nothing(node):
    """python-socketio hands a client's *event* named "connect" or "disconnect" to the connection
    handlers: a fake "connect" reset the connection's bookkeeping, so the cap was lifted and the
    subscriptions already open were never cancelled (64 forwarding tasks left after the disconnect);
    a fake "disconnect" cancelled every subscription of a connection that stayed open."""
    tid, key = await node.tenant()
    runs = await idle_runs(node, tid, 65)
    client = await connected(node, key)
    try:
        for r in runs[:64]:
            assert (await client.call("subscribe", {"run_id": r}, timeout=10))["ok"] is True
        for event, args in (("connect", ({}, {"token": key})), ("disconnect", "client")):
            ack = await client.call(event, args, timeout=10)
            assert ack["ok"] is False and ack["code"] == "input.invalid", (event, ack)
            assert client.connected
            ack = await client.call("subscribe", {"run_id": runs[64]}, timeout=10)
            assert ack["code"] == "input.too_large", (event, ack)  # the 64 are still counted, still open
        assert len(forwarding()) == 64
    finally:
        await client.disconnect()
    for _ in range(200):  # the server handles the disconnect in this loop: wait for it, boundedly
        if not forwarding():
            break
        await asyncio.sleep(0.01)
    assert forwarding() == []


def forwarding() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ == "_forward"]


async def test_socketio_a_revoked_key_subscribes_to_nothing_more(node):
    """The key was checked at connect only: a connection opened before revocation kept subscribing to
    every new run of the tenant, for as long as it stayed open, while REST said 401."""
    tid, _ = await node.tenant()
    new = await create_key(node.rt.services, tid, "viewer")
    runs = await idle_runs(node, tid, 2)
    client = await connected(node, new.secret)
    try:
        assert (await client.call("subscribe", {"run_id": runs[0]}, timeout=10))["ok"] is True
        assert await node.rt.services.tenants.revoke_key(tid, new.key.id)
        ack = await client.call("subscribe", {"run_id": runs[1]}, timeout=10)
        assert ack["ok"] is False and ack["code"] == "auth.invalid"
    finally:
        await client.disconnect()


async def test_socketio_resubscribing_mid_run_delivers_each_event_once(node):
    """Two subscriptions of one run on one connection delivered every event twice (events carry no
    subscription id): a new subscribe replaces the old one. Subscribed while the run is mid-stream,
    after=1 delivers 2..end exactly once, replay then live tail, and one run_end; a cursor at the end
    of an ended run gets its run_end at once instead of a subscription open for ever."""
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    await emitter.emit("run.started", {})
    await emitter.emit("message.delta", {"channel": "answer", "text": "a"})
    client = socketio.AsyncClient(reconnection=False)
    events: list[dict] = []
    ends: list[dict] = []
    done = asyncio.Event()
    client.on("run_event", events.append)

    @client.on("run_end")
    def on_end(data):
        ends.append(data)
        done.set()

    await client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
    try:
        assert (await client.call("subscribe", {"run_id": run_id, "after": 2}, timeout=10))["ok"] is True
        assert (await client.call("subscribe", {"run_id": run_id, "after": 1}, timeout=10))["ok"] is True
        await emitter.emit("message.delta", {"channel": "answer", "text": "b"})
        await emitter.finish("succeeded", {})
        await asyncio.wait_for(done.wait(), 20)
        sse = await collect(node.client(key), run_id)
        assert [e["seq"] for e in events] == [2, 3, 4] and events == [e.data for e in sse[1:]]
        assert ends == [{"run_id": run_id, "seq": 4}]
        done.clear()
        assert (await client.call("subscribe", {"run_id": run_id, "after": 4}, timeout=10))["ok"] is True
        await asyncio.wait_for(done.wait(), 10)
        assert ends[-1] == {"run_id": run_id, "seq": 4} and len(events) == 3
        assert (await client.call("unsubscribe", {"run_id": "run_never"}, timeout=10)) == {"ok": True}
    finally:
        await client.disconnect()


@pytest.mark.parametrize("live", [False, True])
async def test_a_polling_client_gets_every_event_of_a_long_run(node, live):
    """Found by a walkthrough: a poll answered every packet queued (up to QUEUE_MAX, 64), and python-socketio's
    client refuses a payload of more than 16 ("Unexpected packet from server"): it dropped the transport and
    reconnected without its subscription - 0 events of a replayed run. A poll now answers at most 16."""
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    await emitter.emit("run.started", {})
    for i in range(150):
        await emitter.emit("message.delta", {"channel": "answer", "text": f"{i} "})
    client = socketio.AsyncClient(reconnection=False)
    events: list[dict] = []
    dropped: list[str] = []
    done = asyncio.Event()
    client.on("run_event", events.append)
    client.on("run_end", lambda data: done.set())
    client.on("disconnect", lambda *reason: dropped.append(str(reason)))
    await client.connect(node.base_url, auth={"token": key}, transports=["polling"], wait_timeout=10)
    try:
        assert (await client.call("subscribe", {"run_id": run_id}, timeout=10))["ok"] is True
        if live:
            for i in range(150, 300):
                await emitter.emit("message.delta", {"channel": "answer", "text": f"{i} "})
        await emitter.finish("succeeded", {})
        await asyncio.wait_for(done.wait(), 30)
        n = 1 + (300 if live else 150) + 1
        assert [e["seq"] for e in events] == list(range(1, n + 1)), (len(events), dropped)
        assert dropped == [] and client.transport() == "polling"
    finally:
        # was: 30 s and more - the server left the client's pending long-poll open after its CLOSE
        await asyncio.wait_for(client.disconnect(), 5)
