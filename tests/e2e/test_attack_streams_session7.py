"""Hostile clients and hostile event content against the run streams (SSE and Socket.IO), on both stacks.

Runs are idle runs fed by a RunEmitter (what a worker does for a bundle's events), so every event and
its timing are the test's own; the streams are read through real HTTP / a real Socket.IO client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
import socketio

from supervisor.events import RunEmitter
from tests.e2e.harness import collect, idle_runs, read_sse
from tests.e2e.test_socketio import forwarding

pytestmark = pytest.mark.timeout(90)


async def _live_run(node) -> tuple[str, str, str, RunEmitter]:
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    return tid, key, run_id, RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)


# --- content: what a bundle puts in an event cannot break the stream's framing

LINE_BREAKERS = "a\u2028b\u2029c\x85d\r\ne\rf\ng\x0bh\x0ci\x1cj\x1dk\x1el"


async def test_unicode_line_separators_in_event_text_do_not_split_sse_lines(node):
    """U+2028/U+2029/U+0085 went out raw (``ensure_ascii=False``): a client splitting lines the way Python's
    ``str.splitlines`` (httpx ``aiter_lines``) does cut the data line in two and could not parse the event."""
    _, key, run_id, emitter = await _live_run(node)
    await emitter.emit("message.delta", {"channel": "answer", "text": LINE_BREAKERS})
    await emitter.emit("custom", {"name": LINE_BREAKERS, "data": {LINE_BREAKERS: [LINE_BREAKERS]}})
    await emitter.finish("succeeded", {})
    c = node.client(key)
    async with c.stream("GET", f"/v1/runs/{run_id}/events") as resp:
        raw = (await resp.aread()).decode()
    for ch in ("\u2028", "\u2029", "\x85"):
        assert ch not in raw, repr(ch)
    events = await collect(c, run_id)  # the harness reads lines with httpx aiter_lines (splitlines)
    assert [e.event for e in events] == ["message.delta", "custom", "run.completed"]
    assert events[0].data["text"] == LINE_BREAKERS
    assert events[1].data["data"] == {LINE_BREAKERS: [LINE_BREAKERS]} and events[1].data["name"] == LINE_BREAKERS


# --- resume: exactly the missed events, then the live tail, while the run is emitting


def _shrink_live_log(node, n: int) -> None:
    """Make the bus keep only ``n`` recent events per run here, so lagging tails take the store's gap path."""
    bus = node.rt.services.events
    for attr in ("_max_per_run", "_local_max"):  # memory bus / Redis bus (its process-local log)
        if hasattr(bus, attr):
            setattr(bus, attr, n)


@pytest.mark.parametrize("small_log", [False, True], ids=["bus", "gaps"])
async def test_resume_while_the_run_emits_has_no_gap_and_no_duplicate(node, small_log):
    """Readers start at many cursors and hang up every few events, resuming with Last-Event-ID, while the run
    emits 400 events of mixed sizes (some past a write's 64 KB when joined); with a tiny live log the tails
    fall behind it and fill the gaps from the store, in fitted pages. Every reader gets each event once."""
    if small_log:
        _shrink_live_log(node, 8)
    _, key, run_id, emitter = await _live_run(node)
    c = node.client(key)
    n = 400

    async def produce() -> None:
        for i in range(n):
            await emitter.emit("message.delta", {"channel": "answer", "text": f"{i}:" + "z" * (i % 7) * 3000})
            if i % 10 == 0:
                await asyncio.sleep(0)  # let the readers in
        await emitter.finish("succeeded", {})

    async def reader(start: int, hop: int) -> list[int]:
        got: list[int] = []
        cursor = start
        while True:
            path = f"/v1/runs/{run_id}/events"
            batch = [e async for e in read_sse(c, path, headers={"Last-Event-ID": str(cursor)}, stop_after=hop)]
            assert all(e.id == e.data["seq"] for e in batch)
            got += [e.id for e in batch]
            if batch:
                cursor = batch[-1].id
                if batch[-1].event == "run.completed":
                    return got

    producer = asyncio.create_task(produce())
    async with asyncio.timeout(80):
        results = await asyncio.gather(*(reader(start, hop) for start, hop in
                                         ((0, 7), (0, 1000), (5, 50), (50, 13), (123, 3), (300, 100))))
        await producer
    for (start, _), got in zip(((0, 7), (0, 1000), (5, 50), (50, 13), (123, 3), (300, 100)), results, strict=True):
        assert got == list(range(start + 1, n + 2)), (start, got[:5], len(got))


