"""Human-in-the-loop: list pending approvals, decide once (admin or approver keys)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from app.deps import READ_ROLES, require_role, runtime
from app.strict_json import StrictJSONRoute
from supervisor.chain.approval import RUN_ENDED, withdraw
from supervisor.errors import StockadeError
from supervisor.storable import Text
from supervisor.stores.records import TERMINAL_STATUSES, Approval
from supervisor.tenancy import Principal

__all__ = ["router"]

router = APIRouter(prefix="/v1/approvals", tags=["approvals"], route_class=StrictJSONRoute)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    decision: Literal["approve", "reject"]
    reason: Text | None = Field(default=None, max_length=2000)
    args_hash: str | None = Field(default=None, max_length=128)  # optional: bind to what the approver saw


def approval_json(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id, "object": "approval", "run_id": a.run_id, "tool": a.tool, "args": a.args,
        "args_hash": a.args_hash, "rule_id": a.rule_id, "reason": a.reason, "status": a.status,
        "created_at": a.created_at, "expires_at": a.expires_at, "decided_at": a.decided_at,
        "decided_by": a.decided_by, "decision_reason": a.decision_reason,
    }


@router.get("")
async def list_approvals(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES)),
                         status: Literal["pending", "approved", "rejected", "expired"] | None = Query(None),
                         limit: int = Query(100, ge=1, le=500),
                         run_id: str | None = Query(None, min_length=1, max_length=128),
                         before: str | None = Query(None, min_length=1, max_length=128)) -> dict[str, Any]:
    # newest first, a page at a time: ``before`` is the ``next_before`` of the page above (no request
    # is out of an approver's reach however many newer ones a bundle has raised)
    items = await rt.services.approvals.list(p.tenant_id, status=status, limit=limit, run_id=run_id,
                                             user_id=p.user_id, project_id=p.project_id, before=before)
    return {"data": [approval_json(a) for a in items], "next_before": items[-1].id if len(items) == limit else None}


@router.get("/{approval_id}")
async def get_approval(approval_id: str, rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    return approval_json(await _load(rt.services, p, approval_id))


async def _load(s: Any, p: Principal, approval_id: str) -> Approval:
    a = await s.approvals.get(p.tenant_id, approval_id)
    if a is not None and p.bound:  # a bound key sees the requests of its own runs only
        run = await s.runs.get_run(p.tenant_id, a.run_id)
        if run is None or not p.sees(run.user_id, run.project_id):
            a = None
    if a is None:
        raise StockadeError("not_found", f"no approval {approval_id}")
    return a


@router.post("/{approval_id}/decision")
async def decide(approval_id: str, body: Decision, rt: Any = Depends(runtime),
                 p: Principal = Depends(require_role("admin", "approver"))) -> dict[str, Any]:
    s = rt.services
    a = await _load(s, p, approval_id)
    if body.args_hash is not None and body.args_hash != a.args_hash:
        raise StockadeError("conflict", "the arguments changed since you looked: args_hash does not match")
    if a.status == "expired":
        raise StockadeError("approval.expired", f"approval {approval_id} expired: {a.decision_reason or 'no decision in time'}")
    if a.status != "pending":
        raise StockadeError("approval.already_decided", f"approval {approval_id} is already {a.status}")
    run = await s.runs.get_run(p.tenant_id, a.run_id)
    if run is None or run.status in TERMINAL_STATUSES:
        # nothing waits for this decision any more (its worker withdraws such requests, unless it died)
        await withdraw(s.approvals, p.tenant_id, approval_id)
        raise StockadeError("approval.expired", f"approval {approval_id} expired: {RUN_ENDED}")
    status = "approved" if body.decision == "approve" else "rejected"
    # the decision is audited first: if it cannot be recorded, it is not made
    rec = await rt.recorder.record(p.tenant_id, f"approval.{status}", run_id=a.run_id, tool=a.tool,
                                   args_hash=a.args_hash, rule_id=a.rule_id,
                                   detail={"approval_id": a.id, "approver_key_id": p.key_id, "reason": body.reason})
    try:
        decided = await s.approvals.decide(p.tenant_id, approval_id, status=status, decided_by=p.key_id,
                                           reason=body.reason, now=time.time())
    except StockadeError as exc:
        if exc.code not in ("approval.already_decided", "approval.expired"):
            # The store failed: the decision may still have been kept (only its answer lost), or not.
            kept = await s.approvals.get(p.tenant_id, approval_id)  # raises if the store is still away
            if kept is not None and kept.status == status and kept.decided_by == p.key_id:
                return approval_json(kept)
        # Another decision (or the expiry) got there between our check and our write, or the write was
        # lost: the record above names a decision that was never made. The chain cannot be edited, so
        # it is voided (else the approver's retry would leave two decisions of one request in the log).
        await rt.recorder.record(p.tenant_id, "approval.void", run_id=a.run_id, tool=a.tool,
                                 args_hash=a.args_hash, rule_id=a.rule_id, code=exc.code,
                                 detail={"approval_id": a.id, "voids_seq": rec.seq, "approver_key_id": p.key_id})
        raise
    return approval_json(decided)
