"""Rolling key rotation (session 12): rotate the audit, signing and secrets keys without stopping every node.

Before: a rotation needed every node stopped. A node restarted on the new audit key sealed records with it,
and a node still on the old key then appended to the same chains with the old key: a record of a retired
key after a newer key's record, which ``audit verify`` rightly reports as a forgery. Now each key has a
``..._NEXT`` setting, given to every node first: the next audit key verifies, and a node that finds a chain
head sealed with it seals with it too from then on, so a chain's key only moves forward while old and new
nodes append side by side; the next signing key is published; the next secrets key opens.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from typing import Any

import pytest

from app import cli
from supervisor.audit import AuditRecorder, Sealer
from supervisor.audit.chain import GENESIS, verify_chain
from supervisor.errors import StockadeError
from supervisor.secretbox import SecretBox
from supervisor.stores.records import AuditRecord
from tests import test_cli as _cli_tests
from tests.contract import conftest as _contract
from tests.contract._helpers import store

# the contract suite's fixtures: SQLite and PostgreSQL (a database of their own: chains under keys of their own)
sql_target = _contract.sql_target_own_db
sql_db = _contract.sql_db
env = _cli_tests.env

pytestmark = pytest.mark.timeout(60)

K0, K1 = b"rolling-key-zero-0123456789", b"rolling-key-one-0123456789ab"
FIELDS = {"ts": 1000.0, "kind": "tool.allowed", "run_id": "run_1", "tool": "echo", "args_hash": "h",
          "rule_id": None, "policy_version": "p", "code": None, "cost_micro": 0, "detail": {}}


def step1() -> Sealer:
    """A node given the new key as next (the first pass of the rollout)."""
    return Sealer(K0, (), K1)


def step2() -> Sealer:
    """A node restarted on the new key, the old one retired (the second pass)."""
    return Sealer(K1, [K0])


def append(records: list[AuditRecord], sealer: Sealer, *, read_head: bool = True) -> list[AuditRecord]:
    """One more record sealed by ``sealer``; ``read_head``: the head is handed over with its MAC, as a store
    does when the head is not this node's own last write."""
    seq, prev = len(records) + 1, records[-1].hash if records else GENESIS
    prev_mac = records[-1].mac if records and read_head else None
    digest, mac = sealer.for_tenant("ten_a")(prev, seq, FIELDS, prev_mac)
    return [*records, AuditRecord(tenant_id="ten_a", seq=seq, prev_hash=prev, hash=digest, mac=mac, **FIELDS)]


# --------------------------------------------------------------------------- the sealer, offline


def test_a_node_with_a_next_key_seals_with_the_current_one_until_another_node_uses_the_next():
    a, b = step1(), step2()
    recs = append(append([], a), a)
    assert not a.promoted and all(hmac.compare_digest(Sealer(K0).mac(r.hash), r.mac) for r in recs)
    recs = append(recs, b)  # a node on the second pass writes with the new key
    recs = append(recs, a)  # the first-pass node reads that head: it follows
    assert a.promoted and recs[-1].mac == Sealer(K1).mac(recs[-1].hash)
    recs = append(recs, a, read_head=False)  # and stays on it, also with its own cached head
    assert recs[-1].mac == Sealer(K1).mac(recs[-1].hash)
    for verifier in (step1(), step2(), a, b):  # every node verifies the whole chain
        assert verify_chain("ten_a", recs, verifier) is None


def test_without_a_next_key_the_old_node_appends_nothing_after_the_new_keys_head():
    """What the rollout without STOCKADE_AUDIT_KEY_NEXT did (why every node had to be stopped): the old node
    sealed a record with the retired key after the new key's, a forgery in ``audit verify``. Since session 20
    a node refuses to append after a head it cannot verify (``audit.corrupt``): the chain stays whole."""
    recs = append(append([], Sealer(K0)), step2())
    with pytest.raises(StockadeError) as err:
        append(recs, Sealer(K0))
    assert err.value.code == "audit.corrupt"
    assert verify_chain("ten_a", recs, step2()) is None


def test_a_head_not_made_by_the_next_key_does_not_promote():
    a = step1()
    recs = append([], Sealer(K0))
    seal = a.for_tenant("ten_a")
    for mac in (recs[0].mac, "ab" * 32, "é" * 64, Sealer(os.urandom(32)).mac(recs[0].hash), ""):
        seal(recs[0].hash, 2, FIELDS, mac)  # its own key's, a MAC no key made, not ASCII, another deployment's
    assert not a.promoted
    seal(recs[0].hash, 2, FIELDS, Sealer(K1).mac(recs[0].hash))
    assert a.promoted


