"""PostgreSQL RunStore: runs, conversations and the durable per-run event log.

Each write is one statement inside a tenant transaction: the event insert and
the ``runs.last_seq`` bump share a data-modifying CTE, so seqs are gap-free
under any number of writers (the runs row lock orders them), and a run that
turned terminal is re-checked after the lock wait (at most one terminal event).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import asyncpg

from supervisor.errors import StockadeError
from supervisor.stores._common import (
    HISTORY_RUN_BYTES,
    RUN_COLS,
    after_last_turn,
    check_new_run_status,
    check_run_fields,
    dumps,
)
from supervisor.stores._common import check_limit as _limit
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error, to_run
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.records import RUN_STATUSES, TERMINAL_STATUSES, Event, Run

__all__ = ["PgRunStore"]

_TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)) + ")"
_CARRIED_SQL = "('running', 'waiting_approval')"  # the statuses of a run a worker carries
_NOW = "extract(epoch FROM clock_timestamp())"  # seen_at is on the database's clock: one clock for every node
_RUN_FIELDS = [f.name for f in dataclasses.fields(Run)]
_INSERT_RUN = (
    f"INSERT INTO runs ({RUN_COLS}) VALUES ({', '.join(f'${i + 1}' for i in range(len(_RUN_FIELDS)))})"
    f" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id"
)
_LAST_TURN = "SELECT MAX(created_at) FROM runs WHERE tenant_id = $1 AND conversation_id = $2"  # runs_conversation


def _sets(fields: dict[str, Any], first: int) -> tuple[str, list[Any]]:
    names = check_run_fields(fields)
    return "".join(f", {n} = ${first + i}" for i, n in enumerate(names)), [fields[n] for n in names]


class PgRunStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def create_run(self, run: Run) -> tuple[Run, bool]:
        check_new_run_status(run.status)
        run = dataclasses.replace(run, last_seq=0)
        async with self._db.tenant_tx(run.tenant_id) as c:
            if run.conversation_id is not None:
                run = after_last_turn(run, await c.fetchval(_LAST_TURN, run.tenant_id, run.conversation_id))
            try:
                inserted = await c.fetchval(_INSERT_RUN, *dataclasses.astuple(run))
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
            if inserted is None:  # the idempotency key is taken: hand back the first run
                row = await c.fetchrow(
                    f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND idempotency_key = $2",
                    run.tenant_id, run.idempotency_key,
                )
                return to_run(row), False
        return run, True

    async def get_run(self, tenant_id: str, run_id: str) -> Run | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND id = $2", tenant_id, run_id)
        return to_run(row) if row else None

    async def get_run_by_idempotency_key(self, tenant_id: str, key: str) -> Run | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND idempotency_key = $2",
                                   tenant_id, key)
        return to_run(row) if row else None

    async def get_run_any_tenant(self, run_id: str) -> Run | None:
        async with self._db.system_tx() as c:
            row = await c.fetchrow(f"SELECT {RUN_COLS} FROM runs WHERE id = $1", run_id)
        return to_run(row) if row else None

    async def list_runs(self, tenant_id: str, *, limit: int = 50, before: float | None = None,
                        user_id: str | None = None, project_id: str | None = None,
                        before_id: str | None = None, max_bytes: int | None = None) -> list[Run]:
        async with self._db.tenant_tx(tenant_id) as c:
            # summed over the page's rows only (at most ``limit``), inside the database
            rows = await c.fetch(
                f"SELECT {RUN_COLS} FROM (SELECT *, SUM(octet_length(input) + COALESCE(octet_length(output), 0))"
                "   OVER (ORDER BY created_at DESC, id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier"
                f" FROM (SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND ($2::float8 IS NULL OR created_at < $2"
                "   OR ($6::text IS NOT NULL AND created_at = $2 AND id < $6))"
                " AND ($4::text IS NULL OR user_id = $4) AND ($5::text IS NULL OR project_id = $5)"
                " ORDER BY created_at DESC, id DESC LIMIT $3) page) sized"
                " WHERE $7::bigint IS NULL OR earlier IS NULL OR earlier < $7::bigint"
                " ORDER BY created_at DESC, id DESC",
                tenant_id, before, _limit(limit), user_id, project_id, before_id,
                None if max_bytes is None else int(max_bytes),
            )
        return [to_run(r) for r in rows]

    async def list_runs_by_status(self, statuses: tuple[str, ...], limit: int = 1000) -> list[Run]:
        if not statuses or any(s not in RUN_STATUSES for s in statuses):
            raise StockadeError("input.invalid", f"statuses must be among {', '.join(RUN_STATUSES)}")
        async with self._db.system_tx() as c:
            rows = await c.fetch(
                f"SELECT {RUN_COLS} FROM runs WHERE status = ANY($1::text[]) ORDER BY created_at, id LIMIT $2",
                list(statuses), _limit(limit),
            )
        return [to_run(r) for r in rows]

    async def ended_among(self, run_ids: list[str]) -> set[str]:
        if not run_ids:
            return set()
        async with self._db.system_tx() as c:
            rows = await c.fetch("SELECT id FROM runs WHERE id = ANY($1::text[]) AND status = ANY($2::text[])",
                                 list(run_ids), list(TERMINAL_STATUSES))
        return {r["id"] for r in rows}

    async def start_run(self, tenant_id: str, run_id: str, *, worker_id: str, started_at: float) -> Run | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                f"UPDATE runs SET status = 'running', worker_id = $3, started_at = $4, seen_at = {_NOW}"
                f" WHERE tenant_id = $1 AND id = $2 AND status = 'queued' RETURNING {RUN_COLS}",
                tenant_id, run_id, worker_id, started_at,
            )
        return to_run(row) if row else None

    async def beat_runs(self, run_ids: list[str], worker_id: str) -> None:
        if not run_ids:
            return
        async with self._db.system_tx() as c:
            # One lock order for every beat. First the rows nobody holds: one run's row locked for long (a slow
            # writer, an operator's session) must not leave this worker's other runs unmarked - the sweepers
            # would end those healthy runs.
            marked = {r[0] for r in await c.fetch(
                f"UPDATE runs SET seen_at = {_NOW} WHERE id IN (SELECT id FROM runs WHERE id = ANY($1::text[])"
                f" AND status IN {_CARRIED_SQL} AND worker_id = $2 ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id",
                sorted(run_ids), worker_id)}
            rest = sorted(set(run_ids) - marked)
            if rest:
                # Then the held ones, waiting a little: usually their run's own event write holds the row for a
                # few ms, and a busy run skipped at every beat would look abandoned. Past the lock timeout only
                # these go unmarked until the next beat (a savepoint keeps the rest of the beat).
                await c.execute("SAVEPOINT beat_held; SET LOCAL lock_timeout = '1s'")
                try:
                    await c.execute(f"UPDATE runs SET seen_at = {_NOW} WHERE id = ANY($1::text[])"
                                    f" AND status IN {_CARRIED_SQL} AND worker_id = $2", rest, worker_id)
                except asyncpg.LockNotAvailableError:
                    await c.execute("ROLLBACK TO SAVEPOINT beat_held")
                await c.execute("RELEASE SAVEPOINT beat_held")

    async def hold(self, run_id: str, worker_id: str) -> bool:
        async with self._db.system_tx() as c:
            # now, or just past the value it had (a clock stepped back): a hold always changes seen_at. The row
            # lock orders it with a take_over: the one that waited re-checks its WHERE on the row the other left
            status = await c.execute(
                f"UPDATE runs SET seen_at = greatest({_NOW}, COALESCE(seen_at, 0) + 0.000001) WHERE id = $1"
                f" AND status IN {_CARRIED_SQL} AND worker_id = $2", run_id, worker_id)
        return status == "UPDATE 1"

    async def take_over(self, run_id: str, holder: str | None, seen_at: float | None, by: str) -> bool:
        if by == holder:  # the run would stay "holder"'s: its old holder's hold would still pass (lost.take_over)
            return False
        async with self._db.system_tx() as c:
            status = await c.execute(
                f"UPDATE runs SET worker_id = $4 WHERE id = $1 AND status IN {_CARRIED_SQL}"
                " AND worker_id IS NOT DISTINCT FROM $2::text AND seen_at IS NOT DISTINCT FROM $3::float8",
                run_id, holder, seen_at, by)
        return status == "UPDATE 1"

    async def quiet_runs(self, quiet_s: float, limit: int = 1000) -> list[tuple[Run, float]]:
        async with self._db.system_tx() as c:
            rows = await c.fetch(
                # the cutoff as a scalar subquery (an InitPlan): clock_timestamp() is volatile, and compared
                # directly it could not bound the runs_carried index scan, so every sweep of every node read
                # every carried run's row; this way it reads the quiet ones only
                f"SELECT {RUN_COLS}, seen_at FROM runs WHERE status IN {_CARRIED_SQL} AND seen_at <= (SELECT {_NOW} - $1)"
                " ORDER BY seen_at, id LIMIT $2",
                float(quiet_s), _limit(limit),
            )
        out = []
        for r in rows:
            d = dict(r)
            seen_at = d.pop("seen_at")
            out.append((to_run(d), seen_at))
        return out

    async def last_seen(self, run_id: str) -> float | None:
        async with self._db.system_tx() as c:
            return await c.fetchval(f"SELECT seen_at FROM runs WHERE id = $1 AND status IN {_CARRIED_SQL}", run_id)

    async def let_go(self, tenant_id: str, run_id: str) -> None:
        async with self._db.tenant_tx(tenant_id) as c:
            await c.execute(f"UPDATE runs SET seen_at = NULL WHERE tenant_id = $1 AND id = $2 AND status IN {_TERMINAL_SQL}"
                            " AND seen_at IS NOT NULL", tenant_id, run_id)

    async def keep_output(self, tenant_id: str, run_id: str, output: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            status = await c.execute(f"UPDATE runs SET output = $3 WHERE tenant_id = $1 AND id = $2"
                                     f" AND status IN {_TERMINAL_SQL} AND output IS NULL", tenant_id, run_id, output)
        return status == "UPDATE 1"

    async def stored_answer(self, tenant_id: str, run_id: str, max_bytes: int) -> str:
        async with self._db.tenant_tx(tenant_id) as c:
            text = await c.fetchval(
                "SELECT string_agg(t, '' ORDER BY seq) FROM (SELECT seq, data->>'text' AS t,"
                " sum(octet_length(data->>'text')) OVER (ORDER BY seq) AS total FROM run_events"
                " WHERE tenant_id = $1 AND run_id = $2 AND type = 'message.delta' AND data->>'channel' = 'answer'"
                " AND jsonb_typeof(data->'text') = 'string') x WHERE total <= $3", tenant_id, run_id, int(max_bytes))
        return text or ""

    async def held(self, tenant_id: str, run_id: str) -> float | None:
        async with self._db.tenant_tx(tenant_id) as c:
            age = await c.fetchval(f"SELECT greatest(0, {_NOW} - seen_at) FROM runs WHERE tenant_id = $1 AND id = $2"
                                   f" AND status IN {_TERMINAL_SQL} AND seen_at IS NOT NULL", tenant_id, run_id)
        return None if age is None else float(age)

    async def set_status(self, tenant_id: str, run_id: str, status: str, **fields: Any) -> Run | None:
        if status not in RUN_STATUSES or status in TERMINAL_STATUSES:
            raise StockadeError("input.invalid", f"set_status takes a non-terminal status, not {status!r}; use finish_run")
        sets, params = _sets(fields, 4)
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                f"UPDATE runs SET status = $3{sets} WHERE tenant_id = $1 AND id = $2 AND status NOT IN {_TERMINAL_SQL}"
                f" RETURNING {RUN_COLS}",
                tenant_id, run_id, status, *params,
            )
            if row is None and not await self._exists(c, tenant_id, run_id):
                raise StockadeError("not_found", "no such run")
        return to_run(row) if row else None

    @staticmethod
    async def _exists(c: Any, tenant_id: str, run_id: str) -> bool:
        return await c.fetchval("SELECT 1 FROM runs WHERE tenant_id = $1 AND id = $2", tenant_id, run_id) is not None

    async def append_event(self, tenant_id: str, run_id: str, type: str, data: dict[str, Any]) -> Event:
        payload = dumps(data, "event data")
        ts = time.time()
        if not isinstance(tenant_id, str) or not tenant_id:
            raise StockadeError("input.invalid", "tenant id must be a non-empty string")
        # One round trip (migration 0012); the commit does not wait for the WAL flush: events are
        # not money or audit, and their live copy is on the bus (see PgDB.tenant_tx(durable=False)).
        async with self._db.acquire() as c:
            row = await c.fetchrow("SELECT r_state, r_seq FROM stockade_event_append($1, $2, $3, $4::text::jsonb, $5)",
                                   tenant_id, run_id, type, payload, ts)
        if row is None or row["r_state"] == "missing":
            raise StockadeError("not_found", "no such run")
        if row["r_state"] == "ended":
            raise StockadeError("conflict", "the run has ended; no more events")
        return Event(run_id, int(row["r_seq"]), type, json.loads(payload), ts)

    async def finish_run(
        self, tenant_id: str, run_id: str, status: str, event_type: str, data: dict[str, Any], *,
        when_status: str | None = None, **fields: Any
    ) -> Event | None:
        if status not in TERMINAL_STATUSES:
            raise StockadeError("input.invalid", f"finish_run takes a terminal status, not {status!r}")
        payload = dumps(data, "event data")
        ts = time.time()
        fields.setdefault("ended_at", ts)
        sets, params = _sets(fields, 7)
        only = f" AND status = ${7 + len(params)}" if when_status is not None else ""
        async with self._db.tenant_tx(tenant_id) as c:
            seq = await c.fetchval(
                f"WITH r AS (UPDATE runs SET status = $3, last_seq = last_seq + 1{sets}"
                f"   WHERE tenant_id = $1 AND id = $2 AND status NOT IN {_TERMINAL_SQL}{only}"
                "   RETURNING tenant_id, id, last_seq)"
                " INSERT INTO run_events (tenant_id, run_id, seq, type, data, ts)"
                " SELECT tenant_id, id, last_seq, $4, $5::text::jsonb, $6 FROM r RETURNING seq",
                tenant_id, run_id, status, event_type, payload, ts, *params, *([when_status] if only else []),
            )
            if seq is None:
                if await self._exists(c, tenant_id, run_id):
                    return None
                raise StockadeError("not_found", "no such run")
        return Event(run_id, seq, event_type, json.loads(payload), ts)

    async def events_after(self, tenant_id: str, run_id: str, after: int, limit: int = 1000) -> list[Event]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                "SELECT run_id, seq, type, data, ts FROM run_events WHERE tenant_id = $1 AND run_id = $2 AND seq > $3"
                " ORDER BY seq LIMIT $4",
                tenant_id, run_id, after, _limit(limit),
            )
        return [Event(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def conversation_history(self, tenant_id: str, conversation_id: str, before_run: str,
                                   max_bytes: int | None = None) -> list[dict[str, str]]:
        """Turns of the conversation's runs created before ``before_run`` (all others if it is unknown), of the
        same user and project as ``before_run`` (none if it is unknown): a conversation id is not a way into
        another user's conversation (``Principal.sees``). ``max_bytes``: the newest runs only, whose inputs and
        outputs add up to at most that (summed newest first in the query: an old 8 MiB answer is never read)."""
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                "SELECT input, output FROM ("
                f"  SELECT r.input, r.output, r.created_at, r.id, SUM({HISTORY_RUN_BYTES} + octet_length(r.input)"
                "    + COALESCE(octet_length(r.output), 0)) OVER (ORDER BY r.created_at DESC, r.id DESC) AS total"
                "  FROM runs r LEFT JOIN runs a ON a.tenant_id = $1 AND a.id = $3"
                "  WHERE r.tenant_id = $1 AND r.conversation_id = $2 AND r.id <> $3"
                "    AND r.user_id IS NOT DISTINCT FROM a.user_id AND r.project_id IS NOT DISTINCT FROM a.project_id"
                "    AND (a.id IS NULL OR (r.created_at, r.id) < (a.created_at, a.id))"
                ") t WHERE $4::bigint IS NULL OR total <= $4::bigint"
                " ORDER BY created_at, id",
                tenant_id, conversation_id, before_run, None if max_bytes is None else int(max_bytes),
            )
        turns: list[dict[str, str]] = []
        for r in rows:
            turns.append({"role": "user", "content": r[0]})
            if r[1]:
                turns.append({"role": "assistant", "content": r[1]})
        return turns
