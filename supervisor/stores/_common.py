"""Dialect-neutral pieces shared by the SQLite and PostgreSQL adapters.

Kept in one place so both adapters validate input and shape records the same
way (the contract suite runs against both).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import fields
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores.records import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    ApiKey,
    Approval,
    AuditRecord,
    IdempotencyEntry,
    Run,
)
from supervisor.wire import MAX_DEPTH, nested_past

__all__ = [
    "APIKEY_COLS", "APPROVAL_COLS", "APPROVAL_DECISIONS", "APPROVAL_STATUSES", "AUDIT_COLS", "GENESIS_HASH", "bundle_dict",
    "HISTORY_RUN_BYTES",
    "IDEM_COLS", "RUN_COLS", "UPDATABLE_RUN_FIELDS", "audit_record", "check_limit", "check_name", "check_new_run_status",
    "check_run_fields", "decision_outcome", "dump_audit_detail", "dumps", "load_audit_detail", "normalize_audit_fields",
    "after_last_turn",
]


def _cols(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


# Column names equal record field names, so rows map straight onto records.
RUN_COLS = _cols(Run)
APIKEY_COLS = _cols(ApiKey)
AUDIT_COLS = _cols(AuditRecord)
APPROVAL_COLS = _cols(Approval)
IDEM_COLS = _cols(IdempotencyEntry)

GENESIS_HASH = "0" * 64  # prev_hash of a chain's first record
# what a run of a conversation counts in conversation_history's max_bytes besides its input and output: the
# JSON of its two turns around them (else ten thousand runs with empty inputs would count nothing)
HISTORY_RUN_BYTES = 64
APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired")
APPROVAL_DECISIONS = frozenset({"approved", "rejected", "expired"})

# Columns callers may set through RunStore.set_status/finish_run **fields.
UPDATABLE_RUN_FIELDS = frozenset(
    {"started_at", "ended_at", "output", "error_code", "error_message", "worker_id", "bundle_version"}
)
_AUDIT_FIELDS = ("ts", "kind", "run_id", "tool", "args_hash", "rule_id", "policy_version", "code", "cost_micro", "detail")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # built once


def dumps(value: Any, what: str = "value") -> str:
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise StockadeError("input.invalid", f"{what} is not JSON-serialisable: {exc}") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError("not a finite number")
    return value


def _refuse_constant(name: str) -> Any:  # NaN, Infinity, -Infinity
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # read one way here, another way by SQLite's json_extract (the first key)
        raise ValueError("duplicate key")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a lone one decodes to a str no UTF-8 encoder takes

# How deep an audit detail may nest. Deeper than anything the supervisor puts there (what a bundle sends nests
# at most wire.MAX_DEPTH levels), and shallower than the API can answer with: pydantic-core serialises at most
# 255 levels, the response's own included. Without a bound of our own, what was readable depended on the
# interpreter's JSON parser (about 1,000 levels on Python 3.11, several thousand on 3.13): a detail a database
# writer nested 300 deep took GET /v1/audit down (500) on every Python, one 3,000 deep only on 3.13.
MAX_DETAIL_DEPTH = MAX_DEPTH + 64


def dump_audit_detail(detail: Any) -> str:
    """The detail column's JSON; ``input.invalid`` for a detail nested deeper than a reader could take back
    (the recorder turns it into ``audit.unavailable``: the action it records does not run)."""
    text = dumps(detail, "audit detail")
    if nested_past(text, detail, MAX_DETAIL_DEPTH):
        raise StockadeError("input.invalid", f"audit detail nested deeper than {MAX_DETAIL_DEPTH} levels")
    return text


def load_audit_detail(text: Any) -> Any:
    """An audit record's detail as read from its column: the JSON the supervisor wrote, or - for what it
    cannot have written (not JSON, NaN/Infinity, 1e400, a duplicate key, a lone surrogate, nesting deeper
    than MAX_DETAIL_DEPTH or an integer too long for the parser: a database writer's hand) - the stored text
    itself. That record then fails its hash and ``audit verify`` names it, instead of every reader of the log
    (the verifier, ``GET /v1/audit``, receipts) failing on it."""
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        if _SURROGATE_ESCAPE.search(text):
            _ENCODER.encode(value).encode()
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return text
    return text if nested_past(text, value, MAX_DETAIL_DEPTH) else value


def audit_record(row: dict[str, Any]) -> AuditRecord:
    """An AuditRecord from its columns, whatever a database writer left in them: the detail as
    ``load_audit_detail`` reads it, a timestamp that is no finite number (PostgreSQL's 'NaN', SQLite's
    9e999) as its text. Such a record fails its hash (``audit verify`` names it) and every other reader
    (GET /v1/audit, receipts) still gets what JSON can carry."""
    row["detail"] = load_audit_detail(row["detail"])
    ts = row["ts"]
    if isinstance(ts, float) and not math.isfinite(ts):
        row["ts"] = str(ts)
    return AuditRecord(**row)


def check_limit(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise StockadeError("input.invalid", "limit must be a non-negative integer")
    return min(n, 100_000)


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StockadeError("input.invalid", f"{what} name must be a non-empty string")
    return name


def check_new_run_status(status: str) -> None:
    if status not in RUN_STATUSES or status in TERMINAL_STATUSES:
        raise StockadeError("input.invalid", f"a new run cannot have status {status!r}")


def after_last_turn(run: Run, last: float | None) -> Run:
    """A new turn of a conversation is created after every turn already stored in it, whatever the clock of
    the node that made it says: the history of a turn is the turns created before it (ordered by
    ``created_at``), so a node whose clock runs behind the one that made the previous turn - two API replicas,
    or a clock stepped back - would otherwise give the new turn a history without the previous one (or put
    it first). ``last``: the newest ``created_at`` in the conversation, read in the creating transaction."""
    if last is None or run.created_at > last:
        return run
    return dataclasses.replace(run, created_at=max(math.nextafter(last, math.inf), last + 1e-6))


def check_run_fields(fields: dict[str, Any]) -> list[str]:
    """Sorted names of the **fields to set; refuses anything but UPDATABLE_RUN_FIELDS."""
    unknown = set(fields) - UPDATABLE_RUN_FIELDS
    if unknown:
        raise StockadeError("input.invalid", f"run fields cannot be set: {', '.join(sorted(unknown))}")
    return sorted(fields)


def normalize_audit_fields(fields: dict[str, Any], now: float) -> dict[str, Any]:
    """The full field set that is stored and handed to ``seal`` (missing keys filled with defaults:
    ``ts`` = now, ``cost_micro`` = 0, ``detail`` = {}, the rest None)."""
    unknown = set(fields) - set(_AUDIT_FIELDS)
    if unknown:
        raise StockadeError("input.invalid", f"unknown audit fields: {', '.join(sorted(unknown))}")
    if not isinstance(fields.get("kind"), str) or not fields["kind"]:
        raise StockadeError("input.invalid", "an audit record needs a kind")
    out = {k: fields.get(k) for k in _AUDIT_FIELDS}
    out["ts"] = float(fields["ts"]) if fields.get("ts") is not None else now
    out["cost_micro"] = int(fields.get("cost_micro") or 0)
    out["detail"] = dict(fields.get("detail") or {})
    return out


def bundle_dict(row: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant_id": row["tenant_id"], "platform": row["tenant_id"] is None, "name": row["name"],
        "version": row["version"], "digest": row["digest"], "manifest": manifest, "created_at": row["created_at"],
    }


def decision_outcome(row: Approval | None, requested: str, existed: Approval | None) -> Approval:
    """Turn the result of the conditional UPDATE into the return value or the error."""
    if row is not None and row.status == requested:
        return row
    if row is not None:  # it was pending but past due: we just expired it
        raise StockadeError("approval.expired", "the approval expired before the decision", status="expired")
    if existed is None:
        raise StockadeError("not_found", "no such approval")
    if existed.status == "expired":
        raise StockadeError("approval.expired", "the approval already expired", status="expired")
    raise StockadeError("approval.already_decided", f"the approval was already {existed.status}", status=existed.status)
