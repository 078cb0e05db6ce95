"""The MCP provider: registration, refresh and approval for the API; the pinned-and-checked call for the tools.

One instance per process (``install`` puts it in ``services.extras["mcp"]``).
State that matters lives in the store (shared by every node); what is kept
here is only a cache: open SDK clients and each server's tool listing for
``list_ttl_s`` seconds. A listing taken from the cache is never enough to
quarantine a tool: a mismatch is confirmed against a fresh listing first, so a
node whose cache predates an approval does not quarantine the tool again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from supervisor.errors import StockadeError
from supervisor.tools._capped import ResponseTooLarge, refusals
from supervisor.tools.mcp._egress import check_url, query_secrets, resolve_target
from supervisor.tools.mcp._headers import check_headers
from supervisor.tools.mcp._pool import ClientPool
from supervisor.tools.mcp._redact import scrub_json, server_secrets
from supervisor.tools.mcp._schema import check_arguments
from supervisor.tools.mcp._status import HttpRefusal, http_refusals
from supervisor.tools.mcp.store import APPROVED, McpServer, McpStore, PinnedTool, ToolDef, check_server_name

__all__ = ["McpService", "RefreshReport", "ToolChange"]


@dataclass(frozen=True)
class ToolChange:
    tool: PinnedTool
    change: str  # "unchanged" | "changed" (newly quarantined) | "new" (quarantined) | "pending" (still quarantined)


@dataclass(frozen=True)
class RefreshReport:
    server: McpServer
    tools: list[ToolChange]
    missing: list[str]  # pinned tools the server no longer lists
    skipped: list[str]  # listed tools that cannot be pinned (bad name, oversized, over the cap)


class McpService:
    def __init__(self, store: McpStore, *, allow_private: list[str] | tuple[str, ...] = (), timeout_s: float = 20.0,
                 call_timeout_s: float = 55.0, list_ttl_s: float = 2.0, max_result_bytes: int = 5 * 1024 * 1024) -> None:
        self.store = store
        self._allow = tuple(allow_private)
        self._timeout_s = timeout_s
        self._call_timeout_s = call_timeout_s
        self._ttl = list_ttl_s
        self._max_result = max_result_bytes
        # one HTTP response (a result, a page of tools): room for JSON framing around the biggest result we keep
        self._max_response = max(2 * max_result_bytes, 4 * 1024 * 1024)
        self._lists: dict[tuple[Any, ...], tuple[float, dict[str, ToolDef]]] = {}
        self._pool = ClientPool()

    async def close(self) -> None:
        await self._pool.close()

    # ------------------------------------------------------------------ admin (API)

    async def register(self, tenant_id: str, name: Any, url: Any, headers: Any, *, key_id: str | None
                       ) -> tuple[McpServer, list[PinnedTool], list[str]]:
        """Connect, list the tools and pin each one approved by ``key_id``. Returns (server, pins, skipped)."""
        name = check_server_name(name)
        norm = check_url(url)
        hdrs = check_headers(headers)
        if await self.store.get_server(tenant_id, name) is not None:  # before touching the network
            raise StockadeError("conflict", f"an MCP server named {name!r} exists")
        server = McpServer(tenant_id, name, norm.text, hdrs, time.time(), key_id)
        defs, skipped = await self._list_fresh(server)
        pins = await self.store.create_server(server, defs, approved_by=key_id)
        return server, pins, skipped

    async def servers(self, tenant_id: str) -> list[tuple[McpServer, list[PinnedTool]]]:
        return [(s, await self.store.list_tools(tenant_id, s.name)) for s in await self.store.list_servers(tenant_id)]

    async def server(self, tenant_id: str, name: str) -> McpServer:
        s = await self.store.get_server(tenant_id, name)
        if s is None:
            raise StockadeError("not_found", f"no MCP server {name!r}")
        return s

    async def refresh(self, tenant_id: str, name: str) -> RefreshReport:
        """Re-list: a changed definition is quarantined (pending = the new one), a new tool is added quarantined."""
        server = await self.server(tenant_id, name)
        defs, skipped = await self._list_fresh(server)
        before = {p.name: p for p in await self.store.list_tools(tenant_id, name)}
        changes = []
        for d in defs:
            pin = await self.store.observe(tenant_id, name, d)
            old = before.get(d.name)
            if old is None:
                kind = "new"
            elif old.status == APPROVED:
                kind = "unchanged" if pin.status == APPROVED else "changed"
            else:
                kind = "pending"
            changes.append(ToolChange(pin, kind))
        live = {d.name for d in defs}
        self._lists[self._list_key(server)] = (time.monotonic() + self._ttl, {d.name: d for d in defs})
        return RefreshReport(server, changes, sorted(n for n in before if n not in live), skipped)

    async def approve(self, tenant_id: str, server: str, tool: str, *, key_id: str | None,
                      expected_hash: str | None = None) -> PinnedTool:
        await self.server(tenant_id, server)
        return await self.store.approve(tenant_id, server, tool, key_id, expected_hash)

    async def delete(self, tenant_id: str, name: str) -> None:
        if not await self.store.delete_server(tenant_id, name):
            raise StockadeError("not_found", f"no MCP server {name!r}")
        self._forget(tenant_id, name)

    # ------------------------------------------------------------------ calls (tools)

    async def pinned(self, tenant_id: str, server: str, tool: str) -> tuple[McpServer, PinnedTool]:
        """The approved pin, or ``tool.unknown`` / ``tool.quarantined``."""
        got = await self.store.get_pinned(tenant_id, server, tool)
        if got is None:
            raise StockadeError("tool.unknown", f"no MCP tool mcp.{server}.{tool} is registered for this tenant")
        if got[1].status != APPROVED:
            raise _quarantined(got[1])
        return got

    async def call(self, tenant_id: str, server_name: str, tool_name: str, arguments: dict[str, Any], *,
                   checked_hash: str | None = None) -> dict[str, Any]:
        """Check the live definition against the pin, then call. ``checked_hash``: the pin the
        arguments were already validated against (they are re-checked if the pin changed since)."""
        server, pin = await self.pinned(tenant_id, server_name, tool_name)
        if checked_hash != pin.def_hash:
            check_arguments(pin.definition.get("input_schema"), arguments, tool=pin.full_name, def_hash=pin.def_hash)
        key = self._pool_key(server)
        # Answers to this call our byte and item caps refuse: the SDK puts "Connection closed" (its connection
        # task crashed on the cap) or "SSE stream ended without a response" in their place (_capped.refusals).
        refused: list[ResponseTooLarge] = []
        noted = refusals.set(refused)
        http_refused: list[HttpRefusal] = []  # statuses the SDK drops (a 401 of a revoked credential)
        noted_http = http_refusals.set(http_refused)
        try:
            async with self._pool.lease(key, lambda: self._opener(server)) as client:
                live = await self._live(server, client, tool_name, pin.def_hash)
                if live is None:
                    raise StockadeError("tool.unavailable", f"{pin.full_name}: the MCP server no longer lists this tool")
                if live.hash != pin.def_hash:
                    now_pin = await self.store.observe(tenant_id, server_name, live)
                    if now_pin.status != APPROVED or now_pin.def_hash != live.hash:
                        raise _quarantined(now_pin)
                    # an admin approved exactly the live definition since our read: hold the call to that one
                    check_arguments(live.input_schema, arguments, tool=pin.full_name, def_hash=live.hash)
                async with asyncio.timeout(self._call_timeout_s):
                    # the SDK's own read timeout is set just past ours, so ours (tool.timeout) fires first
                    res = await client.call_tool(tool_name, arguments, read_timeout_seconds=self._call_timeout_s + 1)
        except StockadeError as exc:
            if exc.code == "tool.unavailable":
                self._pool.discard(key)
            raise
        except Exception as exc:
            from supervisor.tools.mcp._client import map_error

            err = map_error(exc, pin.full_name, secrets=[*server.headers.values(), *query_secrets(server.url)],
                            refused=refused, http_refused=http_refused)
            if err.code in ("tool.unavailable", "egress.too_large"):  # a refused answer may have left it mid-stream
                self._pool.discard(key)
            raise err from None
        finally:
            refusals.reset(noted)
            http_refusals.reset(noted_http)
        return self._result(server, pin, res)

    # ------------------------------------------------------------------ internals

    async def _opener(self, server: McpServer) -> Callable[[], AbstractAsyncContextManager[Any]]:
        from supervisor.tools.mcp._client import open_client

        target = await resolve_target(check_url(server.url), self._allow)
        return lambda: open_client(server, target, timeout_s=self._timeout_s, max_bytes=self._max_response)

    async def _list_fresh(self, server: McpServer) -> tuple[list[ToolDef], list[str]]:
        """A one-off connection (registration, refresh): every failure is ``tool.unavailable`` or ``egress.blocked``."""
        from supervisor.tools.mcp._client import list_defs, map_error, open_client

        target = await resolve_target(check_url(server.url), self._allow)
        http_refused: list[HttpRefusal] = []  # a 401 at registration: the headers it needs are missing or wrong
        noted = http_refusals.set(http_refused)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with open_client(server, target, timeout_s=self._timeout_s, max_bytes=self._max_response) as client:
                    return await list_defs(client, server_secrets(server.headers, server.url))
        except StockadeError:
            raise
        except Exception as exc:
            err = map_error(exc, f"MCP server {server.name}", protocol_code="tool.unavailable",
                            secrets=[*server.headers.values(), *query_secrets(server.url)], http_refused=http_refused)
            code = err.code if err.code == "egress.blocked" else "tool.unavailable"
            raise StockadeError(code, err.detail, **err.extra) from None
        finally:
            http_refusals.reset(noted)

    async def _live(self, server: McpServer, client: Any, tool: str, pinned_hash: str) -> ToolDef | None:
        from supervisor.tools.mcp._client import list_defs

        key = self._list_key(server)
        now = time.monotonic()
        cached = self._lists.get(key)
        if cached is not None and cached[0] > now:
            hit = cached[1].get(tool)
            if hit is not None and hit.hash == pinned_hash:
                return hit  # a mismatch or absence is always confirmed by a fresh listing below
        async with asyncio.timeout(self._timeout_s):
            defs, _ = await list_defs(client, server_secrets(server.headers, server.url))
        listing = {d.name: d for d in defs}
        if len(self._lists) > 4096:
            self._lists = {k: v for k, v in self._lists.items() if v[0] > now}
        self._lists[key] = (now + self._ttl, listing)
        return listing.get(tool)

    def _result(self, server: McpServer, pin: PinnedTool, res: Any) -> dict[str, Any]:
        from supervisor.tools.mcp._client import result_json

        try:
            out = result_json(res)
        except (TypeError, ValueError, RecursionError):  # NaN, Infinity, 1e400 in structuredContent
            raise StockadeError("tool.failed", f"{pin.full_name}: the MCP server sent a result that is not plain JSON"
                                " (NaN or an infinite number)") from None
        # A server may echo what it was sent (an isError result "invalid token Bearer ...", or any result): the
        # tenant's header and query values go to neither the bundle nor the idempotency table (_redact).
        out = scrub_json(out, server_secrets(server.headers, server.url))
        size = len(json.dumps(out, ensure_ascii=False))
        if size > self._max_result:
            raise StockadeError("egress.too_large", f"{pin.full_name}: result of {size} bytes is over {self._max_result}")
        return out

    def _forget(self, tenant_id: str, name: str) -> None:
        self._lists = {k: v for k, v in self._lists.items() if k[:2] != (tenant_id, name)}
        self._pool.discard_where(lambda k: k[:2] == (tenant_id, name))

    @staticmethod
    def _list_key(server: McpServer) -> tuple[Any, ...]:
        return (server.tenant_id, server.name, server.url, server.created_at)

    @staticmethod
    def _pool_key(server: McpServer) -> tuple[Any, ...]:
        h = hashlib.sha256(json.dumps(server.headers, sort_keys=True).encode()).hexdigest()
        return (server.tenant_id, server.name, server.url, server.created_at, h)


def _quarantined(pin: PinnedTool) -> StockadeError:
    if pin.approved_by is None:  # listed after the server was registered: nobody has approved it yet
        why = f"{pin.full_name} is new and no admin has approved it yet; it is quarantined until one does"
    else:
        why = f"{pin.full_name} changed since an admin approved it; it is quarantined until it is approved again"
    return StockadeError(
        "tool.quarantined", why, tool=pin.full_name, pinned_hash=pin.def_hash, pending_hash=pin.pending_hash,
    )
