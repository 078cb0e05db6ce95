"""Redis rate-limit check (the GCRA Lua script): p50/p99 latency and checks/s.

Bounded: ~2 s with one client, ~2 s with 16 concurrent, then it deletes its keys.
    python bench/ratelimit_bench.py [--redis-url redis://127.0.0.1:6379/0] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.stores.records import RateRule  # noqa: E402
from supervisor.stores.redis import RedisRateLimiter, open_redis  # noqa: E402


def rules_for(i: int) -> list[RateRule]:
    # The shape of a real call: tenant burst + tenant hourly + principal + tool, generous enough to stay allowed.
    return [
        RateRule("t:bench", 1e6, 1_000_000),
        RateRule("th:bench", 1e6, 1_000_000),
        RateRule(f"p:bench:u.{i % 16}", 1e6, 1_000_000),
        RateRule("tt:bench:echo", 1e6, 1_000_000),
    ]


async def run(limiter: RedisRateLimiter, clients: int, seconds: float) -> tuple[list[float], float]:
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        rules = rules_for(i)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            d = await limiter.check(rules)
            lat.append(time.perf_counter() - t)
            assert d.allowed

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return lat, time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    seconds = min(args.seconds, 2.5)  # the whole script stays under ~5 s
    client = await open_redis(args.redis_url)
    prefix = f"stockade-bench:{secrets.token_hex(4)}:"
    limiter = RedisRateLimiter(client, prefix)
    try:
        await limiter.check(rules_for(0))  # load the script
        for clients in (1, 16):
            lat, wall = await run(limiter, clients, seconds)
            q = statistics.quantiles(lat, n=100)
            print(f"redis rate check, 4 rules, {clients:>2} client(s): {len(lat) / wall:8.0f} checks/s  "
                  f"p50 {q[49] * 1000:.3f} ms  p99 {q[98] * 1000:.3f} ms  (n={len(lat)})")
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
