"""Session 9 attacks on the Socket.IO stream, with a raw Engine.IO/Socket.IO client over a real WebSocket
(the python-socketio client cannot send a malformed or hostile packet) and with the real AsyncClient."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import app.socketio_stream
from supervisor.errors import StockadeError
from tests.e2e.harness import until

pytestmark = [pytest.mark.timeout(90)]


class Raw:
    """A Socket.IO client speaking the wire protocol itself: EIO=4 over a WebSocket, namespace "/"."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.acks: dict[int, list] = {}
        self.events: list[tuple[str, list]] = []

    @classmethod
    async def open(cls, node, key: str, *, rcvbuf: int | None = None) -> Raw:
        url = node.base_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        sock = None
        if rcvbuf is not None:  # a small receive buffer: the kernel would take up to tcp_rmem (32 MB) for it
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            host, port = node.base_url.removeprefix("http://").split(":")
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        ws = await ws_connect(url, max_size=None, sock=sock, max_queue=4, compression=None)
        raw = cls(ws)
        assert (await ws.recv()).startswith("0{")  # Engine.IO open
        await ws.send("40" + json.dumps({"token": key}))
        reply = await ws.recv()
        assert reply.startswith("40{"), reply
        return raw

    async def send(self, packet: str | bytes) -> None:
        await self.ws.send(packet)

    async def read(self) -> None:
        """One packet from the server, filed (answers its pings)."""
        msg = await self.ws.recv()
        if msg == "2":
            await self.ws.send("3")
        elif msg == "1":  # Engine.IO CLOSE: the server dropped the connection
            raise ConnectionClosed(None, None)
        elif isinstance(msg, str) and msg.startswith("43"):
            i = 2
            while msg[i].isdigit():
                i += 1
            self.acks[int(msg[2:i])] = json.loads(msg[i:])
        elif isinstance(msg, str) and msg.startswith("42"):
            name, *args = json.loads(msg[2:])
            self.events.append((name, args))

    async def ack(self, n: int) -> list:
        while n not in self.acks:
            await self.read()
        return self.acks[n]

    async def read_whole_run(self, run_id: str, total: int) -> None:
        """Read on until the run's run_end; every one of its ``total`` events came once, in order."""
        async with asyncio.timeout(60):
            while not any(name == "run_end" for name, _ in self.events):
                await self.read()
        seqs = [args[0]["seq"] for name, args in self.events if name == "run_event"]
        assert seqs == list(range(1, total + 1))
        assert [args[0] for name, args in self.events if name == "run_end"] == [{"run_id": run_id, "seq": total}]

    async def close(self) -> None:
        await self.ws.close()


def _server(node):
    return node.server.config.app.engineio_server


def _count_run_events(sio, monkeypatch) -> list[int]:
    """A spy on the server's emit: the list grows by one for each run_event that left for a client."""
    emitted: list[int] = []
    real_emit = sio.emit

    async def counting_emit(event, *args, **kwargs):
        if event == "run_event":
            emitted.append(1)
        return await real_emit(event, *args, **kwargs)

    monkeypatch.setattr(sio, "emit", counting_emit)
    return emitted


def _tasks(name: str) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ == name]


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_binary_attachments_cannot_pile_up_without_bound(node):
    """A BINARY_EVENT header may announce up to 9,999,999,999 attachments; python-socketio keeps every
    binary message that follows in memory until that many have come. One connection could hold as much
    of the server's memory as it cared to send (1 MB a message, for ever). Our events carry JSON only."""
    _, key = await node.tenant()
    sio = _server(node)
    raw = await Raw.open(node, key)
    try:  # a binary payload the API cannot use: a clear answer, nothing kept
        await raw.send('451-1["subscribe",{"run_id":{"_placeholder":true,"num":0}}]')
        await raw.send(b"run_x")
        assert await asyncio.wait_for(raw.ack(1), 10) == [
            {"ok": False, "code": "input.invalid", "message": "send {run_id, after?}"}]
        await raw.send('451000000-2["subscribe",{"run_id":{"_placeholder":true,"num":0}}]')
        blob = b"\0" * 100_000
        with contextlib.suppress(ConnectionClosed):
            for _ in range(50):
                await raw.send(blob)

        def held() -> int:
            return sum(len(a) for p in sio._binary_packet.values() for a in p.attachments)

        for _ in range(1000):  # until the server has read them all, or dropped the connection
            if held() >= 5_000_000 or not sio.environ:
                break
            await asyncio.sleep(0.01)
        assert held() <= 1_000_000, f"{held()} bytes of attachments held for one connection"
        with pytest.raises(ConnectionClosed):  # a protocol violation: the connection is dropped
            await asyncio.wait_for(raw.ack(2), 10)
        assert not sio._binary_packet
    finally:
        await raw.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the handler's bookkeeping: one stack is enough
