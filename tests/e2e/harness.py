"""A real Stockade node in the test's event loop: runtime + uvicorn on a free port + an HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.main import build_asgi
from app.server import STALL_S, listen_sockets, serve
from supervisor.ids import new_id
from supervisor.runtime import Runtime, open_runtime
from supervisor.settings import Settings
from supervisor.stores.records import Run
from supervisor.tenancy import create_tenant

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"


# One receipt signing key for this test process, as for the audit and secrets keys (settings_for): the nodes on
# the session's shared database are one deployment, and a node whose key is not the deployment's is refused
# (supervisor/audit/signing_check.py). Written where a node generates its key, so the default path is used.
_SIGNING_PEM = Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def seed_signing_key(data_dir: Path) -> None:
    """Give ``data_dir`` this test process's receipt signing key (unless it has one)."""
    keys = Path(data_dir) / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    path = keys / "receipt_ed25519.pem"
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_SIGNING_PEM)


def make_data_dir() -> Path:
    """A data dir the sandbox uids may traverse (pytest's tmp dirs are 0700), with the session's signing key."""
    d = Path(tempfile.mkdtemp(prefix="stockade-test-"))
    os.chmod(d, 0o711)
    seed_signing_key(d)
    return d


_LIVE: dict[Path, int] = {}  # data dir -> nodes started on it and not stopped yet


@dataclass
class Node:
    rt: Runtime
    server: uvicorn.Server
    task: asyncio.Task
    base_url: str
    data_dir: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, key: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        c = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30.0, **kw)
        self.clients.append(c)
        return c

    async def tenant(self, name: str | None = None, budget_usd: float | None = None) -> tuple[str, str]:
        import secrets

        t, k = await create_tenant(self.rt.services, name or f"t-{secrets.token_hex(4)}", budget_usd=budget_usd)
        return t.id, k.secret

    async def stop(self) -> None:
        for c in self.clients:
            await c.aclose()
        self.server.should_exit = True
        # asyncio.wait, not wait_for: a serve task that ended cancelled (uvicorn's shutdown under load, a server
        # a test stopped itself) raised CancelledError here, which no suppress(Exception) takes, and the test
        # failed in its teardown with the node half stopped
        await asyncio.wait({self.task}, timeout=5)
        if not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})
        if not self.task.cancelled():
            self.task.exception()  # retrieved: a server that failed is no "never retrieved" warning at exit
        await self.rt.stop()
        key = self.data_dir.resolve()
        _LIVE[key] -= 1
        if not _LIVE[key]:  # the last node on it: nodes of one deployment share their data dir
            del _LIVE[key]
            shutil.rmtree(self.data_dir, ignore_errors=True)


async def until(cond: Any, timeout: float) -> None:
    """Wait, boundedly, for something the server does in its own time (AssertionError if it never does)."""
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


async def start_node(settings: Settings, *, workers: bool = True, api: bool = True,
                     stall_s: float = STALL_S) -> Node:
    rt = await open_runtime(settings)
    await rt.start(workers=workers, watch=settings.watch_bundles)
    app = build_asgi(rt, role_worker=workers)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # the test's process keeps its own signal handlers: uvicorn's serve() swaps SIGINT/SIGTERM for its own while
    # it runs, restoring what it found when it ends - so nodes stopped out of start order (or never) left a
    # stopped server's handler in place, and a later Ctrl-C test saw no KeyboardInterrupt
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    # the sockets `stockade serve` listens on (app/server.py), so the node cuts off stalled clients as it does
    task = asyncio.create_task(serve(server, listen_sockets("127.0.0.1", 0, stall_s=stall_s)))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    _LIVE[Path(settings.data_dir).resolve()] = _LIVE.get(Path(settings.data_dir).resolve(), 0) + 1
    return Node(rt=rt, server=server, task=task, base_url=f"http://127.0.0.1:{port}", data_dir=settings.data_dir)


# Workers of one host never share sandbox uids (sandbox.uid_claim): this test process's in-process nodes
# take one range (a `make run` or another test run on the machine holds the default 200,000), and each
# `stockade worker` it starts its own 64 uids.
NODE_UID_BASE = 250_000 + (os.getpid() % 1500) * 1100
_worker_ranges = itertools.count()


def worker_uid_env() -> dict[str, str]:
    base = 2_000_000 + (os.getpid() % 4000) * 1100 + 64 * (next(_worker_ranges) % 16)
    return {"STOCKADE_SANDBOX_UID_BASE": str(base), "STOCKADE_SANDBOX_UID_COUNT": "64"}


