"""Attacks on the audit chain, its verifier and receipts (session 7), as a hostile database writer.

Each attack runs against both stores (SQLite and PostgreSQL) where it applies. A database writer
(the owner, triggers off for its session) edits, copies, drops or hides records; the promise is that
``stockade audit verify`` names the first bad record (exit non-zero), that reading the log (the
verifier, ``GET /v1/audit``, receipts) never crashes on what it finds, and that a receipt's signature
binds everything in it. Findings (each test fails without its fix):

- a detail that reads back as a value canonical JSON refuses (NaN, Infinity, 1e400, a lone surrogate
  escape), nests deeper than the parser goes, or holds a 5,000-digit number (PostgreSQL), made the
  listing or the verifier raise: ``audit verify`` ended "internal: ValueError" naming no record;
- a timestamp of 'Infinity'/'NaN' (PostgreSQL; 9e999 in SQLite) did the same to receipts;
- bytes that are not UTF-8 in any TEXT column (SQLite keeps them) failed every listing of the tenant;
- a non-ASCII MAC made the verifier raise (``hmac.compare_digest``);
- SQLite keeps the detail text as written: ``{"i": 5, "i": 2}`` verified (Python keeps the last key)
  while SQLite's own ``json_extract`` (an auditor's query) reads 5;
- PostgreSQL: deleting a tenant's ``audit_heads`` row hid its whole chain from ``audit verify``
  (without ``--tenant``), which then said verified;
- PostgreSQL: records cut off a chain's end (or the whole chain) verified without an anchor, though
  the head row each append advances still named the last record; now named (and no receipt is signed);
- ``audit verify`` read the chain head after the records: a record the running server appended in
  between was reported as "records deleted" (a false alarm on every busy server; two real processes);
- ``--tenant A --anchor B`` reported B's anchors as checked; two anchors pinning one record: only one checked;
- PostgreSQL: a detail holding a tuple with a float jsonb normalises (1e16, -0.0) was sealed as written
  and read back otherwise: the tenant's chain broke at a record nobody touched;
- ``stockade receipt verify`` said valid for a genuine receipt with a forged member written in front
  of the signed one (Python keeps the last of two, other readers the first).

Attacks that held keep a test: every column (None vs '' vs 'null', run moved, cost) is bound; detail
edits that keep its meaning (key order, whitespace, escapes) verify, those that change it (2 vs 2.0,
null vs missing, -0) do not; records copied between tenants; a replayed older chain (caught by an
anchor); receipts with spans dropped/reordered/renumbered or re-signed by another key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app import cli
from supervisor.audit import AuditRecorder, Sealer, build_receipt, canonical, sign_receipt, verify_receipt
from supervisor.audit.anchors import Anchor
from supervisor.audit.chain import FIELDS, verify_chain
from supervisor.audit.keys import public_key_pem
from supervisor.stores.records import Run
from tests import test_cli as _cli_tests
from tests.contract import conftest as _contract
from tests.contract._helpers import store


@pytest.fixture(params=["sqlite", "postgres"])
def sql_target(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, Any]:
    """The contract suite's targets, with a PostgreSQL database of this test's own: the chains written here
    are sealed with KEY, and a production node of a later test on the session's shared database refused to
    start (its audit key check samples the stored heads, and none verified)."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "stockade.db"
    return "postgres", request.getfixturevalue("fresh_pg_url")


sql_db = _contract.sql_db
env = _cli_tests.env  # the CLI tests' clean STOCKADE_ environment on a throwaway data dir

pytestmark = pytest.mark.timeout(60)

_ROOT = str(Path(__file__).resolve().parent.parent)
KEY = Sealer(b"s7" * 16)
KEY_SIGN = Ed25519PrivateKey.generate()
PUB = public_key_pem(KEY_SIGN)


# --------------------------------------------------------------------------- helpers


async def seeded(sql_db: Any, n: int = 3) -> tuple[str, Any]:
    """A new tenant with ``n`` records of run ``run_1`` (detail {"i": seq, "verdict": "allow"}); its AuditLog."""
    tid = await sql_db.new_tenant()
    audit = store(sql_db, "AuditLog")
    rec = AuditRecorder(audit, KEY)
    for i in range(1, n + 1):
        await rec.record(tid, "tool.allowed", run_id="run_1", tool="echo", args_hash="ab", rule_id="echo",
                         policy_version="v1", cost_micro=1000, detail={"i": i, "verdict": "allow"})
    return tid, audit


