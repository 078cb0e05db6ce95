"""A resumed worker and the worker ending its run as lost are ordered by the store (session 23).

Worker W1 carries a run and freezes past its lease. W2 gets the job redelivered, watches the run's
``seen_at`` unchanged for a visibility timeout and decides W1 is lost. Before, W1 could resume right then:
its stale lease re-read the run (still running, still W1's) and let its call go on (``tool.allowed``, the
tool run) while W2 ended the run ``run.worker_lost`` - nothing ordered the decision and the side effect. Now
W1's fence holds the run in the store (``RunStore.hold``: ``seen_at`` moved, only while the run is W1's) and
W2 takes the run over (``RunStore.take_over``, with the ``seen_at`` it watched) before it ends it:

(a) W1's hold first: W2's takeover fails, the run is not ended, W1's call runs;
(b) W2's takeover first: W1's call is refused ``run.ended`` (audited ``tool.canceled``), the tool never runs.

Both stacks, in one node: W1 is the node's worker (its call held at the chain's entrance, its run marks
stopped as a frozen worker's are), W2 a second worker on the same stores judging a redelivered job of the run
(``Worker._judge_lapsed``, its watch real). Events and barriers order the steps; no sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import supervisor.runs.worker as worker_mod
from supervisor.errors import StockadeError
from supervisor.metrics import CountedEmitter
from supervisor.runs.worker import Worker
from supervisor.stores.records import Job
from tests.e2e.harness import collect
from tests.e2e.test_run_pipeline import check_stream
from tests.e2e.test_zombie_worker_fence_session22 import CountingEcho, LateCancelWatch, _freeze, start_priced_echo_run

pytestmark = [pytest.mark.timeout(120), pytest.mark.node_settings(queue_visibility_s=1.0, sweep_interval_s=600.0)]


class _NoMarks:
    """W1's run marks (``RunBeat``) as a frozen worker's: none. ``called`` once its beat loop went round."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def beat_runs(self, run_ids: list[str], *_: Any) -> None:
        self.called.set()


async def _frozen_call(node, monkeypatch) -> dict[str, Any]:
    """A run of W1's whose one echo call is held at the chain's entrance and, once the chain is done with it,
    held again before the sandbox hears of it (``after``: the bundle would finish the run itself). W1 marks its
    run no more; its cancel watch is held back (it notices later, as after a real thaw)."""
    worker = node.rt.worker
    tool = CountingEcho()
    monkeypatch.setitem(node.rt.services.tools._tools, "echo", tool)
    h: dict[str, Any] = {"tool": tool, "worker": worker, "entered": asyncio.Event(), "release": asyncio.Event(),
                         "done": asyncio.Event(), "after": asyncio.Event(), "watch": asyncio.Event()}
    monkeypatch.setattr(worker.cancels, "_runs", LateCancelWatch(node.rt.services.runs, h["watch"]))
    chain = worker.chain

    async def held(call):
        if call.tool_name != "echo":
            return await chain(call)
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
            await h["after"].wait()

    monkeypatch.setattr(worker, "chain", held)
    tid, c, run = await start_priced_echo_run(node)
    await asyncio.wait_for(h["entered"].wait(), 30)
    marks = _NoMarks()
    monkeypatch.setattr(worker.beats, "_runs", marks)
    await asyncio.wait_for(marks.called.wait(), 30)  # a beat sent before is done: seen_at stays as it is now
    h.update(tid=tid, client=c, run=run, lease=worker._fences[run["id"]])
    return h


def _judge(node, h: dict[str, Any]) -> tuple[Worker, asyncio.Future]:
    """W2: another worker on the same stores, given the run's job back (its holder's lease lapsed)."""
    rt, s = node.rt, node.rt.services
    w2 = Worker(s, rt.chain, rt.recorder, rt.registry, worker_id="w2-session23")

    async def judge() -> None:
        run = await s.runs.get_run_any_tenant(h["run"]["id"])  # as W2's execute read it
        assert run.status == "running" and run.worker_id == h["worker"].worker_id
        job = Job(run_id=run.id, tenant_id=run.tenant_id, receipt="0-1", attempts=2)  # (acking it: a no-op)
        await w2._judge_lapsed(run, job, CountedEmitter(w2.metrics, s.runs, s.events, run.tenant_id, run.id))

    return w2, asyncio.ensure_future(judge())


def _takeover_held_until(s: Any, monkeypatch: Any, go: asyncio.Event) -> tuple[asyncio.Event, list[bool]]:
    """W2's takeover goes through, then W2 waits for ``go`` before it ends the run: (set once taken, the results)."""
    taken, took, real_take = asyncio.Event(), [], s.runs.take_over

    async def taking(*a):
        took.append(await real_take(*a))
        taken.set()
        await go.wait()
        return took[-1]

    monkeypatch.setattr(s.runs, "take_over", taking)
    return taken, took


