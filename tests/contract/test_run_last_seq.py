"""RunStore contract: every Run a store hands out carries ``last_seq`` = the seq of the run's newest event.

Readers rely on it (GET /v1/runs, the SSE 204 for an ended run, Socket.IO ``run_end``), however an adapter
keeps it (both bump ``runs.last_seq`` with each event today; a faster SQLite variant computing it from the
event log was measured at ~3% of a governed call and not landed).
"""

from __future__ import annotations

import asyncio

import pytest

from supervisor.errors import StockadeError
from tests.contract._helpers import make_run, store


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "RunStore"), await sql_db.new_tenant()


async def _seen(runs, t: str, run_id: str, *, idem: str) -> set[int]:
    """last_seq of the run as every reader returns it."""
    got = {(await runs.get_run(t, run_id)).last_seq, (await runs.get_run_any_tenant(run_id)).last_seq}
    got |= {r.last_seq for r in await runs.list_runs(t) if r.id == run_id}
    got |= {r.last_seq for r in await runs.list_runs_by_status(("running", "succeeded")) if r.id == run_id}
    got |= {r.last_seq for r, _ in await runs.quiet_runs(-3600.0) if r.id == run_id}
    again, new = await runs.create_run(make_run(t, idempotency_key=idem))
    assert not new and again.id == run_id
    got.add(again.last_seq)
    return got


async def test_last_seq_is_the_newest_event_at_every_point(ctx):
    _, runs, t = ctx
    run, _ = await runs.create_run(make_run(t, status="queued", idempotency_key="ls"))
    assert run.last_seq == 0
    started = await runs.start_run(t, run.id, worker_id="w1", started_at=1.0)
    assert started is not None and started.last_seq == 0
    assert await _seen(runs, t, run.id, idem="ls") == {0}
    for n in range(1, 6):
        e = await runs.append_event(t, run.id, "custom", {"n": n})
        assert e.seq == n
        assert await _seen(runs, t, run.id, idem="ls") == {n}
        moved = await runs.set_status(t, run.id, "running")
        assert moved is not None and moved.last_seq == n
    # refused appends move nothing
    for tenant, data in ((t, {"bad": object()}), (await ctx[0].new_tenant(), {})):
        with pytest.raises(StockadeError):
            await runs.append_event(tenant, run.id, "custom", data)
    assert await _seen(runs, t, run.id, idem="ls") == {5}
    end = await runs.finish_run(t, run.id, "succeeded", "run.completed", {})
    assert end is not None and end.seq == 6
    assert await _seen(runs, t, run.id, idem="ls") == {6}
    with pytest.raises(StockadeError):
        await runs.append_event(t, run.id, "custom", {})
    assert await runs.finish_run(t, run.id, "failed", "run.failed", {}) is None
    assert await _seen(runs, t, run.id, idem="ls") == {6}
    assert [e.seq for e in await runs.events_after(t, run.id, 0)] == [1, 2, 3, 4, 5, 6]


async def test_interleaved_runs_in_one_batch_keep_their_own_seqs(ctx):
    """Appends to several runs submitted in one loop turn (one group commit on SQLite)."""
    _, runs, t = ctx
    ids = []
    for _ in range(3):
        r, _ = await runs.create_run(make_run(t))
        ids.append(r.id)
    for rnd in range(4):
        events = await asyncio.gather(*(runs.append_event(t, rid, "custom", {"r": rnd}) for rid in ids for _ in range(2)))
        for rid in ids:  # concurrent appends to one run may land in either order (PostgreSQL)
            assert sorted(e.seq for e in events if e.run_id == rid) == [2 * rnd + 1, 2 * rnd + 2]
        assert [(await runs.get_run(t, rid)).last_seq for rid in ids] == [2 * rnd + 2] * len(ids)
    ends = await asyncio.gather(*(runs.finish_run(t, rid, "canceled", "run.canceled", {}) for rid in ids))
    assert [e.seq for e in ends] == [9] * len(ids)
    assert [(await runs.get_run(t, rid)).last_seq for rid in ids] == [9] * len(ids)


async def test_finish_when_status_ends_only_a_run_still_in_that_status(ctx):
    """``when_status``: a worker giving up a queued run's job ends it only while no worker has started it
    (session 26: a second job's worker starting it between the read and the end kept a run ended under it)."""
    _, runs, t = ctx
    queued, _ = await runs.create_run(make_run(t, status="queued"))
    started, _ = await runs.create_run(make_run(t, status="queued"))
    assert await runs.start_run(t, started.id, worker_id="w1", started_at=1.0) is not None
    await runs.append_event(t, started.id, "custom", {})
    data = {"code": "internal"}
    assert await runs.finish_run(t, started.id, "failed", "run.failed", data, when_status="queued",
                                 error_code="internal") is None
    kept = await runs.get_run(t, started.id)
    assert (kept.status, kept.worker_id, kept.error_code, kept.last_seq) == ("running", "w1", None, 1)
    assert [e.type for e in await runs.events_after(t, started.id, 0)] == ["custom"]
    end = await runs.finish_run(t, queued.id, "failed", "run.failed", data, when_status="queued", error_code="internal")
    assert end is not None and end.seq == 1
    ended = await runs.get_run(t, queued.id)
    assert (ended.status, ended.error_code, ended.last_seq) == ("failed", "internal", 1)
    # ended: no status matches any more
    assert await runs.finish_run(t, queued.id, "failed", "run.failed", data, when_status="failed") is None
    with pytest.raises(StockadeError) as e:
        await runs.finish_run(t, "run_missing", "failed", "run.failed", data, when_status="queued")
    assert e.value.code == "not_found"