# --- the cursor: Last-Event-ID and ?after= are hostile input

BAD_LAST_EVENT_IDS = [
    "-1",  # negative
    "1e9",  # a float spelling
    "abc",  # not a number
    "0x10",  # hex
    "+5",  # signed
    "1.0",  # decimal
    b"\xb2",  # superscript two (latin-1): isdigit() is true, int() fails
    "\u0663".encode(),  # an Arabic-Indic digit, sent as UTF-8
    str(2**63),  # past bigint: no store can compare it
    "9" * 5000,  # a huge number: int() of it raised ValueError (over 4300 digits), a 500
    "1, 2",  # two values folded into one header
]


async def test_bad_last_event_ids_get_a_clear_422_and_no_stream(node):
    _, key, run_id, emitter = await _live_run(node)
    await emitter.emit("run.started", {})
    c = node.client(key)
    for bad in BAD_LAST_EVENT_IDS:
        r = await c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": bad})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", (bad, r.status_code, r.text[:200])
    for bad in ("-1", "1e9", "abc", str(2**63), "1.5", "", "9" * 5000):
        r = await c.get(f"/v1/runs/{run_id}/events", params={"after": bad})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", (bad, r.status_code, r.text[:200])


async def test_last_event_id_edges_resume_exactly(node):
    """Leading zeros are the number; the header wins over ?after= (it is what an
    EventSource sends on reconnect); an id as large as any store holds on a live run is a quiet, open stream;
    two headers are refused (tests/e2e/test_sse_cursor_budget_audit_session21.py)."""
    _, key, run_id, emitter = await _live_run(node)
    for i in range(5):
        await emitter.emit("message.delta", {"channel": "answer", "text": str(i)})
    await emitter.finish("succeeded", {})
    c = node.client(key)
    for headers, query, first in (({"Last-Event-ID": "003"}, "", 4), ({"Last-Event-ID": "2"}, "", 3),
                                  ({"Last-Event-ID": "1"}, "?after=4", 2), ({}, "?after=0", 1)):
        got = [e async for e in read_sse(c, f"/v1/runs/{run_id}/events{query}", headers=headers)]
        assert [e.id for e in got] == list(range(first, 7)), (headers, query)
    r = await c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(2**63 - 1)})
    assert r.status_code == 204


async def test_another_tenants_run_streams_like_a_missing_one(node):
    """Same status, same code, same wording (but the id) whether the run is another tenant's or does not exist;
    a bad cursor changes nothing about that (no 422 to tell them apart)."""
    _, _, run_id, emitter = await _live_run(node)
    await emitter.emit("run.started", {})
    _, key_b = await node.tenant()
    b = node.client(key_b)
    missing = "run_" + "0" * 24
    for headers in ({}, {"Last-Event-ID": "abc"}, {"Last-Event-ID": "1"}):
        theirs = await b.get(f"/v1/runs/{run_id}/events", headers=headers)
        none = await b.get(f"/v1/runs/{missing}/events", headers=headers)
        assert theirs.status_code == none.status_code == 404, headers
        t, n = theirs.json(), none.json()
        assert t["code"] == n["code"] == "not_found"
        assert t["detail"].replace(run_id, "X") == n["detail"].replace(missing, "X")
        assert set(t) == set(n)


# --- Socket.IO: hostile payloads and events


class _RawJSON:
    """A json module for the Socket.IO client that can put raw text (deep nesting, huge numbers) on the wire."""

    RAW = "\x00raw\x00"

    def __init__(self, raw: str) -> None:
        self.raw = raw

    def dumps(self, obj, **kw):  # noqa: ANN001, ANN201
        return json.dumps(obj, **kw).replace(json.dumps(self.RAW), self.raw)

    def loads(self, s, **kw):  # noqa: ANN001, ANN201
        return json.loads(s, **kw)


async def _sio(node, key: str, raw: str = "null") -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False, json=_RawJSON(raw))
    await client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
    return client


