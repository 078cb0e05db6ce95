"""The bundle registry over HTTP: list, upload a tar.gz or zip as a new immutable version, delete.

The archive comes as the raw body (``Content-Type: application/gzip`` / ``application/zip``) or as
the one file part of a ``multipart/form-data`` body (``curl -F bundle=@my-bundle.tar.gz``, an HTML
form); either way it is the same hostile input to ``registry.register_archive``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from app.deps import READ_ROLES, require_role, require_tenant_wide, runtime
from app.strict_json import StrictJSONRoute
from supervisor.errors import StockadeError
from supervisor.tenancy import Principal

__all__ = ["router"]

router = APIRouter(prefix="/v1/bundles", tags=["bundles"], route_class=StrictJSONRoute)

_ARCHIVE = {"schema": {"type": "string", "format": "binary"}}
_FORM = {"schema": {"type": "object", "required": ["bundle"], "properties": {
    "bundle": {"type": "string", "format": "binary", "description": "the tar.gz or zip (any one file part)"}}}}
_ARCHIVE_BODY = {"requestBody": {"required": True, "content": {
    "application/gzip": _ARCHIVE, "application/zip": _ARCHIVE, "application/octet-stream": _ARCHIVE,
    "multipart/form-data": _FORM}}}
_RAW_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/x-tar", "application/zip",
                        "application/octet-stream", "application/x-compressed-tar"})
_HOW = ("upload the bundle as application/gzip (tar.gz) or application/zip, or as the one file of a "
        "multipart/form-data body (curl -F bundle=@my-bundle.tar.gz)")


def version_json(v: Any) -> dict[str, Any]:
    m = v.manifest
    return {"name": v.name, "version": v.version, "digest": v.digest, "platform": v.tenant_id is None,
            "description": getattr(m, "description", None), "tools": list(getattr(m, "tools", None) or [])}


@router.get("")
async def list_bundles(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    items = [i if isinstance(i, dict) else version_json(i) for i in await rt.registry.list(p.tenant_id)]
    # A platform bundle the tenant's own of the same name shadows is still listed (it is on the platform),
    # but a run by that name gets the tenant's (registry.resolve): "shadowed" says so, so that a picker
    # offers only what runs.
    own = {i["name"] for i in items if not i.get("platform")}
    for i in items:
        i["shadowed"] = bool(i.get("platform")) and i["name"] in own
    return {"data": items}


@router.post("", status_code=201, openapi_extra=_ARCHIVE_BODY)
async def upload_bundle(request: Request, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data = await _form_file(request)
    elif ctype in _RAW_TYPES:
        data = await request.body()
    else:
        raise StockadeError("input.unsupported_media", _HOW)
    if not data:
        raise StockadeError("archive.invalid", "empty upload")
    version = await rt.registry.register_archive(data, p.tenant_id)
    # a tenant bundle is code every user of the tenant runs by name: who put which content there is evidence
    await rt.recorder.record(p.tenant_id, "bundle.registered", detail={
        "key_id": p.key_id, "bundle": version.name, "version": version.version, "digest": version.digest})
    return version_json(version)


@router.delete("/{name}")
async def delete_bundle(name: str, rt: Any = Depends(runtime),
                        p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    """Delete the tenant's own bundle ``name``: new runs by the name get the platform bundle of that name
    if there is one (``platform_fallback``), else 404 ``bundle.not_found``; runs already created keep
    their version. Its versions are retired, not erased: uploading the name again brings it back."""
    out = await rt.registry.delete(p.tenant_id, name)
    await rt.recorder.record(p.tenant_id, "bundle.deleted", detail={
        "key_id": p.key_id, "bundle": name, "versions": out["versions"]})
    return out


async def _form_file(request: Request) -> bytes:
    """The archive of a multipart body: its one file part, whatever the field is called. Text fields
    are ignored (a form may carry a submit button's); a second file is refused, not picked between.
    The body is already capped by the guard (``max_body_bytes``); the parser spools the file to disk."""
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
    except (MultiPartException, HTTPException) as exc:
        raise StockadeError("input.invalid", f"the multipart body: {getattr(exc, 'message', None) or exc.detail}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise StockadeError("input.invalid", "the multipart body holds no file part; " + _HOW)
        return await files[0].read()
    finally:
        await form.close()
