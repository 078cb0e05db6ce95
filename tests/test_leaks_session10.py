"""Session 10, soak and leak hunt: what a long-running server kept per run, and now lets go of.

Found by driving 200-280 mixed runs through a real node on both stacks and measuring at N/2 and N
(tests/e2e/test_leaks_session10.py keeps the node-level checks):

* Redis: every run's event stream kept its 1-day TTL after the run ended, so Redis held a day of run
  output (a run at the default 8 MiB output cap: a 7.4 MB stream). The terminal event now sets
  ``ended_ttl_s`` (a minute).
* Memory bus: an ended run's log was kept ten minutes (48 runs at the output cap in a minute: +300 MB), and
  dropped only when something else was published, so a server that went quiet kept its last runs'
  events for as long as it stayed quiet. Now a minute, on a timer.
* Policy step: with the shared velocity log (production) each node still kept its own per-user call
  history, written on every call and never read.
* Redis bus: a worker's note of a run whose TTL it renews stayed when the run was canceled elsewhere.
* Run queue: every worker process stayed a consumer of the Redis group after it was gone.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from supervisor.stores.memory import MemoryEventBus
from supervisor.stores.records import Event
from supervisor.stores.redis import RedisEventBus, open_redis

pytestmark = pytest.mark.timeout(20)

TERMINALS = ("run.completed", "run.failed", "run.canceled", "run.timed_out")


def ev(run_id: str, seq: int, type: str = "message.delta") -> Event:
    return Event(run_id=run_id, seq=seq, type=type, data={"text": "x" * 100}, ts=1000.0 + seq)


def rid() -> str:
    return "run_" + secrets.token_hex(6)


async def test_an_ended_runs_redis_stream_expires_in_minutes_not_a_day(redis_url, redis_prefix):
    """Ended by the process that carried it, or by another one (an API's cancel, a sweeper's lost run):
    either way the stream goes a minute after the terminal event; a live run's keeps its day."""
    client, other_client, probe = await open_redis(redis_url), await open_redis(redis_url), await open_redis(redis_url)
    worker, api = RedisEventBus(client, redis_prefix), RedisEventBus(other_client, redis_prefix)
    try:
        ended_here, ended_elsewhere, live = rid(), rid(), rid()
        for run in (ended_here, ended_elsewhere, live):
            for seq in range(1, 4):
                await worker.publish(ev(run, seq))
        for run, bus, terminal in ((ended_here, worker, "run.completed"), (ended_elsewhere, api, "run.canceled")):
            assert await probe.ttl(f"{redis_prefix}ev:{run}") > 3600  # alive: a day, renewed as it goes
            await bus.publish(ev(run, 4, terminal))
            ttl = await probe.ttl(f"{redis_prefix}ev:{run}")
            assert 0 < ttl <= 60, (terminal, ttl)  # was 86,400: a day of every run's output in Redis
            assert [e.seq async for e in worker.tail(run, 0)] == [1, 2, 3, 4]  # still there for a racing tailer
        assert await probe.ttl(f"{redis_prefix}ev:{live}") > 3600
    finally:
        await worker.close()
        await api.close()
        for c in (client, other_client, probe):
            await c.aclose()


@pytest.mark.parametrize("terminal", TERMINALS)
async def test_every_terminal_type_shortens_the_streams_ttl(redis_url, redis_prefix, terminal):
    client = await open_redis(redis_url)
    bus = RedisEventBus(client, redis_prefix, ended_ttl_s=30)
    try:
        run = rid()
        await bus.publish(ev(run, 1))
        await bus.publish(ev(run, 2, terminal))
        assert 0 < await client.ttl(f"{redis_prefix}ev:{run}") <= 30
    finally:
        await bus.close()
        await client.aclose()