@pytest.mark.parametrize("raw", [
    "9" * 5000,  # a cursor too long for int(): json.loads raises ValueError while decoding the packet
    "1" + "0" * 400,  # a cursor far past bigint, short enough to parse
    "[" * 50_000 + "]" * 50_000,  # nesting past the recursion limit: RecursionError in the packet decoder
    "1e999",  # a float that parses to inf
    "NaN",  # not JSON, but Python's json takes it
])
async def test_socketio_hostile_json_in_a_subscribe_leaves_the_node_serving(node, raw):
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    client = await _sio(node, key, raw)
    try:
        try:
            ack = await client.call("subscribe", {"run_id": run_id, "after": _RawJSON.RAW}, timeout=5)
        except socketio.exceptions.TimeoutError:
            ack = None  # a packet the server cannot decode is dropped: no answer, the node goes on
        assert ack is None or (ack["ok"] is False and ack["code"] == "input.invalid"), ack
    finally:
        await client.disconnect()
    # the node and this key still work, on a fresh connection and over REST
    ok = await _sio(node, key)
    try:
        assert await ok.call("subscribe", {"run_id": run_id}, timeout=10) == {"ok": True}
    finally:
        await ok.disconnect()
    assert (await node.client(key).get(f"/v1/runs/{run_id}")).status_code == 200


SERVER_ONLY = ["run_event", "run_end", "error", "connect_error", "message", "*", "", "subscribe\x00", "SUBSCRIBE"]


async def test_socketio_server_only_and_odd_event_names_are_refused(node):
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    client = await _sio(node, key)
    try:
        for name in SERVER_ONLY:
            ack = await client.call(name, {"run_id": run_id, "seq": 1, "type": "run.completed"}, timeout=10)
            assert ack == {"ok": False, "code": "input.invalid", "message": "unknown event: use subscribe or unsubscribe"}, name
        for payload in ({"run_id": run_id, "after": 1.0}, {"run_id": run_id, "after": True}, {"run_id": run_id, "after": "1"},
                        {"run_id": [run_id]}, {"run_id": {"$ne": None}}, {"run_id": run_id.upper()}, {"run_id": " " + run_id}):
            ack = await client.call("subscribe", payload, timeout=10)
            assert ack["ok"] is False and ack["code"] in ("input.invalid", "not_found"), (payload, ack)
        assert client.connected
        assert forwarding() == []
    finally:
        await client.disconnect()


async def test_socketio_a_flood_of_subscribes_and_unsubscribes_ends_as_last_asked(node):
    """Twenty rounds of subscribe/unsubscribe over 70 runs, all sent without waiting for an ack: at the end
    exactly the runs whose last word was subscribe are forwarded (at most 64), and nothing after the
    disconnect."""
    tid, key = await node.tenant()
    runs = await idle_runs(node, tid, 70)
    client = await _sio(node, key)
    acks: asyncio.Queue = asyncio.Queue()
    sent = 0
    try:
        for round_ in range(20):
            for i, run_id in enumerate(runs):
                subscribe = (i + round_) % 3 != 0 if round_ < 19 else i % 2 == 0  # last round: the even ones
                await client.emit("subscribe" if subscribe else "unsubscribe", {"run_id": run_id},
                                  callback=lambda *a: acks.put_nowait(a))
                sent += 1
        async with asyncio.timeout(60):
            for _ in range(sent):
                await acks.get()
        for _ in range(1000):  # a replaced subscription's task is cancelled, and ends in its own time (a query
            if len(forwarding()) <= 35:  # cancelled on PostgreSQL takes a round trip): wait for it, boundedly
                break
            await asyncio.sleep(0.01)
        assert len(forwarding()) == 35
    finally:
        await client.disconnect()
    for _ in range(1000):  # the server handles the disconnect in this loop: wait for it, boundedly
        if not forwarding():
            break
        await asyncio.sleep(0.01)
    assert forwarding() == []


