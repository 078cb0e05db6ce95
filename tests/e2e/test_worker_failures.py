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
