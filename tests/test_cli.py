"""``stockade`` CLI under bad input: one line on stderr, a non-zero exit, no traceback, the store unchanged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from app import cli, cli_verify
from supervisor.audit.chain import ChainVerifier
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean STOCKADE_ environment on a throwaway embedded data dir."""
    for k in list(os.environ):
        if k.startswith("STOCKADE_"):
            monkeypatch.delenv(k)
    data = tmp_path / "data"
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(data))
    monkeypatch.setenv("STOCKADE_BUNDLES_DIR", str(tmp_path / "no-bundles"))
    return data


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str) -> str:
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stockade: ")
    return lines[0]


def _tenant_count(data: Path) -> int:
    with sqlite3.connect(data / "stockade.db") as c:
        return c.execute("SELECT count(*) FROM tenants").fetchone()[0]


# --- settings: each bad value is one line naming the variable


@pytest.mark.parametrize("name,value", [
    ("STOCKADE_CORS_ORIGINS", "https://a.example"),  # not JSON
    ("STOCKADE_EGRESS_ALLOW_PRIVATE", "10.0.0.0/8"),  # not JSON
    ("STOCKADE_EGRESS_ALLOW_PRIVATE", '["not-a-network"]'),
    ("STOCKADE_QUEUE_VISIBILITY_S", "inf"),
    ("STOCKADE_LLM_TIMEOUT_S", "1e400"),
    ("STOCKADE_DATABASE_URL", "postgresql://u@127.0.0.1:port/db"),
    ("STOCKADE_REDIS_URL", "redis://127.0.0.1:port/0"),
])
def test_bad_setting_names_the_variable(env, capsys, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    line = _one_line_error(*_run(capsys, "tenant", "create", "acme")[::2])
    assert line.startswith(f"stockade: settings.invalid: invalid setting {name}: ")
    assert not env.exists()  # refused before anything was opened


@pytest.mark.parametrize("make", ["file", "dev-null"])
def test_data_dir_that_is_not_a_directory(env, tmp_path, capsys, monkeypatch, make):
    target = Path(os.devnull) if make == "dev-null" else tmp_path / "a-file"
    if make == "file":
        target.write_text("x")
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(target))
    line = _one_line_error(*_run(capsys, "migrate")[::2])
    assert line == f"stockade: settings.invalid: invalid setting STOCKADE_DATA_DIR: {target} is not a directory"


