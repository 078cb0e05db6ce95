"""Failure injection with real processes: a worker stopped (SIGTERM) or lost (SIGKILL) mid-run, a queue
that refuses a new run, a database that refuses new connections. Each run still ends exactly once, and
what it held (reservations, approval requests) is given back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from supervisor.errors import StockadeError
from supervisor.stores.postgres.db import open_postgres
from tests.e2e.harness import collect, priced_call_in_flight, read_sse, start_node, worker_process
from tests.e2e.test_run_pipeline import check_stream, push, start

ROOT = Path(__file__).resolve().parents[2]
APPROVAL_POLICY = ("version: 1\nrules:\n  - id: big\n    tool: echo\n    when: {args.n: {gt: 10}}\n"
                   "    verdict: require_approval\n  - id: echo\n    tool: echo\n    verdict: allow\n")


@pytest.fixture
def pg_url(fresh_pg_url):
    """Each test here its own database: sweeps and recovery act on every run of the database (whatever the
    tenant), so another test's runs - queued for ever in the session's shared database, their jobs in another
    Redis prefix - would be requeued into, or ended by, this test's nodes."""
    return fresh_pg_url


def _reap(worker: subprocess.Popen) -> str:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
    _, err = worker.communicate(timeout=10)
    return err.decode(errors="replace")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_sigterm_ends_the_workers_runs_at_once_and_settles_their_calls(node_config, stack_kind):
    """SIGTERM while a priced call is in flight: the run ends now (not one visibility timeout later, with
    no other worker around), the call is settled and its outcome audited before the stores close."""
    settings = node_config.model_copy(update={"queue_visibility_s": 30.0})
    api = await start_node(settings, workers=False)
    worker = worker_process(settings)
    try:
        tid, key = await api.tenant(budget_usd=1.0)
        await push(api, tid, "slowtool")
        c = api.client(key)
        run = await priced_call_in_flight(c)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0
        err = _reap(worker)
        assert "Task was destroyed" not in err and "could not be written" not in err, err
        assert "ended run.worker_lost" in err and "(worker none)" not in err, err  # the operator's line names it
        events = await asyncio.wait_for(collect(c, run["id"]), 10)  # no worker is left to end it later
        check_stream(events)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost"
        assert all(b["reserved_usd"] == 0 for b in (await c.get("/v1/budgets")).json()["data"])
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        assert any(a["kind"] == "tool.canceled" for a in audit), [a["kind"] for a in audit]
    finally:
        _reap(worker)
        await api.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_lost_runs_pending_approvals_are_withdrawn(node_config, stack_kind):
    """SIGKILL while the run waits for a human: the node that ends it as lost also takes its request
    off the approvers' list (it would stay pending for approval_ttl_s, approvable for a dead run)."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    api = await start_node(settings, workers=False)
    worker = worker_process(settings)
    second = None
    try:
        tid, key = await api.tenant()
        await push(api, tid, "caller")
        c = api.client(key)
        r = await c.put("/v1/policy", content=APPROVAL_POLICY, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200, r.text
        run = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 50}}]}))
        async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
            if e.event == "approval.requested":
                break
        os.killpg(worker.pid, signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 10)
        second = await start_node(settings, api=False, workers=True)  # picks the job up again
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        check_stream(events)
        assert events[-1].data["code"] == "run.worker_lost"
        pending = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
        assert pending == []
        mine = (await c.get("/v1/approvals", params={"run_id": run["id"]})).json()["data"]
        assert [a["status"] for a in mine] == ["expired"]
    finally:
        _reap(worker)
        if second is not None:
            await second.stop()
        await api.stop()


@pytest.mark.timeout(60)
async def test_a_run_the_queue_refused_does_not_stay_queued(node):
    """The run is stored, then the queue is unavailable: 503, and the run ends failed instead of waiting
    forever for a job that was never written (and a retry with its Idempotency-Key gets that end)."""
    tid, key = await node.tenant()
    c = node.client(key)
    queue = node.rt.services.queue

    async def refuse(tenant_id: str, run_id: str) -> None:
        raise StockadeError("store.unavailable", "The run queue is unavailable")

    real = queue.enqueue
    queue.enqueue = refuse
    try:
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "hi"}, headers={"Idempotency-Key": "k1"})
    finally:
        queue.enqueue = real
    assert r.status_code == 503 and r.json()["code"] == "store.unavailable"
    assert await node.rt.services.runs.list_runs_by_status(("queued",)) == []
    again = await c.post("/v1/runs", json={"bundle": "echo", "input": "hi"}, headers={"Idempotency-Key": "k1"})
    assert again.json()["status"] == "failed", again.text
    events = await asyncio.wait_for(collect(c, again.json()["id"]), 10)
    check_stream(events)
    assert events[-1].data["code"] == "store.unavailable"


@pytest.mark.timeout(60)
async def test_a_database_refusing_new_connections_is_store_unavailable(fresh_pg_url):
    """ALLOW_CONNECTIONS false (maintenance) answers a new connection with SQLSTATE 55000: that is the
    store being unavailable - fail closed and retry - never an internal error (a worker gave up on such
    runs and left them running forever)."""
    db = await open_postgres(fresh_pg_url, min_size=1, max_size=2)
    name = fresh_pg_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(fresh_pg_url.rsplit("/", 1)[0] + "/postgres")
    try:
        await db.ping()
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        for _ in range(250):  # termination is asynchronous: wait until the server has no backend left there
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name):
                break
            await asyncio.sleep(0.02)
        for _ in range(3):  # the pool's connections were cut; every new one is refused
            with pytest.raises(StockadeError) as err:
                await db.ping()
            assert err.value.code == "store.unavailable", err.value
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        for attempt in range(5):  # and it recovers by itself (a pooled connection cut earlier may fail once)
            try:
                await db.ping()
                break
            except StockadeError as exc:
                assert exc.code == "store.unavailable" and attempt < 4, exc
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await db.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_runs_whose_jobs_redis_lost_are_queued_again_and_a_second_job_harms_no_live_run(node_config, stack_kind):
    """Redis restarted empty (compose keeps nothing on disk): a run stored as queued has no job left and
    no worker would ever take it. The sweeper queues it again (Runtime.requeue_orphans). A second job for
    a run that is alive (the queue had not lost it after all) is dropped, never ends it as lost."""
    import redis.asyncio as aioredis

    api = await start_node(node_config, workers=False)
    worker = None
    try:
        tid, key = await api.tenant()
        c = api.client(key)
        lost = await start(c, "echo", "queued before the restart")
        r = aioredis.from_url(node_config.redis_url)
        try:
            assert await r.delete(node_config.redis_prefix + "q:runs") == 1  # what a restart without data does
        finally:
            await r.aclose()
        worker = await start_node(node_config, api=False, workers=True)
        assert await worker.rt.requeue_orphans(time.time()) == 0  # too young: its job may still be on its way
        assert await worker.rt.requeue_orphans(time.time() + 3600) == 1
        events = await asyncio.wait_for(collect(c, lost["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.completed" and events[-1].data.get("code") is None

        await push(api, tid, "caller")
        alive = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": i}} for i in range(30)]}))
        async for e in read_sse(c, f"/v1/runs/{alive['id']}/events"):
            if e.event == "tool.call":
                break
        await worker.rt.services.queue.enqueue(tid, alive["id"])  # a second job for a live run
        events = await asyncio.wait_for(collect(c, alive["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
    finally:
        if worker is not None:
            await worker.stop()
        await api.stop()


async def _waiting_for_approval(c, tid: str, api) -> dict:
    """A run of ``caller`` held by a priced call waiting for a human (its reservation held meanwhile)."""
    await push(api, tid, "caller")
    r = await c.put("/v1/policy", content=APPROVAL_POLICY + "prices:\n  echo: 0.01\n",
                    headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    run = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 50}}]}))
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        if e.event == "approval.requested":
            run["approval_id"] = e.data["approval_id"]
            return run
    raise AssertionError("the run never asked for approval")


async def _lose_the_queue(settings) -> None:
    """What Redis restarting without its data does to the run queue: every job is gone."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(settings.redis_url)
    try:
        assert await r.delete(settings.redis_prefix + "q:runs") == 1
    finally:
        await r.aclose()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_lost_workers_run_whose_job_redis_lost_is_ended_by_the_sweeper(node_config, stack_kind):
    """Redis lost the run's job, then its worker is SIGKILLed: no redelivery will ever come back for the
    run. A sweeper sees that no worker marks it any more (runs.seen_at) and ends it as a lost worker's run
    ends: run.failed / run.worker_lost, once, its reservation released and its request withdrawn."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    api = await start_node(settings, workers=False)
    worker = worker_process(settings)
    sweeper = None
    try:
        tid, key = await api.tenant(budget_usd=1.0)
        c = api.client(key)
        run = await _waiting_for_approval(c, tid, api)
        assert any(b["reserved_usd"] > 0 for b in (await c.get("/v1/budgets")).json()["data"])
        await _lose_the_queue(settings)
        os.killpg(worker.pid, signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 10)
        sweeper = await start_node(settings, api=False, workers=True)  # a worker node: its sweeper runs
        events = await asyncio.wait_for(collect(c, run["id"]), 20)  # 2 + 1 visibility timeouts, and sweeps
        check_stream(events)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
        assert events[-1].data["message"] == "the run was interrupted: its worker was lost"  # the sweep's
        assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "failed"
        assert all(b["reserved_usd"] == 0 for b in (await c.get("/v1/budgets")).json()["data"])
        mine = (await c.get("/v1/approvals", params={"run_id": run["id"]})).json()["data"]
        assert [a["status"] for a in mine] == ["expired"]
    finally:
        _reap(worker)
        if sweeper is not None:
            await sweeper.stop()
        await api.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_live_workers_run_whose_job_redis_lost_is_left_alone(node_config, stack_kind):
    """The same loss of the job, but its worker lives: sweeps over three times the span that ends a lost
    worker's run leave it waiting, and once approved it completes."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    api = await start_node(settings, workers=False)
    worker = worker_process(settings)
    sweeper = None
    try:
        tid, key = await api.tenant(budget_usd=1.0)
        c = api.client(key)
        run = await _waiting_for_approval(c, tid, api)
        await _lose_the_queue(settings)
        sweeper = await start_node(settings, api=False, workers=True)
        rt = sweeper.rt
        span = 3 * (rt.abandoned.quiet_s + rt.abandoned.confirm_s)
        loop = asyncio.get_running_loop()
        until = loop.time() + span
        swept = asyncio.Event()
        real = rt.end_abandoned_runs

        async def sweep() -> int:
            ended = await real()
            if loop.time() >= until:
                swept.set()
            return ended

        rt.end_abandoned_runs = sweep  # the barrier: a sweep that completed past the span
        await asyncio.wait_for(swept.wait(), span + 20)
        assert worker.poll() is None
        assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "waiting_approval"
        r = await c.post(f"/v1/approvals/{run['approval_id']}/decision", json={"decision": "approve"})
        assert r.status_code == 200, r.text
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
    finally:
        _reap(worker)
        if sweeper is not None:
            await sweeper.stop()
        await api.stop()


