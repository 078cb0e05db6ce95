"""Migration runner: ordered, idempotent, tamper-evident, atomic per file, race-free on PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from supervisor.stores.migrations.runner import (
    HERE,
    MigrationError,
    load_migrations,
    migrate_postgres,
    migrate_sqlite,
)
from supervisor.stores.postgres.db import open_postgres
from supervisor.stores.sqlite.db import open_sqlite


def _names(dialect: str) -> list[str]:
    return [m.name for m in load_migrations(dialect)]


def _copy(dialect: str, tmp_path: Path) -> Path:
    target = tmp_path / f"mig-{dialect}"
    shutil.copytree(HERE / dialect, target)
    return target


def test_shipped_migrations_are_well_formed():
    for dialect in ("sqlite", "postgres"):
        migs = load_migrations(dialect)
        assert migs and [m.version for m in migs] == sorted({m.version for m in migs})


def test_bad_file_names_and_duplicate_versions(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_a.sql").write_text("SELECT 1;")
    (d / "0001_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="0001"):
        load_migrations("sqlite", d)
    (d / "0001_b.sql").unlink()
    (d / "2_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="2_bad.sql"):
        load_migrations("sqlite", d)


async def test_sqlite_apply_twice_is_a_noop(tmp_path):
    db = await open_sqlite(tmp_path / "a" / "s.db", migrate=False)
    try:
        assert await migrate_sqlite(db) == _names("sqlite")
        assert await migrate_sqlite(db) == []
        rows = db.query("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["name"] for r in rows] == _names("sqlite")
    finally:
        await db.close()
    again = await open_sqlite(tmp_path / "a" / "s.db")  # a restart applies nothing
    await again.close()


async def test_sqlite_tampered_applied_file_is_detected(tmp_path):
    mig_dir = _copy("sqlite", tmp_path)
    db = await open_sqlite(tmp_path / "s.db", migrate=False)
    try:
        await migrate_sqlite(db, mig_dir)
        first = sorted(mig_dir.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- sneaky edit\n")
        with pytest.raises(MigrationError, match=first.name):
            await migrate_sqlite(db, mig_dir)
    finally:
        await db.close()


async def test_sqlite_failed_migration_rolls_back_that_file(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_ok.sql").write_text("CREATE TABLE a (x INTEGER);")
    (d / "0002_broken.sql").write_text(
        "CREATE TABLE b (x INTEGER);\nCREATE TRIGGER t BEFORE DELETE ON a BEGIN SELECT 1; END;\nCREATE TABLE oops (;"
    )
    db = await open_sqlite(tmp_path / "s.db", migrate=False)
    try:
        with pytest.raises(MigrationError, match="0002_broken.sql"):
            await migrate_sqlite(db, d)
        tables = {r[0] for r in db.query("SELECT name FROM sqlite_master")}
        assert "a" in tables and "b" not in tables and "t" not in tables
        assert [r[0] for r in db.query("SELECT name FROM schema_migrations")] == ["0001_ok.sql"]
        (d / "0002_broken.sql").write_text("CREATE TABLE b (x INTEGER);")
        assert await migrate_sqlite(db, d) == ["0002_broken.sql"]
    finally:
        await db.close()


@pytest.mark.pg
async def test_postgres_apply_twice_is_a_noop(fresh_pg_url):
    assert await migrate_postgres(fresh_pg_url) == _names("postgres")
    assert await migrate_postgres(fresh_pg_url) == []
    db = await open_postgres(fresh_pg_url, min_size=1, max_size=2)  # migrate=True: nothing to do
    try:
        async with db.acquire() as c:
            names = [r[0] for r in await c.fetch("SELECT name FROM schema_migrations ORDER BY version")]
        assert names == _names("postgres")
    finally:
        await db.close()


@pytest.mark.pg
async def test_postgres_concurrent_migrators_do_not_race(fresh_pg_url):
    barrier = asyncio.Barrier(3)

    async def one() -> list[str]:
        await barrier.wait()
        return await migrate_postgres(fresh_pg_url)

    results = await asyncio.gather(*(one() for _ in range(3)))
    applied = [n for r in results for n in r]
    assert sorted(applied) == _names("postgres")  # every file applied exactly once, by someone


@pytest.mark.pg
async def test_postgres_tampered_and_failed_files(fresh_pg_url, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (d / "0002_broken.sql").write_text("CREATE TABLE b (x int);\nCREATE TABLE oops (;")
    with pytest.raises(MigrationError, match="0002_broken.sql"):
        await migrate_postgres(fresh_pg_url, d)
    conn = await asyncpg.connect(fresh_pg_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('b')") is None  # rolled back
        assert await conn.fetchval("SELECT to_regclass('a')") is not None
        (d / "0002_broken.sql").write_text("CREATE TABLE b (x int);")
        assert await migrate_postgres(fresh_pg_url, d) == ["0002_broken.sql"]
        (d / "0001_ok.sql").write_text("CREATE TABLE a (x bigint);")
        with pytest.raises(MigrationError, match="0001_ok.sql"):
            await migrate_postgres(fresh_pg_url, d)
    finally:
        await conn.close()


async def test_sqlite_unusable_path_is_store_unavailable(tmp_path):
    from supervisor.errors import StockadeError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StockadeError) as err:
        await open_sqlite(blocker / "sub" / "s.db")
    assert err.value.code == "store.unavailable"
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StockadeError) as err:
        await open_sqlite(not_a_db)
    assert err.value.code == "store.unavailable"


async def test_closed_sqlite_is_store_unavailable(tmp_path):
    from supervisor.errors import StockadeError

    db = await open_sqlite(tmp_path / "s.db")
    await db.ping()
    await db.close()
    with pytest.raises(StockadeError) as err:
        await db.ping()
    assert err.value.code == "store.unavailable"
    with pytest.raises(StockadeError) as err:
        db.query("SELECT 1")
    assert err.value.code == "store.unavailable"


@pytest.mark.pg
async def test_unreachable_postgres_is_store_unavailable(unused_tcp_port):
    from supervisor.errors import StockadeError

    url = f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/postgres"
    with pytest.raises(StockadeError) as err:
        await open_postgres(url, min_size=1, max_size=1)
    assert err.value.code == "store.unavailable"
    with pytest.raises(StockadeError) as err:
        await migrate_postgres(url)
    assert err.value.code == "store.unavailable"


@pytest.mark.pg
async def test_closed_pool_is_store_unavailable(pg_url):
    from supervisor.errors import StockadeError

    db = await open_postgres(pg_url, min_size=1, max_size=1)
    await db.ping()
    await db.close()
    with pytest.raises(StockadeError) as err:
        await db.ping()
    assert err.value.code == "store.unavailable"
    with pytest.raises(StockadeError) as err:
        async with db.tenant_tx("ten_x"):
            pass
    assert err.value.code == "store.unavailable"


def test_event_append_function_knows_every_terminal_status():
    """0012's stockade_event_append spells the terminal statuses out; they must be the store's."""
    from supervisor.stores.postgres.runs import _TERMINAL_SQL

    text = (Path(__file__).resolve().parent.parent / "supervisor/stores/migrations/postgres/0012_audit_append.sql").read_text()
    assert f"status NOT IN {_TERMINAL_SQL}" in text