async def test_one_connection_cannot_pile_up_run_lookups(node, monkeypatch):
    """Each event runs in its own task, and each subscribe looks the key and the run up in the store before
    the subscription cap is checked: one connection sending subscribes without waiting for their acks had
    every one of them in flight at once (tasks, store queries queued on the pool every tenant shares), for
    as many as it cared to send. Now at most MAX_LOOKUPS per connection; the rest are answered at once."""
    _, key = await node.tenant()
    entered, release = [], asyncio.Event()
    real = app.socketio_stream.key_is_live

    async def held_key_is_live(*args, **kwargs):  # the store is slow to answer
        entered.append(1)
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(app.socketio_stream, "key_is_live", held_key_is_live)
    limit = app.socketio_stream.MAX_LOOKUPS
    n = limit + 200
    raw = await Raw.open(node, key)
    try:
        for i in range(n):
            await raw.send(f'42{i}["subscribe",{{"run_id":"run_{i}"}}]')
        async with asyncio.timeout(20):
            while len(entered) + len(raw.acks) < n:  # each one either looks up or is answered
                if len(entered) > limit:
                    break
                try:
                    await asyncio.wait_for(raw.read(), 0.05)
                except TimeoutError:
                    pass
        assert len(entered) <= limit, f"{len(entered)} lookups in flight for one connection"
        assert {a[0]["code"] for a in raw.acks.values()} == {"rate.limited"}
        release.set()
        async with asyncio.timeout(20):
            for i in range(n):
                await raw.ack(i)
        assert sum(a[0]["code"] == "not_found" for a in raw.acks.values()) == len(entered)
        await raw.send('42999999["subscribe",{"run_id":"run_again"}]')  # the places came back
        assert (await asyncio.wait_for(raw.ack(999999), 10))[0]["code"] == "not_found"
    finally:
        await raw.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])
async def test_a_client_that_never_reads_holds_a_bounded_number_of_events(node, monkeypatch):
    """A client subscribes to a run of 32 MB of events and reads nothing: the server must not queue the run
    for it (python-socketio queues every emit without bound). Once it reads, every event comes, once, in
    order, then run_end."""
    from supervisor.events import RunEmitter
    from tests.e2e.harness import idle_runs

    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    text = "x" * 32_000
    total = 1000
    for _ in range(total - 1):
        await emitter.emit("message.delta", {"channel": "answer", "text": text})
    await emitter.finish("succeeded", {})
    emitted = _count_run_events(_server(node), monkeypatch)
    raw = await Raw.open(node, key, rcvbuf=65536)
    try:
        await raw.send('421["subscribe",{"run_id":"' + run_id + '"}]')
        seen = -1
        async with asyncio.timeout(30):
            while seen != len(emitted):  # until the stream stops making progress: it waits for the client
                seen = len(emitted)
                await asyncio.sleep(1.0)
        assert seen < total, "the whole run was queued for a client that read nothing"
        assert seen * len(text) < 16_000_000, f"{seen} events queued for a client that read nothing"
        await raw.read_whole_run(run_id, total)
    finally:
        await raw.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_client_that_never_reads_is_let_go_with_what_it_held(node, monkeypatch):
    """A client that reads nothing is dropped by Engine.IO's ping timeout: its tenant's connection place
    comes back, yet Engine.IO's writer stayed blocked for ever in the WebSocket send (uvicorn waits for
    the transport to drain, without a deadline), holding the batch of events it had taken (up to QUEUE_MAX,
    each up to a page) and the TCP connection: a key holder could pile such connections up without number,
    each place given back. Now a send the client takes nothing of for SEND_TIMEOUT_S drops the WebSocket."""
    from supervisor.events import RunEmitter
    from tests.e2e.harness import idle_runs

    monkeypatch.setattr(app.socketio_stream, "SEND_TIMEOUT_S", 1.0)
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    for _ in range(399):
        await emitter.emit("message.delta", {"channel": "answer", "text": "x" * 32_000})
    await emitter.finish("succeeded", {})
    sio = _server(node)
    sio.eio.ping_interval, sio.eio.ping_timeout = 1, 1  # this node's Engine.IO: let go of silent clients soon
    raw = await Raw.open(node, key, rcvbuf=65536)
    try:
        await raw.send('421["subscribe",{"run_id":"' + run_id + '"}]')
        await until(lambda: not node.rt.socketio_slots.held(tid), 30)  # dropped: its place is back
        # and Engine.IO let go of it: no writer holding packets, no handler, the transport closing (what
        # uvicorn buffered for the socket, up to its high-water mark, waits there for the kernel)
        await until(lambda: not _tasks("AsyncSocket._websocket_handler.<locals>.writer")
                     and not _tasks("WebSocketsSansIOProtocol.run_asgi"), 30)
        assert all(c.transport.is_closing() for c in node.server.server_state.connections)
    finally:
        await raw.close()