async def test_socketio_an_unsubscribe_sent_after_a_subscribe_wins(node, monkeypatch):
    """Each event is handled in its own task: an ``unsubscribe`` sent while the ``subscribe`` before it was
    still looking the run up was handled first (nothing to cancel yet), then the subscription started anyway:
    the client, unsubscribed by its last word, kept receiving the run. Likewise a second subscribe (a resume
    from an earlier cursor) overtaken by the first one's late lookup: the stale cursor won, the client had a gap."""
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    for i in range(4):
        await emitter.emit("message.delta", {"channel": "answer", "text": str(i)})
    runs = node.rt.services.runs
    real = runs.get_run
    held, release = asyncio.Event(), asyncio.Event()
    hold_next = [True]

    async def slow_first(*args, **kwargs):  # the first lookup is overtaken by the ones sent after it
        if hold_next[0]:
            hold_next[0] = False
            held.set()
            await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(runs, "get_run", slow_first)
    client = await _sio(node, key)
    events: list[dict] = []
    got = asyncio.Event()

    def on_event(data: dict) -> None:
        events.append(data)
        got.set()

    client.on("run_event", on_event)
    try:
        first = asyncio.create_task(client.call("subscribe", {"run_id": run_id}, timeout=10))
        await held.wait()
        assert await client.call("unsubscribe", {"run_id": run_id}, timeout=10) == {"ok": True}
        release.set()
        await first
        assert forwarding() == []  # the last word was unsubscribe
        # subscribe from 3, then (a resume from earlier) from 1: the later request is the one that holds
        hold_next[0] = True
        held.clear()
        release.clear()
        late = asyncio.create_task(client.call("subscribe", {"run_id": run_id, "after": 3}, timeout=10))
        await held.wait()
        assert await client.call("subscribe", {"run_id": run_id, "after": 1}, timeout=10) == {"ok": True}
        release.set()
        await late
        last = (await emitter.emit("message.delta", {"channel": "answer", "text": "x"})).seq
        async with asyncio.timeout(10):
            while not events or events[-1]["seq"] < last:
                got.clear()
                await got.wait()
        assert [e["seq"] for e in events] == list(range(2, last + 1))
    finally:
        await client.disconnect()


# --- slow consumers: what the server holds for a client that never reads


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


async def _stalled_stream(node, key: str, run_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SSE request whose client reads the first event's bytes, then nothing more (a tiny receive window)."""
    import socket

    host, port = node.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\nid: 1\n")  # the server has read its first page and written its first bytes
    return reader, writer


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the API process's own memory: one stack shows it
async def test_sse_streams_that_are_never_read_hold_little_memory(node):
    """A run of 8 MB of output, and 20 SSE streams of it whose clients never read: each stream joined the whole
    replay page (1,000 events) into one write and handed it to the transport, holding the page, its frames
    and the write, ~25 MB per stream (500 MB here; any key holder could open them by the thousand). Now a
    stream holds one write of ~64 KB and one page of ~1 MB. A reader of the same run meanwhile gets it all."""
    tid, key, run_id, emitter = await _live_run(node)
    text = "x" * 65_536
    for _ in range(128):
        await emitter.emit("message.delta", {"channel": "answer", "text": text})
    c = node.client(key)
    first = [e async for e in read_sse(c, f"/v1/runs/{run_id}/events", stop_after=128)]
    assert [e.id for e in first] == list(range(1, 129))
    before = _rss_mb()
    stalled = [await _stalled_stream(node, key, run_id) for _ in range(20)]
    try:
        grown = _rss_mb() - before
        assert grown < 100, f"20 stalled streams of an 8 MB run hold {grown:.0f} MB"
        # the run goes on, and a client that reads gets every event through the end
        await emitter.emit("message.delta", {"channel": "answer", "text": "live"})
        await emitter.finish("succeeded", {})
        got = await collect(c, run_id, after=120)
        assert [e.id for e in got] == list(range(121, 131)) and got[-1].event == "run.completed"
    finally:
        for _, w in stalled:
            w.close()


def _awaits(task: asyncio.Task) -> list[str]:
    """The chain of coroutines a task is suspended in, outermost first."""
    names, c = [], task.get_coro()
    while c is not None:
        names.append(getattr(c, "__qualname__", type(c).__name__))
        c = getattr(c, "cr_await", None) or getattr(c, "ag_await", None)
    return names


async def _raw_websocket(node, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """A Socket.IO client over a WebSocket made by hand (wsproto), connected; it reads only when told to."""
    import socket

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Message, Request, TextMessage

    host, port = node.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the kernel holds little
    sock.connect((host, int(port)))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host=host, target="/socket.io/?EIO=4&transport=websocket")))
    got: list[str] = []

    async def until(n: int) -> None:  # read until n text messages have arrived
        while len(got) < n:
            ws.receive_data(await reader.read(4096))
            for ev in ws.events():
                if isinstance(ev, TextMessage):
                    got.append(ev.data)
                elif isinstance(ev, Message):
                    raise AssertionError(ev)
                elif not isinstance(ev, AcceptConnection):
                    raise AssertionError(ev)

    await until(1)  # Engine.IO open
    writer.write(ws.send(TextMessage("40" + json.dumps({"token": key}))))
    await until(2)  # Socket.IO connect
    assert got[1].startswith("40{"), got

    def send(text: str) -> None:
        writer.write(ws.send(TextMessage(text)))

    return reader, writer, send


