"""One MCP server through the official SDK (streamable HTTP), connected only to checked addresses.

Imported lazily (the SDK costs ~0.8 s to import): nothing at start-up pays for
MCP until a tenant uses it.

Pinning: ``PinnedTransport`` sits under the SDK's httpx2 client and rewrites
each request to one of the addresses ``resolve_target`` checked, keeping the
original ``Host`` header and, for https, the TLS SNI / certificate name
(httpcore's ``sni_hostname`` extension). It refuses any request for another
origin; the SDK itself only follows same-origin redirects. It never opens the
GET stream of server-initiated messages (see ``handle_async_request``). Every
answer is counted (``_guard``) before the SDK validates it.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import anyio
import httpx2
from mcp import Client, Implementation
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.storable import scrub_nul
from supervisor.tools._capped import ResponseTooLarge, cap_responses, too_large_in
from supervisor.tools._guard import TooManyItems, guard_messages
from supervisor.tools.mcp._egress import Target
from supervisor.tools.mcp._logs import protect_sdk_loggers, remember_secrets
from supervisor.tools.mcp._redact import redact_fragments, redact_words, scrub_json, secret_words
from supervisor.tools.mcp._status import HttpRefusal, describe, note_http_refusal
from supervisor.tools.mcp.store import MAX_TOOLS_PER_SERVER, TOOL_NAME, McpServer, ToolDef

__all__ = [
    "MAX_DEFINITION_BYTES", "PinnedTransport", "connection_lost", "list_defs", "map_error", "open_client", "result_json",
]

MAX_DEFINITION_BYTES = 64 * 1024
# One tools/list page. The SDK validates a page on the event loop at ~30 us per tool: 150,000 tiny tools in
# 8 MB froze every tenant's calls for 5 s. 2 MiB (~1 s at worst) holds 400 tools with 2 KB schemas; bigger
# servers paginate.
MAX_LIST_PAGE_BYTES = 2 * 1024 * 1024
# Names of unpinnable tools reported back (API answer, audit record); a hostile listing may hold millions.
MAX_SKIPPED_NAMES = 100
_MAX_PAGES = 50
# Further pages are not read past this many listed tools: 50 pages of 36,000 names each were a minute of
# parsing on the event loop for every call's live check, and nothing past the pin cap can be pinned anyway.
MAX_LISTED_TOOLS = 10 * MAX_TOOLS_PER_SERVER
_CLIENT_INFO = Implementation(name="stockade", version="0.1.0")

# httpx2 logs each exchange's URL at INFO, query (a hosted server's api_key) included: not in our logs.
protect_sdk_loggers()


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context(trust_env=False)


class PinnedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, target: Target) -> None:
        self._target = target
        self._inner = httpx2.AsyncHTTPTransport(verify=_ssl_context(), trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            # GET streams carry only what the server starts (requests Stockade refuses, notifications it
            # ignores), and a server ending one with `retry: 0` made the SDK reopen it in a tight loop for
            # as long as the pooled client lived. Answered here, without the network: the SDK gives up.
            return httpx2.Response(405, request=request)
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


_cap_list_page = cap_responses(MAX_LIST_PAGE_BYTES)


def _counted_parts(doc: Any) -> list[Any]:
    """What of a JSON-RPC message (or batch) the SDK turns into models: all but a result's structuredContent."""
    parts: list[Any] = []
    for m in doc if isinstance(doc, list) else [doc]:
        if isinstance(m, dict):
            result = m.get("result")
            if isinstance(result, dict):
                parts.extend(v for k, v in result.items() if k != "structuredContent")
            parts.extend((m.get("params"), m.get("error")))
    return parts


_guard_messages = guard_messages(_counted_parts)


async def _cap_listings(response: httpx2.Response) -> None:
    """The response hook capping answers to tools/list at ``MAX_LIST_PAGE_BYTES``."""
    try:
        sent = response.request.content
    except httpx2.RequestNotRead:  # pragma: no cover - the SDK sends whole JSON bodies
        return
    if len(sent) > 4096 or b'"tools/list"' not in sent:  # a tools/list request is a few dozen bytes
        return
    try:
        method = json.loads(sent).get("method")
    except (ValueError, AttributeError):
        return
    if method == "tools/list":
        await _cap_list_page(response)


