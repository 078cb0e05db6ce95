-- Audit append in ONE round trip. The application seals a record against the chain
-- head it expects (the one it last wrote or read; the MAC key never enters the
-- database) and this function advances the head only if it still is that head:
-- "UPDATE ... WHERE seq = p_seq - 1 AND hash = p_prev" takes the head row's lock,
-- and a concurrent appender that expected the same head re-checks the condition
-- after the first commits (READ COMMITTED), matches nothing and gets the current
-- head back to seal against. Two records can never take the same place in a chain;
-- nothing links to a record that is not the head. Before: lock the head, seal in
-- the application, insert, commit - four round trips with the head locked.
-- Called outside a transaction (its own); scoped to the tenant like the ledger's
-- functions, so row-level security applies as in db.tenant_tx().
CREATE FUNCTION stockade_audit_append(
    p_tenant text, p_seq bigint, p_ts double precision, p_kind text, p_run text, p_tool text, p_args_hash text,
    p_rule text, p_policy text, p_code text, p_cost bigint, p_detail jsonb, p_prev text, p_hash text, p_mac text)
RETURNS TABLE (r_ok boolean, r_seq bigint, r_hash text)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true);
    UPDATE audit_heads SET seq = p_seq, hash = p_hash
     WHERE tenant_id = p_tenant AND seq = p_seq - 1 AND hash = p_prev;
    IF NOT FOUND THEN
        -- The tenant's first record: its head row does not exist yet (a concurrent first
        -- appender makes this insert wait, then do nothing).
        IF p_seq = 1 AND p_prev = repeat('0', 64) THEN
            INSERT INTO audit_heads (tenant_id, seq, hash) VALUES (p_tenant, 1, p_hash)
            ON CONFLICT (tenant_id) DO NOTHING;
        END IF;
        IF NOT FOUND THEN  -- the head moved on: hand back the one to seal against
            RETURN QUERY SELECT false, h.seq, h.hash FROM audit_heads h WHERE h.tenant_id = p_tenant;
            RETURN;
        END IF;
    END IF;
    INSERT INTO audit_log (tenant_id, seq, ts, kind, run_id, tool, args_hash, rule_id, policy_version, code,
                           cost_micro, detail, prev_hash, hash, mac)
    VALUES (p_tenant, p_seq, p_ts, p_kind, p_run, p_tool, p_args_hash, p_rule, p_policy, p_code,
            p_cost, p_detail, p_prev, p_hash, p_mac);
    RETURN QUERY SELECT true, p_seq, p_hash;
END
$$;

-- A run's next event in one round trip (was: BEGIN + scope, the statement, COMMIT).
-- r_state: 'ok' with the event's seq | 'ended' (the run is over) | 'missing'.
-- Events are not money or audit: the commit does not wait for the WAL flush
-- (their live copy is on the bus; see PgDB.tenant_tx(durable=False)).
CREATE FUNCTION stockade_event_append(
    p_tenant text, p_run text, p_type text, p_data jsonb, p_ts double precision)
RETURNS TABLE (r_state text, r_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'tenant id required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('role', 'stockade_app', true), set_config('stockade.tenant_id', p_tenant, true),
            set_config('synchronous_commit', 'off', true);
    WITH r AS (
        UPDATE runs SET last_seq = last_seq + 1
         WHERE tenant_id = p_tenant AND id = p_run AND status NOT IN ('canceled', 'failed', 'succeeded', 'timed_out')
        RETURNING tenant_id, id, last_seq
    )
    INSERT INTO run_events (tenant_id, run_id, seq, type, data, ts)
    SELECT r.tenant_id, r.id, r.last_seq, p_type, p_data, p_ts FROM r
    RETURNING seq INTO v_seq;
    IF v_seq IS NOT NULL THEN
        RETURN QUERY SELECT 'ok'::text, v_seq;
    ELSIF EXISTS (SELECT 1 FROM runs WHERE tenant_id = p_tenant AND id = p_run) THEN
        RETURN QUERY SELECT 'ended'::text, NULL::bigint;
    ELSE
        RETURN QUERY SELECT 'missing'::text, NULL::bigint;
    END IF;
END
$$;
