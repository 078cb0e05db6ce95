-- Runs an older Stockade (before 0033) was carrying when it was upgraded have no seen_at, and
-- the lost-run sweeper never takes a run without one (supervisor/runs/lost.py); see the
-- PostgreSQL 0042. Embedded restarts end such runs anyway (Runtime._recover), but several
-- processes may share a data dir: they are judged like every other run, last seen now.
UPDATE runs SET seen_at = (julianday('now') - 2440587.5) * 86400.0
 WHERE status IN ('running', 'waiting_approval') AND seen_at IS NULL;
