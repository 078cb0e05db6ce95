-- When a worker last said it still carries the run (RunStore.start_run, then beat_runs every
-- visibility/3 s). NULL for runs started before this column existed: those are never taken
-- for abandoned (supervisor/runs/lost.py).
ALTER TABLE runs ADD COLUMN seen_at REAL;
CREATE INDEX runs_carried ON runs (seen_at) WHERE status IN ('running', 'waiting_approval');
