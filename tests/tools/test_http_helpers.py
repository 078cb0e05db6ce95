"""Helpers for the http.request tests: a tiny real HTTP(S) server and a tool context.

(Named ``test_http_*`` only to sit in the files this area owns; it holds no tests.)
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from supervisor.settings import Settings
from supervisor.tools.base import ToolContext

__all__ = ["A_HOST", "C_HOST", "TestServer", "make_ctx", "make_tls", "start_server"]

# loopback addresses the http tests' servers listen on (allowed by their settings; 127.0.0.1 stays forbidden)
A_HOST, C_HOST = "127.0.0.2", "127.0.0.3"


def make_ctx(settings: Settings, *, extras: dict[str, Any] | None = None, tenant: str = "ten_a",
             user: str | None = "usr_1", kb: Any = None) -> ToolContext:
    async def emit(type: str, data: dict[str, Any]) -> None:
        return None

    services = SimpleNamespace(settings=settings, extras=extras or {}, kb=kb)
    return ToolContext(tenant_id=tenant, run_id="run_1", user_id=user, project_id=None, emit=emit, services=services)


@dataclass
class TestServer:
    __test__ = False  # not a pytest class
    host: str
    port: int
    name: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: Any = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    sni: list[str | None] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return {"method": method, "target": target, "headers": headers, "body": body.decode("utf-8", "replace")}


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


async def _handle(srv: TestServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        req = await _read_request(reader)
        if req is None:
            return
        srv.requests.append(req)
        parts = urlsplit(req["target"])
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path.endswith("/echo"):
            data = {"server": srv.name, "method": req["method"], "target": req["target"],
                    "headers": {n.lower(): v for n, v in req["headers"]}, "body": req["body"]}
            await _respond(writer, 200, json.dumps(data).encode(), {"Content-Type": "application/json", "X-Test": "1"})
        elif path == "/loop":
            await _respond(writer, 302, b"", {"Location": f"/loop?n={int(q.get('n', '0')) + 1}"})
        elif path.endswith("/redirect"):
            await _respond(writer, int(q.get("code", "302")), b"", {"Location": q["to"]})
        elif path == "/big":
            await _respond(writer, 200, b"x" * int(q["n"]))
        elif path == "/gzip":
            await _respond(writer, 200, gzip.compress(b"\0" * int(q["n"])), {"Content-Encoding": "gzip"})
        elif path == "/slow":
            await asyncio.Event().wait()  # never answers; the client must time out
        elif path == "/latin1":
            await _respond(writer, 200, "café".encode("latin-1"), {"Content-Type": "text/plain; charset=latin-1"})
        else:
            await _respond(writer, 200, srv.name.encode())
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def start_server(host: str, port: int = 0, name: str = "A", ssl_ctx: ssl.SSLContext | None = None) -> TestServer:
    srv = TestServer(host, port, name)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        srv.tasks.add(task)
        try:
            await _handle(srv, reader, writer)
        finally:
            srv.tasks.discard(task)

    if ssl_ctx is not None:
        ssl_ctx.sni_callback = lambda sock, name, ctx: srv.sni.append(name)  # type: ignore[assignment,misc]
    srv.server = await asyncio.start_server(on_conn, host, port, ssl=ssl_ctx)
    srv.port = srv.server.sockets[0].getsockname()[1]
    return srv


def make_tls(tmp: Path, dns_name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throw-away CA and a leaf certificate for ``dns_name``: (server context, client context trusting the CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockade test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            # what Python 3.13's default verification (VERIFY_X509_STRICT) wants of a leaf, as public CAs issue them
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file, ca_file = tmp / "leaf.pem", tmp / "leaf.key", tmp / "ca.pem"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    return server_ctx, client_ctx

