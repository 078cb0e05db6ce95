"""A worker giving up a job ends no run another worker carries (session 25).

The hole: ``Worker._give_up_or_retry`` (a job failed its third attempt) ended the job's run at once - its
reservations released, its approvals withdrawn, the run marked failed ``internal`` - without taking it over,
as every other ender of another worker's run does (supervisor/runs/lost.py). A run whose job came back to
this worker while another still carried it (that one's heartbeat came late; or the run had passed to another
worker by a takeover) was ended under its live holder: the reservation of its tool call in flight released,
its approval requests gone, the run failed while its sandbox still acted. Now a started run is left to its
holder (a holder that is lost marks it no more, and the sweepers take it over and end it) - since session 26
also one under this worker's own id - and a queued run is ended only while it is still queued.

Both stacks, in one node: W1 is the node's worker (its call held inside the tool: its reservation taken) or a
worker stored as the run's holder; W2 a second worker on the same stores, giving up the run's job
(``_give_up_or_retry`` with a job on its third attempt). Barriers order the steps; no sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from supervisor.ids import new_id
from supervisor.runs.worker import Worker
from supervisor.stores.records import Approval, Job, Run
from supervisor.tools.base import ToolResult
from supervisor.tools.echo import EchoTool
from tests.e2e.harness import collect
from tests.e2e.test_run_pipeline import check_stream
from tests.e2e.test_zombie_worker_fence_session22 import start_priced_echo_run

pytestmark = [pytest.mark.timeout(120), pytest.mark.node_settings(queue_visibility_s=1.0, sweep_interval_s=600.0)]
W2 = "w2-session25"


@pytest.fixture
def pg_url(fresh_pg_url):
    """Each test its own database: runs stored as another worker's must not meet other tests' sweepers."""
    return fresh_pg_url


class HeldEcho(EchoTool):
    """echo whose run waits for ``release`` (its reservation taken, the call in flight), counting its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def run(self, args: Any, ctx: Any) -> ToolResult:
        self.runs += 1
        self.entered.set()
        await self.release.wait()
        return await super().run(args, ctx)


def _w2(node) -> Worker:
    rt = node.rt
    return Worker(rt.services, rt.chain, rt.recorder, rt.registry, worker_id=W2)


async def _pending_approval(s: Any, tid: str, run_id: str) -> str:
    now = time.time()
    approval = Approval(id=new_id("apr_"), tenant_id=tid, run_id=run_id, tool="echo", args_hash="h", args={},
                        rule_id="big", reason=None, status="pending", created_at=now, expires_at=now + 3600)
    await s.approvals.create(approval)
    return approval.id


async def _reserve_and_ask(s: Any, tid: str, run_id: str) -> None:
    """What a holder's call in flight leaves: $0.01 reserved for the run, an approval request pending."""
    now = time.time()
    await s.ledger.reserve(tid, [("tenant", tid)], 10_000, reservation_id=new_id("rsv_"), run_id=run_id,
                           expires_at=now + 3600, now=now)
    await _pending_approval(s, tid, run_id)


async def _stored_run(node, tid: str, holder: str | None, *, reserve: bool = True) -> Run:
    """A run as its holder left it: started by ``holder`` (None: still queued), waiting for an approval, its
    reservation taken; no job on the queue (W2 is handed one)."""
    s = node.rt.services
    now = time.time()
    run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input="", status="queued",
              created_at=now)
    await s.runs.create_run(run)
    if holder is not None:
        assert await s.runs.start_run(tid, run.id, worker_id=holder, started_at=now) is not None
        await s.runs.set_status(tid, run.id, "waiting_approval")
    if reserve:
        await _reserve_and_ask(s, tid, run.id)
    return await s.runs.get_run_any_tenant(run.id)


async def _give_up(node, run: Run, job: Job | None = None) -> None:
    w2 = _w2(node)
    job = job or Job(run_id=run.id, tenant_id=run.tenant_id, receipt="0-1", attempts=3)
    assert job.attempts >= 3
    try:
        await asyncio.wait_for(w2._give_up_or_retry(job), 30)
    finally:
        await w2.drain()


async def _budgets(c) -> list[dict[str, Any]]:
    return (await c.get("/v1/budgets")).json()["data"]


async def _approvals(c, run_id: str) -> list[str]:
    return [a["status"] for a in (await c.get("/v1/approvals", params={"run_id": run_id})).json()["data"]]