async def tamper(sql_db: Any, sql: str, *args: Any) -> None:
    """Run ``sql`` as the database's owner with the append-only triggers out of the way.

    ``?`` are parameters; ``{detail}`` is a parameter holding JSON text for the detail column."""
    if sql_db.kind == "sqlite":
        with sqlite3.connect(sql_db.path) as c:
            for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit_log'").fetchall():
                c.execute(f"DROP TRIGGER {name}")
            c.execute(sql.replace("{detail}", "?"), args)
        return
    sql = sql.replace("{detail}", "?::text::jsonb")
    parts = sql.split("?")
    sql = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))
    conn = await asyncpg.connect(sql_db.url)
    try:
        await conn.execute("SET session_replication_role = replica")  # this session only: triggers off
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def first_break(tid: str, records: list[Any]) -> Any:
    return verify_chain(tid, records, KEY)


def fake_runtime(sql_db: Any, audit: Any) -> Any:
    """What ``cli._audit_verify`` uses of the runtime: the audit log, the tenants, the sealer."""
    return SimpleNamespace(services=SimpleNamespace(audit=audit, tenants=sql_db.tenant_store()), sealer=KEY)


def a_run(tid: str) -> Run:
    return Run(**{f.name: None for f in dataclasses.fields(Run)} | {"id": "run_1", "tenant_id": tid, "status": "succeeded"})


# --------------------------------------------------------------------------- hostile detail JSON

# the detail text a writer puts into record 2 -> what PostgreSQL's jsonb does with it ("refused" at the
# door, "same" record after its normalisation, or "named": a changed record the verifier must name)
HOSTILE_DETAIL = {
    "nan": ('{"i": NaN, "verdict": "allow"}', "refused"),  # json.loads takes NaN; canonical JSON refuses it
    "infinity": ('{"i": -Infinity, "verdict": "allow"}', "refused"),
    "overflowing-float": ('{"i": 1e400, "verdict": "allow"}', "named"),  # Python: inf; jsonb: a 401-digit integer
    "lone-surrogate": ('{"i": 2, "verdict": "\\ud800"}', "refused"),  # cannot be encoded as UTF-8
    "lone-low-surrogate": ('{"i": 2, "verdict": "\\udc00x"}', "refused"),
    "verdict-nan": ('{"i": 2, "verdict": NaN}', "refused"),  # would reach the receipt's span
    "deep-nesting": ("[" * 3000 + "]" * 3000, "named"),  # deeper than Python's parser goes
    "5000-digit-number": ('{"i": 1e5000}', "named"),  # jsonb prints 5001 digits; int() refuses more than 4300
    "duplicate-key": ('{"i": 5, "i": 2, "verdict": "allow"}', "same"),  # SQLite's json_extract reads 5, Python 2
}


@pytest.mark.parametrize("attack", list(HOSTILE_DETAIL))
async def test_hostile_detail_is_named_and_never_crashes_a_reader(sql_db, attack):
    text, on_pg = HOSTILE_DETAIL[attack]
    tid, audit = await seeded(sql_db)
    sql = "UPDATE audit_log SET detail = {detail} WHERE tenant_id = ? AND seq = 2"
    if sql_db.is_pg and on_pg == "refused":
        with pytest.raises(asyncpg.DataError):
            await tamper(sql_db, sql, text, tid)
        return
    await tamper(sql_db, sql, text, tid)
    records = await audit.list(tid)  # the listing still reads (GET /v1/audit, receipts, verify)
    assert [r.seq for r in records] == [1, 2, 3]
    brk = first_break(tid, records)
    if sql_db.is_pg and on_pg == "same":
        assert brk is None  # jsonb kept one key: nothing is read two ways
    else:
        assert brk is not None and brk.seq == 2 and "changed" in brk.problem
    for r in records:  # what GET /v1/audit and the receipt put on the wire stays encodable
        canonical(r.detail)
    receipt = sign_receipt(build_receipt(a_run(tid), records, records[-1]), KEY_SIGN)
    assert verify_receipt(json.loads(json.dumps(receipt)), PUB)


