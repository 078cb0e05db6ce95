"""Attacks on ending lost runs (supervisor/runs/lost.py): every way of ending one run racing at once, and
the cost of the sweeper's query with many runs carried.

* A sweeper (store only), a second sweeper, a redelivery (through the run's emitter) and an API cancel
  end one run at the same moment: exactly one terminal event, its reservation released, its approval
  request withdrawn - whoever wins.
* ``quiet_runs`` runs on every worker node at every sweep: it must read the quiet runs through the
  ``runs_carried`` index, not every carried run (PostgreSQL: a volatile ``clock_timestamp()`` compared
  directly with ``seen_at`` cannot bound an index scan).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from supervisor.events import RunEmitter, finish_run_anywhere
from supervisor.ids import new_id
from supervisor.runs.lost import end_lost
from supervisor.stores.memory.event_bus import MemoryEventBus
from supervisor.stores.records import TERMINAL_STATUSES, Approval
from tests.contract._helpers import make_run, store

pytestmark = pytest.mark.timeout(60)


def _ledger(sql_db) -> Any:
    if sql_db.is_pg:
        from supervisor.stores.postgres.ledger import PgLedger

        return PgLedger(sql_db.db)
    from supervisor.stores.sqlite.ledger import SqliteLedger

    return SqliteLedger(sql_db.db)


@pytest.mark.parametrize("round_", range(3))
async def test_sweepers_a_redelivery_and_a_cancel_racing_end_a_run_once_and_leave_nothing_held(sql_db, round_):
    runs, approvals, ledger = store(sql_db, "RunStore"), store(sql_db, "ApprovalStore"), _ledger(sql_db)
    bus = MemoryEventBus()
    services = SimpleNamespace(runs=runs, approvals=approvals, ledger=ledger, events=bus)
    t = await sql_db.new_tenant()
    run = make_run(t)
    await runs.create_run(run)
    run = await runs.start_run(t, run.id, worker_id="w-dead", started_at=time.time())
    now = time.time()
    await ledger.set_cap(t, "tenant", t, 1_000_000)
    await ledger.reserve(t, [("tenant", t)], 5_000, reservation_id=new_id("res_"), run_id=run.id,
                         expires_at=now + 3600, now=now)
    await approvals.create(Approval(new_id("apr_"), t, run.id, "echo", "h", {}, None, None, "pending", now, now + 3600))
    await runs.set_status(t, run.id, "waiting_approval")  # a lost run may be parked on an approval

    go = asyncio.Event()

    async def gated(coro) -> Any:
        await go.wait()
        return await coro

    async def cancel() -> Any:  # what POST /v1/runs/{id}/cancel does (app/routes/runs.py)
        with contextlib.suppress(Exception):
            await ledger.release_run(t, run.id)
        from supervisor.chain.approval import withdraw_run

        await withdraw_run(approvals, t, run.id)
        return await finish_run_anywhere(runs, bus, t, run.id, "canceled", {"code": "run.canceled", "message": "x"},
                                         ended_at=time.time())

    enders = [
        gated(end_lost(services, run, "sweeper one")),
        gated(end_lost(services, run, "sweeper two")),
        gated(end_lost(services, run, "redelivery", RunEmitter(runs, bus, t, run.id))),
        gated(cancel()),
    ]
    tasks = [asyncio.ensure_future(e) for e in enders]
    go.set()
    out = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert sum(e is not None for e in out) == 1, out
    events = await runs.events_after(t, run.id, 0)
    terminal = [e for e in events if e.type in ("run.failed", "run.canceled", "run.succeeded", "run.timed_out")]
    assert len(terminal) == 1, [e.type for e in events]
    assert (await runs.get_run(t, run.id)).status in TERMINAL_STATUSES
    assert [a.reserved_micro for a in await ledger.accounts(t, time.time())] == [0]
    assert await approvals.list(t, status="pending", run_id=run.id) == []


class _Explaining:
    """A connection stand-in that runs ``EXPLAIN (ANALYZE, FORMAT JSON)`` of what the store sends."""

    def __init__(self, conn: Any, plans: list[Any]) -> None:
        self._conn, self._plans = conn, plans

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        plan = await self._conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
        self._plans.append(json.loads(plan)[0]["Plan"] if isinstance(plan, str) else plan[0]["Plan"])
        return []


def _nodes(plan: dict) -> list[dict]:
    out, stack = [], [plan]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.get("Plans", []))
    return out


@pytest.mark.pg
async def test_postgres_quiet_runs_reads_only_the_quiet_runs_through_the_index(fresh_pg_url):
    from supervisor.stores.postgres import PgRunStore, PgTenantStore, open_postgres

    db = await open_postgres(fresh_pg_url, min_size=1, max_size=2)
    try:
        t = (await PgTenantStore(db).create_tenant("many")).id
        async with db.system_tx() as c:  # 5,000 carried runs marked just now, 5 quiet ones, 20,000 ended
            await c.execute(
                "INSERT INTO runs (id, tenant_id, bundle, bundle_version, input, status, created_at, seen_at)"
                " SELECT 'r' || g, $1, 'b', '1', 'x',"
                " CASE WHEN g <= 5005 THEN (CASE WHEN g % 2 = 0 THEN 'running' ELSE 'waiting_approval' END)"
                "      ELSE 'succeeded' END, 0,"
                " extract(epoch FROM clock_timestamp()) - CASE WHEN g <= 5 THEN 3600 ELSE 0 END"
                " FROM generate_series(1, 25005) g", t)
            await c.execute("ANALYZE runs")
        runs = PgRunStore(db)
        assert sorted(r.id for r, _ in await runs.quiet_runs(60.0)) == [f"r{g}" for g in range(1, 6)]
        plans: list[Any] = []
        real = db.system_tx

        @contextlib.asynccontextmanager
        async def explaining():
            async with real() as c:
                yield _Explaining(c, plans)

        db.system_tx = explaining
        await runs.quiet_runs(60.0)
        db.system_tx = real
        [plan] = plans
        nodes = _nodes(plan)
        conds = " ".join(n.get("Index Cond", "") for n in nodes)
        assert "seen_at" in conds, json.dumps(plan, indent=1)  # the time bound is an index condition
        assert sum(n.get("Rows Removed by Filter", 0) for n in nodes) == 0, json.dumps(plan, indent=1)
        scans = [n for n in nodes if n.get("Relation Name") == "runs"]
        assert scans and all(n["Actual Rows"] == 5 for n in scans), json.dumps(plan, indent=1)
    finally:
        await db.close()


async def test_sqlite_quiet_runs_bounds_its_index_scan_by_seen_at(tmp_path):
    from supervisor.stores.sqlite import SqliteRunStore, open_sqlite

    db = await open_sqlite(tmp_path / "s.db")
    try:
        plans: list[str] = []
        real = db.query

        def explaining(sql: str, params: Any = ()) -> list[Any]:
            plans.extend(r["detail"] for r in real("EXPLAIN QUERY PLAN " + sql, params))
            return []

        db.query = explaining
        await SqliteRunStore(db).quiet_runs(60.0)
        db.query = real
        assert any("runs_carried" in p and "seen_at<?" in p for p in plans), plans
    finally:
        await db.close()


@pytest.mark.pg
async def test_postgres_a_beat_is_not_held_up_by_one_locked_run(pg_url):
    """One carried run's row held by another transaction (a slow writer, an operator's session) must not
    keep the beat from marking the worker's other runs: the sweepers would end those healthy runs."""
    from supervisor.stores.postgres import PgRunStore, PgTenantStore, open_postgres

    db = await open_postgres(pg_url, min_size=2, max_size=4)
    try:
        runs = PgRunStore(db)
        t = (await PgTenantStore(db).create_tenant(f"beat-{id(db)}")).id
        ids = []
        for _ in range(3):
            run = make_run(t)
            await runs.create_run(run)
            await runs.start_run(t, run.id, worker_id="w1", started_at=1.0)
            ids.append(run.id)

        async def seen() -> dict[str, float]:
            async with db.system_tx() as c:
                return {r["id"]: r["seen_at"] for r in await c.fetch(
                    "SELECT id, seen_at FROM runs WHERE id = ANY($1::text[])", ids)}

        before = await seen()
        locked, held = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with db.system_tx() as c:
                await c.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", ids[1])
                locked.set()
                await held.wait()

        holder = asyncio.ensure_future(hold())
        try:
            await asyncio.wait_for(locked.wait(), 10)
            await asyncio.wait_for(runs.beat_runs(ids, "w1"), 10)
            after = await seen()
        finally:
            held.set()
            await asyncio.wait_for(holder, 10)
        assert after[ids[0]] > before[ids[0]] and after[ids[2]] > before[ids[2]]
        assert after[ids[1]] == before[ids[1]]  # the locked one waits for the next beat
        await runs.beat_runs(ids, "w1")
        assert (await seen())[ids[1]] > before[ids[1]]
    finally:
        await db.close()