async def test_a_run_in_a_live_workers_tool_call_is_not_ended_by_another_giving_up_its_job(node, monkeypatch):
    s = node.rt.services
    tool = HeldEcho()
    monkeypatch.setitem(s.tools._tools, "echo", tool)
    tid, c, run = await start_priced_echo_run(node)
    run_id = run["id"]
    try:
        await asyncio.wait_for(tool.entered.wait(), 30)  # W1 is in the tool: the call's $0.01 reserved
        w1 = node.rt.worker
        approval_id = await _pending_approval(s, tid, run_id)
        held = await s.runs.get_run_any_tenant(run_id)
        assert held.status == "running" and held.worker_id == w1.worker_id, held
        assert [b["reserved_usd"] for b in await _budgets(c)] == [0.01]
        # the run's job, come back to W2 on its third delivery while W1 still runs it (W1's heartbeat came late)
        await _give_up(node, held, dataclasses.replace(w1._leases[run_id], attempts=3))
        now = await s.runs.get_run_any_tenant(run_id)
        assert now.status == "running" and now.worker_id == w1.worker_id and now.error_code is None, now
        assert [b["reserved_usd"] for b in await _budgets(c)] == [0.01]  # the call in flight keeps its reservation
        assert await _approvals(c, run_id) == ["pending"], approval_id
        tool.release.set()  # the call goes on, and the run ends on W1 as it would have
        events = await asyncio.wait_for(collect(c, run_id), 30)
    finally:
        tool.release.set()
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1]
    assert [e.data.get("code") for e in events if e.event == "tool.result"] == [None]  # it ran, not refused
    assert tool.runs == 1
    assert [(b["reserved_usd"], b["spent_usd"]) for b in await _budgets(c)] == [(0, 0.01)]


@pytest.mark.parametrize("holder", ["w1-session25", "moved", W2, f"{W2} (takeover)"],
                         ids=["its-holder", "taken-over-by-another", "own-id", "own-takeover"])
async def test_a_started_run_is_left_to_its_holder_and_a_lost_one_to_the_sweepers(node, holder):
    """Under the giving-up worker's own id too (session 26): an earlier process under that id (restarted, or
    one whose id claim lapsed while it was frozen) may resume and hold it again - ended without a takeover, its
    call in flight would lose its reservation. The sweepers' takeover names the run another's first."""
    s = node.rt.services
    tid, key = await node.tenant(budget_usd=1.0)
    c = node.client(key)
    run = await _stored_run(node, tid, "w1-session25" if holder == "moved" else holder)
    if holder == "moved":  # another ender took it over (after its own watch), and carries it now
        assert await s.runs.take_over(run.id, "w1-session25", await s.runs.last_seen(run.id), "w3-session25")
        run = await s.runs.get_run_any_tenant(run.id)
    holder = run.worker_id
    await _give_up(node, run)
    now = await s.runs.get_run_any_tenant(run.id)
    assert now.status == "waiting_approval" and now.worker_id == holder and now.error_code is None, now
    assert [b["reserved_usd"] for b in await _budgets(c)] == [0.01]
    assert await _approvals(c, run.id) == ["pending"]
    # its holder lost after all (it marks the run no more): the sweepers' watch finds it, takes it over, ends it
    seen_at = await s.runs.last_seen(run.id)

    async def confirmed() -> list[tuple[Run, float]]:
        return [(now, seen_at)]

    node.rt.abandoned.confirmed = confirmed
    assert await node.rt.end_abandoned_runs() == 1
    events = await asyncio.wait_for(collect(c, run.id), 30)
    check_stream(events)
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
    assert [b["reserved_usd"] for b in await _budgets(c)] == [0]
    assert await _approvals(c, run.id) == ["expired"]


async def test_a_queued_run_is_still_ended(node):
    s = node.rt.services
    tid, key = await node.tenant(budget_usd=1.0)
    c = node.client(key)
    run = await _stored_run(node, tid, None, reserve=False)
    await _give_up(node, run)
    now = await s.runs.get_run_any_tenant(run.id)
    assert now.status == "failed" and now.error_code == "internal", now
    events = await asyncio.wait_for(collect(c, run.id), 30)
    check_stream(events)  # one terminal event
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "internal", events[-1]
    assert await _approvals(c, run.id) == []
    await _give_up(node, now)  # given up again (another delivery): nothing more is written
    assert len(await asyncio.wait_for(collect(c, run.id), 30)) == len(events)


