"""SSE fan-out: one run emitting N events, S subscribers in another process (raw sockets).

Reports deliveries/s and the delivery latency (emit inside the sandbox -> parsed by a subscriber)
p50/p99. Bounded (about 15 s at the defaults). ``--subscribers 1000`` for the large case;
``--production`` for PostgreSQL + Redis (a throw-away database, a fresh key prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))


async def _subscriber(host: str, port: int, path: str, key: str, lat: list[float], counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    buf = b""
    n = 0
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            if b"event: custom" in frame:
                n += 1
                if n % 25 == 0:  # sample latency without paying a JSON parse per event
                    data = json.loads(frame.split(b"data: ", 1)[1])
                    lat.append(time.time() - data["data"]["t"])
            elif b"event: run.completed" in frame:
                writer.close()
                counts.append(n)
                return


def _client_proc(host: str, port: int, path: str, key: str, subs: int, q: mp.Queue) -> None:
    async def run() -> None:
        lat: list[float] = []
        counts: list[int] = []
        await asyncio.gather(*(_subscriber(host, port, path, key, lat, counts) for _ in range(subs)))
        q.put((lat, counts))

    import uvloop

    uvloop.run(run())


async def main(subs: int, events: int, production: bool) -> None:
    from run_bench import OPEN_LIMITS

    from tests.e2e.harness import make_data_dir, settings_for, start_node

    if production:
        import secrets

        import asyncpg

        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        await conn.execute("DROP DATABASE IF EXISTS stockade_bench_fanout WITH (FORCE)")
        await conn.execute("CREATE DATABASE stockade_bench_fanout")
        await conn.close()
        settings = settings_for("production", make_data_dir(),
                                pg_url="postgresql://postgres@127.0.0.1:5432/stockade_bench_fanout",
                                redis_url="redis://127.0.0.1:6379/0", redis_prefix=f"bench:{secrets.token_hex(3)}:",
                                **OPEN_LIMITS)
    else:
        settings = settings_for("embedded", make_data_dir(), **OPEN_LIMITS)
    node = await start_node(settings)
    try:
        tid, key = await node.tenant()
        await node.rt.registry.register_dir(Path(__file__).parent / "bundles" / "fanout", tid)
        c = node.client(key)
        wait = 1.0 + subs / 500
        run = (await c.post("/v1/runs", json={"bundle": "fanout", "input": f"{events} {wait}"})).json()
        port = int(node.base_url.rsplit(":", 1)[1])
        q: mp.Queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_client_proc, args=("127.0.0.1", port, f"/v1/runs/{run['id']}/events", key, subs, q))
        t0 = time.perf_counter()
        proc.start()
        lat, counts = await asyncio.to_thread(q.get, True, 120)
        dt = time.perf_counter() - t0 - wait
        proc.join(10)
        lat.sort()
        total = sum(counts)
        print(f"SSE fan-out ({'PostgreSQL + Redis' if production else 'embedded'}): {subs} subscribers x {events} events -> {total} deliveries "
              f"({'complete' if total == subs * events else 'INCOMPLETE'})")
        print(f"  ~{total / max(dt, 1e-9):,.0f} deliveries/s (after the subscribers attached)")
        print(f"  latency emit->client p50={lat[len(lat) // 2] * 1e3:.1f} ms  p99={lat[int(len(lat) * 0.99)] * 1e3:.1f} ms")
    finally:
        await node.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--production", action="store_true", help="PostgreSQL + Redis instead of the embedded stack")
    a = ap.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(main(a.subscribers, a.events, a.production))
