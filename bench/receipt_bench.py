"""Receipts of big runs: request time (p50/p99) and the event loop's longest stall while one is built.

    .venv/bin/python bench/receipt_bench.py [--production] [calls ...]     (default: 3000 20000)

An embedded node (SQLite + memory, no workers; ``--production``: PostgreSQL + Redis, a database of its own
created and dropped, from $STOCKADE_TEST_DATABASE_URL / $STOCKADE_TEST_REDIS_URL as the tests take them) in
this process's loop, as the e2e harness runs it; a queued
run given ``calls`` audited echo calls (a ``tool.allowed`` + ``tool.completed`` record each, written
through the node's recorder), then its receipt asked for over HTTP a few times while a probe task sleeps
5 ms in a loop and records how late it wakes: the longest lateness is the longest time the node's loop
(every other tenant's streams and requests) stood still. The client reads the body as bytes during the
probe and parses it after, so its own parsing is not counted. Also printed: the longest garbage collection
during a request (a full one stops the loop too, however the receipt is built).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.audit.receipts import load_receipt, verify_receipt  # noqa: E402
from tests.e2e.harness import idle_runs, make_data_dir, settings_for, start_node  # noqa: E402

PROBE_S = 0.005
_GC = {"start": 0.0, "worst": 0.0}


def _gc_timer(phase: str, info: dict) -> None:
    """The longest garbage collection (a full one walks the whole heap, stopping every thread)."""
    if phase == "start":
        _GC["start"] = time.perf_counter()
    else:
        _GC["worst"] = max(_GC["worst"], time.perf_counter() - _GC["start"])


async def _probe(stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(PROBE_S)
        worst[0] = max(worst[0], time.perf_counter() - t - PROBE_S)


async def _fill(node, tid: str, run_id: str, calls: int) -> None:
    rec = node.rt.recorder
    for i in range(calls):
        await rec.record(tid, "tool.allowed", run_id=run_id, tool="echo", args_hash=f"{i:064x}", rule_id="echo",
                         policy_version="v1", cost_micro=1000, detail={"verdict": "allow"})
        await rec.record(tid, "tool.completed", run_id=run_id, tool="echo", args_hash=f"{i:064x}",
                         rule_id="echo", policy_version="v1", cost_micro=1000,
                         detail={"verdict": "allow", "duration_ms": 0.4})


@contextlib.asynccontextmanager
async def _stores(production: bool):
    if not production:
        yield {}
        return
    import redis.asyncio as aioredis

    from tests.conftest import PG_ADMIN_URL, REDIS_URL, _create_db, _drop_db, _with_db
    name, prefix = f"stockade_bench_{secrets.token_hex(4)}", f"stockade-bench:{secrets.token_hex(4)}:"
    await _create_db(name)
    try:
        yield dict(pg_url=_with_db(PG_ADMIN_URL, name), redis_url=REDIS_URL, redis_prefix=prefix)
    finally:
        await _drop_db(name)
        r = aioredis.from_url(REDIS_URL)
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def bench(calls: list[int], rounds: int, production: bool) -> None:
    async with _stores(production) as stores:
        await _bench(calls, rounds, stores)


async def _bench(calls: list[int], rounds: int, stores: dict) -> None:
    kind = "production" if stores else "embedded"
    node = await start_node(settings_for(kind, make_data_dir(), **stores), workers=False)
    print(f"{kind} node", flush=True)
    try:
        for n in calls:
            tid, key = await node.tenant()
            (run_id,) = await idle_runs(node, tid, 1)
            t0 = time.perf_counter()
            await _fill(node, tid, run_id, n)
            print(f"{n} calls: {2 * n} records written in {time.perf_counter() - t0:.1f} s", flush=True)
            async with node.client(key) as c:
                pem = (await c.get("/v1/receipts/public-key")).text
                times, stalls, gcs, size = [], [], [], 0
                for _ in range(rounds):
                    stop, worst = asyncio.Event(), [0.0]
                    _GC["worst"] = 0.0
                    probe = asyncio.create_task(_probe(stop, worst))
                    await asyncio.sleep(0.05)  # the probe running before the request starts
                    t = time.perf_counter()
                    r = await c.get(f"/v1/runs/{run_id}/receipt")
                    times.append(time.perf_counter() - t)
                    stop.set()
                    await probe
                    stalls.append(worst[0])
                    gcs.append(_GC["worst"])
                    assert r.status_code == 200, r.text[:300]
                    size = len(r.content)
                body = load_receipt(r.content)
                assert verify_receipt(body, pem) and len(body["spans"]) == 2 * n
            times.sort()
            p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
            print(f"{n} calls ({2 * n} spans, {size / 1e6:.1f} MB): receipt p50 {statistics.median(times) * 1000:.0f} ms"
                  f" p99 {p99 * 1000:.0f} ms; max loop stall {max(stalls) * 1000:.0f} ms"
                  f" (median over requests {statistics.median(stalls) * 1000:.0f} ms; longest garbage collection"
                  f" {max(gcs) * 1000:.0f} ms)", flush=True)
    finally:
        await node.stop()  # removes its data dir too


def main() -> None:
    production = "--production" in sys.argv
    calls = [int(a) for a in sys.argv[1:] if a != "--production"] or [3000, 20000]
    gc.callbacks.append(_gc_timer)
    asyncio.run(bench(calls, rounds=7, production=production))


if __name__ == "__main__":
    main()
