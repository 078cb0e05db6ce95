-- A run's approvals (GET /v1/approvals?run_id=, and the API withdrawing a canceled run's requests).
CREATE INDEX approvals_run ON approvals (tenant_id, run_id, created_at DESC);
