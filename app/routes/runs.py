"""Runs: create (with Idempotency-Key), read, cancel, stream, receipt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.accept import acceptable
from app.deps import MAX_ID, READ_ROLES, WRITE_ROLES, require_role, runtime
from app.routes._receipts import signed_receipt_bytes
from app.sse import event_stream
from app.strict_json import StrictJSONRoute
from supervisor.audit.canonical import canonical, sha256_hex
from supervisor.chain.approval import withdraw_run
from supervisor.errors import StockadeError
from supervisor.events import finish_run_anywhere
from supervisor.ids import new_id
from supervisor.storable import Text, text
from supervisor.stores.records import TERMINAL_STATUSES, Run
from supervisor.tenancy import Principal, check_membership

_Id = text(min_length=1, max_length=64)  # a user or project id; its limits said in characters

__all__ = ["router", "run_json"]

router = APIRouter(prefix="/v1/runs", tags=["runs"], route_class=StrictJSONRoute)
RECEIPT_SETTLE_S = 5.0  # the longest a receipt waits for a run's worker to record what the run's end interrupted
PAGE_BYTES = 16 * 1024 * 1024  # of inputs and answers in one page of GET /v1/runs (at least one run)


class _EventStream(StreamingResponse):
    media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Starlette leaves the stream's generator to the garbage collector when the client goes away; held
            # in a cycle through the exception's traceback, it kept its stream slot, its gauge and its bus
            # pump until a cyclic collection: closed here, at once
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # still running elsewhere: it ends with that task
                    await aclose()


_SSE_EVENT = {"type": "object", "required": ["id", "event", "data"], "properties": {
    "id": {"type": "string", "description": "the per-run sequence number"}, "event": {"type": "string"},
    "data": {"type": "string", "description": "the event as JSON"}}}


class CreateRun(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    bundle: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    input: Text = Field(max_length=256 * 1024)
    conversation_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    user_id: _Id | None = None
    project_id: _Id | None = None


def run_json(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": run.id, "object": "run", "status": run.status, "bundle": run.bundle,
        "bundle_version": run.bundle_version, "input": run.input, "conversation_id": run.conversation_id,
        "project_id": run.project_id, "user_id": run.user_id, "created_at": run.created_at,
        "started_at": run.started_at, "ended_at": run.ended_at, "output": run.output,
        "events_url": f"/v1/runs/{run.id}/events", "last_seq": run.last_seq,
    }
    if run.error_code:
        out["error"] = {"code": run.error_code, "message": run.error_message}
    return out


async def _load(rt: Any, p: Principal, run_id: str) -> Run:
    run = await rt.services.runs.get_run(p.tenant_id, run_id)
    if run is None or not p.sees(run.user_id, run.project_id):  # outside a bound key's binding: as if missing
        raise StockadeError("not_found", f"no run {run_id}")
    return run


@router.post("", status_code=201)
async def create_run(body: CreateRun, request: Request, rt: Any = Depends(runtime),
                     p: Principal = Depends(require_role(*WRITE_ROLES)),
                     idempotency_key: str | None = Header(default=None, min_length=1, max_length=255)) -> JSONResponse:
    s = rt.services
    if len(request.headers.getlist("idempotency-key")) > 1:  # the first was the key; a proxy may take the last
        raise StockadeError("input.invalid", "send one Idempotency-Key header")
    user_id = p.user_id or body.user_id
    project_id = p.project_id or body.project_id
    if p.user_id and body.user_id and body.user_id != p.user_id:
        raise StockadeError("auth.forbidden", "this key is bound to another user")
    if p.project_id and body.project_id and body.project_id != p.project_id:
        raise StockadeError("auth.forbidden", "this key is bound to another project")
    # the run as it will be stored (a bound key's user / project included): a key naming another user's run
    # of the same body is a mismatch, never a replay of that run
    request_hash = sha256_hex(canonical({**body.model_dump(), "user_id": user_id, "project_id": project_id}))
    # what a run stored before f45d3cf holds (the body alone): its client's retry after an upgrade is still a
    # replay. Safe to accept: the same body, and a replay is still only of a run the caller sees (_replay)
    # (only a request with an Idempotency-Key can be a replay: no second hash on the plain path)
    hashes = (request_hash, sha256_hex(canonical(body.model_dump()))) if idempotency_key is not None else (request_hash,)
    stored_key = _scoped_key(p, idempotency_key) if idempotency_key is not None else None
    if stored_key is not None and stored_key != idempotency_key:
        # stored before keys were scoped by binding (raw): still this key's run, if it is one it sees
        legacy = await s.runs.get_run_by_idempotency_key(p.tenant_id, idempotency_key)
        if legacy is not None and p.sees(legacy.user_id, legacy.project_id):
            return _replay(legacy, hashes, p)
    if stored_key is not None:
        # a retry is answered with its run before anything that may have changed since the run was created
        # is checked again: its bundle deleted, its user or project gone, a membership ended - a client
        # whose first answer was lost got 404/403 for a run that exists (and runs), and posted it anew
        # (_replay still checks the body and that the caller sees the run)
        earlier = await s.runs.get_run_by_idempotency_key(p.tenant_id, stored_key)
        if earlier is not None:
            return _replay(earlier, hashes, p)
    if body.user_id and not p.user_id and await s.tenants.get_user(p.tenant_id, body.user_id) is None:
        raise StockadeError("not_found", f"no user {body.user_id}")
    if body.project_id and not p.project_id and await s.tenants.get_project(p.tenant_id, body.project_id) is None:
        raise StockadeError("not_found", f"no project {body.project_id}")
    # a run for a user in a project: the user must be a member (a project-bound key is not every user)
    await check_membership(s, p.tenant_id, user_id, project_id)
    version = await rt.registry.resolve(p.tenant_id, body.bundle)
    run = Run(
        id=new_id("run_"), tenant_id=p.tenant_id, bundle=version.name, bundle_version=version.digest,
        input=body.input, status="queued", created_at=time.time(), project_id=project_id, user_id=user_id,
        key_id=p.key_id, conversation_id=body.conversation_id or None, idempotency_key=stored_key,
        request_hash=request_hash,
    )
    stored, created = await s.runs.create_run(run)
    if not created:
        return _replay(stored, hashes, p)
    try:
        await s.queue.enqueue(stored.tenant_id, stored.id)
    except StockadeError as exc:
        # Stored but never queued: no worker would ever take it, so it must not stay queued (its clients
        # would wait forever, a retry with the same Idempotency-Key would get it back). It ends here, failed
        # with the queue's error - never run later behind the back of a client that was told 503.
        try:
            await finish_run_anywhere(s.runs, s.events, stored.tenant_id, stored.id, "failed",
                                      {"code": exc.code, "message": f"the run could not be queued: {exc.public_detail}"},
                                      ended_at=time.time(), error_code=exc.code,
                                      error_message=f"the run could not be queued: {exc.public_detail}")
        except StockadeError:
            pass
        raise
    rt.metrics.runs_created.inc()
    return JSONResponse(run_json(stored), status_code=201)


def _scoped_key(p: Principal, key: str) -> str:
    """The Idempotency-Key as stored: tenant-wide for an unbound key (a backend's, with the user in the
    body: its keys are its own to keep unique), per binding for a key bound to a user and/or project.
    Two end users' keys that happened to pick the same value blocked each other (422, which also told
    one that the other had used it). The prefix (U+001E) is no character a header can carry, so no
    unbound key can spell a bound one's."""
    if p.user_id is None and p.project_id is None:
        return key
    return "\x1e" + json.dumps([p.user_id, p.project_id, key], ensure_ascii=False, separators=(",", ":"))


