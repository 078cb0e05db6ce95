"""A worker that lost its run while frozen runs none of that run's calls after it resumes (session 22).

The gap: a worker frozen (SIGSTOP, a stalled event loop) with a call of its sandbox in flight; meanwhile its
job lapsed and another worker ended the run ``run.worker_lost``. Thawed, the call went on through the chain:
a ``tool.allowed`` record and the tool's run for a run already ended (the cancel watch notices only later).
Now the chain's lease fence (supervisor/chain/lease.py) stops it: the worker's lease on the run reads stale
after the freeze (CLOCK_MONOTONIC runs through SIGSTOP), so the call reads the run again and is refused
``run.ended``. A late but alive worker (lease stale, run still its own) goes on.

The freeze is simulated in-process on both stacks: the call is held at the chain's entrance (a barrier), the
lease aged by a visibility timeout, the run ended as another worker ends it (``end_lost``), and the cancel
watch held back (it notices later, as after a real thaw).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from supervisor.chain.lease import RunLease
from supervisor.errors import StockadeError
from supervisor.runs.lost import end_lost
from supervisor.stores.records import Run
from supervisor.tools.base import ToolResult
from supervisor.tools.echo import EchoTool
from tests.e2e.harness import collect
from tests.e2e.test_run_pipeline import check_stream, push, start

pytestmark = pytest.mark.timeout(120)
PRICED_ECHO = "version: 1\nrules:\n  - id: echo\n    tool: echo\n    verdict: allow\nprices:\n  echo: 0.01\n"


class CountingEcho(EchoTool):
    """echo, counting its runs: the side effect a zombie call must not have."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, args: Any, ctx: Any) -> ToolResult:
        self.runs += 1
        return await super().run(args, ctx)


class LateCancelWatch:
    """The run store as the worker's cancel watch sees it: its poll waits for ``go`` (it notices later)."""

    def __init__(self, runs: Any, go: asyncio.Event) -> None:
        self._runs, self._go = runs, go

    async def ended_among(self, ids: list[str]) -> list[str]:
        await self._go.wait()
        return await self._runs.ended_among(ids)


async def _held_call(node, monkeypatch) -> dict[str, Any]:
    """A run whose one echo call is held at the chain's entrance; its worker's cancel watch held back."""
    worker = node.rt.worker
    tool = CountingEcho()
    monkeypatch.setitem(node.rt.services.tools._tools, "echo", tool)
    h: dict[str, Any] = {"tool": tool, "worker": worker, "entered": asyncio.Event(), "release": asyncio.Event(),
                         "done": asyncio.Event(), "watch": asyncio.Event()}
    monkeypatch.setattr(worker.cancels, "_runs", LateCancelWatch(node.rt.services.runs, h["watch"]))
    chain = worker.chain

    async def held(call):
        if call.tool_name == "echo":
            h["entered"].set()
            await h["release"].wait()  # the worker frozen with the call in flight
        try:
            h["result"] = await chain(call)
            return h["result"]
        except BaseException as exc:
            h["error"] = exc
            raise
        finally:
            h["done"].set()

    monkeypatch.setattr(worker, "chain", held)
    tid, c, run = await start_priced_echo_run(node)
    await asyncio.wait_for(h["entered"].wait(), 30)
    h.update(tid=tid, client=c, run=run, lease=worker._fences[run["id"]])
    return h


async def start_priced_echo_run(node) -> tuple[str, Any, dict[str, Any]]:
    """A tenant ($1 budget, echo priced at $0.01) running the ``caller`` bundle with one echo call: (its id, its
    client, the run)."""
    tid, key = await node.tenant(budget_usd=1.0)
    await push(node, tid, "caller")
    c = node.client(key)
    r = await c.put("/v1/policy", content=PRICED_ECHO, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    return tid, c, await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 1}}]}))


def _freeze(lease: RunLease, visibility_s: float) -> None:
    """What a SIGSTOP of one visibility timeout does to the lease: its clock moved on that long. (Moving its
    last extend back instead raced with a heartbeat's extend in flight, which set it to when that was sent.)"""
    assert lease.fresh()
    clock = lease._clock
    lease._clock = lambda: clock() + visibility_s
    assert not lease.fresh()


async def test_a_call_of_a_run_ended_as_lost_while_its_worker_was_frozen_is_refused(node, monkeypatch):
    h = await _held_call(node, monkeypatch)
    s = node.rt.services
    run_id = h["run"]["id"]
    try:
        _freeze(h["lease"], s.settings.queue_visibility_s)
        run: Run = await s.runs.get_run_any_tenant(run_id)
        assert run.status == "running" and run.worker_id == h["worker"].worker_id
        # another worker took the lapsed job and found this one lost
        assert await end_lost(s, run, "the run was interrupted: its worker was lost") is not None
        ended = await s.runs.get_run_any_tenant(run_id)
        h["release"].set()  # thawed: the call goes on
        await asyncio.wait_for(h["done"].wait(), 30)
    finally:
        h["release"].set()
        h["watch"].set()
    err = h.get("error")
    assert isinstance(err, StockadeError) and err.code == "run.ended", (err, h.get("result"))
    assert h["tool"].runs == 0  # the tool never ran
    audit = await s.audit.list(h["tid"], run_id=run_id)
    kinds = [a.kind for a in audit]
    assert "tool.allowed" not in kinds and "tool.completed" not in kinds, kinds
    refused = [a for a in audit if a.tool == "echo"]
    assert [(a.kind, a.code) for a in refused] == [("tool.canceled", "run.ended")]
    assert all(a.ts >= ended.ended_at for a in refused)  # recorded as refused, after the end
    events = await asyncio.wait_for(collect(h["client"], run_id), 30)
    check_stream(events)
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
    assert not [e for e in events if e.event == "tool.result"]  # nothing of the call after the end
    budgets = (await h["client"].get("/v1/budgets")).json()["data"]
    assert budgets and all(b["reserved_usd"] == 0 and b["spent_usd"] == 0 for b in budgets), budgets  # reserved, released


