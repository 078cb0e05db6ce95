"""Runs no worker carries any more (supervisor/runs/lost.py), on the real stores: the worker's beat, and
the sweeper's watch that ends a run only after seeing it unmarked over consecutive successful sweeps."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from supervisor.errors import StockadeError
from supervisor.runs.lost import AbandonedRuns, RunBeat
from tests.contract._helpers import make_run, store

pytestmark = pytest.mark.timeout(30)


async def _running(runs, t: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        run = make_run(t, status="queued")
        await runs.create_run(run)
        await runs.start_run(t, run.id, worker_id="w1", started_at=1.0)
        ids.append(run.id)
    return ids


async def _seen(runs, run_id: str) -> float | None:
    return next((s for r, s in await runs.quiet_runs(0.0, limit=100_000) if r.id == run_id), None)


async def test_the_worker_beat_marks_exactly_the_runs_it_carries(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    kept, let_go = await _running(runs, t, 2)
    before = {i: await _seen(runs, i) for i in (kept, let_go)}
    beaten = asyncio.Event()
    calls: list[list[str]] = []
    real = runs.beat_runs

    async def beat_runs(run_ids: list[str], worker_id: str) -> None:
        await real(run_ids, worker_id)
        calls.append(list(run_ids))
        beaten.set()

    runs.beat_runs = beat_runs
    beat = RunBeat(runs, SimpleNamespace(queue_visibility_s=0.15), "w1")  # a beat every 0.05 s
    try:
        beat.carry(kept)
        beat.carry(let_go)
        beat.drop(let_go)
        await asyncio.wait_for(beaten.wait(), 5)
        assert calls[0] == [kept]  # one write for every run carried
        assert await _seen(runs, kept) > before[kept]
        assert await _seen(runs, let_go) == before[let_go]
        beat.drop(kept)
        await asyncio.wait_for(beat._task, 5)  # nothing carried: the loop ends by itself
    finally:
        await beat.close()


async def test_a_run_is_abandoned_only_once_seen_unmarked_over_the_confirm_window(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    lost, alive = await _running(runs, t, 2)
    now = [100.0]
    sweep = AbandonedRuns(runs, visibility_s=30.0, clock=lambda: now[0])
    sweep.quiet_s = 0.0  # the store-side filter passes at once; the watch is what is tested

    async def gone() -> set[str]:
        return {r.id for r, _ in await sweep.confirmed()} & {lost, alive}

    assert await gone() == set()  # first sight: the watch starts
    now[0] += 29.0
    await runs.beat_runs([alive], "w1")  # a live worker marks its run meanwhile
    assert await gone() == set()  # seen marked: its watch starts over now (t = 129)
    now[0] += 1.0
    assert await gone() == {lost}  # 30 s unmarked under watch
    now[0] += 28.9
    assert await gone() == {lost}
    now[0] += 0.1
    assert await gone() == {lost, alive}

    sweep.forget()  # a failed sweep: every watch starts over
    assert await gone() == set()
    await runs.finish_run(t, lost, "failed", "run.failed", {})
    now[0] += 30.0
    assert await gone() == {alive}  # an ended run drops out


async def test_a_failed_sweep_starts_every_watch_over(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    (lost,) = await _running(runs, t, 1)
    now = [0.0]
    sweep = AbandonedRuns(runs, visibility_s=30.0, clock=lambda: now[0])
    sweep.quiet_s = 0.0
    assert [r.id for r, _ in await sweep.confirmed() if r.id == lost] == []
    real = runs.quiet_runs

    async def away(*a, **kw):
        raise StockadeError("store.unavailable", "away")

    runs.quiet_runs = away
    with pytest.raises(StockadeError):
        await sweep.confirmed()
    runs.quiet_runs = real
    now[0] += 60.0
    assert [r.id for r, _ in await sweep.confirmed() if r.id == lost] == []  # seen again, watched anew
    now[0] += 30.0
    assert [(r.id, s) for r, s in await sweep.confirmed() if r.id == lost] == [(lost, await _seen(runs, lost))]


async def test_an_ended_run_is_held_until_its_worker_lets_go(sql_db):
    """``held``/``let_go``: what a receipt waits on (app/routes/runs.py ``_settled``)."""
    runs = store(sql_db, "RunStore")
    t, other = await sql_db.new_tenant(), await sql_db.new_tenant()
    (run_id,) = await _running(runs, t, 1)
    queued_then_canceled = make_run(t, status="queued").id
    await runs.create_run(make_run(t, status="queued", id=queued_then_canceled))
    assert await runs.held(t, run_id) is None  # running: not an ended run
    await runs.let_go(t, run_id)  # a run not ended keeps its mark (the sweepers need it)
    assert await _seen(runs, run_id) is not None
    await runs.finish_run(t, run_id, "canceled", "run.canceled", {"code": "run.canceled"})
    age = await runs.held(t, run_id)
    assert age is not None and 0 <= age < 60
    assert await runs.held(other, run_id) is None  # another tenant's: nothing
    await runs.let_go(other, run_id)
    assert await runs.held(t, run_id) is not None
    await runs.let_go(t, run_id)
    assert await runs.held(t, run_id) is None
    await runs.let_go(t, run_id)  # again: nothing to do
    # a run no worker carried (canceled while queued) is not held
    await runs.finish_run(t, queued_then_canceled, "canceled", "run.canceled", {"code": "run.canceled"})
    assert await runs.held(t, queued_then_canceled) is None
