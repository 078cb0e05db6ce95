"""Budget periods: a cap resets every calendar month (UTC) or never ("lifetime")."""

from __future__ import annotations

from datetime import UTC, datetime

from supervisor.errors import StockadeError

__all__ = ["LIFETIME", "PERIODS", "period_key"]

LIFETIME = "lifetime"
PERIODS = ("month", LIFETIME)


def period_key(now: float, period: str = "month") -> str:
    """The bucket ``now`` falls in: ``"2026-11"`` for a calendar month in UTC, ``"lifetime"`` otherwise.

    Account rows are keyed by it, so a new month simply starts a new row at zero spent.
    """
    if period == "month":
        if not isinstance(now, (int, float)) or now != now:
            raise StockadeError("input.invalid", "now must be a UNIX timestamp")
        return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m")
    if period == LIFETIME:
        return LIFETIME
    raise StockadeError("input.invalid", f"unknown budget period {period!r} (use 'month' or 'lifetime')")