# a timestamp no record of ours holds: (PostgreSQL's spelling, SQLite's); SQLite's REAL has no NaN
TIMESTAMPS = {"inf": ("'Infinity'::float8", "9e999"), "-inf": ("'-Infinity'::float8", "-9e999"),
              "nan": ("'NaN'::float8", "0.0 / 0")}


@pytest.mark.parametrize("value", list(TIMESTAMPS))
async def test_a_timestamp_that_is_no_number_is_named_not_crashed(sql_db, value):
    tid, audit = await seeded(sql_db)
    expr = TIMESTAMPS[value][0 if sql_db.is_pg else 1]
    sql = f"UPDATE audit_log SET ts = {expr} WHERE tenant_id = ? AND seq = 2"
    if value == "nan" and not sql_db.is_pg:
        with pytest.raises(sqlite3.IntegrityError):  # NaN is NULL there, and ts is NOT NULL
            await tamper(sql_db, sql, tid)
        return
    await tamper(sql_db, sql, tid)
    records = await audit.list(tid)
    brk = first_break(tid, records)
    assert brk is not None and brk.seq == 2 and "changed" in brk.problem
    for r in records:  # GET /v1/audit sends it; the receipt signs it
        canonical(r.ts)
    assert verify_receipt(sign_receipt(build_receipt(a_run(tid), records, records[-1]), KEY_SIGN), PUB)


@pytest.mark.parametrize("column,value", [
    ("mac", "é" * 64),  # non-ASCII: hmac.compare_digest refuses to compare it
    ("mac", ""),
    ("hash", "é" * 64),
    ("prev_hash", "\u0661" * 64),  # Arabic-Indic digits: not hex, though str.isdigit() says so
], ids=["mac-non-ascii", "mac-empty", "hash-non-ascii", "prev-hash-arabic-digits"])
async def test_hostile_hash_columns_are_named_not_crashed(sql_db, column, value):
    tid, audit = await seeded(sql_db)
    await tamper(sql_db, f"UPDATE audit_log SET {column} = ? WHERE tenant_id = ? AND seq = 2", value, tid)
    brk = first_break(tid, await audit.list(tid))
    assert brk is not None and brk.seq == 2


@pytest.mark.parametrize("seq", [2, 3], ids=["inside", "head"])
@pytest.mark.parametrize("column", ["kind", "tool", "detail", "hash", "mac"])
async def test_bytes_that_are_not_utf8_are_named_not_crashed(sql_db, column, seq, capsys):
    tid, audit = await seeded(sql_db)
    if sql_db.is_pg:  # PostgreSQL checks its encoding: refused at the door
        cast = "::jsonb" if column == "detail" else ""
        with pytest.raises(asyncpg.PostgresError):
            await tamper(sql_db, f"UPDATE audit_log SET {column} = convert_from('\\xff'::bytea, 'UTF8'){cast}"
                         " WHERE tenant_id = ? AND seq = ?", tid, seq)
        return
    # SQLite does not: its TEXT may hold any bytes (Python's driver refuses to decode them)
    await tamper(sql_db, f"UPDATE audit_log SET {column} = CAST(X'7b22ff223a327d' AS TEXT) WHERE tenant_id = ? AND seq = ?",
                 tid, seq)
    records = await audit.list(tid)
    assert [r.seq for r in records] == [1, 2, 3] and (await audit.head(tid)).seq == 3
    brk = first_break(tid, records)
    assert brk is not None and brk.seq == seq
    rc, err = await verify(sql_db, audit, capsys, tid)
    assert rc == 1 and err.startswith(f"stockade: audit.corrupt: audit chain broken: tenant {tid}: record {seq}: "), err


# --------------------------------------------------------------------------- every column is bound

# (column, SQL expression replacing it in record 2): each a small edit a writer might hope goes unseen
EDITS = [
    ("ts", "ts + 0.000001"),
    ("kind", "'tool.denied'"),
    ("kind", "'Tool.allowed'"),
    ("run_id", "'run_2'"),  # moved to another run (its receipt)
    ("run_id", "NULL"),  # None vs a value
    ("tool", "''"),  # '' vs 'echo'
    ("args_hash", "NULL"),
    ("rule_id", "'echo '"),
    ("policy_version", "'v2'"),
    ("code", "'null'"),  # the string 'null' vs NULL
    ("code", "''"),  # '' vs NULL
    ("cost_micro", "0"),
    ("cost_micro", "-1000"),
]


