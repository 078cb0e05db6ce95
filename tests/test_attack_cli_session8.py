"""``stockade`` CLI under attack (session 8): usage errors, hostile names, FIFOs and devices as input files,
a database of a newer schema, a symlink loop as the data dir, and the CLI next to a running server."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import test_cli as base
from tests.conftest import ROOT

env = base.env  # the fixture: a clean STOCKADE_ environment on a throwaway embedded data dir
_run, _one_line_error = base._run, base._one_line_error

ESC = "\x1b[31m"  # recolours the terminal; "\x1b]0;...\x07" would retitle it


def _clean(err: str) -> None:
    """Nothing the user or a tenant controls reaches the terminal raw: no escape, no second line."""
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err


# --- usage errors: argparse's usage block was several lines, with no stable code (and echoed argv raw)


@pytest.mark.parametrize("argv", [
    [],
    ["nosuch"],
    ["tenant", "create", "acme", "--foo"],
    ["tenant", "create", "acme", f"--bar{ESC}\nsecond"],
    ["key", "create", "--tenant", "acme", "--role", "god"],
    ["serve", "--port", "abc"],
    ["policy", "validate"],
])
def test_usage_errors_are_one_line_with_a_code(env, capsys, argv):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    line = _one_line_error(rc, err)
    assert line.startswith("stockade: input.invalid: ") and line.endswith("--help)"), line
    _clean(err)
    assert not env.exists()  # refused before anything was opened


@pytest.mark.parametrize("argv,what", [  # bytes that are not UTF-8 arrive as lone surrogates: no store can hold them
    (["tenant", "create", "acme\udcff"], "argument name"),
    (["key", "create", "--tenant", "\udcff"], "argument --tenant"),
    (["key", "create", "--tenant", "acme", "--user", "\udcff"], "argument --user"),
    (["key", "revoke", "\udcff", "--tenant", "acme"], "argument key_id"),
    (["audit", "verify", "--tenant", "\udcff"], "argument --tenant"),
    (["serve", "--host", "\udcff"], "argument --host"),
])
def test_command_line_text_that_is_not_utf8_is_refused(env, capsys, argv, what):
    rc, _, err = _run(capsys, *argv)  # was: internal: UnicodeEncodeError (after the store was made)
    assert rc == 2 and _one_line_error(rc, err).startswith(f"stockade: input.invalid: {what}: not valid UTF-8 text")
    assert not env.exists()


def test_a_data_dir_that_is_not_utf8_is_a_setting_error(env, capsys, monkeypatch, tmp_path):
    """Run folders under it go to bwrap as UTF-8 text: the server started, then no sandbox could be launched."""
    bad = str(tmp_path / "data\udcff")
    for argv in (["migrate"], ["serve", "--data-dir", bad]):
        with monkeypatch.context() as m:
            if argv == ["migrate"]:
                m.setenv("STOCKADE_DATA_DIR", bad)
            line = _one_line_error(*_run(capsys, *argv)[::2])
        named = "setting STOCKADE_DATA_DIR" if argv == ["migrate"] else "--data-dir"  # where the value came from
        assert line == f"stockade: settings.invalid: invalid {named}: '{tmp_path}/data\\udcff' is not a UTF-8 path"
    assert not (tmp_path / os.fsdecode(b"data\xff")).exists()


def test_a_bad_flag_value_names_the_flag_not_the_variable(env, capsys, monkeypatch):
    """Found by an outside-in walkthrough: ``stockade serve --port 99999`` said ``invalid setting STOCKADE_PORT``,
    a variable the user had not set. The flag is named when the value came from it; the variable otherwise."""
    line = _one_line_error(*_run(capsys, "serve", "--port", "99999")[::2])
    assert line == "stockade: settings.invalid: invalid --port: Input should be less than or equal to 65535"
    line = _one_line_error(*_run(capsys, "api", "--port", "-1")[::2])
    assert line == "stockade: settings.invalid: invalid --port: Input should be greater than or equal to 0"
    monkeypatch.setenv("STOCKADE_PORT", "99999")
    line = _one_line_error(*_run(capsys, "serve")[::2])
    assert line == "stockade: settings.invalid: invalid setting STOCKADE_PORT: Input should be less than or equal to 65535"
    assert not env.exists()


def test_an_empty_bundle_folder_argument_is_refused(env, capsys, monkeypatch, tmp_path):
    """Found by an outside-in walkthrough: ``stockade bundle push "" --tenant alpha`` (an unset shell variable)
    pushed the current folder: Path("") is ".". It is refused before anything is opened."""
    here = _bundle(tmp_path / "cwd")
    monkeypatch.chdir(here)  # a folder that would be pushed fine
    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    line = _one_line_error(*_run(capsys, "bundle", "push", "", "--tenant", "acme")[::2])
    assert line == "stockade: bundle.invalid: no bundle folder given (an empty path)"
    rc, out, err = _run(capsys, "bundle", "push", ".", "--tenant", "acme")  # said plainly, it is pushed
    assert rc == 0 and json.loads(out)["name"] == "b", err


def test_help_still_works(env, capsys):
    rc, out, err = _run(capsys, "--help")
    assert rc == 0 and "usage: stockade" in out and err == ""


# --- hostile names: file names, command-line values and anchor contents are echoed escaped


def _bundle(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "bundle.yaml").write_text("name: b\nversion: '1'\n")
    (d / "main.py").write_text("async def main(ctx):\n    await ctx.answer('hi')\n")
    return d


def test_bundle_file_names_cannot_drive_the_terminal(env, capsys, tmp_path):
    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    linked = _bundle(tmp_path / "linked")
    (linked / f"x{ESC}\nstockade: fake second line").symlink_to("/etc/passwd")
    rc, _, err = _run(capsys, "bundle", "push", str(linked), "--tenant", "acme")
    line = _one_line_error(rc, err)
    _clean(err)
    assert line == ("stockade: bundle.invalid: x\\x1b[31m\\nstockade: fake second line is a symlink; "
                    "links are not allowed in bundles")
    hard = _bundle(tmp_path / "hard")
    (tmp_path / "outside.py").write_text("x = 1\n")
    os.link(tmp_path / "outside.py", hard / "\u202egnp.py")  # a right-to-left override flips what the operator reads
    rc, _, err = _run(capsys, "bundle", "push", str(hard), "--tenant", "acme")
    line = _one_line_error(rc, err)  # such a name is refused before the link is looked at; shown escaped
    assert "\\u202egnp.py" in line and "control or format character (U+202E)" in line
    _clean(err)
    odd_dir = tmp_path / f"d{ESC}"
    rc, _, err = _run(capsys, "bundle", "push", str(odd_dir), "--tenant", "acme")
    assert _one_line_error(rc, err).startswith("stockade: bundle.invalid: ")
    _clean(err)


def test_command_line_values_echoed_in_errors_are_escaped(env, capsys):
    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    for argv in (["key", "create", "--tenant", "acme", "--user", f"u{ESC}\nx"],
                 ["key", "create", "--tenant", "acme", "--project", "p\x1b]0;pwned\x07"]):
        rc, _, err = _run(capsys, *argv)
        assert _one_line_error(rc, err).startswith("stockade: not_found: ")
        _clean(err)
    rc, out, _ = _run(capsys, "key", "list", "--tenant", "acme")
    assert rc == 0 and len(out.splitlines()) == 1  # nothing was created


def test_anchor_file_contents_are_escaped(env, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"heads": {f"{ESC}ten\nX": {"seq": 0, "hash": "00"}}}))
    rc, _, err = _run(capsys, "audit", "verify", "--anchor", str(bad))
    assert "chain head of tenant \\x1b[31mten\\nX needs" in _one_line_error(rc, err)
    _clean(err)
    assert _run(capsys, "migrate")[0] == 0
    gone = tmp_path / "gone.json"  # a well-formed anchor naming a tenant with no records: reported, escaped
    gone.write_text(json.dumps({"heads": {f"{ESC}ten\nX": {"seq": 1, "hash": "a" * 64}}}))
    rc, _, err = _run(capsys, "audit", "verify", "--anchor", str(gone))
    assert _one_line_error(rc, err).startswith("stockade: audit.corrupt: audit chain broken: tenant \\x1b[31mten\\nX: records end at 0")
    _clean(err)


def test_policy_validate_escapes_what_it_quotes(env, capsys, tmp_path):
    p = tmp_path / f"p{ESC}.yaml"
    p.write_text('version: 1\nrules:\n  - id: "a\\e[31mRED\\nline"\n    tool: echo\n    verdict: "x\\e]0;t\\a"\n')
    rc, out, err = _run(capsys, "policy", "validate", str(p))
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith(str(p).replace(ESC, "\\x1b[31m") + ": line ") for ln in lines)
    assert "\x1b" not in err and "\x07" not in err


# --- FIFOs, devices and folders as input files: refused at once, never waited on (a FIFO with no writer blocked
# the open forever)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def pub_pem(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supervisor.audit.keys import public_key_pem

    path = tmp_path / "pub.pem"
    path.write_text(public_key_pem(Ed25519PrivateKey.generate()))
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_special_input_files_are_refused_not_waited_on(env, capsys, tmp_path, fifo, pub_pem, kind):
    target = {"fifo": str(fifo), "folder": str(tmp_path), "device": os.devnull}[kind]
    good = tmp_path / "r.json"
    good.write_text(json.dumps({"run_id": "r", "signature": {"alg": "Ed25519", "value": "AAAA"}}))
    for argv in (["policy", "validate", target],
                 ["receipt", "verify", target, "--public-key", str(pub_pem)],
                 ["receipt", "verify", str(good), "--public-key", target],
                 ["audit", "verify", "--anchor", target]):
        rc, out, err = _run(capsys, *argv)
        assert out == ""
        why = "Is a directory" if kind == "folder" else "not a regular file"
        assert _one_line_error(rc, err) == f"stockade: input.invalid: cannot read {target}: {why}", argv
    assert not env.exists()  # nothing opened or created


def test_unreadable_policy_file_is_one_line_with_a_code(env, capsys, tmp_path):
    rc, _, err = _run(capsys, "policy", "validate", str(tmp_path / "missing.yaml"))
    assert _one_line_error(rc, err) == f"stockade: input.invalid: cannot read {tmp_path / 'missing.yaml'}: No such file or directory"


# --- a database of a newer schema (or with an applied migration edited since) is refused, and nothing changes


def _pg_exec(url: str, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(asyncio.wait_for(go(), 30))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store(request, env, monkeypatch):
    """(run SQL and return the first value, on the database the CLI uses) on either stack."""
    if request.param == "sqlite":
        def sql(q: str) -> object:
            with sqlite3.connect(env / "stockade.db") as c:
                row = c.execute(q).fetchone()
            return row[0] if row else None
        return sql
    url = request.getfixturevalue("fresh_pg_url")
    monkeypatch.setenv("STOCKADE_DATABASE_URL", url)
    return lambda q: _pg_exec(url, q)


def test_database_of_a_newer_schema_is_used_and_said(env, capsys, caplog, store):
    """A database migrated by a newer version (a rollback; an old replica restarted mid-upgrade) is used, as
    Flyway does by default (refusing would leave a rollback no way back but a backup), and the operator is
    told which migration this version lacks."""
    assert _run(capsys, "migrate")[0] == 0
    store("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (9999, '9999_future.sql', 'x', 0)")
    for argv in (["tenant", "create", "acme"], ["migrate"], ["tenant", "list"]):
        caplog.clear()
        with caplog.at_level("WARNING", logger="stockade.migrations"):
            rc, out, err = _run(capsys, *argv)
        assert rc == 0, err
        assert [r.getMessage() for r in caplog.records if "9999_future.sql" in r.getMessage()], argv
    assert store("SELECT count(*) FROM tenants") == 1


def test_an_edited_applied_migration_is_a_store_error_not_internal(env, capsys, store):
    assert _run(capsys, "migrate")[0] == 0
    store("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    rc, _, err = _run(capsys, "tenant", "create", "acme")
    line = _one_line_error(rc, err)
    assert line.startswith("stockade: store.misconfigured: 0001_") and "file changed after it was applied" in line
    assert store("SELECT count(*) FROM tenants") == 0


# --- a missing embedded database: commands that read or change what exists do not make a fresh empty one


@pytest.mark.parametrize("argv", [
    ["audit", "verify"],  # was: {"verified": true, "tenants": 0} over a store made on the spot
    ["tenant", "list"],
    ["key", "list", "--tenant", "acme"],
    ["key", "create", "--tenant", "acme"],
    ["key", "revoke", "key_x", "--tenant", "acme"],
])
def test_a_missing_database_is_not_made_by_a_command_that_needs_one(env, capsys, argv):
    rc, out, err = _run(capsys, *argv)
    assert out == "" and _one_line_error(rc, err) == (
        f"stockade: store.misconfigured: no database at {env / 'stockade.db'}: check STOCKADE_DATA_DIR "
        "(or run `stockade migrate` to create one)")
    assert not env.exists()
    assert _run(capsys, "tenant", "create", "acme")[0] == 0  # these make the store, as on a first start
    assert _run(capsys, *argv)[0] == (1 if argv[:2] == ["key", "revoke"] else 0)


# --- SQLite: locked by another process, or not a database at all (regression guards)


@pytest.mark.timeout(60)
def test_sqlite_locked_or_not_a_database_is_one_line(env, capsys):
    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    holder = sqlite3.connect(env / "stockade.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool, or an operator's sqlite3 shell mid-transaction
        line = _one_line_error(*_run(capsys, "tenant", "create", "globex")[::2])  # waits busy_timeout, then gives up
        assert line == "stockade: store.unavailable: SQLite store unavailable: database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [json.loads(x)["name"] for x in _run(capsys, "tenant", "list")[1].splitlines()] == ["acme"]
    (env / "stockade.db").write_bytes(b"not a database" * 1000)
    for p in env.glob("stockade.db-*"):
        p.unlink()
    line = _one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert line == "stockade: store.unavailable: SQLite store unavailable: file is not a database"


# --- PostgreSQL: a table another session holds locked (an operator's open transaction) is one line, not a hang


_HOLD_LOCK = """
import asyncio, sys, asyncpg
async def main():
    c = await asyncpg.connect(sys.argv[1])
    async with c.transaction():
        await c.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        print("locked", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await c.close()
asyncio.run(main())
"""


@pytest.mark.pg
@pytest.mark.timeout(120)
def test_pg_a_locked_table_is_store_unavailable_not_a_hang(env, capsys, monkeypatch, fresh_pg_url):
    import subprocess

    monkeypatch.setenv("STOCKADE_DATABASE_URL", fresh_pg_url)
    monkeypatch.setattr(base.cli, "_PG_LOCK_TIMEOUT", "500ms")
    assert _run(capsys, "tenant", "create", "acme")[0] == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, fresh_pg_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        for argv in (["tenant", "list"], ["tenant", "create", "globex"], ["key", "create", "--tenant", "acme"]):
            line = _one_line_error(*_run(capsys, *argv)[::2])
            assert line.startswith("stockade: store.unavailable: ") and "lock timeout" in line, line
    finally:
        holder.communicate(timeout=60)  # closes its stdin: it commits and lets go
    rc, out, _ = _run(capsys, "tenant", "list")
    assert rc == 0 and [json.loads(x)["name"] for x in out.splitlines()] == ["acme"]  # the refused create left nothing


# --- settings


def test_data_dir_in_a_symlink_loop_is_a_setting_error(env, capsys, monkeypatch, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for var in ("STOCKADE_DATA_DIR", "STOCKADE_BUNDLES_DIR"):
        with monkeypatch.context() as m:
            m.setenv(var, str(tmp_path / "a"))
            line = _one_line_error(*_run(capsys, "migrate")[::2])
            assert line.startswith(f"stockade: settings.invalid: invalid setting {var}: ") and "cannot resolve" in line, line
    assert not env.exists()


# --- the CLI next to a running server on the same embedded data dir (BEGIN IMMEDIATE + busy_timeout)


async def _cli(environ: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *argv, env=environ, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout(180)
async def test_cli_next_to_a_running_server_on_the_same_sqlite(tmp_path):
    from tests.e2e.harness import make_data_dir, settings_for, start_node

    data = make_data_dir()
    settings = settings_for("embedded", data, bundles_dir=tmp_path / "no-bundles")
    node = await start_node(settings, workers=False)
    environ = {"PATH": "/usr/bin:/bin", "STOCKADE_DATA_DIR": str(data), "STOCKADE_BUNDLES_DIR": str(tmp_path / "no-bundles"),
           "STOCKADE_AUDIT_KEY": settings.audit_key.get_secret_value() if settings.audit_key else "",
           "STOCKADE_SECRETS_KEY": settings.secrets_key.get_secret_value() if settings.secrets_key else ""}
    try:
        tid, admin = await node.tenant("acme")
        c = node.client(admin)
        bundle = _bundle(tmp_path / "b")

        async def server_writes() -> None:  # the server writes (policy, budgets: audited) while the CLI writes
            for i in range(10):
                r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 10.0 + i}]})
                assert r.status_code == 200, r.text

        results = await asyncio.wait_for(asyncio.gather(
            server_writes(),
            *(_cli(environ, "key", "create", "--tenant", "acme") for _ in range(4)),
            _cli(environ, "tenant", "create", "globex"),
            _cli(environ, "bundle", "push", str(bundle), "--tenant", tid),
        ), 150)
        for rc, _, err in results[1:]:
            assert rc == 0 and err == "", err
        keys = [json.loads(out)["api_key"] for _, out, _ in results[1:5]]
        for k in keys:  # the server authenticates what the CLI created, and lists what it pushed
            r = await node.client(k).get("/v1/bundles")
            assert r.status_code == 200 and "b" in [b["name"] for b in r.json()["data"]]
        rc, out, err = await asyncio.wait_for(_cli(environ, "audit", "verify"), 60)
        assert rc == 0 and json.loads(out)["verified"] is True, err
        key_id = json.loads(results[1][1])["key_id"]
        rc, _, err = await asyncio.wait_for(_cli(environ, "key", "revoke", key_id, "--tenant", "acme"), 60)
        assert rc == 0, err
        async with httpx.AsyncClient(base_url=node.base_url, headers={"Authorization": f"Bearer {keys[0]}"}) as gone:
            assert (await gone.get("/v1/bundles")).status_code == 401
    finally:
        await node.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["STOCKADE_SIGNING_KEY_FILE", "STOCKADE_LLM_PRICING_FILE"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_file_setting_that_is_a_fifo_or_device_is_refused(env, capsys, monkeypatch, fifo, name, kind):
    """Read whole at start-up: a FIFO blocked every command for ever, /dev/zero filled the memory."""
    target = str(fifo) if kind == "fifo" else os.devnull  # (not /dev/zero: without the fix it eats the memory)
    monkeypatch.setenv(name, target)
    line = _one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert line == f"stockade: settings.invalid: invalid setting {name}: {target} is not a regular file"
    assert not env.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["latin-1", "utf-16", "deep-json", "deep-yaml", "folder", "unreadable"])
def test_a_pricing_file_that_cannot_be_read_as_text_is_one_line_naming_the_variable(env, capsys, monkeypatch,
                                                                                     tmp_path, kind):
    """Found by an outside-in walkthrough: a STOCKADE_LLM_PRICING_FILE that is not UTF-8 failed every command
    with ``stockade: internal: UnicodeDecodeError ...`` (and one nested past the parser's depth with
    ``internal: RecursionError``), where an invalid YAML file was already ``settings.invalid`` naming it."""
    path = tmp_path / ("prices.json" if kind == "deep-json" else "prices.yaml")
    if kind == "latin-1":
        path.write_bytes("openai/caf\u00e9: {input: 1, output: 1}\n".encode("latin-1"))
    elif kind == "utf-16":
        path.write_bytes("openai/x: {input: 1, output: 1}\n".encode("utf-16"))
    elif kind == "deep-json":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "deep-yaml":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "folder":
        path.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file of mode 0000")
        path.write_text("openai/x: {input: 1, output: 1}\n")
        path.chmod(0)
    monkeypatch.setenv("STOCKADE_LLM_PRICING_FILE", str(path))
    line = _one_line_error(*_run(capsys, "migrate")[::2])
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_LLM_PRICING_FILE: "), line
    assert str(path) in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["audit.key", "secrets.key", "receipt_ed25519.pem"])
def test_a_generated_key_file_replaced_by_a_fifo_is_refused(env, capsys, key):
    assert _run(capsys, "migrate")[0] == 0  # generates the key files
    (env / "keys" / key).unlink()
    os.mkfifo(env / "keys" / key, 0o600)
    line = _one_line_error(*_run(capsys, "tenant", "create", "acme")[::2])
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_") and line.endswith(f"keys/{key} is not a regular file")
    with sqlite3.connect(env / "stockade.db") as c:
        assert c.execute("SELECT count(*) FROM tenants").fetchone()[0] == 0


# --- output that cannot be written (a full disk, a closed pipe): one line naming what was made but not shown


def test_a_key_that_could_not_be_printed_is_named_so_it_can_be_revoked(env, capsys):
    import subprocess

    environ = {"PATH": "/usr/bin:/bin", "STOCKADE_DATA_DIR": str(env), "STOCKADE_BUNDLES_DIR": str(env / "none")}
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        done = subprocess.run([sys.executable, "-m", "app.cli", "tenant", "create", "acme"], env=environ, cwd=ROOT,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "stk_" not in done.stderr  # the secret itself never goes to stderr
    tid = json.loads(_run(capsys, "tenant", "list")[1])["tenant_id"]
    (key,) = [json.loads(line) for line in _run(capsys, "key", "list", "--tenant", tid)[1].splitlines()]
    assert done.stderr.startswith("stockade: internal: cannot write the output: No space left on device; "
                                  f"key {key['key_id']} of tenant {tid} was made but not shown: revoke it ")
    assert _run(capsys, "key", "revoke", key["key_id"], "--tenant", tid)[0] == 0

    def into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
        r, w = os.pipe()
        os.close(r)  # the reader is gone (`| head -1` that has its line): every write is EPIPE
        try:
            return subprocess.run([sys.executable, "-m", "app.cli", *argv], env=environ, cwd=ROOT, stdout=w,
                                  stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w)

    listing = into_a_closed_pipe("tenant", "list")  # a reader that stopped reading a listing: no error
    assert (listing.returncode, listing.stderr) == (0, "")
    made = into_a_closed_pipe("key", "create", "--tenant", tid)  # a secret nobody saw: said so, on one line
    assert made.returncode == 1 and made.stderr.count("\n") == 1 and "stk_" not in made.stderr
    assert made.stderr.startswith("stockade: internal: cannot write the output: Broken pipe; key key_")
    closed = subprocess.run([sys.executable, "-m", "app.cli", "key", "create", "--tenant", tid], env=environ, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(1))  # >&-
    assert closed.returncode == 1 and closed.stderr.startswith(  # print() dropped it without a word: exit 0
        "stockade: internal: cannot write the output: standard output is closed; key key_"), closed.stderr
