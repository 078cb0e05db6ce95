"""The innermost step: run the tool with its timeout; record the actual cost."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from supervisor.chain.base import CallState
from supervisor.errors import StockadeError

__all__ = ["execute"]

log = logging.getLogger("stockade.tools")


async def execute(call: CallState) -> dict[str, Any]:
    tool = call.tool
    if call.tool_ctx is not None and call.extra.get("llm_prices"):
        call.tool_ctx.llm_prices = call.extra["llm_prices"]
    call.extra["tool_started"] = True  # from here on the tool may act (the idempotency step keeps the key)
    try:
        timeout = float(tool.timeout_s)
        if timeout > 0:
            # In this task, not a new one as wait_for makes on 3.11: a task and two loop turns less per call.
            async with asyncio.timeout(timeout):
                res = await tool.run(call.args, call.tool_ctx)
        else:  # already expired: as before, the tool never starts
            res = await asyncio.wait_for(tool.run(call.args, call.tool_ctx), timeout=timeout)
    except StockadeError as exc:
        spent = exc.extra.get("cost_micro")
        if isinstance(spent, int) and spent > 0:
            call.cost_micro = spent
        raise
    except TimeoutError:
        raise StockadeError("tool.timeout", f"{call.tool_name} did not finish within {tool.timeout_s:g}s") from None
    except asyncio.CancelledError:  # the run ended mid-call: what the tool had spent is still charged
        spent = getattr(call.tool_ctx, "spent_micro", 0)
        if isinstance(spent, int) and spent > 0:
            call.cost_micro = spent
        raise
    except Exception:
        log.exception("tool %s failed", call.tool_name)
        raise StockadeError("tool.failed", f"{call.tool_name} failed") from None
    call.cost_micro = int(res.cost_micro or 0)
    if res.usage:
        call.extra["usage"] = res.usage
    if not isinstance(res.result, dict):
        raise StockadeError("tool.failed", f"{call.tool_name} returned a non-object result")
    return res.result