@pytest.mark.parametrize("column,expr", EDITS, ids=[f"{c}={e}" for c, e in EDITS])
async def test_every_field_is_bound_by_the_hash(sql_db, column, expr):
    tid, audit = await seeded(sql_db)
    await tamper(sql_db, f"UPDATE audit_log SET {column} = {expr} WHERE tenant_id = ? AND seq = 2", tid)
    brk = first_break(tid, await audit.list(tid))
    assert brk is not None and brk.seq == 2 and "changed" in brk.problem


# (detail text for record 2, whose sealed detail is {"i": 2, "verdict": "allow"}; still verifies?)
DETAIL_SPELLINGS = [
    ('{"verdict":"allow","i":2}', True),  # key order: canonical form sorts keys
    ('{ "i" : 2 , "verdict" : "allow" }', True),  # whitespace
    ('{"i":2,"verdict":"\\u0061llow"}', True),  # a unicode escape of the same character
    ('{"i":2.0,"verdict":"allow"}', False),  # 2.0 is not 2
    ('{"i":2,"verdict":"allow","extra":null}', False),  # null vs missing
    ('{"i":2}', False),  # a key dropped
    ('{"i":2,"verdict":"allow "}', False),
    ('{"i":-0,"verdict":"allow"}', False),
    ('{"i":20000000000000000000000000000002,"verdict":"allow"}', False),  # huge int
]


@pytest.mark.parametrize("text,verifies", DETAIL_SPELLINGS)
async def test_detail_is_bound_by_meaning_not_bytes(sql_db, text, verifies):
    tid, audit = await seeded(sql_db)
    await tamper(sql_db, "UPDATE audit_log SET detail = {detail} WHERE tenant_id = ? AND seq = 2", text, tid)
    brk = first_break(tid, await audit.list(tid))
    assert (brk is None) == verifies, brk


async def test_records_copied_between_tenants_or_runs_do_not_verify(sql_db):
    a, audit = await seeded(sql_db, 3)
    b, _ = await seeded(sql_db, 3)
    # tenant A's record 2 copied verbatim into tenant B's chain as its next record
    await tamper(sql_db, "INSERT INTO audit_log SELECT ?, 4, ts, kind, run_id, tool, args_hash, rule_id, policy_version,"
                 " code, cost_micro, detail, prev_hash, hash, mac FROM audit_log WHERE tenant_id = ? AND seq = 2", b, a)
    brk = first_break(b, await audit.list(b))
    assert brk is not None and brk.seq == 4
    # B's whole chain replaced by A's (same seqs, same hashes): record 1 already fails
    c, _ = await seeded(sql_db, 0)
    await tamper(sql_db, "INSERT INTO audit_log SELECT ?, seq, ts, kind, run_id, tool, args_hash, rule_id, policy_version,"
                 " code, cost_micro, detail, prev_hash, hash, mac FROM audit_log WHERE tenant_id = ?", c, a)
    brk = first_break(c, await audit.list(c))
    assert brk is not None and brk.seq == 1 and "changed" in brk.problem


# --------------------------------------------------------------------------- the verify command


async def verify(sql_db: Any, audit: Any, capsys: Any, tenant: str | None, anchors: list[Anchor] = ()) -> tuple[int, Any]:
    rc = await cli._audit_verify(fake_runtime(sql_db, audit), tenant, list(anchors))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else err.strip())


async def test_pg_chain_hidden_by_deleting_its_head_row_is_still_verified(sql_db):
    tid, audit = await seeded(sql_db)
    if sql_db.is_pg:  # the writer edits a record and removes the head row that listed the tenant
        await tamper(sql_db, "UPDATE audit_log SET cost_micro = 0 WHERE tenant_id = ? AND seq = 2", tid)
        await tamper(sql_db, "DELETE FROM audit_heads WHERE tenant_id = ?", tid)
    assert tid in await audit.tenants()  # `audit verify` without --tenant checks exactly these