def test_empty_variables_mean_unset(env, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOCKADE_HOST", "")  # "" would bind every interface
    monkeypatch.setenv("STOCKADE_OPENAI_BASE_URL", "")  # compose passes ${X:-}
    from supervisor.settings import load_settings

    s = load_settings()
    assert s.host == "127.0.0.1" and s.openai_base_url is None
    monkeypatch.setenv("STOCKADE_DATA_DIR", "")
    assert load_settings().data_dir == tmp_path / ".stockade"  # the default, not the working directory


@pytest.mark.parametrize("role", ["api", "worker"])
@pytest.mark.parametrize("stores,missing", [
    ({}, ("STOCKADE_DATABASE_URL", "STOCKADE_REDIS_URL")),
    # misspelt: pydantic-settings ignores it, and the process ran on a private SQLite file
    ({"STOCKADE_DATABASE_URI": "postgresql://u@127.0.0.1:5432/db", "STOCKADE_REDIS_URL": "redis://127.0.0.1:6379/0"},
     ("STOCKADE_DATABASE_URL",)),
    ({"STOCKADE_DATABASE_URL": "postgresql://u@127.0.0.1:5432/db"}, ("STOCKADE_REDIS_URL",)),
    ({"STOCKADE_DATABASE_URL": "sqlite:///tmp/x.db", "STOCKADE_REDIS_URL": "redis://127.0.0.1:6379/0"},
     ("STOCKADE_DATABASE_URL",)),
])
def test_the_production_roles_refuse_to_start_without_the_shared_stores(env, capsys, monkeypatch, role, stores, missing):
    """`stockade api` without PostgreSQL and Redis served runs that stayed queued for ever (/readyz said ready);
    `stockade worker` without them ran on its own SQLite file that no API reached."""
    for k, v in stores.items():
        monkeypatch.setenv(k, v)
    started = []

    async def server(settings, **kw):  # (the old code started serving here)
        started.append(kw)

    monkeypatch.setattr("app.server.run_server", server)
    rc, _, err = _run(capsys, role)
    assert not started
    line = _one_line_error(rc, err.replace(  # the misspelt name's warning comes first, on its own line
        "STOCKADE_DATABASE_URI is not a setting and is ignored: did you mean STOCKADE_DATABASE_URL?\n", ""))
    assert line.startswith(f"stockade: settings.invalid: invalid settings: `stockade {role}` needs ")
    assert all(m in line for m in missing) and "stockade serve" in line
    assert (("STOCKADE_REDIS_URL" in line) == ("STOCKADE_REDIS_URL" in missing))
    assert not env.exists()  # refused before anything was opened


# --- tenant names


@pytest.mark.parametrize("name", ["a\x1b[31mb", "tab\there", "ten_01m8v76w0e39vdxcrhvk"])
def test_tenant_create_refuses_bad_names(env, capsys, name):
    assert _run(capsys, "migrate")[0] == 0
    line = _one_line_error(*_run(capsys, "tenant", "create", name)[::2])
    assert line.startswith("stockade: input.invalid: ")
    assert _tenant_count(env) == 0


# --- audit verify


def _seed_audit(n: int) -> str:
    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings
    from supervisor.tenancy import create_tenant

    async def go() -> str:
        rt = await open_runtime(load_settings())
        try:
            tenant, _ = await create_tenant(rt.services, "acme")
            for i in range(n):
                await rt.recorder.record(tenant.id, "tool.allowed", tool="echo", detail={"i": i})
            return tenant.id
        finally:
            await rt.stop()

    return asyncio.run(asyncio.wait_for(go(), 60))


def test_audit_verify_names_a_record_whose_detail_is_not_json(env, capsys):
    tid = _seed_audit(4)
    with sqlite3.connect(env / "stockade.db") as c:  # someone with file access edits the database by hand
        c.execute("DROP TRIGGER audit_log_no_update")
        c.execute("UPDATE audit_log SET detail = '{not json' WHERE tenant_id = ? AND seq = 2", (tid,))
    line = _one_line_error(*_run(capsys, "audit", "verify")[::2])
    assert line == f"stockade: audit.corrupt: audit chain broken: tenant {tid}: record 2: content does not match its hash (record changed)"


def test_audit_verify_stops_on_ctrl_c(env, capsys, monkeypatch):
    _seed_audit(1001)  # two pages
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as in a terminal (tests/conftest.py)
    feed = ChainVerifier.feed

    def feed_then_ctrl_c(self, rec):
        if rec.seq == 1:
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C while the chain is being checked
        return feed(self, rec)

    monkeypatch.setattr(ChainVerifier, "feed", feed_then_ctrl_c)
    rc, out, err = _run(capsys, "audit", "verify")
    assert rc == 130 and out == ""
    assert _one_line_error(rc, err) == "stockade: interrupted"


def test_ctrl_c_anywhere_is_one_line(env, capsys, monkeypatch, tmp_path):
    from supervisor.policy import cli as policy_cli

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(policy_cli, "validate_file", interrupted)  # e.g. blocked opening a FIFO with no writer
    rc, _, err = _run(capsys, "policy", "validate", str(tmp_path / "p.yaml"))
    assert rc == 130 and _one_line_error(rc, err) == "stockade: interrupted"


def test_unforeseen_error_is_one_line(env, capsys, monkeypatch):
    from supervisor import tenancy

    async def boom(*a, **k):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(tenancy, "create_tenant", boom)
    line = _one_line_error(*_run(capsys, "tenant", "create", "acme")[::2])
    assert line == "stockade: internal: RuntimeError: first line"


# --- receipt verify


@pytest.fixture
def pub_pem(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supervisor.audit.keys import public_key_pem

    path = tmp_path / "pub.pem"
    path.write_text(public_key_pem(Ed25519PrivateKey.generate()))
    return path


@pytest.mark.parametrize("receipt", [
    {"run_id": "r", "signature": 5},
    {"run_id": "r", "signature": "abc"},
    {"run_id": "r", "signature": {"alg": "Ed25519", "value": ["x"]}},
    {"run_id": "r", "signature": {"alg": "Ed25519", "value": "not base64!"}},
    ["not", "an", "object"],
])
def test_receipt_verify_malformed_receipt_is_invalid(env, tmp_path, capsys, pub_pem, receipt):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(receipt))
    line = _one_line_error(*_run(capsys, "receipt", "verify", str(f), "--public-key", str(pub_pem))[::2])
    assert line == "stockade: receipt.invalid: receipt signature is INVALID"


def test_receipt_verify_unreadable_inputs(env, tmp_path, capsys, pub_pem, monkeypatch):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    line = _one_line_error(*_run(capsys, "receipt", "verify", str(deep), "--public-key", str(pub_pem))[::2])
    assert line.startswith("stockade: input.invalid: the receipt is not JSON: ")

    good = tmp_path / "r.json"
    good.write_text(json.dumps({"run_id": "r", "signature": {"alg": "Ed25519", "value": "AAAA"}}))
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("hello")
    line = _one_line_error(*_run(capsys, "receipt", "verify", str(good), "--public-key", str(not_pem))[::2])
    assert line == f"stockade: input.invalid: public key {not_pem} is not a PEM public key"

    monkeypatch.setattr(cli_verify, "_MAX_RECEIPT_BYTES", 16)  # never read a stray huge file whole (nor /dev/zero: not a file)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * 17)
    line = _one_line_error(*_run(capsys, "receipt", "verify", str(huge), "--public-key", str(pub_pem))[::2])
    assert line == "stockade: input.too_large: the receipt is larger than 16 bytes"
    line = _one_line_error(*_run(capsys, "receipt", "verify", "/dev/zero", "--public-key", str(pub_pem))[::2])
    assert line == "stockade: input.invalid: cannot read /dev/zero: not a regular file"


# --- PostgreSQL: refused at login, or read-only


@pytest.mark.pg
def test_pg_missing_database_is_one_line(env, capsys, monkeypatch, fresh_pg_url):
    url = fresh_pg_url.rsplit("/", 1)[0] + "/stockade_no_such_database"
    monkeypatch.setenv("STOCKADE_DATABASE_URL", url)
    line = _one_line_error(*_run(capsys, "migrate")[::2])
    assert line.startswith("stockade: store.unavailable: cannot connect to PostgreSQL: ")
    assert "stockade_no_such_database" in line


@pytest.mark.pg
def test_pg_database_not_in_utf8_is_refused_before_any_change(env, capsys, monkeypatch, fresh_pg_url):
    """Text is UTF-8 end to end (events, KB quota bytes); a LATIN1 database would mangle or refuse it later."""
    import asyncpg

    name = fresh_pg_url.rsplit("/", 1)[1] + "_latin1"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(fresh_pg_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}" ENCODING \'LATIN1\' LC_COLLATE \'C\' LC_CTYPE \'C\' TEMPLATE template0'))
    try:
        monkeypatch.setenv("STOCKADE_DATABASE_URL", fresh_pg_url.rsplit("/", 1)[0] + "/" + name)
        line = _one_line_error(*_run(capsys, "migrate")[::2])
        assert line.startswith("stockade: store.misconfigured: the PostgreSQL database is encoded LATIN1"), line

        async def tables() -> int:
            conn = await asyncpg.connect(fresh_pg_url.rsplit("/", 1)[0] + "/" + name)
            try:
                return await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            finally:
                await conn.close()

        assert asyncio.run(tables()) == 0  # nothing migrated
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.pg
def test_pg_read_only_database_changes_nothing(env, capsys, monkeypatch, fresh_pg_url):
    monkeypatch.setenv("STOCKADE_DATABASE_URL", fresh_pg_url)
    assert _run(capsys, "migrate")[0] == 0
    db = fresh_pg_url.rsplit("/", 1)[1]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(admin(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on'), 30))
    line = _one_line_error(*_run(capsys, "tenant", "create", "acme")[::2])
    assert line.startswith("stockade: store.unavailable: ")
    asyncio.run(asyncio.wait_for(admin(f'ALTER DATABASE "{db}" RESET default_transaction_read_only'), 30))
    rc, out, _ = _run(capsys, "tenant", "create", "acme")  # the refused call left no tenant behind
    assert rc == 0 and json.loads(out)["name"] == "acme"


# --- audit verify --anchor: a cut-off tail or a vanished chain is detected against a head kept elsewhere


def _drop_audit_guards(c: sqlite3.Connection) -> None:
    for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit_log'").fetchall():
        c.execute(f"DROP TRIGGER {name}")


def test_audit_verify_with_an_anchor_detects_a_cut_off_tail(env, capsys, tmp_path):
    tid = _seed_audit(5)
    rc, out, _ = _run(capsys, "audit", "verify")
    assert rc == 0
    first = json.loads(out)
    assert first["heads"][tid]["seq"] == 5 and len(first["heads"][tid]["hash"]) == 64
    anchor = tmp_path / "heads.json"
    anchor.write_text(out)  # kept off the database host, e.g. nightly
    with sqlite3.connect(env / "stockade.db") as c:  # a database writer deletes the newest records
        _drop_audit_guards(c)
        c.execute("DELETE FROM audit_log WHERE tenant_id = ? AND seq >= 4", (tid,))
    rc, out, _ = _run(capsys, "audit", "verify")
    assert rc == 0 and json.loads(out)["records"] == 3  # without the anchor the shorter chain still verifies
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(anchor))[::2])
    assert line == (f"stockade: audit.corrupt: audit chain broken: tenant {tid}: records end at 3 but {anchor} anchors record 5 "
                    "(records deleted from the end)")


def _signed(body: dict) -> dict:
    """``body`` signed with the receipt signing key of the data dir in use, as GET /v1/runs/{id}/receipt signs."""
    from supervisor.audit.keys import load_signing_key
    from supervisor.audit.receipts import sign_receipt
    from supervisor.settings import load_settings

    return sign_receipt(body, load_signing_key(load_settings()))


def test_audit_verify_with_a_receipt_as_anchor_detects_a_vanished_or_replaced_chain(env, capsys, tmp_path):
    tid = _seed_audit(3)
    with sqlite3.connect(env / "stockade.db") as c:
        head = c.execute("SELECT seq, hash FROM audit_log WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1", (tid,)).fetchone()
    receipt = tmp_path / "receipt.json"  # a tenant's run receipt names the chain head it was issued at
    receipt.write_text(json.dumps(_signed({"receipt_version": 1, "run_id": "run_x", "tenant_id": tid,
                                           "chain_head": {"seq": head[0], "hash": head[1]}, "spans": []})))
    rc, out, _ = _run(capsys, "audit", "verify", "--anchor", str(receipt), "--tenant", tid)
    assert rc == 0 and json.loads(out)["anchors"] == 1
    # another tenant checked against this tenant's anchor only: it said "verified" having checked nothing
    rc, out, _ = _run(capsys, "tenant", "create", "beta")
    other = json.loads(out)["tenant_id"]
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(receipt), "--tenant", other)[::2])
    assert line.startswith(f"stockade: input.invalid: no anchor in {receipt} is of tenant {other}"), line
    # the anchored record itself rewritten (a forged tail after a deletion would have to re-use its seq)
    with sqlite3.connect(env / "stockade.db") as c:
        _drop_audit_guards(c)
        c.execute("UPDATE audit_log SET hash = ? WHERE tenant_id = ? AND seq = 3", ("f" * 64, tid))
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(receipt))[::2])
    assert f"tenant {tid}: record 3:" in line
    # the whole chain deleted: the tenant no longer has records, but the anchor still names it
    with sqlite3.connect(env / "stockade.db") as c:
        c.execute("DELETE FROM audit_log WHERE tenant_id = ?", (tid,))
    assert _run(capsys, "audit", "verify")[0] == 0
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(receipt))[::2])
    assert line.endswith(f"records end at 0 but {receipt} anchors record 3 (records deleted from the end)")


