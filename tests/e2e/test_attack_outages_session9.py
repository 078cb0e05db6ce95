"""PostgreSQL and Redis go away while a node serves, and come back: the node fails closed meanwhile and
recovers by itself, without a restart.

PostgreSQL outages act on the test's own fresh database only (pg_terminate_backend, ALLOW_CONNECTIONS
false: what a restart looks like to the node). Redis outages act on a PRIVATE redis-server the test starts
on a free port and always kills (never the shared one): stopped, then started again on the same port -
empty, as compose runs it (no persistence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest

import app.deps
import app.sse
from supervisor.events import finish_run_anywhere
from tests.e2e.harness import SSE, collect, idle_runs, make_data_dir, settings_for, start_node
from tests.e2e.outages import (
    Follower,
    PrivateRedis,
    alive,
    chain_verifies,
    pg_outage,
    runs_locked,
    terminate_backends,
    waiting_statement,
)
from tests.e2e.test_run_pipeline import check_stream, start

PACER = Path(__file__).resolve().parent / "bundles" / "pacer"
CALLER = PACER.parent / "caller"
TICKER = PACER.parent / "ticker"
PRICED_ECHO = ("version: 1\nrules:\n  - id: echo\n    tool: echo\n    verdict: allow\nprices:\n  echo: 0.001\n")
APPROVAL_POLICY = ("version: 1\nrules:\n  - id: big\n    tool: echo\n    when: {args.n: {gt: 10}}\n"
                   "    verdict: require_approval\n  - id: echo\n    tool: echo\n    verdict: allow\n")


async def _read_lines(c, run_id: str, lines: list[str], seen: asyncio.Event) -> None:
    """The run's SSE stream, line by line as it comes (``seen`` set on each)."""
    async with c.stream("GET", f"/v1/runs/{run_id}/events") as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            lines.append(line)
            seen.set()


@pytest.fixture
def pg_url(fresh_pg_url):
    """Each test its own database: a node's sweeps act on every run of its database (test_worker_failures)."""
    return fresh_pg_url


@pytest.fixture
def redis_server():
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def outage_settings(fresh_pg_url, redis_server):
    """A production node on its own database and its own Redis."""
    return settings_for("production", make_data_dir(), pg_url=fresh_pg_url, redis_url=redis_server.url,
                        redis_prefix="stockade-test:", queue_visibility_s=2.0)


