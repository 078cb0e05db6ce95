"""Key rotation (session 10): the audit MAC key, the receipt signing key, the secrets key.

Before: setting a new STOCKADE_AUDIT_KEY made every existing record fail ``stockade audit verify`` ("MAC
invalid") and refused every receipt of an old run (audit.corrupt). Now the keys used before are listed in
STOCKADE_AUDIT_KEYS_RETIRED (oldest first): sealing uses the current key only; verification accepts a
retired key too, but along one tenant's chain the key never goes back, so a leaked retired key cannot
append forged records after the rotation point. Each attack runs on both stores where one is involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app import cli
from supervisor.audit import AuditRecorder, Sealer, build_receipt, sign_receipt, verify_receipt
from supervisor.audit.chain import GENESIS, ChainVerifier, record_problem, verify_chain
from supervisor.audit.keys import public_key_pem
from supervisor.audit.receipts import check_before_signing
from supervisor.errors import StockadeError
from supervisor.stores.records import AuditRecord, Run
from tests import test_cli as _cli_tests
from tests.contract import conftest as _contract
from tests.contract._helpers import store

# the contract suite's fixtures: SQLite and PostgreSQL (a database of their own: chains under keys of their own)
sql_target = _contract.sql_target_own_db
sql_db = _contract.sql_db
env = _cli_tests.env  # a clean STOCKADE_ environment on a throwaway embedded data dir

pytestmark = pytest.mark.timeout(60)

K0, K1, K2 = b"rotation-key-zero-0123456789", b"rotation-key-one-0123456789a", b"rotation-key-two-0123456789ab"
FIELDS = {"ts": 1000.0, "kind": "tool.allowed", "run_id": "run_1", "tool": "echo", "args_hash": "h",
          "rule_id": "r", "policy_version": "v", "code": None, "cost_micro": 1, "detail": {}}


def extend(records: list[AuditRecord], sealer: Sealer, n: int, tenant: str = "ten_a", **kw: Any) -> list[AuditRecord]:
    """``records`` plus ``n`` more sealed by ``sealer`` (whoever holds that key: the supervisor, or a forger)."""
    out = list(records)
    seal = sealer.for_tenant(tenant)
    for _ in range(n):
        seq, prev = len(out) + 1, out[-1].hash if out else GENESIS
        fields = FIELDS | {"cost_micro": seq, "detail": {"i": seq}} | kw
        digest, mac = seal(prev, seq, fields)
        out.append(AuditRecord(tenant_id=tenant, seq=seq, prev_hash=prev, hash=digest, mac=mac, **fields))
    return out


# --------------------------------------------------------------------------- the chain, offline


def test_records_before_and_after_a_rotation_verify():
    recs = extend(extend([], Sealer(K0), 3), Sealer(K1, [K0]), 3)
    assert verify_chain("ten_a", recs, Sealer(K1, [K0])) is None
    recs = extend(recs, Sealer(K2, [K0, K1]), 2)  # and a second rotation
    assert verify_chain("ten_a", recs, Sealer(K2, [K0, K1])) is None


def test_without_the_retired_key_the_first_old_record_is_named():
    recs = extend(extend([], Sealer(K0), 3), Sealer(K1), 3)
    brk = verify_chain("ten_a", recs, Sealer(K1))
    assert brk is not None and brk.seq == 1 and brk.problem.startswith("MAC invalid")


def test_a_record_forged_with_the_retired_key_after_rotation_is_named():
    """The attack: the old key leaked (why it was retired); its holder, who can write to the database,
    appends a record after the rotation. Every link and hash is right, its MAC is a retired key's."""
    recs = extend(extend([], Sealer(K0), 2), Sealer(K1, [K0]), 2)
    forged = extend(recs, Sealer(K0), 1, detail={"forged": True})
    brk = verify_chain("ten_a", forged, Sealer(K1, [K0]))
    assert brk is not None and brk.seq == 5 and "retired key after rotation" in brk.problem
    # the supervisor goes on appending after it (current key): the chain stays broken at the forgery
    brk = verify_chain("ten_a", extend(forged, Sealer(K1, [K0]), 2), Sealer(K1, [K0]))
    assert brk is not None and brk.seq == 5