@pytest.fixture
def pg_url(fresh_pg_url):
    """Each test its own database: the outage below is confined to it."""
    return fresh_pg_url


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_store_outage_mid_replay_does_not_end_the_subscription_silently(node, monkeypatch):
    """Replay reads the store page by page as the client takes the events. PostgreSQL away between two
    pages (a restart) raised out of the forwarding task, which logged it and ended: no more events, no
    run_end, no error, while the client waited on a subscription that no longer existed. (SSE closes the
    stream and the client resumes with Last-Event-ID.) Now the subscription waits for the store and goes on."""
    from app import deps
    from supervisor.events import RunEmitter
    from tests.e2e.harness import idle_runs
    from tests.e2e.outages import pg_outage

    # the key watcher, which fails closed when the store is away, is not what this test is about: a short
    # outage falls between two of its checks
    monkeypatch.setattr(deps, "KEY_RECHECK_S", 120.0)
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    total = 400
    for _ in range(total - 1):
        await emitter.emit("message.delta", {"channel": "answer", "text": "x" * 32_000})
    await emitter.finish("succeeded", {})
    emitted = _count_run_events(_server(node), monkeypatch)
    raw = await Raw.open(node, key, rcvbuf=65536)
    try:
        await raw.send('421["subscribe",{"run_id":"' + run_id + '"}]')
        seen = -1
        async with asyncio.timeout(30):
            while seen != len(emitted):  # the replay waits for the client, mid-run
                seen = len(emitted)
                await asyncio.sleep(1.0)
        assert seen < total
        async with pg_outage(node.rt.settings.database_url):
            with contextlib.suppress(TimeoutError):
                while True:  # the client takes all there is; the replay needs the next page
                    await asyncio.wait_for(raw.read(), 2.0)
        await raw.read_whole_run(run_id, total)
    finally:
        await raw.close()


async def _run_with_events(node, tid: str, n: int, text: str = "t") -> str:
    from supervisor.events import RunEmitter
    from tests.e2e.harness import idle_runs

    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    for i in range(n - 1):
        await emitter.emit("message.delta", {"channel": "answer", "text": f"{text}{i}"})
    await emitter.finish("succeeded", {})
    return run_id


