"""Session 24 walkthrough of the Socket.IO stream, with a raw client over a real WebSocket (the python-socketio
client reads everything it is sent) and with the real AsyncClient."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import app.engineio_poll
import app.socketio_stream
from tests.e2e.harness import until
from tests.e2e.test_attack_socketio_session9 import Raw, _server, _tasks

pytestmark = [pytest.mark.timeout(120)]


def _queued(node) -> int:
    """Packets the node's Engine.IO sessions hold for their clients, not taken yet."""
    return sum(s.queue.qsize() for s in _server(node).eio.sockets.values())


async def _send_all(raw: Raw, packets: list[str], sent: list[int]) -> None:
    for p in packets:
        await raw.send(p)
        sent[0] += 1


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_client_that_sends_and_never_reads_gets_no_answers_piled_up(node):
    """Every event is answered (its ack), and python-socketio queued each answer for a client that read
    nothing, without bound: 80,000 events of a few bytes each left ~50,000 answers queued (the rest in the
    kernel's buffers), one more with every event sent. Now the connection is not read while UNREAD_MAX
    packets wait for its client; once it reads, every event it sent is answered, in order."""
    _, key = await node.tenant()
    raw = await Raw.open(node, key, rcvbuf=4096)
    total = 80_000  # their answers, ~95 bytes each, more than the kernel buffers for the socket (4 MB)
    sent = [0]
    sender = asyncio.create_task(_send_all(raw, [f'42{i}["x"]' for i in range(total)], sent))
    try:
        most, still, last = 0, 0, None
        async with asyncio.timeout(60):  # until the client sends no more and the node's queue stands still
            while still < 40:
                now = (sent[0], _queued(node))
                most, still, last = max(most, now[1]), (still + 1 if now == last else 0), now
                await asyncio.sleep(0.05)
        assert most <= app.socketio_stream.UNREAD_MAX + 1, f"{most} answers queued for a client that read nothing"
        async with asyncio.timeout(60):
            while len(raw.acks) < total:
                await raw.read()
        await sender
        assert sorted(raw.acks) == list(range(total))
        assert {a[0]["code"] for a in raw.acks.values()} == {"input.invalid"}
    finally:
        sender.cancel()
        await raw.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_client_that_sends_and_never_reads_is_let_go(node, monkeypatch):
    """The wait for the client to take its answers is bounded: taking none for SEND_TIMEOUT_S drops it, its
    tenant's connection place comes back, and its WebSocket is closed. (Engine.IO read on, answering into a
    queue no writer took from any more, until its ping timeout: ~45 s, however much the client sent.)"""
    monkeypatch.setattr(app.socketio_stream, "SEND_TIMEOUT_S", 1.0)
    tid, key = await node.tenant()
    raw = await Raw.open(node, key, rcvbuf=4096)
    sender = asyncio.create_task(_send_all(raw, [f'42{i}["x"]' for i in range(80_000)], [0]))
    try:
        await until(lambda: not node.rt.socketio_slots.held(tid), 30)
        await until(lambda: not _server(node).eio.sockets, 30)
        # and the connection ends: its handler reads nothing more of it (it read on, for as long as the
        # client sent, up to Engine.IO's ping timeout once it stopped)
        await until(lambda: not _tasks("WebSocketsSansIOProtocol.run_asgi"), 30)
    finally:
        sender.cancel()
        await raw.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_polling_client_that_posts_and_never_polls_gets_no_answers_piled_up(node, monkeypatch):
    """The same over long-polling: POSTs of 16 events each (what Engine.IO takes in one), never a poll, had
    every answer queued: 2,000 POSTs, 32,000 answers. Now a POST waits while UNREAD_MAX packets wait for the
    client, and a client that takes none of them for SEND_TIMEOUT_S is dropped."""
    monkeypatch.setattr(app.socketio_stream, "SEND_TIMEOUT_S", 2.0)
    tid, key = await node.tenant()
    c = node.client()
    r = await c.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    sid = json.loads(r.text[1:])["sid"]
    url = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert (await c.post(url, content="40" + json.dumps({"token": key}))).text == "OK"
    assert (await c.get(url)).text.startswith("40{")
    most = 0
    async with asyncio.timeout(60):
        for n in range(0, 32_000, 16):
            r = await c.post(url, content="\x1e".join(f'42{n + j}["x"]' for j in range(16)))
            most = max(most, _queued(node))
            if r.status_code != 200:
                break
    assert most <= app.socketio_stream.UNREAD_MAX + 16, f"{most} answers queued for a client that never polled"
    assert r.status_code == 400  # the session was dropped
    await until(lambda: not node.rt.socketio_slots.held(tid), 30)
    assert (await c.get(url)).status_code == 400  # and is gone


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
@pytest.mark.parametrize("body", ["6", "4" + "x" * 1_000_001])  # a NOOP packet, a POST too long
async def test_a_post_engineio_refuses_is_answered_and_leaves_nothing_behind(node, monkeypatch, body):
    """Engine.IO closes a polling session whose POST it cannot take, waiting for the client to take the CLOSE
    packet: a client that never polls again never did, so the POST was never answered and its task lived on
    after the client had gone - one byte, before any key, left one more with each session. Now the POST is
    answered (400) within CLOSE_WAIT_S and nothing of it is left."""
    monkeypatch.setattr(app.engineio_poll, "CLOSE_WAIT_S", 1.0)
    async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as c:
        r = await c.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        sid = json.loads(r.text[1:])["sid"]
        r = await c.post(f"/socket.io/?EIO=4&transport=polling&sid={sid}", content=body)
        assert r.status_code == 400
    await until(lambda: not _tasks("RequestResponseCycle.run_asgi") and not _server(node).eio.sockets, 10)
