"""PostgreSQL ApprovalStore: pending -> approved/rejected/expired exactly once.

Same semantics as the SQLite adapter (``decision_outcome``):
a second decision raises ``approval.already_decided``; deciding an expired
approval raises ``approval.expired``. The conditional ``UPDATE … WHERE status =
'pending'`` is the arbiter: concurrent deciders queue on the row lock and all
but the first find it no longer pending.

Votes (``vote``, several approvers): the row is locked (``SELECT … FOR
UPDATE``), judged (``Approval.with_vote``) and written in one transaction, so
concurrent voters on any API process queue on the row and each sees the
others' votes: none is lost, the request is decided once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from supervisor.errors import StockadeError
from supervisor.stores._common import APPROVAL_COLS, APPROVAL_DECISIONS, APPROVAL_STATUSES, decision_outcome, dumps
from supervisor.stores._common import check_limit as _limit
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error
from supervisor.stores.postgres._rows import to_approval as _row
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.records import Approval, decision_vote

__all__ = ["PgApprovalStore"]

_PAST_DUE = "$1::text <> 'expired' AND expires_at <= $2::float8"
_DECIDE = f"""UPDATE approvals SET
    status = CASE WHEN {_PAST_DUE} THEN 'expired' ELSE $1::text END,
    decided_by = CASE WHEN {_PAST_DUE} THEN NULL ELSE $3::text END,
    decision_reason = CASE WHEN {_PAST_DUE} THEN NULL ELSE $4::text END,
    decided_at = $2::float8,
    votes = CASE WHEN $7::text IS NULL OR {_PAST_DUE} THEN votes ELSE votes || jsonb_build_array($7::text::jsonb) END
  WHERE tenant_id = $5 AND id = $6 AND status = 'pending'
  RETURNING {APPROVAL_COLS}"""


_WRITE_VOTE = """UPDATE approvals SET status = $1, decided_at = $2, decided_by = $3, decision_reason = $4,
    votes = $5::text::jsonb WHERE tenant_id = $6 AND id = $7 AND status = 'pending'"""


def to_approval(row: Any) -> Approval:
    a = _row(row)
    return dataclasses.replace(a, votes=tuple(a.votes or ()))


class PgApprovalStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def create(self, approval: Approval) -> Approval:
        if approval.status not in APPROVAL_STATUSES:
            raise StockadeError("input.invalid", f"unknown approval status {approval.status!r}")
        args = dumps(approval.args, "approval args")
        async with self._db.tenant_tx(approval.tenant_id) as c:
            try:
                await c.execute(
                    f"INSERT INTO approvals ({APPROVAL_COLS}) VALUES"
                    " ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
                    " $17::text::jsonb)",
                    approval.id, approval.tenant_id, approval.run_id, approval.tool, approval.args_hash, args,
                    approval.rule_id, approval.reason, approval.status, approval.created_at, approval.expires_at,
                    approval.decided_at, approval.decided_by, approval.decision_reason, approval.required_approvals,
                    approval.separate, dumps(list(approval.votes), "approval votes"),
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
        return approval

    async def get(self, tenant_id: str, approval_id: str) -> Approval | None:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = $1 AND id = $2", tenant_id, approval_id
            )
        return to_approval(row) if row else None

    async def list(self, tenant_id: str, status: str | None = None, limit: int = 100,
                   run_id: str | None = None, user_id: str | None = None, project_id: str | None = None,
                   before: str | None = None) -> list[Approval]:
        async with self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
                " AND ($4::text IS NULL OR run_id = $4)"
                " AND (($5::text IS NULL AND $6::text IS NULL) OR run_id IN (SELECT id FROM runs WHERE tenant_id = $1"
                "      AND ($5::text IS NULL OR user_id = $5) AND ($6::text IS NULL OR project_id = $6)))"
                # an unknown cursor compares as NULL: an empty page
                " AND ($7::text IS NULL OR (created_at, id) < (SELECT created_at, id FROM approvals"
                "      WHERE tenant_id = $1 AND id = $7))"
                " ORDER BY created_at DESC, id DESC LIMIT $3",
                tenant_id, status, _limit(limit), run_id, user_id, project_id, before,
            )
        return [to_approval(r) for r in rows]

    async def decide(
        self, tenant_id: str, approval_id: str, *, status: str, decided_by: str | None, reason: str | None, now: float,
        user_id: str | None = None,
    ) -> Approval:
        if status not in APPROVAL_DECISIONS:
            raise StockadeError("input.invalid", "a decision is approved, rejected or expired")
        vote = decision_vote(status, decided_by, user_id, reason, now)
        existed = None
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(_DECIDE, status, now, decided_by, reason, tenant_id, approval_id, vote)
            if row is None:
                existed = await c.fetchrow(
                    f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = $1 AND id = $2", tenant_id, approval_id
                )
        # Raised after the commit so that an expiry found on the way is kept.
        return decision_outcome(to_approval(row) if row else None, status, to_approval(existed) if existed else None)

    async def vote(
        self, tenant_id: str, approval_id: str, *, key_id: str, user_id: str | None, decision: str,
        reason: str | None, now: float, expected_votes: int | None = None,
    ) -> Approval:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(
                f"SELECT {APPROVAL_COLS} FROM approvals WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                tenant_id, approval_id,
            )
            if row is None:
                raise StockadeError("not_found", "no such approval")
            after = to_approval(row).with_vote(key_id=key_id, user_id=user_id, decision=decision, reason=reason,
                                               now=now, expected_votes=expected_votes)
            await c.execute(_WRITE_VOTE, after.status, after.decided_at, after.decided_by, after.decision_reason,
                            dumps(list(after.votes), "approval votes"), tenant_id, approval_id)
        if after.status == "expired":  # raised after the commit so that the expiry found on the way is kept
            raise StockadeError("approval.expired", "the approval expired before the vote", status="expired")
        return after

    async def expire_due(self, now: float) -> list[Approval]:
        async with self._db.system_tx() as c:
            rows = await c.fetch(
                "UPDATE approvals SET status = 'expired', decided_at = $1 WHERE status = 'pending' AND expires_at <= $1"
                f" RETURNING {APPROVAL_COLS}",
                now,
            )
        return [to_approval(r) for r in rows]
