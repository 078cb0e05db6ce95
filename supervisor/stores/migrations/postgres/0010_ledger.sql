-- Budget ledger: caps per tier, one account row per (tier, period), reservations, append-only entries.
--
-- Why one account row per period: a new month is a new row that starts at zero
-- spent, so rollover needs no job and old months keep their totals.
-- Why the mutating operations are stored functions: each is ONE round trip
-- (FACTS.md: 2 plpgsql calls per reserve+commit ~1.4x the client-side SQL),
-- which matters because the hot tenant row is locked through the commit flush.
-- Why an account is two rows (a hold row and a settlement row): one shared
-- tenant row serialises every reservation of that tenant, and the lock is held
-- through the commit's WAL flush (FACTS.md). With one row, reserve AND commit
-- queue on it (two flushes per call); split, reserves queue on the hold row and
-- settlements on the settlement row, in parallel. Safe because a settlement or
-- release only ever LOWERS usage (charge <= the amount it releases), so a
-- reserve that reads a slightly old settlement row over-counts, never under-counts;
-- the one path that raises usage (a late charge) takes the hold locks too.
-- Lock order (deadlock freedom, FACTS.md): a reservation row, then hold rows,
-- then settlement rows; rows of one table always in ascending id, taken by one
-- "... ORDER BY id FOR UPDATE" before any UPDATE touches them.

CREATE TABLE budget_caps (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    scope       text NOT NULL CHECK (scope IN ('tenant', 'project', 'user')),
    scope_id    text NOT NULL,
    cap_micro   bigint NOT NULL CHECK (cap_micro >= 0),
    period      text NOT NULL CHECK (period IN ('month', 'lifetime')),
    updated_at  double precision NOT NULL,
    PRIMARY KEY (tenant_id, scope, scope_id)
);
SELECT stockade_tenant_rls('budget_caps');

-- Every tier a call is metered against gets an account, capped or not (a cap set
-- mid-month then starts from the real spend). held_micro: every amount ever
-- reserved (only reserve adds to it); released_micro: every amount a settlement
-- or release gave back. reserved = held - released. warned: the 80 % warning of
-- this period was already announced.
CREATE TABLE budget_account_holds (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    scope           text NOT NULL CHECK (scope IN ('tenant', 'project', 'user')),
    scope_id        text NOT NULL,
    period_key      text NOT NULL,
    held_micro      bigint NOT NULL DEFAULT 0 CHECK (held_micro >= 0),
    UNIQUE (tenant_id, scope, scope_id, period_key)
);
SELECT stockade_tenant_rls('budget_account_holds');

-- Created in the same transaction as its hold row (account_id = its id); no FK:
-- a KEY SHARE lock on the hot hold row from every settlement would re-join the queues.
CREATE TABLE budget_account_settlements (
    account_id      bigint PRIMARY KEY,
    tenant_id       text NOT NULL,
    spent_micro     bigint NOT NULL DEFAULT 0 CHECK (spent_micro >= 0),
    released_micro  bigint NOT NULL DEFAULT 0 CHECK (released_micro >= 0),
    warned          boolean NOT NULL DEFAULT false
);
SELECT stockade_tenant_rls('budget_account_settlements');

-- The account as readers know it. One statement reads both rows from one snapshot,
-- in which every release counted was preceded by its hold, so reserved >= 0.
-- security_invoker: the callers' row-level security applies through the view.
CREATE VIEW budget_accounts WITH (security_invoker = true) AS
SELECT h.id, h.tenant_id, h.scope, h.scope_id, h.period_key, s.spent_micro,
       h.held_micro - s.released_micro AS reserved_micro, s.warned
  FROM budget_account_holds h JOIN budget_account_settlements s ON s.account_id = h.id;

