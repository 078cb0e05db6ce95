-- A cap that switches period keeps what was spent (PUT /v1/budgets, month <-> lifetime).
--
-- Before: a tier's spend went to ONE account row, the one of its cap's period kind (this month's
-- row when the cap is monthly or there is none, the 'lifetime' row when it is lifetime). Switching
-- the cap moved the tier to the other kind's row, which had never seen that spend: a "$100
-- lifetime" cap set after $90 was spent under a monthly one admitted another $100, and a monthly
-- cap set on a lifetime tier forgot this month's spend.
--
-- Now every tier is metered on BOTH rows: every reservation holds its amount on the tier's month
-- row (the month it is reserved in) and on its lifetime row, every settlement charges and releases
-- both, every release frees both. The cap checks (and clamps a settlement on) the row of its own
-- period kind; the other row is only metered. So whatever the cap's period was when money was
-- spent or held, the lifetime row holds everything ever spent in the tier and the month row
-- everything spent this month, and a switch is a change of which row is checked - including for
-- reservations held across it (their settlement charges both rows, their release frees both).
-- The ledger still writes ONE entry per tier and charge, on the row the cap checks at settlement
-- (the month row when uncapped), so entries, receipts and their sums are unchanged.
--
-- Rows are found by period key alone, not through the cap, so the cap-changed-period retry of
-- 0035 (a row found under one cap and checked under another) has nothing left to catch and is gone.
-- Lock order is unchanged: every statement takes its hold rows, then settlement rows, each in
-- ascending id, by one "ORDER BY id FOR UPDATE"; the second row per tier is just one more id in
-- that order. New rows are still created in (scope, scope_id, period_key) order by every creator.
--
-- Existing data (the backfill at the end): every tier gets the rows it lacks, the lifetime row is
-- credited with all month rows' spend, each month row with the lifetime row's spend of that month
-- (by the month its reservation was made in, as settlements go), and every held or released
-- reservation gets its tier's other row (a held one's amount is held there too), so its settlement
-- or release is booked on both rows as if it had been made under this scheme.
--
-- Same signatures and results as 0035.

CREATE OR REPLACE FUNCTION stockade_ledger_reserve_batch(
    p_tenant text, p_rids text[], p_runs text[], p_amounts bigint[], p_months text[],
    p_expires double precision[], p_nows double precision[],
    p_tier_items integer[], p_scopes text[], p_scope_ids text[])
