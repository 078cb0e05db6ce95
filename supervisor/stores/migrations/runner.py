"""Ordered plain-SQL migrations, one directory per dialect.

Why not Alembic: Stockade has no ORM to autogenerate from, ships two dialects
(SQLite embedded, PostgreSQL production) whose DDL differs anyway (RLS, roles,
jsonb, triggers), and plain SQL files are what a reviewer wants to read when
judging tenant isolation. The runner is deliberately small:

- every ``NNNN_name.sql`` under ``migrations/<dialect>/`` is applied in
  numeric order, each in its own transaction, and recorded in
  ``schema_migrations(version, name, checksum, applied_at)``;
- running again is a no-op; an applied file whose content changed since is a
  ``MigrationError`` naming the file (never silently re-applied or ignored);
- PostgreSQL: each file runs under ``pg_advisory_xact_lock`` and re-checks what
  is applied, so two processes starting together do not race;
- SQLite: each file runs under ``BEGIN IMMEDIATE`` (the database write lock).

Numbering: 0001–0009 core stores, 0010–0019 ledger, 0020–0029 knowledge base.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.stores.postgres.db import PgDB
    from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["Migration", "MigrationError", "load_migrations", "migrate_postgres", "migrate_sqlite"]

log = logging.getLogger("stockade.migrations")

HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
# Arbitrary constant identifying "Stockade migrations" among advisory locks.
_PG_LOCK_KEY = 0x5354_4B44_4D49_47  # "STKDMIG"

_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at REAL NOT NULL)"""
_PG_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at double precision NOT NULL)"""


class MigrationError(Exception):
    """A migration set that cannot be applied safely; the message names the file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. "0003_runs.sql"
    sql: str
    checksum: str  # sha256 hex of the file bytes


def load_migrations(dialect: str, directory: Path | None = None) -> list[Migration]:
    """Every ``NNNN_*.sql`` of a dialect, in order; duplicate numbers are an error."""
    root = directory if directory is not None else HERE / dialect
    found: dict[int, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_name.sql")
        raw = path.read_bytes()
        mig = Migration(int(m.group(1)), path.name, raw.decode("utf-8"), hashlib.sha256(raw).hexdigest())
        if mig.version in found:
            raise MigrationError(f"{path.name}: version {mig.version:04d} already used by {found[mig.version].name}")
        found[mig.version] = mig
    return [found[v] for v in sorted(found)]


def _check(mig: Migration, applied: dict[int, str]) -> bool:
    """True if already applied; raise if applied with other content."""
    checksum = applied.get(mig.version)
    if checksum is None:
        return False
    if checksum != mig.checksum:
        raise MigrationError(
            f"{mig.name}: file changed after it was applied (checksum {mig.checksum[:12]} != recorded {checksum[:12]});"
            " add a new migration instead of editing an applied one"
        )
    return True


def _note_unknown(applied: list[tuple[int, str]], migrations: list[Migration]) -> None:
    """An applied migration this code does not ship: the database was migrated by a newer Stockade (a
    rollback, or an old replica restarted during a rolling upgrade). As Flyway does by default, it is not
    refused - migrations only add, so this version still runs on it, and refusing would leave a rollback
    no way back but a backup - but it is said, once per start, for the operator."""
    known = {m.version for m in migrations}
    unknown = sorted((v, name) for v, name in applied if v not in known)
    if unknown:
        log.warning("the database has migration %s applied, which this version of Stockade does not have (it was "
                    "migrated by a newer version): running on it; upgrade Stockade to match", unknown[-1][1])


# --------------------------------------------------------------------------- SQLite


def _sqlite_statements(sql: str) -> list[str]:
    """Split a script on statement boundaries (``complete_statement`` understands trigger bodies)."""
    out: list[str] = []
    buf = ""
    for piece in sql.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf)
            buf = ""
    if buf.strip(" \t\r\n;") and any(
        line.strip() and not line.strip().startswith("--") for line in buf.splitlines()
    ):
        raise MigrationError("unterminated SQL statement at the end of a migration file")
    return out


async def migrate_sqlite(db: SqliteDB, directory: Path | None = None) -> list[str]:
    """Apply pending SQLite migrations; return the names applied (empty if none)."""
    migrations = load_migrations("sqlite", directory)
    db.execute(_SQLITE_TABLE)
    _note_unknown([(r[0], r[1]) for r in db.query("SELECT version, name FROM schema_migrations")], migrations)
    applied_names: list[str] = []
    for mig in migrations:
        statements = _sqlite_statements(mig.sql)
        with db.tx() as conn:
            applied = {r[0]: r[1] for r in conn.execute("SELECT version, checksum FROM schema_migrations")}
            if _check(mig, applied):
                continue
            for stmt in statements:
                try:
                    conn.execute(stmt)
                except sqlite3.Error as exc:
                    raise MigrationError(f"{mig.name}: {exc}") from exc
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                (mig.version, mig.name, mig.checksum, time.time()),
            )
        applied_names.append(mig.name)
    return applied_names


# --------------------------------------------------------------------------- PostgreSQL


async def migrate_postgres(db_or_url: PgDB | str, directory: Path | None = None) -> list[str]:
    """Apply pending PostgreSQL migrations; return the names applied (empty if none).

    Accepts an open ``PgDB`` or a connection URL (a short-lived connection is used).
    """
    import asyncpg

    from supervisor.stores.postgres.db import UNAVAILABLE_ERRORS, PgDB

    migrations = load_migrations("postgres", directory)
    try:
        if isinstance(db_or_url, PgDB):
            async with db_or_url.acquire() as conn:
                return await _migrate_pg_conn(conn, migrations)
        conn = await asyncpg.connect(db_or_url, timeout=10)
        try:
            return await _migrate_pg_conn(conn, migrations)
        finally:
            await conn.close()
    except UNAVAILABLE_ERRORS as exc:
        from supervisor.errors import StockadeError

        raise StockadeError("store.unavailable", f"cannot migrate PostgreSQL: {exc}") from exc


async def _migrate_pg_conn(conn: Any, migrations: list[Migration]) -> list[str]:
    import asyncpg

    # Fast path, no lock: everything applied already (the common start-up case).
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if exists:
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        _note_unknown([(r["version"], r["name"]) for r in rows], migrations)
        applied = {r["version"]: r["checksum"] for r in rows}
        if all(_check(m, applied) for m in migrations):
            return []
    applied_names: list[str] = []
    for mig in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK_KEY)
            await conn.execute(_PG_TABLE)
            applied = {
                r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
            if _check(mig, applied):
                continue
            try:
                await conn.execute(mig.sql)
            except asyncpg.PostgresError as exc:
                if isinstance(exc, asyncpg.PostgresConnectionError):
                    raise
                raise MigrationError(f"{mig.name}: {type(exc).__name__}: {exc}") from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
                mig.version, mig.name, mig.checksum, time.time(),
            )
        applied_names.append(mig.name)
    return applied_names
