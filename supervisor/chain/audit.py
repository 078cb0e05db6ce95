"""Audit: the outermost step records every outcome; the gate before execute records the allow.

One record per decision: refusals (denied, invalid, deduped, rate-limited, over
budget, rejected) get one record from ``AuditInterceptor``; a call refused because
its approval was rejected, expired or vanished is ``tool.rejected`` (code
``approval.rejected``) - the approver's decision is the API's ``approval.rejected``. An allowed call gets
its ``tool.allowed`` record from ``AuditGate`` *before* it executes — if that
record cannot be written the call does not run — and its outcome
(``tool.completed`` / ``tool.failed`` with the settled cost) afterwards - for a
run's calls right after the result is sent (``CallState.after_reply``), and
always before the call counts as finished (so before the run can end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import CallState, Next, through_cancel
from supervisor.errors import StockadeError

__all__ = ["AuditGate", "AuditInterceptor"]

log = logging.getLogger("stockade.audit")

_KIND_BY_CODE = {
    "policy.denied": "tool.denied",
    "input.invalid": "tool.invalid",
    "tool.unknown": "tool.invalid",
    "idempotency.mismatch": "tool.invalid",
    "rate.limited": "rate.limited",
    "rate.unavailable": "rate.unavailable",
    "budget.exceeded": "budget.exceeded",
    "ledger.unavailable": "ledger.unavailable",
    # the call refused for want of an approval (rejected, expired, vanished): its outcome, not the decision
    # (approval.rejected is the approver's record); chains written before this hold approval.rejected here
    "approval.rejected": "tool.rejected",
    "policy.unavailable": "policy.unavailable",
    "audit.unavailable": "audit.unavailable",
}


def _detail(call: CallState, **more: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "verdict": call.verdict, "reason": call.reason, "resource": call.resource,
        "request_id": call.request_id, "duration_ms": round((time.monotonic() - call.started_mono) * 1000, 3),
    }
    if call.called_as is not None:  # mcp.call, resolved to the call it made (the record's tool)
        d["called_as"] = call.called_as
    if call.approval_id:
        d["approval_id"] = call.approval_id
    if call.reservation_id:
        d["reservation_id"] = call.reservation_id
        d["reserved_micro"] = call.reserved_micro
    if call.dedupe_key:
        d["idempotency_key"] = call.dedupe_key
    for k in ("downgraded", "approval", "budget_tier", "policy_layer", "delayed_s", "rate_limit"):
        if k in call.extra:
            d[k] = call.extra[k]
    d.update(more)
    return {k: v for k, v in d.items() if v is not None}


async def _write(recorder: AuditRecorder, call: CallState, kind: str, code: str | None, **more: Any):
    b = call.binding
    tool = call.tool_name
    if type(tool) is not str:  # a bundle's ``"tool": 5`` or list: stored as text, so sealed as text too
        tool = repr(tool)[:64]
    return await recorder.record(
        b.tenant_id, kind, run_id=b.run_id, tool=tool, args_hash=call.args_hash, rule_id=call.rule_id,
        policy_version=call.policy_version, code=code, cost_micro=call.cost_micro if kind != "tool.allowed" else 0,
        detail=_detail(call, **more),
    )


class AuditInterceptor:
    def __init__(self, recorder: AuditRecorder) -> None:
        self.recorder = recorder

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        try:
            result = await next(call)
        except StockadeError as exc:
            call.error = exc
            kind = call.outcome or _KIND_BY_CODE.get(exc.code, "tool.failed")
            await through_cancel(self._safe(call, kind, exc.code, message=exc.public_detail))
            raise
        except Exception as exc:
            call.error = exc
            await through_cancel(self._safe(call, "tool.failed", "internal"))
            raise
        except asyncio.CancelledError:  # the run ended (canceled, timed out), or the bundle let go of the call
            code = "call.canceled" if call.extra.get("canceled_by") == "bundle" else "run.ended"
            await asyncio.shield(self._safe(call, "tool.canceled", code))
            raise
        kind = "tool.deduped" if call.deduped else "tool.completed"
        if call.after_reply is not None:
            # The decision (tool.allowed) was recorded before the tool ran; its outcome record can be
            # written while the bundle already reads the result.
            call.after_reply.append(lambda: self._safe(call, kind, None))
        else:
            await self._safe(call, kind, None)
        return result

    async def _safe(self, call: CallState, kind: str, code: str | None, **more: Any):
        try:
            return await _write(self.recorder, call, kind, code, **more)
        except StockadeError:
            # The outcome happened (a refusal, or an execution already admitted by the gate's record);
            # losing its second record is logged loudly, never silently swallowed.
            log.error("audit outcome record %s for run %s could not be written", kind, call.binding.run_id)
            return None


class AuditGate:
    def __init__(self, recorder: AuditRecorder) -> None:
        self.recorder = recorder

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        call.verdict = call.verdict or "allow"
        await _write(self.recorder, call, "tool.allowed", None)  # raises audit.unavailable: nothing runs
        if call.announced is not None:
            await call.announced  # the run's tool.call event is stored (or the run has ended: nothing runs)
        return await next(call)