@pytest.mark.parametrize("content,message", [
    ("{not json", "not JSON"),
    ('{"heads": {"ten_x": {"seq": 0, "hash": "00"}}}', "positive integer seq"),
    ('{"tenant_id": "ten_x", "chain_head": {"seq": "3", "hash": "' + "a" * 64 + '"}}', "positive integer seq"),
    ('[1, 2]', "not an anchor file"),
])
def test_a_bad_anchor_file_is_refused_before_anything_is_opened(env, capsys, tmp_path, content, message):
    bad = tmp_path / "anchor.json"
    bad.write_text(content)
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(bad))[::2])
    assert message in line
    assert not (env / "stockade.db").exists()  # refused before the store was opened (or created)
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(tmp_path / "missing.json"))[::2])
    assert "missing.json" in line


# --- tenants and keys: an operator lists them and revokes a lost or leaked key (even the last admin key)


def test_tenant_and_key_list_and_revoke(env, capsys):
    rc, out, _ = _run(capsys, "tenant", "create", "acme")
    assert rc == 0
    created = json.loads(out)
    rc, out, _ = _run(capsys, "tenant", "create", "globex")
    rc, out, _ = _run(capsys, "tenant", "list")
    assert rc == 0 and {json.loads(line)["name"] for line in out.splitlines()} == {"acme", "globex"}
    rc, out, _ = _run(capsys, "key", "create", "--tenant", "acme", "--role", "viewer")
    viewer = json.loads(out)
    rc, out, _ = _run(capsys, "key", "list", "--tenant", created["tenant_id"])
    keys = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and {(k["role"], k["user_id"]) for k in keys} == {("admin", None), ("viewer", None)}
    assert created["api_key"] not in out and viewer["api_key"] not in out  # never a secret
    assert all(k["prefix"] and viewer["api_key"].startswith(k["prefix"]) for k in keys if k["role"] == "viewer")
    admin_id = next(k["key_id"] for k in keys if k["role"] == "admin")

    rc, out, _ = _run(capsys, "key", "revoke", admin_id, "--tenant", "acme")  # the tenant's only admin key
    assert rc == 0 and json.loads(out) == {"tenant_id": created["tenant_id"], "key_id": admin_id, "revoked": True}
    rc, out, _ = _run(capsys, "key", "list", "--tenant", "acme")
    revoked = {json.loads(line)["key_id"]: json.loads(line)["revoked_at"] for line in out.splitlines()}
    assert revoked[admin_id] is not None and revoked[viewer["key_id"]] is None
    rc, out, _ = _run(capsys, "key", "revoke", admin_id, "--tenant", "acme")  # again: still revoked, success
    assert rc == 0 and json.loads(out)["revoked"] is True

    # a key of another tenant, or none at all: one line, not_found, nothing revoked
    for tenant, key_id in (("globex", viewer["key_id"]), ("acme", "key_doesnotexist000000")):
        rc, _, err = _run(capsys, "key", "revoke", key_id, "--tenant", tenant)
        assert "not_found" in _one_line_error(rc, err)
    rc, out, _ = _run(capsys, "key", "list", "--tenant", "acme")
    assert {json.loads(line)["key_id"]: json.loads(line)["revoked_at"] for line in out.splitlines()}[viewer["key_id"]] is None
    rc, _, err = _run(capsys, "key", "list", "--tenant", "nobody")
    assert "not_found" in _one_line_error(rc, err)


