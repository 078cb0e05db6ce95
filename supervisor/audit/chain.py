"""The per-tenant audit hash chain.

Each record's ``hash`` is sha256 over the canonical record (its fields, its
sequence number, the tenant and the previous record's hash); its ``mac`` is
HMAC-SHA256 of that hash under a key only the supervisor holds. Someone who can
write to the database can recompute hashes, but not MACs: a changed, deleted,
inserted or reordered record breaks verification.

Key rotation: records are always sealed under the current key; verification also
accepts the retired keys (``STOCKADE_AUDIT_KEYS_RETIRED``), so history written
before a rotation still verifies. A retired key may have leaked (that is often why
it was retired), so it must not be able to extend history: along one tenant's chain
the key never goes back. Keys are numbered oldest first (retired 0..n-1, current
n); once a record verified under key i, a later record that verifies only under a
key below i is a break. A forger holding an old key can then only write records
before the first record of a newer key, where the chain's links already bind the
genuine records that follow.

Rolling rotation (no node stopped): every node first gets the new key as
``STOCKADE_AUDIT_KEY_NEXT`` (numbered current + 1; it verifies, nothing is sealed
with it yet), then, node by node, becomes current with the old key retired. A
node that still holds the new key as *next* must not seal a chain's next record
with the old key once a restarted node sealed one with the new key: that record
would go back a key. Its store finds such a head whenever the head is not this
node's own last write (the append lost its race, or nothing was cached) and
hands the head's MAC to ``seal``; made by the next key, it switches this node to
sealing with the next key for good (``promoted``). A chain's key therefore only
ever moves forward, while nodes old and new append to it side by side.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.audit.canonical import canonical, sha256_hex
from supervisor.errors import StockadeError
from supervisor.stores.records import AuditRecord

__all__ = ["GENESIS", "MAC_INVALID", "ChainBreak", "ChainVerifier", "Sealer", "record_hash", "record_key", "record_problem",
           "verify_chain"]

GENESIS = "0" * 64
MAC_INVALID = "MAC invalid (record forged without the supervisor's key)"
log = logging.getLogger("stockade.audit")

FIELDS = ("ts", "kind", "run_id", "tool", "args_hash", "rule_id", "policy_version", "code", "cost_micro", "detail")


def record_hash(tenant_id: str, seq: int, prev_hash: str, fields: dict[str, Any]) -> str:
    body = {k: fields.get(k) for k in FIELDS}
    body.update(tenant_id=tenant_id, seq=seq, prev_hash=prev_hash)
    return sha256_hex(canonical(body))


class Sealer:
    """Computes (hash, mac) for the store's ``AuditLog.append`` under the chain lock, always under the
    key this node seals with (the current key, or the next one once promoted); ``key_index`` tells a
    verifier which key (retired, current or next) made a MAC."""

    def __init__(self, key: bytes, retired: Sequence[bytes] = (), next_key: bytes | None = None) -> None:
        if len(key) < 16 or any(len(k) < 16 for k in retired) or (next_key is not None and len(next_key) < 16):
            raise ValueError("audit key must be at least 16 bytes")
        if next_key is not None and (next_key == key or next_key in retired):
            raise ValueError("the next audit key must be a new key")
        self._current = key
        self._key = key  # what this node seals with: the current key, the next one once promoted
        # newest first: a record of today's chain is tried against the current key, then the key before it
        self._older = tuple(reversed(tuple(retired)))
        self.current_index = len(self._older)  # keys are numbered oldest first: retired 0..n-1, current n
        self._next = next_key  # STOCKADE_AUDIT_KEY_NEXT: numbered n + 1 (module docstring: rolling rotation)
        self.promoted = False  # this node seals with the next key (another node already did, in some chain)
        # tenants whose chain head, written by another process, this node has verified once: a node with a key
        # of its own (its own data dir, no STOCKADE_AUDIT_KEY) would otherwise append after heads it cannot
        # verify, each node's records forged in the eyes of the other's key, and the chain broken for good
        self._checked: set[str] = set()

    @property
    def sealing_index(self) -> int:
        return self.current_index + 1 if self.promoted else self.current_index

    def mac(self, digest: str) -> str:
        """The MAC this node seals with now (current key, or next key once promoted)."""
        return hmac.digest(self._key, digest.encode(), "sha256").hex()  # == hmac.new(...).hexdigest(), one C call

    def key_index(self, digest: str, mac: str) -> int | None:
        """The newest key whose MAC of ``digest`` is ``mac`` (``current_index`` for the current key), or None.
        ``mac`` must be an ASCII str. The key this node seals with is tried first: unless a chain is older than
        the last rotation, one HMAC, as before rotation existed."""
        if hmac.compare_digest(self.mac(digest), mac):
            return self.sealing_index
        msg = digest.encode()
        if self._next is not None:  # the other one of current and next
            other, index = (self._current, self.current_index) if self.promoted else (self._next, self.current_index + 1)
            if hmac.compare_digest(hmac.digest(other, msg, "sha256").hex(), mac):
                return index
        for i, key in enumerate(self._older):
            if hmac.compare_digest(hmac.digest(key, msg, "sha256").hex(), mac):
                return self.current_index - 1 - i
        return None

    def promote(self) -> None:
        """Seal with the next key from now on (another node already does). Idempotent; never goes back."""
        if self._next is not None and not self.promoted:
            self._key = self._next
            self.promoted = True
            log.warning("audit key: another node seals with STOCKADE_AUDIT_KEY_NEXT; this node now does too "
                        "(finish the rotation: make it STOCKADE_AUDIT_KEY, the old key retired)")

    def _saw(self, head_hash: str, head_mac: str | None) -> None:
        """A chain head this node did not write itself: promote if the next key made it."""
        if (not self.promoted and self._next is not None and isinstance(head_mac, str) and head_mac.isascii()
                and self.key_index(head_hash, head_mac) == self.current_index + 1):
            self.promote()

    def _check(self, tenant_id: str, head_hash: str, head_mac: str) -> None:
        """The first head of ``tenant_id`` another process wrote: this node must hold the key that sealed it."""
        if isinstance(head_mac, str) and head_mac.isascii() and self.key_index(head_hash, head_mac) is not None:
            self._checked.add(tenant_id)
            return
        log.error("the audit chain of tenant %s ends in a record sealed with a key this node does not have: nodes "
                  "writing one database need the same STOCKADE_AUDIT_KEY (or the same data dir); this node appends "
                  "nothing to that chain", tenant_id)
        raise StockadeError("audit.corrupt", "the audit chain's newest record was sealed with another node's key")

    def for_tenant(self, tenant_id: str):
        def seal(prev_hash: str, seq: int, fields: dict[str, Any], prev_mac: str | None = None) -> tuple[str, str]:
            """``prev_mac``: the head's MAC, when the store read the head (it was not this node's last write)."""
            if prev_mac is not None:
                self._saw(prev_hash, prev_mac)
                if tenant_id not in self._checked:
                    self._check(tenant_id, prev_hash, prev_mac)
            digest = record_hash(tenant_id, seq, prev_hash, fields)
            return digest, self.mac(digest)

        # the head's MAC costs the store a read: wanted during a rotation, and until one head is verified
        seal.wants_head_mac = lambda: (  # type: ignore[attr-defined]
            tenant_id not in self._checked or (self._next is not None and not self.promoted))
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
    in constant memory. ``feed`` returns the first break; ``last_seq`` is the last good record and
    ``key_floor`` the key it verified under (no later record may verify only under an older one)."""

    def __init__(self, tenant_id: str, sealer: Sealer) -> None:
        self.tenant_id = tenant_id
        self.sealer = sealer
        self.prev_hash = GENESIS
        self.last_seq = 0
        self.key_floor = 0

    def feed(self, rec: AuditRecord) -> ChainBreak | None:
        tenant_id, expected_seq = self.tenant_id, self.last_seq + 1
        if rec.seq != expected_seq:
            return ChainBreak(tenant_id, rec.seq, f"sequence gap: expected {expected_seq} (record deleted or inserted)")
        if rec.prev_hash != self.prev_hash:
            return ChainBreak(tenant_id, rec.seq, "prev_hash does not link to the previous record (reordered or removed)")
        problem, index = record_key(tenant_id, rec, self.sealer, self.key_floor)
        if problem is not None:
            return ChainBreak(tenant_id, rec.seq, problem)
        self.prev_hash, self.last_seq, self.key_floor = rec.hash, rec.seq, index
        return None


