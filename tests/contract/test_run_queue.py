"""RunQueue contract: memory and Redis adapters behave the same.

Redelivery is awaited with a blocking ``claim`` (the queue's own wait), never
with sleeps.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from supervisor.stores.memory import MemoryRunQueue
from supervisor.stores.redis import RedisRunQueue, open_redis

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["memory", "redis"])
async def make_queue(request: pytest.FixtureRequest):
    """make_queue(visibility_s) -> a queue; for Redis every call is another node on the same stream."""
    clients: list = []
    memory: dict[float, MemoryRunQueue] = {}

    async def make(visibility_s: float = 30.0):
        if request.param == "memory":
            return memory.setdefault(visibility_s, MemoryRunQueue(visibility_s))
        client = await open_redis(request.getfixturevalue("redis_url"))
        clients.append(client)
        return RedisRunQueue(client, request.getfixturevalue("redis_prefix"), visibility_s)

    yield make
    for c in clients:
        await c.aclose()


async def test_fifo_claim_ack_and_depth(make_queue):
    q = await make_queue()
    assert await q.depth() == 0
    for i in range(3):
        await q.enqueue("t1", f"r{i}")
    assert await q.depth() == 3
    jobs = [await q.claim("w1", 1) for _ in range(3)]
    assert [(j.tenant_id, j.run_id, j.attempts) for j in jobs] == [("t1", "r0", 1), ("t1", "r1", 1), ("t1", "r2", 1)]
    assert len({j.receipt for j in jobs}) == 3
    assert await q.depth() == 0
    for j in jobs:
        await q.ack(j)
    assert await q.claim("w1", 0.05) is None
    assert await q.depth() == 0


async def test_claim_waits_for_an_enqueue(make_queue):
    q = await make_queue()
    waiter = asyncio.create_task(q.claim("w1", 10))
    await asyncio.sleep(0)  # let it start waiting (the result is the same if it has not)
    await q.enqueue("t1", "late")
    job = await asyncio.wait_for(waiter, 5)
    assert job is not None and job.run_id == "late"


async def test_claim_times_out_empty(make_queue):
    q = await make_queue()
    t0 = time.monotonic()
    assert await q.claim("w1", 0.2) is None
    assert 0.15 <= time.monotonic() - t0 < 2


async def test_unacked_job_is_redelivered_after_the_visibility_timeout(make_queue):
    q1, q2 = await make_queue(0.2), await make_queue(0.2)
    await q1.enqueue("t1", "r1")
    first = await q1.claim("w1", 1)
    assert first is not None and first.attempts == 1
    assert await q2.claim("w2", 0.05) is None  # still invisible
    t0 = time.monotonic()
    again = await q2.claim("w2", 5)  # w1 never acks: w2 gets it once the claim expires
    assert again is not None
    assert (again.run_id, again.receipt, again.attempts) == ("r1", first.receipt, 2)
    assert time.monotonic() - t0 < 3
    await q2.ack(again)
    assert await q1.claim("w1", 0.4) is None  # acked: not redelivered again


async def test_extend_keeps_the_job_invisible(make_queue):
    q1, q2 = await make_queue(0.3), await make_queue(0.3)
    await q1.enqueue("t1", "r1")
    job = await q1.claim("w1", 1)
    assert job is not None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.9:  # three visibility windows, paced by w2's own claim timeout
        await q1.extend(job)
        assert await q2.claim("w2", 0.1) is None
    await q1.ack(job)


async def test_an_expired_job_behind_many_live_ones_is_found(make_queue):
    q1, q2 = await make_queue(0.3), await make_queue(0.3)
    for i in range(40):
        await q1.enqueue("t1", f"r{i}")
    jobs = [await q1.claim("w1", 1) for _ in range(40)]
    assert all(j is not None for j in jobs)
    keep = [j for j in jobs if j.run_id != "r33"]  # w1 keeps extending every job but r33
    got = None
    while got is None:  # paced by w2's claim timeout (0.1 s < visibility 0.3 s)
        for j in keep:
            await q1.extend(j)
        got = await q2.claim("w2", 0.1)
    assert got.run_id == "r33" and got.attempts == 2


async def test_stale_holder_cannot_extend_or_requeue_a_redelivered_job(make_queue):
    q1, q2 = await make_queue(0.2), await make_queue(0.2)
    await q1.enqueue("t1", "r1")
    old = await q1.claim("w1", 1)
    new = await q2.claim("w2", 5)
    assert old is not None and new is not None and new.attempts == 2
    await q2.extend(new)
    await q1.extend(old)  # must not take it back
    await q1.requeue(old)  # must not duplicate it
    assert await q1.depth() == 0
    assert await q1.claim("w3", 0.05) is None  # w2 still holds it
    await q2.ack(new)


async def test_requeue_puts_it_back_with_its_attempts(make_queue):
    q = await make_queue()
    await q.enqueue("t1", "r1")
    await q.enqueue("t1", "r2")
    job = await q.claim("w1", 1)
    assert job is not None and job.run_id == "r1"
    await q.requeue(job)
    assert await q.depth() == 2
    nxt = await q.claim("w1", 1)
    assert nxt is not None and nxt.run_id == "r2"  # requeued to the back
    back = await q.claim("w2", 1)
    assert back is not None and back.run_id == "r1" and back.attempts == 2
    await q.ack(nxt)
    await q.ack(back)
    assert await q.claim("w1", 0.05) is None


async def test_fail_drops_the_job_for_good(make_queue):
    q = await make_queue(0.2)
    await q.enqueue("t1", "r1")
    job = await q.claim("w1", 1)
    assert job is not None
    await q.fail(job)
    assert await q.depth() == 0
    assert await q.claim("w1", 0.5) is None  # past the visibility timeout: still gone


async def test_ack_after_expiry_but_before_redelivery_finishes_it(make_queue):
    q = await make_queue(0.1)
    await q.enqueue("t1", "r1")
    job = await q.claim("w1", 1)
    assert job is not None
    await asyncio.sleep(0.15)  # waiting for the clock: the claim expires and nobody re-claims it
    await q.ack(job)
    assert await q.claim("w2", 0.3) is None


async def test_concurrent_workers_get_each_job_exactly_once(make_queue):
    queues = [await make_queue() for _ in range(4)]
    for i in range(40):
        await queues[0].enqueue("t1", f"r{i}")
    got: list[str] = []

    async def worker(q, name):
        while True:
            job = await q.claim(name, 0.2)
            if job is None:
                return
            got.append(job.run_id)
            await q.ack(job)

    await asyncio.wait_for(asyncio.gather(*(worker(q, f"w{i}") for i, q in enumerate(queues))), 20)
    assert sorted(got) == sorted(f"r{i}" for i in range(40))
