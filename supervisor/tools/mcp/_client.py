"""One MCP server through the official SDK (streamable HTTP), connected only to checked addresses.

Imported lazily (the SDK costs ~0.8 s to import): nothing at start-up pays for
MCP until a tenant uses it.

Pinning: ``PinnedTransport`` sits under the SDK's httpx2 client and rewrites
each request to one of the addresses ``resolve_target`` checked, keeping the
original ``Host`` header and, for https, the TLS SNI / certificate name
(httpcore's ``sni_hostname`` extension). It refuses any request for another
origin; the SDK itself only follows same-origin redirects.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import httpx2
from mcp import Client, Implementation
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.tools._capped import cap_responses, too_large_in
from supervisor.tools.mcp._egress import Target
from supervisor.tools.mcp.store import MAX_TOOLS_PER_SERVER, TOOL_NAME, McpServer, ToolDef

__all__ = ["MAX_DEFINITION_BYTES", "PinnedTransport", "list_defs", "map_error", "open_client", "result_json"]

MAX_DEFINITION_BYTES = 64 * 1024
_MAX_PAGES = 50
_CLIENT_INFO = Implementation(name="stockade", version="0.1.0")


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context(trust_env=False)


class PinnedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, target: Target) -> None:
        self._target = target
        self._inner = httpx2.AsyncHTTPTransport(verify=_ssl_context(), trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        t = self._target.url
        u = request.url
        host = u.raw_host.decode("ascii", "replace").lower()
        if u.scheme != t.scheme or host != t.host or (u.port or (443 if u.scheme == "https" else 80)) != t.port:
            raise httpx2.ConnectError(f"refusing a request outside {t.scheme}://{t.host_header}")
        if t.scheme == "https" and t.ip is None:
            request.extensions = {**request.extensions, "sni_hostname": t.host}
        last: Exception | None = None
        for ip in self._target.addresses:
            request.url = u.copy_with(host=ip.compressed)
            try:
                return await self._inner.handle_async_request(request)
            except httpx2.ConnectError as exc:  # nothing was sent: the next address may be tried
                last = exc
        assert last is not None
        raise last

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def open_client(server: McpServer, target: Target, *, timeout_s: float,
                      max_bytes: int = 16 * 1024 * 1024) -> AsyncIterator[Client]:
    """An initialised SDK ``Client`` (``auto`` protocol negotiation, no response cache: every
    listing must be the server's current one). No response may be larger than ``max_bytes``: the
    SDK reads whole bodies and whole SSE lines into memory."""
    timeout = httpx2.Timeout(timeout_s, read=max(timeout_s, 300.0))
    async with httpx2.AsyncClient(transport=PinnedTransport(target), headers=server.headers, timeout=timeout,
                                  trust_env=False, follow_redirects=False,
                                  event_hooks={"response": [cap_responses(max_bytes)]}) as http:
        client = Client(streamable_http_client(target.url.text, http_client=http), cache=None,
                        read_timeout_seconds=timeout_s, client_info=_CLIENT_INFO)
        async with client:
            yield client


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


def map_error(exc: BaseException, what: str, *, protocol_code: str = "tool.failed") -> StockadeError:
    """A stable error for anything the SDK or the network raised. ``protocol_code`` is used for
    errors the server reported over MCP (``tool.failed`` for calls; ``tool.unavailable`` while
    registering, where it means "not a working MCP endpoint")."""
    leaves = list(_leaves(exc))
    for e in leaves:
        if isinstance(e, StockadeError):
            return e
    for e in leaves:
        big = too_large_in(e)
        if big is not None:
            return StockadeError("egress.too_large", f"{what}: the MCP server sent a response larger than {big.cap} bytes")
    for e in leaves:
        if isinstance(e, TimeoutError | httpx2.TimeoutException):
            return StockadeError("tool.timeout", f"{what}: the MCP server did not answer in time")
    for e in leaves:
        if isinstance(e, MCPError):
            code = "tool.unavailable" if e.code == CONNECTION_CLOSED else protocol_code
            return StockadeError(code, f"{what}: MCP error {e.code}: {str(e.message)[:300]}")
    for e in leaves:
        if isinstance(e, httpx2.HTTPError | OSError):
            return StockadeError("tool.unavailable", f"{what}: cannot reach the MCP server ({type(e).__name__}: {str(e)[:200]})")
    for e in leaves:
        if isinstance(e, ValidationError):
            return StockadeError(protocol_code, f"{what}: the MCP server sent a malformed response")
    first = leaves[0] if leaves else exc
    return StockadeError(protocol_code, f"{what}: {type(first).__name__}: {str(first)[:200]}")


def _plain(value: Any) -> Any:
    """A JSON round trip: drops anything that is not plain JSON, caps nothing (sizes are checked by the caller)."""
    return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))


async def list_defs(client: Client) -> tuple[list[ToolDef], list[str]]:
    """Every tool the server lists now, as pinnable definitions, and the names that cannot be pinned
    (bad name, duplicate, oversized, over the per-server cap)."""
    defs: dict[str, ToolDef] = {}
    skipped: list[str] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        for t in page.tools:
            name = t.name if isinstance(t.name, str) else repr(t.name)
            if not TOOL_NAME.fullmatch(name) or name in defs or len(defs) >= MAX_TOOLS_PER_SERVER:
                skipped.append(name[:128])
                continue
            try:
                d = ToolDef(name, t.description, _plain(t.input_schema))
                size = len(json.dumps(d.as_dict(), ensure_ascii=False))
            except (TypeError, ValueError):
                skipped.append(name)
                continue
            if size > MAX_DEFINITION_BYTES:
                skipped.append(name)
                continue
            defs[name] = d
        cursor = page.next_cursor
        if not cursor:
            break
    return list(defs.values()), skipped


def result_json(res: Any) -> dict[str, Any]:
    """``{"content": [...], "is_error": bool, "structured": ...}`` from a ``CallToolResult``."""
    content = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in (res.content or [])]
    structured = res.structured_content
    return {"content": content, "is_error": bool(res.is_error),
            "structured": _plain(structured) if structured is not None else None}
