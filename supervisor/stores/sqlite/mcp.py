"""SQLite McpStore: a tenant's MCP servers and pinned tool definitions (see supervisor.tools.mcp.store)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores.sqlite._rows import integrity_error
from supervisor.stores.sqlite.db import SqliteDB
from supervisor.tools.mcp._transition import after_approve, after_observe, new_pin
from supervisor.tools.mcp.store import McpServer, PinnedTool, ToolDef

__all__ = ["SqliteMcpStore"]

_TOOL_COLS = ("tenant_id, server, name, definition, def_hash, status, pinned_at, approved_by, pending_definition,"
              " pending_hash, changed_at")
_SERVER_COLS = "tenant_id, name, url, headers, created_at, created_by"
_T_COLS = ", ".join("t." + c.strip() for c in _TOOL_COLS.split(","))


def _dump(v: Any) -> str | None:
    return None if v is None else json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _tool(row: sqlite3.Row | dict[str, Any]) -> PinnedTool:
    d = dict(row)
    d["definition"] = json.loads(d["definition"])
    d["pending_definition"] = None if d["pending_definition"] is None else json.loads(d["pending_definition"])
    return PinnedTool(**d)


def _server(row: sqlite3.Row) -> McpServer:
    d = dict(row)
    d["headers"] = json.loads(d["headers"])
    return McpServer(**d)


def _write(c: sqlite3.Connection, p: PinnedTool) -> None:
    c.execute(
        f"INSERT INTO mcp_tools ({_TOOL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, server, name) DO UPDATE SET definition = excluded.definition,"
        " def_hash = excluded.def_hash, status = excluded.status, pinned_at = excluded.pinned_at,"
        " approved_by = excluded.approved_by, pending_definition = excluded.pending_definition,"
        " pending_hash = excluded.pending_hash, changed_at = excluded.changed_at",
        (p.tenant_id, p.server, p.name, _dump(p.definition), p.def_hash, p.status, p.pinned_at, p.approved_by,
         _dump(p.pending_definition), p.pending_hash, p.changed_at),
    )


class SqliteMcpStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def create_server(self, server: McpServer, tools: list[ToolDef], approved_by: str | None) -> list[PinnedTool]:
        now = server.created_at
        pins = [new_pin(server.tenant_id, server.name, t, approved_by=approved_by, now=now) for t in tools]
        with self._db.tx() as c:
            try:
                c.execute(
                    f"INSERT INTO mcp_servers ({_SERVER_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (server.tenant_id, server.name, server.url, _dump(server.headers), server.created_at,
                     server.created_by),
                )
            except sqlite3.IntegrityError as exc:
                err = integrity_error(exc)
                if err.code == "conflict":
                    raise StockadeError("conflict", f"an MCP server named {server.name!r} exists") from None
                raise err from None
            for p in pins:
                _write(c, p)
        return pins

    async def get_server(self, tenant_id: str, name: str) -> McpServer | None:
        row = self._db.query_one(f"SELECT {_SERVER_COLS} FROM mcp_servers WHERE tenant_id = ? AND name = ?",
                                 (tenant_id, name))
        return _server(row) if row else None

    async def list_servers(self, tenant_id: str) -> list[McpServer]:
        rows = self._db.query(f"SELECT {_SERVER_COLS} FROM mcp_servers WHERE tenant_id = ? ORDER BY name", (tenant_id,))
        return [_server(r) for r in rows]

    async def delete_server(self, tenant_id: str, name: str) -> bool:
        with self._db.tx() as c:
            cur = c.execute("DELETE FROM mcp_servers WHERE tenant_id = ? AND name = ?", (tenant_id, name))
        return cur.rowcount > 0

    async def replace_secrets(self, old: McpServer, url: str, headers: dict[str, str]) -> bool:
        with self._db.tx() as c:
            cur = c.execute("UPDATE mcp_servers SET url = ?, headers = ? WHERE tenant_id = ? AND name = ? AND url = ?"
                            " AND headers = ?", (url, _dump(headers), old.tenant_id, old.name, old.url, _dump(old.headers)))
        return cur.rowcount > 0

    async def list_tools(self, tenant_id: str, server: str) -> list[PinnedTool]:
        rows = self._db.query(f"SELECT {_TOOL_COLS} FROM mcp_tools WHERE tenant_id = ? AND server = ? ORDER BY name",
                              (tenant_id, server))
        return [_tool(r) for r in rows]

    async def get_tool(self, tenant_id: str, server: str, tool: str) -> PinnedTool | None:
        row = self._db.query_one(f"SELECT {_TOOL_COLS} FROM mcp_tools WHERE tenant_id = ? AND server = ? AND name = ?",
                                 (tenant_id, server, tool))
        return _tool(row) if row else None

    async def get_pinned(self, tenant_id: str, server: str, tool: str) -> tuple[McpServer, PinnedTool] | None:
        row = self._db.query_one(
            "SELECT s.url, s.headers, s.created_at AS s_created_at, s.created_by, " + _T_COLS + " FROM mcp_tools t"
            " JOIN mcp_servers s ON s.tenant_id = t.tenant_id AND s.name = t.server"
            " WHERE t.tenant_id = ? AND t.server = ? AND t.name = ?", (tenant_id, server, tool))
        if row is None:
            return None
        d = dict(row)
        srv = McpServer(tenant_id, server, d.pop("url"), json.loads(d.pop("headers")), d.pop("s_created_at"),
                        d.pop("created_by"))
        return srv, _tool(d)

    async def observe(self, tenant_id: str, server: str, live: ToolDef) -> PinnedTool:
        now = time.time()
        with self._db.tx() as c:
            if c.execute("SELECT 1 FROM mcp_servers WHERE tenant_id = ? AND name = ?", (tenant_id, server)).fetchone() is None:
                raise StockadeError("not_found", f"no MCP server {server!r}")
            row = c.execute(f"SELECT {_TOOL_COLS} FROM mcp_tools WHERE tenant_id = ? AND server = ? AND name = ?",
                            (tenant_id, server, live.name)).fetchone()
            if row is None:
                pin = new_pin(tenant_id, server, live, approved_by=None, now=now)
            else:
                current = _tool(row)
                nxt = after_observe(current, live, now)
                if nxt is None:
                    return current
                pin = nxt
            _write(c, pin)
        return pin

    async def approve(self, tenant_id: str, server: str, tool: str, key_id: str | None,
                      expected_hash: str | None = None) -> PinnedTool:
        now = time.time()
        with self._db.tx() as c:
            row = c.execute(f"SELECT {_TOOL_COLS} FROM mcp_tools WHERE tenant_id = ? AND server = ? AND name = ?",
                            (tenant_id, server, tool)).fetchone()
            if row is None:
                raise StockadeError("not_found", f"no pinned tool mcp.{server}.{tool}")
            current = _tool(row)
            nxt = after_approve(current, key_id, expected_hash, now)
            if nxt is None:
                return current
            _write(c, nxt)
        return nxt
