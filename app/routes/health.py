"""Liveness, readiness (store, queue, sandbox backend), Prometheus metrics, the receipt public keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import runtime
from app.strict_json import StrictJSONRoute
from supervisor.audit.keys import key_id, public_key_pem

__all__ = ["receipts_router", "router"]

router = APIRouter(tags=["health"])  # probes and scrapers: whatever query they add is theirs
# /v1 reads its query one way, as every other /v1 route (app/strict_json.py)
receipts_router = APIRouter(prefix="/v1/receipts", tags=["health"], route_class=StrictJSONRoute)


class _PemResponse(PlainTextResponse):
    media_type = "application/x-pem-file"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(rt: Any = Depends(runtime)) -> JSONResponse:
    checks: dict[str, Any] = {}
    ok = True
    try:
        ping = rt.services.extras["db"].ping()
        if hasattr(ping, "__await__"):
            await ping
        checks["store"] = "ok"
    except Exception as exc:
        ok, checks["store"] = False, f"unavailable: {type(exc).__name__}"
    try:
        checks["queue"] = {"status": "ok", "depth": await rt.services.queue.depth()}
    except Exception as exc:
        ok, checks["queue"] = False, f"unavailable: {type(exc).__name__}"
    if rt.role_worker:
        if rt.sandbox_problems:
            ok = False
            checks["sandbox"] = {"status": "unavailable", "problems": rt.sandbox_problems}
        else:
            checks["sandbox"] = "ok"
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(rt: Any = Depends(runtime)) -> Response:
    try:
        rt.metrics.queue_depth.set(await rt.services.queue.depth())
    except Exception:
        pass
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@receipts_router.get("/public-key", response_class=_PemResponse)
async def receipt_public_key(rt: Any = Depends(runtime)) -> PlainTextResponse:
    return _PemResponse(public_key_pem(rt.signing_key))


@receipts_router.get("/public-keys")
async def receipt_public_keys(rt: Any = Depends(runtime)) -> dict[str, Any]:
    """Every key a receipt of this deployment may be signed with: the current one (what
    ``/v1/receipts/public-key`` serves), the retired ones (``STOCKADE_SIGNING_KEY_FILES_RETIRED``), so a
    receipt handed out before a rotation still verifies, and during a rolling rotation the next one
    (``STOCKADE_SIGNING_KEY_FILE_NEXT``, first, ``"next": true``; every other key ``false``), which nodes already
    rotated sign with.
    A receipt's ``key_id`` names its key."""
    keys = [(rt.signing_key, True), *((k, False) for k in reversed(rt.retired_signing_keys))]  # newest first
    data = [{"key_id": key_id(k), "pem": public_key_pem(k), "current": cur, "next": False} for k, cur in keys]
    if rt.next_signing_key is not None:
        nxt = rt.next_signing_key
        data.insert(0, {"key_id": key_id(nxt), "pem": public_key_pem(nxt), "current": False, "next": True})
    return {"data": data}
