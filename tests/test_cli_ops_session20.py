"""``stockade`` for the operator (session 20, from an ops walkthrough): read-only commands on an empty PostgreSQL
database, keys made by ``tenant create`` and ``demo`` audited, ``demo`` (``make run``) on a taken port, and the
wording of a few errors and warnings."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import test_cli as base
from tests.conftest import ROOT

env = base.env  # the fixture: a clean STOCKADE_ environment on a throwaway embedded data dir
_run, _one_line_error = base._run, base._one_line_error


def _pg(url: str, sql: str) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(asyncio.wait_for(go(), 30))


def _with_runtime(fn: Any) -> Any:
    """``fn(rt)`` on a runtime over the store the CLI uses (the environment's settings)."""
    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings

    async def go() -> Any:
        rt = await open_runtime(load_settings())
        try:
            return await fn(rt)
        finally:
            await rt.stop()

    return asyncio.run(asyncio.wait_for(go(), 60))


def _audit(tid: str) -> list[tuple[str, dict]]:
    async def records(rt: Any) -> list[tuple[str, dict]]:
        return [(r.kind, r.detail) for r in await rt.services.audit.list(tid, limit=1000)]

    return _with_runtime(records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- 1. a command that needs a deployment refuses an empty PostgreSQL database (a typo'd name) instead of migrating it


_NEEDS_A_DEPLOYMENT = [
    ["audit", "verify"],  # was: {"verified": true, "tenants": 0, "records": 0}, exit 0
    ["tenant", "list"],
    ["key", "list", "--tenant", "acme"],
    ["key", "create", "--tenant", "acme"],
    ["key", "revoke", "key_x", "--tenant", "acme"],
    ["bundle", "delete", "echo", "--platform"],
    ["secrets", "reseal"],
]


@pytest.mark.pg
@pytest.mark.timeout(120)
def test_pg_commands_that_need_a_deployment_refuse_an_empty_database(env, capsys, monkeypatch, fresh_pg_url):
    monkeypatch.setenv("STOCKADE_DATABASE_URL", fresh_pg_url)
    name = fresh_pg_url.rsplit("/", 1)[1]
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    for argv in _NEEDS_A_DEPLOYMENT:
        rc, out, err = _run(capsys, *argv)
        assert out == "" and _one_line_error(rc, err) == (
            f"stockade: store.misconfigured: no Stockade schema in PostgreSQL database {name!r} (no schema_migrations "
            "table): check STOCKADE_DATABASE_URL (or run `stockade migrate` to create one)"), argv
        assert rc == 1
        assert _pg(fresh_pg_url, tables) == 0, argv  # nothing migrated
        assert not env.exists(), argv  # and no audit.key / secrets.key / receipt key generated
    assert _run(capsys, "migrate")[0] == 0
    for argv in (["tenant", "list"], ["audit", "verify"], ["secrets", "reseal"]):
        rc, _, err = _run(capsys, *argv)
        assert rc == 0, (argv, err)


# --- 2. keys made by `tenant create` and `demo` are audited (key.created, key_id null), as `key create`'s are


@pytest.mark.timeout(120)
def test_the_admin_keys_of_tenant_create_and_demo_are_audited(env, capsys, monkeypatch):
    monkeypatch.setenv("STOCKADE_PORT", str(_free_port()))
    rc, out, err = _run(capsys, "tenant", "create", "acme", "--budget-usd", "5")
    assert rc == 0, err
    made = json.loads(out)
    keys = json.loads(_run(capsys, "key", "list", "--tenant", "acme")[1])
    assert _audit(made["tenant_id"]) == [("key.created", {"key_id": None, "id": keys["key_id"], "role": "admin",
                                                          "user_id": None, "project_id": None})]
    for _ in range(2):  # each call makes a key: each is recorded
        rc, _, err = _run(capsys, "demo")
        assert rc == 0, err
    demo = next(t["tenant_id"] for t in map(json.loads, _run(capsys, "tenant", "list")[1].splitlines())
                if t["name"] == "demo")
    key_ids = [json.loads(x)["key_id"] for x in _run(capsys, "key", "list", "--tenant", "demo")[1].splitlines()]
    assert len(key_ids) == 2
    assert _audit(demo) == [("key.created", {"key_id": None, "id": k, "role": "admin", "user_id": None,
                                             "project_id": None}) for k in key_ids]
    rc, out, _ = _run(capsys, "audit", "verify")
    assert rc == 0 and json.loads(out)["records"] == 3


# --- 3. `make run` on a taken port: `stockade demo` makes no key; its help says what it does


@pytest.mark.timeout(120)
def test_demo_makes_no_key_when_serve_could_not_listen(env, capsys, monkeypatch):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    monkeypatch.setenv("STOCKADE_PORT", str(port))
    try:
        assert _run(capsys, "migrate")[0] == 0  # `make run`: migrate, demo, serve
        for _ in range(2):
            rc, out, err = _run(capsys, "demo")
            assert out == "" and _one_line_error(rc, err) == (
                f"stockade: settings.invalid: invalid setting STOCKADE_PORT: cannot listen on 127.0.0.1:{port}: "
                "Address already in use")
        assert _run(capsys, "tenant", "list")[1] == ""  # no demo tenant, no key
        holder.close()
        rc, out, err = _run(capsys, "demo")
        assert rc == 0 and "API key (shown once): stk_" in out, err
        holder = socket.socket()
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert _run(capsys, "demo")[0] == 1
        assert len(_run(capsys, "key", "list", "--tenant", "demo")[1].splitlines()) == 1  # the refused call made none
    finally:
        holder.close()


def test_demo_help_says_it_makes_a_new_key_every_time(env, capsys):
    rc, out, _ = _run(capsys, "demo", "--help")
    text = " ".join(out.split())
    assert rc == 0
    assert "make a new admin key for the tenant `demo`" in text and "every call makes another key" in text
    assert "if none exists" not in text
    assert not env.exists()


# --- 4. messages


@pytest.mark.timeout(120)
def test_deleting_a_platform_bundle_with_tenant_points_the_operator_at_platform(env, capsys, tmp_path):
    bundles = tmp_path / "platform"
    shutil.copytree(ROOT / "bundles" / "echo", bundles / "echo")
    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    tid = json.loads(_run(capsys, "tenant", "list")[1])["tenant_id"]

    async def register(rt: Any) -> str:
        return (await rt.registry.register_dir(bundles / "echo", None)).name

    name = _with_runtime(register)
    line = _one_line_error(*_run(capsys, "bundle", "delete", name, "--tenant", "acme")[::2])
    assert line == (f"stockade: input.invalid: {name!r} is a platform bundle, not one of tenant {tid}'s: to retire it, "
                    f"remove its folder from STOCKADE_BUNDLES_DIR, then run `stockade bundle delete {name} --platform`")
    rc, out, err = _run(capsys, "bundle", "delete", name, "--platform")
    assert rc == 0 and json.loads(out)["deleted"] is True, err


def test_a_missing_sqlite_file_named_by_the_database_url_names_that_variable(env, capsys, monkeypatch, tmp_path):
    typo = tmp_path / "typo.db"
    monkeypatch.setenv("STOCKADE_DATABASE_URL", f"sqlite:///{typo}")
    line = _one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert line == (f"stockade: store.misconfigured: no database at {typo}: check STOCKADE_DATABASE_URL "
                    "(or run `stockade migrate` to create one)")
    assert not typo.exists()


@pytest.mark.parametrize("name,value,line", [
    ("STOCKADE_AUDIT_KEY", "short", "invalid setting STOCKADE_AUDIT_KEY: must be at least 16 characters (it is a key)"),
    ("STOCKADE_DATABASE_URL", "mysql://x", "invalid setting STOCKADE_DATABASE_URL: must start with postgresql:// or "
                                           "sqlite:///"),
])
def test_setting_errors_carry_no_pydantic_prefix(env, capsys, monkeypatch, name, value, line):
    monkeypatch.setenv(name, value)
    assert _one_line_error(*_run(capsys, "tenant", "list")[::2]) == f"stockade: settings.invalid: {line}"


@pytest.mark.parametrize("base_uid,line", [
    ("65000", "with STOCKADE_SANDBOX_UID_COUNT=1024, the uids 65000..66023 contain the kernel's overflow uid 65534"),
    ("4294967000", "4294967000 + STOCKADE_SANDBOX_UID_COUNT (1024) must stay at most 4294967294"),
])
def test_a_bad_uid_base_is_named_as_the_base(env, capsys, monkeypatch, base_uid, line):
    """Only STOCKADE_SANDBOX_UID_BASE was set: the error named STOCKADE_SANDBOX_UID_COUNT (left at its default)."""
    monkeypatch.setenv("STOCKADE_SANDBOX_UID_BASE", base_uid)
    assert _one_line_error(*_run(capsys, "tenant", "list")[::2]) == (
        f"stockade: settings.invalid: invalid setting STOCKADE_SANDBOX_UID_BASE: {line}")


@pytest.mark.timeout(120)
def test_the_newer_database_warning_is_a_stockade_line(env, capsys):
    """A database migrated by a newer Stockade is used (not refused: no MigrationError), and the warning is one
    ``stockade: warning:`` line before the command's output (it was the bare log message)."""
    import sqlite3

    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    with sqlite3.connect(Path(env) / "stockade.db") as c:
        c.execute("INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                  "VALUES (9999, '9999_future.sql', 'x', 0)")
    rc, out, err = _run(capsys, "tenant", "list")
    assert rc == 0 and json.loads(out)["name"] == "acme"
    assert err == ("stockade: warning: the database has migration 9999_future.sql applied, which this version of "
                   "Stockade does not have (it was migrated by a newer version): running on it; upgrade Stockade "
                   "to match\n")


@pytest.mark.timeout(120)
def test_demo_and_migrate_take_the_flags_serve_takes(env, capsys, tmp_path):
    """``stockade demo; stockade serve --port P`` printed (and checked) the default address, not P: demo took no
    --host/--port/--data-dir and migrate no --data-dir, so only the environment kept the three in step (session 21
    docs walkthrough). With the same flags as serve, demo prints and checks that address, on that data dir."""
    port = _free_port()
    data = tmp_path / "elsewhere"
    assert _run(capsys, "migrate", "--data-dir", str(data))[0] == 0
    rc, out, err = _run(capsys, "demo", "--port", str(port), "--data-dir", str(data))
    assert rc == 0, err
    assert f"http://127.0.0.1:{port}" in out and "API key (shown once): stk_" in out
    assert (data / "stockade.db").exists() or any(data.iterdir())
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        rc, _, err = _run(capsys, "demo", "--port", str(port), "--data-dir", str(data))
        assert rc == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    finally:
        holder.close()
