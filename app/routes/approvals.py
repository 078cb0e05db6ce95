"""Human-in-the-loop: list pending approvals, decide once (admin or approver keys).

A rule may ask for more (policy ``approval: {approvers: N, separate: true}``): ``separate`` bars the
key that started the run, every key bound to the run's user, and every key made after the request was
raised, from voting (``approval.separation``, nothing recorded); ``approvers: N`` needs N distinct
keys - distinct users, for keys bound to one - to approve, and one reject rejects. Each vote is audited
before it is stored (``approval.vote``; the deciding one as ``approval.approved`` /
``approval.rejected``, once, as with a single approver); the store appends it with the request locked,
and only if no other vote landed since this process looked (else the record is voided and the vote
judged again), so what was audited is what happened.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from app.deps import READ_ROLES, require_role, runtime
from app.strict_json import StrictJSONRoute
from supervisor.chain.approval import RUN_ENDED, withdraw
from supervisor.errors import StockadeError
from supervisor.storable import text
from supervisor.stores.records import TERMINAL_STATUSES, Approval
from supervisor.tenancy import Principal

_Reason = text(max_length=2000)

__all__ = ["router"]

router = APIRouter(prefix="/v1/approvals", tags=["approvals"], route_class=StrictJSONRoute)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    decision: Literal["approve", "reject"]
    reason: _Reason | None = None
    args_hash: str | None = Field(default=None, max_length=128)  # optional: bind to what the approver saw


def approval_json(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id, "object": "approval", "run_id": a.run_id, "tool": a.tool, "args": a.args,
        "args_hash": a.args_hash, "rule_id": a.rule_id, "reason": a.reason, "status": a.status,
        "created_at": a.created_at, "expires_at": a.expires_at, "decided_at": a.decided_at,
        "decided_by": a.decided_by, "decision_reason": a.decision_reason,
        "required_approvals": a.required_approvals, "separate": a.separate,
        "votes": [{"key_id": v.get("key_id"), "user_id": v.get("user_id"), "decision": v.get("decision"),
                   "at": v.get("at"), "reason": v.get("reason")} for v in a.votes],
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


VOTE_TRIES = 8  # judgements of one vote while other votes keep landing on the same request


@router.post("/{approval_id}/decision")
async def decide(approval_id: str, body: Decision, rt: Any = Depends(runtime),
                 p: Principal = Depends(require_role("admin", "approver"))) -> dict[str, Any]:
    s = rt.services
    for _ in range(VOTE_TRIES):
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
        if a.separate:  # refused before anything is recorded: no audit record may claim a decision never made
            await _independent(s, p, a, run)
        if any(v.get("key_id") == p.key_id or (p.user_id is not None and v.get("user_id") == p.user_id)
               for v in a.votes):
            raise StockadeError("approval.already_decided", f"you have already voted on approval {approval_id}")
        decided = await _vote(rt, p, a, body)
        if decided is not None:
            return approval_json(decided)
    raise StockadeError("conflict", "other votes kept landing on this approval; try again")


async def _independent(s: Any, p: Principal, a: Approval, run: Any) -> None:
    """``separate``: the voter is not the run's starter (its key, its user's keys), nor a key made since the
    request was raised. An admin could otherwise answer its own run's request with a fresh key minted for
    the purpose: whoever decides must have held its key before the request."""
    if p.key_id == run.key_id or (run.user_id is not None and p.user_id == run.user_id):
        raise StockadeError("approval.separation",
                            "separation of duties: the key that started the run, or a key of the run's user, "
                            "may not decide its approval")
    key = await s.tenants.find_key(p.key_hash) if p.key_hash else None
    if key is None or key.id != p.key_id or key.created_at >= a.created_at:
        raise StockadeError("approval.separation",
                            "separation of duties: a key made after the approval was requested may not decide it")


async def _vote(rt: Any, p: Principal, a: Approval, body: Decision) -> Approval | None:
    """Audit, then store, one vote; None when another vote landed since ``a`` was read (judge it again)."""
    s = rt.services
    approves = sum(1 for v in a.votes if v.get("decision") == "approve") + (body.decision == "approve")
    final = body.decision == "reject" or approves >= a.required_approvals
    status = "approved" if body.decision == "approve" else "rejected"
    kind = f"approval.{status}" if final else "approval.vote"
    detail = {"approval_id": a.id, "approver_key_id": p.key_id, "reason": body.reason}
    if a.required_approvals > 1 or a.votes:
        detail.update(vote=body.decision, votes=len(a.votes) + 1, required_approvals=a.required_approvals)
    # the vote (the decision, when it is the deciding one) is audited first: if it cannot be recorded, it is not made
    rec = await rt.recorder.record(p.tenant_id, kind, run_id=a.run_id, tool=a.tool, args_hash=a.args_hash,
                                   rule_id=a.rule_id, detail=detail)
    try:
        if a.required_approvals == 1:  # one decision: the conditional update is the arbiter, as it always was
            return await s.approvals.decide(p.tenant_id, a.id, status=status, decided_by=p.key_id, reason=body.reason,
                                            now=time.time(), user_id=p.user_id)
        return await s.approvals.vote(p.tenant_id, a.id, key_id=p.key_id, user_id=p.user_id,
                                      decision=body.decision, reason=body.reason, now=time.time(),
                                      expected_votes=len(a.votes))
    except StockadeError as exc:
        if exc.code not in ("approval.already_decided", "approval.expired", "conflict", "not_found"):
            # The store failed: the vote may still have been kept (only its answer lost), or not.
            kept = await s.approvals.get(p.tenant_id, a.id)  # raises if the store is still away
            if kept is not None and any(v.get("key_id") == p.key_id for v in kept.votes[len(a.votes):]):
                return kept
        # Another vote or decision (or the expiry) got there between our look and our write, or the write
        # was lost: the record above names a vote that was never cast. The chain cannot be edited, so it is
        # voided (else a retry would leave two records of one vote in the log).
        await rt.recorder.record(p.tenant_id, "approval.void", run_id=a.run_id, tool=a.tool,
                                 args_hash=a.args_hash, rule_id=a.rule_id, code=exc.code,
                                 detail={"approval_id": a.id, "voids_seq": rec.seq, "approver_key_id": p.key_id})
        if exc.code == "conflict":
            return None
        raise
