"""Frozen records passed between the stores and the domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ApiKey", "Approval", "AuditRecord", "BudgetAccount", "CapSpec", "Event", "IdempotencyEntry",
    "Job", "LedgerEntry", "Project", "RateDecision", "RateRule", "Reservation", "Run",
    "Tenant", "User", "TERMINAL_STATUSES", "RUN_STATUSES", "ROLES",
]

RUN_STATUSES = ("queued", "running", "waiting_approval", "succeeded", "failed", "canceled", "timed_out")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "timed_out"})
ROLES = ("admin", "member", "approver", "viewer")
CapSpec = tuple[str, str, int, str]  # a budget cap to set: (scope, scope_id, cap_micro, period)


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class Project:
    id: str
    tenant_id: str
    name: str


@dataclass(frozen=True)
class User:
    id: str
    tenant_id: str
    name: str


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    role: str
    prefix: str  # first characters of the key, safe to show
    user_id: str | None
    project_id: str | None
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Run:
    id: str
    tenant_id: str
    bundle: str
    bundle_version: str
    input: str
    status: str
    created_at: float
    project_id: str | None = None
    user_id: str | None = None
    key_id: str | None = None
    conversation_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    output: str | None = None  # the concatenated ``answer`` channel, for history
    error_code: str | None = None
    error_message: str | None = None
    worker_id: str | None = None
    last_seq: int = 0


@dataclass(frozen=True)
class Event:
    run_id: str
    seq: int
    type: str
    data: dict[str, Any]
    ts: float

    def to_wire(self) -> dict[str, Any]:
        wire = {"run_id": self.run_id, "seq": self.seq, "type": self.type, **self.data}
        if len(wire) != 3 + len(self.data):  # the data named run_id, seq or type: the envelope's own win
            wire.update(run_id=self.run_id, seq=self.seq, type=self.type)
        return wire


@dataclass(frozen=True)
class Job:
    """A claimed run on the queue."""

    run_id: str
    tenant_id: str
    receipt: str  # adapter-specific handle used by ack/fail/requeue/extend
    attempts: int = 1


@dataclass(frozen=True)
class AuditRecord:
    tenant_id: str
    seq: int
    ts: float
    kind: str  # tool.allowed tool.denied tool.deduped rate.limited budget.exceeded approval.* peer.rejected frame.invalid ...
    run_id: str | None
    tool: str | None
    args_hash: str | None
    rule_id: str | None
    policy_version: str | None
    code: str | None
    cost_micro: int
    detail: dict[str, Any]
    prev_hash: str
    hash: str
    mac: str


@dataclass(frozen=True)
class Approval:
    id: str
    tenant_id: str
    run_id: str
    tool: str
    args_hash: str
    args: dict[str, Any]
    rule_id: str | None
    reason: str | None
    status: str  # pending approved rejected expired
    created_at: float
    expires_at: float
    decided_at: float | None = None
    decided_by: str | None = None  # approver's key id
    decision_reason: str | None = None


@dataclass(frozen=True)
class IdempotencyEntry:
    tenant_id: str
    key: str
    state: str  # pending | done
    result: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class BudgetAccount:
    tenant_id: str
    scope: str  # tenant | project | user
    scope_id: str
    cap_micro: int
    period: str  # month | lifetime
    period_key: str  # e.g. "2026-11" or "lifetime"
    spent_micro: int = 0
    reserved_micro: int = 0


@dataclass(frozen=True)
class Reservation:
    id: str
    tenant_id: str
    run_id: str | None
    amount_micro: int
    accounts: tuple[tuple[str, str], ...]  # (scope, scope_id) pairs it holds against
    expires_at: float
    state: str = "held"  # held | committed | released


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    tenant_id: str
    scope: str
    scope_id: str
    period_key: str
    amount_micro: int
    reservation_id: str | None
    run_id: str | None
    tool: str | None
    ts: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RateRule:
    key: str  # e.g. "t:{tenant}" ; adapters prefix it
    rate_per_s: float  # emission rate
    burst: int  # bucket capacity
    cost: int = 1


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    rule_key: str | None = None  # the rule that refused
