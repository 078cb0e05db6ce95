"""GCRA rate limiter in Redis: one Lua script checks every rule, then charges every rule.

The script reads the server clock (``TIME``), so nodes with skewed clocks
share one timeline; ``now`` (seconds) may be passed instead, for tests. Each
bucket key expires when it would be full again. Any Redis failure is
``rate.unavailable``: the limiter fails closed and never allows on error.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from supervisor.limits.gcra import MAX_INTERVAL_S, validate_rules
from supervisor.stores.records import RateDecision, RateRule
from supervisor.stores.redis._errors import unavailable
from supervisor.stores.redis._lua import GCRA

__all__ = ["RedisRateLimiter"]

_MAX_INTERVAL_US = MAX_INTERVAL_S * 1_000_000


class RedisRateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str = "stockade:") -> None:
        self._client = client
        self._prefix = prefix + "rl:"
        # register_script: EVALSHA, and on NOSCRIPT (a restarted or flushed Redis) SCRIPT LOAD + retry.
        self._script = client.register_script(GCRA)

    async def check(self, rules: list[RateRule], now: float | None = None) -> RateDecision:
        validate_rules(rules)
        if not rules:
            return RateDecision(True)
        args: list[str] = ["" if now is None else str(round(now * 1_000_000))]
        for r in rules:
            args += [repr(min(1_000_000 / r.rate_per_s, _MAX_INTERVAL_US)), str(r.burst), str(r.cost)]
        with unavailable("rate.unavailable", "The rate limiter is unavailable"):
            allowed, retry_us, index = await self._script(keys=[self._prefix + r.key for r in rules], args=args)
        if int(allowed) == 1:
            return RateDecision(True)
        return RateDecision(False, int(retry_us) / 1_000_000, rules[int(index) - 1].key)
