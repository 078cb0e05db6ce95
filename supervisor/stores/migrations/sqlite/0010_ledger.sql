-- Budget ledger (see migrations/postgres/0010_ledger.sql for the design notes).
-- One account row per (tier, period): a new month is a new row at zero spent.
-- Writers serialise on BEGIN IMMEDIATE, so there is no lock order to keep.
CREATE TABLE budget_caps (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    scope       TEXT NOT NULL CHECK (scope IN ('tenant', 'project', 'user')),
    scope_id    TEXT NOT NULL,
    cap_micro   INTEGER NOT NULL CHECK (cap_micro >= 0),
    period      TEXT NOT NULL CHECK (period IN ('month', 'lifetime')),
    updated_at  REAL NOT NULL,
    PRIMARY KEY (tenant_id, scope, scope_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE budget_accounts (
    id              INTEGER PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    scope           TEXT NOT NULL CHECK (scope IN ('tenant', 'project', 'user')),
    scope_id        TEXT NOT NULL,
    period_key      TEXT NOT NULL,
    spent_micro     INTEGER NOT NULL DEFAULT 0 CHECK (spent_micro >= 0),
    reserved_micro  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micro >= 0),
    warned          INTEGER NOT NULL DEFAULT 0,  -- the 80 % warning of this period was announced
    UNIQUE (tenant_id, scope, scope_id, period_key)
) STRICT;

CREATE TABLE budget_reservations (
    tenant_id      TEXT NOT NULL,
    id             TEXT NOT NULL,
    run_id         TEXT,
    amount_micro   INTEGER NOT NULL CHECK (amount_micro >= 0),
    account_ids    TEXT NOT NULL,  -- JSON array of budget_accounts.id, ascending
    state          TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released')),
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    settled_at     REAL,
    charged_micro  INTEGER,
    PRIMARY KEY (tenant_id, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX budget_reservations_due ON budget_reservations (expires_at) WHERE state = 'held';
CREATE INDEX budget_reservations_run ON budget_reservations (tenant_id, run_id) WHERE state = 'held';

-- AUTOINCREMENT: ids are never reused, so ``after_id`` pagination never skips or repeats.
CREATE TABLE ledger_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT NOT NULL,
    account_id      INTEGER NOT NULL REFERENCES budget_accounts (id),
    scope           TEXT NOT NULL,
    scope_id        TEXT NOT NULL,
    period_key      TEXT NOT NULL,
    amount_micro    INTEGER NOT NULL CHECK (amount_micro >= 0),
    reservation_id  TEXT,
    run_id          TEXT,
    tool            TEXT,
    ts              REAL NOT NULL,
    detail          TEXT NOT NULL DEFAULT '{}'  -- JSON
) STRICT;
CREATE INDEX ledger_entries_tenant ON ledger_entries (tenant_id, id);
CREATE INDEX ledger_entries_reservation ON ledger_entries (tenant_id, reservation_id);

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only');
END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only');
END;
