"""A cancel is never lost (supervisor/asyncio_fix.py).

Python 3.11's ``asyncio.wait_for`` answers a cancel that lands as its awaitable completes with the result:
the task goes on as if never asked. redis-py wraps every socket write in it, so under load (seen in CI) a
Socket.IO subscription cancelled by an unsubscribe kept forwarding and kept its stream place for good, and
an SSE stream's bus pump never ended. Each attack runs against the interpreter's own ``wait_for`` too, to
show that it does lose the cancel there (on 3.11): the test can fail.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from supervisor import asyncio_fix
from supervisor.stores.memory import MemoryEventBus
from supervisor.stores.records import Event
from supervisor.stores.redis import open_redis

pytestmark = pytest.mark.timeout(60)

BROKEN = sys.version_info[:2] == (3, 11)  # where the interpreter's own loses cancels


@pytest.fixture(params=["fixed", "interpreter"])
def impl(request, monkeypatch):
    if request.param == "interpreter":
        if not BROKEN:
            pytest.skip("this interpreter's wait_for is the fixed one (3.12+)")
        monkeypatch.setattr(asyncio, "wait_for", asyncio_fix.ORIGINAL)
        monkeypatch.setattr(asyncio.tasks, "wait_for", asyncio_fix.ORIGINAL)
    return request.param


def test_the_fix_is_in_place_where_needed():
    assert (asyncio.wait_for is asyncio_fix.wait_for) == BROKEN


async def test_a_cancel_landing_as_the_awaited_completes_is_not_lost(impl):
    """Deterministic: the awaited future completes and the waiting task is cancelled in one loop turn."""
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(asyncio.wait_for(fut, 10))
    await asyncio.sleep(0)  # the task waits
    fut.set_result("done")
    assert task.cancel()
    await asyncio.wait({task})
    if impl == "interpreter":
        assert not task.cancelled() and task.result() == "done"  # the bug: the cancel is gone
    else:
        assert task.cancelled()


async def test_timeouts_results_and_errors_are_as_before(impl):
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(5), 0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(5), 0)
    assert await asyncio.wait_for(asyncio.sleep(0, "x"), None) == "x"
    assert await asyncio.wait_for(asyncio.sleep(0, "y"), 5) == "y"
    done = asyncio.get_running_loop().create_future()
    done.set_result("z")
    assert await asyncio.wait_for(done, 0) == "z"  # already done: its result, even with no time left

    async def boom() -> None:
        raise ValueError("inner")

    with pytest.raises(ValueError, match="inner"):
        await asyncio.wait_for(boom(), 5)


async def test_a_timeout_in_a_task_already_cancelled_is_a_timeout_and_an_outside_cancel_wins(impl):
    """Cleanup after a cancel (a worker ending its run on shutdown) that times out gets TimeoutError, as with
    3.11.3+'s asyncio.timeout (3.11.2's raised CancelledError there); a cancel from outside during the wait
    is a cancel, never turned into a timeout."""
    async def cleanup() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.sleep(5), 0.01)
            except TimeoutError:
                return "timeout"
        return "not cancelled"

    task = asyncio.create_task(cleanup())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "timeout"

    waiting = asyncio.create_task(asyncio.wait_for(asyncio.sleep(5), 0.2))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.wait({waiting})
    assert waiting.cancelled()


async def _lost_cancels(start, rounds: int = 400) -> int:
    """Tasks cancelled mid-way (after 0..k loop turns) that went on to finish as if never cancelled."""
    lost = 0
    for i in range(rounds):
        task = asyncio.create_task(start())
        for _ in range(i % 25):
            await asyncio.sleep(0)
        if task.cancel():  # not done yet: it must end cancelled
            await asyncio.wait({task}, timeout=5)
            assert task.done(), "a cancelled task still running after 5 s"
            lost += not task.cancelled()
        else:
            await task
    return lost


async def test_redis_commands_cancelled_mid_write_end_cancelled(impl, redis_url, redis_prefix):
    """The real path: redis-py's socket writes (send_packed_command -> wait_for), cancelled at every point."""
    client = await open_redis(redis_url)
    try:
        async def command() -> None:
            await client.xadd(redis_prefix + "s", {"e": "x" * 64}, maxlen=10, approximate=True)

        lost = await _lost_cancels(command)
    finally:
        await client.aclose()
    if impl == "interpreter":
        assert lost > 0, "the interpreter's wait_for lost no cancel here: the attack no longer shows the bug"
    else:
        assert lost == 0


async def test_a_tail_woken_as_it_is_cancelled_ends(impl):
    """Our own tail (memory bus ``follow``): a publish wakes it around the loop turn of the cancel. A tail
    whose cancel was lost waits for the next event, for ever: that is what held stream places."""
    bus = MemoryEventBus()
    stuck = 0
    for i in range(100):
        run = f"run_{i}"

        async def tail(run: str = run) -> None:
            async for _ in bus.tail_batches(run, 0, 30.0):
                pass

        task = asyncio.create_task(tail())
        for _ in range(1 + i % 3):
            await asyncio.sleep(0)
        await bus.publish(Event(run_id=run, seq=1, type="message.delta", data={}, ts=0.0))
        for _ in range(i // 3 % 4):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
        stuck += not task.done()
        task.cancel()  # free a stuck one (its next wait ends it)
        await asyncio.wait({task})
        if stuck and impl == "interpreter":
            break  # shown
    if impl == "interpreter":
        assert stuck > 0, "the interpreter's wait_for lost no cancel here: the attack no longer shows the bug"
    else:
        assert stuck == 0