async def _carried_by_a_dead_worker(node, tid: str) -> str:
    """A run a worker started, took a reservation and asked for approval for, then died with (nothing
    marks it any more), and no job left on the queue: stored directly, as the dead worker left it."""
    from supervisor.ids import new_id
    from supervisor.stores.records import Approval, Run

    s = node.rt.services
    now = time.time()
    run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input="", status="queued",
              created_at=now)
    await s.runs.create_run(run)
    assert await s.runs.start_run(tid, run.id, worker_id="a-worker-that-died", started_at=now) is not None
    await s.runs.set_status(tid, run.id, "waiting_approval")
    await s.ledger.reserve(tid, [("tenant", tid)], 10_000, reservation_id=new_id("rsv_"), run_id=run.id,
                           expires_at=now + 3600, now=now)
    await s.approvals.create(Approval(id=new_id("apr_"), tenant_id=tid, run_id=run.id, tool="echo", args_hash="h",
                                      args={}, rule_id="big", reason=None, status="pending", created_at=now,
                                      expires_at=now + 3600))
    return run.id


async def _ended_as_lost_once(c, run_id: str) -> None:
    events = await asyncio.wait_for(collect(c, run_id), 20)
    check_stream(events)
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
    assert all(b["reserved_usd"] == 0 for b in (await c.get("/v1/budgets")).json()["data"])
    assert [a["status"] for a in (await c.get("/v1/approvals", params={"run_id": run_id})).json()["data"]] == ["expired"]


