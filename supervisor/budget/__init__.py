"""Budget arithmetic: amounts, periods, tiers and worst-case estimates.

Pure domain code (no database driver, no web framework). The ledger adapters
(``supervisor.stores.*.ledger``) and the budget step of the governance chain
(``supervisor.chain.budget``) build on it.

Tiers: every call is metered against the tenant, and the run's project and user
when it has them. A tier with a cap row is *capped* (reservations are refused
past it); a tier without one is *uncapped* — its spend is still recorded (so a
cap set mid-month starts from the real figure) but never checked. Each tier is metered
on its month row and its lifetime row (``periods``), so a cap that switches period keeps
what was spent.
"""

from supervisor.budget.amounts import MAX_MICRO, MICRO_PER_USD, cap_to_micro, format_usd, micro_to_usd, usd_to_micro
from supervisor.budget.estimate import CostEstimate, estimate_cost, worst_case_micro
from supervisor.budget.exceeded import exceeded_error
from supervisor.budget.periods import LIFETIME, PERIODS, period_key
from supervisor.budget.scopes import TIERS, check_amount, check_cap, check_scopes, scopes_for, tier_order
from supervisor.budget.settle import WARN_PCT, AccountState, Settled, settle

__all__ = [
    "LIFETIME", "MAX_MICRO", "MICRO_PER_USD", "PERIODS", "TIERS", "WARN_PCT", "AccountState", "CostEstimate", "Settled", "cap_to_micro", "check_amount", "check_cap",
    "check_scopes", "estimate_cost", "exceeded_error", "format_usd", "micro_to_usd", "period_key", "scopes_for", "settle", "tier_order",
    "usd_to_micro", "worst_case_micro",
]