async def test_socketio_a_client_that_never_reads_is_not_sent_its_runs_ahead(node):
    """python-socketio queues emits for a connection without bound: a raw WebSocket that subscribed to ten
    runs of 3 MB each and read nothing had every event of all ten queued in the server (30 MB for one
    connection; 64 subscriptions per connection, connections without number). Now a subscription waits
    once the connection has QUEUE_MAX packets its client has not taken."""
    import app.socketio_stream as sio_stream

    tid, key = await node.tenant()
    runs = await idle_runs(node, tid, 10)
    for run_id in runs:
        emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
        for i in range(128):
            await emitter.emit("message.delta", {"channel": "answer", "text": f"{i:04}" + "x" * 24_000})
    _, writer, send = await _raw_websocket(node, key)
    try:
        for i, run_id in enumerate(runs):
            send(f"42{i}" + json.dumps(["subscribe", {"run_id": run_id}]))
        sockets = node.server.config.app.engineio_server.eio.sockets
        async with asyncio.timeout(30):
            while True:  # until every subscription waits for the client, or the queue holds more than it may
                [eio] = sockets.values()
                tasks = forwarding()
                if eio.queue.qsize() > 2 * sio_stream.QUEUE_MAX:
                    break
                if len(tasks) == 10 and all("_taken" in _awaits(t) for t in tasks):
                    break
                await asyncio.sleep(0.01)
        assert eio.queue.qsize() <= sio_stream.QUEUE_MAX + 10, eio.queue.qsize()
    finally:
        writer.close()


# --- what a bundle can make the stream carry


BIG_TOOL_NAMES = """
async def main(ctx):
    for i in range(40):
        try:
            await ctx.call(f"{i:02}" + "n" * 60_000)  # no such tool: refused at once, but announced first
        except Exception:
            pass
    await ctx.answer("done")
"""


@pytest.mark.node_settings(sandbox_max_output_bytes=256 * 1024)
async def test_tool_names_do_not_carry_output_past_the_output_limit(node, tmp_path):
    """The output limit counts what a bundle emits; tool.call / tool.result name the tool as the bundle spelt
    it, whole: forty calls of a 60 KB name wrote 4.8 MB of events (stored, streamed to every subscriber) past
    a 256 KB limit, and one call per frame, without end."""
    tid, key = await node.tenant()
    bundle = tmp_path / "bignames"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text("name: bignames\nversion: '1'\ntools: [echo]\nlimits:\n  timeout_s: 30\n")
    (bundle / "main.py").write_text(BIG_TOOL_NAMES)
    await node.rt.registry.register_dir(bundle, tid)
    c = node.client(key)
    r = await c.post("/v1/runs", json={"bundle": "bignames", "input": ""})
    assert r.status_code == 201, r.text
    events = await collect(c, r.json()["id"])
    size = sum(len(json.dumps(e.data)) for e in events)
    assert size < 256 * 1024, f"{size} bytes of events"
    calls = [e.data for e in events if e.event == "tool.call"]
    assert calls and all(len(e["tool"]) <= 1024 for e in calls)


# --- many streams from one key