@pytest.mark.timeout(60)
@pytest.mark.node_settings(queue_visibility_s=1.0)
async def test_a_run_no_worker_carries_any_more_is_ended_on_both_stacks(node):
    tid, key = await node.tenant(budget_usd=1.0)
    c = node.client(key)
    run_id = await _carried_by_a_dead_worker(node, tid)
    await _ended_as_lost_once(c, run_id)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_killed_workers_run_ended_by_the_next_worker_keeps_its_answer(node_config, stack_kind):
    """The job comes back to another worker, which ends the run through an emitter of its own (it never
    saw the answer): the output was ``''``. It is the answer the killed worker streamed."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    api = await start_node(settings, workers=False)
    worker = worker_process(settings)
    second = None
    try:
        tid, key = await api.tenant()
        await push(api, tid, "sleeper")
        c = api.client(key)
        run = await start(c, "sleeper", "60")
        async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
            if e.event == "message.delta":
                break
        os.killpg(worker.pid, signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 10)
        second = await start_node(settings, api=False, workers=True)  # picks the job up again, ends the run
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        assert events[-1].data["code"] == "run.worker_lost", events[-1].data
        assert (await c.get(f"/v1/runs/{run['id']}")).json()["output"] == "started"
    finally:
        _reap(worker)
        if second is not None:
            await second.stop()
        await api.stop()


@pytest.mark.timeout(60)
@pytest.mark.node_settings(queue_visibility_s=1.0)
async def test_a_lost_runs_output_is_the_answer_it_streamed(node):
    """Session 20 (a UI walkthrough's finding): a run whose worker was killed showed its answer live, then
    ``output`` null (embedded) or empty (production): the run page after a reload and the conversation's
    next turn lost it. The ender rebuilds it from the stored answer deltas, as a failed run keeps its own."""
    tid, key = await node.tenant(budget_usd=1.0)
    c = node.client(key)
    run_id = await _carried_by_a_dead_worker(node, tid)
    runs = node.rt.services.runs
    for kind, data in [("message.delta", {"channel": "answer", "text": "w0 "}),
                       ("message.delta", {"channel": "thinking", "text": "not the answer"}),
                       ("status", {"text": "working"}),
                       ("message.delta", {"channel": "answer", "text": "w1 é"}),
                       ("message.delta", {"channel": "answer", "text": " w2"})]:
        await runs.append_event(tid, run_id, kind, data)
    await _ended_as_lost_once(c, run_id)
    assert (await c.get(f"/v1/runs/{run_id}")).json()["output"] == "w0 w1 é w2"


async def test_a_stored_answer_is_cut_at_its_byte_bound(node):
    tid, _ = await node.tenant()
    run_id = await _carried_by_a_dead_worker(node, tid)
    runs = node.rt.services.runs
    for text in ("ab", "é", "cd"):
        await runs.append_event(tid, run_id, "message.delta", {"channel": "answer", "text": text})
    assert [await runs.stored_answer(tid, run_id, n) for n in (1, 2, 3, 4, 6, 100)] == [
        "", "ab", "ab", "abé", "abécd", "abécd"]
    assert await runs.stored_answer(tid, "run_nothing", 100) == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_two_sweepers_racing_end_an_abandoned_run_once(node_config, stack_kind):
    """Both nodes' sweepers find the run abandoned before either ends it (a barrier holds the first):
    the store's compare-and-set lets one write the terminal event."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    a = await start_node(settings.model_copy(update={"worker_id": "node-a"}))
    b = await start_node(settings.model_copy(update={"worker_id": "node-b"}))
    try:
        tid, key = await a.tenant(budget_usd=1.0)
        c = a.client(key)
        barrier = asyncio.Barrier(2)
        run_id = ""

        def racing(node) -> asyncio.Future[int]:
            """How many runs this node's sweep ended, in the sweep that found the run abandoned."""
            find, end = node.rt.abandoned.confirmed, node.rt.end_abandoned_runs
            result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            held: list[bool] = []

            async def confirmed():
                got = await find()
                if not held and any(r.id == run_id for r, _ in got):
                    held.append(True)
                    await asyncio.wait_for(barrier.wait(), 20)  # until the other sweeper found it too
                return got

            async def end_abandoned_runs() -> int:
                n = await end()
                if held and not result.done():
                    result.set_result(n)
                return n

            node.rt.abandoned.confirmed = confirmed
            node.rt.end_abandoned_runs = end_abandoned_runs
            return result

        ended = [racing(a), racing(b)]
        run_id = await _carried_by_a_dead_worker(a, tid)
        await _ended_as_lost_once(c, run_id)
        assert sorted(await asyncio.wait_for(asyncio.gather(*ended), 20)) == [0, 1]  # both raced, one ended it
    finally:
        await b.stop()
        await a.stop()
