-- The chain head is the audit_log row with the highest seq (primary key order);
-- appends insert with one statement and let the primary key refuse a lost race
-- (supervisor/stores/sqlite/audit.py), so the separate head row is gone.
DROP TABLE audit_heads;