async def test_verify_while_the_server_appends_is_not_a_false_alarm(sql_db, capsys):
    tid, audit = await seeded(sql_db, 3)
    recorder = AuditRecorder(store(sql_db, "AuditLog", sql_db.db), KEY)  # the running server
    listing = audit.list

    async def list_then_server_appends(*a: Any, **kw: Any) -> list[Any]:
        page = await listing(*a, **kw)
        await recorder.record(tid, "tool.allowed", run_id="run_9", detail={"late": True})
        return page

    audit.list = list_then_server_appends
    rc, out = await verify(sql_db, audit, capsys, tid)
    assert rc == 0, out
    # the head it prints is one it verified (an anchor for the next run)
    verified = out["heads"][tid]
    assert verified["seq"] >= 3 and verified["seq"] <= out["records"]
    audit.list = listing
    (rec,) = await audit.list(tid, after_seq=verified["seq"] - 1, limit=1)
    assert rec.hash == verified["hash"]


async def test_anchors_of_a_tenant_not_verified_are_not_reported_as_checked(sql_db, capsys):
    a, audit = await seeded(sql_db, 2)
    b, _ = await seeded(sql_db, 2)
    (b2,) = await audit.list(b, after_seq=1)
    anchors = [Anchor(b, 2, b2.hash, "b.json")]
    # asked to check tenant a against anchors of b only: it checked nothing, and once said "verified" (exit 0)
    rc, err = await verify(sql_db, audit, capsys, a, anchors)
    assert rc == 1 and f"no anchor in b.json is of tenant {a}" in err, err
    rc, out = await verify(sql_db, audit, capsys, b, anchors)
    assert rc == 0 and out["anchors"] == 1, out
    # two anchor files pinning one record, one of them not this chain's: both are checked, whatever the order
    for pins in ([Anchor(b, 2, "f" * 64, "old.json"), anchors[0]], [anchors[0], Anchor(b, 2, "f" * 64, "old.json")]):
        rc, err = await verify(sql_db, audit, capsys, b, pins)
        assert rc == 1 and "record 2: not the record anchored in old.json" in err, err


def test_verify_of_an_unknown_tenant_is_one_clear_error(env, capsys):
    assert _cli(capsys, "tenant", "create", "known")[0] == 0
    rc, out, err = _cli(capsys, "audit", "verify", "--tenant", "nobody")
    assert (rc, out, err) == (1, "", "stockade: not_found: no tenant 'nobody'\n")


@pytest.mark.parametrize("sql_target", ["postgres"], indirect=True)  # SQLite: an anchor catches it (test_cli)
@pytest.mark.parametrize("cut", ["tail", "whole-chain"])
async def test_pg_a_cut_off_tail_is_caught_by_the_head_row(sql_db, capsys, cut):
    """PostgreSQL keeps each chain's head apart from the records (audit_heads, advanced in the same
    statement as each insert): records cut off the end without it are caught without an anchor."""
    tid, audit = await seeded(sql_db, 5)
    await tamper(sql_db, "DELETE FROM audit_log WHERE tenant_id = ? AND seq > ?", tid, 3 if cut == "tail" else 0)
    rc, err = await verify(sql_db, audit, capsys, tid)
    end = 3 if cut == "tail" else 0
    assert (rc, err) == (1, f"stockade: audit.corrupt: audit chain broken: tenant {tid}: records end at {end} but the chain's head"
                            " row names record 5 (records deleted from the end)")
    assert tid in await audit.tenants()  # `audit verify` without --tenant: the head row still lists it


@pytest.mark.parametrize("edit,problem", [
    ("DELETE FROM audit_heads WHERE tenant_id = ?", "the chain has no head row (deleted)"),
    ("UPDATE audit_heads SET seq = 2, hash = (SELECT hash FROM audit_log WHERE tenant_id = ? AND seq = 2)"
     " WHERE tenant_id = ?", "the chain's head row names record 2 (records appended past it)"),
    ("UPDATE audit_heads SET hash = repeat('f', 64) WHERE tenant_id = ?",
     "the chain's head row names another record 3 (records replaced)"),
])
@pytest.mark.parametrize("sql_target", ["postgres"], indirect=True)  # SQLite keeps no head apart from the records
async def test_pg_a_head_row_that_disagrees_with_the_log_is_named(sql_db, capsys, edit, problem):
    tid, audit = await seeded(sql_db, 3)
    await tamper(sql_db, edit, *([tid] * edit.count("?")))
    rc, err = await verify(sql_db, audit, capsys, tid)
    assert (rc, err) == (1, f"stockade: audit.corrupt: audit chain broken: tenant {tid}: records end at 3 but {problem}")


