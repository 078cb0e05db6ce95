"""In-process GCRA rate limiter (the embedded default, one process).

The clock is ``time.monotonic`` unless ``now`` is passed (tests). A check does
no ``await`` between reading and writing the buckets, so it is atomic on the
event loop without a lock.
"""

from __future__ import annotations

import time

from supervisor.limits.gcra import gcra_check, validate_rules
from supervisor.stores.records import RateDecision, RateRule

__all__ = ["MemoryRateLimiter"]

_PRUNE_EVERY = 4096


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._checks = 0

    async def check(self, rules: list[RateRule], now: float | None = None) -> RateDecision:
        validate_rules(rules)
        if not rules:
            return RateDecision(True)
        t = time.monotonic() if now is None else now
        result = gcra_check(rules, [self._tats.get(r.key) for r in rules], t)
        if not result.allowed:
            assert result.refused_index is not None
            for rule, tat in zip(rules, result.new_tats, strict=True):
                if tat < self._tats.get(rule.key, tat):  # an older, stricter rule's debt, forgiven (gcra.py)
                    self._tats[rule.key] = tat
            return RateDecision(False, result.retry_after_s, rules[result.refused_index].key)
        for rule, tat in zip(rules, result.new_tats, strict=True):
            self._tats[rule.key] = tat
        self._checks += 1
        if self._checks % _PRUNE_EVERY == 0:
            # A bucket whose TAT has passed is full again: same as absent.
            self._tats = {k: v for k, v in self._tats.items() if v > t}
        return RateDecision(True)
