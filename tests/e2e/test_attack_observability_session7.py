"""Attacks on what the HTTP stack shows about itself (session 7): /metrics, /readyz, OpenAPI, auth errors.

Finding (fails without its fix): the request metrics were labelled with the request's method as sent,
so a server that passes any method token through (h11, uvicorn's parser without httptools) grew one
counter and one histogram series per invented method, from clients that need no key (app/guard.py).

Attacks that held keep a test: hostile Authorization headers (huge, unknown keys, lookalike digits,
latin-1 bytes, other schemes) are one 401 problem that never echoes the key; /metrics, /readyz and
the OpenAPI document name no tenant, key, data directory, database URL or configured secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path

import pytest

from app.guard import Guard
from app.metrics import Metrics
from supervisor.keys import generate_key
from tests.e2e.harness import collect

pytestmark = pytest.mark.timeout(120)

_SECRETS = dict(openai_api_key="sk-S3CRETopenai-0123456789", anthropic_api_key="sk-ant-S3CRETanthropic-0123",
                secrets_key="S3CRETsecrets-0123456789abcdef")


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_invented_methods_do_not_grow_the_metrics():
    metrics = Metrics()
    guard = Guard(_ok, max_body=1024, metrics=metrics)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    for i in range(500):  # what an h11 server hands the app for "X0..X499 / HTTP/1.1"
        await guard({"type": "http", "method": f"X{i}", "path": "/healthz", "headers": []}, receive, send)
    for method in ("GET", "POST", "DELETE"):
        await guard({"type": "http", "method": method, "path": "/healthz", "headers": []}, receive, send)
    labels = {s.labels["method"] for m in metrics.registry.collect() if m.name == "stockade_http_requests"
              for s in m.samples}
    assert labels == {"GET", "POST", "DELETE", "OTHER"}


async def _raw(base_url: str, head: bytes) -> tuple[int, bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.mark.node_settings(**_SECRETS)
async def test_hostile_authorization_headers_are_one_401_that_never_echoes_them(node):
    tid, key = await node.tenant()
    lookalike = key[:-1] + "\u0663"  # ARABIC-INDIC DIGIT THREE where an ASCII character was
    cases: list[bytes] = [
        b"Bearer " + generate_key().encode(),  # well formed, unknown
        b"Bearer " + key[:-1].encode() + (b"A" if key[-1] != "A" else b"B"),  # checksum off by one
        b"Bearer " + lookalike.encode(),  # UTF-8 bytes (read as latin-1 by the server)
        b"Bearer " + key.encode() + b"\xff\xfe",  # a valid key with trailing latin-1 bytes
        b"Bearer " + b"stk_" + b"A" * 60_000,  # very long
        b"Basic " + key.encode(),  # the right key under another scheme
        b"Bearer\t" + key.encode(),  # not "Bearer " + key
        b"bearer  " + generate_key().encode(),  # case and two spaces: still looked up, still unknown
        b"Bearer " + b"%00" + key.encode(),
    ]
    for value in cases:
        head = (b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + value + b"\r\n\r\n")
        status, data = await _raw(node.base_url, head)
        assert status in (400, 401, 431), (value[:40], data[:200])
        body = data.split(b"\r\n\r\n", 1)[-1]
        token = value.split(None, 1)[-1] if b" " in value or b"\t" in value else value
        assert token[:40] not in body and key.encode() not in body, (value[:40], body[:200])
        if status == 401:
            assert b"application/problem+json" in data and b'"code":"auth.' in data.replace(b" ", b"")
    good = node.client(key)
    assert (await good.get("/v1/runs")).status_code == 200  # and the server still serves the real key


@pytest.mark.node_settings(**_SECRETS)
async def test_metrics_readyz_and_openapi_name_no_tenant_key_or_secret(node):
    tid, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/runs", json={"bundle": "echo", "input": "hi"})
    assert r.status_code == 201, r.text
    events = await asyncio.wait_for(collect(c, r.json()["id"]), 60)
    assert events[-1].event == "run.completed"
    await node.client().get("/v1/runs", headers={"Authorization": "Bearer " + generate_key()})  # a 401 too
    anon = node.client()
    s = node.rt.settings
    from cryptography.hazmat.primitives import serialization

    private_pem = node.rt.signing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()).decode()
    forbidden = [tid, key, key[:12], str(s.data_dir), "S3CRET", s.audit_key.get_secret_value(),
                 private_pem.splitlines()[1], "PRIVATE KEY"]
    if s.database_url:
        forbidden.append(s.database_url)
    if s.redis_url:
        forbidden.append(s.redis_url)
    deadline = time.monotonic() + 30
    for path in ("/metrics", "/readyz", "/openapi.json", "/healthz", "/v1/receipts/public-key"):
        resp = await anon.get(path)
        assert resp.status_code in (200, 503), (path, resp.status_code)
        for needle in forbidden:
            assert needle not in resp.text, (path, needle)
        assert time.monotonic() < deadline
    # what the run left for its tenant to read: no configured secret in events, audit or receipt
    for path in (f"/v1/runs/{r.json()['id']}/receipt", "/v1/audit", f"/v1/runs/{r.json()['id']}"):
        body = (await c.get(path)).text
        assert "S3CRET" not in body and private_pem.splitlines()[1] not in body, path
    assert not any("S3CRET" in str(e.data) for e in events)
    assert "PUBLIC KEY" in (await anon.get("/v1/receipts/public-key")).text


async def _stored_text(node) -> str:
    """Everything the node's stores and data dir hold, as text (what a database reader or a backup sees)."""
    parts: list[str] = []
    db = node.rt.services.extras["db"]
    if node.rt.settings.uses_postgres:
        async with db.acquire() as conn:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for t in tables:
                rows = await conn.fetch(f'SELECT t::text AS r FROM "{t["tablename"]}" t')
                parts += [r["r"] for r in rows]
    if node.rt.settings.redis_url:
        client = node.rt.services.extras["redis"]
        async for k in client.scan_iter(match=node.rt.settings.redis_prefix + "*", count=1000):
            kind = await client.type(k)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                parts.append(repr(await client.get(k)))
            elif kind == "stream":
                parts.append(repr(await client.xrange(k)))
            elif kind == "hash":
                parts.append(repr(await client.hgetall(k)))
    # SQLite database, its WAL, bundles, run dirs (not the keys dir); a finished run's folder may be removed
    # by its worker while this walks (os.walk skips what is gone)
    for root, dirs, files in os.walk(node.data_dir):
        dirs[:] = [d for d in dirs if not (Path(root) == node.data_dir and d == "keys")]
        for name in files:
            f = Path(root) / name
            with contextlib.suppress(OSError):  # gone meanwhile
                if stat.S_ISREG(f.lstat().st_mode):  # not a run's socket (open() of it: ENXIO)
                    parts.append(f.read_bytes().decode("latin-1"))
    return "\n".join(parts)