def test_a_worker_takes_no_address(env, capsys):
    """`stockade worker` listens on nothing: --host/--port were accepted and ignored (found by a README
    walkthrough, session 15); now a usage error, while serve and api keep them."""
    rc, _, err = _run(capsys, "worker", "--port", "8001")
    assert rc == 2 and "unrecognized arguments: --port 8001" in err
    for cmd in ("serve", "api"):
        rc, out, _ = _run(capsys, cmd, "--help")
        assert rc == 0 and "--port" in out and "--host" in out
    rc, out, _ = _run(capsys, "worker", "--help")
    assert rc == 0 and "--data-dir" in out and "--port" not in out


@pytest.mark.pg
def test_a_node_that_would_make_its_own_audit_key_for_a_database_with_records_is_refused(env, capsys, monkeypatch,
                                                                                         fresh_pg_url, tmp_path):
    """Found by a walkthrough of the production roles: a node with a data dir of its own and no STOCKADE_AUDIT_KEY
    generated a key of its own and sealed records with it; `audit verify` then reported them as forged. It now
    stops at once (and keeps no key, so the next start stops too) until it gets the deployment's key."""
    monkeypatch.setenv("STOCKADE_DATABASE_URL", fresh_pg_url)
    tid = _seed_audit(2)  # the first node (data dir `env`) made the key and sealed records with it
    shared_key = (env / "keys" / "audit.key").read_text().strip()
    other = tmp_path / "other-node"
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(other))
    for _ in range(2):
        line = _one_line_error(*_run(capsys, "tenant", "list")[::2])
        assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEY: unset, and no key in"), line
        assert "already holds audit records" in line
        assert not (other / "keys" / "audit.key").exists()
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", shared_key)  # the deployment's key: fine, and its chain verifies
    rc, out, _ = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 0 and json.loads(out)["records"] == 2, out
    # a rotation of a generated key (README: move audit.key out, list it as retired): a new key is made, rightly
    monkeypatch.delenv("STOCKADE_AUDIT_KEY")
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(env))
    (env / "keys" / "audit.key").rename(tmp_path / "old-audit.key")
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", shared_key)
    rc, out, _ = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 0 and json.loads(out)["records"] == 2 and (env / "keys" / "audit.key").exists(), out


