"""SQLite ApprovalStore: pending -> approved/rejected/expired exactly once.

Decision semantics (both adapters): a second decision raises
``approval.already_decided``; deciding an approval that expired — swept by
``expire_due`` or simply past ``expires_at`` (it is then marked expired, and
that change is kept) — raises ``approval.expired``.

Votes (``vote``, several approvers): read, judged (``Approval.with_vote``) and
written in one ``BEGIN IMMEDIATE`` transaction with no await inside, so two
voters are serialised by the database write lock - across processes too - and
each sees the other's vote: none is lost, the request is decided once.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import APPROVAL_COLS, APPROVAL_DECISIONS, APPROVAL_STATUSES, decision_outcome, dumps
from supervisor.stores._common import check_limit as _limit
from supervisor.stores.records import Approval, decision_vote
from supervisor.stores.sqlite._rows import integrity_error
from supervisor.stores.sqlite._rows import to_approval as _row
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteApprovalStore"]


# Past due, a decision other than "expired" turns into "expired" (decided_by/reason dropped).
_DECIDE = f"""UPDATE approvals SET
    status = CASE WHEN :status <> 'expired' AND expires_at <= :now THEN 'expired' ELSE :status END,
    decided_by = CASE WHEN :status <> 'expired' AND expires_at <= :now THEN NULL ELSE :decided_by END,
    decision_reason = CASE WHEN :status <> 'expired' AND expires_at <= :now THEN NULL ELSE :reason END,
    decided_at = :now,
    votes = CASE WHEN :vote IS NULL OR (:status <> 'expired' AND expires_at <= :now) THEN votes
                 ELSE json_insert(votes, '$[#]', json(:vote)) END
  WHERE tenant_id = :tenant_id AND id = :approval_id AND status = 'pending'
  RETURNING {APPROVAL_COLS}"""


_WRITE_VOTE = """UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, decision_reason = ?, votes = ?
  WHERE tenant_id = ? AND id = ? AND status = 'pending'"""


def to_approval(row: sqlite3.Row) -> Approval:
    a = _row(row)
    votes = json.loads(a.votes) if isinstance(a.votes, str) else a.votes
    return dataclasses.replace(a, separate=bool(a.separate), votes=tuple(votes))


class SqliteApprovalStore:
    def __init__(self, db: SqliteDB) -> None:
        self._db = db

    async def create(self, approval: Approval) -> Approval:
        if approval.status not in APPROVAL_STATUSES:
            raise StockadeError("input.invalid", f"unknown approval status {approval.status!r}")
        args = dumps(approval.args, "approval args")
        try:
            self._db.execute(
                f"INSERT INTO approvals ({APPROVAL_COLS}) VALUES ({', '.join('?' * 17)})",
                (approval.id, approval.tenant_id, approval.run_id, approval.tool, approval.args_hash, args,
                 approval.rule_id, approval.reason, approval.status, approval.created_at, approval.expires_at,
                 approval.decided_at, approval.decided_by, approval.decision_reason, approval.required_approvals,
                 int(approval.separate), dumps(list(approval.votes), "approval votes")),
            )
        except sqlite3.IntegrityError as exc:
            raise integrity_error(exc) from None
        return approval

    async def get(self, tenant_id: str, approval_id: str) -> Approval | None:
        row = self._db.query_one(
            f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = ? AND id = ?", (tenant_id, approval_id)
        )
        return to_approval(row) if row else None

    async def list(self, tenant_id: str, status: str | None = None, limit: int = 100,
                   run_id: str | None = None, user_id: str | None = None, project_id: str | None = None,
                   before: str | None = None) -> list[Approval]:
        sql = f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = ?"
        params: list[Any] = [tenant_id]
        if user_id is not None or project_id is not None:  # those of that user's / project's runs
            sql += (" AND run_id IN (SELECT id FROM runs WHERE tenant_id = ? AND (? IS NULL OR user_id = ?)"
                    " AND (? IS NULL OR project_id = ?))")
            params += [tenant_id, user_id, user_id, project_id, project_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if before is not None:  # an unknown cursor compares as NULL: an empty page
            sql += " AND (created_at, id) < (SELECT created_at, id FROM approvals WHERE tenant_id = ? AND id = ?)"
            params += [tenant_id, before]
        params.append(_limit(limit))
        rows = self._db.query(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", params)
        return [to_approval(r) for r in rows]

    async def decide(
        self, tenant_id: str, approval_id: str, *, status: str, decided_by: str | None, reason: str | None, now: float,
        user_id: str | None = None,
    ) -> Approval:
        if status not in APPROVAL_DECISIONS:
            raise StockadeError("input.invalid", "a decision is approved, rejected or expired")
        vote = decision_vote(status, decided_by, user_id, reason, now)
        existed = None
        with self._db.tx() as c:
            row = c.execute(_DECIDE, {"status": status, "now": now, "decided_by": decided_by, "reason": reason,
                                   "tenant_id": tenant_id, "approval_id": approval_id, "vote": vote}).fetchone()
            if row is None:
                existed = c.execute(
                    f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = ? AND id = ?", (tenant_id, approval_id)
                ).fetchone()
        # Raised after the commit so that an expiry found on the way is kept.
        return decision_outcome(to_approval(row) if row else None, status, to_approval(existed) if existed else None)

    async def vote(
        self, tenant_id: str, approval_id: str, *, key_id: str, user_id: str | None, decision: str,
        reason: str | None, now: float, expected_votes: int | None = None,
    ) -> Approval:
        expired = False
        with self._db.tx() as c:
            row = c.execute(
                f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = ? AND id = ?", (tenant_id, approval_id)
            ).fetchone()
            if row is None:
                raise StockadeError("not_found", "no such approval")
            after = to_approval(row).with_vote(key_id=key_id, user_id=user_id, decision=decision, reason=reason,
                                               now=now, expected_votes=expected_votes)
            c.execute(_WRITE_VOTE, (after.status, after.decided_at, after.decided_by, after.decision_reason,
                                    dumps(list(after.votes), "approval votes"), tenant_id, approval_id))
            expired = after.status == "expired"
        if expired:  # raised after the commit so that the expiry found on the way is kept
            raise StockadeError("approval.expired", "the approval expired before the vote", status="expired")
        return after

    async def expire_due(self, now: float) -> list[Approval]:
        rows = self._db.query(
            "UPDATE approvals SET status = 'expired', decided_at = ? WHERE status = 'pending' AND expires_at <= ?"
            f" RETURNING {APPROVAL_COLS}",
            (now, now),
        )
        return [to_approval(r) for r in rows]