async def _pacer(node, budget_usd: float | None = None) -> tuple[str, Any]:
    tid, key = await node.tenant(budget_usd=budget_usd)
    await node.rt.registry.register_dir(PACER, tid)
    c = node.client(key)
    r = await c.put("/v1/policy", content=PRICED_ECHO, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    return tid, c


def _refusals(events: list[SSE]) -> list[str]:
    return [e.data["data"]["code"] for e in events if e.event == "custom" and e.data.get("name") == "refused"]


@pytest.mark.timeout(120)
async def test_redis_restarted_empty_mid_run_the_run_and_its_live_stream_recover(outage_settings, redis_server):
    """Redis dies under a run that calls a tool every 50 ms, with a client on its live stream, and comes back
    empty. Meanwhile every call is refused rate.unavailable (never run unmetered) and the stream keeps
    delivering (from the store); afterwards the calls pass again, the run completes, the stream is gap-free
    and ended once, and the node serves new runs over the live tail as before."""
    node = await start_node(outage_settings)
    try:
        tid, c = await _pacer(node, budget_usd=5.0)
        run = await start(c, "pacer", json.dumps({"after": 5, "pause": 0.05, "max_s": 90}))
        follower = Follower(c, run["id"])
        await follower.until(lambda e: e.event == "tool.result" and "code" not in e.data)
        redis_server.stop(signal.SIGKILL)
        await follower.until(lambda e: e.event == "custom")  # a refusal reached the client during the outage
        redis_server.start()
        events = await follower.end()
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
        refused = _refusals(events)
        assert refused and set(refused) == {"rate.unavailable"}, refused
        answer = json.loads("".join(e.data["text"] for e in events if e.event == "message.delta"))
        assert answer["refused"] == refused
        await chain_verifies(node, tid)
        audit = (await c.get("/v1/audit", params={"run_id": run["id"], "limit": 1000})).json()["data"]
        assert sum(a["code"] == "rate.unavailable" for a in audit) == len(refused)  # each refusal audited once
        budgets = (await c.get("/v1/budgets")).json()["data"]
        assert budgets[0]["reserved_usd"] == 0
        assert round(budgets[0]["spent_usd"], 6) == round(0.001 * (answer["calls"] - len(refused)), 6)
        await alive(node)
        after = await start(c, "echo", "back again")
        events = await asyncio.wait_for(collect(c, after["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.completed"
    finally:
        await node.stop()


@pytest.mark.timeout(120)
async def test_a_run_queued_when_redis_restarted_empty_runs_later(outage_settings, redis_server):
    """The one worker slot is busy; a second run waits on the queue when Redis restarts empty and loses its
    job. It is not left queued for ever: once the slot frees, the sweeper queues it again and it runs."""
    settings = outage_settings.model_copy(update={"worker_concurrency": 1, "queue_visibility_s": 1.0})
    node = await start_node(settings)
    try:
        tid, c = await _pacer(node)
        busy = await start(c, "pacer", json.dumps({"after": 3, "pause": 0.05, "max_s": 60}))
        follower = Follower(c, busy["id"])
        await follower.until(lambda e: e.event == "tool.result")
        waiting = await start(c, "echo", "queued behind")
        redis_server.stop(signal.SIGTERM)
        await follower.until(lambda e: e.event == "custom")
        redis_server.start()
        assert (await follower.end())[-1].event == "run.completed"
        events = await asyncio.wait_for(collect(c, waiting["id"]), 60)
        check_stream(events)
        assert events[-1].event == "run.completed" and events[-1].data.get("code") is None, events[-1]
        await alive(node)
    finally:
        await node.stop()


@pytest.mark.timeout(120)
async def test_pg_backends_killed_during_tool_calls_the_run_completes_and_the_books_agree(outage_settings):
    """The node's PostgreSQL connections are cut again and again while a run makes priced calls: a call
    caught in a cut is refused (*.unavailable), none runs unmetered; the run completes, its stream is
    gap-free, the audit chain verifies, nothing stays reserved and the spend is the calls that ran."""
    node = await start_node(outage_settings)
    try:
        tid, c = await _pacer(node, budget_usd=5.0)
        # no event of its own while the cuts go on: one caught storing it would end the run (fail closed)
        run = await start(c, "pacer", json.dumps({"after": 150, "pause": 0.01, "max_s": 60, "report": False,
                                                          "need_refusal": False}))
        follower = Follower(c, run["id"])
        await follower.until(lambda e: e.event == "tool.result")
        for _ in range(8):
            await terminate_backends(outage_settings.database_url)
            await asyncio.sleep(0.2)
        events = await follower.end()
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
        answer = json.loads("".join(e.data["text"] for e in events if e.event == "message.delta"))
        assert all(code.endswith(".unavailable") for code in answer["refused"]), answer
        await chain_verifies(node, tid)
        ran = answer["calls"] - len(answer["refused"])
        for _ in range(100):  # a settlement caught in a cut is retried in the background (BudgetInterceptor)
            budgets = (await c.get("/v1/budgets")).json()["data"]
            if budgets[0]["reserved_usd"] == 0 and round(budgets[0]["spent_usd"], 6) == round(0.001 * ran, 6):
                break
            await asyncio.sleep(0.1)
        assert budgets[0]["reserved_usd"] == 0, budgets
        assert round(budgets[0]["spent_usd"], 6) == round(0.001 * ran, 6), (budgets, answer)
        await alive(node)
    finally:
        await node.stop()


@pytest.mark.timeout(120)
async def test_a_pg_restart_mid_run_fails_its_calls_closed_and_the_node_recovers(outage_settings):
    """PostgreSQL restarts (2 s without connections) while a run makes priced calls and a client follows it.
    Meanwhile every call is refused with an *.unavailable code (the ledger, audit and store are all away:
    nothing runs unmetered or unaudited) and the client's stream closes or is refused; afterwards the calls
    pass again, the run completes, the client resumes with Last-Event-ID and has every event once, the
    audit chain verifies, nothing stays reserved and the spend is the calls that ran."""
    node = await start_node(outage_settings)
    try:
        tid, c = await _pacer(node, budget_usd=5.0)
        run = await start(c, "pacer", json.dumps({"after": 10, "pause": 0.02, "max_s": 90, "report": False}))
        follower = Follower(c, run["id"], resume=True)
        await follower.until(lambda e: e.event == "tool.result")
        async with pg_outage(outage_settings.database_url):
            await asyncio.sleep(2.0)  # the outage
        events = await follower.end(90)
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
        answer = json.loads("".join(e.data["text"] for e in events if e.event == "message.delta"))
        assert answer["refused"] and all(code.endswith(".unavailable") for code in answer["refused"]), answer
        await chain_verifies(node, tid)
        ran = answer["calls"] - len(answer["refused"])
        for _ in range(100):  # a settlement caught in the outage is retried in the background
            budgets = (await c.get("/v1/budgets")).json()["data"]
            if budgets[0]["reserved_usd"] == 0 and round(budgets[0]["spent_usd"], 6) == round(0.001 * ran, 6):
                break
            await asyncio.sleep(0.1)
        assert budgets[0]["reserved_usd"] == 0, budgets
        assert round(budgets[0]["spent_usd"], 6) == round(0.001 * ran, 6), (budgets, answer)
        again = await start(c, "echo", "after the restart")
        assert (await asyncio.wait_for(collect(c, again["id"]), 30))[-1].event == "run.completed"
        await alive(node)
    finally:
        await node.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("redis_too", [False, True], ids=["store", "store-and-bus"])
async def test_a_pg_outage_under_a_live_stream_does_not_tear_it_down(outage_settings, redis_server, redis_too,
                                                                      monkeypatch):
    """The stream's keep-alive asks the store whether the run ended behind it; with the bus down, the
    stream reads the store instead. With PostgreSQL restarting, either read failed and the stream was torn
    down mid-response (a broken chunked body, 'Exception in ASGI application' logged) although nothing
    was lost. The store being away is waited out (the key's own re-check still closes a stream whose key
    cannot be looked up); the stream carries on and delivers what comes once it is back."""
    monkeypatch.setattr(app.sse, "KEEPALIVE_S", 0.1)
    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 3600.0)  # the key's own re-check is not what is tested
    settings = outage_settings
    node = await start_node(settings, workers=False)
    try:
        tid, key = await node.tenant()
        c = node.client(key)
        [run_id] = await idle_runs(node, tid, 1)
        lines: list[str] = []
        seen = asyncio.Event()


        async def keepalives(n: int) -> None:
            start = lines.count(": keep-alive")
            while lines.count(": keep-alive") < start + n:
                if reader.done():
                    reader.result()
                    raise AssertionError(f"the stream ended: {lines[-4:]}")
                seen.clear()
                await seen.wait()

        reader = asyncio.create_task(_read_lines(c, run_id, lines, seen))
        await asyncio.wait_for(keepalives(1), 20)
        if redis_too:
            redis_server.stop(signal.SIGKILL)
        async with pg_outage(settings.database_url):
            await asyncio.sleep(1.0)  # keep-alive checks (and, the bus down, store reads) while the store is away
            assert not reader.done(), lines[-4:]
        if redis_too:
            redis_server.start()
        await asyncio.wait_for(keepalives(1), 20)
        s = node.rt.services
        for _ in range(50):  # a pooled connection cut by the outage may fail once
            with contextlib.suppress(Exception):
                await finish_run_anywhere(s.runs, s.events, tid, run_id, "canceled", {"code": "run.canceled"})
                break
            await asyncio.sleep(0.1)
        await asyncio.wait_for(reader, 20)
        assert "event: run.canceled" in lines and "id: 1" in lines, lines[-6:]
    finally:
        await node.stop()


@pytest.mark.timeout(60)
async def test_a_statement_the_operator_cancels_is_store_unavailable(outage_settings):
    """pg_cancel_backend (or a statement_timeout) cancels a statement of the node: QueryCanceledError. It
    is the store not serving now - 503 store.unavailable, retryable - not a 500 internal error (with an
    'Exception in ASGI application' logged)."""
    node = await start_node(outage_settings, workers=False)
    try:
        tid, key = await node.tenant()
        c = node.client(key)
        [run_id] = await idle_runs(node, tid, 1)
        async with runs_locked(outage_settings.database_url) as (admin, name):
            pending = asyncio.create_task(c.get(f"/v1/runs/{run_id}"))
            await admin.execute("SELECT pg_cancel_backend($1)", await waiting_statement(admin, name, "FROM runs"))
            r = await asyncio.wait_for(pending, 20)
        assert r.status_code == 503 and r.json()["code"] == "store.unavailable", r.text
        assert (await c.get(f"/v1/runs/{run_id}")).status_code == 200  # and it serves again
    finally:
        await node.stop()


@pytest.mark.timeout(90)
async def test_the_cancel_watch_outlives_a_canceled_statement(outage_settings):
    """The worker's one poller of runs canceled elsewhere (CancelWatch) stopped for good when its statement
    was canceled by the operator (it only expected store.unavailable): a quiet run canceled afterwards was
    canceled in the store, but its sandbox went on until it ended by itself (or hit its time limit)."""
    node = await start_node(outage_settings)
    try:
        tid, key = await node.tenant()
        await node.rt.registry.register_dir(TICKER, tid)
        c = node.client(key)
        run = await start(c, "ticker", json.dumps({"wait": 60, "n": 1}))  # quiet for a minute
        runs, worker = node.rt.services.runs, node.rt.worker
        for _ in range(400):
            if (await runs.get_run(tid, run["id"])).status == "running":
                break
            await asyncio.sleep(0.02)
        async with runs_locked(outage_settings.database_url) as (admin, name):
            pid = await waiting_statement(admin, name, "WHERE id = ANY($1::text[]) AND status = ANY")  # ended_among
            await admin.execute("SELECT pg_cancel_backend($1)", pid)
        r = await c.post(f"/v1/runs/{run['id']}/cancel")
        assert r.status_code == 200, r.text
        for _ in range(300):  # its sandbox killed, the run let go of (a poll: nothing else to wait on)
            if not worker._tasks:
                break
            await asyncio.sleep(0.05)
        assert not worker._tasks, "the canceled run's sandbox still runs"
        events = await asyncio.wait_for(collect(c, run["id"]), 20)
        check_stream(events)
        assert events[-1].event == "run.canceled"
        await alive(node)
    finally:
        await node.stop()


@pytest.mark.timeout(90)
async def test_a_pg_restart_while_a_run_waits_for_approval_does_not_end_it(outage_settings):
    """PostgreSQL restarts (1.5 s without connections) while a run waits for a human. The wait only
    polls the store: it rides the outage out. Before: the call failed at the first poll, and the
    run ended run.worker_lost - although its approver then approved it (200)."""
    node = await start_node(outage_settings)
    try:
        tid, key = await node.tenant()
        c = node.client(key)
        await node.rt.registry.register_dir(CALLER, tid)
        r = await c.put("/v1/policy", content=APPROVAL_POLICY, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200, r.text
        run = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 50}}]}))
        follower = Follower(c, run["id"])
        asked = await follower.until(lambda e: e.event == "approval.requested")
        async with pg_outage(outage_settings.database_url):
            await asyncio.sleep(1.5)
        for _ in range(100):
            r = await c.post(f"/v1/approvals/{asked.data['approval_id']}/decision", json={"decision": "approve"})
            if r.status_code != 503:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text
        events = await follower.end()
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
        results = next(e.data["data"] for e in events if e.event == "custom")
        assert results == [{"ok": {"n": 50}}], results
    finally:
        await node.stop()