async def test_a_replayed_older_chain_is_caught_by_an_anchor(sql_db, capsys):
    """The writer keeps a copy of the chain, lets it grow, then puts the old copy back (drops the new
    records; on PostgreSQL also rewinds the head row): it verifies on its own, not against an anchor."""
    tid, audit = await seeded(sql_db, 3)
    old_head = (await audit.list(tid))[-1]
    rec = AuditRecorder(audit, KEY)
    await rec.record(tid, "tool.denied", code="policy.denied")
    rc, out = await verify(sql_db, audit, capsys, tid)
    assert rc == 0 and out["heads"][tid]["seq"] == 4
    anchor = Anchor(tid, 4, out["heads"][tid]["hash"], "heads.json")
    await tamper(sql_db, "DELETE FROM audit_log WHERE tenant_id = ? AND seq > 3", tid)
    if sql_db.is_pg:
        await tamper(sql_db, "UPDATE audit_heads SET seq = 3, hash = ? WHERE tenant_id = ?", old_head.hash, tid)
    assert (await verify(sql_db, audit, capsys, tid))[0] == 0
    rc, err = await verify(sql_db, audit, capsys, tid, [anchor])
    assert rc == 1 and "records deleted from the end" in err


# --------------------------------------------------------------------------- receipts offline


def _receipt() -> dict[str, Any]:
    from tests.test_audit_chain import chain

    recs = chain(4, tenant="ten_a")
    return sign_receipt(build_receipt(a_run("ten_a"), recs, recs[-1]), KEY_SIGN)


def _swap(r: dict[str, Any]) -> None:
    r["spans"][0], r["spans"][1] = r["spans"][1], r["spans"][0]


RECEIPT_EDITS = {
    "span-dropped": lambda r: r["spans"].pop(1),
    "spans-reordered": _swap,
    "span-seq-renumbered": lambda r: r["spans"][0].update(seq=9),
    "verdict-flipped": lambda r: r["spans"][0].update(verdict="deny"),
    "audit-hash-of-another-record": lambda r: r["spans"][0].update(audit_hash=r["spans"][1]["audit_hash"]),
    "chain-head-moved-back": lambda r: r.update(chain_head={"seq": 1, "hash": r["spans"][0]["audit_hash"]}),
    "other-tenant": lambda r: r.update(tenant_id="ten_b"),
    "field-added": lambda r: r.update(note="ok"),
    "cost-as-int": lambda r: r.update(total_cost_usd=int(r["total_cost_usd"] * 1e6)),
    "alg-renamed": lambda r: r["signature"].update(alg="ed25519"),
    "signature-with-whitespace": lambda r: r["signature"].update(value=" " + r["signature"]["value"]),
    "signature-of-another-receipt": lambda r: r["signature"].update(
        value=base64.b64encode(KEY_SIGN.sign(b"{}")).decode()),
}


@pytest.mark.parametrize("edit", list(RECEIPT_EDITS))
def test_receipt_signature_binds_every_member(edit):
    receipt = _receipt()
    assert verify_receipt(json.loads(json.dumps(receipt)), PUB)
    RECEIPT_EDITS[edit](receipt)
    assert not verify_receipt(receipt, PUB)


def test_receipt_signed_by_another_key_is_invalid():
    other = Ed25519PrivateKey.generate()
    receipt = _receipt()
    forged = sign_receipt({k: v for k, v in receipt.items() if k != "signature"}, other)
    assert not verify_receipt(forged, PUB) and verify_receipt(forged, public_key_pem(other))


def test_chain_fields_are_what_the_verifier_covers():
    """A field added to AuditRecord later must be bound by the hash too (or this names it)."""
    from supervisor.stores.records import AuditRecord

    chain_only = {"tenant_id", "seq", "prev_hash", "hash", "mac"}
    assert {f.name for f in dataclasses.fields(AuditRecord)} - chain_only == set(FIELDS)


