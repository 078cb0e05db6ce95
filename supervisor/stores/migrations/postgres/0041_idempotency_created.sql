-- Idempotency keys are pruned by age (supervisor/runtime.py sweeper; STOCKADE_IDEMPOTENCY_TTL_S):
-- the sweep finds the oldest rows by this index instead of reading the whole table.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
