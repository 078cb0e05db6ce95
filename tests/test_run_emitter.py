"""RunEmitter: events are stored in the order they were asked for, whether awaited or not."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from supervisor.stores.memory.event_bus import MemoryEventBus
from supervisor.stores.sqlite import SqliteRunStore, SqliteTenantStore, open_sqlite
from tests.contract._helpers import make_run

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def setup(tmp_path):
    db = await open_sqlite(tmp_path / "s.db")
    tenant = (await SqliteTenantStore(db).create_tenant("t")).id
    runs = SqliteRunStore(db)
    run, _ = await runs.create_run(make_run(tenant, status="running"))
    yield runs, RunEmitter(runs, MemoryEventBus(), tenant, run.id), tenant, run.id
    await db.close()


async def test_order_is_the_order_of_asking(setup):
    runs, em, tenant, run_id = setup
    a = em.emit_nowait("tool.call", {"i": 1})
    b = await em.emit("custom", {"i": 2})  # waits behind a
    c = em.emit_nowait("tool.result", {"i": 3})
    # a task's emit takes its place when the task runs, i.e. after d, which is asked for right now
    t = asyncio.ensure_future(em.emit("custom", {"i": 5}))
    d = em.emit_nowait("custom", {"i": 4})
    await asyncio.gather(a, c, d, t)
    done = await em.finish("succeeded", {})
    stored = await runs.events_after(tenant, run_id, 0)
    assert [(e.seq, e.type, e.data.get("i")) for e in stored] == [
        (1, "tool.call", 1), (2, "custom", 2), (3, "tool.result", 3), (4, "custom", 4), (5, "custom", 5),
        (6, "run.completed", None)]
    assert b.seq == 2 and done is not None and done.seq == 6


async def test_finish_waits_for_events_asked_for_before_it(setup):
    runs, em, tenant, run_id = setup
    for i in range(20):
        em.emit_nowait("custom", {"i": i})
    await em.finish("succeeded", {})  # not one of the 20 may land after the terminal event (or be refused by it)
    stored = await runs.events_after(tenant, run_id, 0)
    assert [e.data.get("i") for e in stored[:-1]] == list(range(20))
    assert stored[-1].type == "run.completed"


async def test_a_failed_background_event_does_not_block_the_line(setup):
    runs, em, tenant, run_id = setup
    await em.finish("canceled", {})
    late = em.emit_nowait("tool.call", {"i": 1})  # the run has ended: refused
    with pytest.raises(StockadeError) as err:
        await late
    assert err.value.code == "conflict"
    again = em.emit_nowait("custom", {})
    with pytest.raises(StockadeError):
        await asyncio.wait_for(again, 5)  # refused as well, but answered: nothing waits forever


async def test_a_canceled_emit_gives_up_its_place(setup):
    runs, em, tenant, run_id = setup
    gate = asyncio.Event()
    real = runs.append_event

    async def slow(*a, **kw):
        await gate.wait()
        return await real(*a, **kw)

    runs.append_event = slow  # type: ignore[method-assign]
    first = em.emit_nowait("custom", {"i": 1})
    second = asyncio.ensure_future(em.emit("custom", {"i": 2}))
    third = em.emit_nowait("custom", {"i": 3})
    await asyncio.sleep(0)
    second.cancel()
    gate.set()
    await asyncio.gather(first, third)
    stored = await runs.events_after(tenant, run_id, 0)
    assert [e.data["i"] for e in stored] == [1, 3]


async def test_stored_is_announced_before_it_is_published(setup):
    """The tool step waits for tool.call to be stored, not for the bus; the bus still gets events in order."""
    runs, em, tenant, run_id = setup
    gate = asyncio.Event()
    published: list[int] = []

    class SlowBus:
        async def publish(self, event):
            await gate.wait()
            published.append(event.seq)

    em._bus = SlowBus()
    first = em.emit_nowait("tool.call", {})
    second = em.emit_nowait("tool.result", {})
    event = await asyncio.wait_for(first, 5)  # stored while its publication is still held up
    assert event.seq == 1 and published == []
    assert not second.done()  # in line behind the first one's publication
    gate.set()
    assert (await asyncio.wait_for(second, 5)).seq == 2
    await em.finish("succeeded", {})
    assert published == [1, 2, 3]


async def test_a_background_emit_canceled_before_it_ran_gives_up_its_place(setup):
    runs, em, tenant, run_id = setup
    em.emit_nowait("custom", {"i": 1})
    for task in list(em._pending):
        task.cancel()  # before its first step: its coroutine never runs
    later = await asyncio.wait_for(em.emit("custom", {"i": 2}), 5)  # must not wait forever
    assert later.data["i"] == 2
