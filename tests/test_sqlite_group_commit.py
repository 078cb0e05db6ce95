"""SQLite group commit (SqliteDB.write) and the background checkpointer.

Concurrent writes share one transaction; a write that raises takes back only its own
statements; a batch that cannot commit fails every caller and keeps nothing; the audit
chain's cached head never survives a rollback (or the next record would link to a
record that does not exist).
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from supervisor.audit import AuditRecorder, Sealer, verify_chain
from supervisor.errors import StockadeError
from supervisor.stores.sqlite import SqliteAuditLog, open_sqlite

KEY = Sealer(b"k" * 32)
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def db(tmp_path):
    d = await open_sqlite(tmp_path / "s.db")
    d.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', 0)")
    yield d
    await d.close()


def _project(pid: str, tenant: str = "ten_a"):
    def fn(c: sqlite3.Connection) -> str:
        c.execute("INSERT INTO projects (id, tenant_id, name, created_at) VALUES (?, ?, ?, 0)", (pid, tenant, pid))
        return pid
    return fn


async def test_concurrent_writes_share_one_commit(db):
    before = db.commits
    got = await asyncio.gather(*(db.write(_project(f"prj_{i}")) for i in range(16)))
    assert got == [f"prj_{i}" for i in range(16)]
    assert db.commits == before + 1
    assert db.query_one("SELECT count(*) FROM projects")[0] == 16


async def test_a_failing_write_takes_back_only_its_own_statements(db):
    def half_then_fail(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO projects (id, tenant_id, name, created_at) VALUES ('prj_half', 'ten_a', 'x', 0)")
        raise StockadeError("conflict", "changed my mind")

    results = await asyncio.gather(db.write(_project("prj_1")), db.write(half_then_fail), db.write(_project("prj_2")),
                                   return_exceptions=True)
    assert results[0] == "prj_1" and results[2] == "prj_2"
    assert isinstance(results[1], StockadeError) and results[1].code == "conflict"
    rows = {r[0] for r in db.query("SELECT id FROM projects")}
    assert rows == {"prj_1", "prj_2"}


async def test_a_batch_that_cannot_commit_fails_everyone_and_keeps_nothing(db):
    def dangling(c: sqlite3.Connection) -> None:  # the FK is checked at COMMIT: the whole batch fails there
        c.execute("PRAGMA defer_foreign_keys = ON")
        c.execute("INSERT INTO projects (id, tenant_id, name, created_at) VALUES ('prj_bad', 'ten_missing', 'x', 0)")

    results = await asyncio.gather(db.write(_project("prj_1")), db.write(dangling), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    assert db.query_one("SELECT count(*) FROM projects")[0] == 0
    assert not db.conn.in_transaction
    assert await db.write(_project("prj_after")) == "prj_after"


async def test_audit_head_cache_does_not_survive_a_rolled_back_batch(db):
    rec = AuditRecorder(SqliteAuditLog(db), KEY)
    first = await rec.record("ten_a", "tool.allowed", tool="echo")

    def dangling(c: sqlite3.Connection) -> None:
        c.execute("PRAGMA defer_foreign_keys = ON")
        c.execute("INSERT INTO projects (id, tenant_id, name, created_at) VALUES ('prj_bad', 'ten_missing', 'x', 0)")

    # the audit record is inserted, then the batch's COMMIT fails: the record is gone, and so must be the cached head
    results = await asyncio.gather(rec.record("ten_a", "tool.allowed", tool="echo"), db.write(dangling),
                                   return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    third = await rec.record("ten_a", "tool.allowed", tool="echo")
    assert (first.seq, third.seq) == (1, 2) and third.prev_hash == first.hash
    records = await SqliteAuditLog(db).list("ten_a")
    assert verify_chain("ten_a", records, KEY) is None


async def test_concurrent_audit_appends_form_one_chain(db):
    rec = AuditRecorder(SqliteAuditLog(db), KEY)
    before = db.commits
    out = await asyncio.gather(*(rec.record("ten_a", "tool.allowed", tool="echo", detail={"i": i}) for i in range(32)))
    assert sorted(r.seq for r in out) == list(range(1, 33))
    assert db.commits == before + 1
    assert verify_chain("ten_a", await SqliteAuditLog(db).list("ten_a"), KEY) is None


async def test_a_locked_database_fails_the_batch_closed(db, tmp_path):
    other = sqlite3.connect(str(tmp_path / "s.db"), isolation_level=None)
    db.conn.execute("PRAGMA busy_timeout = 50")
    other.execute("BEGIN IMMEDIATE")
    try:
        rec = AuditRecorder(SqliteAuditLog(db), KEY)
        with pytest.raises(StockadeError) as err:
            await rec.record("ten_a", "tool.allowed", tool="echo")
        assert err.value.code == "audit.unavailable"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await rec.record("ten_a", "tool.allowed", tool="echo")).seq == 1


async def test_the_checkpointer_keeps_the_wal_small(db, tmp_path):
    """No automatic checkpoint runs on the writer; the background thread must copy the WAL back."""
    wal = tmp_path / "s.db-wal"
    for i in range(400):
        await db.write(_project(f"prj_{i}"))
    for _ in range(200):  # the thread checkpoints every 0.2 s
        if not db.checkpoint_due():
            break
        await asyncio.sleep(0.05)
    assert not db.checkpoint_due()
    info = db.query_one("PRAGMA wal_checkpoint(PASSIVE)")
    assert info[0] == 0 and info[1] == info[2]  # nothing left that is not in the database file
    assert wal.exists()


async def test_a_write_that_raises_before_writing_needs_no_savepoint(db):
    def refuse(c: sqlite3.Connection) -> None:
        if c.execute("SELECT 1 FROM projects WHERE id = 'prj_gate'").fetchone() is None:
            raise StockadeError("conflict", "no gate")

    results = await asyncio.gather(db.write(_project("prj_1")), db.write(refuse, raises_before_writing=True),
                                   db.write(_project("prj_2"), one_statement=True), return_exceptions=True)
    assert results[0] == "prj_1" and results[2] == "prj_2"
    assert isinstance(results[1], StockadeError) and results[1].code == "conflict"
    assert {r[0] for r in db.query("SELECT id FROM projects")} == {"prj_1", "prj_2"}


def _wal_restarts(path) -> int:
    """The WAL header's checkpoint sequence number: SQLite bumps it each time it rewinds the WAL."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


async def test_the_wal_is_rewound_under_a_steady_stream_of_writes(tmp_path, monkeypatch):
    """A PASSIVE checkpoint never leaves the WAL fully copied while writes keep coming, so SQLite
    never rewinds it: without the writer's final checkpoint the file grew without bound
    (1.2 GB after 80,000 audit appends, each slower than the last)."""
    from supervisor.stores.sqlite import db as dbmod

    monkeypatch.setattr(dbmod, "_RESTART_FRAMES", 64)
    d = await open_sqlite(tmp_path / "w.db")
    try:
        d.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', 0)")
        wal = tmp_path / "w.db-wal"
        first = _wal_restarts(wal)
        loop = asyncio.get_running_loop()
        deadline, i = loop.time() + 10, 0
        while _wal_restarts(wal) == first and loop.time() < deadline:  # never a pause long enough to rewind
            i += 1
            await d.write(_project(f"prj_{i}"))
        assert _wal_restarts(wal) > first, f"the WAL was never rewound in {i} back-to-back writes"
        assert len(d.query("SELECT id FROM projects")) == i  # nothing lost on the way
    finally:
        await d.close()
