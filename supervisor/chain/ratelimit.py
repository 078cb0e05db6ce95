"""Rate-limit step: every rule of the call passes (and is charged) or none is.

Sits after idempotency (a deduped call costs no quota) and before the budget
reservation. Fails closed: a limiter that cannot answer refuses the call with
``rate.unavailable``; it never lets the call through unmetered.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from supervisor.chain.base import CallState, Next
from supervisor.errors import StockadeError
from supervisor.limits import rule_kind, rules_for_call

__all__ = ["RateLimitInterceptor"]

log = logging.getLogger("stockade.ratelimit")


class RateLimitInterceptor:
    """Reads ``call.extra['rate_overrides']`` (the tenant policy's ``limits:``) and
    ``call.extra['llm_tokens']`` (the LLM tool's token estimate) when present."""

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        services = call.services
        rules = rules_for_call(
            services.settings, call.binding, call.tool_name,
            call.extra.get("rate_overrides"), int(call.extra.get("llm_tokens", 0) or 0),
        )
        try:
            decision = await services.rate.check(rules)
        except StockadeError as exc:
            if exc.code == "rate.unavailable":
                call.outcome = "rate.unavailable"
                call.error = exc
            raise
        except Exception as exc:  # an adapter bug must not open the door either
            log.exception("rate limiter failed")
            call.outcome = "rate.unavailable"
            err = StockadeError("rate.unavailable", "The rate limiter could not answer; the call was not run.")
            call.error = err
            raise err from exc
        if not decision.allowed:
            kind = rule_kind(decision.rule_key or "")
            # Whole milliseconds, rounded up: retrying earlier than this is refused again.
            retry = math.ceil(decision.retry_after_s * 1000) / 1000
            call.outcome = "rate.limited"
            call.extra["rate_limit"] = kind
            err = StockadeError(
                "rate.limited", f"Rate limit ({kind}) reached; retry after {retry:.3f} s.",
                retry_after=retry, limit=kind,
            )
            call.error = err
            raise err
        return await next(call)
