"""SQLite row -> record helpers (JSON columns are TEXT here)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import audit_record
from supervisor.stores.records import ApiKey, Approval, AuditRecord, IdempotencyEntry, Run

__all__ = ["integrity_error", "to_apikey", "to_approval", "to_audit", "to_idem", "to_run"]


def integrity_error(exc: sqlite3.IntegrityError, missing: str = "tenant") -> StockadeError:
    msg = str(exc)
    if "FOREIGN KEY" in msg:
        return StockadeError("not_found", f"unknown {missing}")
    if "UNIQUE" in msg or "PRIMARY KEY" in msg:
        return StockadeError("conflict", "already exists")
    return StockadeError("input.invalid", f"rejected by the store: {msg}")


def to_run(row: sqlite3.Row) -> Run:
    return Run(**dict(row))


def to_apikey(row: sqlite3.Row) -> ApiKey:
    return ApiKey(**dict(row))


def to_audit(row: sqlite3.Row | dict[str, Any]) -> AuditRecord:
    return audit_record(dict(row))  # SQLite keeps any TEXT: hand-written text is handed on as is


def to_approval(row: sqlite3.Row) -> Approval:
    d = dict(row)
    d["args"] = json.loads(d["args"])
    return Approval(**d)


def to_idem(row: sqlite3.Row) -> IdempotencyEntry:
    d = dict(row)
    d["result"] = None if d["result"] is None else json.loads(d["result"])
    return IdempotencyEntry(**d)
