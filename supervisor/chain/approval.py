"""Step 6: ``require_approval`` suspends the call until an approver decides.

The approval is durable; the decision arrives through the ApprovalStore (any
API process may take it), which this step polls — no in-process event is the
signal. The decision binds to the hash of the exact arguments.

The rule that asked for a human also says how it is decided (policy
``approval: {approvers: N, separate: B}``); those terms are written onto the
durable request, where the API enforces them vote by vote. The request stays
pending until the N-th approve (or the first reject), so this step's wait is
the same whatever N is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from supervisor.chain.base import CallState, Next, emit_while_running
from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.policy import ApprovalSpec
from supervisor.storable import scrub_nul
from supervisor.stores.records import Approval

__all__ = ["CALL_FAILED", "RUN_ENDED", "ApprovalInterceptor", "approval_terms", "withdraw", "withdraw_run"]

RUN_ENDED = "the run ended before a decision"  # why a withdrawn request expired (also the API's)
CALL_FAILED = "the call failed while it waited for a decision"
CALL_CANCELED = "the bundle canceled the call before a decision"

POLL_S = (0.05, 0.1, 0.2, 0.25)
OUTAGE_MAX_S = 60.0  # a store outage a waiting call rides out (a restart, a failover) before it fails closed


class ApprovalInterceptor:
    def __init__(self) -> None:
        # approvals each run is waiting for (a run lives on one worker): the run is waiting_approval
        # from its first pending approval until its last one is decided, not until the first is
        self._waiting: dict[tuple[str, str], int] = {}

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        if call.verdict != "require_approval":
            return await next(call)
        s = call.services
        b = call.binding
        spec = approval_terms(call)
        now = time.time()
        approval = await s.approvals.create(Approval(
            id=new_id("apr_"), tenant_id=b.tenant_id, run_id=b.run_id, tool=call.tool_name,
            args_hash=call.args_hash or "", args=scrub_nul(call.raw_args), rule_id=call.rule_id, reason=call.reason,
            status="pending", created_at=now, expires_at=now + s.settings.approval_ttl_s,
            required_approvals=spec.approvers, separate=spec.separate,
        ))
        call.approval_id = approval.id
        run_key = (b.tenant_id, b.run_id)
        self._waiting[run_key] = self._waiting.get(run_key, 0) + 1
        failure: Exception | None = None
        let_go = False
        try:
            if self._waiting[run_key] == 1:
                await s.runs.set_status(b.tenant_id, b.run_id, "waiting_approval")
            await emit_while_running(call, "approval.requested", {
                "approval_id": approval.id, "tool": call.tool_name, "args": call.raw_args,
                "args_hash": approval.args_hash, "rule_id": call.rule_id, "reason": call.reason,
                "expires_at": approval.expires_at, "required_approvals": approval.required_approvals,
                "separate": approval.separate,
            })
            decided = await self._wait(call, approval)
        except asyncio.CancelledError:  # the run ended (canceled, timed out), or the bundle let go of the call
            await asyncio.shield(self._withdraw(call, approval))
            let_go = call.extra.get("canceled_by") == "bundle"
            raise
        except Exception as exc:  # the wait broke (a store blip): the call fails, its run goes on
            failure = exc
        finally:
            self._waiting[run_key] -= 1
            last = self._waiting[run_key] == 0
            if last:
                del self._waiting[run_key]
            if let_go:  # the run goes on: no longer waiting (unless for another call), the outcome on its stream
                await asyncio.shield(_let_go(call, approval, last))
        if failure is not None:
            # nobody waits for this request any more: off the approvers' list, the run no longer waiting
            await asyncio.shield(withdraw(s.approvals, approval.tenant_id, approval.id, CALL_FAILED))
            with contextlib.suppress(StockadeError):  # best effort: the store may be what failed
                if last:
                    await s.runs.set_status(b.tenant_id, b.run_id, "running")
                await emit_while_running(call, "approval.resolved", {
                    "approval_id": approval.id, "decision": "expired", "decided_by": None, "reason": CALL_FAILED,
                })
            raise failure
        if last:
            await s.runs.set_status(b.tenant_id, b.run_id, "running")
        await emit_while_running(call, "approval.resolved", {
            "approval_id": decided.id, "decision": decided.status, "decided_by": decided.decided_by,
            "reason": decided.decision_reason,
        })
        call.extra["approval"] = {"id": decided.id, "status": decided.status, "decided_by": decided.decided_by}
        if decided.status == "approved" and decided.args_hash == call.args_hash:
            call.verdict = "allow"
            return await next(call)
        # the call's outcome is a tool.* record (tool.rejected, code approval.rejected); the decision itself is
        # the approver's record (approval.rejected, written by the API), so a rejection is one approval.rejected
        call.outcome = "tool.rejected"
        if decided.status == "expired":
            raise StockadeError("approval.rejected", "the approval request expired without a decision", approval_id=decided.id)
        raise StockadeError("approval.rejected", decided.decision_reason or "rejected by an approver", approval_id=decided.id)

    async def _wait(self, call: CallState, approval: Approval) -> Approval:
        s = call.services
        step = 0
        down_since: float | None = None
        told = 0  # votes already on the run's stream
        while True:
            try:
                current = await s.approvals.get(approval.tenant_id, approval.id)
            except StockadeError as exc:
                # the store is away (PostgreSQL restarting, a failover): the human's decision is not lost with
                # it, so the call waits on - at most OUTAGE_MAX_S of outage, and not past the request's expiry;
                # then it fails closed with the store's code
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if (not exc.code.endswith(".unavailable") or now - down_since >= OUTAGE_MAX_S
                        or time.time() >= approval.expires_at):
                    raise
                await asyncio.sleep(POLL_S[-1])
                continue
            down_since = None
            if current is None:  # the durable request is gone (removed behind the store's back): fail closed
                call.outcome = "tool.rejected"
                raise StockadeError("approval.rejected", "the approval request no longer exists", approval_id=approval.id)
            if current.status == "expired" and current.decision_reason == RUN_ENDED:
                # the run ended (the API's cancel withdraws its requests before this worker hears of it): the call
                # ends as every call of an ended run does (tool.canceled, run.ended), not as an approval that
                # expired without a decision
                raise asyncio.CancelledError(RUN_ENDED)
            told = await _tell_votes(call, current, told)
            if current.status != "pending":
                return current
            now = time.time()
            if now >= approval.expires_at:
                try:
                    return await s.approvals.decide(
                        approval.tenant_id, approval.id, status="expired", decided_by=None,
                        reason="expired without a decision", now=now,
                    )
                except StockadeError:
                    await asyncio.sleep(POLL_S[0])
                    continue  # decided concurrently (or the store is away); read it again
            await asyncio.sleep(POLL_S[min(step, len(POLL_S) - 1)])
            step += 1

    @staticmethod
    async def _withdraw(call: CallState, approval: Approval) -> None:
        reason = CALL_CANCELED if call.extra.get("canceled_by") == "bundle" else RUN_ENDED
        await withdraw(call.services.approvals, approval.tenant_id, approval.id, reason)


async def _let_go(call: CallState, approval: Approval, last: bool) -> None:
    """The bundle let go of a call that waited for a decision: the run is ``running`` again (unless it waits for
    another call) and its stream says how the request ended (withdrawn: expired; or the decision that crossed
    the cancel). Found by a walkthrough: the run stayed ``waiting_approval`` with nothing pending, and the
    request's end never reached the stream."""
    s = call.services
    with contextlib.suppress(StockadeError):  # best effort: the store may be away
        if last:
            await s.runs.set_status(approval.tenant_id, approval.run_id, "running")
        current = await s.approvals.get(approval.tenant_id, approval.id)
        if current is not None and current.status != "pending":
            await emit_while_running(call, "approval.resolved", {
                "approval_id": current.id, "decision": current.status, "decided_by": current.decided_by,
                "reason": current.decision_reason,
            })