def test_an_older_retired_key_cannot_follow_a_newer_retired_one():
    recs = extend(extend(extend([], Sealer(K0), 2), Sealer(K1, [K0]), 2), Sealer(K2, [K0, K1]), 1)
    forged = extend(recs[:4], Sealer(K0), 1)  # K0 after K1's records, both retired now
    brk = verify_chain("ten_a", forged, Sealer(K2, [K0, K1]))
    assert brk is not None and brk.seq == 5 and "retired key after rotation" in brk.problem
    # retired keys listed newest first: genuine history looks like going back, and the message says why
    brk = verify_chain("ten_a", recs, Sealer(K2, [K1, K0]))
    assert brk is not None and brk.seq == 3 and "not oldest first" in brk.problem


def test_a_chain_of_only_old_records_still_verifies_and_a_forged_prefix_breaks_the_links():
    old = extend([], Sealer(K0), 3)
    assert verify_chain("ten_a", old, Sealer(K1, [K0])) is None  # a tenant idle since the rotation
    recs = extend(old, Sealer(K1, [K0]), 2)
    # rewriting a record before the rotation with the old key: its hash changes, the next record no longer links
    f = {k: getattr(recs[1], k) for k in FIELDS} | {"detail": {"forged": True}}
    digest, mac = Sealer(K0).for_tenant("ten_a")(recs[0].hash, 2, f)
    recs[1] = AuditRecord(tenant_id="ten_a", seq=2, prev_hash=recs[0].hash, hash=digest, mac=mac, **f)
    brk = verify_chain("ten_a", recs, Sealer(K1, [K0]))
    assert brk is not None and brk.seq == 3 and "prev_hash" in brk.problem


def test_the_verifier_keeps_the_key_floor_across_pages():
    """``audit verify`` feeds page by page to one verifier: the floor carries over a page boundary."""
    recs = extend(extend([], Sealer(K0), 1), Sealer(K1, [K0]), 1)
    forged = extend(recs, Sealer(K0), 1)
    v = ChainVerifier("ten_a", Sealer(K1, [K0]))
    assert v.feed(forged[0]) is None and v.key_floor == 0
    assert v.feed(forged[1]) is None and v.key_floor == 1
    brk = v.feed(forged[2])
    assert brk is not None and brk.seq == 3
    assert record_problem("ten_a", forged[2], Sealer(K1, [K0])) is None  # on its own, with no floor: fine


def test_sealing_always_uses_the_current_key_and_the_hot_path_is_one_hmac():
    s = Sealer(K1, [K0])
    _, mac = s.for_tenant("t")(GENESIS, 1, FIELDS)
    assert mac == Sealer(K1).mac(_)
    assert s.key_index(_, mac) == 1 and Sealer(K0).mac(_) != mac
    calls = []
    real = s.mac
    s.mac = lambda d: calls.append(d) or real(d)  # type: ignore[method-assign]
    assert s.key_index(_, mac) == 1 and len(calls) == 1


def test_short_retired_keys_are_refused():
    with pytest.raises(ValueError):
        Sealer(K1, [b"short"])


# --------------------------------------------------------------------------- stores and receipts (both stacks)


def a_run(tid: str, run_id: str) -> Run:
    return Run(**{f.name: None for f in dataclasses.fields(Run)} | {"id": run_id, "tenant_id": tid, "status": "succeeded"})


async def _record(rec: AuditRecorder, tid: str, run_id: str, n: int) -> None:
    for i in range(n):
        await rec.record(tid, "tool.allowed", run_id=run_id, tool="echo", detail={"i": i, "verdict": "allow"})


async def _receipt_check(audit: Any, tid: str, run_id: str, sealer: Sealer) -> None:
    records = await audit.list(tid, run_id=run_id, limit=1000)
    await check_before_signing(audit, tid, records, await audit.head(tid), sealer)