async def _until(cond, timeout_s: float = 5.0) -> bool:
    """Poll ``cond`` on the loop (the bus drops logs on a timer: there is no event to wait for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_an_ended_runs_log_is_kept_a_minute_not_ten():
    """Tailers read the store first and tail only runs that have not ended: the log of an ended run serves a
    tailer that raced its end by milliseconds. Ten minutes of every run's output was what it cost (a run at
    the default output cap holds ~8 MB of it: 48 such runs in a minute took a node from 270 to 570 MB)."""
    assert MemoryEventBus()._retain_s <= 60
    assert RedisEventBus.__init__.__kwdefaults__["ended_ttl_s"] <= 60


async def test_a_quiet_memory_bus_drops_the_logs_of_ended_runs():
    bus = MemoryEventBus(retain_s=0.1)
    try:
        runs = [rid() for _ in range(5)]
        for run in runs:
            for seq in range(1, 4):
                await bus.publish(ev(run, seq))
            await bus.publish(ev(run, 4, "run.completed"))
        assert [e.seq async for e in bus.tail(runs[0], 0)] == [1, 2, 3, 4]  # kept for late tailers...
        # ...then dropped, with nothing published since (was: kept until the next publish, however long)
        assert await _until(lambda: not bus._logs and not bus._ended), (len(bus._logs), len(bus._ended))
        assert bus._timer is None  # nothing left to drop: no timer either
    finally:
        await bus.close()


async def test_an_ended_log_with_a_tailer_stays_until_the_tailer_leaves():
    bus = MemoryEventBus(retain_s=0.05)
    run, other = rid(), rid()
    got: asyncio.Queue[Event] = asyncio.Queue()
    release = asyncio.Event()

    async def slow_tailer() -> list[int]:
        seqs = []
        async for e in bus.tail(run, 0):
            seqs.append(e.seq)
            await got.put(e)
            if e.seq == 1:
                await release.wait()  # still attached when the log's time is up
        return seqs

    try:
        task = asyncio.create_task(slow_tailer())
        await bus.publish(ev(run, 1))
        await asyncio.wait_for(got.get(), 5)
        await bus.publish(ev(run, 2, "run.failed"))
        await bus.publish(ev(other, 1, "run.completed"))
        assert await _until(lambda: other not in bus._logs and run not in bus._ended)  # its time is up...
        assert run in bus._logs  # ...but a tailer still reads it
        release.set()
        assert await asyncio.wait_for(task, 5) == [1, 2]
        assert run not in bus._logs  # gone with its last tailer
    finally:
        await bus.close()


async def test_closing_the_memory_bus_cancels_its_timer():
    bus = MemoryEventBus(retain_s=3600)
    await bus.publish(ev(rid(), 1, "run.completed"))
    assert bus._timer is not None
    timer = bus._timer
    await bus.close()
    assert bus._timer is None and timer.cancelled()


# --- the policy step's per-user histories

ALLOW_ECHO = "version: 1\nrules:\n  - {id: e, tool: echo, verdict: allow}\n"
PER_USER = ("version: 1\nrules:\n"
            "  - {id: per-user, tool: echo, velocity: {max: 1000, per_s: 60, scope: user}, verdict: deny}\n"
            "  - {id: e, tool: '*', verdict: allow}\n")


def _kept_timestamps(step) -> int:
    return sum(len(d) for users in step._users.values() for log in users.values() for d in log.per_tool.values())


@pytest.mark.parametrize("policy", [ALLOW_ECHO, PER_USER])
async def test_with_a_shared_velocity_log_no_node_keeps_user_histories(redis_url, redis_prefix, policy):
    """Production: the shared log (Redis) is every user's history. Each node also kept its own - one
    timestamp per call, up to 1,000 per tool, for 4,096 users of each of 1,024 tenants - written on every
    call and never read. It keeps none now (a user's lock while rules count calls is all)."""
    from types import SimpleNamespace

    from supervisor.chain.policy import PolicyInterceptor
    from supervisor.stores.redis import RedisVelocityLog
    from tests.policy.test_interceptor import FakePolicyStore, Next, make_call

    client = await open_redis(redis_url)
    try:
        store = FakePolicyStore()
        await store.set("t1", policy)
        step = PolicyInterceptor(stored_ttl_s=0)
        vlog = RedisVelocityLog(client, redis_prefix)
        for i in range(60):
            call = make_call(store, "echo", run=f"r{i}", user=f"u{i % 20}")
            call.services = SimpleNamespace(policies=store, velocity=vlog)
            await step(call, Next())
            step.forget_run("t1", f"r{i}")
        assert _kept_timestamps(step) == 0  # was 60: one per call
        if policy is ALLOW_ECHO:
            assert not step._users  # no rule counts calls: nothing per user at all (was 20 users)
        else:  # the shared log counted every call
            _, ages = await vlog.read("t1", "u.u0", "echo")
            assert len(ages) == 3
    finally:
        await client.aclose()


async def test_the_embedded_stack_still_keeps_its_users_histories():
    """One process, no shared log: its own history is the user's, and is still kept (a velocity rule added
    later counts the calls made before it)."""
    from supervisor.chain.policy import PolicyInterceptor
    from tests.policy.test_interceptor import FakePolicyStore, Next, denied, make_call

    store = FakePolicyStore()
    await store.set("t1", ALLOW_ECHO)
    step = PolicyInterceptor(stored_ttl_s=0)
    for i in range(3):
        await step(make_call(store, "echo", run=f"r{i}", user="u1"), Next())
    assert _kept_timestamps(step) == 3
    await store.set("t1", PER_USER.replace("max: 1000", "max: 3"))
    assert (await denied(step, make_call(store, "echo", run="r9", user="u1"), Next())).extra["rule_id"] == "per-user"


# --- a worker's note of the streams whose TTL it renews

async def test_a_run_canceled_from_another_process_leaves_no_ttl_note_in_its_worker(tmp_path, redis_url, redis_prefix):
    """The worker renews its runs' stream TTLs and drops its note of a run with the terminal event. A run
    canceled through an API process gets its terminal event there; the worker's own finish is refused
    (ended already) and published nothing, so its note stayed: one per canceled run, for hours."""
    from supervisor.events import RunEmitter, finish_run_anywhere
    from supervisor.stores.sqlite import SqliteRunStore, SqliteTenantStore, open_sqlite
    from tests.contract._helpers import make_run

    db = await open_sqlite(tmp_path / "s.db")
    worker_client, api_client = await open_redis(redis_url), await open_redis(redis_url)
    worker_bus, api_bus = RedisEventBus(worker_client, redis_prefix), RedisEventBus(api_client, redis_prefix)
    try:
        tenant = (await SqliteTenantStore(db).create_tenant("t")).id
        runs = SqliteRunStore(db)
        ids = []
        for _ in range(5):
            run, _ = await runs.create_run(make_run(tenant, status="running"))
            emitter = RunEmitter(runs, worker_bus, tenant, run.id)
            await emitter.emit("run.started", {})
            await emitter.emit("message.delta", {"channel": "answer", "text": "hi"})
            assert run.id in worker_bus._ttl_renewed
            assert await finish_run_anywhere(runs, api_bus, tenant, run.id, "canceled", {"code": "run.canceled"})
            assert await emitter.finish("canceled", {"code": "run.canceled"}) is None  # the worker's, refused
            ids.append(run.id)
        assert not worker_bus._ttl_renewed  # was: one note per run canceled elsewhere
        for run_id in ids:
            assert [e.type async for e in worker_bus.tail(run_id, 0)][-1] == "run.canceled"
    finally:
        await worker_bus.close()
        await api_bus.close()
        await worker_client.aclose()
        await api_client.aclose()
        await db.close()


# --- the run queue's consumer group

async def test_consumers_of_worker_processes_gone_are_dropped(redis_url, redis_prefix):
    """Each worker process is a consumer of the queue's group (hostname:pid); Redis kept every one after its
    process had gone - one more per restart, deploy or scaled pod. A process now drops, when it first uses
    the queue, those holding nothing that have not touched it for ``consumer_idle_s``; one still holding a
    job (its holder may live, or its job is redelivered from it) and recent ones stay."""
    from supervisor.stores.redis import RedisRunQueue

    client = await open_redis(redis_url)
    key = redis_prefix + "q:runs"
    try:
        first = RedisRunQueue(client, redis_prefix)
        for i in range(5):  # five worker processes came, took a run each, and went
            await first.enqueue("t", f"r{i}")
            job = await first.claim(f"gone-{i}", 1.0)
            assert job is not None
            await first.ack(job)
        await first.enqueue("t", "held")
        assert await first.claim("holding", 1.0) is not None

        async def names() -> dict[str, dict]:
            return {c["name"]: c for c in await client.xinfo_consumers(key, "workers")}

        assert len(await names()) == 6

        async def all_idle_50ms() -> bool:
            return all(c["idle"] >= 60 for c in (await names()).values())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not await all_idle_50ms():
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await RedisRunQueue(client, redis_prefix).depth()  # the default hour: nobody is dropped
        assert len(await names()) == 6
        await RedisRunQueue(client, redis_prefix, consumer_idle_s=0.05).depth()  # a process starting
        assert set(await names()) == {"holding"}  # was: all six, for ever
    finally:
        await client.aclose()
