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

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic_core import to_json

from supervisor.audit.canonical import canonical
from supervisor.audit.chain import ChainVerifier, Sealer, record_problem
from supervisor.audit.keys import key_id
from supervisor.errors import StockadeError
from supervisor.stores.records import AuditRecord, Run

__all__ = ["ReceiptSpans", "build_receipt", "check_before_signing", "check_window", "next_page", "key_ids", "load_receipt",
           "sign_receipt", "verify_receipt"]

# Records of the chain read and checked at a time: each page's read is on the event loop (the embedded SQLite
# store reads without ever suspending: ~10 ms), its check in a thread. Smaller pages cost PostgreSQL more
# (500: +40% for a 20,000-call run's check).
_PAGE = 1000
_SLICE = 500  # spans encoded per C call (ReceiptSpans)


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
    window = (records[0].seq, records[-1].seq) if records else None
    await check_window(audit, tenant_id, window, head, sealer)


async def check_window(audit: Any, tenant_id: str, window: tuple[int, int] | None, head: AuditRecord | None,
                       sealer: Sealer) -> None:
    """``check_before_signing`` of a run whose records are ``window`` = (its first seq, its last seq), or none."""
    def corrupt(seq: int, problem: str) -> StockadeError:
        return StockadeError("audit.corrupt", f"audit record {seq} fails verification ({problem}); "
                                              "run `stockade audit verify`")

    floor = 0  # the key of the newest record checked: the head, if newer, may not verify only under an older one
    if window is not None:
        first_seq, last_seq = window
        start = max(first_seq - 1, 1)  # the record before the run's first
        verifier = ChainVerifier(tenant_id, sealer)
        page = await audit.list(tenant_id, after_seq=start - 1, limit=_PAGE)
        if page:  # the record before the run's must still be there
            if page[0].seq != start:
                raise corrupt(start, "sequence gap: a record before or of the run is no longer in the chain")
            if start > 1:  # its own link is outside the window: start the chain there
                verifier.prev_hash, verifier.last_seq = page[0].prev_hash, start - 1
        while page:  # else the chain ends here (checked below)
            # hashing and MACs of a page off the loop (a run's window may hold tens of thousands of records),
            # the next page read meanwhile - unless this one reaches past the run's last record, where it ends
            feeding = asyncio.ensure_future(asyncio.to_thread(_feed, verifier, page, last_seq))
            nxt = await next_page(audit, tenant_id, page, feeding) if page[-1].seq <= last_seq else []
            brk, past_last = await feeding
            if brk is not None:
                raise corrupt(brk.seq, brk.problem)
            page = [] if past_last else nxt
        if verifier.last_seq < last_seq:
            raise corrupt(verifier.last_seq + 1, "sequence gap: the run's records are no longer in the chain")
        if head is not None and head.seq > verifier.last_seq:
            floor = verifier.key_floor
    if head is not None and (problem := record_problem(tenant_id, head, sealer, floor)) is not None:
        raise corrupt(head.seq, problem)


async def next_page(audit: Any, tenant_id: str, page: list[AuditRecord], pending: asyncio.Future[Any],
                     run_id: str | None = None, limit: int = _PAGE) -> list[AuditRecord]:
    """The page after ``page`` (of the run, or of the chain), read while ``pending`` works on ``page``."""
    try:
        return await audit.list(tenant_id, after_seq=page[-1].seq, limit=limit, run_id=run_id)
    except BaseException:
        pending.add_done_callback(lambda f: f.cancelled() or f.exception())  # its error is not this one
        raise


def _feed(verifier: ChainVerifier, page: list[AuditRecord], last_seq: int) -> tuple[Any, bool]:
    """Feed ``page`` to ``verifier``: (the first break or None, whether a record past ``last_seq`` was fed)."""
    for rec in page:
        brk = verifier.feed(rec)  # the first record after the run's last too: it must be last.seq + 1
        if brk is not None:
            return brk, False
        if rec.seq > last_seq:
            return None, True
    return None, False


def _span(r: AuditRecord) -> dict[str, Any]:
    detail = r.detail if isinstance(r.detail, dict) else {}  # a hand-edited row must not break the receipt
    return {
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
    }


def build_receipt(run: Run, records: list[AuditRecord], head: AuditRecord | None) -> dict[str, Any]:
    return _receipt(run, [_span(r) for r in records], sum(r.cost_micro for r in records), head)


def _receipt(run: Run, spans: Any, cost_micro: Any, head: AuditRecord | None) -> dict[str, Any]:
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
        "total_cost_usd": cost_micro / 1_000_000,
        "chain_head": {"seq": head.seq, "hash": head.hash} if head else None,
    }


def sign_receipt(receipt: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {k: v for k, v in receipt.items() if k != "signature"}
    body["key_id"] = key_id(key)  # signed too: which of the published keys to check it with
    sig = key.sign(canonical(body))
    return {**body, "signature": {"alg": "Ed25519", "value": base64.b64encode(sig).decode()}}


class ReceiptSpans:
    """A receipt's spans kept as JSON bytes, added a page of records at a time: what ``sign_receipt(
    build_receipt(...))`` makes, and the bytes the API answered with when it returned that dict (pydantic's
    compact JSON, members in order), without the run's records or spans held as objects. A receipt of
    20,000 calls held 40,000 records and as many span dicts: ~100 MB that made every full collection of
    the garbage collector (on the event loop's thread too) take ~75 ms. Each page is encoded in slices:
    json's and pydantic's encoders hold the GIL for a whole call, so one call over a whole receipt stalled
    the event loop for as long even from a thread. CPU-bound: ``add`` and ``signed_json`` run in a thread.

    The same bytes: neither encoder puts anything between a list's items but a comma, nor between an
    object's members; canonical JSON sorts the members of each span as of the whole."""

    def __init__(self) -> None:
        self._canonical: list[bytes] = []  # the spans' canonical JSON, a slice at a time, brackets stripped
        self._plain: list[bytes] = []  # the same slices as the API's JSON
        self.cost_micro: Any = 0  # summed one by one in order, as build_receipt's sum()
        self.window: tuple[int, int] | None = None  # (the first record's seq, the last one's)

    def add(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        spans = [_span(r) for r in records]
        for r in records:
            self.cost_micro += r.cost_micro
        for i in range(0, len(spans), _SLICE):
            self._canonical.append(canonical(spans[i:i + _SLICE])[1:-1])
            self._plain.append(to_json(spans[i:i + _SLICE])[1:-1])
        first = self.window[0] if self.window is not None else records[0].seq
        self.window = (first, records[-1].seq)

    def signed_json(self, run: Run, head: AuditRecord | None, key: Ed25519PrivateKey) -> bytes:
        """The signed receipt's JSON (``sign_receipt(build_receipt(run, records, head), key)`` as the API's
        bytes)."""
        body = _receipt(run, None, self.cost_micro, head)
        body["key_id"] = key_id(key)
        sig = key.sign(_object_bytes(body, sorted(body), canonical, self._canonical))
        signed = {**body, "signature": {"alg": "Ed25519", "value": base64.b64encode(sig).decode()}}
        return _object_bytes(signed, list(signed), to_json, self._plain)


def _object_bytes(obj: dict[str, Any], keys: list[str], encode: Any, spans: list[bytes]) -> bytes:
    """``encode(obj)`` with its members in the order of ``keys``, its ``spans`` the encoded slices."""
    def member(k: str) -> bytes:
        return encode(k) + b":" + (b"[" + b",".join(spans) + b"]" if k == "spans" else encode(obj[k]))
    return b"{" + b",".join(member(k) for k in keys) + b"}"


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