@pytest.mark.timeout(120)
async def test_a_hung_redis_costs_a_run_one_timeout_not_one_per_event(outage_settings, redis_server):
    """Redis stops answering without closing its connections (SIGSTOP: a frozen primary, a partition).
    Every event is stored first, then published; each publish waited the socket timeout (1.5 s), one
    after another, so a run of 20 events took over 30 s (a longer one ran into its time limit). After a
    publish times out, the bus stops trying for a moment (the events are in the store; tailers read them
    there), so the run goes on at the store's pace; once Redis answers again, the live tail is back."""
    node = await start_node(outage_settings)
    try:
        tid, key = await node.tenant()
        await node.rt.registry.register_dir(TICKER, tid)
        c = node.client(key)
        run = await start(c, "ticker", json.dumps({"wait": 1.0, "n": 20}))
        runs = node.rt.services.runs
        for _ in range(400):  # running (the sandbox waits a second, then answers)
            if (await runs.get_run(tid, run["id"])).status == "running":
                break
            await asyncio.sleep(0.02)
        redis_server.pause()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(1200):
            if (await runs.get_run(tid, run["id"])).status not in ("queued", "running"):
                break
            await asyncio.sleep(0.05)
        took = loop.time() - t0
        redis_server.resume()
        assert (await runs.get_run(tid, run["id"])).status == "succeeded"
        assert took < 12, f"{took:.1f} s for 22 events"
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        check_stream(events)
        assert "".join(e.data["text"] for e in events if e.event == "message.delta").split() == [str(i) for i in range(20)]
        again = await start(c, "ticker", json.dumps({"n": 3}))
        events = await asyncio.wait_for(collect(c, again["id"]), 30)
        check_stream(events)
        await alive(node)
    finally:
        redis_server.resume()
        await node.stop()