@asynccontextmanager
async def open_client(server: McpServer, target: Target, *, timeout_s: float,
                      max_bytes: int = 16 * 1024 * 1024) -> AsyncIterator[Client]:
    """An initialised SDK ``Client`` (``auto`` protocol negotiation, no response cache: every
    listing must be the server's current one). No response may be larger than ``max_bytes``: the
    SDK reads whole bodies and whole SSE lines into memory."""
    remember_secrets(server.headers, server.url)  # cut out of every log record (_logs)
    protect_sdk_loggers()  # loggers the SDK created since (lazily imported modules)
    timeout = httpx2.Timeout(timeout_s, read=max(timeout_s, 300.0))
    async with httpx2.AsyncClient(transport=PinnedTransport(target), headers=server.headers, timeout=timeout,
                                  trust_env=False, follow_redirects=False,
                                  event_hooks={"response": [cap_responses(max_bytes), _cap_listings,
                                                            _guard_messages, note_http_refusal]}) as http:
        # An answer as an SSE event may be as large as one as a JSON body (the SDK's default is 1 MiB): the same
        # byte cap (cap_responses) and item count (_guard_messages) hold for both.
        transport = streamable_http_client(target.url.text, http_client=http, max_sse_event_size=max_bytes)
        client = Client(transport, cache=None,
                        read_timeout_seconds=timeout_s, client_info=_CLIENT_INFO)
        async with client:
            # The SDK checks structuredContent against the tool's outputSchema with jsonschema on the event loop:
            # both come from the server, which alone could freeze every tenant (a backtracking pattern, a
            # pairwise uniqueItems). The outputSchema is not pinned and the result goes to the bundle as it
            # came, so the check guards nothing here: it is switched off.
            client.session.validate_tool_result = _unchecked  # type: ignore[method-assign]
            yield client


async def _unchecked(name: str, result: Any) -> None:
    return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


def map_error(exc: BaseException, what: str, *, protocol_code: str = "tool.failed",
              secrets: Iterable[str] = (), refused: Iterable[ResponseTooLarge] = (),
              http_refused: Iterable[HttpRefusal] = ()) -> StockadeError:
    """A stable error for anything the SDK or the network raised. ``protocol_code`` is used for
    errors the server reported over MCP (``tool.failed`` for calls; ``tool.unavailable`` while
    registering, where it means "not a working MCP endpoint"). ``secrets`` (the stored header values)
    are cut out of what the server or the network said: a server that echoes the Authorization header
    in an error must not carry it to the bundle. ``refused``: answers to this call our caps refused
    (``supervisor.tools._capped.refusals``), the reason whatever the SDK raised in their place.
    ``http_refused``: the non-2xx answers to this call (``_status.http_refusals``), named where the SDK
    says only "Server returned an error response"."""
    words = secret_words(secrets)

    def said(text: object, limit: int) -> str:
        # pydantic's parse errors quote what they read (input_value=...): the server's bytes, shortened in the
        # middle, which may cut an echoed credential where redaction no longer finds it whole
        return redact_fragments(_INPUT_VALUE.sub("input_value=[not shown], input_type=", str(text)), words)[:limit]

    leaves = list(_leaves(exc))
    for e in leaves:
        if isinstance(e, StockadeError):
            return e
    for big in [*(too_large_in(e) for e in leaves), *refused]:
        if isinstance(big, TooManyItems):
            return StockadeError("egress.too_large", f"{what}: the MCP server sent {big}")
        if big is not None:
            return StockadeError("egress.too_large", f"{what}: the MCP server sent a response larger than {big.cap} bytes")
    for e in leaves:
        if isinstance(e, TimeoutError | httpx2.TimeoutException):
            return StockadeError("tool.timeout", f"{what}: the MCP server did not answer in time")
    for e in leaves:
        if isinstance(e, MCPError):
            if e.code == REQUEST_TIMEOUT and _SDK_TIMEOUT.fullmatch(e.message):  # the SDK's own request deadline
                return StockadeError("tool.timeout", f"{what}: the MCP server did not answer in time "
                                                     f"({said(e.message, 100)})")
            if connection_lost(e) and _SDK_EVENT_TOO_LARGE.search(e.message):
                return StockadeError("egress.too_large", f"{what}: the MCP server sent an event larger than the "
                                                         f"limit ({said(e.message, 200)})")
            code = "tool.unavailable" if connection_lost(e) else protocol_code
            statuses = list(http_refused)
            if e.code == INTERNAL_ERROR and e.message == _SDK_HTTP_ERROR and statuses:
                return StockadeError(code, f"{what}: {describe(statuses[-1])}", http_status=statuses[-1].status)
            return StockadeError(code, f"{what}: MCP error {e.code}: {said(e.message, 300)}")
    for e in leaves:
        if isinstance(e, httpx2.HTTPError | OSError):
            return StockadeError("tool.unavailable", f"{what}: cannot reach the MCP server ({type(e).__name__}: {said(e, 200)})")
    for e in leaves:
        if isinstance(e, ValidationError):
            return StockadeError(protocol_code, f"{what}: the MCP server sent a malformed response")
    first = leaves[0] if leaves else exc
    return StockadeError(protocol_code, f"{what}: {type(first).__name__}: {said(first, 200)}")


