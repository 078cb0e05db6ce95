"""The bundle registry over HTTP: list, and upload a tar.gz or zip as a new immutable version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from app.deps import READ_ROLES, WRITE_ROLES, require_role, require_tenant_wide, runtime
from supervisor.errors import StockadeError
from supervisor.tenancy import Principal

__all__ = ["router"]

router = APIRouter(prefix="/v1/bundles", tags=["bundles"])

_ARCHIVE = {"schema": {"type": "string", "format": "binary"}}
_ARCHIVE_BODY = {"requestBody": {"required": True, "content": {
    "application/gzip": _ARCHIVE, "application/zip": _ARCHIVE, "application/octet-stream": _ARCHIVE}}}


def version_json(v: Any) -> dict[str, Any]:
    m = v.manifest
    return {"name": v.name, "version": v.version, "digest": v.digest, "platform": v.tenant_id is None,
            "description": getattr(m, "description", None), "tools": list(getattr(m, "tools", None) or [])}


@router.get("")
async def list_bundles(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    items = await rt.registry.list(p.tenant_id)
    return {"data": [i if isinstance(i, dict) else version_json(i) for i in items]}


@router.post("", status_code=201, openapi_extra=_ARCHIVE_BODY)
async def upload_bundle(request: Request, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide(*WRITE_ROLES))) -> dict[str, Any]:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in ("application/gzip", "application/x-gzip", "application/x-tar", "application/zip",
                     "application/octet-stream", "application/x-compressed-tar"):
        raise StockadeError("input.unsupported_media", "upload the bundle as application/gzip (tar.gz) or application/zip")
    data = await request.body()
    if not data:
        raise StockadeError("archive.invalid", "empty upload")
    version = await rt.registry.register_archive(data, p.tenant_id)
    return version_json(version)