def test_the_next_key_is_numbered_after_the_current_one():
    a = step1()
    _, mac_next = Sealer(K1).for_tenant("t")(GENESIS, 1, FIELDS)
    digest, mac_cur = Sealer(K0).for_tenant("t")(GENESIS, 1, FIELDS)
    assert a.key_index(digest, mac_cur) == 0 and a.key_index(digest, mac_next) == 1
    assert a.for_tenant("t").wants_head_mac() is True
    a.promote()
    assert a.key_index(digest, mac_cur) == 0 and a.key_index(digest, mac_next) == 1 and a.sealing_index == 1
    a.for_tenant("t")(digest, 2, FIELDS, mac_next)  # (a head another process wrote, verified once)
    assert a.for_tenant("t").wants_head_mac() is False
    k0 = Sealer(K0)
    assert k0.for_tenant("t").wants_head_mac() is True  # until one head of the tenant is verified (session 20)
    k0.for_tenant("t")(digest, 2, FIELDS, mac_cur)
    assert k0.for_tenant("t").wants_head_mac() is False
    # a current-key record after a next-key one is a step back, as any older key's would be
    recs = append(append([], step2()), Sealer(K0), read_head=False)  # (a writer that did not look at the head)
    assert verify_chain("ten_a", recs, step1()) is not None


@pytest.mark.parametrize("bad", [K0, b"short-key", b"x" * 8])
def test_a_next_key_that_is_not_a_new_key_is_refused(bad):
    with pytest.raises(ValueError):
        Sealer(K0, (), bad)
    with pytest.raises(ValueError):
        Sealer(K1, [K0], K0 if bad == K0 else bad)


# --------------------------------------------------------------------------- two nodes on one store (both stacks)


async def _node(sql_db: Any, sealer: Sealer) -> tuple[Any, AuditRecorder]:
    """Another process on the same database: its own handle, store and cached heads."""
    db = await sql_db.reopen()
    return db, AuditRecorder(store(sql_db, "AuditLog", db), sealer)


async def test_store_old_and_new_nodes_append_side_by_side_and_the_chain_verifies(sql_db):
    tid = await sql_db.new_tenant()
    audit = store(sql_db, "AuditLog")
    db_a, a = await _node(sql_db, step1())
    db_b, b = await _node(sql_db, step2())
    try:
        for rec in (a, a, b, a, a, b, b, a):  # turns, each node with its own cached head
            await rec.record(tid, "tool.allowed", run_id="run_1", tool="echo")
        assert a.sealer.promoted
        # and at once: many appends of both nodes racing for the head
        await asyncio.gather(*(rec.record(tid, "tool.allowed", run_id="run_2", tool="echo", detail={"i": i})
                               for i in range(12) for rec in (a, b)))
        records = await audit.list(tid, limit=1000)
        assert len(records) == 32
        assert verify_chain(tid, records, step2()) is None
        assert verify_chain(tid, records, step1()) is None
        macs = [Sealer(K1).mac(r.hash) == r.mac for r in records]
        assert macs == [False, False] + [True] * 30  # the key moved forward once, at the first new node's record
    finally:
        await db_a.close()
        await db_b.close()


@pytest.fixture
async def pg_db(fresh_pg_url):
    db = await _contract.open_postgres(fresh_pg_url, min_size=1, max_size=10)
    try:
        yield _contract.SqlDB("postgres", db, url=fresh_pg_url)
    finally:
        await db.close()


async def test_store_postgres_appends_queued_on_the_head_lock_follow_the_key_too(pg_db, monkeypatch):
    """PostgreSQL's fallback path (after lost races, the head row locked): the head's MAC is read there too.
    (SQLite has no such path: one writer at a time, the head re-read on a lost insert.)"""
    import supervisor.stores.postgres.audit as pg_audit

    sql_db = pg_db

    monkeypatch.setattr(pg_audit, "_OPTIMISTIC", 0)  # every append takes the locked path
    tid = await sql_db.new_tenant()
    db_a, a = await _node(sql_db, step1())
    db_b, b = await _node(sql_db, step2())
    try:
        for rec in (a, b, a, a):
            await rec.record(tid, "tool.allowed", run_id="run_1", tool="echo")
        assert a.sealer.promoted
        assert verify_chain(tid, await store(sql_db, "AuditLog").list(tid, limit=10), step2()) is None
    finally:
        await db_a.close()
        await db_b.close()


async def test_store_a_node_without_the_next_key_appends_nothing_after_the_new_key(sql_db):
    """The contrast (the documented precondition): a node not yet given the next key must not run beside a
    node on the new key. Its record after the new key's was reported as a forgery; since session 20 it
    refuses to append (its calls fail closed, its log says why) and the chain stays whole."""
    tid = await sql_db.new_tenant()
    db_a, a = await _node(sql_db, Sealer(K0))
    db_b, b = await _node(sql_db, step2())
    try:
        for rec in (a, b):
            await rec.record(tid, "tool.allowed", run_id="run_1", tool="echo")
        with pytest.raises(StockadeError):
            await a.record(tid, "tool.allowed", run_id="run_1", tool="echo")
        records = await store(sql_db, "AuditLog").list(tid, limit=10)
        assert len(records) == 2 and verify_chain(tid, records, step2()) is None
    finally:
        await db_a.close()
        await db_b.close()