# What the SDK itself says (code CONNECTION_CLOSED, -32000) when a connection or a request's stream is lost.
# A server's own JSON-RPC error -32000 - JSON-RPC's generic "server error", common - is none of these: it is
# what the server answered, over a connection that still works.
_SDK_LOST = frozenset({
    "Connection closed", "SSE stream ended without a response", "SSE stream ended and reconnection attempts were exhausted",
})
# The SDK's request deadline (read_timeout_seconds: an ``initialize`` that never answers), code REQUEST_TIMEOUT.
_INPUT_VALUE = re.compile(r"input_value=.*?, input_type=", re.DOTALL)  # pydantic's quote of what it read
_SDK_TIMEOUT = re.compile(r"Request '[^']{1,100}' timed out")
# What the SDK puts in place of a non-2xx answer without a JSON-RPC error in its body (its status is dropped).
_SDK_HTTP_ERROR = "Server returned an error response"
# The SDK's own cap on one SSE event (httpx2's SSEError), reported as "SSE stream failed: ...".
_SDK_EVENT_TOO_LARGE = re.compile(r"^SSE stream failed: Server-sent event exceeded the \d+ byte limit")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the SDK saying the connection (or the request's stream) was lost."""
    if not isinstance(exc, MCPError) or exc.code != CONNECTION_CLOSED:
        return False
    if isinstance(exc.__context__, anyio.BrokenResourceError | anyio.ClosedResourceError):
        return True  # raised while the transport was torn down under the request
    return exc.message in _SDK_LOST or exc.message.startswith("SSE stream failed: ")


def _plain(value: Any) -> Any:
    """A JSON round trip: drops anything that is not plain JSON, caps nothing (sizes are checked by the caller)."""
    return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))


async def list_defs(client: Client, secrets: list[str] | None = None) -> tuple[list[ToolDef], list[str]]:
    """Every tool the server lists now, as pinnable definitions, and the names that cannot be pinned
    (bad name, duplicate, oversized, over the per-server cap): the first ``MAX_SKIPPED_NAMES`` of them,
    then one ``"... N more"`` entry, and one saying so if pages were left unread.

    ``secrets`` (``_redact.server_secrets``) are cut out of names, descriptions and schemas before anything
    is hashed: a server that repeats its credentials in a listing would otherwise have them pinned, stored
    and shown to every reader of the tenant (``GET /v1/mcp/servers``). The same cut every time, so hashes
    stay stable; a name that held one no longer matches the name rule and is skipped, under its cut form."""
    words = secrets or []
    defs: dict[str, ToolDef] = {}
    skipped: list[str] = []
    more = listed = 0
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        if listed >= MAX_LISTED_TOOLS:
            skipped.append(f"... the listing was not read past {listed} tools")
            break
        page = await client.list_tools(cursor=cursor)
        listed += len(page.tools)
        for t in page.tools:
            name = redact_words(t.name if isinstance(t.name, str) else repr(t.name), words)
            if not TOOL_NAME.fullmatch(name) or name in defs or len(defs) >= MAX_TOOLS_PER_SERVER:
                more += _skip(skipped, name)
                continue
            try:
                # NUL -> U+FFFD (deterministic, so the hash is stable): PostgreSQL cannot store a NUL, and a
                # definition that could be pinned on SQLite only failed registration there with a 500
                d = ToolDef(name, scrub_nul(scrub_json(t.description, words)),
                            scrub_nul(scrub_json(_plain(t.input_schema), words)))
                size = len(json.dumps(d.as_dict(), ensure_ascii=False))
            except (TypeError, ValueError):
                more += _skip(skipped, name)
                continue
            if size > MAX_DEFINITION_BYTES:
                more += _skip(skipped, name)
                continue
            defs[name] = d
        cursor = page.next_cursor
        if not cursor:
            break
    if more:
        skipped.insert(MAX_SKIPPED_NAMES, f"... {more} more")
    return list(defs.values()), skipped


def _skip(skipped: list[str], name: str) -> int:
    """Note ``name`` as skipped; 1 if the list is full (it is only counted)."""
    if len(skipped) >= MAX_SKIPPED_NAMES:
        return 1
    skipped.append(name[:128])
    return 0


def result_json(res: Any) -> dict[str, Any]:
    """``{"content": [...], "is_error": bool, "structured": ...}`` from a ``CallToolResult``."""
    content = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in (res.content or [])]
    structured = res.structured_content
    return {"content": content, "is_error": bool(res.is_error),
            "structured": _plain(structured) if structured is not None else None}
