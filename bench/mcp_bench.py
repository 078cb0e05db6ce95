"""Overhead of one governed MCP tool call vs a raw SDK call on an open session (bounded: ~4 s).

    .venv/bin/python bench/mcp_bench.py

A real MCP server (the SDK's MCPServer over streamable HTTP, uvicorn in a
thread) with ``add(a, b)``. Phases, each time-boxed, p50/p99 of one call:

1. raw SDK: ``Client.call_tool`` on an already-open session (the floor);
2. raw SDK, fresh client per call (what a naive provider would pay);
3. McpService.call, listing cached (steady state: pin read + call);
4. McpService.call, listing re-fetched every call (``list_ttl_s=0``);
5. the whole governance chain (embedded SQLite services, a real policy),
   the path a bundle's ``ctx.call("mcp.calc.add", ...)`` takes minus the socket.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from supervisor.audit.chain import Sealer  # noqa: E402
from supervisor.audit.keys import load_audit_key  # noqa: E402
from supervisor.audit.recorder import AuditRecorder  # noqa: E402
from supervisor.chain.base import Binding, CallState  # noqa: E402
from supervisor.chain.build import build_chain  # noqa: E402
from supervisor.factory import open_services  # noqa: E402
from supervisor.policy import load_policy  # noqa: E402
from supervisor.settings import Settings  # noqa: E402
from tests.fakes.mcp_server import McpTestServer  # noqa: E402

PHASE_S = 0.6
POLICY = "version: 1\nrules:\n  - id: calc\n    tool: mcp.calc.*\n    verdict: allow\n"


async def phase(fn: Callable[[int], Awaitable[Any]]) -> tuple[int, float, float]:
    lat: list[float] = []
    stop = time.perf_counter() + PHASE_S
    i = 0
    while time.perf_counter() < stop:
        t = time.perf_counter()
        await fn(i)
        lat.append(time.perf_counter() - t)
        i += 1
    lat.sort()
    return len(lat), statistics.median(lat) * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3


def show(name: str, r: tuple[int, float, float], floor: float | None = None) -> None:
    extra = f"   (+{r[1] - floor:.2f} ms over the floor)" if floor is not None else ""
    print(f"{name:<44} n={r[0]:<5} p50 {r[1]:6.2f} ms  p99 {r[2]:6.2f} ms{extra}")


async def main() -> None:
    logging.disable(logging.INFO)
    srv = McpTestServer.start()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    try:
        async with httpx2.AsyncClient(trust_env=False) as http, \
                Client(streamable_http_client(srv.url, http_client=http), cache=None) as raw:
            await raw.call_tool("add", {"a": 1, "b": 1})
            floor = await phase(lambda i: raw.call_tool("add", {"a": i, "b": 1}))

        async def fresh(i: int) -> Any:
            async with httpx2.AsyncClient(trust_env=False) as h, \
                    Client(streamable_http_client(srv.url, http_client=h), cache=None) as c:
                return await c.call_tool("add", {"a": i, "b": 1})

        fresh_r = await phase(fresh)

        # rate limits opened up: this measures overhead, not the limiter saying no
        unlimited: dict[str, Any] = {f"rate_{k}": 1e6 for k in ("tenant_per_s", "user_per_s", "tool_per_s")}
        unlimited.update({f"rate_{k}": 10**6 for k in ("tenant_burst", "user_burst", "tool_burst", "tenant_per_hour")})
        settings = Settings(data_dir=tmp, egress_allow_private=["127.0.0.0/8"],
                            audit_key="bench-audit-key-0123456789abcdef", **unlimited)
        services = await open_services(settings)
        try:
            svc = services.extras["mcp"]
            tenant = (await services.tenants.create_tenant("bench-" + secrets.token_hex(3))).id
            await services.policies.put(tenant, POLICY, load_policy(POLICY).version)
            await svc.register(tenant, "calc", srv.url, None, key_id="bench")
            svc._ttl = 3600.0
            await svc.call(tenant, "calc", "add", {"a": 1, "b": 1})
            cached = await phase(lambda i: svc.call(tenant, "calc", "add", {"a": i, "b": 1}))
            svc._ttl = 0.0
            relist = await phase(lambda i: svc.call(tenant, "calc", "add", {"a": i, "b": 1}))
            svc._ttl = 3600.0

            chain, _ = build_chain(AuditRecorder(services.audit, Sealer(load_audit_key(settings))))
            binding = Binding(tenant_id=tenant, run_id="run_bench", bundle="b", bundle_version="1")

            async def emit(t: str, d: dict[str, Any]) -> None:
                return None

            async def governed(i: int) -> Any:
                return await chain(CallState(binding=binding, tool_name="mcp.calc.add", raw_args={"a": i, "b": 1},
                                             services=services, emit=emit))

            chained = await phase(governed)
        finally:
            await services.close()
    finally:
        srv.stop()
    show("raw SDK call, open session (floor)", floor)
    show("raw SDK, fresh client per call", fresh_r, floor[1])
    show("McpService.call, listing cached", cached, floor[1])
    show("McpService.call, listing every call", relist, floor[1])
    show("governance chain + mcp.calc.add (SQLite)", chained, floor[1])


if __name__ == "__main__":
    asyncio.run(main())
