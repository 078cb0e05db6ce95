"""Session 10: clients that stop reading. uvicorn has no write deadline: a response its client takes nothing
of waits in ``drain`` for ever, holding its stream place, its task, what it had read from the store and
the connection. The listening sockets now carry TCP_USER_TIMEOUT (``app.server.listen_sockets``): the
kernel resets a connection whose client has taken nothing for ``stall_s``, and whatever waited on it is
let go. These run on a node whose ``stall_s`` is one second (60 s in a real deployment)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from supervisor.events import RunEmitter
from tests.e2e.harness import idle_runs, start_node, until

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("stack_kind", ["embedded"])]  # the HTTP layer only

STALL_S = 1.0


@pytest.fixture
async def stalling_node(node_config):
    n = await start_node(node_config, stall_s=STALL_S)
    try:
        yield n
    finally:
        await n.stop()


async def _big_run(node, tid: str, events: int = 400, size: int = 32_000) -> str:
    """A finished run whose events (12.8 MB) are far more than the kernel buffers for a client on loopback."""
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    for _ in range(events - 1):
        await emitter.emit("message.delta", {"channel": "answer", "text": "x" * size})
    await emitter.finish("succeeded", {})
    return run_id


async def _deaf_client(node, request: bytes) -> socket.socket:
    """A client that sends ``request`` and then reads nothing (a small receive buffer: the kernel would
    otherwise take megabytes for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = node.base_url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, request)
    return sock


def _get(path: str, key: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\n\r\n").encode()


def _gone(node, sock: socket.socket) -> bool:
    """The server holds no connection from ``sock`` any more."""
    port = sock.getsockname()[1]
    return all((getattr(c, "client", None) or ("", 0))[1] != port for c in node.server.server_state.connections)


async def _was_reset(sock: socket.socket) -> bool:
    """Read what the kernel kept for the client: a reset connection ends in ECONNRESET (or at once)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(10):
            while await loop.sock_recv(sock, 65536):
                pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False  # an orderly end: the server wrote everything, which a deaf client cannot have taken


async def test_an_sse_client_that_never_reads_is_cut_off_and_its_stream_place_comes_back(stalling_node):
    node = stalling_node
    tid, key = await node.tenant()
    run_id = await _big_run(node, tid)
    sock = await _deaf_client(node, _get(f"/v1/runs/{run_id}/events", key))
    try:
        await until(lambda: node.rt.stream_slots.held(tid) == 1, 10)  # the stream is open, and stuck
        # before: held for ever (the replay waited in uvicorn's drain); now the kernel resets the connection
        await until(lambda: node.rt.stream_slots.held(tid) == 0, 15)
        await until(lambda: _gone(node, sock), 15)
        assert await _was_reset(sock)
    finally:
        sock.close()


async def test_a_reading_client_is_not_cut_off_however_long_the_stream(stalling_node):
    """The deadline is on progress, not on length: a client that keeps reading gets the whole replay, and a
    stream quiet for longer than stall_s (nothing unacknowledged) stays open."""
    node = stalling_node
    tid, key = await node.tenant()
    run_id = await _big_run(node, tid, events=100)
    c = node.client(key)
    got, last = 0, b""
    async with c.stream("GET", f"/v1/runs/{run_id}/events") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            got, last = got + len(chunk), chunk
    assert got > 99 * 32_000 and b"event: run.completed" in last
    [live] = await idle_runs(node, tid, 1)  # nothing to send for 3 x stall_s: the connection lives on
    async with c.stream("GET", f"/v1/runs/{live}/events") as r:
        assert r.status_code == 200
        await asyncio.sleep(STALL_S * 3)
        emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, live)
        await emitter.emit("message.delta", {"channel": "answer", "text": "still here"})
        async with asyncio.timeout(10):
            async for line in r.aiter_lines():
                if "still here" in line:
                    break
        assert node.rt.stream_slots.held(tid) == 1


async def test_a_socketio_long_poll_that_is_never_read_is_cut_off(stalling_node):
    """Socket.IO over HTTP long-polling (no WebSocket): the client subscribes to a big run, then sends a
    poll and reads nothing of its response. The WebSocket's send deadline (SEND_TIMEOUT_S) does not apply
    to a poll response: the connection stayed, holding what it was sent. Now it is reset."""
    import httpx

    node = stalling_node
    tid, key = await node.tenant()
    run_id = await _big_run(node, tid)
    sio = node.server.config.app.engineio_server
    sio.eio.ping_interval, sio.eio.ping_timeout = 1, 1  # its Engine.IO session ends too: nothing answers pings
    base = "/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as c:
        r = await c.get(base)
        sid = r.text[r.text.index("{"):].split('"sid":"')[1].split('"')[0]
        url = f"{base}&sid={sid}"
        assert (await c.post(url, content='40{"token":"' + key + '"}')).text == "OK"
        assert (await c.get(url)).text.startswith("40{")
        assert (await c.post(url, content='421["subscribe",{"run_id":"' + run_id + '"}]')).text == "OK"
    sock = await _deaf_client(node, f"GET {url} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    try:
        await until(lambda: not node.rt.socketio_slots.held(tid), 20)  # Engine.IO let the session go
        # and the poll response that nobody read: before, its connection stayed (its bytes with it)
        await until(lambda: _gone(node, sock), 20)
        assert await _was_reset(sock)
    finally:
        with contextlib.suppress(OSError):
            sock.close()