async def test_leaving_mid_replay_and_coming_back_gives_each_event_once(node):
    """A client leaves after 50 events of a replay, connects again and subscribes after=50: 51..end once
    each, one run_end; meanwhile another tenant, subscribing to its own run and to this one at once on one
    connection, sees its own events only."""
    import socketio

    tid, key = await node.tenant()
    tid_b, key_b = await node.tenant()
    run_a = await _run_with_events(node, tid, 300, "a")
    run_b = await _run_with_events(node, tid_b, 40, "b")

    async def client(k: str, stop_after: int | None = None):
        c = socketio.AsyncClient(reconnection=False)
        events, ends, enough = [], [], asyncio.Event()

        @c.on("run_event")
        async def on_event(data):
            events.append(data)
            if stop_after is not None and len(events) >= stop_after:
                enough.set()

        @c.on("run_end")
        async def on_end(data):
            ends.append(data)
            enough.set()

        await c.connect(node.base_url, auth={"token": k}, transports=["websocket"], wait_timeout=10)
        return c, events, ends, enough

    async with asyncio.timeout(60):
        a, a_events, _, a_enough = await client(key, stop_after=50)
        b, b_events, b_ends, b_enough = await client(key_b)
        acks = await asyncio.gather(a.call("subscribe", {"run_id": run_a}, timeout=10),
                                    b.call("subscribe", {"run_id": run_a}, timeout=10),
                                    b.call("subscribe", {"run_id": run_b}, timeout=10))
        assert [x.get("code") for x in acks] == [None, "not_found", None], acks
        await a_enough.wait()
        await a.disconnect()
        seen = [e["seq"] for e in a_events]
        assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 50
        a2, a2_events, a2_ends, a2_enough = await client(key)
        assert (await a2.call("subscribe", {"run_id": run_a, "after": len(seen)}, timeout=10)) == {"ok": True}
        await a2_enough.wait()
        await b_enough.wait()
        await a2.disconnect()
        await b.disconnect()
    assert [e["seq"] for e in a2_events] == list(range(len(seen) + 1, 301))
    assert a2_ends == [{"run_id": run_a, "seq": 300}]
    assert {e["run_id"] for e in a_events + a2_events} == {run_a}
    assert [e["seq"] for e in b_events] == list(range(1, 41)) and {e["run_id"] for e in b_events} == {run_b}
    assert b_ends == [{"run_id": run_b, "seq": 40}]


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_packet_that_is_no_socketio_packet_drops_the_connection(node, caplog):
    """python-socketio logged a traceback at ERROR for each malformed packet and read on: a few bytes from
    a client bought a 2 KB traceback in the server's log, for as long as it cared to send. Now the first
    one drops the connection (as the reference server does), with one line at INFO."""
    _, key = await node.tenant()
    sio = _server(node)
    for garbage in ('42["subscribe",{', "4x", "49999999999999", b"\xff\x00", '42{"a":1}', "42[]", "42null"):
        raw = await Raw.open(node, key)
        try:
            await raw.send(garbage)
            for _ in range(20):
                with contextlib.suppress(ConnectionClosed):
                    await raw.send('42["subscribe",{"run_id":"run_x"}]')
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(raw.ack(10**6), 10)
        finally:
            await raw.close()
    raw = await Raw.open(node, key)
    try:  # an event whose name is no string is answered like any unknown event
        await raw.send('423[7,{"run_id":"run_x"}]')
        assert (await asyncio.wait_for(raw.ack(3), 10))[0]["code"] == "input.invalid"
    finally:
        await raw.close()
    await until(lambda: not sio.environ, 10)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


