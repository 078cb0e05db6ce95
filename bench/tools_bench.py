"""Per-tool overhead of http.request, storage.* and kb.* (bounded: about 10 s in total).

    .venv/bin/python bench/tools_bench.py

http.request is compared with raw httpx against the same local server (which
closes every connection, so both sides pay one TCP connect per request): the
difference is URL normalisation, the address check, the pinned per-request
client and header handling. Storage and KB run the tool's ``run`` directly
(no chain) on a temporary data directory / SQLite file.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from supervisor.settings import Settings  # noqa: E402
from supervisor.stores.sqlite import SqliteTenantStore, open_sqlite  # noqa: E402
from supervisor.stores.sqlite.kb import SqliteKbStore  # noqa: E402
from supervisor.tools.base import ToolContext  # noqa: E402
from supervisor.tools.http import HttpRequestTool  # noqa: E402
from supervisor.tools.kb import KbAddTool, KbSearchTool  # noqa: E402
from supervisor.tools.storage import StorageReadTool, StorageWriteTool  # noqa: E402

BUDGET_S = 1.2  # per measurement


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    finally:
        writer.close()


async def _measure(name: str, fn: Callable[[int], Awaitable[Any]], budget_s: float = BUDGET_S) -> float:
    for i in range(20):  # warm-up
        await fn(-1 - i)
    samples: list[float] = []
    end = time.perf_counter() + budget_s
    i = 0
    while time.perf_counter() < end and i < 20000:
        t0 = time.perf_counter()
        await fn(i)
        samples.append(time.perf_counter() - t0)
        i += 1
    p50 = statistics.median(samples) * 1e6
    p99 = sorted(samples)[int(len(samples) * 0.99) - 1] * 1e6
    print(f"  {name:<44} p50 {p50:8.0f} µs   p99 {p99:8.0f} µs   n={len(samples)}")
    return p50


def _ctx(settings: Settings, kb: Any = None) -> ToolContext:
    async def emit(t: str, d: dict[str, Any]) -> None:
        return None

    return ToolContext(tenant_id="ten_bench", run_id="run_bench", user_id="usr_bench", project_id=None, emit=emit,
                       services=SimpleNamespace(settings=settings, extras={}, kb=kb))


async def bench_http(settings: Settings) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.2:{port}/x"
    tool, ctx = HttpRequestTool(settings), _ctx(settings)
    args = tool.args_model.model_validate({"method": "GET", "url": url})
    print("http.request (local server, new TCP connection per request)")
    async with httpx.AsyncClient(trust_env=False) as shared:
        raw_shared = await _measure("raw httpx, one shared client", lambda i: shared.get(url))

    async def raw_fresh(i: int) -> None:
        async with httpx.AsyncClient(trust_env=False) as c:
            await c.get(url)

    raw_new = await _measure("raw httpx, client per request", raw_fresh)
    ours = await _measure("http.request tool.run", lambda i: tool.run(args, ctx))
    print(f"  -> overhead vs shared client {ours - raw_shared:+.0f} µs, vs client per request {ours - raw_new:+.0f} µs")
    server.close()


async def bench_storage(settings: Settings) -> None:
    ctx = _ctx(settings)
    w, r = StorageWriteTool(), StorageReadTool()
    print("storage (1 KiB files; write = temp file + fsync + snapshot link + rename + usage counter)")
    body = "x" * 1024
    await _measure("storage.write, new file each call",
                   lambda i: w.run(w.args_model.model_validate({"path": f"new/{i}.txt", "content": body}), ctx), 1.0)
    over = w.args_model.model_validate({"path": "same.txt", "content": body})
    await _measure("storage.write, overwrite (snapshot kept)", lambda i: w.run(over, ctx), 1.0)
    ra = r.args_model.model_validate({"path": "same.txt"})
    await _measure("storage.read", lambda i: r.run(ra, ctx), 1.0)


async def bench_kb(tmp: Path, settings: Settings) -> None:
    db = await open_sqlite(tmp / "kb.db")
    tenant = (await SqliteTenantStore(db).create_tenant("bench")).id
    kb = SqliteKbStore(db)
    ctx = _ctx(settings, kb)
    ctx.tenant_id = tenant
    words = ("agent budget policy ledger audit stream sandbox socket tenant approval receipt egress storage "
             "knowledge search ranking snippet citation bundle worker queue").split()
    for i in range(500):
        await kb.add(tenant, " ".join(words[(i * 7 + k) % len(words)] for k in range(60)), title=f"doc {i}")
    add, search = KbAddTool(), KbSearchTool()
    print("kb on SQLite FTS5 (500 documents of 60 words in the tenant; search runs before the adds)")
    q = search.args_model.model_validate({"query": "budget ledger", "limit": 5})
    await _measure("kb.search (2 words matching all 500, top 5)", lambda i: search.run(q, ctx), 1.0)
    await _measure("kb.add (~60 words)", lambda i: add.run(add.args_model.model_validate(
        {"text": " ".join(words[(i + k) % len(words)] for k in range(60)), "title": "t"}), ctx), 1.0)
    await db.close()


async def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        settings = Settings(data_dir=tmp / "data", egress_allow_private=["127.0.0.2/32"])
        await bench_http(settings)
        await bench_storage(settings)
        await bench_kb(tmp, settings)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