def _replay(run: Run, request_hashes: tuple[str, ...], p: Principal) -> JSONResponse:
    if run.request_hash not in request_hashes or not p.sees(run.user_id, run.project_id):
        raise StockadeError("idempotency.mismatch", "this Idempotency-Key was used with a different request body")
    return JSONResponse(run_json(run), status_code=201, headers={"Idempotent-Replayed": "true"})


@router.get("")
async def list_runs(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES)),
                    limit: int = Query(50, ge=1, le=200),
                    before: float | None = Query(None, allow_inf_nan=False),
                    before_id: str | None = Query(None, min_length=1, max_length=64,
                                                  pattern=r"^[A-Za-z0-9_-]+$")) -> dict[str, Any]:
    # the cursor is (created_at, id): runs created at the same instant (two API replicas) straddling a
    # page's end were skipped by a created_at alone
    if before_id is not None and before is None:
        raise StockadeError("input.invalid", "before_id goes with before (both from the previous page)")
    runs = await rt.services.runs.list_runs(p.tenant_id, limit=limit, before=before, user_id=p.user_id,
                                            project_id=p.project_id, before_id=before_id, max_bytes=PAGE_BYTES)
    # a page cut short by its size (a run holds up to 256 KiB of input and an answer up to the output
    # limit: 200 of them were gigabytes in this process) goes on like a full one
    more = len(runs) == limit or sum(len(r.input.encode()) + len((r.output or "").encode()) for r in runs) >= PAGE_BYTES
    return {"data": [run_json(r) for r in runs], "next_before": runs[-1].created_at if more else None,
            "next_before_id": runs[-1].id if more else None}


