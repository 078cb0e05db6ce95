-- Separation of duties and N-person approval (policy rule `approval: {approvers: N, separate: B}`).
-- required_approvals: distinct approver keys (and users) that must approve; separate: the run's own
-- key and its user's keys may not decide; votes: list of {key_id, user_id, decision, at, reason},
-- appended with the approval row locked (ApprovalStore.vote: SELECT ... FOR UPDATE), so concurrent
-- voters queue and each sees the others' votes. Existing rows: one approver, no separation, no votes.
-- The table keeps its row-level security (stockade_tenant_rls('approvals'), 0005): new columns are
-- covered by the same per-tenant policy.
ALTER TABLE approvals ADD COLUMN required_approvals integer NOT NULL DEFAULT 1
    CHECK (required_approvals BETWEEN 1 AND 5);
ALTER TABLE approvals ADD COLUMN separate boolean NOT NULL DEFAULT false;
ALTER TABLE approvals ADD COLUMN votes jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(votes) = 'array');
