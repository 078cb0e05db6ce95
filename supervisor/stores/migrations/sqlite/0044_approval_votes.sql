-- Separation of duties and N-person approval (policy rule `approval: {approvers: N, separate: B}`).
-- required_approvals: distinct approver keys (and users) that must approve; separate: the run's own
-- key and its user's keys may not decide; votes: JSON list of {key_id, user_id, decision, at, reason},
-- appended under the database write lock (ApprovalStore.vote). Existing rows: one approver, no
-- separation, no votes recorded - exactly how they were decided.
ALTER TABLE approvals ADD COLUMN required_approvals INTEGER NOT NULL DEFAULT 1
    CHECK (required_approvals BETWEEN 1 AND 5);
ALTER TABLE approvals ADD COLUMN separate INTEGER NOT NULL DEFAULT 0 CHECK (separate IN (0, 1));
ALTER TABLE approvals ADD COLUMN votes TEXT NOT NULL DEFAULT '[]';
