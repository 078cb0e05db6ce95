"""The worker's cancel watch: one store query per tick for every run it hosts, on the real stores."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.runs.cancel_watch import CancelWatch
from tests.contract._helpers import make_run, store

pytestmark = pytest.mark.timeout(30)


async def test_one_query_per_tick_for_all_runs_and_each_cancel_seen(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    hosted = [make_run(t, status="running") for _ in range(20)]
    for r in hosted:
        await runs.create_run(r)
    watch = CancelWatch(runs, interval=0.02)
    futs = {r.id: watch.watch(r.id) for r in hosted}
    try:
        await runs.finish_run(t, hosted[3].id, "canceled", "run.canceled", {})
        await asyncio.wait_for(futs[hosted[3].id], 5)
        assert watch.queries >= 1
        ticks = watch.queries
        await runs.finish_run(t, hosted[7].id, "canceled", "run.canceled", {})
        await asyncio.wait_for(futs[hosted[7].id], 5)
        # 20 runs watched, yet one query per tick (a poll per run made 20)
        assert watch.queries - ticks <= 3
        assert [rid for rid, f in futs.items() if f.done()] == [hosted[3].id, hosted[7].id]
        watch.unwatch(hosted[3].id)
        assert watch.watch(hosted[3].id) is not futs[hosted[3].id]  # a fresh watch of an ended run...
        await asyncio.wait_for(watch.watch(hosted[3].id), 5)  # ...resolves on the next tick
    finally:
        await watch.close()
    assert all(f.done() for f in futs.values())  # closing cancels what was still watched


async def test_the_poller_stops_when_nothing_is_watched_and_restarts(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run = make_run(t, status="running")
    await runs.create_run(run)
    watch = CancelWatch(runs, interval=0.01)
    watch.watch(run.id)
    task = watch._task
    watch.unwatch(run.id)
    await asyncio.wait_for(task, 5)  # ends by itself: no poll for a worker with no runs
    fut = watch.watch(run.id)
    await runs.finish_run(t, run.id, "canceled", "run.canceled", {})
    await asyncio.wait_for(fut, 5)
    await watch.close()
