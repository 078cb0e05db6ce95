"""Budget tiers and the checks every ledger adapter applies before touching its store."""

from __future__ import annotations

from typing import Any

from supervisor.budget.amounts import MAX_MICRO
from supervisor.budget.periods import PERIODS
from supervisor.errors import StockadeError

__all__ = ["TIERS", "check_amount", "check_cap", "check_scopes", "scopes_for", "tier_order"]

TIERS = ("tenant", "project", "user")
_MAX_ID = 200


def scopes_for(binding: Any) -> list[tuple[str, str]]:
    """Every tier that covers a call: the tenant, then its project and user when the run has them.

    Taken from the supervisor's own binding of the socket, never from the caller.
    """
    out = [("tenant", binding.tenant_id)]
    if getattr(binding, "project_id", None):
        out.append(("project", binding.project_id))
    if getattr(binding, "user_id", None):
        out.append(("user", binding.user_id))
    return out


def check_scopes(scopes: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Validated, de-duplicated, in tier order. Raises ``input.invalid``."""
    seen: dict[tuple[str, str], None] = {}
    for item in scopes:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise StockadeError("input.invalid", "a budget scope is a (tier, id) pair")
        scope, scope_id = item
        if scope not in TIERS:
            raise StockadeError("input.invalid", f"unknown budget tier {scope!r} (use tenant, project or user)")
        if not isinstance(scope_id, str) or not scope_id or len(scope_id) > _MAX_ID or "\x00" in scope_id:
            raise StockadeError("input.invalid", f"invalid {scope} id for a budget")
        seen[(scope, scope_id)] = None
    if not seen:
        raise StockadeError("input.invalid", "a reservation needs at least one budget tier")
    return sorted(seen, key=lambda s: tier_order(*s))


def check_amount(amount_micro: Any, what: str = "amount") -> int:
    if isinstance(amount_micro, bool) or not isinstance(amount_micro, int):
        raise StockadeError("input.invalid", f"the {what} must be an integer number of micro-USD")
    if amount_micro < 0 or amount_micro > MAX_MICRO:
        raise StockadeError("input.invalid", f"the {what} must be between 0 and {MAX_MICRO} micro-USD")
    return amount_micro


def check_cap(tenant_id: str, scope: str, scope_id: str, cap_micro: Any, period: str) -> None:
    check_scopes([(scope, scope_id)])
    if scope == "tenant" and scope_id != tenant_id:
        raise StockadeError("input.invalid", "a tenant budget's scope id is the tenant itself")
    check_amount(cap_micro, "cap")
    if period not in PERIODS:
        raise StockadeError("input.invalid", f"unknown budget period {period!r} (use 'month' or 'lifetime')")


def tier_order(scope: str, scope_id: str) -> tuple[int, str]:
    """Sort key: tenant, then project, then user."""
    return (TIERS.index(scope) if scope in TIERS else len(TIERS), scope_id)
