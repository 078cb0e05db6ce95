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

Checkpoints never run on the request path. SQLite's default (an automatic
checkpoint inside the COMMIT that pushes the WAL past 1,000 pages) made one
commit in ~150 pay several milliseconds of page copies and an fsync, which
on this machine tripled the *mean* cost of a commit (p50 37 us, mean 125 us).
The hot connection therefore has ``wal_autocheckpoint=0`` and one process-wide
daemon thread checkpoints every open database (``PASSIVE``: it never blocks a
writer) on its own connection, a few times a second when there were writes.
``sqlite3`` releases the GIL while SQLite works, so the copy runs beside the
event loop. If that thread ever fell behind by ``_INLINE_CHECKPOINT_COMMITS``
commits, the writer checkpoints inline, as SQLite would have: the WAL stays
bounded whatever happens to the thread.

A PASSIVE checkpoint alone does not bound the WAL *file*: SQLite rewinds the
WAL to its start only when a write transaction begins and finds every frame
already copied back, and under a steady stream of writes there is always a
newer frame than the last checkpoint saw. (Measured: 1.2 GB of WAL after
80,000 audit appends in a row, each append slower as it grew, 118 -> 177 us.)
So when the thread finds more than ``_RESTART_FRAMES`` frames in the WAL, it
checkpoints again until a pass is quick (little left to copy), then asks the
writer to run one PASSIVE checkpoint itself right after its next commit: with
no write of this process in between, that one copies the last few frames and
the next write transaction starts the WAL from the beginning again.
``journal_size_limit`` then trims a file that grew past the limit.

