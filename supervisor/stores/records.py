"""Frozen records passed between the stores and the domain."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from supervisor.errors import StockadeError

__all__ = [
    "ApiKey", "Approval", "AuditRecord", "BudgetAccount", "CapSpec", "Event", "IdempotencyEntry",
    "Job", "LedgerEntry", "Project", "RateDecision", "RateRule", "Reservation", "Run",
    "Tenant", "User", "TERMINAL_STATUSES", "RUN_STATUSES", "ROLES", "decision_vote",
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
    decided_by: str | None = None  # approver's key id (with several approvers: the one whose vote decided)
    decision_reason: str | None = None
    # The rule's terms (policy ``approval:``): distinct approvers needed; whether the run's own key / user
    # is barred from deciding. Votes so far, oldest first: {key_id, user_id, decision, at, reason} each.
    required_approvals: int = 1
    separate: bool = False
    votes: tuple[dict[str, Any], ...] = ()

    def with_vote(self, *, key_id: str, user_id: str | None, decision: str, reason: str | None, now: float,
                  expected_votes: int | None = None) -> Approval:
        """This request after one approver's vote (both store adapters apply it with the row locked).

        Raises what the vote cannot do: a request no longer pending (``approval.expired`` /
        ``approval.already_decided``), a second vote of one key - or of one user, for keys bound to
        users - (``approval.already_decided``), and ``conflict`` when ``expected_votes`` is given and
        other votes landed since the caller looked (it audited what it expected this vote to do). A
        pending request past due comes back ``expired`` (the caller keeps that, then refuses the vote).
        One reject rejects; the ``required_approvals``-th approve approves.
        """
        if decision not in ("approve", "reject"):
            raise StockadeError("input.invalid", "a vote is approve or reject")
        if self.status == "expired":
            raise StockadeError("approval.expired", "the approval already expired", status="expired")
        if self.status != "pending":
            raise StockadeError("approval.already_decided", f"the approval was already {self.status}", status=self.status)
        if self.expires_at <= now:
            return replace(self, status="expired", decided_at=now, decided_by=None, decision_reason=None)
        if any(v.get("key_id") == key_id for v in self.votes):
            raise StockadeError("approval.already_decided", "this key has already voted on the approval", status="pending")
        if user_id is not None and any(v.get("user_id") == user_id for v in self.votes):
            raise StockadeError("approval.already_decided", "this user has already voted on the approval (with another key)",
                                status="pending")
        if expected_votes is not None and expected_votes != len(self.votes):
            raise StockadeError("conflict", "another vote landed meanwhile", votes=len(self.votes))
        votes = (*self.votes, {"key_id": key_id, "user_id": user_id, "decision": decision, "at": now, "reason": reason})
        approves = sum(1 for v in votes if v.get("decision") == "approve")
        if decision == "reject" or approves >= self.required_approvals:
            return replace(self, votes=votes, status="rejected" if decision == "reject" else "approved",
                           decided_at=now, decided_by=key_id, decision_reason=reason)
        return replace(self, votes=votes)


def decision_vote(status: str, decided_by: str | None, user_id: str | None, reason: str | None,
                  now: float) -> str | None:
    """The vote (JSON) a single approver's ``ApprovalStore.decide`` appends; None for an expiry."""
    if status not in ("approved", "rejected") or decided_by is None:
        return None
    vote = {"key_id": decided_by, "user_id": user_id, "decision": "approve" if status == "approved" else "reject",
            "at": now, "reason": reason}
    return json.dumps(vote, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
    # Set by ``Ledger.set_caps`` only: the account's cap and period just before that change (None: it had none).
    previous_cap_micro: int | None = None
    previous_period: str | None = None


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
