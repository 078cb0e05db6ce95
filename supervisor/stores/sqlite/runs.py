"""SQLite RunStore: runs, conversations and the durable per-run event log.

Sequence numbers come from ``runs.last_seq``, bumped in the same
``BEGIN IMMEDIATE`` transaction as the event insert, so they are gap-free even
with several processes writing the same file.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from typing import Any

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
from supervisor.stores.records import RUN_STATUSES, TERMINAL_STATUSES, Event, Run
from supervisor.stores.sqlite._rows import integrity_error, to_run
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteRunStore"]

_TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)) + ")"
_CARRIED_SQL = "('running', 'waiting_approval')"  # the statuses of a run a worker carries


def _assignments(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    names = check_run_fields(fields)
    return "".join(f", {n} = ?" for n in names), [fields[n] for n in names]


_LAST_TURN = "SELECT MAX(created_at) FROM runs WHERE tenant_id = ? AND conversation_id = ?"  # runs_conversation


class SqliteRunStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    def _exists(self, c: sqlite3.Connection, tenant_id: str, run_id: str) -> bool:
        return c.execute("SELECT 1 FROM runs WHERE tenant_id = ? AND id = ?", (tenant_id, run_id)).fetchone() is not None

    async def create_run(self, run: Run) -> tuple[Run, bool]:
        check_new_run_status(run.status)
        run = dataclasses.replace(run, last_seq=0)
        with self._db.tx() as c:
            if run.idempotency_key is not None:
                row = c.execute(
                    f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = ? AND idempotency_key = ?",
                    (run.tenant_id, run.idempotency_key),
                ).fetchone()
                if row is not None:
                    return to_run(row), False
            if run.conversation_id is not None:
                run = after_last_turn(run, c.execute(_LAST_TURN, (run.tenant_id, run.conversation_id)).fetchone()[0])
            values = dataclasses.astuple(run)
            try:
                c.execute(f"INSERT INTO runs ({RUN_COLS}) VALUES ({', '.join('?' * len(values))})", values)
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc) from None
        return run, True

    async def get_run(self, tenant_id: str, run_id: str) -> Run | None:
        row = self._db.query_one(f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = ? AND id = ?", (tenant_id, run_id))
        return to_run(row) if row else None

    async def get_run_by_idempotency_key(self, tenant_id: str, key: str) -> Run | None:
        row = self._db.query_one(f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = ? AND idempotency_key = ?",
                                 (tenant_id, key))
        return to_run(row) if row else None

    async def get_run_any_tenant(self, run_id: str) -> Run | None:
        row = self._db.query_one(f"SELECT {RUN_COLS} FROM runs WHERE id = ?", (run_id,))
        return to_run(row) if row else None

    async def list_runs(self, tenant_id: str, *, limit: int = 50, before: float | None = None,
                        user_id: str | None = None, project_id: str | None = None,
                        before_id: str | None = None, max_bytes: int | None = None) -> list[Run]:
        sql = f"SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?"
        params: list[Any] = [tenant_id]
        if before is not None and before_id is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [before, before, before_id]
            before = None
        for column, value in (("created_at <", before), ("user_id =", user_id), ("project_id =", project_id)):
            if value is not None:
                sql += f" AND {column} ?"
                params.append(value)
        params.append(_limit(limit))
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        if max_bytes is not None:  # summed over the page's rows only (at most ``limit``), inside the database
            sql = (f"SELECT {RUN_COLS} FROM (SELECT {RUN_COLS}, SUM(length(CAST(input AS BLOB))"
                   " + COALESCE(length(CAST(output AS BLOB)), 0)) OVER (ORDER BY created_at DESC, id DESC"
                   f" ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier FROM ({sql}))"
                   " WHERE earlier IS NULL OR earlier < ? ORDER BY created_at DESC, id DESC")
            params.append(int(max_bytes))
        return [to_run(r) for r in self._db.query(sql, params)]

    async def list_runs_by_status(self, statuses: tuple[str, ...], limit: int = 1000) -> list[Run]:
        if not statuses or any(s not in RUN_STATUSES for s in statuses):
            raise StockadeError("input.invalid", f"statuses must be among {', '.join(RUN_STATUSES)}")
        marks = ", ".join("?" * len(statuses))
        rows = self._db.query(
            f"SELECT {RUN_COLS} FROM runs WHERE status IN ({marks}) ORDER BY created_at, id LIMIT ?",
            (*statuses, _limit(limit)),
        )
        return [to_run(r) for r in rows]

    async def ended_among(self, run_ids: list[str]) -> set[str]:
        ended: set[str] = set()
        for i in range(0, len(run_ids), 500):  # pages of 500 ids: well under any bound-parameter limit
            chunk = run_ids[i:i + 500]
            rows = self._db.query(
                f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(chunk))}) AND status IN {_TERMINAL_SQL}", chunk)
            ended.update(r[0] for r in rows)
        return ended

    async def start_run(self, tenant_id: str, run_id: str, *, worker_id: str, started_at: float) -> Run | None:
        with self._db.tx() as c:
            row = c.execute(
                "UPDATE runs SET status = 'running', worker_id = ?, started_at = ?, seen_at = ?"
                f" WHERE tenant_id = ? AND id = ? AND status = 'queued' RETURNING {RUN_COLS}",
                (worker_id, started_at, time.time(), tenant_id, run_id),
            ).fetchone()
        return to_run(row) if row else None

    async def beat_runs(self, run_ids: list[str], worker_id: str) -> None:
        now = time.time()

        def beat(c: sqlite3.Connection) -> None:
            for i in range(0, len(run_ids), 500):
                chunk = run_ids[i:i + 500]
                c.execute(f"UPDATE runs SET seen_at = ? WHERE id IN ({', '.join('?' * len(chunk))})"
                          f" AND status IN {_CARRIED_SQL} AND worker_id = ?", (now, *chunk, worker_id))

        if run_ids:
            await self._db.write(beat)

    async def hold(self, run_id: str, worker_id: str) -> bool:
        def hold(c: sqlite3.Connection) -> int:
            # now, or just past the value it had (a clock stepped back): a hold always changes seen_at
            return c.execute(f"UPDATE runs SET seen_at = MAX(?, COALESCE(seen_at, 0) + 0.000001) WHERE id = ?"
                             f" AND status IN {_CARRIED_SQL} AND worker_id = ?", (time.time(), run_id, worker_id)).rowcount

        return await self._db.write(hold, one_statement=True) == 1

    async def take_over(self, run_id: str, holder: str | None, seen_at: float | None, by: str) -> bool:
        if by == holder:  # the run would stay "holder"'s: its old holder's hold would still pass (lost.take_over)
            return False

        def take(c: sqlite3.Connection) -> int:
            return c.execute(f"UPDATE runs SET worker_id = ? WHERE id = ? AND status IN {_CARRIED_SQL}"
                             " AND worker_id IS ? AND seen_at IS ?", (by, run_id, holder, seen_at)).rowcount

        return await self._db.write(take, one_statement=True) == 1

    async def quiet_runs(self, quiet_s: float, limit: int = 1000) -> list[tuple[Run, float]]:
        rows = self._db.query(
            f"SELECT {RUN_COLS}, seen_at FROM runs WHERE status IN {_CARRIED_SQL} AND seen_at <= ?"
            " ORDER BY seen_at, id LIMIT ?",
            (time.time() - float(quiet_s), _limit(limit)),
        )
        out = []
        for r in rows:
            d = dict(r)
            seen_at = d.pop("seen_at")
            out.append((Run(**d), seen_at))
        return out

    async def last_seen(self, run_id: str) -> float | None:
        rows = self._db.query(f"SELECT seen_at FROM runs WHERE id = ? AND status IN {_CARRIED_SQL}", (run_id,))
        return rows[0][0] if rows else None

    async def let_go(self, tenant_id: str, run_id: str) -> None:
        await self._db.write(lambda c: c.execute(
            f"UPDATE runs SET seen_at = NULL WHERE tenant_id = ? AND id = ? AND status IN {_TERMINAL_SQL}"
            " AND seen_at IS NOT NULL", (tenant_id, run_id)), one_statement=True)

    async def keep_output(self, tenant_id: str, run_id: str, output: str) -> bool:
        def keep(c: sqlite3.Connection) -> int:
            return c.execute(f"UPDATE runs SET output = ? WHERE tenant_id = ? AND id = ? AND status IN {_TERMINAL_SQL}"
                             " AND output IS NULL", (output, tenant_id, run_id)).rowcount

        return await self._db.write(keep, one_statement=True) == 1

    async def stored_answer(self, tenant_id: str, run_id: str, max_bytes: int) -> str:
        rows = self._db.query(
            "SELECT t FROM (SELECT seq, json_extract(data, '$.text') AS t, SUM(length(CAST(json_extract(data, '$.text')"
            " AS BLOB))) OVER (ORDER BY seq) AS total FROM run_events WHERE tenant_id = ? AND run_id = ?"
            " AND type = 'message.delta' AND json_extract(data, '$.channel') = 'answer'"
            " AND json_type(data, '$.text') = 'text') WHERE total <= ? ORDER BY seq",
            (tenant_id, run_id, int(max_bytes)))
        return "".join(r[0] for r in rows)

    async def held(self, tenant_id: str, run_id: str) -> float | None:
        row = self._db.query_one(f"SELECT seen_at FROM runs WHERE tenant_id = ? AND id = ? AND status IN {_TERMINAL_SQL}"
                                 " AND seen_at IS NOT NULL", (tenant_id, run_id))
        return None if row is None else max(0.0, time.time() - row[0])

    async def set_status(self, tenant_id: str, run_id: str, status: str, **fields: Any) -> Run | None:
        if status not in RUN_STATUSES or status in TERMINAL_STATUSES:
            raise StockadeError("input.invalid", f"set_status takes a non-terminal status, not {status!r}; use finish_run")
        sets, params = _assignments(fields)
        with self._db.tx() as c:
            row = c.execute(
                f"UPDATE runs SET status = ?{sets} WHERE tenant_id = ? AND id = ? AND status NOT IN {_TERMINAL_SQL}"
                f" RETURNING {RUN_COLS}",
                (status, *params, tenant_id, run_id),
            ).fetchone()
            if row is None and not self._exists(c, tenant_id, run_id):
                raise StockadeError("not_found", "no such run")
        return to_run(row) if row else None

    async def append_event(self, tenant_id: str, run_id: str, type: str, data: dict[str, Any]) -> Event:
        payload = dumps(data, "event data")
        ts = time.time()

        def append(c: sqlite3.Connection) -> int:
            row = c.execute(
                f"UPDATE runs SET last_seq = last_seq + 1 WHERE tenant_id = ? AND id = ? AND status NOT IN {_TERMINAL_SQL}"
                " RETURNING last_seq",
                (tenant_id, run_id),
            ).fetchone()
            if row is None:
                if self._exists(c, tenant_id, run_id):
                    raise StockadeError("conflict", "the run has ended; no more events")
                raise StockadeError("not_found", "no such run")
            c.execute(
                "INSERT INTO run_events (tenant_id, run_id, seq, type, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, run_id, row[0], type, payload, ts),
            )
            return int(row[0])

        # group commit with this loop turn's other writes; append raises only before its UPDATE changes a row
        seq = await self._db.write(append, raises_before_writing=True)
        return Event(run_id, seq, type, json.loads(payload), ts)

    async def finish_run(
        self, tenant_id: str, run_id: str, status: str, event_type: str, data: dict[str, Any], *,
        when_status: str | None = None, **fields: Any
    ) -> Event | None:
        if status not in TERMINAL_STATUSES:
            raise StockadeError("input.invalid", f"finish_run takes a terminal status, not {status!r}")
        payload = dumps(data, "event data")
        ts = time.time()
        fields.setdefault("ended_at", ts)
        sets, params = _assignments(fields)
        only = " AND status = ?" if when_status is not None else ""
        with self._db.tx() as c:
            row = c.execute(
                f"UPDATE runs SET status = ?, last_seq = last_seq + 1{sets}"
                f" WHERE tenant_id = ? AND id = ? AND status NOT IN {_TERMINAL_SQL}{only} RETURNING last_seq",
                (status, *params, tenant_id, run_id, *([when_status] if only else [])),
            ).fetchone()
            if row is None:
                if self._exists(c, tenant_id, run_id):
                    return None
                raise StockadeError("not_found", "no such run")
            seq = row[0]
            c.execute(
                "INSERT INTO run_events (tenant_id, run_id, seq, type, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, run_id, seq, event_type, payload, ts),
            )
        return Event(run_id, seq, event_type, json.loads(payload), ts)

    async def events_after(self, tenant_id: str, run_id: str, after: int, limit: int = 1000) -> list[Event]:
        rows = self._db.query(
            "SELECT run_id, seq, type, data, ts FROM run_events WHERE tenant_id = ? AND run_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (tenant_id, run_id, after, _limit(limit)),
        )
        return [Event(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    async def conversation_history(self, tenant_id: str, conversation_id: str, before_run: str,
                                   max_bytes: int | None = None) -> list[dict[str, str]]:
        """Turns of the conversation's runs created before ``before_run`` (all others if it is unknown), of the
        same user and project as ``before_run`` (none if it is unknown): a conversation id is not a way into
        another user's conversation (``Principal.sees``). ``max_bytes``: the newest runs only, whose inputs and
        outputs add up to at most that (summed newest first in the query: an old 8 MiB answer is never read)."""
        anchor = self._db.query_one(
            "SELECT created_at, id, user_id, project_id FROM runs WHERE tenant_id = ? AND id = ?", (tenant_id, before_run))
        where = "WHERE tenant_id = ? AND conversation_id = ? AND id <> ? AND user_id IS ? AND project_id IS ?"
        params: list[Any] = [tenant_id, conversation_id, before_run,
                             anchor[2] if anchor else None, anchor[3] if anchor else None]
        if anchor is not None:
            where += " AND (created_at, id) < (?, ?)"
            params += [anchor[0], anchor[1]]
        sql = (f"SELECT input, output, created_at, id, SUM({HISTORY_RUN_BYTES} + length(CAST(input AS BLOB))"
               " + COALESCE(length(CAST(output AS BLOB)), 0)) OVER (ORDER BY created_at DESC, id DESC) AS total"
               f" FROM runs {where}")
        if max_bytes is not None:
            sql = f"SELECT input, output, created_at, id FROM ({sql}) WHERE total <= ?"
            params.append(int(max_bytes))
        turns: list[dict[str, str]] = []
        for r in self._db.query(f"SELECT input, output FROM ({sql}) ORDER BY created_at, id", params):
            turns.append({"role": "user", "content": r[0]})
            if r[1]:
                turns.append({"role": "assistant", "content": r[1]})
        return turns