async def test_store_chain_across_a_rotation_verifies_and_old_receipts_still_sign(sql_db):
    tid = await sql_db.new_tenant()
    audit = store(sql_db, "AuditLog")
    await _record(AuditRecorder(audit, Sealer(K0)), tid, "run_old", 3)  # before the rotation
    rotated = Sealer(K1, [K0])
    await _record(AuditRecorder(audit, rotated), tid, "run_new", 3)  # after it (a restart with the new key)
    assert verify_chain(tid, await audit.list(tid, limit=100), rotated) is None
    await _receipt_check(audit, tid, "run_old", rotated)  # the receipt of an old run is still signed
    await _receipt_check(audit, tid, "run_new", rotated)
    signer = Ed25519PrivateKey.generate()
    records = await audit.list(tid, run_id="run_old", limit=100)
    receipt = sign_receipt(build_receipt(a_run(tid, "run_old"), records, await audit.head(tid)), signer)
    assert verify_receipt(receipt, public_key_pem(signer))
    # without the retired key: the old run's receipt is refused, as before rotation existed
    with pytest.raises(StockadeError) as exc:
        await _receipt_check(audit, tid, "run_old", Sealer(K1))
    assert exc.value.code == "audit.corrupt" and "MAC invalid" in exc.value.detail


async def test_store_a_record_appended_with_the_retired_key_after_rotation_is_named(sql_db):
    """A writer holding the leaked old key appends through the store (links, hashes and the PostgreSQL head
    row all right): ``audit verify`` names it, and no receipt over a window holding it is signed."""
    tid = await sql_db.new_tenant()
    audit = store(sql_db, "AuditLog")
    rotated = Sealer(K1, [K0])
    await _record(AuditRecorder(audit, Sealer(K0)), tid, "run_old", 2)  # seq 1, 2
    await _record(AuditRecorder(audit, rotated), tid, "run_new", 2)  # seq 3, 4
    await _record(AuditRecorder(audit, Sealer(K0)), tid, "run_new", 1)  # seq 5: the forgery
    await _record(AuditRecorder(audit, rotated), tid, "run_new", 1)  # seq 6: the supervisor goes on
    brk = verify_chain(tid, await audit.list(tid, limit=100), rotated)
    assert brk is not None and brk.seq == 5 and "retired key after rotation" in brk.problem
    with pytest.raises(StockadeError) as exc:
        await _receipt_check(audit, tid, "run_new", rotated)
    assert exc.value.code == "audit.corrupt" and "record 5 " in exc.value.detail
    assert "retired key after rotation" in exc.value.detail


async def test_store_a_head_forged_with_the_retired_key_is_refused(sql_db):
    """The run's window ends at a current-key record; the chain's head (checked on its own) was appended
    after it with the old key: refused too."""
    tid = await sql_db.new_tenant()
    audit = store(sql_db, "AuditLog")
    rotated = Sealer(K1, [K0])
    await _record(AuditRecorder(audit, rotated), tid, "run_new", 2)  # seq 1, 2
    await _record(AuditRecorder(audit, rotated), tid, "other", 2)  # seq 3, 4
    await _record(AuditRecorder(audit, Sealer(K0)), tid, "other", 1)  # seq 5: forged, the head
    with pytest.raises(StockadeError) as exc:
        await _receipt_check(audit, tid, "run_new", rotated)
    assert exc.value.code == "audit.corrupt" and "record 5 " in exc.value.detail


# --------------------------------------------------------------------------- the CLI, end to end


def _run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


class _Forger(Sealer):
    """A writer holding a leaked key, appending whatever the head (a Sealer of ours refuses to append after a
    head it cannot verify, since session 20; a forger writes to the store as it likes)."""

    def for_tenant(self, tenant_id: str):
        seal = super().for_tenant(tenant_id)

        def forge(prev_hash: str, seq: int, fields: dict, prev_mac: str | None = None) -> tuple[str, str]:
            return seal(prev_hash, seq, fields)

        forge.wants_head_mac = lambda: False  # type: ignore[attr-defined]
        return forge


def _seed(n: int, run_id: str, forged_with: bytes | None = None) -> str:
    """``n`` records of tenant acme (made if missing) through a runtime on the environment's settings;
    ``forged_with``: sealed with that key instead (a writer holding it)."""
    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings
    from supervisor.tenancy import create_tenant

    async def go() -> str:
        rt = await open_runtime(load_settings())
        try:
            t = await rt.services.tenants.get_tenant_by_name("acme")
            if t is None:
                t, _ = await create_tenant(rt.services, "acme")
            rec = rt.recorder if forged_with is None else AuditRecorder(rt.services.audit, _Forger(forged_with))
            await _record(rec, t.id, run_id, n)
            return t.id
        finally:
            await rt.stop()

    return asyncio.run(asyncio.wait_for(go(), 30))