async def _until_taken(taken: asyncio.Event, took: list[bool], judged: asyncio.Future) -> None:
    """Until W2 has taken the run over (asserted), or given up judging."""
    waiting = asyncio.ensure_future(taken.wait())
    await asyncio.wait({waiting, judged}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    assert taken.is_set() and took == [True], (took, judged.done() and judged.exception())


async def _let_go(h: dict[str, Any], w2: Worker, *more: asyncio.Event) -> None:
    """Open every gate of ``_frozen_call`` (and ``more``), and let W2 finish what it is doing."""
    for gate in ("release", "after", "watch"):
        h[gate].set()
    for e in more:
        e.set()
    await w2.drain()


def _refused_as_ended(h: dict[str, Any]) -> StockadeError:
    """W1's held call was refused ``run.ended``; its error."""
    err = h.get("error")
    assert isinstance(err, StockadeError) and err.code == "run.ended", (err, h.get("result"))
    return err


async def test_a_hold_first_makes_the_enders_takeover_fail_and_the_call_runs(node, monkeypatch, caplog):
    s = node.rt.services
    in_write, thaw = asyncio.Event(), asyncio.Event()
    real_record = node.rt.recorder.record

    async def record(tenant_id, kind, **kw):
        if kind == "tool.allowed":  # the call passed the fence: W1 holds the run again
            in_write.set()
            await thaw.wait()
        return await real_record(tenant_id, kind, **kw)

    monkeypatch.setattr(node.rt.recorder, "record", record)
    h = await _frozen_call(node, monkeypatch)
    run_id = h["run"]["id"]
    decided, go = asyncio.Event(), asyncio.Event()
    real_alive = worker_mod.holder_alive

    async def deciding(*a):  # W2's watch is over (seen_at unchanged: lost); it acts only on ``go``
        got = await real_alive(*a)
        decided.set()
        await go.wait()
        return got

    monkeypatch.setattr(worker_mod, "holder_alive", deciding)
    w2, judged = _judge(node, h)
    try:
        with caplog.at_level(logging.WARNING, logger="stockade.worker"):
            await asyncio.wait_for(decided.wait(), 30)
            _freeze(h["lease"], s.settings.queue_visibility_s)  # W1 resumes: its lease reads stale
            h["release"].set()
            await asyncio.wait_for(in_write.wait(), 30)  # W1's call went through the fence first
            go.set()
            await asyncio.wait_for(judged, 30)  # W2 tried to take the run over, and left it
        run = await s.runs.get_run_any_tenant(run_id)
        assert run.status == "running" and run.worker_id == h["worker"].worker_id, run
        assert "marked it again before w2-session23 could take it over" in caplog.text, caplog.text
        thaw.set()
        h["after"].set()
        await asyncio.wait_for(h["done"].wait(), 30)
    finally:
        await _let_go(h, w2, thaw, go)
    assert h.get("error") is None and h["result"] == {"n": 1}, h.get("error")
    assert h["tool"].runs == 1
    events = await asyncio.wait_for(collect(h["client"], run_id), 30)
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1]
    kinds = [a.kind for a in await s.audit.list(h["tid"], run_id=run_id)]
    assert kinds.count("tool.allowed") == 1 and kinds.count("tool.completed") == 1, kinds
    assert "tool.canceled" not in kinds, kinds


async def test_a_takeover_first_has_the_resumed_workers_call_refused(node, monkeypatch):
    s = node.rt.services
    h = await _frozen_call(node, monkeypatch)
    run_id = h["run"]["id"]
    go = asyncio.Event()
    taken, took = _takeover_held_until(s, monkeypatch, go)
    w2, judged = _judge(node, h)
    try:
        await _until_taken(taken, took, judged)
        run = await s.runs.get_run_any_tenant(run_id)
        assert run.status == "running" and run.worker_id == "w2-session23", run  # taken, not ended yet
        _freeze(h["lease"], s.settings.queue_visibility_s)  # W1 resumes: its lease reads stale
        h["release"].set()
        await asyncio.wait_for(h["done"].wait(), 30)  # refused, though the run has not ended yet
        go.set()
        await asyncio.wait_for(judged, 30)  # W2 ends the run
        h["after"].set()
    finally:
        await _let_go(h, w2, go)
    err = _refused_as_ended(h)
    assert "carried by another worker" in err.detail
    assert h["tool"].runs == 0  # the tool never ran
    audit = await s.audit.list(h["tid"], run_id=run_id)
    assert "tool.allowed" not in [a.kind for a in audit]
    assert [(a.kind, a.code) for a in audit if a.tool == "echo"] == [("tool.canceled", "run.ended")]
    events = await asyncio.wait_for(collect(h["client"], run_id), 30)
    check_stream(events)
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
    assert not [e for e in events if e.event == "tool.result"]
    budgets = (await h["client"].get("/v1/budgets")).json()["data"]
    assert budgets and all(b["reserved_usd"] == 0 and b["spent_usd"] == 0 for b in budgets), budgets


async def test_the_sweeper_leaves_a_run_whose_worker_came_back_after_its_watch(node):
    """The sweeper's path to ``end_lost`` takes the run over the same way: its watch found the run unmarked,
    but its worker held it (came back) before the takeover -> left alone; found unmarked again -> ended."""
    import time

    from supervisor.ids import new_id
    from supervisor.stores.records import Run

    s = node.rt.services
    tid, key = await node.tenant()
    run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input="", status="queued",
              created_at=time.time())
    await s.runs.create_run(run)
    run = await s.runs.start_run(tid, run.id, worker_id="w-frozen-session23", started_at=time.time())
    watched = await s.runs.last_seen(run.id)
    found: list[tuple[Run, float]] = [(run, watched)]

    async def confirmed():  # what the sweeper's watch found: the run, unmarked at ``watched``
        return list(found)

    node.rt.abandoned.confirmed = confirmed
    assert await s.runs.hold(run.id, "w-frozen-session23") is True  # its worker came back first
    assert await node.rt.end_abandoned_runs() == 0
    now = await s.runs.get_run_any_tenant(run.id)
    assert now.status == "running" and now.worker_id == "w-frozen-session23", now
    found[:] = [(run, await s.runs.last_seen(run.id))]  # unmarked since: lost after all
    assert await node.rt.end_abandoned_runs() == 1
    events = await asyncio.wait_for(collect(node.client(key), run.id), 30)
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