Group commit: ``await db.write(fn)`` runs ``fn(conn)`` inside ONE write
transaction shared with every other ``write`` submitted before the event loop
next runs its callbacks (each in its own SAVEPOINT when there are several, so
one that raises takes back only its own statements). The transaction commits
before any caller resumes: a caller that gets a result knows it is committed,
exactly as with ``tx()``. One caller alone pays one loop turn; sixteen
concurrent callers (sixteen runs' audit records and events) pay one COMMIT
instead of sixteen. ``generation`` changes whenever a write transaction is
rolled back, so a cache of what this process wrote (the audit chain heads)
can tell that a value it cached never became durable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from supervisor.errors import StockadeError

__all__ = ["SqliteDB", "open_sqlite"]

log = logging.getLogger("stockade.store")

T = TypeVar("T")

# Primary result codes that mean "the database cannot be used right now"
# (as opposed to a bug in our SQL): BUSY, LOCKED, NOMEM, READONLY, IOERR,
# CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
_CHECKPOINT_EVERY_S = 0.2
_INLINE_CHECKPOINT_COMMITS = 5_000
_RESTART_FRAMES = 16_384  # ~64 MiB of 4 KiB pages: then the WAL is rewound (module docstring)
_QUICK_PASS_S = 0.002  # a checkpoint pass this short left little for the writer's final one
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


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
        self.migrations_applied: list[str] = []  # by open_*(migrate=True) in this process
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
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it (module docstring)
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        self._conn: sqlite3.Connection | None = conn
        self.commits = 0  # write transactions ended on this connection (read by the checkpointer)
        self._checkpointed = 0  # self.commits at the start of the last completed checkpoint
        self._ckpt_lock = threading.Lock()  # one checkpoint at a time per database (thread or inline)
        self._ckpt_conn: sqlite3.Connection | None = None  # the checkpointer thread's connection
        self._rewind_wanted = False  # set by the thread: the writer checkpoints once, so the WAL restarts
        # (fn, its future, autocommit when alone, no savepoint needed in a batch)
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool, bool]] = []
        self.generation = 0  # bumped by every rolled-back write transaction (see the module docstring)
        _Checkpointer.register(self)

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
                self._rollback(conn)
                raise
            conn.execute("COMMIT")
            self._committed()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        self.generation += 1
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error matters more

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, one_statement: bool = False,
                    raises_before_writing: bool = False) -> T:
        """``fn(conn)`` in a write transaction shared with this loop turn's other writes (group commit).

        ``fn`` is synchronous and must not keep state that outlives a rollback unless it checks
        ``generation``. Its exception is raised here (the other writes of the batch still commit).
        ``one_statement``: ``fn`` changes the database with a single statement (reads and a retry
        after a failed statement allowed), so when it is alone in its batch it runs in autocommit
        mode: that statement is the transaction, without a BEGIN and a COMMIT around it.
        ``raises_before_writing``: ``fn`` raises (its own errors) only before its first change, so in
        a batch it needs no savepoint either (a database error fails the whole batch anyway).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._batch.append((fn, fut, one_statement, one_statement or raises_before_writing))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        batch = [b for b in batch if not b[1].done()]  # a canceled caller's write is dropped
        if not batch:
            return
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        if len(batch) == 1 and batch[0][2]:
            fn, fut, _, _ = batch[0]
            try:
                with _mapped():
                    result = fn(self.conn)
            except Exception as exc:
                self.generation += 1  # whatever it cached may not be in the database
                fut.set_exception(exc)
                return
            self._committed()
            fut.set_result(result)
            return
        try:
            with _mapped():
                conn = self.conn
                if conn.in_transaction:  # cannot happen unless someone awaited inside tx()
                    raise RuntimeError("SqliteDB.write() found a transaction open on the connection")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if len(batch) == 1:
                        fn, fut, _, _ = batch[0]
                        outcomes.append((fut, fn(conn), None))
                    else:
                        for fn, fut, _, clean in batch:
                            # a failed statement undoes itself: a one-statement write needs no savepoint,
                            # nor does one that raises only before it writes
                            if not clean:
                                conn.execute("SAVEPOINT w")
                            try:
                                with _mapped():
                                    result = fn(conn)
                            except Exception as exc:
                                if not clean:
                                    conn.execute("ROLLBACK TO w")
                                    conn.execute("RELEASE w")
                                self.generation += 1
                                outcomes.append((fut, None, exc))
                            else:
                                if not clean:
                                    conn.execute("RELEASE w")
                                outcomes.append((fut, result, None))
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback(conn)
                    raise
            self._committed()
        except Exception as exc:  # BEGIN/COMMIT failed, or the one write of the batch raised: nothing is kept
            for _, fut, _, _ in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut, result, err in outcomes:
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(result)

    def _committed(self) -> None:
        self.commits += 1
        if self._rewind_wanted:
            self._rewind_wanted = False
            try:  # the last frames the thread left: afterwards the next write transaction rewinds the WAL
                self.checkpoint()
            except sqlite3.Error:
                pass
        elif self.commits - self._checkpointed >= _INLINE_CHECKPOINT_COMMITS:
            try:  # the thread is not keeping up (or is gone): do what SQLite would have done
                self.checkpoint()
            except sqlite3.Error:
                pass  # the transaction is committed either way; a busy checkpoint is retried later

    def checkpoint(self, *, from_thread: bool = False) -> None:
        """Copy committed WAL pages into the database file (``PASSIVE``): on this connection, or,
        for the checkpointer thread, on a connection of its own."""
        with self._ckpt_lock:
            if self._conn is None:
                return
            conn = self._conn
            if from_thread:
                if self._ckpt_conn is None:
                    c = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=1.0)
                    c.execute("PRAGMA synchronous=NORMAL")
                    c.execute("PRAGMA wal_autocheckpoint=0")
                    self._ckpt_conn = c
                conn = self._ckpt_conn
            start = self.commits
            frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            self._checkpointed = start
            if from_thread and frames >= _RESTART_FRAMES:
                for _ in range(4):  # copy what was written meanwhile, until a pass finds little left
                    t0 = time.perf_counter()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if time.perf_counter() - t0 < _QUICK_PASS_S:
                        break
                self._rewind_wanted = True

    def checkpoint_due(self) -> bool:
        return self._conn is not None and self.commits != self._checkpointed

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with _mapped():
            return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        with _mapped():
            return self.conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """One statement; outside ``tx()`` it commits by itself (autocommit)."""
        with _mapped():
            cur = self.conn.execute(sql, params)
        if not self._conn.in_transaction:  # type: ignore[union-attr]
            self._committed()
        return cur

    async def ping(self) -> None:
        """Raise StockadeError('store.unavailable') unless the database answers."""
        with _mapped():
            self.conn.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        if self._conn is not None:
            _Checkpointer.unregister(self)
            with self._ckpt_lock:
                conn, self._conn = self._conn, None
                ckpt, self._ckpt_conn = self._ckpt_conn, None
                if ckpt is not None:
                    ckpt.close()
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # leave a small WAL behind
                except sqlite3.Error:
                    pass  # another process still reads: its own close (or the next open) checkpoints
                conn.close()


class _Checkpointer:
    """One daemon thread per process: checkpoints every open ``SqliteDB`` that has new commits."""

    _lock = threading.Lock()
    _dbs: weakref.WeakSet[SqliteDB] = weakref.WeakSet()
    _thread: threading.Thread | None = None

    @classmethod
    def register(cls, db: SqliteDB) -> None:
        with cls._lock:
            cls._dbs.add(db)
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._run, name="stockade-sqlite-checkpoint", daemon=True)
                cls._thread.start()

    @classmethod
    def unregister(cls, db: SqliteDB) -> None:
        with cls._lock:
            cls._dbs.discard(db)

    @classmethod
    def _run(cls) -> None:
        stop = threading.Event()  # never set: the thread lives as long as the process (daemon)
        while not stop.wait(_CHECKPOINT_EVERY_S):
            with cls._lock:
                due = [db for db in cls._dbs if db.checkpoint_due()]
            for db in due:
                try:
                    db.checkpoint(from_thread=True)
                except sqlite3.Error:
                    pass  # busy or closing: the next round (or the writer, inline) catches up


def _make_private(path: Path) -> None:
    """A database made before its files were created 0600 (or restored from a backup as 0644) is made
    the owner's only, with its -wal and -shm files: as a new one is. Files of another owner are left
    alone (not ours to change; the open then fails or works as the file system says)."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = os.stat(p)
            if st.st_mode & 0o077 and st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)
                log.warning("%s was readable by other users (mode %04o): now 0%o", p, stat.S_IMODE(st.st_mode),
                            stat.S_IMODE(st.st_mode) & 0o700)
        except OSError:
            pass  # absent (-wal, -shm), or not ours to change


async def open_sqlite(path: Path, *, migrate: bool = True) -> SqliteDB:
    """Open (creating the parent directory) and, by default, apply pending migrations."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StockadeError("store.unavailable", f"cannot create {path.parent}: {exc.strerror}") from exc
    try:  # every tenant's data: the owner's only (SQLite gives its -wal and -shm files the same mode)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _make_private(path)
    except OSError as exc:
        raise StockadeError("store.unavailable", f"cannot create {path}: {exc.strerror}") from exc
    db = SqliteDB(path)
    if migrate:
        from supervisor.stores.migrations.runner import migrate_sqlite

        try:
            db.migrations_applied = await migrate_sqlite(db)  # an upgrade, when not empty (supervisor/factory.py)
        except BaseException:
            await db.close()
            raise
    return db