@pytest.fixture(params=["embedded", "postgres"])
def cli_stack(request, env, monkeypatch):
    """The CLI's environment on SQLite (generated key in the data dir) or on a fresh PostgreSQL database."""
    if request.param == "postgres":
        monkeypatch.setenv("STOCKADE_DATABASE_URL", request.getfixturevalue("fresh_pg_url"))
    return env


def test_cli_audit_verify_across_a_rotation(cli_stack, capsys, monkeypatch):
    """The documented rotation of a generated key: STOCKADE_AUDIT_KEY = a new secret, the old one (the
    contents of <data_dir>/keys/audit.key) in STOCKADE_AUDIT_KEYS_RETIRED."""
    tid = _seed(3, "run_old")  # under the generated key
    old = (cli_stack / "keys" / "audit.key").read_text().strip()
    new = "a-new-audit-key-" + os.urandom(8).hex()
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", new)
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", old)
    _seed(2, "run_new")
    rc, out, err = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 0 and '"verified": true' in out and '"records": 5' in out, err
    # an operator who forgets the retired key: the first old record is named, as before rotation existed
    monkeypatch.delenv("STOCKADE_AUDIT_KEYS_RETIRED")
    rc, _, err = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 1 and err.strip() == (f"stockade: audit.corrupt: audit chain broken: tenant {tid}: record 1: MAC "
                                       "invalid (record forged without the supervisor's key)")
    # the leaked old key appends after the rotation: named
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", old)
    _seed(1, "run_new", forged_with=old.encode())
    _seed(1, "run_new")
    rc, _, err = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 1 and err.strip().startswith(f"stockade: audit.corrupt: audit chain broken: tenant {tid}: record 6: "
                                              "MAC made with a retired key after rotation"), err
    assert old not in err and new not in err


@pytest.mark.parametrize("value,message", [
    ("short", "key 1 of 1 must be at least 16 characters"),
    ("a-long-enough-retired-key-1,short", "key 2 of 2 must be at least 16 characters"),
    ("a-long-enough-retired-key-1,,a-long-enough-retired-key-2", "holds an empty item"),
    ("a-long-enough-retired-key-1,", "holds an empty item"),
    ("a-long-enough-retired-key-1,a-long-enough-retired-key-1", "lists one key twice"),
    ('["a-long-enough-retired-key-1"', 'starts with "[" but is not a JSON list of strings'),
    ('[1, 2]', 'starts with "[" but is not a JSON list of strings'),
])
def test_bad_retired_audit_keys_are_one_line_naming_the_variable(env, capsys, monkeypatch, value, message):
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", value)
    rc, _, err = _run(capsys, "migrate")
    line = _cli_tests._one_line_error(rc, err)
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEYS_RETIRED: ")
    assert message in line
    assert "a-long-enough" not in line and "short" not in line.split(":", 3)[-1].replace("characters", "")
    assert not env.exists()  # refused before anything was opened


def test_retired_keys_as_a_json_list_and_with_spaces(env):
    from supervisor.settings import load_settings

    s = load_settings(audit_keys_retired=' a-long-enough-retired-key-1 , a-long-enough-retired-key-2 ')
    assert [k.get_secret_value() for k in s.audit_keys_retired] == ["a-long-enough-retired-key-1",
                                                                      "a-long-enough-retired-key-2"]
    s = load_settings(audit_keys_retired='["a-long-enough, with a comma"]')
    assert [k.get_secret_value() for k in s.audit_keys_retired] == ["a-long-enough, with a comma"]
    assert "a-long-enough" not in repr(s) and "a-long-enough" not in s.model_dump_json()


def test_the_current_key_in_the_retired_list_is_refused(env, capsys, monkeypatch):
    """A rotation half done: the generated key moved to the retired list, STOCKADE_AUDIT_KEY not set."""
    assert _run(capsys, "migrate")[0] == 0
    old = (env / "keys" / "audit.key").read_text().strip()
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", old)
    line = _cli_tests._one_line_error(*_run(capsys, "tenant", "list")[::2])
    assert line == ("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEYS_RETIRED: holds the current "
                    "audit key (to rotate, set STOCKADE_AUDIT_KEY to a new secret)")



# --------------------------------------------------------------------------- (2) the receipt signing key

SIGN_OLD, SIGN_NEW = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def _kid(key: Ed25519PrivateKey) -> str:
    import hashlib

    return hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()[:16]


