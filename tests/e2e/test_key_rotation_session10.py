"""Key rotation over real nodes (session 10), both stacks.

A node runs with the audit key K0; the deployment is restarted with K1 and K0 retired. Before: every
receipt of a run from before the rotation was refused (audit.corrupt, "MAC invalid") and ``stockade audit
verify`` failed at the tenant's first record. Now old receipts are still signed and verify, the chain
verifies across the rotation, and a record appended with the retired (leaked) key afterwards is named.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from pydantic import SecretStr

from supervisor.audit import AuditRecorder, Sealer
from supervisor.audit.receipts import verify_receipt
from tests.e2e.harness import ROOT, idle_runs, start_node

pytestmark = pytest.mark.timeout(120)

K1 = "rotated-audit-key-0123456789abcdef"


async def _cli(settings: Any, *argv: str, audit_key: str, retired: str | None) -> tuple[int, str, str]:
    environ = {"PATH": "/usr/bin:/bin", "STOCKADE_DATA_DIR": str(settings.data_dir),
               "STOCKADE_BUNDLES_DIR": str(settings.bundles_dir), "STOCKADE_AUDIT_KEY": audit_key}
    if settings.secrets_key is not None:  # the node's (harness.settings_for): a CLI of its deployment has it too
        environ["STOCKADE_SECRETS_KEY"] = settings.secrets_key.get_secret_value()
    if settings.uses_postgres:
        environ["STOCKADE_DATABASE_URL"] = settings.database_url
    if retired is not None:
        environ["STOCKADE_AUDIT_KEYS_RETIRED"] = retired
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *argv, env=environ, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def _records(rt: Any, tid: str, run_id: str, n: int, recorder: Any = None) -> None:
    for i in range(n):
        await (recorder or rt.recorder).record(tid, "tool.allowed", run_id=run_id, tool="echo",
                                               detail={"i": i, "verdict": "allow"})


async def test_receipts_and_the_chain_across_an_audit_key_rotation(node):
    k0 = node.rt.settings.audit_key.get_secret_value()
    tid, key = await node.tenant()
    old_run, new_run = await idle_runs(node, tid, 2)
    await _records(node.rt, tid, old_run, 3)  # under K0
    c = node.client(key)
    before = await c.get(f"/v1/runs/{old_run}/receipt")
    assert before.status_code == 200, before.text
    # the restart with the new key (same data dir and store); the old node only stays up to play the forger
    rotated = node.rt.settings.model_copy(update={"audit_key": SecretStr(K1), "audit_keys_retired": (SecretStr(k0),)})
    b = await start_node(rotated, workers=False)
    try:
        await _records(b.rt, tid, new_run, 2)  # under K1
        cb = b.client(key)
        pem = (await cb.get("/v1/receipts/public-key")).text
        r = await cb.get(f"/v1/runs/{old_run}/receipt")
        assert r.status_code == 200, r.text
        assert verify_receipt(r.json(), pem) and [s["audit_hash"] for s in r.json()["spans"]] == \
            [s["audit_hash"] for s in before.json()["spans"]]
        r = await cb.get(f"/v1/runs/{new_run}/receipt")
        assert r.status_code == 200 and verify_receipt(r.json(), pem), r.text

        rc, out, err = await _cli(rotated, "audit", "verify", "--tenant", tid, audit_key=K1, retired=k0)
        assert rc == 0 and json.loads(out)["verified"] is True, err
        rc, _, err = await _cli(rotated, "audit", "verify", "--tenant", tid, audit_key=K1, retired=None)
        assert rc == 1 and ": record 1: MAC invalid" in err, err  # the retired key not configured: as before

        # the leaked old key appends after the rotation (links, hashes and head row all right)
        head = await b.rt.services.audit.head(tid)
        await _records(node.rt, tid, new_run, 1, recorder=AuditRecorder(b.rt.services.audit, Sealer(k0.encode())))
        rc, _, err = await _cli(rotated, "audit", "verify", "--tenant", tid, audit_key=K1, retired=k0)
        assert rc == 1 and f": record {head.seq + 1}: MAC made with a retired key after rotation" in err, err
        assert k0 not in err and K1 not in err
        r = await cb.get(f"/v1/runs/{new_run}/receipt")
        assert r.status_code == 500 and r.json()["code"] == "audit.corrupt", r.text[:300]
        assert "retired key after rotation" in r.json()["detail"]
    finally:
        await b.stop()


async def test_receipts_across_a_signing_key_rotation(node, tmp_path):
    """The receipt signing key is rotated (a new PEM in STOCKADE_SIGNING_KEY_FILE, the old one's public half
    in STOCKADE_SIGNING_KEY_FILES_RETIRED): receipts handed out before still verify against the published
    key list, new ones name the new key, and /v1/receipts/public-key serves the current key as before."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    tid, key = await node.tenant()
    (run_id,) = await idle_runs(node, tid, 1)
    await _records(node.rt, tid, run_id, 2)
    c = node.client(key)
    old_pem = (await c.get("/v1/receipts/public-key")).text
    old_receipt = (await c.get(f"/v1/runs/{run_id}/receipt")).json()
    listing = (await c.get("/v1/receipts/public-keys")).json()["data"]
    assert [(k["pem"], k["current"]) for k in listing] == [(old_pem, True)]
    assert old_receipt["key_id"] == listing[0]["key_id"] and verify_receipt(old_receipt, old_pem)

    new_file, old_pub = node.data_dir / "keys" / "receipt-2.pem", tmp_path / "old.pub.pem"
    new_file.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    old_pub.write_text(old_pem)  # the public half is enough to verify
    rotated = node.rt.settings.model_copy(update={"signing_key_file": new_file, "signing_key_files_retired": (old_pub,)})
    b = await start_node(rotated, workers=False)
    try:
        anon = b.client()
        new_pem = (await anon.get("/v1/receipts/public-key")).text
        assert new_pem != old_pem and new_pem.startswith("-----BEGIN PUBLIC KEY-----")
        r = await anon.get("/v1/receipts/public-keys")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        listing = r.json()["data"]
        assert [(k["pem"], k["current"], k["next"]) for k in listing] == [(new_pem, True, False), (old_pem, False, False)]
        pems = [k["pem"] for k in listing]
        assert verify_receipt(old_receipt, pems) and not verify_receipt(old_receipt, new_pem)
        fresh = (await b.client(key).get(f"/v1/runs/{run_id}/receipt")).json()  # the same run, signed anew
        assert fresh["key_id"] == listing[0]["key_id"] != old_receipt["key_id"]
        assert verify_receipt(fresh, pems) and verify_receipt(fresh, new_pem)
        # the CLI, with the listing saved as served
        (tmp_path / "keys.json").write_text(r.text)
        (tmp_path / "old.json").write_text(json.dumps(old_receipt))
        rc, out, err = await _cli(rotated, "receipt", "verify", str(tmp_path / "old.json"), "--public-key",
                                  str(tmp_path / "keys.json"), audit_key="unused-audit-key-0123456789", retired=None)
        assert rc == 0 and json.loads(out)["key_id"] == old_receipt["key_id"], err
    finally:
        await b.stop()
