"""A Socket.IO client that leaves while its connection is being authenticated leaves nothing behind.

python-socketio calls no ``disconnect`` handler for a client that goes away while its ``connect`` handler
runs (the sid is only pending). Had the handler gone on to register the connection and start its key
watcher, that watcher would look the key up every KEY_RECHECK_S for ever (until the key is revoked), and
any key holder could pile them up by connecting and leaving at once. Over long-polling the CLOSE can
arrive while CONNECT is being handled (two requests); over a WebSocket it cannot (one reader). Today the
handler's ``save_session`` fails for the departed client before anything is registered: this pins it.
"""

from __future__ import annotations

import asyncio
import json

import pytest

import app.socketio_stream

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("stack_kind", ["embedded"])]  # the ASGI layer only


def _tasks(name: str) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ == name]


async def test_dropping_the_socket_while_connecting_leaves_no_key_watcher(node, monkeypatch, caplog):
    tid, key = await node.tenant()
    sio = node.server.config.app.engineio_server
    entered, release = asyncio.Event(), asyncio.Event()
    real = app.socketio_stream.authenticate

    async def held_authenticate(*args, **kwargs):  # the connect handler is mid-way when the client leaves
        entered.set()
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(app.socketio_stream, "authenticate", held_authenticate)
    c = node.client()
    path = "/socket.io/?EIO=4&transport=polling"
    async with asyncio.timeout(10):
        opened = (await c.get(path)).text  # Engine.IO open over long-polling: 0{"sid": ...}
        path += "&sid=" + json.loads(opened[opened.index("{"):])["sid"]
        connecting = asyncio.create_task(c.post(path, content="40" + json.dumps({"token": key})))  # CONNECT + auth
        await entered.wait()
        # Engine.IO CLOSE while it connects; answered once the server has handled the client's leaving
        assert (await c.post(path, content="1")).status_code == 200
        assert not sio.environ, "the server never saw the client leave"
        release.set()
        await connecting
    # the CONNECT request has been answered: its handler is done, and left no watcher behind
    assert _tasks("_watch_key") == [], "a key watcher outlived a connection that never completed"
    # and it is not an error: the handler expects the client may be gone (it logged a KeyError traceback)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert node.rt.socketio_slots.held(tid) == 0  # and it holds no connection place


@pytest.mark.node_settings(max_socketio_connections_per_tenant=3)
async def test_one_tenant_cannot_hold_socketio_connections_without_number(node):
    """Each connection holds a session and a task re-checking its key, subscribed or not; one key opened
    them by the ten thousand (session 7 capped subscriptions, not connections). Now a tenant holds
    max_socketio_connections_per_tenant on a process: the next is refused (connect_error rate.limited),
    another tenant is not affected, and a disconnect gives its place back."""
    import socketio

    tid, key = await node.tenant()
    clients, refusals = [], []

    async def connect(k: str) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False)
        client.on("connect_error", refusals.append)
        await client.connect(node.base_url, auth={"token": k}, transports=["websocket"], wait_timeout=10)
        clients.append(client)
        return client

    try:
        async with asyncio.timeout(30):
            for _ in range(3):
                await connect(key)
            assert node.rt.socketio_slots.held(tid) == 3
            with pytest.raises(socketio.exceptions.ConnectionError) as exc:
                await connect(key)
            assert "failed to connect" in str(exc.value) and refusals == [{"message": "rate.limited"}], refusals
            _, key_b = await node.tenant()
            await connect(key_b)  # another tenant connects
            await clients[0].disconnect()
            for _ in range(1000):  # the server sees it leave in its own time: wait for it, boundedly
                if node.rt.socketio_slots.held(tid) == 2:
                    break
                await asyncio.sleep(0.01)
            await connect(key)
            assert node.rt.socketio_slots.held(tid) == 3
    finally:
        for client in clients:
            if client.connected:
                await client.disconnect()
    for _ in range(3000):  # every place given back
        if node.rt.socketio_slots.held(tid) == 0:
            break
        await asyncio.sleep(0.01)
    assert node.rt.socketio_slots.held(tid) == 0