async def test_a_late_but_alive_worker_goes_on_with_its_run(node, monkeypatch):
    h = await _held_call(node, monkeypatch)
    s = node.rt.services
    run_id = h["run"]["id"]
    reads: list[str] = []
    real_hold = s.runs.hold

    async def counted(rid: str, worker_id: str):
        reads.append(rid)
        return await real_hold(rid, worker_id)

    monkeypatch.setattr(s.runs, "hold", counted)
    try:
        _freeze(h["lease"], s.settings.queue_visibility_s)  # late, but nobody ended the run
        h["release"].set()
        await asyncio.wait_for(h["done"].wait(), 30)
    finally:
        h["release"].set()
        h["watch"].set()
    assert h.get("error") is None and h["result"] == {"n": 1}, h.get("error")
    assert h["tool"].runs == 1
    assert run_id in reads  # the stale lease had the run held again in the store
    assert h["lease"].fresh()  # ... and renewed: the next calls take the fast path again
    events = await asyncio.wait_for(collect(h["client"], run_id), 30)
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1]
    kinds = [a.kind for a in await s.audit.list(h["tid"], run_id=run_id)]
    assert kinds.count("tool.allowed") == 1 and kinds.count("tool.completed") == 1, kinds
    budgets = (await h["client"].get("/v1/budgets")).json()["data"]
    assert any(b["spent_usd"] == 0.01 for b in budgets), budgets  # the call is priced (reserved, then charged)


class _Runs:
    """The store calls the lease makes: its hold, and the read that says why one failed (its decisions, not a
    store, are what is tested here)."""

    def __init__(self, run: Run | None) -> None:
        self.run, self.reads = run, 0

    async def hold(self, run_id: str, worker_id: str) -> bool:
        self.reads += 1
        return self.run is not None and self.run.status == "running" and self.run.worker_id == worker_id

    async def get_run_any_tenant(self, run_id: str) -> Run | None:
        return self.run


async def test_the_fence_reads_nothing_while_fresh_and_refuses_a_run_another_worker_carries():
    from supervisor.chain.base import Binding, CallState
    from supervisor.chain.lease import LEASE, LeaseFence

    now = [100.0]
    extends: list[float] = []

    async def extend() -> None:
        extends.append(now[0])

    run = Run(id="run_x", tenant_id="t", bundle="b", bundle_version="1", status="running", input="",
              created_at=0.0, worker_id="w1")
    runs = _Runs(run)
    lease = RunLease(runs, "run_x", "w1", 30.0, extend, clock=lambda: now[0])
    call = CallState(binding=Binding("t", "run_x", "b", "1"), tool_name="echo", raw_args={})
    call.extra[LEASE] = lease

    async def tool(c):
        return {"ran": True}

    fence = LeaseFence()
    now[0] += 19.9  # within two thirds of the visibility timeout: the hot path, no read, no extend
    assert await fence(call, tool) == {"ran": True} and runs.reads == 0 and extends == []
    now[0] += 0.2  # stale, still ours: read, extended, fresh again
    assert await fence(call, tool) == {"ran": True} and runs.reads == 1 and extends == [now[0]]
    assert lease.fresh()
    now[0] += 25.0  # stale again; meanwhile another worker started the run (a second job)
    runs.run = dataclasses.replace(run, worker_id="w2")
    with pytest.raises(StockadeError) as exc:
        await fence(call, tool)
    assert exc.value.code == "run.ended" and call.outcome == "tool.canceled" and len(extends) == 1
    with pytest.raises(StockadeError):  # known lost: refused without another read
        await fence(call, tool)
    assert runs.reads == 2


async def test_a_freeze_inside_the_allowed_record_write_still_runs_nothing(node, monkeypatch):
    """Frozen while the audit gate writes the call's ``tool.allowed``: the fence right before execute stops it."""
    s = node.rt.services
    recorder = node.rt.recorder
    in_write, thaw = asyncio.Event(), asyncio.Event()
    real_record = recorder.record

    async def record(tenant_id, kind, **kw):
        if kind == "tool.allowed":
            in_write.set()
            await thaw.wait()
        return await real_record(tenant_id, kind, **kw)

    monkeypatch.setattr(recorder, "record", record)
    h = await _held_call(node, monkeypatch)
    run_id = h["run"]["id"]
    try:
        h["release"].set()  # not frozen yet: the call passes the first fence
        await asyncio.wait_for(in_write.wait(), 30)
        _freeze(h["lease"], s.settings.queue_visibility_s)
        assert await end_lost(s, await s.runs.get_run_any_tenant(run_id), "its worker was lost") is not None
        thaw.set()
        await asyncio.wait_for(h["done"].wait(), 30)
    finally:
        thaw.set()
        h["release"].set()
        h["watch"].set()
    err = h.get("error")
    assert isinstance(err, StockadeError) and err.code == "run.ended", (err, h.get("result"))
    assert h["tool"].runs == 0
    audit = [(a.kind, a.code) for a in await s.audit.list(h["tid"], run_id=run_id) if a.tool == "echo"]
    assert audit == [("tool.allowed", None), ("tool.canceled", "run.ended")], audit
    events = await asyncio.wait_for(collect(h["client"], run_id), 30)
    check_stream(events)
    assert events[-1].data["code"] == "run.worker_lost"
