"""PostgreSQL record -> dataclass helpers and constraint-error mapping."""

from __future__ import annotations

from typing import Any

import asyncpg

from supervisor.errors import StockadeError
from supervisor.stores._common import audit_record
from supervisor.stores.records import ApiKey, Approval, AuditRecord, IdempotencyEntry, Run

__all__ = ["CONSTRAINT_ERRORS", "constraint_error", "to_apikey", "to_approval", "to_audit", "to_idem", "to_run"]

# Raised by statements whose input broke a constraint (never by connectivity).
CONSTRAINT_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


def constraint_error(exc: Exception, missing: str = "tenant") -> StockadeError:
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return StockadeError("not_found", f"unknown {missing}")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return StockadeError("conflict", "already exists")
    return StockadeError("input.invalid", f"rejected by the store: {exc}")


def _d(row: Any) -> dict[str, Any]:
    return dict(row.items())


def to_run(row: Any) -> Run:
    return Run(**_d(row))


def to_apikey(row: Any) -> ApiKey:
    return ApiKey(**_d(row))


def to_audit(row: Any) -> AuditRecord:
    return audit_record(_d(row))  # detail selected as text (PgAuditLog): whatever a writer left there reads


def to_approval(row: Any) -> Approval:
    return Approval(**_d(row))


def to_idem(row: Any) -> IdempotencyEntry:
    return IdempotencyEntry(**_d(row))
