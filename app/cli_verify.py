"""The offline checks of the CLI: ``stockade audit verify`` (the hash chains, against anchor files),
``stockade receipt verify`` and ``stockade policy validate``."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from app.cli_io import _MAX_KEY_BYTES, _MAX_RECEIPT_BYTES, _fail, _out, _printable, _read_capped, _tenant_id
from supervisor.errors import StockadeError


async def _audit_verify(rt: Any, tenant_ref: str | None, anchors: list[Any], *, anchored: bool = False) -> int:
    """``anchored``: --anchor was given (its files may still name no head)."""
    from supervisor.audit.chain import ChainVerifier
    from supervisor.audit.keys import public_key_pem
    from supervisor.audit.receipts import verify_receipt

    s = rt.services
    if anchored and not anchors:
        return _fail("input.invalid: the anchor files name no chain head (an empty \"heads\", a receipt from before "
                     "its tenant's first record): there is nothing to check the chains against")
    receipts = [a for a in anchors if a.receipt is not None]
    signers = [public_key_pem(k) for k in (rt.signing_key, *rt.retired_signing_keys, rt.next_signing_key)
               if k is not None] if receipts else []
    for a in receipts:  # a receipt is trusted as an anchor only as signed: an edited one is no evidence against the log
        if not verify_receipt(a.receipt, signers):
            return _fail(f"input.invalid: {a.source}: a receipt whose signature this deployment's signing keys do not "
                         "verify (changed after it was signed?): not an anchor to check the log against")
    tenants = [await _tenant_id(s, tenant_ref)] if tenant_ref is not None else await s.audit.tenants()
    if tenant_ref is None:  # an anchored tenant whose records are all gone is not among those with records
        tenants += sorted({a.tenant_id for a in anchors} - set(tenants))
    elif anchors and not any(a.tenant_id == tenants[0] for a in anchors):
        # asked to check one tenant against anchors of others only: it checked nothing, and said "verified"
        files = ", ".join(sorted({str(a.source) for a in anchors}))
        return _fail(f"input.invalid: no anchor in {files} is of tenant {tenants[0]}: its chain has nothing to be "
                     "checked against (drop --tenant to check every anchored tenant)")
    total, heads, checked = 0, {}, 0
    for tid in tenants:
        head, head_problem = None, None
        try:
            head = await s.audit.head(tid)  # before the records: what the server appends meanwhile is no gap
        except StockadeError as exc:  # PostgreSQL's head row disagrees with the log: named after the records
            if exc.code != "audit.corrupt":
                raise
            head_problem = exc.detail
        verifier = ChainVerifier(tid, rt.sealer)  # page by page: constant memory, however long the chain
        pinned: dict[int, list[Any]] = {}  # two anchor files may pin one seq (and disagree): each is checked
        for a in anchors:
            if a.tenant_id == tid:
                pinned.setdefault(a.seq, []).append(a)
                checked += 1
        brk = None
        while brk is None:
            page = await s.audit.list(tid, after_seq=verifier.last_seq, limit=1000)
            for rec in page:
                if (brk := verifier.feed(rec)) is not None:
                    break
                a = next((a for a in pinned.get(rec.seq, ()) if rec.hash != a.hash), None)
                if a is not None:
                    brk = f"tenant {tid}: record {rec.seq}: not the record anchored in {a.source} (chain replaced)"
                    break
            total += len(page)
            if len(page) < 1000:
                break
            await asyncio.sleep(0)  # the embedded store never suspends: let Ctrl-C (task cancellation) in
        if brk is not None:
            return _fail(f"audit.corrupt: audit chain broken: {brk}")
        if head_problem is not None:
            return _fail(f"audit.corrupt: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but {head_problem}")
        if head is not None and verifier.last_seq < head.seq:
            return _fail(f"audit.corrupt: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but the head is {head.seq} (records deleted)")
        cut = [a for seq, pins in pinned.items() if seq > verifier.last_seq for a in pins]
        if cut:
            a = max(cut, key=lambda x: x.seq)
            return _fail(f"audit.corrupt: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but {a.source} "
                         f"anchors record {a.seq} (records deleted from the end)")
        if verifier.last_seq:  # the last record verified (not the head read before: records came since)
            heads[tid] = {"seq": verifier.last_seq, "hash": verifier.prev_hash}
    # "heads" is an anchor file for a later run (--anchor): keep it where the database's writers cannot reach
    _out(json.dumps({"verified": True, "tenants": len(tenants), "records": total, "anchors": checked,
                      "heads": heads}))
    return 0


def _policy_validate(path: str) -> int:
    from supervisor.policy.cli import validate_file

    try:
        errors = validate_file(path)
    except OSError as exc:  # missing, a folder, a FIFO or a device (refused, not waited on)
        raise StockadeError("input.invalid", f"cannot read {path}: {exc.strerror or exc}") from None
    for e in errors:  # the errors quote the file's own text: escaped like every other line
        print(_printable(f"{path}: {e}"), file=sys.stderr)
    if errors:
        return 1
    _out(_printable(f"{path}: valid policy"))
    return 0


def _public_keys(data: bytes, key_path: str) -> list[bytes]:
    """The PEM public keys in one ``--public-key`` file: one or more PEM blocks, or the JSON document of
    ``GET /v1/receipts/public-keys`` (the current key and the retired ones, after a rotation)."""
    import re

    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    bad = StockadeError("input.invalid", f"public key {key_path} is not a PEM public key")
    if data.lstrip()[:1] == b"{":
        try:
            pems = [k["pem"].encode() for k in json.loads(data)["data"]]
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise bad from None
    else:
        pems = re.findall(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", data, re.S) or [data]
    for pem in pems or [b""]:
        try:
            serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            raise bad from None
    return pems


def _receipt_verify(path: str, key_paths: list[str]) -> int:
    from supervisor.audit.receipts import key_ids, load_receipt, verify_receipt

    data = _read_capped(path, _MAX_RECEIPT_BYTES, "receipt")
    pems = [p for kp in key_paths for p in _public_keys(_read_capped(kp, _MAX_KEY_BYTES, "public key"), kp)]
    try:
        receipt = load_receipt(data)  # a member written twice: refused (other readers keep the other one)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        return _fail(f"input.invalid: the receipt is not JSON: {str(exc).splitlines()[0] if str(exc) else 'nested too deeply'}")
    kid = receipt.get("key_id") if isinstance(receipt, dict) else None
    given = key_ids(pems)
    if isinstance(kid, str) and kid not in given:  # nothing to check it with: not the same as a forged signature
        return _fail(f"receipt.invalid: the receipt names signing key {kid[:64]!r}, which is none of the keys given "
                     f"({', '.join(sorted(given)) or 'none'}): verify it with the deployment's current key list "
                     "(GET /v1/receipts/public-keys); an edited key_id also ends here")
    if not verify_receipt(receipt, pems):  # several keys: the one the receipt's key_id names
        return _fail("receipt.invalid: receipt signature is INVALID")
    # status and ended_at as signed: a valid receipt of a run not ended yet (ended_at null) lists its spans so far
    _out(json.dumps({"valid": True, "run_id": receipt.get("run_id"), "status": receipt.get("status"),
                     "ended_at": receipt.get("ended_at"), "spans": len(receipt.get("spans", [])),
                     "key_id": receipt.get("key_id")}))
    return 0