def _receipt(key: Ed25519PrivateKey) -> dict[str, Any]:
    recs = extend([], Sealer(K0), 2)
    return sign_receipt(build_receipt(a_run("ten_a", "run_1"), recs, recs[-1]), key)


def test_a_receipt_names_its_signing_key_and_verifies_against_the_key_list():
    r = _receipt(SIGN_OLD)
    assert r["key_id"] == _kid(SIGN_OLD) and len(r["key_id"]) == 16
    both = [public_key_pem(SIGN_NEW), public_key_pem(SIGN_OLD)]
    assert verify_receipt(r, public_key_pem(SIGN_OLD))  # one key, as before
    assert verify_receipt(r, both)  # after the rotation: the list picks the retired key by its id
    assert not verify_receipt(r, [public_key_pem(SIGN_NEW)])  # the key it names is not given
    assert verify_receipt(_receipt(SIGN_NEW), both)


def test_a_changed_key_id_never_verifies():
    """key_id is signed with the rest: pointing it at another published key (or at nothing) fails."""
    both = [public_key_pem(SIGN_NEW), public_key_pem(SIGN_OLD)]
    r = _receipt(SIGN_OLD)
    for kid in (_kid(SIGN_NEW), "0" * 16, None, 5, ["x"]):
        assert not verify_receipt(r | {"key_id": kid}, both), kid
    assert not verify_receipt({k: v for k, v in r.items() if k != "key_id"}, both)  # dropped: the body changed


def test_a_receipt_from_before_key_ids_verifies_as_before():
    import base64

    from supervisor.audit import canonical

    recs = extend([], Sealer(K0), 2)
    body = build_receipt(a_run("ten_a", "run_1"), recs, recs[-1])
    old = body | {"signature": {"alg": "Ed25519", "value": base64.b64encode(SIGN_OLD.sign(canonical(body))).decode()}}
    assert "key_id" not in old
    assert verify_receipt(old, public_key_pem(SIGN_OLD))
    assert verify_receipt(old, [public_key_pem(SIGN_NEW), public_key_pem(SIGN_OLD)])  # any of the listed keys
    assert not verify_receipt(old, [public_key_pem(SIGN_NEW)])


def _pem_file(path: Any, key: Ed25519PrivateKey, private: bool = False) -> Any:
    from cryptography.hazmat.primitives import serialization

    if private:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    else:
        path.write_text(public_key_pem(key))
    return path


def test_retired_signing_key_files_public_or_private(env, tmp_path):
    from supervisor.audit.keys import key_id, load_retired_signing_keys
    from supervisor.settings import load_settings

    pub = _pem_file(tmp_path / "old.pub.pem", SIGN_OLD)
    third = Ed25519PrivateKey.generate()
    priv = _pem_file(tmp_path / "older.pem", third, private=True)
    s = load_settings(signing_key_files_retired=f"{priv},{pub}")
    keys = load_retired_signing_keys(s, SIGN_NEW)
    assert [key_id(k) for k in keys] == [_kid(third), _kid(SIGN_OLD)]


@pytest.mark.parametrize("make,message", [
    ("missing", "cannot be read: No such file or directory"),
    ("text", "is not an Ed25519 PEM key"),
    ("rsa", "is not an Ed25519 PEM key"),
    ("current", "is the current signing key or listed twice"),
    ("twice", "is the current signing key or listed twice"),
])
def test_bad_retired_signing_key_files_are_one_line_naming_the_variable(env, tmp_path, capsys, monkeypatch, make, message):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    current = _pem_file(tmp_path / "current.pem", SIGN_NEW, private=True)
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE", str(current))
    path = tmp_path / "retired.pem"
    value = str(path)
    if make == "text":
        path.write_text("not a key")
    elif make == "rsa":
        path.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    elif make == "current":
        _pem_file(path, SIGN_NEW)
    elif make == "twice":
        _pem_file(path, SIGN_OLD)
        value = f"{path},{path}"
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILES_RETIRED", value)
    line = _cli_tests._one_line_error(*_run(capsys, "migrate")[::2])
    assert line.startswith(f"stockade: settings.invalid: invalid setting STOCKADE_SIGNING_KEY_FILES_RETIRED: {path} ")
    assert message in line


