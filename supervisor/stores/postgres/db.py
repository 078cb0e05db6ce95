"""asyncpg pool with per-transaction tenant scoping for row-level security.

Every tenant-scoped statement runs inside ``tenant_tx(tenant_id)``: one
transaction whose first round trip is ``BEGIN`` plus
``set_config('role','stockade_app',true)`` and
``set_config('stockade.tenant_id',…,true)`` sent as one simple query, so RLS
policies (``tenant_id = current_setting('stockade.tenant_id', true)``) filter
every query a second time, even one that forgets its ``WHERE tenant_id``.
The role switch matters: the login user is often a superuser (the test server
connects as ``postgres``) and superusers bypass RLS.

Cross-tenant work (API-key lookup, worker sweeps, listing runs by status)
uses ``system_tx()``, running as ``stockade_system`` (BYPASSRLS).

Both settings are transaction-local (``true``), so nothing leaks to the next
user of a pooled connection; that is why the pool skips asyncpg's default reset
query on release (FACTS.md: ~2x throughput). An open transaction left behind by
a cancelled task is still rolled back by asyncpg before reuse.

Codecs: ``json``/``jsonb`` columns take and return Python objects (dict, list,
…) — pass ``{"a": 1}``, not ``json.dumps(...)``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg

from supervisor.errors import StockadeError

__all__ = ["PgDB", "UNAVAILABLE_ERRORS", "open_postgres"]

# Errors that mean "the database cannot be reached/used", not "your SQL is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # the rest of class 57 (operator intervention): a statement canceled by pg_cancel_backend or a
    # statement_timeout, a session cut by idle_session_timeout, the database dropped - not served now
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # 25P03: the server cut a session left in a transaction
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, or a database set read-only: no writes here now
    asyncpg.exceptions.LockNotAvailableError,  # a lock_timeout ran out: another session holds the row or table
    # a pooled connection the server cut while it sat idle can answer its next query with this protocol
    # state error instead of a connection error ("cannot switch to state 12; another operation is in progress")
    asyncpg.exceptions._base.InternalClientError,
)

_ACQUIRE_TIMEOUT_S = 10.0
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once, not per value


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is forced on at connect)."""
    if "\x00" in value:
        raise StockadeError("input.invalid", "tenant id contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip: every setting we make is transaction-local."""


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(typ, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def _mapped(what: str = "PostgreSQL store unavailable") -> AsyncIterator[None]:
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StockadeError("store.unavailable", f"{what}: {type(exc).__name__}: {exc}") from exc


class PgDB:
    """Owner of the asyncpg pool; hands out tenant-scoped or system transactions."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url
        self.migrations_applied: list[str] = []  # by open_*(migrate=True) in this process

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A raw pooled connection (no transaction, login role). For migrations and admin work."""
        connected = False
        try:
            async with _mapped():
                async with self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_S) as conn:
                    connected = True
                    yield conn
        except asyncpg.PostgresError as exc:
            if connected:
                raise
            # Whatever the server answers to a *new connection* (the database refuses connections for
            # maintenance, was dropped, the login was revoked) means the store cannot be used now, not an
            # internal error: callers fail closed on store.unavailable and retry until it is back.
            raise StockadeError("store.unavailable", f"PostgreSQL store unavailable: {type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def _tx(self, begin_sql: str) -> AsyncIterator[asyncpg.Connection]:
        async with self.acquire() as conn:
            await conn.execute(begin_sql)
            try:
                yield conn
            except BaseException:
                try:
                    await conn.execute("ROLLBACK")
                except Exception:  # broken connection: make the pool drop it
                    conn.terminate()
                raise
            await conn.execute("COMMIT")

    def tenant_tx(self, tenant_id: str, *, durable: bool = True) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """``async with db.tenant_tx(t) as conn:`` — a transaction as ``stockade_app`` with RLS scoped to ``t``.

        ``durable=False`` commits without waiting for the WAL flush (``synchronous_commit = off``): still
        atomic and ordered, but a server crash may lose the last few hundred milliseconds of such commits.
        Only for run events (their live copy is on the bus); never for audit, ledger or approvals.
        """
        if not isinstance(tenant_id, str) or not tenant_id:
            raise StockadeError("input.invalid", "tenant id must be a non-empty string")
        relaxed = "" if durable else ", set_config('synchronous_commit','off',true)"
        return self._tx(
            "BEGIN; SELECT set_config('role','stockade_app',true),"
            f" set_config('stockade.tenant_id',{_literal(tenant_id)},true){relaxed}"
        )

    def system_tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """``async with db.system_tx() as conn:`` — a transaction as ``stockade_system`` (bypasses RLS)."""
        return self._tx("BEGIN; SELECT set_config('role','stockade_system',true)")

    async def ping(self) -> None:
        """Raise StockadeError('store.unavailable') unless the database answers."""
        async with self.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=10)
        except (TimeoutError, *UNAVAILABLE_ERRORS):
            self.pool.terminate()


async def open_postgres(url: str, min_size: int = 2, max_size: int = 10, migrate: bool = True) -> PgDB:
    """Create the pool and, by default, apply pending migrations."""
    try:
        async with _mapped("cannot connect to PostgreSQL"):
            pool = await asyncpg.create_pool(
                url, min_size=min_size, max_size=max(min_size, max_size), init=_init_connection, reset=_no_reset,
                timeout=10, server_settings={"standard_conforming_strings": "on", "application_name": "stockade"},
            )
    except asyncpg.PostgresError as exc:  # refused at login: no such database or role, bad password, no access
        raise StockadeError("store.unavailable", f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from exc
    encoding = await pool.fetchval("SHOW server_encoding")
    if encoding != "UTF8":  # text is UTF-8 end to end (events, quotas counting UTF-8 bytes): refuse, do not mangle
        await pool.close()
        raise StockadeError("store.misconfigured", f"the PostgreSQL database is encoded {encoding}; Stockade needs UTF8"
                                                   " (CREATE DATABASE ... ENCODING 'UTF8')")
    db = PgDB(pool, url)
    if migrate:
        from supervisor.stores.migrations.runner import migrate_postgres

        try:
            db.migrations_applied = await migrate_postgres(db)  # an upgrade, when not empty (supervisor/factory.py)
        except BaseException:
            await db.close()
            raise
    return db
