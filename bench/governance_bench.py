"""Policy decision + audit append: Stockade vs py-agent-kernel's ``Kernel.submit`` (deny path). Bounded: ~20 s.

    .venv/bin/python bench/governance_bench.py [DIR]   # DIR: where py-agent-kernel was installed, if not importable

What one "decision" is on each side:

* Stockade: build a ``PolicyRequest``, ``supervisor.policy.evaluate`` over a
  policy of 100 rules for the same tool where only the last one matches
  (99 resource-glob misses, then a deny), the argument hash, and one audit
  record through ``AuditRecorder`` + ``Sealer`` into the real
  ``SqliteAuditLog`` (WAL file in a temp dir): per-tenant hash chain, HMAC,
  ``BEGIN IMMEDIATE`` ... ``COMMIT``. The chain is verified afterwards.
* py-agent-kernel: ``Kernel.submit(ActionRequest)`` against a ``Policy`` of
  100 capabilities for the same action, none matching (its default deny),
  which writes one flushed JSONL line to its log. Its log has no hash chain
  or MAC and is not a database transaction.

Both sides run in one process, alternating rounds so that a noisy
neighbour hits both alike. Two scenarios: one caller, one call at a time;
then 16 concurrent callers per side (16 asyncio tasks for Stockade, whose
audit appends then share SQLite commits - ``SqliteDB.write``; 16 threads for
py-agent-kernel, whose ``submit`` is synchronous), as a supervisor serving
many runs sees it.

Installing the comparison package (never a dependency of Stockade; it pulls
litellm and ~60 other packages, so keep it out of .venv):

    .venv/bin/python -m pip install --target /tmp/pak py-agent-kernel
    .venv/bin/python bench/governance_bench.py /tmp/pak

DIR is appended to the END of ``sys.path`` so .venv's own packages win.
Without it, the comparison is skipped with a one-line note.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.audit import AuditRecorder, Sealer, args_hash, verify_chain  # noqa: E402
from supervisor.policy import PolicyRequest, evaluate, load_policy  # noqa: E402
from supervisor.stores.sqlite import SqliteAuditLog, SqliteTenantStore, open_sqlite  # noqa: E402

RULES = 100
ROUNDS = 3
ROUND_S = 1.0
CALLERS = 16
BREAKDOWN_S = 0.3
TOOL, TARGET = "fs.read", "/etc/passwd"


def stockade_policy_text() -> str:
    lines = ["version: 1", "rules:"]
    for i in range(RULES - 1):
        lines += [f"  - id: ws-{i}", f"    tool: {TOOL}", f'    resource: "/workspace/p{i}/**"', "    verdict: allow"]
    lines += ["  - id: no-system-files", f"    tool: {TOOL}", '    resource: "/etc/**"', "    verdict: deny",
              "    reason: system files"]
    return "\n".join(lines) + "\n"


def import_kernel(extra: str | None) -> Any:
    """The ``agent_os_kernel`` package, or None (with the reason printed)."""
    if extra:
        sys.path.append(str(Path(extra).resolve()))
    # litellm (imported by the package) would otherwise fetch a price list from the internet at import
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import agent_os_kernel
    except Exception as exc:  # not installed, or its dependencies clash: skip, do not fail `make bench`
        print(f"py-agent-kernel not importable ({type(exc).__name__}: {exc}); comparison skipped "
              "(install: see this script's docstring)")
        return None
    return agent_os_kernel


class Stockade:
    """One decision: evaluate the 100-rule policy, then append the sealed, chained audit record."""

    def __init__(self, recorder: AuditRecorder, tenant_id: str) -> None:
        self.policy = load_policy(stockade_policy_text())
        self.recorder = recorder
        self.tenant_id = tenant_id
        self.count = 0

    async def decide(self) -> str:
        args = {"path": TARGET}
        req = PolicyRequest(tool=TOOL, args=args, resource=TARGET, role="member", user=None, project=None, history=())
        v = evaluate(self.policy, req)
        await self.recorder.record(
            self.tenant_id, f"tool.{v.verdict}", run_id="run_bench", tool=TOOL, args_hash=args_hash(TOOL, args),
            rule_id=v.rule_id, policy_version=self.policy.version, code="policy.denied" if v.verdict == "deny" else None,
            detail={"resource": TARGET, "reason": v.reason},
        )
        self.count += 1
        return v.verdict


def make_theirs(pak: Any, log_path: Path) -> tuple[Any, Callable[[], str]]:
    caps = [pak.CapabilityRule(action=TOOL, resource=f"/workspace/p{i}/**") for i in range(RULES)]
    kernel = pak.Kernel(pak.Policy(capabilities=caps), providers=None, log_path=log_path)

    def decide() -> str:
        return kernel.submit(pak.ActionRequest(action=TOOL, target=TARGET, params={"path": TARGET})).status

    return kernel, decide


async def run_ours(side: Stockade, seconds: float, lat: list[float]) -> int:
    n = 0
    clock = time.perf_counter
    stop = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= stop:
            return n
        await side.decide()
        lat.append(clock() - t0)
        n += 1


def run_theirs(decide: Callable[[], str], seconds: float, lat: list[float]) -> int:
    n = 0
    clock = time.perf_counter
    stop = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= stop:
            return n
        decide()
        lat.append(clock() - t0)
        n += 1


async def concurrent_ours(side: Stockade, callers: int, seconds: float) -> float:
    """Decisions per wall-clock second with ``callers`` concurrent tasks (their audit appends share commits)."""
    stop = time.perf_counter() + seconds
    counts = [0] * callers

    async def caller(i: int) -> None:
        while time.perf_counter() < stop:
            await side.decide()
            counts[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return sum(counts) / (time.perf_counter() - t0)


def concurrent_theirs(decide: Callable[[], str], callers: int, seconds: float) -> float:
    """The same with ``callers`` threads (Kernel.submit is synchronous; its log write is locked)."""
    import threading

    stop = time.perf_counter() + seconds
    counts = [0] * callers

    def caller(i: int) -> None:
        while time.perf_counter() < stop:
            decide()
            counts[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


async def breakdown(ours: Stockade, kernel: Any) -> None:
    """Where the time goes: each half alone (short phases)."""
    args = {"path": TARGET}
    req = PolicyRequest(tool=TOOL, args=args, resource=TARGET, role="member", user=None, project=None, history=())
    lat: list[float] = []
    run_theirs(lambda: evaluate(ours.policy, req).verdict, BREAKDOWN_S, lat)
    summary("  of which: stockade evaluate alone", lat)
    lat = []

    async def append() -> None:
        await ours.recorder.record(ours.tenant_id, "tool.deny", run_id="run_bench", tool=TOOL, args_hash="0" * 64,
                                   rule_id="no-system-files", policy_version=ours.policy.version, code="policy.denied",
                                   detail={"resource": TARGET, "reason": "system files"})
        ours.count += 1

    clock = time.perf_counter
    stop = clock() + BREAKDOWN_S
    while (t0 := clock()) < stop:
        await append()
        lat.append(clock() - t0)
    summary("  of which: stockade sealed audit append alone", lat)
    if kernel is not None:
        from agent_os_kernel import ActionRequest

        lat = []
        request = ActionRequest(action=TOOL, target=TARGET, params=args)
        run_theirs(lambda: str(kernel.policy.is_allowed(request)), BREAKDOWN_S, lat)
        summary("  of which: py-agent-kernel Policy.is_allowed alone", lat)


def summary(name: str, lat: list[float]) -> float:
    lat = sorted(lat)
    rate = len(lat) / sum(lat)  # decisions per second of busy time
    p50, p99 = statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99) - 1] * 1e6
    print(f"{name:<58} {rate:>9,.0f}/s   p50 {p50:7.1f} µs   p99 {p99:7.1f} µs")
    return rate


async def main(argv: list[str]) -> int:
    pak = import_kernel(argv[1] if len(argv) > 1 else None)
    with tempfile.TemporaryDirectory(prefix="stockade-gov-bench-") as d:
        db = await open_sqlite(Path(d) / "bench.db")
        try:
            tenant = (await SqliteTenantStore(db).create_tenant("bench")).id
            log = SqliteAuditLog(db)
            sealer = Sealer(os.urandom(32))
            ours = Stockade(AuditRecorder(log, sealer), tenant)
            assert await ours.decide() == "deny"
            kernel, theirs = (None, None) if pak is None else make_theirs(pak, Path(d) / "kernel.log")
            if theirs is not None:
                assert theirs() == "DENIED"
            ours_lat: list[float] = []
            theirs_lat: list[float] = []
            await run_ours(ours, 0.2, [])  # warm-up: statement cache, page cache
            if theirs is not None:
                run_theirs(theirs, 0.2, [])
            for _ in range(ROUNDS):
                await run_ours(ours, ROUND_S, ours_lat)
                if theirs is not None:
                    run_theirs(theirs, ROUND_S, theirs_lat)
            print(f"{RULES} rules, the matching one last; one caller; {ROUNDS} alternating rounds of {ROUND_S:.0f} s")
            rate_ours = summary("stockade  evaluate + sealed, chained SQLite audit append", ours_lat)
            if theirs is not None:
                rate_theirs = summary("py-agent-kernel  Kernel.submit (deny, JSONL log line)", theirs_lat)
                ratio = rate_ours / rate_theirs
                verdict = "goal met" if ratio >= 1.5 else "goal (>= 1.5x) NOT met"
                print(f"ratio stockade / py-agent-kernel: {ratio:.2f}x  ({verdict})")
            # Many runs at once, as a supervisor serves them: 16 concurrent callers on each side.
            c_ours, c_theirs = [], []
            for _ in range(ROUNDS):
                c_ours.append(await concurrent_ours(ours, CALLERS, ROUND_S))
                if theirs is not None:
                    c_theirs.append(concurrent_theirs(theirs, CALLERS, ROUND_S))
            print(f"{CALLERS} concurrent callers ({ROUNDS} alternating rounds of {ROUND_S:.0f} s; median round)")
            r_ours = statistics.median(c_ours)
            print(f"{'stockade  16 tasks, audit appends group-committed':<58} {r_ours:>9,.0f}/s")
            if theirs is not None:
                r_theirs = statistics.median(c_theirs)
                print(f"{'py-agent-kernel  16 threads':<58} {r_theirs:>9,.0f}/s")
                ratio = r_ours / r_theirs
                verdict = "goal met" if ratio >= 1.5 else "goal (>= 1.5x) NOT met"
                print(f"ratio stockade / py-agent-kernel, concurrent: {ratio:.2f}x  ({verdict})")
            await breakdown(ours, kernel)
            if kernel is not None:
                kernel.close()
            # every decision left its record and the chain holds (its first 2,000 links re-verified)
            head = await log.head(tenant)
            assert head is not None and head.seq == ours.count, (head, ours.count)
            bad = verify_chain(tenant, await log.list(tenant, limit=2000), sealer)
            assert bad is None, str(bad)
        finally:
            await db.close()
    return 0


if __name__ == "__main__":
    from app.server import run  # uvloop, as `stockade serve` runs (the other benches do the same)

    raise SystemExit(run(main(sys.argv)))
