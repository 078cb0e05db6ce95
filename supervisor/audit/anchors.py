"""Anchors: chain heads kept outside the database, so that cutting off a chain's tail is detected.

A hash chain proves that nothing inside it was changed, removed or reordered, but not that its
newest records are all still there: whoever can write to the database can delete the last N records
(or a tenant's whole chain) and what remains still verifies. (PostgreSQL's head row, advanced with
each append, catches a cut that leaves it behind; a writer who rewinds it too is caught only here.)
A head seen earlier and kept elsewhere closes that gap: ``stockade audit verify --anchor FILE`` fails unless each anchored chain still holds
the anchored record, unchanged. Anchor files are what Stockade already hands out:

- the JSON that ``stockade audit verify`` prints (``"heads": {tenant_id: {"seq", "hash"}}``), e.g.
  kept nightly off the database host;
- a run receipt (``GET /v1/runs/{id}/receipt``: ``tenant_id`` and ``chain_head``), which tenants keep.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from supervisor.audit.receipts import load_receipt

__all__ = ["Anchor", "anchors_in", "parse_anchors"]

_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Anchor:
    tenant_id: str
    seq: int
    hash: str
    source: str  # the file it came from (named when it does not hold)
    # a receipt's anchor: the receipt, whose signature the verifier checks before trusting the head it names
    receipt: dict[str, Any] | None = field(default=None, compare=False, hash=False)


def _head(tenant_id: Any, head: Any, source: str) -> Anchor:
    if not isinstance(tenant_id, str) or not tenant_id or not isinstance(head, dict):
        raise ValueError(f"{source}: not an anchor (a chain head needs a tenant id, a seq and a hash)")
    seq, digest = head.get("seq"), head.get("hash")
    if type(seq) is not int or seq < 1 or not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise ValueError(f"{source}: chain head of tenant {tenant_id} needs a positive integer seq and a sha256 hex hash")
    return Anchor(tenant_id, seq, digest, source)


def parse_anchors(doc: Any, source: str) -> list[Anchor]:
    """The chain heads in one anchor document (see the module docstring for the two shapes)."""
    if isinstance(doc, dict) and isinstance(doc.get("heads"), dict):
        return [_head(tid, head, source) for tid, head in doc["heads"].items()]
    if isinstance(doc, dict) and "chain_head" in doc:
        if doc["chain_head"] is None:
            return []  # a receipt from before the tenant's first record: nothing to hold on to
        return [dataclasses.replace(_head(doc.get("tenant_id"), doc["chain_head"], source), receipt=doc)]
    raise ValueError(f"{source}: not an anchor file (the output of `stockade audit verify`, or a run receipt)")


def anchors_in(data: bytes, source: str) -> list[Anchor]:
    """The chain heads in one anchor file's bytes (read by the caller); ValueError with one line if bad."""
    try:
        doc = load_receipt(data)  # a member written twice is refused, as `stockade receipt verify` refuses it
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"{source}: not JSON") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return parse_anchors(doc, source)