@router.get("/{run_id}")
async def get_run(run_id: str, rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    return run_json(await _load(rt, p, run_id))


@router.post("/{run_id}/cancel")
async def cancel_run(run_id: str, rt: Any = Depends(runtime), p: Principal = Depends(require_role(*WRITE_ROLES))) -> dict[str, Any]:
    s = rt.services
    run = await _load(rt, p, run_id)
    if run.status in TERMINAL_STATUSES:
        raise StockadeError("run.not_cancelable", f"run {run_id} already ended ({run.status})")
    ev = await finish_run_anywhere(s.runs, s.events, p.tenant_id, run_id, "canceled",
                                   {"code": "run.canceled", "message": "canceled by the client"},
                                   ended_at=time.time(), error_code="run.canceled", error_message="canceled by the client")
    if ev is None:
        raise StockadeError("run.not_cancelable", f"run {run_id} already ended")
    # the worker hosting it sees the terminal status within a poll and kills the sandbox; reservations go
    # too, and requests for approval leave the approvers' list now (even if that worker is gone)
    try:
        await s.ledger.release_run(p.tenant_id, run_id)
    except StockadeError:
        pass
    await withdraw_run(s.approvals, p.tenant_id, run_id)
    return run_json(await _load(rt, p, run_id))


_AFTER_DOC = (f"Replay the events after this sequence number (ASCII digits, at most {MAX_ID}), then tail live. "
              "A non-empty Last-Event-ID header wins over it.")
_LAST_EVENT_ID_DOC = (f"The last sequence number the client got (ASCII digits, at most {MAX_ID}); empty: none. "
                      "Wins over ?after= (an EventSource reconnects to the same URL with it).")


def _last_event_id(raw: str) -> int:
    """The Last-Event-ID cursor: ASCII digits (leading zeros allowed) up to MAX_ID, nothing else - as ?after= is
    read (a whole-number query parameter: app/strict_json.py)."""
    # ASCII digits only ("²".isdigit() is true, int("²") fails); past bigint no store can compare it;
    # the length first: int() of more than 4300 digits raises (a 500), and is slow well before - leading
    # zeros included (int() counts them), so only the digits past them are converted
    digits = raw.lstrip("0") or "0"
    if not (raw.isascii() and raw.isdigit() and len(digits) <= len(str(MAX_ID)) and int(digits) <= MAX_ID):
        raise StockadeError("input.invalid", f"Last-Event-ID must be a sequence number: ASCII digits, at most {MAX_ID}")
    return int(digits)


@router.get("/{run_id}/events", response_class=_EventStream, responses={
    200: {"content": {"text/event-stream": {"schema": _SSE_EVENT}}},  # before OpenAPI 3.2: one event's schema
    204: {"description": "The run has ended and every event was sent: nothing to stream"},
    406: {"description": "input.not_acceptable: the Accept header admits no text/event-stream"}})
async def run_events(run_id: str, request: Request, rt: Any = Depends(runtime),
                     p: Principal = Depends(require_role(*READ_ROLES)),
                     after: int | None = Query(None, ge=0, le=MAX_ID, description=_AFTER_DOC),
                     last_event_id: str | None = Header(default=None, description=_LAST_EVENT_ID_DOC)) -> Response:
    run = await _load(rt, p, run_id)
    if not acceptable(",".join(request.headers.getlist("accept")), "text/event-stream"):
        raise StockadeError("input.not_acceptable", "this route serves text/event-stream only, which the Accept "
                                                    "header does not admit (send text/event-stream, or no Accept)")
    # one value each (a second one meant something to whatever read the request before us: a proxy, a log;
    # a repeated ?after= is refused for every route: app/strict_json.py);
    # the header wins over ?after=: an EventSource opened on ...?after=5 reconnects to that same URL with
    # Last-Event-ID set to the last event it got, the newer position
    if len(request.headers.getlist("last-event-id")) > 1:
        raise StockadeError("input.invalid", "send one Last-Event-ID header")
    cursor = after or 0  # ASCII digits only, once: app/strict_json.py reads every /v1 whole number so
    if last_event_id is not None and last_event_id.strip(" \t"):  # empty: no id (HTML's EventSource sends none then)
        cursor = _last_event_id(last_event_id.strip(" \t"))
    if run.status in TERMINAL_STATUSES and cursor >= run.last_seq:
        # nothing left to send, ever: an EventSource reconnects after every close (with Last-Event-ID =
        # the terminal event's id) but stops on 204 (HTML, server-sent events); a stream would stay open
        return Response(status_code=204)
    if rt.stream_slots.full(run.tenant_id):  # taken when the stream starts (app/sse.py)
        raise StockadeError("rate.limited", f"at most {rt.stream_slots.limit} open streams per tenant")
    return _EventStream(
        event_stream(rt, request, run.tenant_id, run.id, cursor, principal=p),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"},
    )


async def _settled(rt: Any, run: Run) -> None:
    """Wait (at most RECEIPT_SETTLE_S) until the worker that carried an ended run has recorded all of it.

    A run canceled through the API ends at once (its terminal event, written here), while its worker hears
    of the cancel within a poll and only then stops the call in flight and audits it ``tool.canceled``: a
    receipt asked for on ``run.canceled`` lacked that call. The worker lets go of the run (``let_go``) once
    it is all recorded; a worker that stopped beating (lost: more than two visibility timeouts quiet) is
    not waited for, nor a run no worker carried."""
    runs = rt.services.runs
    quiet_s = 2 * rt.settings.queue_visibility_s
    deadline = time.monotonic() + RECEIPT_SETTLE_S
    with contextlib.suppress(StockadeError):  # the store away: the receipt itself says so next
        while (age := await runs.held(run.tenant_id, run.id)) is not None and age < quiet_s:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)


@router.get("/{run_id}/receipt", response_model=dict[str, Any])
async def run_receipt(run_id: str, rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> Response:
    run = await _load(rt, p, run_id)
    if run.status in TERMINAL_STATUSES:
        await _settled(rt, run)
    # off the event loop, already JSON, big ones a few at a time: a big run's receipt froze the node (_receipts.py)
    return Response(await signed_receipt_bytes(rt, p.tenant_id, run), media_type="application/json")
