"""Two OS processes share one Redis prefix and hammer one rule: the limit holds globally.

With GCRA a full bucket admits ``burst`` calls at once and then ``rate`` per
second, so over a window of ``elapsed`` seconds no more than
``burst + floor(rate * elapsed)`` calls can pass, whoever makes them. The
parent measures ``elapsed`` around both children's whole hammering (released
together through their stdin), an upper bound on the real window. Limits kept
per process would let ``2 * burst`` through.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)

RATE, BURST, CALLS, CONCURRENCY = 2.0, 100, 400, 8

CHILD = r"""
import asyncio, json, sys
from supervisor.stores.records import RateRule
from supervisor.stores.redis import RedisRateLimiter, open_redis

async def main(url, prefix, rate, burst, calls, concurrency):
    client = await open_redis(url)
    limiter = RedisRateLimiter(client, prefix)
    rules = [RateRule("t:shared", rate, burst), RateRule("p:shared:" + sys.argv[7], 1000.0, 100000)]
    await client.ping()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the start gate
    allowed = refused = 0
    todo = iter(range(calls))
    async def hammer():
        nonlocal allowed, refused
        for _ in todo:
            if (await limiter.check(rules)).allowed:
                allowed += 1
            else:
                refused += 1
    await asyncio.gather(*(hammer() for _ in range(concurrency)))
    print(json.dumps({"allowed": allowed, "refused": refused}), flush=True)
    await client.aclose()

a = sys.argv
asyncio.run(main(a[1], a[2], float(a[3]), int(a[4]), int(a[5]), int(a[6])))
"""


async def test_two_processes_share_one_limit(redis_url, redis_prefix):
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, redis_url, redis_prefix, str(RATE), str(BURST), str(CALLS),
            str(CONCURRENCY), f"proc{i}", cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            assert (await asyncio.wait_for(p.stdout.readline(), 30)).strip() == b"ready"
        t0 = time.monotonic()
        for p in procs:
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        outs = [json.loads(await asyncio.wait_for(p.stdout.readline(), 30)) for p in procs]
        elapsed = time.monotonic() - t0
        for p in procs:
            assert await asyncio.wait_for(p.wait(), 10) == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    total = sum(o["allowed"] for o in outs)
    assert sum(o["allowed"] + o["refused"] for o in outs) == 2 * CALLS
    bound = BURST + math.floor(RATE * elapsed)
    assert BURST <= total <= bound, (outs, elapsed)
    assert all(o["refused"] > 0 for o in outs)