def record_key(tenant_id: str, rec: AuditRecord, sealer: Sealer, floor: int = 0) -> tuple[str | None, int]:
    """``record_problem``, and the key the record verified under (``floor`` when it did not): the record's
    MAC must be made by a key no older than ``floor`` (the key of the record before it)."""
    fields = {k: getattr(rec, k) for k in FIELDS}
    try:
        digest = record_hash(tenant_id, rec.seq, rec.prev_hash, fields)
    except (TypeError, ValueError, RecursionError):  # a value no record of ours holds (a writer's hand)
        return "content cannot be hashed (record changed)", floor
    if digest != rec.hash:
        return "content does not match its hash (record changed)", floor
    mac = rec.mac  # compare_digest raises on a non-ASCII str
    index = sealer.key_index(digest, mac) if isinstance(mac, str) and mac.isascii() else None
    if index is None:
        return MAC_INVALID, floor
    if index < floor:
        return ("MAC made with a retired key after rotation (forged with an old key after a record of a newer "
                "one; or STOCKADE_AUDIT_KEYS_RETIRED is not oldest first)"), floor
    return None, index


def record_problem(tenant_id: str, rec: AuditRecord, sealer: Sealer, floor: int = 0) -> str | None:
    """What is wrong with one record of ``tenant_id``'s chain on its own - its content against its hash,
    its hash against its MAC (under the current key or a retired one no older than ``floor``) - or None.
    (How records link is ``ChainVerifier``'s.) Never raises, whatever a database writer stored."""
    return record_key(tenant_id, rec, sealer, floor)[0]


def verify_chain(tenant_id: str, records: Iterable[AuditRecord], sealer: Sealer) -> ChainBreak | None:
    """First bad record, or None when the chain is intact (records in seq order)."""
    verifier = ChainVerifier(tenant_id, sealer)
    for rec in records:
        brk = verifier.feed(rec)
        if brk is not None:
            return brk
    return None