@pytest.mark.node_settings(max_streams_per_tenant=4)
async def test_one_tenant_cannot_hold_streams_without_number(node, monkeypatch):
    """No count at all: one key opened SSE streams (and Socket.IO connections of 64 subscriptions each) by the
    ten thousand, each a task, a socket and its buffers. Now a tenant holds max_streams_per_tenant of them on
    a process, SSE and Socket.IO together; the next is refused with a clear 429; another tenant is not
    affected; a closed stream gives its place back."""
    import app.sse

    monkeypatch.setattr(app.sse, "KEEPALIVE_S", 0.05)  # a closed stream is noticed at its next keep-alive
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    c = node.client(key)
    opened = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            resp = await stack.enter_async_context(c.stream("GET", f"/v1/runs/{run_id}/events"))
            assert resp.status_code == 200
            chunks = resp.aiter_bytes()  # kept: a dropped iterator closes the response
            await anext(chunks)  # the stream has started: it holds its place
            opened.append((resp, chunks))
        client = await _sio(node, key)
        stack.push_async_callback(client.disconnect)
        assert await client.call("subscribe", {"run_id": run_id}, timeout=10) == {"ok": True}  # the fourth
        refused = await c.get(f"/v1/runs/{run_id}/events", timeout=httpx.Timeout(10, read=2))
        assert refused.status_code == 429 and refused.json()["code"] == "rate.limited", refused.text
        [other] = await idle_runs(node, tid, 1)
        ack = await client.call("subscribe", {"run_id": other}, timeout=10)
        assert ack["ok"] is False and ack["code"] == "rate.limited", ack
        # a subscription replaced (a resume from another cursor) keeps its place, at the limit too
        assert await client.call("subscribe", {"run_id": run_id, "after": 0}, timeout=10) == {"ok": True}
        # another tenant streams on
        tid_b, key_b = await node.tenant()
        [run_b] = await idle_runs(node, tid_b, 1)
        async with node.client(key_b).stream("GET", f"/v1/runs/{run_b}/events") as resp_b:
            assert resp_b.status_code == 200
        # an unsubscribe gives its place back at once; a closed SSE stream as soon as the server sees it gone
        assert await client.call("unsubscribe", {"run_id": run_id}, timeout=10) == {"ok": True}
        assert await client.call("subscribe", {"run_id": other}, timeout=10) == {"ok": True}
        await opened[0][0].aclose()
        for _ in range(200):  # the server sees the client gone in its own time: wait for it, boundedly
            async with c.stream("GET", f"/v1/runs/{run_id}/events") as again:
                if again.status_code == 200:
                    break
                assert again.status_code == 429
            await asyncio.sleep(0.05)
        assert again.status_code == 200
    for _ in range(600):  # every stream and subscription closed: every place is given back (30 s: a loaded CI)
        if node.rt.stream_slots.held(tid) == 0:
            break
        await asyncio.sleep(0.05)
    assert node.rt.stream_slots.held(tid) == 0


# --- a hostile writer of the live stream (Redis): no crash, and the envelope is the bus's own


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_hostile_entries_on_the_redis_stream_neither_kill_nor_forge_the_envelope(node):
    """An entry whose data is not an object killed every SSE stream tailing the run (``{**data}`` raised a
    TypeError mid-stream); one whose data names ``type``/``seq``/``run_id`` replaced the envelope's own in what
    clients got: a forged ``run.completed`` the web UI took for the end of the run."""
    tid, key, run_id, emitter = await _live_run(node)
    await emitter.emit("run.started", {})
    bus = node.rt.services.events
    stream_key = bus._prefix + run_id
    c = node.client(key)
    tail = [e async for e in read_sse(c, f"/v1/runs/{run_id}/events", stop_after=1)]
    assert [e.id for e in tail] == [1]
    got: list = []
    started = asyncio.Event()

    async def read() -> None:
        async for e in read_sse(c, f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "1"}):
            got.append(e)
            started.set()

    reader = asyncio.create_task(read())
    try:
        await emitter.emit("message.delta", {"channel": "answer", "text": "a"})  # seq 2, through the bus
        async with asyncio.timeout(10):
            await started.wait()
        for text in ("b", "c", "d"):  # the real seq 3, 4 and 5, in the store (a publish would be refused anyway)
            await node.rt.services.runs.append_event(tid, run_id, "message.delta", {"channel": "answer", "text": text})
        for seq, d in ((3, [1, 2]), (4, "text"), (5, {"type": "run.completed", "seq": 99, "run_id": "run_other"})):
            await bus._client.xadd(stream_key, {"e": json.dumps({"t": "message.delta", "d": d, "ts": 1.0})}, id=f"{seq}-0")
        await emitter.finish("succeeded", {})
        async with asyncio.timeout(20):
            await reader
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert [e.id for e in got] == [2, 3, 4, 5, 6]
    assert all(e.data["seq"] == e.id and e.data["run_id"] == run_id for e in got)
    assert [e.data["type"] for e in got] == [e.event for e in got]
    assert [e.event for e in got][-1] == "run.completed" and sum(e.event == "run.completed" for e in got) == 1
