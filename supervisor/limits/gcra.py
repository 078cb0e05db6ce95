"""GCRA (generic cell rate algorithm) over several rules, all or nothing.

One number per rule, the theoretical arrival time (TAT), is the whole state.
A call of cost ``c`` against a rule of rate ``r`` and burst ``b`` (interval
``T = 1/r``) is allowed at ``now`` iff ``max(tat, now) + c*T - b*T <= now``;
then ``tat`` becomes ``max(tat, now) + c*T``. A full bucket (``tat <= now``)
admits exactly ``b`` unit calls at once, then one every ``T``.

A stored TAT is read as at most ``now + b*T``: the most a rule can owe (its
whole burst spent at once). Only an earlier, stricter rule under the same key
leaves more - a policy's limit relaxed by its admin (``tool_per_s`` 0.01 ->
1000) - and that debt would otherwise keep refusing calls for as long as the
old rule's interval (minutes), whatever the new limit says. With the same rule
the bound never bites: an allowed call leaves ``tat <= now + b*T``. A refused
call stores that lowered TAT (it only ever forgives), so the new rule's bucket
refills from there: one interval of the new rule to the next call.

Every rule is checked before any is updated, so a refused call consumes
nothing from any rule (rejected calls must not count against a tenant).
The Redis adapter runs the same arithmetic in Lua (``_lua.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.errors import StockadeError
from supervisor.stores.records import RateRule

__all__ = ["MAX_INTERVAL_S", "GcraResult", "gcra_check", "validate_rules"]

# Float noise in ``tat + c*T - b*T`` must not refuse a call that arrives exactly on time.
_EPSILON_S = 1e-9
# The longest emission interval metered (~31,700 years): a slower rate (a policy may say
# ``user_per_s: 1e-300``) means the same "not again", and keeps every sum finite - in Redis too,
# whose expiry and integer replies overflow past it (the adapter clamps the same way).
MAX_INTERVAL_S = 1e12


@dataclass(frozen=True)
class GcraResult:
    allowed: bool
    retry_after_s: float  # the longest wait any refusing rule needs; 0 when allowed
    refused_index: int | None  # index of that rule in the input
    # the TATs to store: advanced when allowed; when refused, the stored ones (None: now), each at most its
    # rule's bound (module docstring) - the adapters write back those that were lowered
    new_tats: tuple[float, ...]


def validate_rules(rules: Sequence[RateRule]) -> None:
    """Reject rules no call could ever pass or that make no sense."""
    seen: set[str] = set()
    for rule in rules:
        if not rule.key:
            raise StockadeError("input.invalid", "a rate rule needs a key")
        if rule.key in seen:
            raise StockadeError("input.invalid", f"rate rule {rule.key!r} appears twice in one check")
        seen.add(rule.key)
        if not (rule.rate_per_s > 0 and math.isfinite(rule.rate_per_s)):
            raise StockadeError("input.invalid", f"rate rule {rule.key!r} needs a positive finite rate")
        if rule.burst < 1:
            raise StockadeError("input.invalid", f"rate rule {rule.key!r} needs a burst of at least 1")
        if rule.cost < 0 or rule.cost > rule.burst:
            raise StockadeError(
                "input.invalid", f"rate rule {rule.key!r}: cost {rule.cost} must be within 0..burst ({rule.burst})"
            )


def gcra_check(rules: Sequence[RateRule], tats: Sequence[float | None], now: float) -> GcraResult:
    """Pure decision: ``tats[i]`` is rule i's stored TAT (None when absent)."""
    worst = 0.0
    worst_i: int | None = None
    new_tats: list[float] = []
    kept: list[float] = []
    for i, (rule, stored) in enumerate(zip(rules, tats, strict=True)):
        interval = min(1.0 / rule.rate_per_s, MAX_INTERVAL_S)
        tat = now if stored is None or stored < now else min(stored, now + rule.burst * interval)
        kept.append(now if stored is None else min(stored, tat))
        new_tat = tat + rule.cost * interval
        # (tat - now) + (c - b)*T, not new_tat - b*T - now: with a long interval the latter rounds
        # (now + T - T != now) and refused a fresh bucket's first call.
        wait = (tat - now) + (rule.cost - rule.burst) * interval
        if wait > _EPSILON_S:
            if wait > worst:
                worst, worst_i = wait, i
        new_tats.append(new_tat)
    if worst_i is not None:
        return GcraResult(False, worst, worst_i, tuple(kept))
    return GcraResult(True, 0.0, None, tuple(new_tats))
