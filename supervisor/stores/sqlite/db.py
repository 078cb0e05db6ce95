"""One SQLite connection for the embedded deployment.

Called straight from async code with no thread hop: a statement on a WAL
database with ``synchronous=NORMAL`` costs a few microseconds, far less than
handing it to a thread (the governed echo round trip budget is ~250 µs).
The consequence is a rule: **never ``await`` inside ``db.tx()``** — the
connection is shared by every coroutine of the process, so a transaction must
begin and end within one synchronous stretch. ``tx()`` refuses to nest, which
turns a violation into a loud error instead of a silent interleaving.

Other processes (the CLI next to a running server) may open the same file;
``BEGIN IMMEDIATE`` plus ``busy_timeout`` serialises writers across them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from supervisor.errors import StockadeError

__all__ = ["SqliteDB", "open_sqlite"]

# Primary result codes that mean "the database cannot be used right now"
# (as opposed to a bug in our SQL): BUSY, LOCKED, NOMEM, READONLY, IOERR,
# CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def _unavailable(exc: sqlite3.Error) -> bool:
    if isinstance(exc, sqlite3.ProgrammingError):
        return "closed" in str(exc)  # "Cannot operate on a closed database."
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _UNAVAILABLE_CODES
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "unable to open" in str(exc) or "disk" in str(exc)
    )


@contextmanager
def _mapped() -> Iterator[None]:
    """Turn "database unusable" driver errors into StockadeError('store.unavailable')."""
    try:
        yield
    except sqlite3.Error as exc:
        if _unavailable(exc):
            raise StockadeError("store.unavailable", f"SQLite store unavailable: {exc}") from exc
        raise


class SqliteDB:
    """A single ``sqlite3`` connection (autocommit; explicit ``BEGIN IMMEDIATE`` in ``tx()``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with _mapped():
            conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0,
                cached_statements=256,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
        self._conn: sqlite3.Connection | None = conn

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StockadeError("store.unavailable", "the SQLite store is closed")
        return self._conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception). Do not await inside."""
        conn = self.conn
        if conn.in_transaction:
            raise RuntimeError("SqliteDB.tx() does not nest; an await inside a transaction let another task in")
        with _mapped():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error matters more
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with _mapped():
            return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        with _mapped():
            return self.conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """One statement; outside ``tx()`` it commits by itself (autocommit)."""
        with _mapped():
            return self.conn.execute(sql, params)

    async def ping(self) -> None:
        """Raise StockadeError('store.unavailable') unless the database answers."""
        with _mapped():
            self.conn.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


async def open_sqlite(path: Path, *, migrate: bool = True) -> SqliteDB:
    """Open (creating the parent directory) and, by default, apply pending migrations."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StockadeError("store.unavailable", f"cannot create {path.parent}: {exc.strerror}") from exc
    db = SqliteDB(path)
    if migrate:
        from supervisor.stores.migrations.runner import migrate_sqlite

        try:
            await migrate_sqlite(db)
        except BaseException:
            await db.close()
            raise
    return db