DEEP = "[" * 100_000


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_deeply_nested_or_ambiguous_packet_drops_the_connection(node, caplog):
    """Found by an outside-in walkthrough: ``40`` + ``[`` * 100,000 (before the key) or ``42`` + the same
    (after) raised RecursionError in the JSON decoder, which the drop above did not catch: two tracebacks
    in the log per packet and the session left open. And ``{"run_id": "a", "run_id": "b"}`` was read as
    its last key where REST refuses a duplicate key (app/strict_json.py). Each now drops the connection,
    one line at INFO, no traceback."""
    _, key = await node.tenant()
    sio = _server(node)
    c = node.client()
    polling = "/socket.io/?EIO=4&transport=polling"
    # before the key, over long-polling: the session is gone (its next request is refused)
    for packet in ("40" + DEEP, "4" + DEEP, '40{"token":"stk_x","token":' + json.dumps(key) + "}"):
        opened = (await c.get(polling)).text
        path = polling + "&sid=" + json.loads(opened[opened.index("{"):])["sid"]
        await c.post(path, content=packet)
        await until(lambda: not sio.eio.sockets, 10)
        assert (await c.post(path, content="40" + json.dumps({"token": key}))).status_code == 400
    # after it, over a WebSocket
    deep_binary = '451-["subscribe",' + "[" * 900 + '{"_placeholder":true,"num":0}' + "]" * 900 + "]"
    # deeper than MAX_JSON_DEPTH but nowhere near the recursion limit: refused on every Python alike (the 900
    # deep binary one above was read on 3.13, whose recursion limit it did not reach, and refused on 3.11)
    deep_33 = '421["subscribe",' + "[" * 32 + '{"run_id":"run_x"}' + "]" * 32 + "]"
    for packets in (["42" + DEEP], ['421["subscribe",' + DEEP], ["4" + DEEP], [deep_binary, b"x"], [deep_33],
                    ['421["subscribe",{"run_id":"run_x","run_id":"run_y"}]'],
                    ['421["subscribe",{"run_id":"run_x","after":1,"after":2}]']):
        raw = await Raw.open(node, key)
        try:
            for packet in packets:
                await raw.send(packet)
            with contextlib.suppress(ConnectionClosed):
                await raw.send('422["subscribe",{"run_id":"run_x"}]')
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(raw.ack(10**6), 10)
        finally:
            await raw.close()
    await until(lambda: not sio.environ and not sio.eio.sockets, 10)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    raw = await Raw.open(node, key)
    try:  # a payload a little nested but unambiguous is still an answer
        await raw.send('425["subscribe",[[[{"run_id":"run_x"}]]]]')
        assert (await asyncio.wait_for(raw.ack(5), 10))[0]["code"] == "input.invalid"
    finally:
        await raw.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_an_engineio_connection_that_never_authenticates_is_let_go(node, monkeypatch):
    """Engine.IO opens a session for anyone; only the Socket.IO CONNECT carries the key. A client that never
    sent one (or whose CONNECT was refused, or that left the namespace) kept its WebSocket, session and ping
    task for as long as it answered pings - held without a key, counted against no tenant. Now a session
    with no namespace connected for CONNECT_TIMEOUT_S is closed."""
    monkeypatch.setattr(app.socketio_stream, "CONNECT_TIMEOUT_S", 1.0)
    _, key = await node.tenant()
    sio = _server(node)
    sio.eio.ping_interval = 0.5  # pings the clients below answer: alive as far as Engine.IO can tell
    url = node.base_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"

    async def held(ws, *sends: str) -> None:
        assert (await ws.recv()).startswith("0{")
        for packet in sends:
            await ws.send(packet)
        async with asyncio.timeout(15):
            while True:  # answers every ping, until the server closes the connection
                msg = await ws.recv()
                if msg == "2":
                    await ws.send("3")
                elif msg == "1":
                    return

    conns = [await ws_connect(url) for _ in range(3)]
    try:
        await asyncio.gather(held(conns[0]), held(conns[1], '40{"token":"stk_nope"}'),
                             held(conns[2], "40" + json.dumps({"token": key}), "41"))
    finally:
        for ws in conns:
            await ws.close()
    # over long-polling: opened, then never polled again (no CLOSE can be delivered to it)
    c = node.client()
    for body in (None, "40" + json.dumps({"token": "stk_nope"}), "4x"):
        opened = (await c.get("/socket.io/?EIO=4&transport=polling")).text
        if body is not None:
            path = "/socket.io/?EIO=4&transport=polling&sid=" + json.loads(opened[opened.index("{"):])["sid"]
            await c.post(path, content=body)
    await until(lambda: not sio.eio.sockets, 10)
    await until(lambda: not app.socketio_stream._closing, 10)  # nothing left waiting for a client


async def test_a_subscription_the_store_fails_for_good_ends_with_an_error_naming_the_run(node, monkeypatch):
    """A store failure that will not pass (not retryable: here a misconfigured store, injected into the one
    read) ends that one subscription with an ``error`` event naming its run - not silently, and without
    disconnecting: the connection's other subscriptions, and later ones, go on."""
    tid, key = await node.tenant()
    run_id = await _run_with_events(node, tid, 5)
    runs = node.rt.services.runs
    real = runs.events_after

    async def broken(tenant_id, rid, *args, **kwargs):
        if rid == run_id:
            raise StockadeError("store.misconfigured", "relation \"run_events\" does not exist (operator detail)")
        return await real(tenant_id, rid, *args, **kwargs)

    monkeypatch.setattr(runs, "events_after", broken)
    raw = await Raw.open(node, key)
    try:
        await raw.send('421["subscribe",{"run_id":"' + run_id + '"}]')
        async with asyncio.timeout(20):
            while not any(name == "error" for name, _ in raw.events):
                await raw.read()
        [err] = [args[0] for name, args in raw.events if name == "error"]
        assert err["code"] == "store.misconfigured" and err["run_id"] == run_id, err
        assert "operator detail" not in err["message"], err  # the tenant sees the public sentence
        monkeypatch.setattr(runs, "events_after", real)
        await raw.send('422["subscribe",{"run_id":"' + run_id + '"}]')  # the same connection: still served
        async with asyncio.timeout(20):
            while not any(name == "run_end" for name, _ in raw.events):
                await raw.read()
        assert [args[0]["seq"] for name, args in raw.events if name == "run_event"] == [1, 2, 3, 4, 5]
    finally:
        await raw.close()
