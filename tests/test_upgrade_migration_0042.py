"""Migration 0042 (both databases): runs an older Stockade was carrying when it was upgraded get a seen_at.

Without one the lost-run sweeper never takes them (supervisor/runs/lost.py), so after a production
upgrade whose Redis restarted empty they stayed running / waiting_approval for ever (found by
tests/e2e/test_upgrade_from_old_versions.py on the d727db2 and f45d3cf fixtures). Only carried runs
without a seen_at change; ended runs and runs a worker already marks keep theirs. On PostgreSQL the
migrating user need not be a superuser: runs force row-level security.
"""

from __future__ import annotations

import secrets
import time

import asyncpg

from supervisor.stores.migrations.runner import migrate_postgres, migrate_sqlite
from supervisor.stores.sqlite.db import open_sqlite
from tests._migrations import as_user, migration_set

# status -> seen_at the old code left (None: it had no such column yet, or the run had ended)
ROWS = {"run_a": ("running", None), "run_b": ("waiting_approval", None), "run_c": ("succeeded", None),
        "run_d": ("queued", None), "run_e": ("running", 123.0)}
_ROLES = """DO $$ BEGIN
    BEGIN CREATE ROLE stockade_app NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
    BEGIN CREATE ROLE stockade_system NOLOGIN BYPASSRLS; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
END $$;"""


def _check(seen: dict[str, float | None], t0: float) -> None:
    for rid in ("run_a", "run_b"):
        assert seen[rid] is not None and t0 - 5 <= seen[rid] <= time.time() + 5, (rid, seen[rid])
    assert seen["run_c"] is None and seen["run_d"] is None  # not carried: nothing to judge
    assert seen["run_e"] == 123.0  # already marked by a worker: its own


async def test_sqlite_0042_marks_carried_runs(tmp_path):
    db = await open_sqlite(tmp_path / "s.db", migrate=False)
    try:
        await migrate_sqlite(db, migration_set("sqlite", tmp_path, below=42))
        with db.tx() as conn:
            conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', 0)")
            for rid, (status, seen_at) in ROWS.items():
                conn.execute("INSERT INTO runs (id, tenant_id, bundle, bundle_version, input, status, created_at, "
                             "seen_at) VALUES (?, 'ten_1', 'echo', 'v', '', ?, 0, ?)", (rid, status, seen_at))
        t0 = time.time()
        assert "0042_upgrade_carried_runs.sql" in await migrate_sqlite(db)
        _check({r["id"]: r["seen_at"] for r in db.query("SELECT id, seen_at FROM runs")}, t0)
    finally:
        await db.close()


async def test_postgres_0042_marks_carried_runs_as_a_migrator_that_is_no_superuser(fresh_pg_url, tmp_path):
    role = f"upmig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(fresh_pg_url)
    try:
        await admin.execute(_ROLES)
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        await admin.execute(f"GRANT stockade_app, stockade_system TO {role} WITH ADMIN OPTION")
        await admin.execute(f"ALTER SCHEMA public OWNER TO {role}")
        mine = as_user(fresh_pg_url, role)
        await migrate_postgres(mine, migration_set("postgres", tmp_path, below=42, roles_made=True))
        # rows as the old code wrote them (the superuser passes row-level security)
        await admin.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', 0)")
        for rid, (status, seen_at) in ROWS.items():
            await admin.execute("INSERT INTO runs (id, tenant_id, bundle, bundle_version, input, status, created_at, "
                                "seen_at) VALUES ($1, 'ten_1', 'echo', 'v', '', $2, 0, $3)", rid, status, seen_at)
        t0 = time.time()
        applied = await migrate_postgres(mine, migration_set("postgres", tmp_path, below=None, roles_made=True))
        assert "0042_upgrade_carried_runs.sql" in applied
        _check({r["id"]: r["seen_at"] for r in await admin.fetch("SELECT id, seen_at FROM runs")}, t0)
    finally:
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
