"""Budget step: reserve the worst case on every tier before the call, settle after.

Order: after rate limiting (a refused call reserves nothing), before approval
and execution (nothing runs unreserved). Fails closed: a ledger that cannot
answer refuses the call with ``ledger.unavailable``.

Settlement (success or failure, cancellation included) commits what the call
really cost and releases the rest; a per-call priced tool (policy ``prices:``
or the tool's default) costs its price when it succeeds. If the ledger is
unreachable *after* the call ran, the commit is retried in the background
(``commit`` is idempotent, and a late commit after the sweeper released the
reservation still charges what fits under the caps), so the spend is not lost
while the process lives; ``drain()`` waits for those retries.

Warnings: the ledger marks each account row (one per tier per period) when it
first passes 80 % of its cap, atomically with the charge, so ``budget.warning``
is emitted once per tier per period across every node and restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

from supervisor.budget import MAX_MICRO, CostEstimate, estimate_cost, micro_to_usd, scopes_for
from supervisor.chain.base import CallState, Next, emit_while_running
from supervisor.errors import StockadeError, log_failure

__all__ = ["BudgetInterceptor"]

log = logging.getLogger("stockade.budget")

_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 5.0
_RETRY_FOR_S = 3600.0  # keep retrying a lost settlement this long before giving up loudly


def _new_reservation_id() -> str:
    try:
        from supervisor.ids import new_id
    except ImportError:  # pragma: no cover - ids is part of the skeleton
        return "rsv_" + uuid.uuid4().hex
    return new_id("rsv_")


def _unavailable() -> StockadeError:
    return StockadeError("ledger.unavailable", "The budget ledger cannot be reached; the call was not run.")


class BudgetInterceptor:
    """Reads ``call.extra['prices']`` (the tenant policy's ``prices:``, USD per call) and
    ``call.extra['llm_prices']`` (its per-token LLM prices) when present."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[Any]] = set()

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        llm_prices = call.extra.get("llm_prices")
        if llm_prices and call.tool_ctx is not None:
            # The tenant's LLM prices (policy step) must price the worst case too, not only the
            # execution: estimated at the shipped prices, a call whose tenant pays more reserved
            # a fraction of its cost and was charged no more (settlement is capped at the reservation).
            call.tool_ctx.llm_prices = llm_prices
        est = estimate_cost(call.tool, call.args, call.tool_ctx, call.extra.get("prices") or {}, names=call.names())
        if est.micro <= 0:
            return await next(call)
        rid = await self._reserve(call, est)
        try:
            result = await next(call)
        except BaseException:
            await self._settle(call, est, rid, succeeded=False)
            raise
        await self._settle(call, est, rid, succeeded=True)
        return result

    # --- reserve

    async def _reserve(self, call: CallState, est: CostEstimate) -> str:
        s = call.services
        b = call.binding
        now = time.time()
        # The reservation must outlive the call (and a human approval wait), or the
        # sweeper would hand its room to others while the call still runs.
        ttl = float(s.settings.reservation_ttl_s) + float(getattr(call.tool, "timeout_s", 0) or 0)
        if call.verdict == "require_approval":
            ttl += float(s.settings.approval_ttl_s)
        rid = _new_reservation_id()
        try:
            await s.ledger.reserve(b.tenant_id, scopes_for(b), est.micro, reservation_id=rid, run_id=b.run_id,
                                   expires_at=now + ttl, now=now)
        except StockadeError as exc:
            if exc.code == "budget.exceeded":
                call.outcome = "budget.exceeded"
                call.extra["budget_tier"] = exc.extra.get("tier")
                call.error = exc
                raise
            if exc.code in ("ledger.unavailable", "store.unavailable"):
                err = exc if exc.code == "ledger.unavailable" else _unavailable()
                call.outcome = "ledger.unavailable"
                call.error = err
                raise err from exc
            raise
        except Exception as exc:  # an adapter bug must not open the door either
            log.exception("ledger reserve failed")
            err = _unavailable()
            call.outcome = "ledger.unavailable"
            call.error = err
            raise err from exc
        call.reservation_id = rid
        call.reserved_micro = est.micro
        return rid

    # --- settle

    async def _settle(self, call: CallState, est: CostEstimate, rid: str, *, succeeded: bool) -> None:
        spent = _reported_cost(call, est)
        if succeeded and est.per_call and spent == 0:
            spent = est.micro  # a per-call price is what a successful call costs
        task = asyncio.ensure_future(self._settle_and_report(call, est, rid, spent))
        self._track(task)
        # Shielded: a cancelled run still settles (cancel = interrupted call, charged what it spent).
        await asyncio.shield(task)

    async def _settle_and_report(self, call: CallState, est: CostEstimate, rid: str, actual: int) -> None:
        s = call.services
        b = call.binding
        now = time.time()
        try:
            entries = await s.ledger.commit(b.tenant_id, rid, actual, tool=call.tool_name, now=now)
        except Exception as exc:
            if isinstance(exc, StockadeError) and exc.code not in ("ledger.unavailable", "store.unavailable"):
                log.error("settling reservation %s of run %s failed: %s", rid, b.run_id, exc)
                return
            # The call ran: its cost must reach the ledger. commit is idempotent, so retrying is safe.
            log.warning("could not settle %s (%d micro-USD): %s; retrying in the background", rid, actual, exc)
            self._track(asyncio.ensure_future(self._retry_commit(s.ledger, b.tenant_id, rid, actual, call.tool_name, now)))
            call.cost_micro = min(actual, est.micro)  # what the commit will charge (never above the reservation)
            return
        charged = entries[0].amount_micro if entries else 0
        call.cost_micro = charged
        call.extra["budget"] = {"reserved_micro": est.micro, "charged_micro": charged, "source": est.source}
        if actual > charged:
            call.extra["budget"]["unbilled_micro"] = actual - charged
        await self._report(call, est, entries, charged)

    async def _retry_commit(self, ledger: Any, tenant_id: str, rid: str, actual: int, tool: str, now: float) -> None:
        delay = _RETRY_FIRST_S
        deadline = time.monotonic() + _RETRY_FOR_S
        while True:
            await asyncio.sleep(delay)
            try:
                await ledger.commit(tenant_id, rid, actual, tool=tool, now=now)
                log.info("settled reservation %s after the ledger came back", rid)
                return
            except StockadeError as exc:
                if exc.code not in ("ledger.unavailable", "store.unavailable"):
                    log.error("settling reservation %s failed for good: %s", rid, exc)
                    return
            except Exception:
                log.warning("settling reservation %s failed; retrying", rid, exc_info=True)
            if time.monotonic() > deadline:
                log.error("gave up settling reservation %s of tenant %s (%d micro-USD)", rid, tenant_id, actual)
                return
            delay = min(delay * 2, _RETRY_MAX_S)

    # --- events

    async def _report(self, call: CallState, est: CostEstimate, entries: list[Any], charged: int) -> None:
        if call.emit is None:
            return
        tiers = [_tier_from_entry(e) for e in entries]
        if not tiers:
            try:
                mine = set(scopes_for(call.binding))
                accounts = await call.services.ledger.accounts(call.binding.tenant_id, time.time())
                tiers = [_tier_from_account(a) for a in accounts if (a.scope, a.scope_id) in mine]
            except StockadeError:
                tiers = []
        await self._emit(call, "usage", {
            "tool": call.tool_name, "cost_usd": micro_to_usd(charged), "reserved_usd": micro_to_usd(est.micro),
            "tiers": tiers,
        })
        for e in entries:
            if e.detail.get("warning_pct") and e.detail.get("cap_micro"):
                cap = int(e.detail["cap_micro"])
                spent = int(e.detail.get("spent_micro", 0))
                await self._emit(call, "budget.warning", {
                    "tier": e.scope, "scope_id": e.scope_id, "period_key": e.period_key,
                    "threshold_pct": int(e.detail["warning_pct"]), "percent": round(spent * 100 / cap, 1),
                    "cap_usd": micro_to_usd(cap), "spent_usd": micro_to_usd(spent),
                })

    async def _emit(self, call: CallState, type_: str, data: dict[str, Any]) -> None:
        assert call.emit is not None
        try:
            await emit_while_running(call, type_, data)
        except Exception:  # an event that cannot be sent must not undo a settled call
            log_failure(log, "could not emit %s for run %s", type_, call.binding.run_id)

    # --- lifecycle

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for settlements still in flight, background commit retries included (bound it with asyncio.timeout)."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _reported_cost(call: CallState, est: CostEstimate) -> int:
    """What the call says it spent, as an amount the ledger takes.

    The call has run, so its reservation must be settled now whatever the tool reported: a report
    the ledger refuses (NaN, a negative, above MAX_MICRO, not a number) used to fail the commit and
    leave the reservation held until the sweeper released it - the call was never charged. A report
    that makes no sense is charged the worst case (what was reserved); a huge one is capped (the
    commit charges at most the reservation and records the overage); a fraction is rounded up.
    """
    reported = call.cost_micro
    if reported is None:
        return 0
    if type(reported) is int and 0 <= reported <= MAX_MICRO:
        return reported
    if isinstance(reported, (int, float)) and not isinstance(reported, bool) and reported >= 0:
        if reported == math.inf or reported > MAX_MICRO:
            return MAX_MICRO
        if math.isfinite(reported):
            return math.ceil(reported)
    log.error("tool %s of run %s reported the cost %r; charging its reservation (%d micro-USD)",
              call.tool_name, call.binding.run_id, reported, est.micro)
    return est.micro


def _tier_from_entry(e: Any) -> dict[str, Any]:
    d = e.detail
    out: dict[str, Any] = {"scope": e.scope, "scope_id": e.scope_id, "period_key": e.period_key,
                           "spent_usd": micro_to_usd(int(d.get("spent_micro", 0)))}
    if d.get("cap_micro") is not None:
        out["cap_usd"] = micro_to_usd(int(d["cap_micro"]))
        out["remaining_usd"] = micro_to_usd(max(0, int(d.get("remaining_micro", 0))))
    return out


def _tier_from_account(a: Any) -> dict[str, Any]:
    return {"scope": a.scope, "scope_id": a.scope_id, "period_key": a.period_key,
            "spent_usd": micro_to_usd(a.spent_micro), "cap_usd": micro_to_usd(a.cap_micro),
            "remaining_usd": micro_to_usd(max(0, a.cap_micro - a.spent_micro - a.reserved_micro))}
