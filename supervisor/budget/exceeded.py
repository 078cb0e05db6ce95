"""The one ``budget.exceeded`` error every adapter raises, worded the same way."""

from __future__ import annotations

from supervisor.budget.amounts import micro_to_usd
from supervisor.errors import StockadeError

__all__ = ["exceeded_error"]


def exceeded_error(scope: str, scope_id: str, cap_micro: int, remaining_micro: int, amount_micro: int) -> StockadeError:
    remaining = max(0, int(remaining_micro))
    return StockadeError(
        "budget.exceeded",
        f"The {scope} budget ({micro_to_usd(cap_micro):.6g} USD) has {micro_to_usd(remaining):.6g} USD left;"
        f" this call may cost up to {micro_to_usd(amount_micro):.6g} USD.",
        tier=scope, scope_id=scope_id, cap_usd=micro_to_usd(cap_micro), remaining_usd=micro_to_usd(remaining),
        requested_usd=micro_to_usd(amount_micro),
    )
