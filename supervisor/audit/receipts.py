"""Signed run receipts: ordered spans + chain head, Ed25519 over canonical JSON.

Offline check: ``verify_receipt(load_receipt(text), public_key_pem)`` (or
``stockade receipt verify FILE --public-key PEM``): strip ``signature``,
canonicalise, verify the Ed25519 signature with the published key.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from supervisor.audit.canonical import canonical
from supervisor.stores.records import AuditRecord, Run

__all__ = ["build_receipt", "load_receipt", "sign_receipt", "verify_receipt"]

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


def verify_receipt(receipt: dict[str, Any], public_key_pem: str | bytes) -> bool:
    """True if ``receipt`` carries a valid signature by the key. A malformed receipt is simply not valid;
    a ``public_key_pem`` that is not a PEM public key raises ``ValueError``."""
    key = serialization.load_pem_public_key(public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem)
    if not isinstance(receipt, dict) or not isinstance(key, Ed25519PublicKey):
        return False
    sig = receipt.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "Ed25519" or not isinstance(sig.get("value"), str):
        return False
    body = {k: v for k, v in receipt.items() if k != "signature"}
    try:
        key.verify(base64.b64decode(sig["value"], validate=True), canonical(body))
    except (InvalidSignature, ValueError, TypeError, RecursionError):
        return False
    return True
