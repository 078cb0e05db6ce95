"""Step 3: at most once. A repeated key returns the first result, marked deduped, charging nothing.

Keys: an explicit ``idempotency_key`` (scoped by tenant and tool), or for tools
with side effects one derived from run + tool + canonical args. Concurrent
duplicates: the first claims the key and executes; the others wait for its
result through the store (so it works across processes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from supervisor.chain.base import CallState, Next
from supervisor.errors import StockadeError
from supervisor.storable import scrub_nul

__all__ = ["IdempotencyInterceptor"]

WAIT_STEP_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def _has_side_effects(call: CallState) -> bool:
    per_call = getattr(call.tool, "side_effects_for", None)  # e.g. http.request: POST yes, GET no
    if per_call is not None:
        return bool(per_call(call.args))
    return bool(getattr(call.tool, "side_effects", False))


class IdempotencyInterceptor:
    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        b = call.binding
        if call.idempotency_key is not None:
            key = f"k:{call.tool_name}:{call.idempotency_key}"
        elif _has_side_effects(call):
            key = f"d:{b.run_id}:{call.args_hash}"
        else:
            return await next(call)
        call.dedupe_key = key
        store = call.services.idempotency
        deadline = time.monotonic() + float(getattr(call.tool, "timeout_s", 60)) + call.services.settings.approval_ttl_s
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
                return existing.result.get("result") or {}
            if time.monotonic() > deadline:
                raise StockadeError("idempotency.in_progress", "a call with this idempotency key is still running")
            await asyncio.sleep(WAIT_STEP_S[min(step, len(WAIT_STEP_S) - 1)])
            step += 1
        try:
            result = await next(call)
        except BaseException:
            await asyncio.shield(store.abandon(b.tenant_id, key))
            raise
        # the stored copy, replayed to duplicates, has U+FFFD for any NUL (PostgreSQL cannot hold one)
        await store.complete(b.tenant_id, key, {"args_hash": call.args_hash, "result": scrub_nul(result)})
        return result
