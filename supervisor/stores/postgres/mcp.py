"""PostgreSQL McpStore: a tenant's MCP servers and pinned tool definitions (see supervisor.tools.mcp.store).

Every statement runs in ``tenant_tx`` (row-level security). ``observe`` and
``approve`` lock the tool row (``FOR UPDATE``) so two nodes that see a change
at once, or an approval racing a new change, serialise on that one row.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from supervisor.errors import StockadeError
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error
from supervisor.stores.postgres.db import PgDB
from supervisor.tools.mcp._transition import after_approve, after_observe, new_pin
from supervisor.tools.mcp.store import McpServer, PinnedTool, ToolDef

__all__ = ["PgMcpStore"]

_TOOL_COLS = ("tenant_id, server, name, definition, def_hash, status, pinned_at, approved_by, pending_definition,"
              " pending_hash, changed_at")
_SERVER_COLS = "tenant_id, name, url, headers, created_at, created_by"
_T_COLS = ", ".join("t." + c.strip() for c in _TOOL_COLS.split(","))
_UPSERT = (
    f"INSERT INTO mcp_tools ({_TOOL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    " ON CONFLICT (tenant_id, server, name) DO UPDATE SET definition = excluded.definition,"
    " def_hash = excluded.def_hash, status = excluded.status, pinned_at = excluded.pinned_at,"
    " approved_by = excluded.approved_by, pending_definition = excluded.pending_definition,"
    " pending_hash = excluded.pending_hash, changed_at = excluded.changed_at"
)
_SELECT_TOOL = f"SELECT {_TOOL_COLS} FROM mcp_tools WHERE tenant_id = $1 AND server = $2 AND name = $3"


def _args(p: PinnedTool) -> tuple[Any, ...]:
    return (p.tenant_id, p.server, p.name, p.definition, p.def_hash, p.status, p.pinned_at, p.approved_by,
            p.pending_definition, p.pending_hash, p.changed_at)


def _tool(row: Any) -> PinnedTool:
    return PinnedTool(**dict(row.items()))


def _server(row: Any) -> McpServer:
    return McpServer(**dict(row.items()))


class PgMcpStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def create_server(self, server: McpServer, tools: list[ToolDef], approved_by: str | None) -> list[PinnedTool]:
        pins = [new_pin(server.tenant_id, server.name, t, approved_by=approved_by, now=server.created_at) for t in tools]
        async with self._db.tenant_tx(server.tenant_id) as c:
            try:
                await c.execute(
                    f"INSERT INTO mcp_servers ({_SERVER_COLS}) VALUES ($1, $2, $3, $4, $5, $6)",
                    server.tenant_id, server.name, server.url, server.headers, server.created_at, server.created_by,
                )
            except asyncpg.UniqueViolationError:
                raise StockadeError("conflict", f"an MCP server named {server.name!r} exists") from None
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
            if pins:
                await c.executemany(_UPSERT, [_args(p) for p in pins])
        return pins

    async def get_server(self, tenant_id: str, name: str) -> McpServer | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(f"SELECT {_SERVER_COLS} FROM mcp_servers WHERE tenant_id = $1 AND name = $2",
                                   tenant_id, name)
        return _server(row) if row else None

    async def list_servers(self, tenant_id: str) -> list[McpServer]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(f"SELECT {_SERVER_COLS} FROM mcp_servers WHERE tenant_id = $1 ORDER BY name", tenant_id)
        return [_server(r) for r in rows]

    async def delete_server(self, tenant_id: str, name: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            status = await c.execute("DELETE FROM mcp_servers WHERE tenant_id = $1 AND name = $2", tenant_id, name)
        return status != "DELETE 0"

    async def replace_secrets(self, old: McpServer, url: str, headers: dict[str, str]) -> bool:
        async with self._db.tenant_tx(old.tenant_id) as c:
            status = await c.execute(
                "UPDATE mcp_servers SET url = $1, headers = $2 WHERE tenant_id = $3 AND name = $4 AND url = $5"
                " AND headers = $6", url, headers, old.tenant_id, old.name, old.url, old.headers)
        return status.endswith(" 1")

    async def list_tools(self, tenant_id: str, server: str) -> list[PinnedTool]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(f"SELECT {_TOOL_COLS} FROM mcp_tools WHERE tenant_id = $1 AND server = $2 ORDER BY name",
                                 tenant_id, server)
        return [_tool(r) for r in rows]

    async def get_tool(self, tenant_id: str, server: str, tool: str) -> PinnedTool | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(_SELECT_TOOL, tenant_id, server, tool)
        return _tool(row) if row else None

    async def get_pinned(self, tenant_id: str, server: str, tool: str) -> tuple[McpServer, PinnedTool] | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                "SELECT s.url, s.headers, s.created_at AS s_created_at, s.created_by, " + _T_COLS + " FROM mcp_tools t"
                " JOIN mcp_servers s ON s.tenant_id = t.tenant_id AND s.name = t.server"
                " WHERE t.tenant_id = $1 AND t.server = $2 AND t.name = $3", tenant_id, server, tool)
        if row is None:
            return None
        d = dict(row.items())
        srv = McpServer(tenant_id, server, d.pop("url"), d.pop("headers"), d.pop("s_created_at"), d.pop("created_by"))
        return srv, PinnedTool(**d)

    async def observe(self, tenant_id: str, server: str, live: ToolDef) -> PinnedTool:
        now = time.time()
        async with self._db.tenant_tx(tenant_id) as c:
            # Lock the server row: a concurrent first sighting of the same new tool then waits here
            # instead of failing on the primary key.
            if await c.fetchval("SELECT 1 FROM mcp_servers WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
                                tenant_id, server) is None:
                raise StockadeError("not_found", f"no MCP server {server!r}")
            row = await c.fetchrow(_SELECT_TOOL + " FOR UPDATE", tenant_id, server, live.name)
            if row is None:
                pin = new_pin(tenant_id, server, live, approved_by=None, now=now)
            else:
                current = _tool(row)
                nxt = after_observe(current, live, now)
                if nxt is None:
                    return current
                pin = nxt
            await c.execute(_UPSERT, *_args(pin))
        return pin

    async def approve(self, tenant_id: str, server: str, tool: str, key_id: str | None,
                      expected_hash: str | None = None) -> PinnedTool:
        now = time.time()
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(_SELECT_TOOL + " FOR UPDATE", tenant_id, server, tool)
            if row is None:
                raise StockadeError("not_found", f"no pinned tool mcp.{server}.{tool}")
            current = _tool(row)
            nxt = after_approve(current, key_id, expected_hash, now)
            if nxt is None:
                return current
            await c.execute(_UPSERT, *_args(nxt))
        return nxt
