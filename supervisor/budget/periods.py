"""Budget periods: a cap resets every calendar month (UTC) or never ("lifetime").

Every tier is metered on TWO account rows, whatever its cap: the row of the month a
reservation is made in (key ``"2026-11"``) and its ``"lifetime"`` row. A reservation
holds its amount on both, its settlement charges and releases both, a release frees
both. The cap checks - and clamps a settlement on - only the row of its own period
kind (the month row when it is monthly, the lifetime row when it is lifetime); the
other row is metered, never checked.

Why both, always: an admin may switch a cap between month and lifetime at any time
(``PUT /v1/budgets``). With one row per tier (the cap's kind, as before migration
0043) the row of the new kind had never seen the tier's spend: a "$100 lifetime" cap
set after $90 was spent under a monthly one admitted another $100, and a monthly cap
set on a lifetime tier forgot this month's spend. Metering both kinds makes a switch
nothing but a change of which row is checked: the lifetime row holds everything ever
spent in the tier, the month row everything spent (and held) this month, including
reservations held across the switch, which settle or release on both rows, once.
Seeding a new row from the ledger at switch time was the alternative; it loses what
reservations held across the switch settle later, and needs a scan per switch.

The ledger still writes ONE entry per tier and charge, on the row its cap checks at
settlement (the month row when uncapped), so entries, receipts and their sums are
unchanged. Cost: a reservation locks two rows per tier instead of one (still in one
ascending-id order, so the PostgreSQL lock-order rule holds); ``bench/ledger_bench.py``.
"""

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

    Account rows are keyed by it, so a new month simply starts a new row at zero spent
    (every tier also has a ``"lifetime"`` row, which never rolls over).
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
