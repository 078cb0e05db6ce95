"""The one ``budget.exceeded`` error every adapter raises, worded the same way."""

from __future__ import annotations

from supervisor.budget.amounts import format_usd, micro_to_usd
from supervisor.errors import StockadeError

__all__ = ["exceeded_error"]


def exceeded_error(scope: str, scope_id: str, cap_micro: int, remaining_micro: int, amount_micro: int) -> StockadeError:
    remaining = max(0, int(remaining_micro))
    return StockadeError(
        "budget.exceeded",
        f"The {scope} budget ({format_usd(cap_micro)} USD) has {format_usd(remaining)} USD left;"
        f" this call may cost up to {format_usd(amount_micro)} USD.",
        tier=scope, scope_id=scope_id, cap_usd=micro_to_usd(cap_micro), remaining_usd=micro_to_usd(remaining),
        requested_usd=micro_to_usd(amount_micro),
    )
