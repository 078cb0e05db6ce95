"""PostgreSQL ledger: stored functions, one round trip each, with natural batching per tenant.

Every reservation of a tenant queues on the tenant's hold row and every
settlement on its settlement row, each lock held through a WAL flush
(migrations/postgres/0010_ledger.sql). So the ``reserve()`` calls of one tenant
that arrive while one of its reserves is in flight are coalesced into ONE
stored-function call (``stockade_ledger_reserve_batch``, 0011), and likewise
``commit()``: an idle tenant's caller goes at once, alone, through the cheaper
single-item function; the callers that arrive meanwhile go together in the next
call. No timer, so a lone caller waits for nothing; under load N callers share one
lock acquisition, one round trip and one flush. Each item keeps its own outcome
(ok, duplicate, over a cap, missing, late) exactly as if the calls had run one
after another.

The functions lock every row a statement touches in one ascending order before
changing any (FACTS.md: heap order deadlocks), and scope themselves to the tenant
(role ``stockade_app`` + ``stockade.tenant_id``) so row-level security applies
exactly as in ``PgDB.tenant_tx``. Each is called outside an explicit transaction:
the statement is its own transaction, so a cut connection leaves all of a batch or
none of it, and every caller of a call that failed gets ``ledger.unavailable``
(fail closed; nothing is retried after an ambiguous cut, only after PostgreSQL
aborted the whole call).

Every tier is metered on two account rows, its month's and its lifetime one, and the
cap checks the row of its own period kind (0043; supervisor/budget/periods.py says why):
the functions find the rows by period key alone, so a cap switched mid-call needs no retry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from supervisor.budget import check_amount, check_cap, check_scopes, exceeded_error, period_key, tier_order
from supervisor.errors import StockadeError
from supervisor.stores.postgres.db import UNAVAILABLE_ERRORS, PgDB
from supervisor.stores.records import BudgetAccount, CapSpec, LedgerEntry, Reservation

__all__ = ["PgLedger"]

_SWEEP_BATCH = 1000
_ACQUIRE_TIMEOUT_S = 10.0  # as PgDB.acquire: a pool that gives nothing fails closed
_SPARES = 2  # pooled connections kept between back-to-back calls (see PgLedger._lease)
_BATCH_LIMIT = 64  # items per stored-function call: bounds the statement, not the wait
_EXCEEDED = "SB001"  # raised by stockade_ledger_reserve: the transaction aborted, nothing changed
# PostgreSQL aborts a deadlocked (or serialization-failed) transaction whole, so retrying
# the call (every item of its batch) is safe. A deadlock can only arise while two first
# users create the same period's account rows, or when one reservation id is reserved at
# once by a lone call (0010's order: the reservation row, then the holds) and by a batch
# (the holds, then the reservation rows) - a client repeating itself across two nodes.
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)

_RESERVE_ONE = "SELECT r_status FROM stockade_ledger_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_RESERVE_MANY = "SELECT * FROM stockade_ledger_reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_COMMIT_ONE = "SELECT * FROM stockade_ledger_commit($1, $2, $3, $4, $5)"
_COMMIT_MANY = "SELECT * FROM stockade_ledger_commit_batch($1, $2, $3, $4, $5)"


def _unavailable() -> StockadeError:
    return StockadeError("ledger.unavailable", "The budget ledger cannot be reached; the call was not run.")


@asynccontextmanager
async def _ledger_errors() -> AsyncIterator[None]:
    """Any "cannot reach the database" becomes ``ledger.unavailable`` (fail closed)."""
    try:
        yield
    except StockadeError as exc:
        if exc.code == "store.unavailable":
            raise _unavailable() from exc
        raise
    except UNAVAILABLE_ERRORS as exc:
        raise _unavailable() from exc
    except asyncpg.exceptions.ForeignKeyViolationError:
        raise StockadeError("not_found", "no such tenant") from None


def _text(value: Any, what: str, *, optional: bool = False) -> None:
    """A string PostgreSQL takes as text. Checked before queuing: one bad item must not sink a batch."""
    if value is None and optional:
        return
    if not isinstance(value, str) or (not value and not optional) or "\x00" in value:
        raise StockadeError("input.invalid", f"invalid {what}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StockadeError("input.invalid", f"invalid {what}") from None


def _copy_error(exc: BaseException) -> BaseException:
    """Each waiter raises its own exception object (a shared one would collect every waiter's traceback)."""
    if isinstance(exc, StockadeError):
        return StockadeError(exc.code, exc.detail, **exc.extra)
    return exc


class _Waiter:
    __slots__ = ("args", "future", "key")

    def __init__(self, key: str, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.key = key
        self.args = args
        self.future = future

    def resolve(self, outcome: Any) -> None:
        if not self.future.done():  # done: its caller was cancelled meanwhile
            self.future.set_result(outcome)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Coalescer:
    """Natural batching of one operation, per tenant.

    An idle tenant's caller goes at once, alone and in its own task (no hand-off, so
    a lone caller pays nothing for batching). Callers that arrive while a call is in
    flight queue; when it returns, a drain task sends everything queued as the next
    call, and so on until the queue is empty. No timer: nobody waits for company.
    An id already in the batch being built waits for the next one (it must see the
    first one's outcome). ``one(tenant, args)`` returns an outcome or raises;
    ``many(tenant, batch)`` resolves or fails every waiter it is given.
    """

    def __init__(self, one: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
                 many: Callable[[str, list[_Waiter]], Awaitable[None]], on_idle: Callable[[], None]) -> None:
        self._one = one
        self._many = many
        self._on_idle = on_idle
        self._queues: dict[str, list[_Waiter]] = {}  # a tenant is busy while it has a queue here
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # stored-function calls made, and the items they carried (tests, bench)
        self.items = 0

    @property
    def busy(self) -> bool:
        return bool(self._queues)

    async def submit(self, tenant: str, key: str, args: tuple[Any, ...]) -> Any:
        queue = self._queues.get(tenant)
        if queue is not None:
            waiter = _Waiter(key, args, asyncio.get_running_loop().create_future())
            queue.append(waiter)
            return await waiter.future
        self._queues[tenant] = []
        self.calls += 1
        self.items += 1
        try:
            return await self._one(tenant, args)
        finally:
            self._next(tenant, None)

    def _next(self, tenant: str, task: asyncio.Task[None] | None) -> list[_Waiter]:
        """The next batch from the queue (a drain task is started for it unless ``task`` runs already)."""
        queue = self._queues[tenant]
        batch: list[_Waiter] = []
        keys: set[str] = set()
        rest: list[_Waiter] = []
        for w in queue:
            if w.future.done():  # cancelled before its batch left: it never runs
                continue
            if w.key in keys or len(batch) == _BATCH_LIMIT:
                rest.append(w)
            else:
                keys.add(w.key)
                batch.append(w)
        queue[:] = rest
        if not batch:
            del self._queues[tenant]
            self._on_idle()
        elif task is None:
            t = asyncio.get_running_loop().create_task(self._drain(tenant, batch))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        return batch

    async def _drain(self, tenant: str, batch: list[_Waiter]) -> None:
        me = asyncio.current_task()
        try:
            while batch:
                self.calls += 1
                self.items += len(batch)
                await self._many(tenant, batch)
                batch = self._next(tenant, me)
        finally:
            if batch:  # only if this task died: fail closed, never hang
                for w in (*batch, *self._queues.get(tenant, ())):
                    w.fail(_unavailable())
                self._queues.pop(tenant, None)
                self._on_idle()


class PgLedger:
    """``Ledger`` port over a ``PgDB``."""

    def __init__(self, db: PgDB) -> None:
        self.db = db
        self._spares: list[Any] = []  # see _lease
        self._spare_check = False
        self._inflight = 0
        self._retries = 0
        self._releasing: set[asyncio.Task[None]] = set()
        self._reserves = _Coalescer(self._reserve_one, self._batched(self._reserve_one, self._reserve_batch),
                                    self._maybe_idle)
        self._commits = _Coalescer(self._commit_one, self._batched(self._commit_one, self._commit_batch),
                                   self._maybe_idle)

    def _batched(self, one: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
                 many: Callable[[str, list[tuple[Any, ...]]], Awaitable[list[Any]]],
                 ) -> Callable[[str, list[_Waiter]], Awaitable[None]]:
        """A coalescer's call for a batch: one item through ``one``, several through ``many``; every waiter
        resolved with its own outcome, or failed (see _settle_failure)."""
        async def run(tenant: str, batch: list[_Waiter]) -> None:
            try:
                if len(batch) == 1:
                    outcomes = [await one(tenant, batch[0].args)]
                else:
                    outcomes = await many(tenant, [w.args for w in batch])
            except Exception as exc:
                await self._settle_failure(tenant, batch, exc, run)
                return
            for w, outcome in zip(batch, outcomes, strict=True):
                w.resolve(outcome)

        return run

    @property
    def batching(self) -> dict[str, int]:
        """Stored-function calls and items so far, per operation (items/calls = mean batch size),
        and calls retried whole after a deadlock or serialization failure."""
        return {"reserve_calls": self._reserves.calls, "reserve_items": self._reserves.items,
                "commit_calls": self._commits.calls, "commit_items": self._commits.items, "retries": self._retries}

    async def _call(self, sql: str, *args: Any, retries: int = 2) -> list[asyncpg.Record]:
        self._inflight += 1
        try:
            async with _ledger_errors():
                for attempt in range(retries + 1):
                    conn = await self._lease()
                    healthy = False
                    try:
                        rows = await conn.fetch(sql, *args)
                        healthy = True
                        return rows
                    except _RETRYABLE:
                        healthy = True  # the server rolled the statement back; the connection is fine
                        self._retries += 1
                        if attempt == retries:
                            raise
                    finally:
                        await self._unlease(conn, healthy)
                raise AssertionError("unreachable")
        finally:
            self._inflight -= 1
            self._maybe_idle()

    # A pooled connection costs ~40-70 us of client CPU to acquire and release (FACTS.md:
    # pool.acquire per op halves SELECT 1 throughput). So a call that ends keeps its
    # connection as a spare (at most _SPARES: one per operation in flight under load),
    # which the next call takes. Once the ledger has nothing in flight for a whole
    # event-loop turn, the spares go back to the pool: back-to-back calls (the next
    # reserve or commit of a tight loop) reuse them, an idle ledger holds nothing, and
    # other users of the pool never wait on it.

    @property
    def _busy(self) -> bool:
        return bool(self._inflight or self._reserves.busy or self._commits.busy)

    async def _lease(self) -> Any:
        while self._spares:
            conn = self._spares.pop()
            if not conn.is_closed():
                return conn
            await self.db.pool.release(conn)
        try:
            return await self.db.pool.acquire(timeout=_ACQUIRE_TIMEOUT_S)
        except asyncpg.PostgresError as exc:  # refused at connect (database not accepting connections...)
            raise _unavailable() from exc

    async def _unlease(self, conn: Any, healthy: bool) -> None:
        if healthy and len(self._spares) < _SPARES and not conn.is_closed():
            self._spares.append(conn)
        else:
            await self.db.pool.release(conn)

    def _maybe_idle(self) -> None:
        if self._spares and not self._spare_check and not self._busy:
            self._spare_check = True
            asyncio.get_running_loop().call_soon(self._spare_turn)

    def _spare_turn(self) -> None:
        self._spare_check = False
        if self._busy:  # taken up again meanwhile: whoever ends last checks again
            return
        loop = asyncio.get_running_loop()
        while self._spares:
            task = loop.create_task(self.db.pool.release(self._spares.pop()))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def set_cap(self, tenant_id: str, scope: str, scope_id: str, cap_micro: int, period: str = "month") -> BudgetAccount:
        return (await self.set_caps(tenant_id, [(scope, scope_id, cap_micro, period)]))[0]

    async def set_caps(self, tenant_id: str, caps: Sequence[CapSpec]) -> list[BudgetAccount]:
        for scope, scope_id, cap_micro, period in caps:  # every cap checked before any is written
            check_cap(tenant_id, scope, scope_id, cap_micro, period)
        now = time.time()
        out: dict[int, BudgetAccount] = {}
        # Cap rows are locked in one order (scope, scope_id), whatever the request's: two PUTs naming the same
        # accounts in opposite orders (two API nodes) deadlocked, and one failed as ledger.unavailable.
        order = sorted(range(len(caps)), key=lambda k: (caps[k][0], caps[k][1]))
        async with _ledger_errors(), self.db.tenant_tx(tenant_id) as conn:
            for k in order:
                scope, scope_id, cap_micro, period = caps[k]
                # Insert first: a concurrent first cap of this account (another node, not committed yet) is
                # invisible to a SELECT, which read "no cap" and the audit said previous: null though this
                # write replaced that one. The insert waits for it, and then the row is read FOR UPDATE.
                was = None
                inserted = await conn.fetchval(
                    """INSERT INTO budget_caps (tenant_id, scope, scope_id, cap_micro, period, updated_at)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (tenant_id, scope, scope_id) DO NOTHING RETURNING true""",
                    tenant_id, scope, scope_id, cap_micro, period, now,
                )
                if not inserted:
                    # FOR UPDATE: a concurrent change of the cap waits, so "previous" is the value this one replaced
                    was = await conn.fetchrow(
                        "SELECT cap_micro, period FROM budget_caps WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3"
                        " FOR UPDATE",
                        tenant_id, scope, scope_id,
                    )
                    await conn.execute(
                        "UPDATE budget_caps SET cap_micro = $4, period = $5, updated_at = $6"
                        " WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3",
                        tenant_id, scope, scope_id, cap_micro, period, now,
                    )
                row = await conn.fetchrow(
                    "SELECT spent_micro, reserved_micro FROM budget_accounts"
                    " WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3 AND period_key = $4",
                    tenant_id, scope, scope_id, period_key(now, period),
                )
                out[k] = BudgetAccount(
                    tenant_id, scope, scope_id, cap_micro, period, period_key(now, period),
                    int(row["spent_micro"]) if row else 0, int(row["reserved_micro"]) if row else 0,
                    int(was["cap_micro"]) if was else None, was["period"] if was else None,
                )
        return [out[k] for k in range(len(caps))]

    async def accounts(self, tenant_id: str, now: float) -> list[BudgetAccount]:
        month = period_key(now, "month")
        async with _ledger_errors(), self.db.tenant_tx(tenant_id) as conn:
            rows = await conn.fetch(
                """SELECT c.scope, c.scope_id, c.cap_micro, c.period,
                          CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE $2 END AS period_key,
                          coalesce(a.spent_micro, 0) AS spent_micro, coalesce(a.reserved_micro, 0) AS reserved_micro
                     FROM budget_caps c
                     LEFT JOIN budget_accounts a
                       ON a.tenant_id = c.tenant_id AND a.scope = c.scope AND a.scope_id = c.scope_id
                      AND a.period_key = CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE $2 END
                    WHERE c.tenant_id = $1""",
                tenant_id, month,
            )
        accounts = [
            BudgetAccount(tenant_id, r["scope"], r["scope_id"], int(r["cap_micro"]), r["period"], r["period_key"],
                          int(r["spent_micro"]), int(r["reserved_micro"]))
            for r in rows
        ]
        return sorted(accounts, key=lambda a: tier_order(a.scope, a.scope_id))

    # --- reserve

    async def reserve(
        self, tenant_id: str, scopes: list[tuple[str, str]], amount_micro: int, *,
        reservation_id: str, run_id: str | None, expires_at: float, now: float,
    ) -> Reservation:
        tiers = check_scopes(scopes)
        check_amount(amount_micro)
        _text(tenant_id, "tenant id")
        if not isinstance(reservation_id, str) or not reservation_id:
            raise StockadeError("input.invalid", "a reservation needs an id")
        _text(reservation_id, "reservation id")
        _text(run_id, "run id", optional=True)
        item = (tiers, amount_micro, reservation_id, run_id, float(expires_at), float(now), period_key(now, "month"))
        outcome = await self._reserves.submit(tenant_id, reservation_id, item)
        if outcome[0] == "exceeded":
            _, scope, scope_id, cap, remaining = outcome
            raise exceeded_error(scope, scope_id, cap, remaining, amount_micro)
        if outcome[0] == "duplicate":
            raise StockadeError("conflict", f"reservation {reservation_id} already exists")
        return Reservation(reservation_id, tenant_id, run_id, amount_micro, tuple(tiers), float(expires_at), "held")

    async def _reserve_one(self, tenant: str, item: tuple[Any, ...]) -> tuple[Any, ...]:
        tiers, amount, rid, run, expires, now, month = item
        try:
            rows = await self._call(_RESERVE_ONE, tenant, [s for s, _ in tiers], [i for _, i in tiers], month, amount,
                                    rid, run, expires, now)
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) != _EXCEEDED:
                raise
            tier = json.loads(exc.detail or "{}")
            return ("exceeded", tier["scope"], tier["scope_id"], tier["cap"], tier["remaining"])
        return (rows[0]["r_status"],)

    async def _reserve_batch(self, tenant: str, items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        tier_items: list[int] = []
        scopes: list[str] = []
        scope_ids: list[str] = []
        for n, (tiers, *_rest) in enumerate(items, 1):
            for scope, scope_id in tiers:
                tier_items.append(n)
                scopes.append(scope)
                scope_ids.append(scope_id)
        rows = await self._call(
            _RESERVE_MANY, tenant, [it[2] for it in items], [it[3] for it in items], [it[1] for it in items],
            [it[6] for it in items], [it[4] for it in items], [it[5] for it in items], tier_items, scopes, scope_ids,
        )
        outcomes: list[tuple[Any, ...] | None] = [None] * len(items)
        for r in rows:
            status = r["r_status"]
            outcomes[r["r_item"] - 1] = (
                (status, r["r_scope"], r["r_scope_id"], int(r["r_cap"]), int(r["r_remaining"]))
                if status == "exceeded" else (status,)
            )
        if any(o is None or o[0] not in ("ok", "duplicate", "exceeded") for o in outcomes):
            raise _unavailable() from None  # an incomplete answer fails closed, never a silent ok
        return outcomes  # type: ignore[return-value]

    async def _settle_failure(self, tenant: str, batch: list[_Waiter], exc: Exception,
                              rerun: Callable[[str, list[_Waiter]], Awaitable[None]]) -> None:
        """A failed call changed nothing (one statement, aborted whole) or is ambiguous (cut).

        Unreachable / cut: every waiter gets ``ledger.unavailable``. Another database error
        in a batch of several: run each item alone, so one bad item cannot sink the others.
        """
        if len(batch) > 1 and isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, UNAVAILABLE_ERRORS):
            for w in batch:
                await rerun(tenant, [w])
            return
        for w in batch:
            w.fail(_copy_error(exc))

    # --- commit

    async def commit(
        self, tenant_id: str, reservation_id: str, actual_micro: int, *, tool: str | None, now: float,
    ) -> list[LedgerEntry]:
        check_amount(actual_micro, "actual cost")
        _text(tenant_id, "tenant id")
        _text(reservation_id, "reservation id")
        _text(tool, "tool name", optional=True)
        outcome = await self._commits.submit(tenant_id, reservation_id, (reservation_id, actual_micro, tool, float(now)))
        if outcome[0] == "late":  # released before: charged late, alone, by the function that takes the hold locks
            outcome = self._commit_outcome(await self._call(_COMMIT_ONE, tenant_id, reservation_id, actual_micro, tool,
                                                            float(now)))
        if outcome[0] == "missing":
            raise StockadeError("not_found", f"no reservation {reservation_id}")
        return [
            LedgerEntry(int(r["r_id"]), tenant_id, r["r_scope"], r["r_scope_id"], r["r_period_key"], int(r["r_amount"]),
                        reservation_id, r["r_run"], r["r_tool"], float(r["r_ts"]), dict(r["r_detail"] or {}))
            for r in outcome[1]
        ]

    @staticmethod
    def _commit_outcome(rows: list[asyncpg.Record]) -> tuple[Any, ...]:
        if rows and rows[0]["r_status"] == "missing":
            return ("missing",)
        return ("entries", [r for r in rows if r["r_status"] == "entry"])

    async def _commit_one(self, tenant: str, item: tuple[Any, ...]) -> tuple[Any, ...]:
        rid, actual, tool, now = item
        return self._commit_outcome(await self._call(_COMMIT_ONE, tenant, rid, actual, tool, now))

    async def _commit_batch(self, tenant: str, items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        rows = await self._call(_COMMIT_MANY, tenant, [it[0] for it in items], [it[1] for it in items],
                                [it[2] for it in items], [it[3] for it in items])
        status: list[str | None] = [None] * len(items)
        entries: list[list[asyncpg.Record]] = [[] for _ in items]
        for r in rows:
            k = r["r_item"] - 1
            if r["r_status"] == "entry":
                entries[k].append(r)
            else:
                status[k] = r["r_status"]
        outcomes: list[tuple[Any, ...]] = []
        for s, e in zip(status, entries, strict=True):
            if s in ("settled", "committed"):
                outcomes.append(("entries", e))
            elif s in ("missing", "late"):
                outcomes.append((s,))
            else:
                raise _unavailable() from None  # an incomplete answer fails closed
        return outcomes

    # --- release, sweep, entries

    async def release(self, tenant_id: str, reservation_id: str) -> None:
        await self._call("SELECT stockade_ledger_release($1, $2, NULL, $3)", tenant_id, reservation_id, time.time())

    async def release_run(self, tenant_id: str, run_id: str) -> int:
        rows = await self._call("SELECT stockade_ledger_release($1, NULL, $2, $3) AS n", tenant_id, run_id, time.time())
        return int(rows[0]["n"])

    async def sweep(self, now: float) -> int:
        total = 0
        while True:
            rows = await self._call("SELECT stockade_ledger_sweep($1, $2) AS n", float(now), _SWEEP_BATCH)
            n = int(rows[0]["n"])
            total += n
            if n < _SWEEP_BATCH:
                return total

    async def entries(self, tenant_id: str, *, after_id: int = 0, limit: int = 100) -> list[LedgerEntry]:
        if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
            raise StockadeError("input.invalid", "after_id must be a non-negative integer")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise StockadeError("input.invalid", "limit must be between 1 and 1000")
        async with _ledger_errors(), self.db.tenant_tx(tenant_id) as conn:
            rows = await conn.fetch(
                """SELECT id, scope, scope_id, period_key, amount_micro, reservation_id, run_id, tool, ts, detail
                     FROM ledger_entries WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
                tenant_id, after_id, limit,
            )
        return [
            LedgerEntry(int(r["id"]), tenant_id, r["scope"], r["scope_id"], r["period_key"], int(r["amount_micro"]),
                        r["reservation_id"], r["run_id"], r["tool"], float(r["ts"]), dict(r["detail"] or {}))
            for r in rows
        ]