@pytest.mark.parametrize("stack", ["embedded", pytest.param("pg", marks=pytest.mark.pg)])
def test_a_node_given_an_audit_key_that_verifies_no_stored_record_is_refused(env, capsys, monkeypatch, stack, request):
    """Found by a walkthrough of the production roles: a node given the wrong STOCKADE_AUDIT_KEY (a typo, another
    deployment's secret) started and sealed records no other node's key verifies; only a later `audit verify`
    told, reporting them as forged, each tenant's chain broken for good. It is now settings.invalid at start;
    the right key, a rotation (old key retired) and `audit verify` itself (which reports what a key verifies)
    still start, and nothing was written by the refused node."""
    if stack == "pg":
        monkeypatch.setenv("STOCKADE_DATABASE_URL", request.getfixturevalue("fresh_pg_url"))
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", "the-deployment-audit-key-0123456789")
    tid = _seed_audit(3)
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", "a-mistyped-audit-key-0123456789xx")
    for cmd in (["tenant", "list"], ["tenant", "create", "other"]):
        line = _one_line_error(*_run(capsys, *cmd)[::2])
        assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEY: it verifies the newest "
                               "audit record of none of the 1 tenants looked at"), line
    rc, out, err = _run(capsys, "audit", "verify", "--tenant", tid)  # runs, and says what the key verifies
    assert rc != 0 and "MAC invalid" in err, (out, err)
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", "the-deployment-audit-key-0123456789")  # a rotation
    rc, out, _ = _run(capsys, "tenant", "list")
    assert rc == 0 and len(out.splitlines()) == 1, out
    monkeypatch.delenv("STOCKADE_AUDIT_KEYS_RETIRED")
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", "the-deployment-audit-key-0123456789")
    rc, out, _ = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 0 and json.loads(out)["records"] == 3, out  # the refused starts sealed nothing