async def _tell_votes(call: CallState, current: Approval, told: int) -> int:
    """Each vote of an N-person request not yet on the run's stream, as ``approval.vote`` (the deciding one
    too, before ``approval.resolved``): a client sees "1 of 2" as it happens. Votes are cast on any API
    process; this step sees them as it polls. A store away loses none: the rest go out at the next poll.
    One approver's decision is its ``approval.resolved`` alone."""
    if current.required_approvals <= 1:
        return told
    approvals = sum(1 for v in current.votes[:told] if v.get("decision") == "approve")  # before the first untold
    for vote in current.votes[told:]:
        approvals += vote.get("decision") == "approve"
        try:
            await emit_while_running(call, "approval.vote", {
                "approval_id": current.id, "decision": vote.get("decision"), "key_id": vote.get("key_id"),
                "user_id": vote.get("user_id"), "reason": vote.get("reason"), "approvals": approvals,
                "required_approvals": current.required_approvals,
            })
        except StockadeError as exc:
            if not exc.code.endswith(".unavailable"):
                raise
            break
        told += 1
    return told


def approval_terms(call: CallState) -> ApprovalSpec:
    """The approval terms of the rule that asked for a human, as the policy step judged them (the
    verdict carries them). A call that reached this step without them fails closed
    (``policy.unavailable``), never with laxer terms."""
    spec = call.extra.get("approval_terms")
    if not isinstance(spec, ApprovalSpec):
        raise StockadeError("policy.unavailable", "the rule that asked for approval gave no terms",
                            rule_id=call.rule_id)
    return spec


async def withdraw(approvals: Any, tenant_id: str, approval_id: str, reason: str = RUN_ENDED) -> None:
    """Take a still-pending request off the approvers' list (as expired, ``reason``): nobody waits for it."""
    try:
        await approvals.decide(tenant_id, approval_id, status="expired", decided_by=None, reason=reason,
                               now=time.time())
    except StockadeError:
        pass  # decided meanwhile, or the store is away: the sweeper expires it at expires_at


async def withdraw_run(approvals: Any, tenant_id: str, run_id: str) -> None:
    """Every pending request of an ended run (the API's cancel: at once, even if the run's worker is gone)."""
    try:
        pending = await approvals.list(tenant_id, status="pending", run_id=run_id, limit=1000)
    except StockadeError:
        return  # the store is away: the worker (or the sweeper, at expires_at) withdraws them
    for a in pending:
        await withdraw(approvals, tenant_id, a.id)
