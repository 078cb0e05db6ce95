"""Run pipeline benchmarks (embedded stack by default; ``--production`` uses PostgreSQL + Redis).

- run start: POST /v1/runs -> ``main()`` entered inside the sandbox (wall clock, same host)
- first SSE event: POST -> first event read by a client that was already subscribed
- governed ``echo`` round trip, timed inside the sandbox: one run, and 8 concurrent runs (calls/s),
  each run watched live over SSE by a separate ``curl`` process

Bounded: about 20 s. Prints p50/p99 and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import collect, make_data_dir, read_sse, settings_for, start_node  # noqa: E402

BUNDLES = Path(__file__).parent / "bundles"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def show(name: str, xs: list[float], unit: str = "ms", scale: float = 1e3) -> None:
    print(f"{name:<44} n={len(xs):<5} p50={pct(xs, 50) * scale:8.3f} {unit}  p99={pct(xs, 99) * scale:8.3f} {unit}")


# the limits are what we measure past, not what we measure
OPEN_LIMITS = dict(rate_tenant_per_s=1e6, rate_tenant_burst=10**6, rate_user_per_s=1e6, rate_user_burst=10**6,
                   rate_tool_per_s=1e6, rate_tool_burst=10**6, rate_tenant_per_hour=10**9, sandbox_max_events_per_s=10**6,
                   # the shipped sweep interval, not the test harness's 0.5 s (each sweep scans /proc for orphans)
                   sweep_interval_s=5.0)


async def main(production: bool, warm: int) -> None:
    if production:
        import secrets

        settings = settings_for("production", make_data_dir(), pg_url="postgresql://postgres@127.0.0.1:5432/stockade_bench",
                                redis_url="redis://127.0.0.1:6379/0", redis_prefix=f"bench:{secrets.token_hex(3)}:", sandbox_warm_pool=warm, **OPEN_LIMITS)
        import asyncpg

        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        await conn.execute("DROP DATABASE IF EXISTS stockade_bench WITH (FORCE)")
        await conn.execute("CREATE DATABASE stockade_bench")
        await conn.close()
    else:
        settings = settings_for("embedded", make_data_dir(), sandbox_warm_pool=warm, **OPEN_LIMITS)
    node = await start_node(settings)
    try:
        tid, key = await node.tenant()
        for b in ("pingbench", "startbench"):
            await node.rt.registry.register_dir(BUNDLES / b, tid)
        c = node.client(key)
        print(f"stack: {'PostgreSQL + Redis' if production else 'embedded (SQLite + memory)'}; warm pool: {warm}")

        starts, firsts = [], []
        for _ in range(40):
            if warm:  # the pool refills in the background; measure takes, not refills
                for _ in range(200):
                    if len(node.rt.warm._ready) >= min(warm, 2):
                        break
                    await asyncio.sleep(0.01)
            t0 = time.time()
            r = await c.post("/v1/runs", json={"bundle": "startbench", "input": ""})
            run_id = r.json()["id"]
            first = None
            async for e in read_sse(c, f"/v1/runs/{run_id}/events"):
                first = first or time.time()
                if e.event == "custom":
                    starts.append(e.data["data"] - t0)
                if e.event.startswith("run.") and e.event != "run.started":
                    break
            firsts.append(first - t0)
        show("run start: POST -> main() entered", starts)
        show("first SSE event after POST", firsts)

        async def ping(n: int) -> list[float]:
            r = await c.post("/v1/runs", json={"bundle": "pingbench", "input": str(n)})
            run_id = r.json()["id"]
            # Someone watches the run live, as users do - from another process (curl), so that the
            # supervisor pays for serving the stream but not for parsing it.
            watcher = await asyncio.create_subprocess_exec(
                "curl", "-sN", "-H", f"Authorization: Bearer {key}", f"{node.base_url}/v1/runs/{run_id}/events",
                stdout=asyncio.subprocess.DEVNULL)
            await watcher.wait()  # the stream ends after the terminal event
            events = await collect(c, run_id)  # replayed from the store
            return next(e.data["data"] for e in events if e.event == "custom")

        t0 = time.perf_counter()
        one = await ping(2000)
        dt = time.perf_counter() - t0
        show("echo round trip, 1 run (in-sandbox)", one, "µs", 1e6)
        print(f"{'':<44} {len(one) / sum(one):,.0f} calls/s inside the run ({len(one) / dt:,.0f}/s incl. start)")
        t0 = time.perf_counter()
        many = await asyncio.gather(*(ping(500) for _ in range(8)))
        dt = time.perf_counter() - t0
        flat = [x for xs in many for x in xs]
        show("echo round trip, 8 concurrent runs", flat, "µs", 1e6)
        print(f"{'':<44} {len(flat) / dt:,.0f} calls/s total")
        print("(python -I -S floor on this machine is ~8.5 ms, bwrap + python -I -S ~12-13 ms: FACTS.md)")
        _ = statistics
    finally:
        await node.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--production", action="store_true")
    ap.add_argument("--warm", type=int, default=0, help="warm pool size (0 = cold starts)")
    import uvloop

    uvloop.install()  # as `stockade serve` runs (uvicorn[standard] brings uvloop)
    a = ap.parse_args()
    asyncio.run(main(a.production, a.warm))