async def test_store_hands_the_head_mac_only_when_it_read_the_head(sql_db):
    tid = await sql_db.new_tenant()
    seen: list[tuple[int, str | None]] = []
    inner = Sealer(K0).for_tenant(tid)

    def spy(prev: str, seq: int, fields: dict[str, Any], prev_mac: str | None = None) -> tuple[str, str]:
        seen.append((seq, prev_mac))
        return inner(prev, seq, fields)

    spy.wants_head_mac = lambda: True  # type: ignore[attr-defined]
    mine, other = store(sql_db, "AuditLog"), None
    db_o = await sql_db.reopen()
    try:
        other = store(sql_db, "AuditLog", db_o)
        r1 = await mine.append(tid, {"kind": "a"}, spy)
        await mine.append(tid, {"kind": "b"}, spy)  # its own head, cached: no MAC handed over
        r3 = await other.append(tid, {"kind": "c"}, spy)  # a head it did not write
        await mine.append(tid, {"kind": "d"}, spy)  # lost its race to `other`: reads the head
        assert seen[0] == (1, None) and seen[1] == (2, None)
        assert (3, r1.mac) not in seen and seen[-1] == (4, r3.mac)
        assert any(s == 3 and m is not None for s, m in seen[2:-1])  # `other` read the head it sealed against
    finally:
        await db_o.close()


# --------------------------------------------------------------------------- secrets


def test_secrets_a_node_with_the_next_key_opens_what_new_nodes_sealed_and_never_reseals_it_back():
    s_old, s_new = os.urandom(32), os.urandom(32)
    first = SecretBox(s_old, (), s_new)  # first pass
    second = SecretBox(s_new, [s_old])  # second pass
    sealed_new = second.seal("Bearer new", "b")
    sealed_old = first.seal("Bearer old", "b")
    assert first.open(sealed_new, "b") == "Bearer new" and second.open(sealed_old, "b") == "Bearer old"
    assert first.reseal(sealed_new, "b") is None  # never moved back to the old key
    assert first.reseal(sealed_old, "b") is None  # its current key
    assert second.open(second.reseal(sealed_old, "b"), "b") == "Bearer old"
    with pytest.raises(ValueError):
        SecretBox(s_old, (), b"short")


# --------------------------------------------------------------------------- settings


def _run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(("var", "value", "message"), [
    ("STOCKADE_AUDIT_KEY_NEXT", "short", "must be at least 16 characters"),
    ("STOCKADE_SECRETS_KEY_NEXT", "short", "must be at least 16 characters"),
])
def test_bad_next_keys_are_one_line_naming_the_variable(env, capsys, monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    rc, _, err = _run(capsys, "tenant", "list")
    assert rc != 0 and var in err and message in err and len(err.strip().splitlines()) == 1, err


def test_a_next_key_equal_to_the_current_or_a_retired_one_is_refused(env, capsys, monkeypatch):
    assert _run(capsys, "migrate")[0] == 0
    cur, old = "current-audit-key-0123456789", "old-audit-key-0123456789ab"
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", cur)
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", old)
    for nxt in (cur, old):
        monkeypatch.setenv("STOCKADE_AUDIT_KEY_NEXT", nxt)
        line = _cli_tests._one_line_error(*_run(capsys, "tenant", "list")[::2])
        assert line == ("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEY_NEXT: is the current audit "
                        "key or a retired one (it is the new key every node will seal with)")
    monkeypatch.delenv("STOCKADE_AUDIT_KEY_NEXT")
    monkeypatch.setenv("STOCKADE_SECRETS_KEY", cur)
    monkeypatch.setenv("STOCKADE_SECRETS_KEY_NEXT", cur)
    line = _cli_tests._one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_SECRETS_KEY_NEXT: is the current")


def test_next_signing_key_files(env, capsys, monkeypatch, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert _run(capsys, "migrate")[0] == 0
    current = env / "keys" / "receipt_ed25519.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE_NEXT", str(junk))
    line = _cli_tests._one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert line == (f"stockade: settings.invalid: invalid setting STOCKADE_SIGNING_KEY_FILE_NEXT: {junk} is not an "
                    "Ed25519 PEM key (public, or unencrypted private)")
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE_NEXT", str(current))
    line = _cli_tests._one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert "STOCKADE_SIGNING_KEY_FILE_NEXT" in line and "is the current signing key or a retired one" in line
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE_NEXT", str(tmp_path))
    line = _cli_tests._one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert "STOCKADE_SIGNING_KEY_FILE_NEXT" in line and "is not a regular file" in line
    pub = tmp_path / "next.pub.pem"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE_NEXT", str(pub))  # its public half is enough
    assert _run(capsys, "tenant", "list")[0] == 0
