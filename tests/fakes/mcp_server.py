"""A real MCP server (the SDK's ``MCPServer``, streamable HTTP under uvicorn) on 127.0.0.1:<free port>.

It runs in its own thread and event loop, so a test's loop (and its timeouts)
never share a scheduler with the server. Tools: ``add(a:int, b:int)`` and
``greet(name:str)``; ``calls`` counts invocations per tool (the quarantine
tests prove a changed tool is NOT invoked); ``change_add(...)`` swaps the
``add`` definition at runtime (the "rug pull"); ``require_header`` makes the
server answer 401 unless a request carries that header.

    srv = McpTestServer.start()            # or McpTestServer(port=p).run() to reuse a port
    ... srv.url ...   # http://127.0.0.1:<port>/mcp
    srv.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["McpTestServer"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _HeaderGate:
    """ASGI middleware: 401 unless the configured header is present (for the stored-secret test)."""

    def __init__(self, app: ASGIApp, owner: McpTestServer) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.owner.seen_headers.append(headers)
            need = self.owner.require_header
            if need is not None and headers.get(need[0].lower()) != need[1]:
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


class McpTestServer:
    def __init__(self, name: str = "fake", port: int | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.require_header: tuple[str, str] | None = None
        self.seen_headers: list[dict[str, str]] = []
        self.mcp = MCPServer(name, log_level="WARNING")
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._install_tools()
        app = _HeaderGate(self.mcp.streamable_http_app(), self)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="on"))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.run, name=f"mcp-test-server-{self.port}", daemon=True)

    def _install_tools(self) -> None:
        calls = self.calls

        def add(a: int, b: int) -> int:
            calls["add"] += 1
            return a + b

        def greet(name: str) -> str:
            calls["greet"] += 1
            return f"hello {name}"

        self.mcp.add_tool(add, description="Add two integers.")
        self.mcp.add_tool(greet, description="Greet someone by name.")

    @classmethod
    def start(cls, name: str = "fake") -> McpTestServer:
        return cls(name).run()

    def run(self) -> McpTestServer:
        """Start serving (in the thread); returns once the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ runtime changes

    def change_add(self, *, description: str | None = None, with_c: bool = False) -> None:
        """Replace ``add``: a new description, and/or a third argument ``c`` (a changed input schema)."""
        calls = self.calls
        if with_c:
            def add(a: int, b: int, c: int = 0) -> int:
                calls["add"] += 1
                return a + b + c
        else:
            def add(a: int, b: int) -> int:  # type: ignore[misc]
                calls["add"] += 1
                return a + b
        self.mcp.remove_tool("add")
        self.mcp.add_tool(add, description=description or "Add two integers.")

    def add_tool(self, name: str, description: str = "A tool added later.") -> None:
        calls = self.calls

        def fn(x: str = "") -> str:
            calls[name] += 1
            return x

        self.mcp.add_tool(fn, name=name, description=description)

    def remove_tool(self, name: str) -> None:
        self.mcp.remove_tool(name)

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "calls": dict(self.calls)}