def test_a_retired_signing_key_path_that_is_a_directory_is_refused_at_settings(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILES_RETIRED", str(tmp_path))
    line = _cli_tests._one_line_error(*_run(capsys, "migrate")[::2])
    assert line == (f"stockade: settings.invalid: invalid setting STOCKADE_SIGNING_KEY_FILES_RETIRED: "
                    f"{tmp_path} is not a regular file")
    assert not env.exists()


def test_cli_receipt_verify_with_the_key_list(env, tmp_path, capsys):
    import json

    old_receipt = tmp_path / "old.json"
    old_receipt.write_text(json.dumps(_receipt(SIGN_OLD)))
    new_pub, old_pub = _pem_file(tmp_path / "new.pem", SIGN_NEW), _pem_file(tmp_path / "old.pem", SIGN_OLD)
    rc, _, err = _run(capsys, "receipt", "verify", str(old_receipt), "--public-key", str(new_pub))
    assert rc == 1 and err.strip().startswith(  # not said as for a forgery: no key given is the one that signed it
        f"stockade: receipt.invalid: the receipt names signing key '{_kid(SIGN_OLD)}', which is none of the keys given")
    rc, out, err = _run(capsys, "receipt", "verify", str(old_receipt), "--public-key", str(new_pub),
                        "--public-key", str(old_pub))
    assert rc == 0 and json.loads(out)["key_id"] == _kid(SIGN_OLD), err
    bundle = tmp_path / "both.pem"  # several PEM blocks in one file
    bundle.write_text(public_key_pem(SIGN_NEW) + public_key_pem(SIGN_OLD))
    assert _run(capsys, "receipt", "verify", str(old_receipt), "--public-key", str(bundle))[0] == 0
    listing = tmp_path / "public-keys.json"  # what GET /v1/receipts/public-keys serves
    listing.write_text(json.dumps({"data": [{"key_id": _kid(k), "pem": public_key_pem(k), "current": k is SIGN_NEW}
                                            for k in (SIGN_NEW, SIGN_OLD)]}))
    assert _run(capsys, "receipt", "verify", str(old_receipt), "--public-key", str(listing))[0] == 0
    for bad in ('{"data": [{"pem": 5}]}', '{"data": "x"}', '{"keys": []}', '{"data": []}', "{not json"):
        listing.write_text(bad)
        line = _cli_tests._one_line_error(*_run(capsys, "receipt", "verify", str(old_receipt), "--public-key",
                                                str(listing))[::2])
        assert line == f"stockade: input.invalid: public key {listing} is not a PEM public key", bad


# --------------------------------------------------------------------------- (3) the secrets key

S_OLD, S_NEW = os.urandom(32), os.urandom(32)


def test_a_value_sealed_under_a_retired_secrets_key_still_opens_and_reseals():
    from supervisor.secretbox import SecretBox

    token = SecretBox(S_OLD).seal("Bearer s3cret", "mcp-header\x00t\x00srv\x00Authorization")
    rotated = SecretBox(S_NEW, (S_OLD,))
    assert rotated.open(token, "mcp-header\x00t\x00srv\x00Authorization") == "Bearer s3cret"
    with pytest.raises(StockadeError) as exc:  # without the retired key: as before rotation existed
        SecretBox(S_NEW).open(token, "mcp-header\x00t\x00srv\x00Authorization")
    assert exc.value.code == "secret.unreadable"
    with pytest.raises(StockadeError):  # still bound to where it belongs, whichever key opens it
        rotated.open(token, "mcp-header\x00other\x00srv\x00Authorization")
    fresh = rotated.reseal(token, "mcp-header\x00t\x00srv\x00Authorization")
    assert fresh is not None and fresh != token
    assert SecretBox(S_NEW).open(fresh, "mcp-header\x00t\x00srv\x00Authorization") == "Bearer s3cret"  # key droppable
    assert rotated.reseal(fresh, "mcp-header\x00t\x00srv\x00Authorization") is None  # already current
    with pytest.raises(StockadeError):  # nothing is sealed under a retired key
        SecretBox(S_OLD).open(rotated.seal("x", "b"), "b")
    with pytest.raises(StockadeError) as exc:
        rotated.reseal(SecretBox(os.urandom(32)).seal("x", "b"), "b")
    assert exc.value.code == "secret.unreadable"


def test_retired_secrets_keys_settings(env, capsys, monkeypatch):
    from supervisor.secretbox import SecretBox, load_secrets_keys
    from supervisor.settings import load_settings

    monkeypatch.setenv("STOCKADE_SECRETS_KEYS_RETIRED", "a-long-enough-retired-key-1,short")
    line = _cli_tests._one_line_error(*_run(capsys, "migrate")[::2])
    assert line == ("stockade: settings.invalid: invalid setting STOCKADE_SECRETS_KEYS_RETIRED: key 2 of "
                    "2 must be at least 16 characters (it is a key)")
    monkeypatch.delenv("STOCKADE_SECRETS_KEYS_RETIRED")
    assert _run(capsys, "migrate")[0] == 0
    generated = (env / "keys" / "secrets.key").read_text().strip()
    with pytest.raises(Exception) as exc:  # the generated key moved to the retired list, no new key set
        load_secrets_keys(load_settings(secrets_keys_retired=generated))
    assert str(exc.value) == ("invalid setting STOCKADE_SECRETS_KEYS_RETIRED: holds the current secrets key (to "
                              "rotate, set STOCKADE_SECRETS_KEY to a new secret)")
    old_box = SecretBox(*load_secrets_keys(load_settings()))
    token = old_box.seal("v", "b")
    s = load_settings(secrets_key="a-new-secrets-key-0123456789", secrets_keys_retired=generated)
    assert SecretBox(*load_secrets_keys(s)).open(token, "b") == "v"
    assert "a-new-secrets" not in repr(s) and generated not in repr(s)


async def test_mcp_servers_sealed_before_a_secrets_key_rotation_still_open(sql_db, tmp_path):
    from types import SimpleNamespace

    from supervisor.secretbox import SecretBox
    from supervisor.settings import load_settings
    from supervisor.tools.mcp import McpServer, install, open_store
    from supervisor.tools.mcp.sealed import SealedMcpStore

    tid = await sql_db.new_tenant()
    old, new = "the-old-secrets-key-0123456789", "the-new-secrets-key-0123456789"
    before = load_settings(data_dir=tmp_path, secrets_key=old)
    from supervisor.secretbox import load_secrets_keys

    sealed = SealedMcpStore(open_store(sql_db.db), SecretBox(*load_secrets_keys(before)))
    await sealed.create_server(McpServer(tid, "srv", "https://mcp.example/t0ken", {"Authorization": "Bearer x"},
                                         1.0), [], approved_by=None)
    after = load_settings(data_dir=tmp_path, secrets_key=new, secrets_keys_retired=old)
    reg = SimpleNamespace(register=lambda *a: None, register_prefix=lambda *a: None)
    services = SimpleNamespace(extras={"db": sql_db.db}, closers=[])
    service = install(reg, after, services)
    assert service is not None
    try:
        got = await service.store.get_server(tid, "srv")
        assert got is not None and got.headers == {"Authorization": "Bearer x"}
    finally:
        for close in services.closers:
            await close()


def test_embedded_rotation_by_moving_the_generated_keys_away(env, capsys, monkeypatch):
    """The README's other way for generated keys: move them out of <data_dir>/keys, list them as retired;
    the next start generates new ones, and what the old ones made still verifies."""
    from supervisor.audit.keys import key_id, load_retired_signing_keys, load_signing_key
    from supervisor.settings import load_settings

    tid = _seed(2, "run_old")
    keys = env / "keys"
    old_sign = load_signing_key(load_settings())
    (keys / "audit.key").rename(env / "audit-old.key")
    (keys / "receipt_ed25519.pem").rename(env / "receipt-old.pem")
    monkeypatch.setenv("STOCKADE_AUDIT_KEYS_RETIRED", (env / "audit-old.key").read_text())
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILES_RETIRED", str(env / "receipt-old.pem"))
    _seed(2, "run_new")
    assert (keys / "audit.key").read_text() != (env / "audit-old.key").read_text()
    rc, out, err = _run(capsys, "audit", "verify", "--tenant", tid)
    assert rc == 0 and '"records": 4' in out, err
    s = load_settings()
    new_sign = load_signing_key(s)
    assert key_id(new_sign) != key_id(old_sign)
    assert [key_id(k) for k in load_retired_signing_keys(s, new_sign)] == [key_id(old_sign)]
