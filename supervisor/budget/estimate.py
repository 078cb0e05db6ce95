"""The worst-case cost of one tool call, reserved before it runs.

Three sources, first that applies wins:

1. ``tool.estimate_micro(args, ctx)`` returns an int — the tool knows its cost
   (an LLM call: input estimate + ``max_tokens`` x output price). Settlement
   then charges what the tool reports it really spent.
2. the tenant policy's ``prices:`` entry for the tool (USD per call; exact name
   first, then the first matching glob such as ``kb.*``);
3. ``tool.default_price_micro``.

2 and 3 are *per-call* prices: a successful call costs exactly its price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from supervisor.budget.amounts import usd_to_micro
from supervisor.budget.scopes import check_amount

__all__ = ["CostEstimate", "estimate_cost", "worst_case_micro"]


@dataclass(frozen=True)
class CostEstimate:
    micro: int
    per_call: bool  # True: a fixed price per call (policy/default); False: the tool's own estimate
    source: str  # "tool" | "policy" | "default"


def _policy_price(name: str, prices: Mapping[str, Any]) -> int | None:
    if name in prices:
        return usd_to_micro(prices[name])
    for pattern, usd in prices.items():
        if any(c in pattern for c in "*?[") and fnmatchcase(name, pattern):
            return usd_to_micro(usd)
    return None


def estimate_cost(tool: Any, args: Any, ctx: Any, policy_prices: Mapping[str, Any] | None) -> CostEstimate:
    estimator = getattr(tool, "estimate_micro", None)
    if estimator is not None:
        est = estimator(args, ctx)
        if isinstance(est, int) and not isinstance(est, bool):
            return CostEstimate(check_amount(est, "cost estimate"), per_call=False, source="tool")
    name = str(getattr(tool, "name", ""))
    price = _policy_price(name, policy_prices or {})
    if price is not None:
        return CostEstimate(price, per_call=True, source="policy")
    default = int(getattr(tool, "default_price_micro", 0) or 0)
    return CostEstimate(check_amount(default, "default price"), per_call=True, source="default")


def worst_case_micro(tool: Any, args: Any, ctx: Any, policy_prices: Mapping[str, Any] | None) -> int:
    """Micro-USD to reserve before ``tool`` runs with ``args``."""
    return estimate_cost(tool, args, ctx, policy_prices).micro