async def test_a_queued_run_started_by_another_worker_while_given_up_is_left_to_it(node, monkeypatch):
    """The race (session 26): W2 reads the run queued; before it ends it, W1 starts it (its second job, queued
    again by ``requeue_orphans``), reserves for a call and asks for an approval. The end is the store's
    compare-and-set "still queued": W1's run goes on, its reservation and approval untouched."""
    s = node.rt.services
    tid, key = await node.tenant(budget_usd=1.0)
    c = node.client(key)
    run = await _stored_run(node, tid, None, reserve=False)
    real_get = s.runs.get_run_any_tenant

    async def read_then_started(run_id: str):
        read = await real_get(run_id)  # what W2 decides on: queued
        if run_id == run.id and read is not None and read.status == "queued":
            assert await s.runs.start_run(tid, run_id, worker_id="w1-session26", started_at=time.time()) is not None
            await _reserve_and_ask(s, tid, run_id)
        return read

    monkeypatch.setattr(s.runs, "get_run_any_tenant", read_then_started)
    await _give_up(node, run)
    monkeypatch.undo()
    now = await s.runs.get_run_any_tenant(run.id)
    assert now.status == "running" and now.worker_id == "w1-session26" and now.error_code is None, now
    assert (await s.runs.events_after(tid, run.id, 0)) == []  # no terminal event under W1
    assert [b["reserved_usd"] for b in await _budgets(c)] == [0.01]
    assert await _approvals(c, run.id) == ["pending"]


async def test_a_holder_whose_run_was_taken_over_ends_it_once_and_the_ender_then_writes_nothing(node, monkeypatch):
    """The holder's own end racing its ender after a takeover. W2 has taken W1's run over (not ended it yet); W1
    resumes: its call is refused (the fence), its sandbox then finishes and W1 ends the run itself - its calls
    aborted and its sandbox killed before it releases anything, its end a compare-and-set like every end. W2's
    end then finds the run ended: it writes nothing (one terminal event), and nothing was reserved or spent.
    (W2 ending first, W1's end after it: session 23's takeover-first test.)"""
    import supervisor.runs.worker as worker_mod
    from tests.e2e.test_fence_takeover_session23 import (
        _frozen_call,
        _judge,
        _let_go,
        _refused_as_ended,
        _takeover_held_until,
        _until_taken,
    )
    from tests.e2e.test_zombie_worker_fence_session22 import _freeze

    s = node.rt.services
    h = await _frozen_call(node, monkeypatch)
    run_id = h["run"]["id"]
    go = asyncio.Event()
    taken, took = _takeover_held_until(s, monkeypatch, go)  # W2 takes the run over; it ends it only on ``go``
    ends: list[Any] = []
    real_end = worker_mod.end_lost

    async def ending(*a, **kw):
        ends.append(await real_end(*a, **kw))
        return ends[-1]

    monkeypatch.setattr(worker_mod, "end_lost", ending)
    w2, judged = _judge(node, h)
    try:
        await _until_taken(taken, took, judged)
        _freeze(h["lease"], s.settings.queue_visibility_s)  # W1 resumes: its lease reads stale
        h["release"].set()
        await asyncio.wait_for(h["done"].wait(), 30)  # its call refused
        h["after"].set()  # the sandbox hears it, finishes, and W1 ends the run (W2 still waiting)
        events = await asyncio.wait_for(collect(h["client"], run_id), 30)
        ended = await s.runs.get_run_any_tenant(run_id)
        # ended by W1 (the bundle's own end after the refusal), on a run W2 holds
        assert ended.worker_id == "w2-session23" and ended.error_code != "run.worker_lost", ended
        # the bundle was told its call was refused, and finished on its own: its end is the run's
        assert [e.data.get("code") for e in events if e.event == "tool.result"] == ["run.ended"], events
        assert events[-1].event == "run.completed" and ended.status == "succeeded", events[-1]
        go.set()
        await asyncio.wait_for(judged, 30)  # W2 goes on to end it: finds it ended
    finally:
        await _let_go(h, w2, go)
    _refused_as_ended(h)
    assert h["tool"].runs == 0
    assert ends == [None]  # W2's end wrote nothing
    check_stream(events)
    assert await asyncio.wait_for(collect(h["client"], run_id), 30) == events  # nothing after W1's end
    assert (await s.runs.get_run_any_tenant(run_id)).status == ended.status
    budgets = await _budgets(h["client"])
    assert budgets and all(b["reserved_usd"] == 0 and b["spent_usd"] == 0 for b in budgets), budgets