@pytest.mark.node_settings(**_SECRETS)
async def test_api_keys_and_configured_secrets_are_stored_nowhere_in_plain(node):
    tid, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/keys", json={"role": "member"})
    assert r.status_code == 201, r.text
    member = r.json()["api_key"]
    m = node.client(member)
    r = await m.post("/v1/runs", json={"bundle": "echo", "input": "hi"}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201, r.text
    events = await asyncio.wait_for(collect(m, r.json()["id"]), 60)
    assert events[-1].event == "run.completed"
    stored = await _stored_text(node)
    assert tid in stored  # the scan reads what the node wrote
    for secret in (key, member, key[4:], member[4:]):
        assert secret not in stored
    assert "S3CRET" not in stored


class _EchoingProvider:
    """An OpenAI-compatible endpoint that answers 400 quoting the request's headers (a careless proxy)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.seen: list[bytes] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.seen.append(head)
            quoted = head.decode("latin-1").replace("\\", "\\\\").replace('"', "'").replace("\r\n", " | ")
            body = ('{"error": {"message": "bad request; you sent: ' + quoted + '", "type": "invalid_request_error"}}'
                    ).encode()
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_provider_quoting_the_key_back_leaks_it_nowhere(stack_kind, stores, caplog):
    """The key a provider echoes in its error never reaches a log line (any level), the stream or the audit."""
    import logging

    from tests.e2e.harness import make_data_dir, settings_for, start_node

    caplog.set_level(logging.DEBUG)
    provider = _EchoingProvider()
    async with provider as base_url:
        node = await start_node(settings_for(stack_kind, make_data_dir(), **stores, llm_max_retries=0,
                                             openai_base_url=base_url, **_SECRETS))
        try:
            tid, key = await node.tenant()
            c = node.client(key)
            r = await c.post("/v1/runs", json={"bundle": "chat", "input": "hi"})
            assert r.status_code == 201, r.text
            events = await asyncio.wait_for(collect(c, r.json()["id"]), 60)
            audit = (await c.get("/v1/audit")).text
        finally:
            await node.stop()
    secret = _SECRETS["openai_api_key"]
    assert any(secret.encode() in h for h in provider.seen)  # the provider got it, and quoted it back
    assert any(e.event == "tool.result" for e in events)
    assert not any(secret in str(e.data) for e in events)
    assert secret not in audit
    assert "S3CRET" not in caplog.text


async def test_socketio_keys_reach_no_log_line_even_at_debug(node, caplog):
    """The key travels in the Socket.IO CONNECT payload: no logger (ours, socketio's, engineio's) prints it."""
    import logging

    import socketio

    caplog.set_level(logging.DEBUG)  # what STOCKADE_LOG_LEVEL=debug does (app/server.py: the root logger)
    tid, key = await node.tenant()
    bad = generate_key()
    for token, transport in ((key, "websocket"), (bad, "websocket")):
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(node.base_url, auth={"token": token}, transports=[transport], wait_timeout=10)
            await client.call("subscribe", {"run_id": "run_nope"}, timeout=10)
        except socketio.exceptions.ConnectionError:
            assert token == bad
        finally:
            await client.disconnect()
    for secret in (key, bad, key[4:], bad[4:]):
        assert secret not in caplog.text