@pytest.mark.timeout(90)
async def test_a_job_entry_not_ours_does_not_stop_the_claim_loop(outage_settings, redis_server):
    """An entry on the run queue without the fields a job has (another writer's, a version's that wrote
    other fields): claiming it raised KeyError out of the worker's claim loop, which ended for good - the
    node took no run again, silently. It is dropped (and logged); the runs behind it run."""
    import redis.asyncio as aioredis

    node = await start_node(outage_settings)
    try:
        tid, key = await node.tenant()
        c = node.client(key)
        r = aioredis.from_url(redis_server.url)
        try:
            await r.xadd(outage_settings.redis_prefix + "q:runs", {"x": "not a job"})
        finally:
            await r.aclose()
        run = await start(c, "echo", "still served")
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
        await alive(node)
    finally:
        await node.stop()


@pytest.mark.timeout(60)
async def test_the_claim_loop_outlives_an_unexpected_error(node):
    """Whatever a claim raises - not only store.unavailable - the claim loop logs it and goes on: a loop
    that ended would leave the node serving the API and never running a run again."""
    queue = node.rt.services.queue
    real, failed = queue.claim, asyncio.Event()

    async def once(*args: Any, **kw: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in the queue adapter")
        return await real(*args, **kw)

    queue.claim = once
    await asyncio.wait_for(failed.wait(), 20)
    _, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "echo", "still claimed")
    events = await asyncio.wait_for(collect(c, run["id"]), 30)
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1]
    await alive(node)