-- No foreign key to tenants here: every reserve inserts a row, and a KEY SHARE
-- lock on the one hot tenant row from every concurrent reserver would turn it
-- into a MultiXact hot spot. account_ids already belong to the tenant (RLS).
CREATE TABLE budget_reservations (
    tenant_id      text NOT NULL,
    id             text NOT NULL,
    run_id         text,
    amount_micro   bigint NOT NULL CHECK (amount_micro >= 0),
    account_ids    bigint[] NOT NULL,
    state          text NOT NULL CHECK (state IN ('held', 'committed', 'released')),
    created_at     double precision NOT NULL,
    expires_at     double precision NOT NULL,
    settled_at     double precision,
    charged_micro  bigint,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX budget_reservations_due ON budget_reservations (expires_at) WHERE state = 'held';
CREATE INDEX budget_reservations_run ON budget_reservations (tenant_id, run_id) WHERE state = 'held';
SELECT stockade_tenant_rls('budget_reservations');

CREATE TABLE ledger_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text NOT NULL,
    account_id      bigint NOT NULL,  -- budget_accounts.id; no FK: written only by stockade_ledger_commit
    scope           text NOT NULL,
    scope_id        text NOT NULL,
    period_key      text NOT NULL,
    amount_micro    bigint NOT NULL CHECK (amount_micro >= 0),
    reservation_id  text,
    run_id          text,
    tool            text,
    ts              double precision NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ledger_entries_tenant ON ledger_entries (tenant_id, id);
CREATE INDEX ledger_entries_reservation ON ledger_entries (tenant_id, reservation_id);
SELECT stockade_tenant_rls('ledger_entries');

-- Money records are never rewritten: entries are append-only, accounts and
-- reservations change state but are never deleted.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries FROM stockade_app, stockade_system;
REVOKE DELETE, TRUNCATE ON budget_account_holds, budget_account_settlements, budget_reservations
    FROM stockade_app, stockade_system;
GRANT SELECT, INSERT, UPDATE ON budget_caps, budget_account_holds, budget_account_settlements, budget_reservations
    TO stockade_app, stockade_system;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON budget_accounts FROM stockade_app, stockade_system;
GRANT SELECT ON budget_accounts TO stockade_app, stockade_system;
GRANT SELECT, INSERT ON ledger_entries TO stockade_app, stockade_system;

CREATE FUNCTION stockade_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION stockade_ledger_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION stockade_ledger_append_only();

-- The functions below are SECURITY INVOKER and are called outside any explicit
-- transaction (one statement = one transaction = one round trip; inside a
-- caller's transaction the role switch would outlive the call). Each first
-- switches, transaction-locally, to stockade_app scoped to p_tenant, so RLS
-- filters every statement after it exactly as db.tenant_tx() would. They are
-- written with few statements on purpose: each costs ~20-50 us inside the lock.

-- All tiers or none. r_status: ok | duplicate. Over a cap, it raises SQLSTATE SB001
-- with a JSON DETAIL naming the tightest tier {"scope", "scope_id", "cap", "remaining"}:
-- the transaction aborts, so a refusal changes nothing and costs no WAL flush.
-- Everything that needs no account lock (finding the rows, writing the reservation)
-- happens before the locks, so the hot tenant row is held as briefly as possible.
CREATE FUNCTION stockade_ledger_reserve(
    p_tenant text, p_scopes text[], p_scope_ids text[], p_month text, p_amount bigint,
    p_rid text, p_run text, p_expires double precision, p_now double precision)
RETURNS TABLE (r_status text)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_bad_scope text;  -- the tightest tier the amount does not fit in, if any
    v_bad_id text;
    v_bad_cap bigint;
    v_bad_head bigint;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    -- The account row of each tier for the period its cap uses (monthly or no cap: p_month;
    -- lifetime: 'lifetime'). Rows are never deleted, so ids found here stay valid.
    SELECT array_agg(a.id ORDER BY a.id) INTO v_ids
      FROM unnest(p_scopes, p_scope_ids) AS s(scope, scope_id)
      LEFT JOIN budget_caps c ON c.tenant_id = p_tenant AND c.scope = s.scope AND c.scope_id = s.scope_id
      JOIN budget_account_holds a ON a.tenant_id = p_tenant AND a.scope = s.scope AND a.scope_id = s.scope_id
                            AND a.period_key = CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE p_month END;
    IF coalesce(cardinality(v_ids), 0) <> cardinality(p_scopes) THEN
        -- First use of a tier in this period: create its row at zero, in one fixed order so
        -- that two first users wait for each other instead of locking each other out.
        -- Its settlement row is written in the same statement (same transaction: both or neither).
        WITH n AS (
            INSERT INTO budget_account_holds (tenant_id, scope, scope_id, period_key)
            SELECT p_tenant, s.scope, s.scope_id, CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE p_month END
              FROM unnest(p_scopes, p_scope_ids) AS s(scope, scope_id)
              LEFT JOIN budget_caps c ON c.tenant_id = p_tenant AND c.scope = s.scope AND c.scope_id = s.scope_id
             ORDER BY 2, 3, 4
            ON CONFLICT (tenant_id, scope, scope_id, period_key) DO NOTHING
            RETURNING id
        )
        INSERT INTO budget_account_settlements (account_id, tenant_id) SELECT n.id, p_tenant FROM n ORDER BY n.id;
        SELECT array_agg(a.id ORDER BY a.id) INTO v_ids
          FROM unnest(p_scopes, p_scope_ids) AS s(scope, scope_id)
          LEFT JOIN budget_caps c ON c.tenant_id = p_tenant AND c.scope = s.scope AND c.scope_id = s.scope_id
          JOIN budget_account_holds a ON a.tenant_id = p_tenant AND a.scope = s.scope AND a.scope_id = s.scope_id
                                AND a.period_key = CASE WHEN c.period = 'lifetime' THEN 'lifetime' ELSE p_month END;
        IF coalesce(cardinality(v_ids), 0) <> cardinality(p_scopes) THEN
            RAISE EXCEPTION 'budget accounts missing for tenant %', p_tenant USING ERRCODE = 'internal_error';
        END IF;
    END IF;
    INSERT INTO budget_reservations (tenant_id, id, run_id, amount_micro, account_ids, state, created_at, expires_at)
    VALUES (p_tenant, p_rid, p_run, p_amount, v_ids, 'held', p_now, p_expires)
    ON CONFLICT (tenant_id, id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text;
        RETURN;
    END IF;
    -- Lock the hold rows in ascending id order (FACTS.md: one order, no deadlock). The check
    -- is the NEXT statement on purpose: its snapshot is taken after the locks are ours, so it
    -- sees every commit before them, including a late charge (which holds these locks too).
    -- Settlements committed after it only lower usage: reading them late over-counts.
    PERFORM 1 FROM budget_account_holds h WHERE h.id = ANY (v_ids) ORDER BY h.id FOR UPDATE;
    -- One statement: check every capped tier and add the hold only when no tier refuses.
    -- The tightest refusing tier: least headroom, then tenant before project before user.
    WITH l AS MATERIALIZED (
        SELECT h.id, h.scope, h.scope_id, c.cap_micro AS cap,
               c.cap_micro - st.spent_micro - (h.held_micro - st.released_micro) AS head
          FROM budget_account_holds h
          JOIN budget_account_settlements st ON st.account_id = h.id
          LEFT JOIN budget_caps c ON c.tenant_id = h.tenant_id AND c.scope = h.scope AND c.scope_id = h.scope_id
                                 AND (c.period = 'lifetime') = (h.period_key = 'lifetime')
         WHERE h.id = ANY (v_ids)
    ), bad AS MATERIALIZED (
        SELECT l.scope, l.scope_id, l.cap, l.head FROM l
         WHERE l.cap IS NOT NULL AND p_amount > l.head
         ORDER BY l.head, array_position(ARRAY['tenant', 'project', 'user'], l.scope), l.scope_id
         LIMIT 1
    ), u AS (
        UPDATE budget_account_holds h SET held_micro = h.held_micro + p_amount
          FROM l WHERE h.id = l.id AND NOT EXISTS (SELECT 1 FROM bad)
    )
    SELECT bad.scope, bad.scope_id, bad.cap, bad.head INTO v_bad_scope, v_bad_id, v_bad_cap, v_bad_head FROM bad;
    IF v_bad_scope IS NOT NULL THEN  -- raising aborts the transaction: the hold above never happened
        RAISE EXCEPTION 'budget exceeded' USING ERRCODE = 'SB001',
            DETAIL = json_build_object('scope', v_bad_scope, 'scope_id', v_bad_id, 'cap', v_bad_cap,
                                       'remaining', greatest(v_bad_head, 0))::text;
    END IF;
    RETURN QUERY SELECT 'ok'::text;
END
$$;

-- Settle a reservation: charge min(actual, reserved) on every tier it holds,
-- release the rest, one entry per tier (none when the charge is 0). Rows:
-- 'missing' | 'committed' (a repeat: the first settlement's entries follow) |
-- nothing but 'entry' rows for a new settlement.
-- A reservation already released (expired and swept, or its run ended) is
-- charged late: at most what still fits under every cap; the shortfall is
-- recorded as unbilled_micro. Committed spend never exceeds a cap.
CREATE FUNCTION stockade_ledger_commit(
    p_tenant text, p_rid text, p_actual bigint, p_tool text, p_now double precision)
RETURNS TABLE (r_status text, r_id bigint, r_scope text, r_scope_id text, r_period_key text, r_amount bigint,
               r_run text, r_tool text, r_ts double precision, r_detail jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_res budget_reservations;
    v_late boolean;
    v_due bigint;
    v_charge bigint;
    v_head bigint;
    v_release bigint;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    SELECT * INTO v_res FROM budget_reservations r WHERE r.tenant_id = p_tenant AND r.id = p_rid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                            NULL::text, NULL::text, NULL::double precision, NULL::jsonb;
        RETURN;
    END IF;
    IF v_res.state = 'committed' THEN
        RETURN QUERY SELECT 'committed'::text, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                            NULL::text, NULL::text, NULL::double precision, NULL::jsonb
                     UNION ALL
                     (SELECT 'entry'::text, e.id, e.scope, e.scope_id, e.period_key, e.amount_micro, e.run_id, e.tool,
                             e.ts, e.detail
                        FROM ledger_entries e
                       WHERE e.tenant_id = p_tenant AND e.reservation_id = p_rid ORDER BY e.id);
        RETURN;
    END IF;
    v_late := v_res.state = 'released';
    v_due := least(p_actual, v_res.amount_micro);
    v_charge := v_due;
    v_release := CASE WHEN v_late THEN 0 ELSE v_res.amount_micro END;
    IF v_late THEN  -- rare path: it RAISES usage, so it queues with reserves: take the hold
        -- locks first, then measure (next statement, fresh snapshot) the headroom under every cap
        PERFORM 1 FROM budget_account_holds h WHERE h.id = ANY (v_res.account_ids) ORDER BY h.id FOR UPDATE;
        SELECT min(c.cap_micro - a.spent_micro - a.reserved_micro) INTO v_head
          FROM budget_accounts a
          JOIN budget_caps c ON c.tenant_id = a.tenant_id AND c.scope = a.scope AND c.scope_id = a.scope_id
                            AND (c.period = 'lifetime') = (a.period_key = 'lifetime')
         WHERE a.id = ANY (v_res.account_ids);
        IF v_head IS NOT NULL THEN
            v_charge := least(v_charge, greatest(v_head, 0));
        END IF;
    END IF;
    -- The reservation row is ours already; mark it before taking the account locks.
    UPDATE budget_reservations r SET state = 'committed', settled_at = p_now, charged_micro = v_charge
     WHERE r.tenant_id = p_tenant AND r.id = p_rid;
    -- One statement: lock the settlement rows (not the hold rows reserves queue on) in id
    -- order, update them from the locked (latest) values, and write one entry per tier
    -- (warning_pct: this charge crossed 80 % first). spent is exact; the hold row is read
    -- unlocked, so reserved/remaining in the entry detail are as of this statement's start.
    RETURN QUERY
    WITH l AS MATERIALIZED (
        SELECT st.account_id AS id, h.scope, h.scope_id, h.period_key, st.spent_micro + v_charge AS spent,
               greatest(h.held_micro - st.released_micro - v_release, 0) AS reserved, c.cap_micro AS cap,
               coalesce(v_charge > 0 AND c.cap_micro > 0 AND NOT st.warned
                        AND (st.spent_micro + v_charge) * 5 >= c.cap_micro * 4, false) AS warn
          FROM budget_account_settlements st
          JOIN budget_account_holds h ON h.id = st.account_id
          LEFT JOIN budget_caps c ON c.tenant_id = h.tenant_id AND c.scope = h.scope AND c.scope_id = h.scope_id
                                 AND (c.period = 'lifetime') = (h.period_key = 'lifetime')
         WHERE st.account_id = ANY (v_res.account_ids)
         ORDER BY st.account_id
           FOR UPDATE OF st
    ), u AS (
        UPDATE budget_account_settlements st
           SET spent_micro = l.spent, released_micro = st.released_micro + v_release, warned = st.warned OR l.warn
          FROM l WHERE st.account_id = l.id
    ), e AS (
        INSERT INTO ledger_entries (tenant_id, account_id, scope, scope_id, period_key, amount_micro,
                                    reservation_id, run_id, tool, ts, detail)
        SELECT p_tenant, l.id, l.scope, l.scope_id, l.period_key, v_charge, p_rid, v_res.run_id, p_tool, p_now,
               jsonb_strip_nulls(jsonb_build_object(
                   'reserved_micro', v_res.amount_micro,
                   'actual_micro', p_actual,
                   'overage_micro', CASE WHEN p_actual > v_res.amount_micro THEN p_actual - v_res.amount_micro END,
                   'late', CASE WHEN v_late THEN true END,
                   'unbilled_micro', CASE WHEN v_due > v_charge THEN v_due - v_charge END,
                   'cap_micro', l.cap,
                   'spent_micro', l.spent,
                   'remaining_micro', l.cap - l.spent - l.reserved,
                   'warning_pct', CASE WHEN l.warn THEN 80 END))
          FROM l WHERE v_charge > 0
         ORDER BY l.id
        RETURNING id, scope, scope_id, period_key, amount_micro, detail
    )
    SELECT 'entry'::text, e.id, e.scope, e.scope_id, e.period_key, e.amount_micro, v_res.run_id, p_tool, p_now, e.detail
      FROM e ORDER BY e.id;
END
$$;

-- Release held reservations the caller has already locked (FOR UPDATE, in id order).
CREATE FUNCTION stockade_ledger_release_held(p_tenants text[], p_ids text[], p_now double precision)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_acc bigint[];
    v_amt bigint[];
    v_n integer;
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN 0;
    END IF;
    SELECT array_agg(x.account_id ORDER BY x.account_id), array_agg(x.total ORDER BY x.account_id)
      INTO v_acc, v_amt
      FROM (SELECT u.account_id, sum(r.amount_micro)::bigint AS total
              FROM budget_reservations r
              JOIN unnest(p_tenants, p_ids) AS k(tenant_id, id) ON r.tenant_id = k.tenant_id AND r.id = k.id
             CROSS JOIN LATERAL unnest(r.account_ids) AS u(account_id)
             WHERE r.state = 'held'
             GROUP BY u.account_id) x;
    -- A release only lowers usage: the settlement rows suffice (in id order).
    WITH l AS MATERIALIZED (
        SELECT st.account_id AS id FROM budget_account_settlements st
         WHERE st.account_id = ANY (v_acc) ORDER BY st.account_id FOR UPDATE
    )
    UPDATE budget_account_settlements st SET released_micro = st.released_micro + x.total
      FROM l JOIN unnest(v_acc, v_amt) AS x(id, total) ON x.id = l.id
     WHERE st.account_id = l.id;
    UPDATE budget_reservations r SET state = 'released', settled_at = p_now
      FROM unnest(p_tenants, p_ids) AS k(tenant_id, id)
     WHERE r.tenant_id = k.tenant_id AND r.id = k.id AND r.state = 'held';
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

-- Release one reservation (p_rid) or every held reservation of a run (p_run).
CREATE FUNCTION stockade_ledger_release(p_tenant text, p_rid text, p_run text, p_now double precision)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    IF p_rid IS NULL AND p_run IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(s.id) INTO v_ids
      FROM (SELECT r.id FROM budget_reservations r
             WHERE r.tenant_id = p_tenant AND r.state = 'held'
               AND (p_rid IS NULL OR r.id = p_rid) AND (p_run IS NULL OR r.run_id = p_run)
             ORDER BY r.id
               FOR UPDATE) s;
    RETURN stockade_ledger_release_held(array_fill(p_tenant, ARRAY[coalesce(cardinality(v_ids), 0)]), v_ids, p_now);
END
$$;

-- Crashed workers: release held reservations past their expiry, across tenants
-- (as stockade_system). SKIP LOCKED: a reservation being settled right now is
-- left to its settler, and two sweepers never wait on each other.
CREATE FUNCTION stockade_ledger_sweep(p_now double precision, p_limit integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_tenants text[];
    v_ids text[];
BEGIN
    PERFORM set_config('role', 'stockade_system', true);
    SELECT array_agg(s.tenant_id), array_agg(s.id) INTO v_tenants, v_ids
      FROM (SELECT r.tenant_id, r.id FROM budget_reservations r
             WHERE r.state = 'held' AND r.expires_at <= p_now
             ORDER BY r.expires_at
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) s;
    RETURN stockade_ledger_release_held(v_tenants, v_ids, p_now);
END
$$;
