"""Budget periods: a cap resets every calendar month (UTC) or never ("lifetime")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from supervisor.errors import StockadeError

__all__ = ["LIFETIME", "PERIODS", "period_key"]

LIFETIME = "lifetime"
PERIODS = ("month", LIFETIME)

# (start, end, key) of the month last asked for: strftime costs ~7 us, and every reserve asks
_month: tuple[float, float, str] = (0.0, 0.0, "")


def period_key(now: float, period: str = "month") -> str:
    """The bucket ``now`` falls in: ``"2026-11"`` for a calendar month in UTC, ``"lifetime"`` otherwise.

    Account rows are keyed by it, so a new month simply starts a new row at zero spent.
    """
    global _month
    if period == "month":
        if not isinstance(now, (int, float)) or now != now:
            raise StockadeError("input.invalid", "now must be a UNIX timestamp")
        start, end, key = _month
        if start <= now < end:
            return key
        first = datetime.fromtimestamp(now, tz=UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        key = first.strftime("%Y-%m")
        _month = (first.timestamp(), (first + timedelta(days=32)).replace(day=1).timestamp(), key)
        return key
    if period == LIFETIME:
        return LIFETIME
    raise StockadeError("input.invalid", f"unknown budget period {period!r} (use 'month' or 'lifetime')")
