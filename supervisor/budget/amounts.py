"""Money as integer micro-USD: exact sums, no float drift across millions of entries."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from supervisor.errors import StockadeError

__all__ = ["MAX_LLM_PRICE_PER_MTOK", "MAX_MICRO", "MICRO_PER_USD", "cap_to_micro", "format_usd", "micro_to_usd", "usd_to_micro"]

MICRO_PER_USD = 1_000_000
# A bigint column holds 9.2e18 micro-USD; a single amount is kept far below so that sums of
# spent + reserved + amount can never overflow in SQL.
MAX_MICRO = 10**15  # 1e9 USD
# An LLM price (USD per million tokens) above this is a typo: checked where a policy is written and
# where a price is used (supervisor/tools/llm/pricing.py).
MAX_LLM_PRICE_PER_MTOK = 100_000


def usd_to_micro(usd: float | int | str | Decimal) -> int:
    """USD (as written in a policy or an API body) -> micro-USD, rounded half-up.

    Goes through ``Decimal(str(x))`` so that ``0.001`` becomes exactly 1000, not 999.
    """
    if isinstance(usd, bool):
        raise StockadeError("input.invalid", "an amount must be a number, not a boolean")
    if isinstance(usd, float) and not math.isfinite(usd):
        raise StockadeError("input.invalid", "an amount must be a finite number")
    try:
        d = usd if isinstance(usd, Decimal) else Decimal(str(usd).strip())
    except (InvalidOperation, ValueError):
        raise StockadeError("input.invalid", f"{usd!r} is not an amount in USD") from None
    if not d.is_finite():
        raise StockadeError("input.invalid", "an amount must be a finite number")
    if abs(d) > MAX_MICRO:  # 1e300 would overflow the quantize below (decimal.InvalidOperation, a traceback)
        micro = -1 if d < 0 else MAX_MICRO + 1
    else:
        micro = int((d * MICRO_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if micro < 0:
        raise StockadeError("input.invalid", "an amount cannot be negative")
    if micro > MAX_MICRO:
        raise StockadeError("input.invalid", f"an amount cannot exceed {MAX_MICRO // MICRO_PER_USD} USD")
    return micro


def cap_to_micro(usd: float | int | str | Decimal, what: str = "budget cap") -> int:
    """A cap (or price) in USD -> micro-USD; a positive one that would round to 0 is ``input.invalid``:
    a cap of 0 blocks every priced call, which 0.0000001 never meant."""
    micro = usd_to_micro(usd)
    if micro == 0 and Decimal(str(usd).strip()) > 0:
        raise StockadeError("input.invalid", f"a positive {what} is at least 0.000001 USD (one micro-USD):"
                                             " this one would round to 0")
    return micro


def micro_to_usd(micro: int) -> float:
    """For display and JSON (``cost_usd``); never fed back into arithmetic."""
    return micro / MICRO_PER_USD


def format_usd(micro: int) -> str:
    """Micro-USD as a human reads USD: exact, never an exponent (``50`` -> ``0.00005``, not ``5e-05``)."""
    whole, frac = divmod(abs(int(micro)), MICRO_PER_USD)
    return ("-" if micro < 0 else "") + str(whole) + (f".{frac:06d}".rstrip("0") if frac else "")
