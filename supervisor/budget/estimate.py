"""The worst-case cost of one tool call, reserved before it runs.

Three sources, first that applies wins:

1. ``tool.estimate_micro(args, ctx)`` returns an int — the tool knows its cost
   (an LLM call: input estimate + ``max_tokens`` x output price). Settlement
   then charges what the tool reports it really spent.
2. the tenant policy's ``prices:`` entry for the tool (USD per call; exact name
   first, then the first matching glob such as ``kb.*``). A call with more
   names (an MCP call is ``mcp.<server>.<tool>`` and ``mcp.call``, whichever
   spelling the bundle used) is priced by the first of its names with an
   exact entry, else by the first glob that matches any of them: one action,
   one price;
3. ``tool.default_price_micro``.

2 and 3 are *per-call* prices: a successful call costs exactly its price.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def _policy_price(names: Sequence[str], prices: Mapping[str, Any]) -> int | None:
    for name in names:
        if name in prices:
            return usd_to_micro(prices[name])
    for pattern, usd in prices.items():
        if any(c in pattern for c in "*?[") and any(fnmatchcase(name, pattern) for name in names):
            return usd_to_micro(usd)
    return None


def estimate_cost(tool: Any, args: Any, ctx: Any, policy_prices: Mapping[str, Any] | None,
                  names: Sequence[str] | None = None) -> CostEstimate:
    """``names``: every name of the call (default: the tool's own)."""
    estimator = getattr(tool, "estimate_micro", None)
    if estimator is not None:
        est = estimator(args, ctx)
        if isinstance(est, int) and not isinstance(est, bool):
            return CostEstimate(check_amount(est, "cost estimate"), per_call=False, source="tool")
    price = _policy_price(names or (str(getattr(tool, "name", "")),), policy_prices or {})
    if price is not None:
        return CostEstimate(price, per_call=True, source="policy")
    default = int(getattr(tool, "default_price_micro", 0) or 0)
    return CostEstimate(check_amount(default, "default price"), per_call=True, source="default")


def worst_case_micro(tool: Any, args: Any, ctx: Any, policy_prices: Mapping[str, Any] | None) -> int:
    """Micro-USD to reserve before ``tool`` runs with ``args``."""
    return estimate_cost(tool, args, ctx, policy_prices).micro
