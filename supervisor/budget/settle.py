"""Settlement arithmetic, shared by the SQLite adapter (the PostgreSQL function
``stockade_ledger_commit`` is its SQL twin; the contract suite holds them equal).

- charge = min(actual, reserved): a tool that reports more than its worst case
  is charged what was reserved, never more, so committed spend cannot pass a
  cap; the difference is kept as ``overage_micro`` in the entry detail.
- A reservation already released (expired and swept, or its run ended) is
  charged *late*: at most what still fits under every cap right now; the rest
  is recorded as ``unbilled_micro``.
- A held one is charged at most ``cap - spent`` on every capped tier: its
  reservation fitted the cap it was made under, but a cap lowered meanwhile
  (``PUT /v1/budgets``) would otherwise be passed; the rest is ``unbilled_micro``
  too. With the cap unchanged this never bites (spent + reserved <= cap).
- The 80 % warning fires once per account row, i.e. once per tier per period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AccountState", "Settled", "WARN_PCT", "settle"]

WARN_PCT = 80


@dataclass(frozen=True)
class AccountState:
    id: int
    scope: str
    scope_id: str
    period_key: str
    spent_micro: int
    reserved_micro: int
    warned: bool
    cap_micro: int | None  # None: uncapped tier, or a row only metered (its cap is of the other period kind)
    booked: bool = True  # the row this tier's ledger entry is written on (see supervisor/budget/periods.py)


@dataclass(frozen=True)
class Settled:
    account: AccountState  # state after settlement
    warn: bool  # this settlement crossed WARN_PCT for the first time this period
    detail: dict[str, Any]


def settle(reserved_micro: int, actual_micro: int, late: bool, accounts: list[AccountState]) -> tuple[int, list[Settled]]:
    """(charge, new state of each account). Accounts are those the reservation holds."""
    due = min(actual_micro, reserved_micro)
    charge = due
    release = 0 if late else reserved_micro
    # Late: the room other reservations hold is not ours to take. Held: ``reserved`` includes our
    # own hold, which this settlement releases, so only what is spent already counts against us.
    heads = [a.cap_micro - a.spent_micro - (a.reserved_micro if late else 0) for a in accounts if a.cap_micro is not None]
    if heads:
        charge = min(charge, max(0, min(heads)))
    out: list[Settled] = []
    for a in accounts:
        spent = a.spent_micro + charge
        reserved = a.reserved_micro - release
        warn = (charge > 0 and a.cap_micro is not None and a.cap_micro > 0 and not a.warned
                and spent * 100 >= a.cap_micro * WARN_PCT)
        detail: dict[str, Any] = {"reserved_micro": reserved_micro, "actual_micro": actual_micro}
        if actual_micro > reserved_micro:
            detail["overage_micro"] = actual_micro - reserved_micro
        if late:
            detail["late"] = True
        if due > charge:
            detail["unbilled_micro"] = due - charge
        if a.cap_micro is not None:
            detail["cap_micro"] = a.cap_micro
        detail["spent_micro"] = spent
        if a.cap_micro is not None:
            detail["remaining_micro"] = a.cap_micro - spent - reserved
        if warn:
            detail["warning_pct"] = WARN_PCT
        new = AccountState(a.id, a.scope, a.scope_id, a.period_key, spent, reserved, a.warned or warn, a.cap_micro,
                           a.booked)
        out.append(Settled(new, warn, detail))
    return charge, out