def test_an_anchor_is_trusted_only_as_signed_and_must_name_a_head(env, capsys, tmp_path):
    """Found by a walkthrough (session 18): a receipt edited to anchor record 99 was taken as it was, and the
    intact database was reported as cut ("records deleted from the end"); a receipt with a member written twice
    (which `receipt verify` refuses) was an anchor; and anchor files naming no head checked nothing and said
    rc 0. Now an anchor receipt must verify with the deployment's keys, a duplicate member is refused, and
    anchors that name no head are input.invalid."""
    tid = _seed_audit(3)
    with sqlite3.connect(env / "stockade.db") as c:
        seq, digest = c.execute("SELECT seq, hash FROM audit_log WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1",
                                (tid,)).fetchone()
    genuine = _signed({"receipt_version": 1, "run_id": "run_x", "tenant_id": tid, "chain_head": {"seq": seq, "hash": digest}})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(genuine))
    rc, out, _ = _run(capsys, "audit", "verify", "--anchor", str(path))
    assert rc == 0 and json.loads(out)["anchors"] == 1, out
    path.write_text(json.dumps({**genuine, "chain_head": {"seq": 99, "hash": digest}}))
    line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(path))[::2])
    assert line.startswith(f"stockade: input.invalid: {path}: a receipt whose signature this deployment's signing keys "
                           "do not verify"), line
    path.write_text(json.dumps(genuine)[:-1] + ', "run_id": "run_y"}')
    assert "duplicate member 'run_id'" in _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(path))[::2])
    for empty in ({"heads": {}}, {**genuine, "chain_head": None}):
        path.write_text(json.dumps(empty))
        line = _one_line_error(*_run(capsys, "audit", "verify", "--anchor", str(path))[::2])
        assert line.startswith("stockade: input.invalid: the anchor files name no chain head"), line