def settings_for(kind: str, data_dir: Path, *, pg_url: str | None = None, redis_url: str | None = None,
                 redis_prefix: str | None = None, **extra: Any) -> Settings:
    base: dict[str, Any] = dict(data_dir=data_dir, bundles_dir=BUNDLES, watch_bundles=False, sweep_interval_s=0.5,
                                sandbox_uid_base=NODE_UID_BASE,
                                sandbox_warm_pool=0,  # cold starts unless a test asks for the warm pool
                                # one deployment's keys: nodes on the session's shared database must share them
                                audit_key="test-audit-key-0123456789abcdef",
                                secrets_key="test-secrets-key-0123456789abcdef")
    if kind == "production":
        base.update(database_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix)
    base.update(extra)
    return Settings(**base)


@dataclass
class SSE:
    id: int | None
    event: str
    data: dict[str, Any]


async def read_sse(client: httpx.AsyncClient, path: str, *, headers: dict[str, str] | None = None,
                   stop_after: int | None = None) -> AsyncIterator[SSE]:
    """Parse an SSE stream; yields events, skips comments."""
    async with client.stream("GET", path, headers=headers or {}) as resp:
        assert resp.status_code == 200, await resp.aread()
        cur: dict[str, Any] = {}
        n = 0
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if "data" in cur:
                    yield SSE(int(cur["id"]) if "id" in cur else None, cur.get("event", "message"), json.loads(cur["data"]))
                    n += 1
                    if stop_after is not None and n >= stop_after:
                        return
                cur = {}
                continue
            k, _, v = line.partition(":")
            cur[k] = v[1:] if v.startswith(" ") else v


async def collect(client: httpx.AsyncClient, run_id: str, after: int | None = None, **kw: Any) -> list[SSE]:
    path = f"/v1/runs/{run_id}/events" + (f"?after={after}" if after is not None else "")
    return [e async for e in read_sse(client, path, **kw)]


async def idle_runs(node: Node, tenant_id: str, n: int) -> list[str]:
    """Runs that stay queued (stored, never enqueued): each subscription to one stays live, no sandbox needed."""
    ids = []
    for _ in range(n):
        run = Run(id=new_id("run_"), tenant_id=tenant_id, bundle="echo", bundle_version="x", input="",
                  status="queued", created_at=time.time())
        await node.rt.services.runs.create_run(run)
        ids.append(run.id)
    return ids


def worker_process(settings: Settings, warm_pool: int = 0, uid_env: dict[str, str] | None = None) -> subprocess.Popen:
    """A separate `stockade worker` process on the node's stores (its own process group); no warm pool
    unless asked for (production's default is 2)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update({
        "STOCKADE_DATABASE_URL": settings.database_url or "", "STOCKADE_REDIS_URL": settings.redis_url or "",
        "STOCKADE_REDIS_PREFIX": settings.redis_prefix, "STOCKADE_DATA_DIR": str(settings.data_dir),
        "STOCKADE_BUNDLES_DIR": str(settings.bundles_dir), "STOCKADE_WATCH_BUNDLES": "false",
        "STOCKADE_AUDIT_KEY": settings.audit_key.get_secret_value() if settings.audit_key else "",
        "STOCKADE_SECRETS_KEY": settings.secrets_key.get_secret_value() if settings.secrets_key else "",
        "STOCKADE_QUEUE_VISIBILITY_S": str(settings.queue_visibility_s),
        "STOCKADE_RESERVATION_TTL_S": str(settings.reservation_ttl_s), "STOCKADE_SANDBOX_WARM_POOL": str(warm_pool),
        "STOCKADE_LOG_LEVEL": "warning", **(uid_env or worker_uid_env()),
    })
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


async def priced_call_in_flight(client: httpx.AsyncClient, bundle: str = "slowtool", arg: str = "20") -> dict[str, Any]:
    """Start a run whose priced call (code.run sleeping) is in flight, its reservation held; the run."""
    r = await client.post("/v1/runs", json={"bundle": bundle, "input": arg})
    assert r.status_code == 201, r.text
    run = r.json()
    async for e in read_sse(client, f"/v1/runs/{run['id']}/events"):
        if e.event == "tool.call":
            break
    for _ in range(200):  # the reservation lands in the same step; a poll of the API is all a client has
        if any(b["reserved_usd"] > 0 for b in (await client.get("/v1/budgets")).json()["data"]):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError("the priced call never reserved")