async def test_postgres_a_beat_waits_briefly_for_a_row_held_briefly(pg_url):
    """A busy run's row is held for a few ms by its own event writes, often: a beat that only skipped held rows
    could miss such a run at every beat and make it look abandoned. A row released while the beat waits (well
    within its 1 s lock timeout) is marked by that same beat."""
    from supervisor.stores.postgres import PgRunStore, PgTenantStore, open_postgres

    db = await open_postgres(pg_url, min_size=2, max_size=4)
    try:
        runs = PgRunStore(db)
        t = (await PgTenantStore(db).create_tenant(f"beat-brief-{id(db)}")).id
        run = make_run(t)
        await runs.create_run(run)
        await runs.start_run(t, run.id, worker_id="w1", started_at=1.0)

        async def seen_at() -> float:
            async with db.system_tx() as c:
                return await c.fetchval("SELECT seen_at FROM runs WHERE id = $1", run.id)

        before = await seen_at()
        locked, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with db.system_tx() as c:
                await c.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run.id)
                locked.set()
                await release.wait()

        holder = asyncio.ensure_future(hold())
        try:
            await asyncio.wait_for(locked.wait(), 10)
            beat = asyncio.ensure_future(runs.beat_runs([run.id], "w1"))
            probe = await asyncpg.connect(pg_url)
            try:  # the beat is waiting on the row: release it then (another server's state: poll, bounded)
                for _ in range(200):
                    if await probe.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                            " AND query LIKE 'UPDATE runs SET seen_at%'"):
                        break
                    await asyncio.sleep(0.005)
                else:
                    raise AssertionError("the beat never waited for the held row")
            finally:
                await probe.close()
            release.set()
            await asyncio.wait_for(beat, 10)
        finally:
            release.set()
            await asyncio.wait_for(holder, 10)
        assert await seen_at() > before
    finally:
        await db.close()