def test_audit_verify_of_an_empty_tenant_name_is_refused(env, capsys):
    """`audit verify --tenant ''` (an unset shell variable) verified every tenant and said so, rc 0."""
    _seed_audit(1)
    assert _one_line_error(*_run(capsys, "audit", "verify", "--tenant", "")[::2]).startswith("stockade: not_found: no tenant")


def test_receipt_verify_says_when_no_key_given_is_the_receipts(env, capsys, tmp_path):
    """A receipt checked against a key list from before a rotation said "signature is INVALID", as for a forgery;
    it now names the key the receipt was signed with and that none of those given is it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supervisor.audit.keys import key_id, public_key_pem

    tid = _seed_audit(1)
    receipt = _signed({"receipt_version": 1, "run_id": "run_x", "tenant_id": tid, "chain_head": None})
    (tmp_path / "r.json").write_text(json.dumps(receipt))
    other = Ed25519PrivateKey.generate()
    (tmp_path / "old.pem").write_text(public_key_pem(other))
    line = _one_line_error(*_run(capsys, "receipt", "verify", str(tmp_path / "r.json"), "--public-key",
                                 str(tmp_path / "old.pem"))[::2])
    assert line.startswith(f"stockade: receipt.invalid: the receipt names signing key '{receipt['key_id']}', which is "
                           f"none of the keys given ({key_id(other)})"), line
    forged = {**receipt, "run_id": "run_y"}  # the right key, a changed member: a forgery, said as before
    (tmp_path / "f.json").write_text(json.dumps(forged))
    from supervisor.audit.keys import load_signing_key
    from supervisor.settings import load_settings
    (tmp_path / "cur.pem").write_text(public_key_pem(load_signing_key(load_settings())))
    line = _one_line_error(*_run(capsys, "receipt", "verify", str(tmp_path / "f.json"), "--public-key",
                                 str(tmp_path / "cur.pem"))[::2])
    assert line == "stockade: receipt.invalid: receipt signature is INVALID"


@pytest.mark.parametrize("name", ["\u202eevil", "a\u200bb", "x\u2028y"])
def test_a_tenant_name_with_a_format_character_is_refused(env, capsys, name):
    """Tenant names refused control characters but took U+202E (shows "live" reversed) and invisible ones."""
    line = _one_line_error(*_run(capsys, "tenant", "create", name)[::2])
    assert line.startswith("stockade: input.invalid: tenant name must be 1 to 100 characters, without control or format")


def test_a_huge_tenant_argument_is_not_echoed_whole(env, capsys):
    _seed_audit(1)
    line = _one_line_error(*_run(capsys, "key", "create", "--tenant", "x" * 100_000)[::2])
    assert len(line) < 400 and line.endswith("(100000 characters)"), line[:500]
