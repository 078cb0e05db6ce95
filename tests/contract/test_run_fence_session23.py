"""The store's fence between a worker that resumes and another that ends its run as lost (session 23).

A worker frozen past its lease (SIGSTOP, a VM pause) resumes while another worker, which watched the run's
``seen_at`` unchanged, ends it ``run.worker_lost``. The resumed worker's stale lease re-read the run (still
running, still its own) and let its call go on while the other ended the run: nothing ordered the two. Now both
are one statement on the run's row: the worker ``hold``s the run (``seen_at`` moved, only while it is running
and the worker's), and an ender ``take_over``s it (the run passes to the ender only if its ``seen_at`` is still
the value watched) before it ends it. Whichever comes first wins; the other fails. Both SQL stores.
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from tests.contract._helpers import make_run, store

pytestmark = pytest.mark.timeout(60)


async def _started(runs, t: str, worker_id: str = "w1", status: str = "running") -> str:
    run = make_run(t, status="queued")
    await runs.create_run(run)
    assert await runs.start_run(t, run.id, worker_id=worker_id, started_at=1.0) is not None
    if status != "running":
        await runs.set_status(t, run.id, status)
    return run.id


async def test_only_the_holder_holds_a_run_it_carries_and_each_hold_moves_seen_at(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    waiting = await _started(runs, t, status="waiting_approval")
    before = await runs.last_seen(run_id)
    assert await runs.hold(run_id, "w1") is True
    first = await runs.last_seen(run_id)
    assert first > before
    assert await runs.hold(run_id, "w1") is True  # again at once: moved again (never the value it had)
    assert await runs.last_seen(run_id) > first
    assert await runs.hold(waiting, "w1") is True  # a run waiting for an approval is carried too
    held = await runs.last_seen(run_id)
    assert await runs.hold(run_id, "w2") is False  # another worker's hold: nothing changes
    assert await runs.last_seen(run_id) == held
    assert (await runs.get_run_any_tenant(run_id)).worker_id == "w1"
    assert await runs.hold("run_unknown", "w1") is False
    await runs.finish_run(t, run_id, "failed", "run.failed", {})
    assert await runs.hold(run_id, "w1") is False  # an ended run is nobody's
    queued = make_run(t, status="queued")
    await runs.create_run(queued)
    assert await runs.hold(queued.id, "w1") is False


async def test_a_takeover_with_the_watched_seen_at_passes_the_run_and_fences_its_old_holder_out(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    watched = await runs.last_seen(run_id)
    assert await runs.take_over(run_id, "w2", watched, "w3") is False  # not the holder named
    assert await runs.take_over(run_id, "w1", watched + 1.0, "w2") is False  # not the value watched
    assert await runs.take_over(run_id, "w1", None, "w2") is False
    assert (await runs.get_run_any_tenant(run_id)).worker_id == "w1"
    assert await runs.take_over(run_id, "w1", watched, "w2") is True
    run = await runs.get_run_any_tenant(run_id)
    assert run.worker_id == "w2" and run.status == "running"
    assert await runs.last_seen(run_id) == watched  # a takeover marks nothing: the sweepers still see it quiet
    assert await runs.hold(run_id, "w1") is False  # the old holder comes back: fenced out
    assert await runs.last_seen(run_id) == watched
    assert await runs.take_over(run_id, "w1", watched, "w3") is False  # nor can it be taken from w1 again
    await runs.finish_run(t, run_id, "failed", "run.failed", {})
    assert await runs.take_over(run_id, "w2", watched, "w3") is False  # an ended run is not taken


async def test_a_hold_first_makes_the_takeover_with_the_seen_at_watched_before_fail(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    watched = await runs.last_seen(run_id)  # the ender watched this, unchanged
    assert await runs.hold(run_id, "w1") is True  # the holder resumed first
    assert await runs.take_over(run_id, "w1", watched, "w2") is False
    assert (await runs.get_run_any_tenant(run_id)).worker_id == "w1"
    assert await runs.hold(run_id, "w1") is True  # still the holder's


async def test_a_run_never_seen_is_taken_over_with_none(sql_db):
    """A run started before ``seen_at`` existed (NULL): its watch gives None, which compares as NULL."""
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run = make_run(t, status="running", worker_id="w1")
    await runs.create_run(run)
    assert await runs.last_seen(run.id) is None
    assert await runs.take_over(run.id, "w1", 5.0, "w2") is False
    assert await runs.take_over(run.id, "w1", None, "w2") is True
    assert (await runs.get_run_any_tenant(run.id)).worker_id == "w2"


async def test_a_beat_marks_only_the_runs_still_carried_by_the_beating_worker(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    mine, taken = await _started(runs, t), await _started(runs, t)
    assert await runs.take_over(taken, "w1", await runs.last_seen(taken), "w2") is True
    before = {i: await runs.last_seen(i) for i in (mine, taken)}
    await runs.beat_runs([mine, taken], "w1")
    assert await runs.last_seen(mine) > before[mine]
    assert await runs.last_seen(taken) == before[taken]  # lost to a takeover: w1 marks it no more
    marked = await runs.last_seen(mine)
    await runs.beat_runs([mine, taken], "w9")  # another worker's beat: nothing
    assert await runs.last_seen(mine) == marked and await runs.last_seen(taken) == before[taken]


async def _at_once(*steps) -> list[bool]:
    """The steps started together: each waits at one gate, opened once all are waiting."""
    gate = asyncio.Event()

    async def at_gate(step) -> bool:
        await gate.wait()
        return await step()

    racing = [asyncio.ensure_future(at_gate(step)) for step in steps]
    await asyncio.sleep(0)  # each has reached the gate
    gate.set()
    return await asyncio.wait_for(asyncio.gather(*racing), 20)


async def test_two_takeovers_at_once_one_wins(sql_db):
    """Two enders (a redelivery and a sweeper, two sweepers) decided on the same watched value: on two
    connections of their own, released together; exactly one takes the run."""
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    for _ in range(5):
        run_id = await _started(runs, t)
        watched = await runs.last_seen(run_id)
        other_db = await sql_db.reopen()
        try:
            other = store(sql_db, "RunStore", db=other_db)
            won = await _at_once(functools.partial(runs.take_over, run_id, "w1", watched, "w2"),
                                 functools.partial(other.take_over, run_id, "w1", watched, "w3"))
        finally:
            await other_db.close()
        assert sorted(won) == [False, True], won
        winner = "w2" if won[0] else "w3"
        assert (await runs.get_run_any_tenant(run_id)).worker_id == winner


async def test_a_hold_and_a_takeover_at_once_exactly_one_wins(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    for _ in range(5):
        run_id = await _started(runs, t)
        watched = await runs.last_seen(run_id)
        other_db = await sql_db.reopen()
        try:
            other = store(sql_db, "RunStore", db=other_db)
            held, taken = await _at_once(functools.partial(runs.hold, run_id, "w1"),
                                         functools.partial(other.take_over, run_id, "w1", watched, "w2"))
        finally:
            await other_db.close()
        carrier = (await runs.get_run_any_tenant(run_id)).worker_id
        # the hold came first (the takeover then saw seen_at moved), or the takeover did (the hold then saw w2)
        assert (held, taken, carrier) in ((True, False, "w1"), (False, True, "w2")), (held, taken, carrier)
