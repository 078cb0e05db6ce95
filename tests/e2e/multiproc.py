"""Helpers for the multi-process deployment tests (test_attack_multiprocess_session9.py): two API nodes in
the test's loop and two `stockade worker` OS processes on one PostgreSQL database and one Redis prefix,
a bundle that marks each entry into main(), and what the tests look at from outside (streams, budgets,
the worker processes' descendants, `stockade audit verify`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.harness import Node, collect, read_sse, start_node, worker_process

ROOT = Path(__file__).resolve().parents[2]

# main() entered -> one "entered" event; then the calls of its plan, their outcomes, a nap, an answer
MARKER_MAIN = '''
import asyncio, json
from stockade_sdk import ToolError


async def main(ctx):
    await ctx.emit("custom", name="entered", data={"run": ctx.run_id})
    plan = json.loads(ctx.input or "{}")
    results = []
    for spec in plan.get("calls", []):
        try:
            results.append({"ok": await ctx.call(spec["tool"], **spec.get("args", {}))})
        except ToolError as exc:
            results.append({"error": exc.code})
    await ctx.emit("custom", name="results", data=results)
    await asyncio.sleep(float(plan.get("sleep", 0)))
    await ctx.answer("done")
'''
MARKER_YAML = 'name: marker\nversion: "1"\ndescription: marks each entry into main\ntools: ["*"]\nlimits:\n  timeout_s: 30\n'
APPROVAL_POLICY = ("version: 1\nrules:\n  - id: big\n    tool: echo\n    when: {args.n: {gt: 10}}\n"
                   "    verdict: require_approval\n  - id: echo\n    tool: echo\n    verdict: allow\n"
                   "  - id: code\n    tool: code.run\n    verdict: allow\nprices:\n  echo: 0.01\n  code.run: 0.01\n")
SLOW_CALL = {"tool": "code.run", "args": {"code": "import time\ntime.sleep(30)\nprint('slept')", "timeout_s": 30}}


@dataclass
class Deployment:
    a: Node
    b: Node
    workers: list[subprocess.Popen]
    tenant_id: str
    key: str

    def worker_id(self, proc: subprocess.Popen) -> str:
        return f"{socket.gethostname()}:{proc.pid}"

    async def both_claiming(self, c, timeout_s: float = 30) -> list[str]:
        """Until each worker process has claimed a job (so both race for what comes next); the probe runs.
        (Redis 7.0 lists a stream consumer only once it has read an entry: a probe is the barrier.)"""
        want = {self.worker_id(w) for w in self.workers}
        seen: set[str] = set()
        probes: list[str] = []
        async with asyncio.timeout(timeout_s):
            while seen != want:
                runs = await asyncio.gather(post(c, {"sleep": 0}), post(c, {"sleep": 0}))
                for run in runs:
                    probes.append(run["id"])
                    await collect(c, run["id"])
                    seen.add((await self.a.rt.services.runs.get_run_any_tenant(run["id"])).worker_id)
        return probes

    async def carrier(self, run_id: str) -> subprocess.Popen:
        """The worker process carrying the run (its worker_id is hostname:pid)."""
        run = await self.a.rt.services.runs.get_run_any_tenant(run_id)
        for w in self.workers:
            if run is not None and run.worker_id == self.worker_id(w):
                return w
        raise AssertionError(f"no worker process carries {run_id}: {run and run.worker_id}")


def reap(worker: subprocess.Popen) -> str:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
    _, err = worker.communicate(timeout=10)
    return err.decode(errors="replace")


@asynccontextmanager
async def deployment(settings, *, budget_usd: float | None = 1.0) -> AsyncIterator[Deployment]:
    a = await start_node(settings, workers=False)
    b = await start_node(settings, workers=False)
    workers: list[subprocess.Popen] = []
    try:
        workers = [worker_process(settings), worker_process(settings)]
        tid, key = await a.tenant(budget_usd=budget_usd)
        with tempfile.TemporaryDirectory() as src:
            (Path(src) / "bundle.yaml").write_text(MARKER_YAML)
            (Path(src) / "main.py").write_text(MARKER_MAIN)
            await a.rt.registry.register_dir(Path(src), tid)
        r = await a.client(key).put("/v1/policy", content=APPROVAL_POLICY, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200, r.text
        yield Deployment(a, b, workers, tid, key)
    finally:
        errs = [reap(w) for w in workers]
        await b.stop()
        await a.stop()
    for err in errs:
        assert "Traceback" not in err, err


async def post(c, plan: dict | None = None, **headers: str) -> dict:
    r = await c.post("/v1/runs", json={"bundle": "marker", "input": json.dumps(plan or {})}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def entries(events) -> int:
    return sum(e.event == "custom" and e.data.get("name") == "entered" for e in events)


async def wait_for_event(c, run_id: str, kind: str, name: str | None = None):
    async for e in read_sse(c, f"/v1/runs/{run_id}/events"):
        if e.event == kind and (name is None or e.data.get("name") == name):
            return e
    raise AssertionError(f"run {run_id} ended without {kind}")


async def audit_verify(settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update({"STOCKADE_DATABASE_URL": settings.database_url, "STOCKADE_REDIS_URL": settings.redis_url,
                "STOCKADE_REDIS_PREFIX": settings.redis_prefix, "STOCKADE_DATA_DIR": str(settings.data_dir),
                "STOCKADE_BUNDLES_DIR": str(settings.bundles_dir), "STOCKADE_WATCH_BUNDLES": "false",
                "STOCKADE_AUDIT_KEY": settings.audit_key.get_secret_value(),
                "STOCKADE_SECRETS_KEY": settings.secrets_key.get_secret_value() if settings.secrets_key else ""})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", "audit", "verify", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)


async def reserved(c) -> float:
    return sum(b["reserved_usd"] for b in (await c.get("/v1/budgets")).json()["data"])


def descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid`` (a worker's sandboxes: bwrap and what it runs)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(p.name), fields[19]))
    found: set[tuple[int, str]] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(procs: set[tuple[int, str]]) -> set[tuple[int, str]]:
    left = set()
    for pid, start in procs:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            left.add((pid, start))
    return left


async def resume(c, run_id: str, last: int):
    return [e async for e in read_sse(c, f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(last)})]


def warm_worker_process(settings, warm_pool: int) -> subprocess.Popen:
    """``harness.worker_process`` with a warm pool (its default, 2, in production; the harness turns it off)."""
    return worker_process(settings, warm_pool)
