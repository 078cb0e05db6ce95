-- Runs an older Stockade (before 0032) was carrying when it was upgraded have no seen_at, and
-- the lost-run sweeper never takes a run without one (supervisor/runs/lost.py). After a
-- production upgrade their worker is gone, and so is their job when Redis restarts empty
-- (compose keeps nothing on disk): nothing would ever end them, so they stayed 'running' or
-- 'waiting_approval' for ever, their SSE clients waiting and their approvals pending.
-- From now on they are judged like every other run: last seen at this migration. A run still
-- alive on an old worker (a rolling upgrade: old code writes no beats) is then ended as lost
-- three visibility timeouts after this runs, as a new worker that could not beat would be.
-- As stockade_system (BYPASSRLS): runs force row-level security, and a migrating user that is
-- no superuser would otherwise update no tenant's rows.
SELECT set_config('role', 'stockade_system', true);
UPDATE runs SET seen_at = extract(epoch FROM clock_timestamp())
 WHERE status IN ('running', 'waiting_approval') AND seen_at IS NULL;
RESET ROLE;
