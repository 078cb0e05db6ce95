"""A hostile HTTP/1.1 upstream on 127.0.0.1: each request goes to a test-supplied handler that writes raw bytes.

For the upstream-attack tests (LLM endpoints and MCP servers that never answer,
trickle bytes, stream forever, send gigantic bodies, lie about usage ...). It
runs on its own event loop in a daemon thread, like ``FakeLLMServer``, so a
stalled handler never stalls the test's loop.

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, b'{"ok": true}')

    with HostileServer(handler) as srv:
        ... srv.url ...            # http://127.0.0.1:<port>

``mcp_handler(...)`` builds a handler speaking just enough of MCP's streamable
HTTP transport (initialize, tools/list, tools/call) for a test to override one
method with misbehaviour.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["HostileServer", "RawRequest", "jsonrpc_result", "mcp_handler", "respond"]


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    raw_headers: tuple[tuple[str, str], ...] = ()  # every header line as sent (repeats and case kept)

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


Handler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


async def respond(w: asyncio.StreamWriter, status: int, body: bytes = b"", *,
                  content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
    head = [f"HTTP/1.1 {status} X", f"content-type: {content_type}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    w.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await w.drain()


def jsonrpc_result(msg_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}).encode()


ADD_TOOL = {"name": "add", "description": "Add two integers.",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}


def mcp_handler(*, tools: list[dict[str, Any]] | None = None,
                on_call: Callable[[RawRequest, Any, asyncio.StreamWriter], Awaitable[None]] | None = None,
                on_list: Callable[[RawRequest, Any, asyncio.StreamWriter], Awaitable[None]] | None = None,
                ) -> Handler:
    """A minimal streamable-HTTP MCP server (JSON responses, no SSE GET stream); ``on_call`` /
    ``on_list`` replace the tools/call / tools/list answers."""
    listed = tools if tools is not None else [ADD_TOOL]

    async def handle(req: RawRequest, w: asyncio.StreamWriter) -> None:
        if req.method != "POST":
            await respond(w, 405, b"")
            return
        msg = req.json() or {}
        method, mid = msg.get("method"), msg.get("id")
        if method == "initialize":
            result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                      "serverInfo": {"name": "hostile", "version": "1"}}
            await respond(w, 200, jsonrpc_result(mid, result), headers={"mcp-session-id": "s1"})
        elif mid is None:  # a notification or a response to us
            await respond(w, 202, b"")
        elif method == "tools/list":
            if on_list is not None:
                await on_list(req, mid, w)
            else:
                await respond(w, 200, jsonrpc_result(mid, {"tools": listed}))
        elif method == "tools/call":
            if on_call is not None:
                await on_call(req, mid, w)
            else:
                a = msg["params"]["arguments"]
                await respond(w, 200, jsonrpc_result(mid, {"content": [{"type": "text", "text": str(a["a"] + a["b"])}]}))
        else:
            await respond(w, 200, jsonrpc_result(mid, {}))

    return handle


class HostileServer:
    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host  # another loopback address (127.0.0.2) lets a test allow it and still refuse 127.0.0.1
        self.requests: list[RawRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread = threading.Thread(target=self._run, name="hostile-http", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the hostile server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_in_loop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _stop_in_loop(self) -> None:
        assert self._server is not None and self._loop is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        self._loop.call_later(0.05, self._loop.stop)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._conn, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                line = await r.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                raw_headers: list[tuple[str, str]] = []
                while (h := await r.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                    raw_headers.append((k.strip(), v.strip()))
                body = b""
                if "content-length" in headers:
                    body = await r.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await r.readline()).strip() or b"0", 16)
                        chunk = await r.readexactly(size + 2)
                        if size == 0:
                            break
                        body += chunk[:-2]
                req = RawRequest(method, path, headers, body, tuple(raw_headers))
                self.requests.append(req)
                await self.handler(req, w)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            try:
                w.close()
            except Exception:  # noqa: S110 - the peer is gone
                pass