# --------------------------------------------------------------------------- two processes, then the real CLI

_APPENDER = r"""
import asyncio, sys
from supervisor.runtime import open_runtime
from supervisor.settings import load_settings

async def main(tid, n, name):
    rt = await open_runtime(load_settings())
    try:
        print("ready", flush=True)
        sys.stdin.readline()  # the go signal: both processes append at once
        for i in range(n):
            await rt.recorder.record(tid, "tool.allowed", tool="echo", detail={"p": name, "i": i})
    finally:
        await rt.stop()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stack", ["sqlite", "postgres"])
def test_two_processes_append_to_one_chain_while_it_is_verified(env, capsys, request, monkeypatch, stack):
    """Two supervisor processes append to one tenant's chain at once while `stockade audit verify`
    runs against it: every verify passes (no false alarm), and the final chain holds every record once."""
    import os
    import subprocess
    import sys

    if stack == "postgres":
        monkeypatch.setenv("STOCKADE_DATABASE_URL", request.getfixturevalue("fresh_pg_url"))
    rc, out, _ = _cli(capsys, "tenant", "create", f"race-{os.getpid()}-{stack}")
    assert rc == 0
    tid = json.loads(out)["tenant_id"]
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, tid, str(n), name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=_ROOT)
             for name in ("a", "b")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        verifies = 0
        while verifies == 0 or any(p.poll() is None for p in procs):
            rc, out, err = _cli(capsys, "audit", "verify", "--tenant", tid)
            assert rc == 0, err
            verifies += 1
        for p in procs:
            assert p.wait(60) == 0, p.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rc, out, err = _cli(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 0, err
    done = json.loads(out)
    assert done["records"] == 2 * n + 1 and done["heads"][tid]["seq"] == 2 * n + 1  # and tenant create's key.created


def _cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- what the store normalises is what is sealed


@pytest.mark.parametrize("detail", [
    {"t": (1e16, -0.0)},  # a tuple: JSON writes it as an array, jsonb then reads 1e16 back as an int
    {"l": [({"x": 2e20},)]},
    {"big": 1e300, "neg0": -0.0, "tiny": 5e-324},
], ids=["tuple", "tuple-in-list", "plain"])
async def test_a_record_with_floats_jsonb_normalises_verifies(sql_db, detail):
    tid = await sql_db.new_tenant()
    audit = store(sql_db, "AuditLog")
    written = await AuditRecorder(audit, KEY).record(tid, "tool.allowed", detail=detail)
    listed = await audit.list(tid)
    assert first_break(tid, listed) is None
    assert canonical(listed[0].detail) == canonical(written.detail)


# --------------------------------------------------------------------------- `stockade receipt verify` offline


@pytest.mark.parametrize("member", ["total_cost_usd", "status", "spans", "signature"])
def test_receipt_verify_refuses_a_file_that_reads_two_ways(env, capsys, tmp_path, member):
    """A valid receipt with one member written twice, the forged value first: Python (and most parsers)
    keep the last, the signed one, and the receipt verified; a reader that keeps the first (SQLite's
    json_extract, some streaming parsers) shows the forgery under a signature `receipt verify` called valid."""
    receipt = _receipt()
    pub = tmp_path / "pub.pem"
    pub.write_text(PUB)
    forged = {"total_cost_usd": 0.0, "status": "failed", "spans": [], "signature": {"alg": "Ed25519", "value": "AAAA"}}
    text = json.dumps(receipt)
    genuine = tmp_path / "genuine.json"
    genuine.write_text(text)
    rc, out, _ = _cli(capsys, "receipt", "verify", str(genuine), "--public-key", str(pub))
    assert rc == 0 and json.loads(out)["valid"] is True
    two_ways = tmp_path / "two-ways.json"
    two_ways.write_text("{" + json.dumps(member) + ": " + json.dumps(forged[member]) + ", " + text[1:])
    assert json.loads(two_ways.read_text()) == receipt  # what the verifier used to see: the genuine receipt
    rc, out, err = _cli(capsys, "receipt", "verify", str(two_ways), "--public-key", str(pub))
    assert (rc, out) == (1, "") and err == f"stockade: input.invalid: the receipt is not JSON: duplicate member {member!r}\n"
