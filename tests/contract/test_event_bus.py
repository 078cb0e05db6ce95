"""EventBus contract: memory and Redis adapters behave the same.

Live delivery is proven with hand-offs (publish, wait until the tailer got it,
publish the next), never with sleeps.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from supervisor.stores.memory import MemoryEventBus
from supervisor.stores.records import Event
from supervisor.stores.redis import RedisEventBus, open_redis

pytestmark = pytest.mark.timeout(30)


def ev(run_id: str, seq: int, type: str = "message.delta", **data) -> Event:
    return Event(run_id=run_id, seq=seq, type=type, data=data or {"text": f"t{seq}"}, ts=1000.0 + seq)


def rid() -> str:
    return "run_" + secrets.token_hex(6)


@pytest.fixture(params=["memory", "redis"])
async def bus_factory(request: pytest.FixtureRequest):
    """Makes buses sharing one backend (for Redis: independent clients, as separate processes would have)."""
    made: list = []
    clients: list = []
    if request.param == "memory":
        shared = MemoryEventBus()
        made.append(shared)

        async def make():
            return shared
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

        async def make():
            client = await open_redis(url)
            clients.append(client)
            bus = RedisEventBus(client, prefix)
            made.append(bus)
            return bus

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for bus in made:
        await bus.close()
    for client in clients:
        await client.aclose()


@pytest.fixture
async def bus(bus_factory):
    return await bus_factory()


async def collect(bus, run_id: str, after: int) -> list[Event]:
    return [e async for e in bus.tail(run_id, after)]


async def test_replay_in_order_and_end_at_terminal(bus):
    run = rid()
    for s in range(1, 6):
        await bus.publish(ev(run, s))
    await bus.publish(ev(run, 6, "run.completed"))
    got = await collect(bus, run, 0)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6]
    assert got[-1].type == "run.completed"
    assert got[0].data == {"text": "t1"} and got[0].run_id == run and got[0].ts == 1001.0


async def test_after_n_replays_only_later_events(bus):
    run = rid()
    for s in range(1, 10):
        await bus.publish(ev(run, s))
    await bus.publish(ev(run, 10, "run.failed", code="tool.failed"))
    got = await collect(bus, run, 4)
    assert [e.seq for e in got] == [5, 6, 7, 8, 9, 10]
    assert got[-1].data == {"code": "tool.failed"}


@pytest.mark.parametrize("terminal", ["run.completed", "run.failed", "run.canceled", "run.timed_out"])
async def test_every_terminal_type_ends_the_tail(bus, terminal):
    run = rid()
    await bus.publish(ev(run, 1))
    await bus.publish(ev(run, 2, terminal))
    assert [e.type for e in await collect(bus, run, 0)] == ["message.delta", terminal]


async def test_live_tail_gets_each_event_as_published(bus):
    run = rid()
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def tailer():
        async for e in bus.tail(run, 0):
            await received.put(e)

    task = asyncio.create_task(tailer())
    for s in range(1, 21):
        await bus.publish(ev(run, s))
        e = await asyncio.wait_for(received.get(), 5)
        assert e.seq == s
    await bus.publish(ev(run, 21, "run.completed"))
    assert (await asyncio.wait_for(received.get(), 5)).seq == 21
    await asyncio.wait_for(task, 5)  # ended by itself after the terminal event


async def test_many_concurrent_tailers_with_different_cursors(bus):
    run = rid()
    for s in range(1, 11):
        await bus.publish(ev(run, s))
    afters = [0, 0, 3, 5, 10, 10, 12, 7] * 4
    tasks = [asyncio.create_task(collect(bus, run, a)) for a in afters]
    for s in range(11, 40):
        await bus.publish(ev(run, s))
    await bus.publish(ev(run, 40, "run.canceled"))
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for a, got in zip(afters, results, strict=True):
        assert [e.seq for e in got] == list(range(a + 1, 41))


async def test_runs_do_not_mix(bus):
    a, b = rid(), rid()
    await bus.publish(ev(a, 1, text="a"))
    await bus.publish(ev(b, 1, text="b"))
    await bus.publish(ev(b, 2, "run.completed"))
    await bus.publish(ev(a, 2, "run.completed"))
    assert [e.data["text"] for e in await collect(bus, a, 0)] == ["a", "t2"]
    assert [e.data["text"] for e in await collect(bus, b, 0)] == ["b", "t2"]
    await bus.publish(ev(b, 3, text="late"))  # after the terminal event: nobody sees it in a tail that ended
    assert [e.seq for e in await collect(bus, b, 0)] == [1, 2]


async def test_repeated_publish_is_delivered_once(bus):
    run = rid()
    await bus.publish(ev(run, 1))
    await bus.publish(ev(run, 1))
    await bus.publish(ev(run, 2))
    await bus.publish(ev(run, 3, "run.completed"))
    assert [e.seq for e in await collect(bus, run, 0)] == [1, 2, 3]


async def test_batches_drain_everything_pending_in_one_wake(bus):
    run = rid()
    for s in range(1, 300):
        await bus.publish(ev(run, s))
    await bus.publish(ev(run, 300, "run.completed"))
    batches = [b async for b in bus.tail_batches(run, 0)]
    assert [e.seq for b in batches for e in b] == list(range(1, 301))
    assert len(batches) <= 2  # not one wake per event


async def test_idle_tail_yields_empty_batches_for_keepalives(bus):
    run = rid()
    agen = bus.tail_batches(run, 0, idle_s=0.05)
    assert await asyncio.wait_for(agen.__anext__(), 5) == []  # nothing yet: a keep-alive slot
    await bus.publish(ev(run, 1))
    batch = await asyncio.wait_for(agen.__anext__(), 5)
    while batch == []:
        batch = await asyncio.wait_for(agen.__anext__(), 5)
    assert [e.seq for e in batch] == [1]
    await bus.publish(ev(run, 2, "run.completed"))
    rest = [e.seq async for b in agen for e in b]
    assert rest == [2]


async def test_other_process_publishes_this_one_tails(bus_factory):
    """Two buses on one backend: what one publishes, the other streams (any API replica, any run)."""
    worker, api = await bus_factory(), await bus_factory()
    run = rid()
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def tailer():
        async for e in api.tail(run, 0):
            await received.put(e)

    task = asyncio.create_task(tailer())
    await worker.publish(ev(run, 1))
    assert (await asyncio.wait_for(received.get(), 5)).seq == 1
    await worker.publish(ev(run, 2, "run.completed"))
    assert (await asyncio.wait_for(received.get(), 5)).seq == 2
    await asyncio.wait_for(task, 5)


async def test_late_tailer_from_zero_joins_a_live_shared_feed(bus):
    run = rid()
    for s in range(1, 6):
        await bus.publish(ev(run, s))
    got_first: asyncio.Queue[Event] = asyncio.Queue()

    async def first():
        out = []
        async for e in bus.tail(run, 5):
            out.append(e)
            await got_first.put(e)
        return out

    t1 = asyncio.create_task(first())
    await bus.publish(ev(run, 6))
    assert (await asyncio.wait_for(got_first.get(), 5)).seq == 6
    # The shared feed starts at 5; a tailer from 0 must still get 1..5 (catch-up), then the live ones.
    t2 = asyncio.create_task(collect(bus, run, 0))
    await bus.publish(ev(run, 7))
    await bus.publish(ev(run, 8, "run.completed"))
    r1, r2 = await asyncio.wait_for(asyncio.gather(t1, t2), 10)
    assert [e.seq for e in r1] == [6, 7, 8]
    assert [e.seq for e in r2] == list(range(1, 9))


async def test_a_first_tailer_past_the_end_does_not_hold_back_the_others(bus):
    """Session 20 (a streams walkthrough): the first tailer of a run in a process set the shared feed's floor
    to its own cursor. A cursor past the run's last event (a client's ``after=12`` while 2 events exist, a
    viewer's ``after=10**12``) made every event up to it invisible to the process: a later tailer from 0 got
    1..2, then nothing live until past that cursor - on Socket.IO until the run ended (an approval request
    unseen), on SSE until the keep-alive read the store."""
    run = rid()
    for s in (1, 2):
        await bus.publish(ev(run, s))
    ahead = asyncio.create_task(collect(bus, run, 12))
    got: asyncio.Queue[Event] = asyncio.Queue()

    async def behind():
        async for e in bus.tail(run, 0):
            await got.put(e)

    t2 = asyncio.create_task(behind())
    assert [(await asyncio.wait_for(got.get(), 5)).seq for _ in range(2)] == [1, 2]
    for s in range(3, 15):  # each as it is published (a hand-off), the first ones below the other's cursor
        await bus.publish(ev(run, s))
        assert (await asyncio.wait_for(got.get(), 5)).seq == s
    await bus.publish(ev(run, 15, "run.completed"))
    assert (await asyncio.wait_for(got.get(), 5)).seq == 15
    await asyncio.wait_for(t2, 5)
    assert [e.seq for e in await asyncio.wait_for(ahead, 5)] == [13, 14, 15]


async def test_new_runs_join_a_blocked_reader_without_waiting_for_its_timeout(bus):
    """A second run tailed while the reader is already blocked on the first gets its events at once."""
    first, second = rid(), rid()
    agen = bus.tail_batches(first, 0, idle_s=0.02)
    assert await agen.__anext__() == []  # the reader is now blocked on `first`
    loop = asyncio.get_running_loop()
    for _ in range(5):
        run = rid()
        await bus.publish(ev(run, 1, "run.completed"))
        t0 = loop.time()
        got = await asyncio.wait_for(collect(bus, run, 0), 5)
        assert [e.seq for e in got] == [1]
        assert loop.time() - t0 < 0.5  # the block time is 900 ms: we were woken, not timed out
    await bus.publish(ev(second, 1))
    await agen.aclose()


async def test_trimmed_events_leave_a_gap_the_caller_can_see():
    bus = MemoryEventBus(max_per_run=10)
    run = rid()
    for s in range(1, 60):
        await bus.publish(ev(run, s))
    await bus.publish(ev(run, 60, "run.completed"))
    got = [e.seq async for e in bus.tail(run, 0)]
    assert got[-1] == 60 and got == sorted(got)
    assert got[0] > 1 and len(got) <= 10 + 16  # the first seq tells the caller what to fetch from the store


async def test_closing_the_memory_bus_ends_its_tails():
    bus = MemoryEventBus()
    run = rid()
    got: asyncio.Queue[Event] = asyncio.Queue()

    async def tailer():
        out = []
        async for e in bus.tail(run, 0):
            out.append(e)
            await got.put(e)
        return out

    task = asyncio.create_task(tailer())
    await bus.publish(ev(run, 1))
    await asyncio.wait_for(got.get(), 5)  # the tailer is attached and waiting for more
    await bus.close()
    assert [e.seq for e in await asyncio.wait_for(task, 5)] == [1]



async def test_redis_streams_always_carry_a_ttl(redis_url, redis_prefix):
    """The TTL is set with a run's first event here, renewed at most every ttl/8 (plain XADDs in
    between) and with the terminal event; a stream never lives without one (it would never go)."""
    client, probe = await open_redis(redis_url), await open_redis(redis_url)
    bus = RedisEventBus(client, redis_prefix)
    try:
        run = rid()
        key = f"{redis_prefix}ev:{run}"
        await bus.publish(ev(run, 1))
        assert 0 < await probe.ttl(key) <= 86_400
        await probe.persist(key)  # as if the TTL had been lost: plain XADDs do not restore it...
        await bus.publish(ev(run, 2))
        assert await probe.ttl(key) == -1
        await bus.publish(ev(run, 3, "run.completed"))  # ...the terminal event does
        assert 0 < await probe.ttl(key) <= 86_400
        assert [e.seq for e in await collect(bus, run, 0)] == [1, 2, 3]
        # past ttl/8 since this process last set it, the next event renews it
        other = rid()
        okey = f"{redis_prefix}ev:{other}"
        await bus.publish(ev(other, 1))
        await probe.persist(okey)
        later = bus._clock() + 86_400 / 8 + 1
        bus._clock = lambda: later
        await bus.publish(ev(other, 2))
        assert 0 < await probe.ttl(okey) <= 86_400
        await bus.publish(ev(other, 2))  # a repeat is still ignored quietly on the plain-XADD path
    finally:
        await bus.close()
        await client.aclose()
        await probe.aclose()