RETURNS TABLE (r_item integer, r_status text, r_scope text, r_scope_id text, r_cap bigint, r_remaining bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n integer := coalesce(cardinality(p_rids), 0);
    nt integer := coalesce(cardinality(p_tier_items), 0);
    nx integer;         -- 2 * nt: every tier has two rows
    x_items integer[];  -- every tier twice (its month row, then its lifetime row): item, scope, id, period key
    x_scopes text[];
    x_sids text[];
    x_keys text[];
    v_tacc bigint[];    -- the account of every (tier, period kind), in that order
    v_ids bigint[];     -- the distinct accounts (the arrays below are aligned with it), and per account:
    v_caps bigint[];    --   its cap (NULL: uncapped)
    v_heads bigint[];   --   its headroom, lowered as items are accepted
    v_sc text[];
    v_sid text[];
    v_distinct bigint;
    v_dup boolean[];
    v_ok boolean[];
    v_bad integer[];    -- per refused item: the position in v_ids of the tier that refused it
    v_brem bigint[];
    v_ins text[];       -- the ids inserted
    v_nok integer := 0;
    i integer;
    j integer;
    k integer := 1;
    k0 integer;
    p integer;
    b integer;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 OR nt < n OR coalesce(cardinality(p_runs), 0) <> n OR coalesce(cardinality(p_amounts), 0) <> n
       OR coalesce(cardinality(p_months), 0) <> n OR coalesce(cardinality(p_expires), 0) <> n
       OR coalesce(cardinality(p_nows), 0) <> n OR coalesce(cardinality(p_scopes), 0) <> nt
       OR coalesce(cardinality(p_scope_ids), 0) <> nt THEN
        RAISE EXCEPTION 'malformed reservation batch' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    -- Both accounts of every tier (the item's month and 'lifetime', whatever its cap: see the header),
    -- locked in ascending id by the same statement.
    SELECT array_agg(t.item ORDER BY t.ord, k.n), array_agg(t.scope ORDER BY t.ord, k.n),
           array_agg(t.scope_id ORDER BY t.ord, k.n),
           array_agg(CASE k.n WHEN 1 THEN p_months[t.item] ELSE 'lifetime' END ORDER BY t.ord, k.n)
      INTO x_items, x_scopes, x_sids, x_keys
      FROM unnest(p_tier_items, p_scopes, p_scope_ids) WITH ORDINALITY AS t(item, scope, scope_id, ord)
     CROSS JOIN generate_series(1, 2) AS k(n);
    nx := 2 * nt;
    SELECT array_agg(x.id ORDER BY x.ord) INTO v_tacc
      FROM (SELECT a.id, t.ord
              FROM unnest(x_scopes, x_sids, x_keys) WITH ORDINALITY AS t(scope, scope_id, pk, ord)
              JOIN budget_account_holds a ON a.tenant_id = p_tenant AND a.scope = t.scope AND a.scope_id = t.scope_id
                   AND a.period_key = t.pk
             ORDER BY a.id
               FOR UPDATE OF a) x;
    IF coalesce(cardinality(v_tacc), 0) <> nx THEN
        -- First use of a tier in a period: create the missing rows at zero, sorted by key as
        -- 0010 does (two creators wait for each other instead of locking each other out),
        -- each with its settlement row in the same statement; then look up and lock again.
        WITH created AS (
            INSERT INTO budget_account_holds (tenant_id, scope, scope_id, period_key)
            SELECT DISTINCT p_tenant, t.scope, t.scope_id, t.pk
              FROM unnest(x_scopes, x_sids, x_keys) AS t(scope, scope_id, pk)
             ORDER BY 2, 3, 4
            ON CONFLICT (tenant_id, scope, scope_id, period_key) DO NOTHING
            RETURNING id
        )
        INSERT INTO budget_account_settlements (account_id, tenant_id)
        SELECT created.id, p_tenant FROM created ORDER BY created.id;
        SELECT array_agg(x.id ORDER BY x.ord) INTO v_tacc
          FROM (SELECT a.id, t.ord
                  FROM unnest(x_scopes, x_sids, x_keys) WITH ORDINALITY AS t(scope, scope_id, pk, ord)
                  JOIN budget_account_holds a ON a.tenant_id = p_tenant AND a.scope = t.scope AND a.scope_id = t.scope_id
                       AND a.period_key = t.pk
                 ORDER BY a.id
                   FOR UPDATE OF a) x;
        IF coalesce(cardinality(v_tacc), 0) <> nx THEN
            RAISE EXCEPTION 'budget accounts missing for tenant %', p_tenant USING ERRCODE = 'internal_error';
        END IF;
    END IF;
    -- This statement's snapshot is taken after the locks are ours (0010: a late charge holds
    -- them too; settlements committed meanwhile only lower usage, reading them late over-counts).
    -- (The per-account arrays are aligned because they aggregate one row stream.)
    SELECT (SELECT array_agg(EXISTS (SELECT 1 FROM budget_reservations r WHERE r.tenant_id = p_tenant AND r.id = u.rid)
                             ORDER BY u.item)
              FROM unnest(p_rids) WITH ORDINALITY AS u(rid, item)),
           CASE WHEN n > 1 THEN (SELECT count(DISTINCT x) FROM unnest(p_rids) AS x) ELSE 1 END,
           array_agg(l.id), array_agg(l.cap), array_agg(l.head), array_agg(l.scope), array_agg(l.scope_id)
      INTO v_dup, v_distinct, v_ids, v_caps, v_heads, v_sc, v_sid
      FROM (SELECT h.id, h.scope, h.scope_id, c.cap_micro AS cap,
                   c.cap_micro - st.spent_micro - (h.held_micro - st.released_micro) AS head
              FROM budget_account_holds h
              JOIN budget_account_settlements st ON st.account_id = h.id
              -- the cap checks the row of its own period kind; the other row is only metered
              LEFT JOIN budget_caps c ON c.tenant_id = h.tenant_id AND c.scope = h.scope AND c.scope_id = h.scope_id
                                     AND (c.period = 'lifetime') = (h.period_key = 'lifetime')
             WHERE h.id = ANY (v_tacc)) l;
    IF v_distinct <> n THEN
        RAISE EXCEPTION 'a reservation id twice in one batch' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_ok := array_fill(false, ARRAY[n]);
    v_bad := array_fill(NULL::integer, ARRAY[n]);
    v_brem := array_fill(NULL::bigint, ARRAY[n]);
    FOR i IN 1..n LOOP
        k0 := k;  -- tiers k0 .. k-1 are item i's
        WHILE k <= nx AND x_items[k] = i LOOP
            k := k + 1;
        END LOOP;
        IF k = k0 THEN
            RAISE EXCEPTION 'malformed reservation batch' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        CONTINUE WHEN v_dup[i];
        b := NULL;
        FOR j IN k0..k - 1 LOOP
            p := array_position(v_ids, v_tacc[j]);
            IF v_caps[p] IS NOT NULL AND p_amounts[i] > v_heads[p]
               AND (b IS NULL OR v_heads[p] < v_heads[b]
                    OR (v_heads[p] = v_heads[b]
                        AND (array_position(ARRAY['tenant', 'project', 'user'], v_sc[p]), v_sid[p])
                            < (array_position(ARRAY['tenant', 'project', 'user'], v_sc[b]), v_sid[b]))) THEN
                b := p;
            END IF;
        END LOOP;
        IF b IS NULL THEN
            v_ok[i] := true;
            v_nok := v_nok + 1;
            FOR j IN k0..k - 1 LOOP
                p := array_position(v_ids, v_tacc[j]);
                v_heads[p] := v_heads[p] - p_amounts[i];  -- uncapped: NULL stays NULL
            END LOOP;
        ELSE
            v_bad[i] := b;
            v_brem[i] := greatest(v_heads[b], 0);
        END IF;
    END LOOP;
    IF k <= nx THEN
        RAISE EXCEPTION 'malformed reservation batch' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_nok > 0 THEN
        -- One statement: insert the accepted reservations (ascending id) and add to the holds
        -- exactly what was inserted. An id another transaction inserted after our snapshot is
        -- not inserted here (ON CONFLICT): that item is a duplicate and holds nothing.
        WITH ins AS (
            INSERT INTO budget_reservations (tenant_id, id, run_id, amount_micro, account_ids, state, created_at, expires_at)
            SELECT p_tenant, u.rid, u.run, u.amount,
                   (SELECT array_agg(t.acc ORDER BY t.acc) FROM unnest(x_items, v_tacc) AS t(item, acc)
                     WHERE t.item = u.item),
                   'held', u.now, u.expires
              FROM unnest(p_rids, p_runs, p_amounts, p_expires, p_nows, v_ok)
                   WITH ORDINALITY AS u(rid, run, amount, expires, now, ok, item)
             WHERE u.ok
             ORDER BY u.rid
            ON CONFLICT (tenant_id, id) DO NOTHING
            RETURNING id, amount_micro, account_ids
        ), held AS (
            UPDATE budget_account_holds h SET held_micro = h.held_micro + x.total
              FROM (SELECT a.acc, sum(ins.amount_micro)::bigint AS total
                      FROM ins CROSS JOIN LATERAL unnest(ins.account_ids) AS a(acc) GROUP BY a.acc) x
             WHERE h.id = x.acc
        )
        SELECT array_agg(ins.id) INTO v_ins FROM ins;
        IF coalesce(cardinality(v_ins), 0) <> v_nok THEN
            FOR i IN 1..n LOOP
                IF v_ok[i] AND NOT coalesce(p_rids[i] = ANY (v_ins), false) THEN
                    v_ok[i] := false;
                    v_dup[i] := true;
                END IF;
            END LOOP;
        END IF;
    END IF;
    FOR i IN 1..n LOOP
        r_item := i;
        r_status := CASE WHEN v_ok[i] THEN 'ok' WHEN v_bad[i] IS NOT NULL THEN 'exceeded' ELSE 'duplicate' END;
        r_scope := v_sc[v_bad[i]];
        r_scope_id := v_sid[v_bad[i]];
        r_cap := v_caps[v_bad[i]];
        r_remaining := v_brem[i];
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION stockade_ledger_reserve(
    p_tenant text, p_scopes text[], p_scope_ids text[], p_month text, p_amount bigint,
    p_rid text, p_run text, p_expires double precision, p_now double precision)
RETURNS TABLE (r_status text)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_row record;
    v_head bigint;
    v_bad_scope text;  -- the tightest tier the amount does not fit in, if any
    v_bad_id text;
    v_bad_cap bigint;
    v_bad_head bigint;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    -- Both accounts of every tier: this month's and the lifetime one (see the header).
    SELECT array_agg(a.id ORDER BY a.id) INTO v_ids
      FROM unnest(p_scopes, p_scope_ids) AS s(scope, scope_id)
     CROSS JOIN unnest(ARRAY[p_month, 'lifetime']) AS k(pk)
      JOIN budget_account_holds a ON a.tenant_id = p_tenant AND a.scope = s.scope AND a.scope_id = s.scope_id
                                 AND a.period_key = k.pk;
    IF coalesce(cardinality(v_ids), 0) <> 2 * cardinality(p_scopes) THEN
        WITH created AS (
            INSERT INTO budget_account_holds (tenant_id, scope, scope_id, period_key)
            SELECT p_tenant, s.scope, s.scope_id, k.pk
              FROM unnest(p_scopes, p_scope_ids) AS s(scope, scope_id)
             CROSS JOIN unnest(ARRAY[p_month, 'lifetime']) AS k(pk)
             ORDER BY 2, 3, 4
            ON CONFLICT (tenant_id, scope, scope_id, period_key) DO NOTHING
            RETURNING id
        )
        INSERT INTO budget_account_settlements (account_id, tenant_id)
        SELECT created.id, p_tenant FROM created ORDER BY created.id;
        SELECT array_agg(a.id ORDER BY a.id) INTO v_ids
          FROM unnest(p_scopes, p_scope_ids) AS s(scope, scope_id)
         CROSS JOIN unnest(ARRAY[p_month, 'lifetime']) AS k(pk)
          JOIN budget_account_holds a ON a.tenant_id = p_tenant AND a.scope = s.scope AND a.scope_id = s.scope_id
                                     AND a.period_key = k.pk;
        IF coalesce(cardinality(v_ids), 0) <> 2 * cardinality(p_scopes) THEN
            RAISE EXCEPTION 'budget accounts missing for tenant %', p_tenant USING ERRCODE = 'internal_error';
        END IF;
    END IF;
    INSERT INTO budget_reservations (tenant_id, id, run_id, amount_micro, account_ids, state, created_at, expires_at)
    VALUES (p_tenant, p_rid, p_run, p_amount, v_ids, 'held', p_now, p_expires)
    ON CONFLICT (tenant_id, id) DO NOTHING;
    IF NOT FOUND THEN
        r_status := 'duplicate';
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM 1 FROM budget_account_holds h WHERE h.id = ANY (v_ids) ORDER BY h.id FOR UPDATE;
    -- A new statement: its snapshot is taken after the locks are ours (see 0010).
    FOR v_row IN
        UPDATE budget_account_holds h SET held_micro = h.held_micro + p_amount
          FROM budget_account_settlements st
         WHERE h.id = ANY (v_ids) AND st.account_id = h.id
        RETURNING h.scope, h.scope_id, st.spent_micro, st.released_micro, h.held_micro,
                  -- the tier's cap checks the row of its own period kind; the other row is only metered
                  (SELECT c.cap_micro FROM budget_caps c
                    WHERE c.tenant_id = h.tenant_id AND c.scope = h.scope AND c.scope_id = h.scope_id
                      AND (c.period = 'lifetime') = (h.period_key = 'lifetime')) AS cap
    LOOP
        CONTINUE WHEN v_row.cap IS NULL;
        v_head := v_row.cap - v_row.spent_micro - (v_row.held_micro - p_amount - v_row.released_micro);
        IF p_amount > v_head AND (v_bad_scope IS NULL OR v_head < v_bad_head
            OR (v_head = v_bad_head
                AND (array_position(ARRAY['tenant', 'project', 'user'], v_row.scope), v_row.scope_id)
                    < (array_position(ARRAY['tenant', 'project', 'user'], v_bad_scope), v_bad_id))) THEN
            v_bad_scope := v_row.scope;
            v_bad_id := v_row.scope_id;
            v_bad_cap := v_row.cap;
            v_bad_head := v_head;
        END IF;
    END LOOP;
    IF v_bad_scope IS NOT NULL THEN  -- raising aborts the transaction: nothing above happened
        RAISE EXCEPTION 'budget exceeded' USING ERRCODE = 'SB001',
            DETAIL = json_build_object('scope', v_bad_scope, 'scope_id', v_bad_id, 'cap', v_bad_cap,
                                       'remaining', greatest(v_bad_head, 0))::text;
    END IF;
    r_status := 'ok';
    RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION stockade_ledger_commit_batch(
    p_tenant text, p_rids text[], p_actuals bigint[], p_tools text[], p_nows double precision[])
RETURNS TABLE (r_item integer, r_status text, r_id bigint, r_scope text, r_scope_id text, r_period_key text,
               r_amount bigint, r_run text, r_tool text, r_ts double precision, r_detail jsonb)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n integer := coalesce(cardinality(p_rids), 0);
    v_state text[];     -- per item: its reservation's state (NULL: missing), amount, run, charge
    v_amt bigint[];
    v_run text[];
    v_charge bigint[];
    v_titem integer[];  -- the tiers of the held items: item, account (item order, then id)
    v_tacc bigint[];
    v_ids bigint[];     -- the distinct accounts (the arrays below are aligned with it), and per account:
    v_spent bigint[];   --   spent (locked, latest), running
    v_rel bigint[];     --   released, running
    v_held bigint[];    --   held (as of this statement)
    v_warned boolean[];
    v_cap bigint[];
    v_sc text[];
    v_sid text[];
    v_pk text[];
    v_prim boolean[];   --   the row its tier's entry is written on (see the header)
    v_addspent bigint[];
    v_addrel bigint[];
    v_setwarn boolean[];
    e_acc bigint[] := '{}';  -- the entries to write
    e_sc text[] := '{}';
    e_sid text[] := '{}';
    e_pk text[] := '{}';
    e_amt bigint[] := '{}';
    e_rid text[] := '{}';
    e_run text[] := '{}';
    e_tool text[] := '{}';
    e_ts double precision[] := '{}';
    e_detail jsonb[] := '{}';
    v_warn boolean;
    v_reserved bigint;
    v_distinct bigint;
    m integer := 0;
    i integer;
    j integer;
    jj integer;
    p integer;
    q integer;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 OR coalesce(cardinality(p_actuals), 0) <> n OR coalesce(cardinality(p_tools), 0) <> n
       OR coalesce(cardinality(p_nows), 0) <> n THEN
        RAISE EXCEPTION 'malformed settlement batch' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    -- The reservation rows first, ascending. A row locked after a wait is read as its latest
    -- version, so a concurrent settlement of the same id is seen as 'committed'.
    WITH r AS MATERIALIZED (
        SELECT r.id, r.state, r.amount_micro, r.run_id, r.account_ids
          FROM budget_reservations r
         WHERE r.tenant_id = p_tenant AND r.id = ANY (p_rids)
         ORDER BY r.id
           FOR UPDATE
    ), it AS MATERIALIZED (
        SELECT u.item::integer AS item, r.state, r.amount_micro, r.run_id, r.account_ids
          FROM unnest(p_rids) WITH ORDINALITY AS u(rid, item) LEFT JOIN r ON r.id = u.rid
    )
    SELECT (SELECT array_agg(it.state ORDER BY it.item) FROM it), (SELECT array_agg(it.amount_micro ORDER BY it.item) FROM it),
           (SELECT array_agg(it.run_id ORDER BY it.item) FROM it), array_agg(t.item), array_agg(t.acc),
           CASE WHEN n > 1 THEN (SELECT count(DISTINCT x) FROM unnest(p_rids) AS x) ELSE 1 END
      INTO v_state, v_amt, v_run, v_titem, v_tacc, v_distinct
      FROM (SELECT it.item, a.acc FROM it CROSS JOIN LATERAL unnest(it.account_ids) AS a(acc)
             WHERE it.state = 'held' ORDER BY it.item, a.acc) t;
    IF v_distinct <> n THEN
        RAISE EXCEPTION 'a reservation id twice in one batch' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_charge := array_fill(NULL::bigint, ARRAY[n]);
    FOR i IN 1..n LOOP
        v_charge[i] := least(p_actuals[i], v_amt[i]);
    END LOOP;
    IF v_titem IS NOT NULL THEN
        -- The settlement rows (not the hold rows reserves queue on), ascending, read as locked;
        -- the hold rows unlocked: reserved/remaining in the details are as of this statement.
        SELECT array_agg(l.id), array_agg(l.spent_micro), array_agg(l.released_micro), array_agg(l.held_micro),
               array_agg(l.warned), array_agg(l.cap), array_agg(l.scope), array_agg(l.scope_id), array_agg(l.period_key),
               array_agg(l.prim)
          INTO v_ids, v_spent, v_rel, v_held, v_warned, v_cap, v_sc, v_sid, v_pk, v_prim
          FROM (SELECT st.account_id AS id, st.spent_micro, st.released_micro, st.warned, h.held_micro,
                       CASE WHEN (c.period = 'lifetime') = (h.period_key = 'lifetime') THEN c.cap_micro END AS cap,
                       h.scope, h.scope_id, h.period_key,
                       (coalesce(c.period, 'month') = 'lifetime') = (h.period_key = 'lifetime') AS prim
                  FROM budget_account_settlements st
                  JOIN budget_account_holds h ON h.id = st.account_id
                  LEFT JOIN budget_caps c ON c.tenant_id = h.tenant_id AND c.scope = h.scope AND c.scope_id = h.scope_id
                 WHERE st.account_id = ANY (v_tacc)
                 ORDER BY st.account_id
                   FOR UPDATE OF st) l;
        v_addspent := array_fill(0::bigint, ARRAY[cardinality(v_ids)]);
        v_addrel := array_fill(0::bigint, ARRAY[cardinality(v_ids)]);
        v_setwarn := array_fill(false, ARRAY[cardinality(v_ids)]);
        FOR j IN 1..cardinality(v_tacc) LOOP
            i := v_titem[j];
            p := array_position(v_ids, v_tacc[j]);
            IF j = 1 OR v_titem[j - 1] <> i THEN
                -- Item i's first tier: its charge is at most cap - spent (running) on each of its capped
                -- tiers (a cap lowered while it was held; see 0035). The rest is unbilled.
                jj := j;
                WHILE jj <= cardinality(v_tacc) AND v_titem[jj] = i LOOP
                    q := array_position(v_ids, v_tacc[jj]);
                    IF v_cap[q] IS NOT NULL THEN
                        v_charge[i] := least(v_charge[i], greatest(v_cap[q] - v_spent[q], 0));
                    END IF;
                    jj := jj + 1;
                END LOOP;
            END IF;
            v_spent[p] := v_spent[p] + v_charge[i];
            v_rel[p] := v_rel[p] + v_amt[i];
            v_addspent[p] := v_addspent[p] + v_charge[i];
            v_addrel[p] := v_addrel[p] + v_amt[i];
            v_warn := coalesce(v_charge[i] > 0 AND v_cap[p] > 0 AND NOT v_warned[p] AND v_spent[p] * 5 >= v_cap[p] * 4,
                               false);
            IF v_warn THEN
                v_warned[p] := true;
                v_setwarn[p] := true;
            END IF;
            CONTINUE WHEN v_charge[i] = 0 OR NOT v_prim[p];  -- one entry per tier, on its cap's row
            v_reserved := greatest(v_held[p] - v_rel[p], 0);
            m := m + 1;  -- (subscript assignment extends an array in place; || would copy it)
            e_acc[m] := v_tacc[j];
            e_sc[m] := v_sc[p];
            e_sid[m] := v_sid[p];
            e_pk[m] := v_pk[p];
            e_amt[m] := v_charge[i];
            e_rid[m] := p_rids[i];
            e_run[m] := v_run[i];
            e_tool[m] := p_tools[i];
            e_ts[m] := p_nows[i];
            e_detail[m] := jsonb_strip_nulls(jsonb_build_object(
                'reserved_micro', v_amt[i],
                'actual_micro', p_actuals[i],
                'overage_micro', CASE WHEN p_actuals[i] > v_amt[i] THEN p_actuals[i] - v_amt[i] END,
                'unbilled_micro', CASE WHEN least(p_actuals[i], v_amt[i]) > v_charge[i]
                                       THEN least(p_actuals[i], v_amt[i]) - v_charge[i] END,
                'cap_micro', v_cap[p],
                'spent_micro', v_spent[p],
                'remaining_micro', v_cap[p] - v_spent[p] - v_reserved,
                'warning_pct', CASE WHEN v_warn THEN 80 END));
        END LOOP;
    END IF;
    -- One statement writes it all (every row it changes is locked already): the held
    -- reservations marked committed, the settlement rows, the entries; and returns the rows.
    RETURN QUERY
    WITH ur AS (
        UPDATE budget_reservations r SET state = 'committed', settled_at = u.now, charged_micro = u.charge
          FROM unnest(p_rids, v_charge, p_nows, v_state) AS u(rid, charge, now, state)
         WHERE r.tenant_id = p_tenant AND r.id = u.rid AND u.state = 'held'
    ), us AS (
        UPDATE budget_account_settlements st
           SET spent_micro = st.spent_micro + u.spent, released_micro = st.released_micro + u.rel,
               warned = st.warned OR u.warn
          FROM unnest(v_ids, v_addspent, v_addrel, v_setwarn) AS u(id, spent, rel, warn)
         WHERE st.account_id = u.id
    ), e AS (
        INSERT INTO ledger_entries (tenant_id, account_id, scope, scope_id, period_key, amount_micro,
                                    reservation_id, run_id, tool, ts, detail)
        SELECT p_tenant, u.acc, u.scope, u.scope_id, u.period_key, u.amount, u.rid, u.run, u.tool, u.ts, u.detail
          FROM unnest(e_acc, e_sc, e_sid, e_pk, e_amt, e_rid, e_run, e_tool, e_ts, e_detail)
               WITH ORDINALITY AS u(acc, scope, scope_id, period_key, amount, rid, run, tool, ts, detail, ord)
         ORDER BY u.ord
        RETURNING id, reservation_id, scope, scope_id, period_key, amount_micro, run_id, tool, ts, detail
    )
    SELECT u.item::integer, CASE u.state WHEN 'held' THEN 'settled' WHEN 'committed' THEN 'committed'
                                         WHEN 'released' THEN 'late' ELSE 'missing' END,
           NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::text,
           NULL::double precision, NULL::jsonb
      FROM unnest(v_state) WITH ORDINALITY AS u(state, item)
    UNION ALL
    SELECT array_position(p_rids, e.reservation_id), 'entry'::text, e.id, e.scope, e.scope_id, e.period_key,
           e.amount_micro, e.run_id, e.tool, e.ts, e.detail
      FROM e
    UNION ALL
    SELECT array_position(p_rids, x.reservation_id), 'entry'::text, x.id, x.scope, x.scope_id, x.period_key,
           x.amount_micro, x.run_id, x.tool, x.ts, x.detail
      FROM ledger_entries x
     WHERE x.tenant_id = p_tenant AND x.reservation_id = ANY (p_rids) AND 'committed' = ANY (v_state)
       AND v_state[array_position(p_rids, x.reservation_id)] = 'committed'
     ORDER BY 1, 3 NULLS FIRST;
END
$$;

CREATE OR REPLACE FUNCTION stockade_ledger_commit(
    p_tenant text, p_rid text, p_actual bigint, p_tool text, p_now double precision)
RETURNS TABLE (r_status text, r_id bigint, r_scope text, r_scope_id text, r_period_key text, r_amount bigint,
               r_run text, r_tool text, r_ts double precision, r_detail jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_res budget_reservations;
    v_amount bigint;
    v_accs bigint[];
    v_run text;
    v_late boolean := false;
    v_due bigint;
    v_charge bigint;
    v_head bigint;
    v_release bigint;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    -- (r.state is 'held': said so the planner cannot prefer a partial index on held rows to the key)
    UPDATE budget_reservations r SET state = 'committed', settled_at = p_now, charged_micro = least(p_actual, r.amount_micro)
     WHERE r.tenant_id = p_tenant AND r.id = p_rid AND r.state <> 'committed' AND r.state <> 'released'
    RETURNING r.amount_micro, r.account_ids, r.run_id INTO v_amount, v_accs, v_run;
    IF FOUND THEN
        v_due := least(p_actual, v_amount);
        v_charge := v_due;
        v_release := v_amount;
    ELSE
        SELECT * INTO v_res FROM budget_reservations r WHERE r.tenant_id = p_tenant AND r.id = p_rid FOR UPDATE;
        IF NOT FOUND THEN
            r_status := 'missing';
            RETURN NEXT;
            RETURN;
        END IF;
        IF v_res.state = 'committed' THEN
            RETURN QUERY SELECT 'committed'::text, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                                NULL::text, NULL::text, NULL::double precision, NULL::jsonb
                         UNION ALL
                         (SELECT 'entry'::text, e.id, e.scope, e.scope_id, e.period_key, e.amount_micro, e.run_id,
                                 e.tool, e.ts, e.detail
                            FROM ledger_entries e
                           WHERE e.tenant_id = p_tenant AND e.reservation_id = p_rid ORDER BY e.id);
            RETURN;
        END IF;
        -- Released (expired and swept, or its run ended): charged late. This RAISES usage, so
        -- it queues with reserves: the hold locks first, then (next statement, fresh snapshot)
        -- the headroom under every cap; it charges at most what still fits.
        v_late := true;
        v_amount := v_res.amount_micro;
        v_accs := v_res.account_ids;
        v_run := v_res.run_id;
        v_due := least(p_actual, v_amount);
        v_charge := v_due;
        v_release := 0;
        PERFORM 1 FROM budget_account_holds h WHERE h.id = ANY (v_accs) ORDER BY h.id FOR UPDATE;
        SELECT min(c.cap_micro - a.spent_micro - a.reserved_micro) INTO v_head
          FROM budget_accounts a
          JOIN budget_caps c ON c.tenant_id = a.tenant_id AND c.scope = a.scope AND c.scope_id = a.scope_id
                            AND (c.period = 'lifetime') = (a.period_key = 'lifetime')
         WHERE a.id = ANY (v_accs);
        IF v_head IS NOT NULL THEN
            v_charge := least(v_charge, greatest(v_head, 0));
        END IF;
        UPDATE budget_reservations r SET state = 'committed', settled_at = p_now, charged_micro = v_charge
         WHERE r.tenant_id = p_tenant AND r.id = p_rid;
    END IF;
    -- As 0010: lock the settlement rows in id order, update them from the locked values,
    -- one entry per tier (none when the charge is 0).
    RETURN QUERY
    WITH k AS MATERIALIZED (
        SELECT st.account_id AS id, h.scope, h.scope_id, h.period_key, st.spent_micro AS spent0, st.warned,
               h.held_micro - st.released_micro AS reserved0,
               CASE WHEN (c.period = 'lifetime') = (h.period_key = 'lifetime') THEN c.cap_micro END AS cap,
               (coalesce(c.period, 'month') = 'lifetime') = (h.period_key = 'lifetime') AS prim
          FROM budget_account_settlements st
          JOIN budget_account_holds h ON h.id = st.account_id
          LEFT JOIN budget_caps c ON c.tenant_id = h.tenant_id AND c.scope = h.scope AND c.scope_id = h.scope_id
         WHERE st.account_id = ANY (v_accs)
         ORDER BY st.account_id
           FOR UPDATE OF st
    ), ch AS MATERIALIZED (
        -- At most cap - spent on every capped tier, from the locked rows (a cap lowered while the call was
        -- held; see 0035). A late charge is within it already.
        SELECT least(v_charge, greatest(coalesce(min(k.cap - k.spent0), v_charge), 0)) AS charge FROM k
    ), l AS MATERIALIZED (
        SELECT k.id, k.scope, k.scope_id, k.period_key, k.spent0 + ch.charge AS spent,
               greatest(k.reserved0 - v_release, 0) AS reserved, k.cap, ch.charge, k.prim,
               coalesce(ch.charge > 0 AND k.cap > 0 AND NOT k.warned AND (k.spent0 + ch.charge) * 5 >= k.cap * 4,
                        false) AS warn
          FROM k CROSS JOIN ch
    ), u AS (
        UPDATE budget_account_settlements st
           SET spent_micro = l.spent, released_micro = st.released_micro + v_release, warned = st.warned OR l.warn
          FROM l WHERE st.account_id = l.id
    ), r AS (  -- only when clamped: the row was marked with the unclamped charge above
        UPDATE budget_reservations r SET charged_micro = ch.charge
          FROM ch WHERE r.tenant_id = p_tenant AND r.id = p_rid AND ch.charge <> v_charge
    ), e AS (
        INSERT INTO ledger_entries (tenant_id, account_id, scope, scope_id, period_key, amount_micro,
                                    reservation_id, run_id, tool, ts, detail)
        SELECT p_tenant, l.id, l.scope, l.scope_id, l.period_key, l.charge, p_rid, v_run, p_tool, p_now,
               jsonb_strip_nulls(jsonb_build_object(
                   'reserved_micro', v_amount,
                   'actual_micro', p_actual,
                   'overage_micro', CASE WHEN p_actual > v_amount THEN p_actual - v_amount END,
                   'late', CASE WHEN v_late THEN true END,
                   'unbilled_micro', CASE WHEN v_due > l.charge THEN v_due - l.charge END,
                   'cap_micro', l.cap,
                   'spent_micro', l.spent,
                   'remaining_micro', l.cap - l.spent - l.reserved,
                   'warning_pct', CASE WHEN l.warn THEN 80 END))
          FROM l WHERE l.charge > 0 AND l.prim  -- one entry per tier, on its cap's row
         ORDER BY l.id
        RETURNING id, scope, scope_id, period_key, amount_micro, detail
    )
    SELECT 'entry'::text, e.id, e.scope, e.scope_id, e.period_key, e.amount_micro, v_run, p_tool, p_now, e.detail
      FROM e ORDER BY e.id;
END
$$;

-- Backfill, as stockade_system (BYPASSRLS: the ledger tables force row-level security, and the
-- migrating role may be no superuser). Old data has exactly one row per tier and reservation.
SELECT set_config('role', 'stockade_system', true);

-- The month a reservation was made in, and the other row of each tier it holds.
CREATE TEMPORARY TABLE stockade_0043_pairs ON COMMIT DROP AS
SELECT r.tenant_id, r.id AS rid, r.state, r.amount_micro, h.id AS acc, h.scope, h.scope_id,
       CASE WHEN h.period_key = 'lifetime' THEN to_char(to_timestamp(r.created_at) AT TIME ZONE 'UTC', 'YYYY-MM')
            ELSE 'lifetime' END AS other_key
  FROM budget_reservations r
 CROSS JOIN LATERAL unnest(r.account_ids) AS u(acc)
  JOIN budget_account_holds h ON h.id = u.acc
 WHERE r.state IN ('held', 'released');

-- Spend of lifetime rows per month of their reservations (an entry without one: its own time).
CREATE TEMPORARY TABLE stockade_0043_lifetime_months ON COMMIT DROP AS
SELECT h.tenant_id, h.scope, h.scope_id,
       to_char(to_timestamp(coalesce(r.created_at, e.ts)) AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
       sum(e.amount_micro)::bigint AS spent
  FROM ledger_entries e
  JOIN budget_account_holds h ON h.id = e.account_id AND h.period_key = 'lifetime'
  LEFT JOIN budget_reservations r ON r.tenant_id = e.tenant_id AND r.id = e.reservation_id
 GROUP BY 1, 2, 3, 4;

-- The rows that are missing: a lifetime row for every tier, the month rows the lifetime spend and
-- the reservations above need. Created in key order, each with its settlement row.
WITH created AS (
    INSERT INTO budget_account_holds (tenant_id, scope, scope_id, period_key)
    SELECT DISTINCT x.tenant_id, x.scope, x.scope_id, x.period_key
      FROM (SELECT tenant_id, scope, scope_id, 'lifetime' AS period_key FROM budget_account_holds
            UNION SELECT tenant_id, scope, scope_id, month FROM stockade_0043_lifetime_months
            UNION SELECT tenant_id, scope, scope_id, other_key FROM stockade_0043_pairs) x
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, scope, scope_id, period_key) DO NOTHING
    RETURNING id, tenant_id
)
INSERT INTO budget_account_settlements (account_id, tenant_id) SELECT id, tenant_id FROM created ORDER BY id;

-- Spend: lifetime rows get every month row's (read before the next statement changes them) ...
UPDATE budget_account_settlements st SET spent_micro = st.spent_micro + m.spent
  FROM budget_account_holds h
  JOIN (SELECT mh.tenant_id, mh.scope, mh.scope_id, sum(ms.spent_micro)::bigint AS spent
          FROM budget_account_holds mh JOIN budget_account_settlements ms ON ms.account_id = mh.id
         WHERE mh.period_key <> 'lifetime' GROUP BY 1, 2, 3) m
    ON m.tenant_id = h.tenant_id AND m.scope = h.scope AND m.scope_id = h.scope_id
 WHERE st.account_id = h.id AND h.period_key = 'lifetime' AND m.spent > 0;

-- ... and month rows the lifetime rows' spend of their month.
UPDATE budget_account_settlements st SET spent_micro = st.spent_micro + m.spent
  FROM budget_account_holds h
  JOIN stockade_0043_lifetime_months m
    ON m.tenant_id = h.tenant_id AND m.scope = h.scope AND m.scope_id = h.scope_id AND m.month = h.period_key
 WHERE st.account_id = h.id;

-- Held amounts on the other rows, and every unsettled reservation holds both rows of each tier.
UPDATE budget_account_holds h SET held_micro = h.held_micro + x.total
  FROM (SELECT o.id, sum(p.amount_micro)::bigint AS total
          FROM stockade_0043_pairs p
          JOIN budget_account_holds o ON o.tenant_id = p.tenant_id AND o.scope = p.scope AND o.scope_id = p.scope_id
                                     AND o.period_key = p.other_key
         WHERE p.state = 'held' GROUP BY o.id) x
 WHERE h.id = x.id;

UPDATE budget_reservations r SET account_ids = x.ids
  FROM (SELECT p.tenant_id, p.rid, array_agg(DISTINCT a.id ORDER BY a.id) AS ids
          FROM stockade_0043_pairs p
          JOIN budget_account_holds o ON o.tenant_id = p.tenant_id AND o.scope = p.scope AND o.scope_id = p.scope_id
                                     AND o.period_key = p.other_key
         CROSS JOIN LATERAL (VALUES (p.acc), (o.id)) AS a(id)
         GROUP BY 1, 2) x
 WHERE r.tenant_id = x.tenant_id AND r.id = x.rid;

RESET ROLE;
