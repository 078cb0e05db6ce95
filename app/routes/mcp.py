"""MCP servers of the caller's tenant: register, list, refresh, approve changed tools, delete.

Registration pins every tool the server lists, approved by the registering
admin. ``refresh`` re-lists: a tool whose definition changed is quarantined
with the new definition as ``pending``; a tool the server added is added
quarantined (nothing new runs without an admin's look). ``approve`` pins the
pending definition; pass ``pending_hash`` to approve only what was reviewed.
Stored headers (secrets for the MCP server) are never returned. Every change
writes an audit record.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from app.deps import READ_ROLES, require_role, require_tenant_wide, runtime
from app.strict_json import StrictJSONRoute
from supervisor.errors import StockadeError
from supervisor.storable import Text
from supervisor.tenancy import Principal
from supervisor.tools.mcp import redact_query

__all__ = ["router"]

router = APIRouter(prefix="/v1/mcp", tags=["mcp"], route_class=StrictJSONRoute)


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Text = Field(min_length=1, max_length=32)
    url: Text = Field(min_length=1, max_length=8192)
    headers: dict[str, str] | None = None


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    pending_hash: str | None = Field(default=None, min_length=64, max_length=64)


def _service(rt: Any) -> Any:
    svc = rt.services.extras.get("mcp")
    if svc is None:
        raise StockadeError("tool.unavailable", "MCP support is not installed on this node")
    return svc


def _tool_json(p: Any, change: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name, "tool": p.full_name, "status": p.status, "def_hash": p.def_hash, "definition": p.definition,
        "pinned_at": p.pinned_at, "approved_by": p.approved_by, "pending_hash": p.pending_hash,
        "pending_definition": p.pending_definition, "changed_at": p.changed_at,
    }
    if change is not None:
        out["change"] = change
    return out


def _server_json(s: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": s.name, "url": redact_query(s.url), "created_at": s.created_at, "created_by": s.created_by,
            "header_names": sorted(s.headers), "tools": tools}


@router.post("/servers", status_code=201)
async def register_server(body: RegisterBody, rt: Any = Depends(runtime),
                          p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    server, pins, skipped = await _service(rt).register(p.tenant_id, body.name, body.url, body.headers, key_id=p.key_id)
    await rt.recorder.record(p.tenant_id, "mcp.server.registered", tool=f"mcp.{server.name}.*", detail={
        "key_id": p.key_id, "server": server.name, "url": redact_query(server.url),
        "tools": {t.name: t.def_hash for t in pins}, "skipped": skipped})
    return {**_server_json(server, [_tool_json(t) for t in pins]), "skipped": skipped}


@router.get("/servers")
async def list_servers(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    items = await _service(rt).servers(p.tenant_id)
    return {"data": [_server_json(s, [_tool_json(t) for t in tools]) for s, tools in items]}


@router.get("/servers/{name}")
async def get_server(name: str, rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    svc = _service(rt)
    server = await svc.server(p.tenant_id, name)
    return _server_json(server, [_tool_json(t) for t in await svc.store.list_tools(p.tenant_id, name)])


@router.post("/servers/{name}/refresh")
async def refresh_server(name: str, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    report = await _service(rt).refresh(p.tenant_id, name)
    changed = {c.tool.name: c.change for c in report.tools if c.change != "unchanged"}
    if changed or report.missing:
        await rt.recorder.record(p.tenant_id, "mcp.server.refreshed", tool=f"mcp.{name}.*", detail={
            "key_id": p.key_id, "server": name, "changes": changed, "missing": report.missing})
    return {**_server_json(report.server, [_tool_json(c.tool, c.change) for c in report.tools]),
            "missing": report.missing, "skipped": report.skipped}


@router.post("/servers/{name}/tools/{tool}/approve")
async def approve_tool(name: str, tool: str, body: ApproveBody | None = None, rt: Any = Depends(runtime),
                       p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    expected = body.pending_hash if body is not None else None
    pin = await _service(rt).approve(p.tenant_id, name, tool, key_id=p.key_id, expected_hash=expected)
    await rt.recorder.record(p.tenant_id, "mcp.tool.approved", tool=pin.full_name, detail={
        "key_id": p.key_id, "server": name, "tool": tool, "def_hash": pin.def_hash})
    return _tool_json(pin)


@router.delete("/servers/{name}")
async def delete_server(name: str, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    await _service(rt).delete(p.tenant_id, name)
    await rt.recorder.record(p.tenant_id, "mcp.server.deleted", tool=f"mcp.{name}.*",
                             detail={"key_id": p.key_id, "server": name})
    return {"name": name, "deleted": True}
