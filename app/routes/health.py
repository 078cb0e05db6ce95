"""Liveness, readiness (store, queue, sandbox backend), Prometheus metrics, the receipt public keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import runtime
from app.strict_json import StrictJSONRoute
from supervisor.audit.keys import key_id, public_key_pem
from supervisor.metrics import exposition

__all__ = ["receipts_router", "router"]

router = APIRouter(tags=["health"])  # probes and scrapers: whatever query they add is theirs
# /v1 reads its query one way, as every other /v1 route (app/strict_json.py)
receipts_router = APIRouter(prefix="/v1/receipts", tags=["health"], route_class=StrictJSONRoute)


class _PemResponse(PlainTextResponse):
    media_type = "application/x-pem-file"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# A probe's client gives up after 1-3 s (the image's HEALTHCHECK: 2 s): each check answers within this, or
# reports the backend "not answering". A store that takes nothing and answers nothing (a partition, a stalled
# server) made /readyz wait on the pool's 10 s acquire, then on a query with no timeout: the probe saw no
# answer at all, never the 503 that says which backend is away.
PROBE_TIMEOUT_S = 1.0
STALE_CHECK_S = 30.0  # a check still waiting after this long is given up (cancelled) and started afresh


async def _bounded(rt: Any, name: str, make: Callable[[], Awaitable[Any]]) -> Any:
    """``make()``'s result within PROBE_TIMEOUT_S, else TimeoutError. At most one check of each kind is in
    flight per node: the probes of a stalled backend wait on the same one instead of piling up."""
    checks: dict[str, tuple[asyncio.Task[Any], float]] | None = getattr(rt, "_probe_checks", None)
    if checks is None:
        checks = rt._probe_checks = {}
    loop = asyncio.get_running_loop()
    entry = checks.get(name)
    if entry is not None and loop.time() - entry[1] > STALE_CHECK_S:
        entry[0].cancel()
        entry = None
    if entry is None:
        task = asyncio.ensure_future(make())
        entry = checks[name] = (task, loop.time())

        def forget(t: asyncio.Task[Any], checks: dict[str, Any] = checks) -> None:
            if name in checks and checks[name][0] is t:
                del checks[name]
            if not t.cancelled():
                t.exception()  # retrieved: an outage is what the probe reports, not an asyncio warning

        task.add_done_callback(forget)
    done, _ = await asyncio.wait({entry[0]}, timeout=PROBE_TIMEOUT_S)
    if not done:
        raise TimeoutError
    return entry[0].result()


async def _ping(rt: Any) -> None:
    ping = rt.services.extras["db"].ping()
    if hasattr(ping, "__await__"):
        await ping


def _unavailable(exc: BaseException) -> str:
    return "unavailable: not answering" if isinstance(exc, TimeoutError) else f"unavailable: {type(exc).__name__}"


@router.get("/readyz")
async def readyz(rt: Any = Depends(runtime)) -> JSONResponse:
    checks: dict[str, Any] = {}
    store, depth = await asyncio.gather(_bounded(rt, "store", lambda: _ping(rt)),
                                        _bounded(rt, "queue", rt.services.queue.depth), return_exceptions=True)
    ok = not isinstance(store, BaseException) and not isinstance(depth, BaseException)
    checks["store"] = _unavailable(store) if isinstance(store, BaseException) else "ok"
    checks["queue"] = _unavailable(depth) if isinstance(depth, BaseException) else {"status": "ok", "depth": depth}
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
        rt.metrics.queue_depth.set(await _bounded(rt, "queue", rt.services.queue.depth))
    except Exception:  # the queue away or slow: the scrape answers with the last depth known
        pass
    # the governance decisions this node recorded (an API node's approval votes and admin changes too), and
    # where it has workers (serve) theirs: runs ended, running, sandbox starts (supervisor/metrics.py)
    registries = rt.services.metrics.registries(worker=rt.role_worker)
    return Response(exposition(rt.metrics.registry, *registries), media_type=CONTENT_TYPE_LATEST)


async def _may_publish(rt: Any) -> None:
    """A node whose key stopped being the deployment's while it ran publishes no key as the deployment's
    (``receipt.foreign_key``, supervisor/audit/signing_watch.py): a client would trust keys no other node signs
    with, and distrust the receipts they sign."""
    if rt.signing_watch is not None:
        await rt.signing_watch.may_publish()


@receipts_router.get("/public-key", response_class=_PemResponse)
async def receipt_public_key(rt: Any = Depends(runtime)) -> PlainTextResponse:
    await _may_publish(rt)
    return _PemResponse(public_key_pem(rt.signing_key))


@receipts_router.get("/public-keys")
async def receipt_public_keys(rt: Any = Depends(runtime)) -> dict[str, Any]:
    """Every key a receipt of this deployment may be signed with: the current one (what
    ``/v1/receipts/public-key`` serves), the retired ones (``STOCKADE_SIGNING_KEY_FILES_RETIRED``), so a
    receipt handed out before a rotation still verifies, and during a rolling rotation the next one
    (``STOCKADE_SIGNING_KEY_FILE_NEXT``, first, ``"next": true``; every other key ``false``), which nodes already
    rotated sign with.
    A receipt's ``key_id`` names its key."""
    await _may_publish(rt)
    keys = [(rt.signing_key, True), *((k, False) for k in reversed(rt.retired_signing_keys))]  # newest first
    data = [{"key_id": key_id(k), "pem": public_key_pem(k), "current": cur, "next": False} for k, cur in keys]
    if rt.next_signing_key is not None:
        nxt = rt.next_signing_key
        data.insert(0, {"key_id": key_id(nxt), "pem": public_key_pem(nxt), "current": False, "next": True})
    return {"data": data}
