"""The per-tenant audit hash chain.

Each record's ``hash`` is sha256 over the canonical record (its fields, its
sequence number, the tenant and the previous record's hash); its ``mac`` is
HMAC-SHA256 of that hash under a key only the supervisor holds. Someone who can
write to the database can recompute hashes, but not MACs: a changed, deleted,
inserted or reordered record breaks verification.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from supervisor.audit.canonical import canonical, sha256_hex
from supervisor.stores.records import AuditRecord

__all__ = ["GENESIS", "ChainBreak", "ChainVerifier", "Sealer", "record_hash", "record_problem", "verify_chain"]

GENESIS = "0" * 64
FIELDS = ("ts", "kind", "run_id", "tool", "args_hash", "rule_id", "policy_version", "code", "cost_micro", "detail")


def record_hash(tenant_id: str, seq: int, prev_hash: str, fields: dict[str, Any]) -> str:
    body = {k: fields.get(k) for k in FIELDS}
    body.update(tenant_id=tenant_id, seq=seq, prev_hash=prev_hash)
    return sha256_hex(canonical(body))


class Sealer:
    """Computes (hash, mac) for the store's ``AuditLog.append`` under the chain lock."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("audit key must be at least 16 bytes")
        self._key = key

    def mac(self, digest: str) -> str:
        return hmac.digest(self._key, digest.encode(), "sha256").hex()  # == hmac.new(...).hexdigest(), one C call

    def for_tenant(self, tenant_id: str):
        def seal(prev_hash: str, seq: int, fields: dict[str, Any]) -> tuple[str, str]:
            digest = record_hash(tenant_id, seq, prev_hash, fields)
            return digest, self.mac(digest)

        return seal


@dataclass(frozen=True)
class ChainBreak:
    tenant_id: str
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"tenant {self.tenant_id}: record {self.seq}: {self.problem}"


class ChainVerifier:
    """Checks a chain one record at a time (in seq order), so a long chain is verified page by page
    in constant memory. ``feed`` returns the first break; ``last_seq`` is the last good record."""

    def __init__(self, tenant_id: str, sealer: Sealer) -> None:
        self.tenant_id = tenant_id
        self.sealer = sealer
        self.prev_hash = GENESIS
        self.last_seq = 0

    def feed(self, rec: AuditRecord) -> ChainBreak | None:
        tenant_id, expected_seq = self.tenant_id, self.last_seq + 1
        if rec.seq != expected_seq:
            return ChainBreak(tenant_id, rec.seq, f"sequence gap: expected {expected_seq} (record deleted or inserted)")
        if rec.prev_hash != self.prev_hash:
            return ChainBreak(tenant_id, rec.seq, "prev_hash does not link to the previous record (reordered or removed)")
        problem = record_problem(tenant_id, rec, self.sealer)
        if problem is not None:
            return ChainBreak(tenant_id, rec.seq, problem)
        self.prev_hash, self.last_seq = rec.hash, rec.seq
        return None


def record_problem(tenant_id: str, rec: AuditRecord, sealer: Sealer) -> str | None:
    """What is wrong with one record of ``tenant_id``'s chain on its own - its content against its hash,
    its hash against its MAC - or None. (How records link is ``ChainVerifier``'s.) Never raises, whatever
    a database writer stored."""
    fields = {k: getattr(rec, k) for k in FIELDS}
    try:
        digest = record_hash(tenant_id, rec.seq, rec.prev_hash, fields)
    except (TypeError, ValueError, RecursionError):  # a value no record of ours holds (a writer's hand)
        return "content cannot be hashed (record changed)"
    if digest != rec.hash:
        return "content does not match its hash (record changed)"
    mac = rec.mac  # compare_digest raises on a non-ASCII str
    if not (isinstance(mac, str) and mac.isascii() and hmac.compare_digest(sealer.mac(digest), mac)):
        return "MAC invalid (record forged without the supervisor's key)"
    return None


def verify_chain(tenant_id: str, records: Iterable[AuditRecord], sealer: Sealer) -> ChainBreak | None:
    """First bad record, or None when the chain is intact (records in seq order)."""
    verifier = ChainVerifier(tenant_id, sealer)
    for rec in records:
        brk = verifier.feed(rec)
        if brk is not None:
            return brk
    return None
