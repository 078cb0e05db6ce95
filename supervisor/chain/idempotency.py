"""Step 3: at most once. A repeated key returns the first result, marked deduped, charging nothing.

Keys: an explicit ``idempotency_key`` (scoped by tenant, tool, and the run's user and project: a
result read from one user's files or project must never be replayed to another), or for tools
with side effects one derived from run + tool + canonical args + the epoch of the resource acted on
(``_derived_key``). Concurrent
duplicates: the first claims the key and executes; the others wait for its
result through the store (so it works across processes). A first call refused
(before its tool ran, or by the tool having done nothing) releases the key; one
whose tool may have acted before failing or being cut off keeps it, and that
failure is the outcome replayed to every repeat: the tool never runs twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from supervisor.chain.base import CallState, Next, through_cancel
from supervisor.errors import ERRORS, StockadeError
from supervisor.storable import scrub_nul

__all__ = ["IdempotencyInterceptor"]

WAIT_STEP_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
STALE_AFTER_S = 60.0  # past its longest hold, plus this margin for the clocks of other nodes, a claim is dead


def _has_side_effects(call: CallState) -> bool:
    per_call = getattr(call.tool, "side_effects_for", None)  # e.g. http.request: POST yes, GET no
    if per_call is not None:
        return bool(per_call(call.args))
    return bool(getattr(call.tool, "side_effects", False))


def _explicit_key(call: CallState) -> str:
    b = call.binding
    if b.user_id is None and b.project_id is None:
        return f"k:{call.tool_name}:{call.idempotency_key}"  # tool names hold no ':'
    return "u:" + json.dumps([call.tool_name, b.user_id, b.project_id, call.idempotency_key],
                             ensure_ascii=False, separators=(",", ":"))


def _derived_key(call: CallState) -> str:
    """Run + tool + canonical args, and the epoch of the resource the call acts on: a repeat is a
    duplicate while nothing else in the run has acted on that resource since (write A, write A: the
    second is deduped), a new request once something has (write A, write B, write A: the third runs -
    it was swallowed, leaving B). Tools without a resource count as one resource each. A tool whose
    repeat always means one step more (``repeats_are_new``: storage.rollback) opens a new epoch each
    call. The epochs live with the run's session, which sees every call of the run."""
    base = f"d:{call.binding.run_id}:{call.args_hash}"
    marks = call.run_marks
    if marks is None:
        return base
    resource = call.resource if isinstance(call.resource, str) else f"tool:{call.tool_name}"
    last, epoch = marks.get(resource, (None, 0))
    if last != base or getattr(call.tool, "repeats_are_new", False):
        epoch += 1
        marks[resource] = (base, epoch)
    return base if epoch == 1 else f"{base}:{epoch}"


class IdempotencyInterceptor:
    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        b = call.binding
        if call.idempotency_key is not None:
            key = _explicit_key(call)
        elif _has_side_effects(call):
            key = _derived_key(call)
        else:
            return await next(call)
        call.dedupe_key = key
        store = call.services.idempotency
        # the longest a live claimant holds its key: an approval's wait, then the tool's run
        hold_s = float(getattr(call.tool, "timeout_s", 60)) + call.services.settings.approval_ttl_s
        deadline = time.monotonic() + hold_s
        step = 0
        while True:
            existing = await store.begin(b.tenant_id, key, time.time())
            if existing is None:
                break
            if existing.state == "done" and existing.result is not None:
                if existing.result.get("args_hash") != call.args_hash:
                    call.outcome = "tool.denied"
                    raise StockadeError("idempotency.mismatch", "idempotency key reused with different arguments")
                call.deduped = True
                call.outcome = "tool.deduped"
                call.verdict = call.verdict or "allow"
                error = existing.result.get("error")
                if error is not None:  # the first call failed once its tool had started: so does every repeat
                    code = error.get("code") if error.get("code") in ERRORS else "tool.failed"
                    raise StockadeError(code, str(error.get("message") or ""), deduped=True)
                return existing.result.get("result") or {}
            if existing.created_at + hold_s + STALE_AFTER_S < time.time():
                # its claimant is gone (a worker killed mid-call): no result will ever come, and the
                # tool may have acted - fail now rather than wait out the hold for nothing
                raise StockadeError("idempotency.interrupted", "the first call with this idempotency key never "
                                    "finished (its worker was lost): whether it acted is unknown, so it is not run again")
            if time.monotonic() > deadline:
                raise StockadeError("idempotency.in_progress", "a call with this idempotency key is still running")
            await asyncio.sleep(WAIT_STEP_S[min(step, len(WAIT_STEP_S) - 1)])
            step += 1
        try:
            result = await next(call)
        except BaseException as exc:
            if not (call.extra.get("tool_started") and _may_have_acted(exc)):
                # refused before the tool ran (policy, budget, approval...) or by the tool, having done
                # nothing (quota, not found...): the key is free for a repeat, decided afresh
                await asyncio.shield(store.abandon(b.tenant_id, key))
                raise
            # The tool was cut off or failed midway: it may have acted. Releasing the key would let a
            # duplicate run it again, so the failure is the key's outcome and every repeat gets it.
            await through_cancel(store.complete(b.tenant_id, key, {"args_hash": call.args_hash,
                                                                   "error": _stored_error(exc)}))
            raise
        # the stored copy, replayed to duplicates, has U+FFFD for any NUL (PostgreSQL cannot hold one); kept
        # even if the run ends meanwhile (the tool acted: a dropped write would leave the key claimed for ever)
        await through_cancel(store.complete(b.tenant_id, key, {"args_hash": call.args_hash, "result": scrub_nul(result)}))
        return result


# What a tool raises when it may have acted before failing: interrupted, timed out, a connection lost
# midway, a response refused after the request went out. Any other error of a tool is a refusal that
# left nothing done.
_OUTCOME_UNKNOWN = frozenset({"tool.timeout", "tool.failed", "tool.unavailable", "egress.blocked",
                              "egress.too_large", "egress.too_many_redirects"})


def _may_have_acted(exc: BaseException) -> bool:
    return not isinstance(exc, StockadeError) or exc.code in _OUTCOME_UNKNOWN


def _stored_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StockadeError):
        return {"code": exc.code, "message": scrub_nul(exc.public_detail)}
    if isinstance(exc, asyncio.CancelledError):
        return {"code": "idempotency.interrupted",
                "message": "the first call with this idempotency key was cut off while its tool ran (its run "
                           "ended): whether it acted is unknown, so it is not run again"}
    return {"code": "tool.failed", "message": "the first call with this idempotency key failed"}