@pytest.mark.timeout(90)
async def test_a_pg_blip_does_not_end_a_socketio_subscription_silently(outage_settings, monkeypatch):
    """A Socket.IO subscription checks the store when its tail is idle. A PostgreSQL restart at that moment
    ended the subscription's task (logged, nothing sent): the connection stayed up, its key re-check
    passed again once the store was back, and the client never heard of the run again - no event, no
    run_end, no error. The subscription waits the store out, as the SSE stream does."""
    import socketio

    import app.socketio_stream

    monkeypatch.setattr(app.socketio_stream, "IDLE_S", 0.1)
    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 3600.0)
    node = await start_node(outage_settings, workers=False)
    client = socketio.AsyncClient(reconnection=False)
    try:
        tid, key = await node.tenant()
        [run_id] = await idle_runs(node, tid, 1)
        got: list[dict] = []
        ended = asyncio.Event()
        client.on("run_event", lambda data: got.append(data))
        client.on("run_end", lambda data: ended.set())
        await client.connect(node.base_url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
        assert (await client.call("subscribe", {"run_id": run_id, "after": 0}, timeout=10)).get("ok")
        async with pg_outage(outage_settings.database_url):
            await asyncio.sleep(2.5)  # idle checks (and, after one failed, a replay) while the store is away
        s = node.rt.services
        for _ in range(50):  # a pooled connection cut by the outage may fail once
            with contextlib.suppress(Exception):
                await finish_run_anywhere(s.runs, s.events, tid, run_id, "canceled", {"code": "run.canceled"})
                break
            await asyncio.sleep(0.1)
        await asyncio.wait_for(ended.wait(), 20)
        assert [e["type"] for e in got] == ["run.canceled"]
    finally:
        await client.disconnect()
        await node.stop()


@pytest.mark.timeout(60)
async def test_a_gap_the_store_cannot_fill_closes_the_stream_cleanly(outage_settings, monkeypatch):
    """The live tail skipped events (a publish lost) while PostgreSQL restarts: the gap cannot be filled
    and cannot be skipped. The stream closes cleanly, naming the code, as a failed key re-check closes
    it (the client resumes with Last-Event-ID) - not torn down mid-response."""
    from supervisor.stores.records import Event

    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 3600.0)
    node = await start_node(outage_settings, workers=False)
    try:
        tid, key = await node.tenant()
        c = node.client(key)
        [run_id] = await idle_runs(node, tid, 1)
        lines: list[str] = []
        opened = asyncio.Event()


        reader = asyncio.create_task(_read_lines(c, run_id, lines, opened))
        await asyncio.wait_for(opened.wait(), 20)
        bus = node.rt.services.events
        for _ in range(400):  # past the replay: on the live tail (its feed on the bus)
            if run_id in bus._feeds:
                break
            await asyncio.sleep(0.02)
        async with pg_outage(outage_settings.database_url):
            await bus.publish(Event(run_id, 3, "custom", {"name": "late", "data": {}}, 0.0))
            await asyncio.wait_for(reader, 20)
        assert lines[-2:] == [": store.unavailable: stream closed", ""], lines[-4:]
    finally:
        await node.stop()
