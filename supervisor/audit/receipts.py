"""Signed run receipts: ordered spans + chain head, Ed25519 over canonical JSON.

Offline check: ``verify_receipt(load_receipt(text), public_key_pem)`` (or
``stockade receipt verify FILE --public-key PEM``): strip ``signature``,
canonicalise, verify the Ed25519 signature with the published key.

Key rotation: a receipt names the key that signed it (``key_id``, signed with the
rest: the first 16 hex digits of sha256 over the raw public key). Given several
keys (``GET /v1/receipts/public-keys``: the current one and the retired ones),
the verifier uses the one with that id; a receipt from before ``key_id`` existed
is checked against each.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from supervisor.audit.canonical import canonical
from supervisor.audit.chain import ChainVerifier, Sealer, record_problem
from supervisor.audit.keys import key_id
from supervisor.errors import StockadeError
from supervisor.stores.records import AuditRecord, Run

__all__ = ["build_receipt", "check_before_signing", "key_ids", "load_receipt", "sign_receipt", "verify_receipt"]

_PAGE = 1000


async def check_before_signing(audit: Any, tenant_id: str, records: list[AuditRecord], head: AuditRecord | None,
                               sealer: Sealer) -> None:
    """Raise ``audit.corrupt`` unless the chain vouches for what a receipt of ``records`` would say.

    Never sign what the chain refuses: the signature would vouch for a database writer's edit. Every record
    of the tenant's chain from the one before the run's first record to the one after its last is checked -
    content, MAC, and that each links to the one before - so a record of the run deleted (or slipped in)
    anywhere is caught, not just an edited one: its first (the next one no longer links to the record
    before) and its last (the record after no longer links to it) included. Only a last record that was
    also the chain's last escapes this (no record after it): PostgreSQL's head row, checked with the head,
    or an anchor (``audit verify --anchor``) catches that. Costs one read of the records written while the
    run ran. After a key rotation the window's records may verify under a retired key (a receipt of an old
    run is still signed), but never after one of a newer key within the window; a record forged with an old
    key before the window is ``audit verify``'s to find (it reads the whole chain).
    """
    def corrupt(seq: int, problem: str) -> StockadeError:
        return StockadeError("audit.corrupt", f"audit record {seq} fails verification ({problem}); "
                                              "run `stockade audit verify`")

    floor = 0  # the key of the newest record checked: the head, if newer, may not verify only under an older one
    if records:
        first, last = records[0], records[-1]
        start = max(first.seq - 1, 1)  # the record before the run's first
        verifier = ChainVerifier(tenant_id, sealer)
        after, past_last = start - 1, False
        while not past_last:
            page = await audit.list(tenant_id, after_seq=after, limit=_PAGE)
            if not page:
                break  # the chain ends here (checked below)
            if after == start - 1:  # the first page: the record before the run's must still be there
                if page[0].seq != start:
                    raise corrupt(start, "sequence gap: a record before or of the run is no longer in the chain")
                if start > 1:  # its own link is outside the window: start the chain there
                    verifier.prev_hash, verifier.last_seq = page[0].prev_hash, start - 1
            for rec in page:
                brk = verifier.feed(rec)  # the first record after the run's last too: it must be last.seq + 1
                if brk is not None:
                    raise corrupt(brk.seq, brk.problem)
                if rec.seq > last.seq:
                    past_last = True
                    break
            after = page[-1].seq
        if verifier.last_seq < last.seq:
            raise corrupt(verifier.last_seq + 1, "sequence gap: the run's records are no longer in the chain")
        if head is not None and head.seq > verifier.last_seq:
            floor = verifier.key_floor
    if head is not None and (problem := record_problem(tenant_id, head, sealer, floor)) is not None:
        raise corrupt(head.seq, problem)


def build_receipt(run: Run, records: list[AuditRecord], head: AuditRecord | None) -> dict[str, Any]:
    spans = []
    for r in records:
        detail = r.detail if isinstance(r.detail, dict) else {}  # a hand-edited row must not break the receipt
        spans.append({
            "seq": r.seq,
            "ts": r.ts,
            "kind": r.kind,
            "tool": r.tool,
            "args_hash": r.args_hash,
            "verdict": detail.get("verdict"),
            "rule_id": r.rule_id,
            "code": r.code,
            "cost_usd": r.cost_micro / 1_000_000,
            "duration_ms": detail.get("duration_ms"),
            "policy_version": r.policy_version,
            "audit_hash": r.hash,
        })
    return {
        "receipt_version": 1,
        "run_id": run.id,
        "tenant_id": run.tenant_id,
        "bundle": run.bundle,
        "bundle_version": run.bundle_version,
        "status": run.status,
        "created_at": run.created_at,
        "ended_at": run.ended_at,
        "spans": spans,
        "total_cost_usd": sum(r.cost_micro for r in records) / 1_000_000,
        "chain_head": {"seq": head.seq, "hash": head.hash} if head else None,
    }


def sign_receipt(receipt: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {k: v for k, v in receipt.items() if k != "signature"}
    body["key_id"] = key_id(key)  # signed too: which of the published keys to check it with
    sig = key.sign(canonical(body))
    return {**body, "signature": {"alg": "Ed25519", "value": base64.b64encode(sig).decode()}}


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate member {k!r}")
        obj[k] = v
    return obj


def load_receipt(data: bytes | str) -> Any:
    """A receipt file's JSON; ValueError if a member appears twice. Python keeps the last of two, other
    readers the first: a genuine receipt with a forged member put in front verified here and showed the
    forgery there. RecursionError if nested deeper than the parser goes."""
    return json.loads(data, object_pairs_hook=_one_of_each)


def key_ids(pems: Sequence[str | bytes]) -> set[str]:
    """The ``key_id`` of each Ed25519 public key among ``pems`` (PEM public keys; others are no signer)."""
    keys = [serialization.load_pem_public_key(p.encode() if isinstance(p, str) else p) for p in pems]
    return {key_id(k) for k in keys if isinstance(k, Ed25519PublicKey)}


def verify_receipt(receipt: dict[str, Any], public_key_pem: str | bytes | Sequence[str | bytes]) -> bool:
    """True if ``receipt`` carries a valid signature by the key, or by one of several keys (the one its
    ``key_id`` names; a receipt without one: any of them). A malformed receipt is simply not valid; a
    ``public_key_pem`` that is not a PEM public key raises ``ValueError``."""
    pems = [public_key_pem] if isinstance(public_key_pem, (str, bytes)) else list(public_key_pem)
    keys = [serialization.load_pem_public_key(p.encode() if isinstance(p, str) else p) for p in pems]
    if not isinstance(receipt, dict):
        return False
    keys = [k for k in keys if isinstance(k, Ed25519PublicKey)]
    if "key_id" in receipt:  # signed with the rest: a changed id fails the signature, never picks a weaker check
        kid = receipt["key_id"]
        keys = [k for k in keys if isinstance(kid, str) and key_id(k) == kid]
    sig = receipt.get("signature")
    if not keys or not isinstance(sig, dict) or sig.get("alg") != "Ed25519" or not isinstance(sig.get("value"), str):
        return False
    body = {k: v for k, v in receipt.items() if k != "signature"}
    try:
        raw, msg = base64.b64decode(sig["value"], validate=True), canonical(body)
    except (ValueError, TypeError, RecursionError):
        return False
    for key in keys:
        try:
            key.verify(raw, msg)
            return True
        except InvalidSignature:
            continue
    return False
