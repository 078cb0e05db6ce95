-- A cap that switches period keeps what was spent (PUT /v1/budgets, month <-> lifetime).
-- See migrations/postgres/0043_budget_period_spend.sql and supervisor/stores/sqlite/ledger.py: every
-- tier is now metered on both its month row and its lifetime row; the cap checks the row of its own
-- period kind. This backfills what existed, where each tier and reservation had one row:
-- every tier gets the rows it lacks, the lifetime row is credited with all month rows' spend, each
-- month row with the lifetime row's spend of that month (by the month its reservation was made in),
-- and every held or released reservation gets its tier's other row (a held one's amount held there too).

CREATE TEMP TABLE stockade_0043_pairs AS
SELECT r.tenant_id, r.id AS rid, r.state, r.amount_micro, a.id AS acc, a.scope, a.scope_id,
       CASE WHEN a.period_key = 'lifetime' THEN strftime('%Y-%m', r.created_at, 'unixepoch')
            ELSE 'lifetime' END AS other_key
  FROM budget_reservations r, json_each(r.account_ids) AS u
  JOIN budget_accounts a ON a.id = u.value
 WHERE r.state IN ('held', 'released');

CREATE TEMP TABLE stockade_0043_lifetime_months AS
SELECT a.tenant_id, a.scope, a.scope_id,
       strftime('%Y-%m', coalesce(r.created_at, e.ts), 'unixepoch') AS month, sum(e.amount_micro) AS spent
  FROM ledger_entries e
  JOIN budget_accounts a ON a.id = e.account_id AND a.period_key = 'lifetime'
  LEFT JOIN budget_reservations r ON r.tenant_id = e.tenant_id AND r.id = e.reservation_id
 GROUP BY 1, 2, 3, 4;

INSERT INTO budget_accounts (tenant_id, scope, scope_id, period_key)
SELECT DISTINCT x.tenant_id, x.scope, x.scope_id, x.period_key
  FROM (SELECT tenant_id, scope, scope_id, 'lifetime' AS period_key FROM budget_accounts
        UNION SELECT tenant_id, scope, scope_id, month FROM stockade_0043_lifetime_months
        UNION SELECT tenant_id, scope, scope_id, other_key FROM stockade_0043_pairs) AS x
 WHERE true  -- (an upsert's SELECT needs a WHERE: SQLite's parsing ambiguity)
 ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, scope, scope_id, period_key) DO NOTHING;

-- Spend: lifetime rows get every month row's (read before the next statement changes them) ...
UPDATE budget_accounts SET spent_micro = spent_micro + (
    SELECT coalesce(sum(m.spent_micro), 0) FROM budget_accounts m
     WHERE m.tenant_id = budget_accounts.tenant_id AND m.scope = budget_accounts.scope
       AND m.scope_id = budget_accounts.scope_id AND m.period_key <> 'lifetime')
 WHERE period_key = 'lifetime';

-- ... and month rows the lifetime rows' spend of their month.
UPDATE budget_accounts SET spent_micro = spent_micro + (
    SELECT m.spent FROM stockade_0043_lifetime_months m
     WHERE m.tenant_id = budget_accounts.tenant_id AND m.scope = budget_accounts.scope
       AND m.scope_id = budget_accounts.scope_id AND m.month = budget_accounts.period_key)
 WHERE period_key <> 'lifetime' AND EXISTS (
    SELECT 1 FROM stockade_0043_lifetime_months m
     WHERE m.tenant_id = budget_accounts.tenant_id AND m.scope = budget_accounts.scope
       AND m.scope_id = budget_accounts.scope_id AND m.month = budget_accounts.period_key);

CREATE TEMP TABLE stockade_0043_other AS
SELECT p.tenant_id, p.rid, p.state, p.amount_micro, p.acc, o.id AS other
  FROM stockade_0043_pairs p
  JOIN budget_accounts o ON o.tenant_id = p.tenant_id AND o.scope = p.scope AND o.scope_id = p.scope_id
                        AND o.period_key = p.other_key;

-- Held amounts on the other rows, and every unsettled reservation holds both rows of each tier.
UPDATE budget_accounts SET reserved_micro = reserved_micro + (
    SELECT sum(x.amount_micro) FROM stockade_0043_other x WHERE x.state = 'held' AND x.other = budget_accounts.id)
 WHERE id IN (SELECT other FROM stockade_0043_other WHERE state = 'held');

UPDATE budget_reservations SET account_ids = (
    SELECT json_group_array(y.id) FROM (
        SELECT x.acc AS id FROM stockade_0043_other x
         WHERE x.tenant_id = budget_reservations.tenant_id AND x.rid = budget_reservations.id
        UNION
        SELECT x.other FROM stockade_0043_other x
         WHERE x.tenant_id = budget_reservations.tenant_id AND x.rid = budget_reservations.id
         ORDER BY 1) AS y)
 WHERE state IN ('held', 'released')
   AND EXISTS (SELECT 1 FROM stockade_0043_other x
                WHERE x.tenant_id = budget_reservations.tenant_id AND x.rid = budget_reservations.id);

DROP TABLE stockade_0043_pairs;
DROP TABLE stockade_0043_lifetime_months;
DROP TABLE stockade_0043_other;
