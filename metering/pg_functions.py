"""PostgreSQL functions for the two writes on every metered call: admission and settlement.

Installed (CREATE OR REPLACE) after every `migrate`, so the SQL always matches this code.

Each is one round trip in autocommit (a single `SELECT fn(...)` is its own transaction), instead of
a BEGIN, half a dozen statements and a COMMIT. The semantics are those of DESIGN.md §3 and of the
Python path SQLite still uses (metering/services.py):

- meters are locked in meter-id order (no deadlocks between requests sharing meters); the check
  and the update run as later statements, so they see the latest committed counters;
- HARD refuses without writing anything when any hold would cross its limit; SHADOW and SOFT take
  every hold and report the ones HARD would have refused;
- settlement claims the reservation with a conditional UPDATE (idempotent), moves holds to used,
  writes the ledger row and its daily rollup, and creates threshold alerts once per meter, kind and
  period (the unique constraint decides).
"""

from __future__ import annotations

from typing import Any

ADMIT = r"""
-- Every statement here is a keyed lookup (ids, unique keys). Plans are cached per connection, chosen
-- on the statistics of the moment: on a young or freshly vacuumed database they say "a few rows",
-- and the cached plans would keep scanning the tables as they grow. No scans, whatever they say.
-- And one plan per statement, kept: PL/pgSQL's plan cache otherwise keeps re-planning statements
-- with parameters whenever it judges the generic plan no cheaper than a custom one (and for these
-- it always does), which cost 0.3-0.5 ms of admission and 0.2-0.3 ms of settlement here.
CREATE OR REPLACE FUNCTION gateway_admit(p jsonb) RETURNS jsonb LANGUAGE plpgsql
SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    p_reservation uuid := (p->>'reservation')::uuid;
    p_request_id text := p->>'request_id';
    p_tenant bigint := (p->>'tenant')::bigint;
    p_user bigint := (p->>'user')::bigint;
    p_task bigint := (p->>'task')::bigint;
    p_api_key bigint := (p->>'api_key')::bigint;  -- the API key the call was made with (NULL: a JWT)
    p_mode text := p->>'mode';
    p_now timestamptz := (p->>'now')::timestamptz;
    p_expires timestamptz := (p->>'expires')::timestamptz;
    p_idempotency_key text := p->>'idempotency_key';
    p_fingerprint text := p->>'fingerprint';
    p_alert_day timestamptz := (p->>'alert_day')::timestamptz;
    p_ensure_meters boolean := (p->>'ensure_meters')::boolean;
    h_user bigint[];
    h_apikey bigint[];  -- the API key of a key's own budget hold (NULL for every other hold)
    h_task bigint[];
    h_metric text[];
    h_window text[];
    h_period timestamptz[];
    h_amount bigint[];
    h_limit bigint[];
    h_key text[];
    v_ids bigint[];
    v_failed int[];
    v_failed_usage jsonb;
    v_failed_meters bigint[];
    v_alerts bigint[];
    v_adopt uuid[];
    v_adopt_hold bigint[];
    v_adopt_active boolean[];
BEGIN
    -- Holds are leases, not the ledger: this commit need not wait for the WAL flush (the meter
    -- locks are released sooner, which is what bounds throughput on a busy tenant). A database
    -- crash can lose at most the last moments of admissions, all their rows together; the
    -- settlement of such a call finds its reservation missing and the gateway spools the usage,
    -- which is replayed into the ledger exactly once. Settlement itself commits durably, and its
    -- WAL flush covers every earlier admission.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- The holds travel as eight array literals in the JSON (one per column, in hold order): one
    -- parameter is far cheaper to send than eight typed arrays, and array_in cheaper than
    -- unpacking JSON elements.
    h_user := (p->>'h_user')::bigint[];
    h_apikey := (p->>'h_apikey')::bigint[];
    h_task := (p->>'h_task')::bigint[];
    h_metric := (p->>'h_metric')::text[];
    h_window := (p->>'h_window')::text[];
    h_period := (p->>'h_period')::timestamptz[];
    h_amount := (p->>'h_amount')::bigint[];
    h_limit := (p->>'h_limit')::bigint[];
    h_key := (p->>'h_key')::text[];
    IF p_ensure_meters THEN
        -- Only when an earlier call found a meter missing (a new period, a first call, a new rule):
        -- creating rows before any meter lock is taken keeps the lock order below strictly by id.
        -- A new meter starts from the daily rollup of its subject and period and adopts the calls
        -- that can still settle (metering/meter_start.py: the same as the Python path, and why each
        -- call then counts exactly once). Their reservations are locked first, in id order: a
        -- settlement that claimed one has committed, and the next statement's rollup read sees it;
        -- one that comes later waits, and settles through the adopted hold.
        SELECT array_agg(c.id ORDER BY c.id, c.i), array_agg(c.i ORDER BY c.id, c.i),
               array_agg(c.active ORDER BY c.id, c.i)
        INTO v_adopt, v_adopt_hold, v_adopt_active
        FROM (
            SELECT r.id, h.i, r.status = 'ACTIVE' AS active
            FROM unnest(h_user, h_task, h_apikey, h_metric, h_window, h_period) WITH ORDINALITY AS h(u, t, k, m, w, p, i)
            JOIN metering_usagereservation r
              ON r.tenant_id = p_tenant AND r.status IN ('ACTIVE', 'EXPIRED', 'RELEASED')
             AND r.expires_at >= h.p AND r.created_at >= h.p AND r.created_at < __PERIOD_END__
             AND (h.u IS NULL OR r.user_id = h.u) AND (h.t IS NULL OR r.task_id = h.t)
             AND (h.k IS NULL OR r.api_key_id = h.k)
             AND (r.status = 'ACTIVE' OR h.m <> 'CONCURRENT')
            WHERE NOT EXISTS (
                SELECT 1 FROM metering_usagemeter mm
                WHERE mm.tenant_id = p_tenant AND COALESCE(mm.user_id, 0) = COALESCE(h.u, 0)
          AND COALESCE(mm.api_key_id, 0) = COALESCE(h.k, 0)
                  AND COALESCE(mm.task_id, 0) = COALESCE(h.t, 0) AND mm.metric = h.m AND mm."window" = h.w
                  AND mm.period_start = h.p)
            ORDER BY r.id
            FOR SHARE OF r
        ) c;

        -- An in-flight call holds what it already holds of that metric (its worst case), one slot of
        -- a concurrency meter; a released one nothing. One insert order for every creator.
        WITH wanted AS (
            SELECT h.*, __PERIOD_END__ AS e
            FROM unnest(h_user, h_task, h_apikey, h_metric, h_window, h_period) WITH ORDINALITY AS h(u, t, k, m, w, p, i)
            WHERE NOT EXISTS (
                SELECT 1 FROM metering_usagemeter mm
                WHERE mm.tenant_id = p_tenant AND COALESCE(mm.user_id, 0) = COALESCE(h.u, 0)
          AND COALESCE(mm.api_key_id, 0) = COALESCE(h.k, 0)
                  AND COALESCE(mm.task_id, 0) = COALESCE(h.t, 0) AND mm.metric = h.m AND mm."window" = h.w
                  AND mm.period_start = h.p)
        ), adopted AS (
            SELECT a.i, a.id,
                   CASE WHEN NOT a.active THEN 0 WHEN h_metric[a.i] = 'CONCURRENT' THEN 1
                        ELSE COALESCE((SELECT max(x.amount) FROM metering_usagehold x
                                       JOIN metering_usagemeter xm ON xm.id = x.meter_id
                                       WHERE x.reservation_id = a.id AND xm.metric = h_metric[a.i]), 0) END AS amount
            FROM unnest(v_adopt, v_adopt_hold, v_adopt_active) AS a(id, i, active)
        ), created AS (
            INSERT INTO metering_usagemeter AS mm (tenant_id, user_id, task_id, api_key_id, metric, "window", period_start, used,
                                                   baseline, reserved, updated_at)
            SELECT p_tenant, h.u, h.t, h.k, h.m, h.w, h.p, b.amount + kb.amount, b.amount + kb.amount,
                   (SELECT COALESCE(sum(a.amount), 0) FROM adopted a WHERE a.i = h.i), p_now
            FROM wanted h CROSS JOIN LATERAL (
                -- The rollup covers days: a minute (rate) or a gauge (concurrency) starts from 0.
                SELECT COALESCE(sum(__ROLLUP__), 0) AS amount FROM metering_usagedaily d
                WHERE h.w IN ('DAY', 'MONTH') AND h.k IS NULL AND d.tenant_id = p_tenant
                  AND (h.u IS NULL OR d.user_id = h.u) AND (h.t IS NULL OR d.task_id = h.t)
                  AND d.day >= (h.p AT TIME ZONE 'UTC')::date AND d.day < (h.e AT TIME ZONE 'UTC')::date
            ) b CROSS JOIN LATERAL (
                -- An API key's meter: the rollup has no key dimension; the key's ledger rows of the
                -- period are an indexed range (usagelog_key_time), read once per new meter.
                SELECT COALESCE(sum(__KEY_ACTUAL__), 0) AS amount FROM metering_usagelog l
                WHERE h.k IS NOT NULL AND h.w IN ('DAY', 'MONTH') AND l.api_key_id = h.k AND l.tenant_id = p_tenant
                  AND l.status <> 'REFUSED' AND (h.t IS NULL OR l.task_id = h.t)
                  AND l.admitted_at >= h.p AND l.admitted_at < h.e
            ) kb
            ORDER BY h.m, h.w, COALESCE(h.u, 0), COALESCE(h.t, 0), COALESCE(h.k, 0)
            ON CONFLICT (tenant_id, COALESCE(user_id, 0::bigint), COALESCE(task_id, 0::bigint),
                         COALESCE(api_key_id, 0::bigint), metric, "window", period_start) DO NOTHING  -- another admission created it, and adopted these calls
            RETURNING mm.id, mm.user_id, mm.task_id, mm.api_key_id, mm.metric, mm."window"
        )
        INSERT INTO metering_usagehold (reservation_id, meter_id, amount, policy_key, limit_value)
        SELECT a.id, c.id, a.amount, h_key[h.i], h_limit[h.i]
        FROM created c
        JOIN wanted h ON h.m = c.metric AND h.w = c."window" AND COALESCE(h.u, 0) = COALESCE(c.user_id, 0)
                     AND COALESCE(h.t, 0) = COALESCE(c.task_id, 0) AND COALESCE(h.k, 0) = COALESCE(c.api_key_id, 0)
        JOIN adopted a ON a.i = h.i;
    END IF;

    -- Each hold's meter by its unique key: one probe of that index per hold, whatever the number
    -- of meters (periods) the tenant has collected.
    SELECT array_agg(f.id ORDER BY h.i) INTO v_ids
    FROM unnest(h_user, h_task, h_apikey, h_metric, h_window, h_period) WITH ORDINALITY AS h(u, t, k, m, w, p, i)
    CROSS JOIN LATERAL (
        SELECT mm.id FROM metering_usagemeter mm
        WHERE mm.tenant_id = p_tenant AND COALESCE(mm.user_id, 0) = COALESCE(h.u, 0)
          AND COALESCE(mm.api_key_id, 0) = COALESCE(h.k, 0)
          AND COALESCE(mm.task_id, 0) = COALESCE(h.t, 0) AND mm.metric = h.m AND mm."window" = h.w
          AND mm.period_start = h.p
        LIMIT 1  -- at most one row (the unique key); also keeps the planner from flattening the probe
    ) f;
    IF COALESCE(cardinality(v_ids), 0) < COALESCE(cardinality(h_metric), 0) THEN
        RETURN jsonb_build_object('status', 'missing_meters');  -- nothing written; the caller retries
    END IF;

    -- Lock in meter-id order. Statements below take a new snapshot: they see the committed
    -- counters of every transaction that held these locks before us.
    PERFORM 1 FROM metering_usagemeter WHERE id = ANY(v_ids) ORDER BY id FOR NO KEY UPDATE;

    SELECT COALESCE(array_agg(x.i ORDER BY x.i), '{}'),
           COALESCE(jsonb_agg(jsonb_build_array(m.used, m.reserved) ORDER BY x.i), '[]'),
           COALESCE(array_agg(x.id ORDER BY x.i), '{}')
    INTO v_failed, v_failed_usage, v_failed_meters
    FROM unnest(v_ids) WITH ORDINALITY AS x(id, i)
    JOIN metering_usagemeter m ON m.id = x.id
    WHERE m.used + m.reserved + h_amount[x.i] > h_limit[x.i];

    IF p_mode = 'HARD' AND cardinality(v_failed) > 0 THEN
        -- The meters stay (created above if new): the refusal's QUOTA_EXCEEDED alert points at them.
        RETURN jsonb_build_object('status', 'refused', 'failed', to_jsonb(v_failed), 'failed_usage', v_failed_usage,
                                  'failed_meters', to_jsonb(v_failed_meters));
    END IF;

    INSERT INTO metering_usagereservation (id, request_id, status, enforcement_mode, expires_at, created_at,
                                           idempotency_key, request_fingerprint, tenant_id, user_id, task_id,
                                           api_key_id)
    VALUES (p_reservation, p_request_id, 'ACTIVE', p_mode, p_expires, p_now, p_idempotency_key, p_fingerprint,
            p_tenant, p_user, p_task, p_api_key)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        IF p_idempotency_key IS NULL THEN
            RAISE unique_violation USING MESSAGE = 'duplicate reservation or request id ' || p_request_id;
        END IF;
        RETURN jsonb_build_object('status', 'in_flight');  -- another request holds this Idempotency-Key
    END IF;

    -- Set-based, one statement: take the holds, record the hold rows, and create the concurrency
    -- alerts (90 % of the slots in use) once per meter, kind and period.
    WITH taken AS (
        UPDATE metering_usagemeter m
        SET reserved = m.reserved + h_amount[x.i], updated_at = p_now
        FROM unnest(v_ids) WITH ORDINALITY AS x(id, i)
        WHERE m.id = x.id
        RETURNING m.id, m.reserved, x.i
    ), held AS (
        INSERT INTO metering_usagehold (reservation_id, meter_id, amount, policy_key, limit_value)
        SELECT p_reservation, t.id, h_amount[t.i], h_key[t.i], h_limit[t.i] FROM taken t
    ), alerts AS (
        INSERT INTO metering_quotaalert (tenant_id, meter_id, kind, period_start, policy_key, limit_value,
                                         observed_value, created_at)
        SELECT p_tenant, t.id, 'CONCURRENCY_LIMIT', p_alert_day, h_key[t.i], h_limit[t.i], t.reserved, p_now
        FROM taken t
        WHERE h_metric[t.i] = 'CONCURRENT' AND h_limit[t.i] > 0
          AND t.reserved * 100 >= h_limit[t.i] * __CONCURRENCY_PERCENT__
        ON CONFLICT DO NOTHING
        RETURNING id
    )
    SELECT COALESCE(array_agg(id), '{}') INTO v_alerts FROM alerts;

    RETURN jsonb_build_object('status', 'admitted', 'failed', to_jsonb(v_failed), 'failed_usage', v_failed_usage,
                              'failed_meters', to_jsonb(v_failed_meters), 'alerts', to_jsonb(v_alerts));
END
$fn$;
"""

SETTLE = r"""
-- The same planner settings as gateway_admit, for the same reasons.
CREATE OR REPLACE FUNCTION gateway_settle(p jsonb) RETURNS jsonb LANGUAGE plpgsql
SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    p_reservation uuid := (p->>'reservation')::uuid;
    p_now timestamptz := (p->>'now')::timestamptz;
    p_free_key boolean := (p->>'free_key')::boolean;
    p_response_status int := (p->>'response_status')::int;
    p_response_body jsonb := CASE WHEN jsonb_typeof(p->'response_body') = 'null' THEN NULL ELSE p->'response_body' END;
    p_status text := p->>'status';
    p_provider text := p->>'provider';
    p_model_name text := p->>'model_name';
    p_model_class text := p->>'model_class';
    p_tokens_in bigint := (p->>'tokens_in')::bigint;
    p_tokens_out bigint := (p->>'tokens_out')::bigint;
    p_tokens_cached_in bigint := COALESCE((p->>'tokens_cached_in')::bigint, 0);
    p_tokens_cache_write bigint := COALESCE((p->>'tokens_cache_write')::bigint, 0);
    p_api_calls bigint := (p->>'api_calls')::bigint;
    p_cost bigint := (p->>'cost')::bigint;
    p_search_fees bigint := COALESCE((p->>'search_fees')::bigint, 0);  -- of p_cost
    p_latency_ms int := (p->>'latency_ms')::int;
    p_error_code text := p->>'error_code';
    p_would_refuse text := p->>'would_refuse';
    p_reasons jsonb := COALESCE(p->'reasons', '[]'::jsonb);  -- every reason HARD would have refused for
    p_estimated boolean := (p->>'estimated')::boolean;
    p_attempts jsonb := p->'attempts';
    p_max_tokens_fitted int := (p->>'max_tokens_fitted')::int;
    p_quota_keys text[] := __QUOTA_KEYS__;  -- the registry's quota keys, written in at install
    res record;
    v_feature text;
    v_remaining bigint;
    v_log bigint;
    v_alerts bigint[];
    v_meters bigint[];
    v_amounts bigint[];
    v_keys text[];
    v_limits bigint[];
    v_late boolean := false;
BEGIN
    -- The claim: exactly one settlement of a reservation changes anything.
    UPDATE metering_usagereservation
    SET status = 'COMPLETED', settled_at = p_now, response_status = p_response_status,
        response_body = p_response_body,
        idempotency_key = CASE WHEN p_free_key THEN NULL ELSE idempotency_key END
    WHERE id = p_reservation AND status = 'ACTIVE'
    RETURNING request_id, tenant_id, user_id, task_id, enforcement_mode, created_at, api_key_id INTO res;
    IF NOT FOUND THEN
        -- The lease ran out (or an operator released it) while the call was still running: its holds
        -- were released, but what it used is charged all the same (flagged settled_late).
        UPDATE metering_usagereservation r
        SET status = 'COMPLETED', settled_at = p_now, response_status = p_response_status,
            response_body = p_response_body,
            idempotency_key = CASE WHEN p_free_key THEN NULL ELSE r.idempotency_key END
        WHERE r.id = p_reservation AND r.status IN ('EXPIRED', 'RELEASED')
          AND NOT EXISTS (SELECT 1 FROM metering_usagelog l WHERE l.reservation_id = p_reservation)
        RETURNING request_id, tenant_id, user_id, task_id, enforcement_mode, created_at, api_key_id INTO res;
        IF NOT FOUND THEN
            IF NOT EXISTS (SELECT 1 FROM metering_usagereservation WHERE id = p_reservation) THEN
                RETURN jsonb_build_object('status', 'lost');  -- its admission was lost in a database crash
            END IF;
            RETURN NULL;  -- settled already: idempotent
        END IF;
        v_late := true;
    END IF;

    SELECT f.code INTO v_feature FROM catalog_task t JOIN catalog_feature f ON f.id = t.feature_id
    WHERE t.id = res.task_id;

    -- The holds by their reservation (its unique index), then the meters by id: plans that stay
    -- right however many holds a meter has collected over time.
    SELECT array_agg(h.meter_id ORDER BY h.meter_id), array_agg(h.amount ORDER BY h.meter_id),
           array_agg(h.policy_key ORDER BY h.meter_id), array_agg(h.limit_value ORDER BY h.meter_id)
    INTO v_meters, v_amounts, v_keys, v_limits
    FROM metering_usagehold h WHERE h.reservation_id = p_reservation;

    PERFORM 1 FROM metering_usagemeter WHERE id = ANY(v_meters) ORDER BY id FOR NO KEY UPDATE;

    -- Set-based, one statement: move the holds to used, and create the threshold alerts a move
    -- crossed (80 % warns, 100 % exceeded; once per meter, kind and period: the unique constraint).
    WITH moved AS (
        UPDATE metering_usagemeter m
        SET reserved = m.reserved - CASE WHEN v_late THEN 0 ELSE x.amount END,
            used = m.used + __ACTUAL__,
            updated_at = p_now
        FROM unnest(v_meters, v_amounts, v_keys, v_limits) AS x(id, amount, policy_key, limit_value)
        WHERE m.id = x.id
        RETURNING m.id, m.metric, m.used, m.reserved, m.period_start, x.policy_key, x.limit_value,
                  __ACTUAL__ AS added
    ), quota AS (
        SELECT * FROM moved WHERE policy_key = ANY(p_quota_keys)
    ), alerts AS (
        INSERT INTO metering_quotaalert (tenant_id, meter_id, kind, period_start, policy_key, limit_value,
                                         observed_value, created_at)
        SELECT res.tenant_id, q.id, t.kind, q.period_start, q.policy_key, q.limit_value, q.used, p_now
        FROM quota q CROSS JOIN (VALUES __THRESHOLDS__) AS t(percent, kind)
        WHERE q.limit_value > 0 AND q.added > 0 AND q.used - q.added < q.limit_value * t.percent / 100
          AND q.limit_value * t.percent / 100 <= q.used
        ON CONFLICT DO NOTHING
        RETURNING id
    )
    SELECT (SELECT min(q.limit_value - q.used - q.reserved) FROM quota q WHERE q.metric = 'TOKENS'),
           (SELECT COALESCE(array_agg(a.id), '{}') FROM alerts a)
    INTO v_remaining, v_alerts;

    INSERT INTO metering_usagelog (request_id, reservation_id, tenant_id, user_id, task_id, feature_code, provider,
                                   model_name, model_class, tokens_in, tokens_out, tokens_cached_in,
                                   tokens_cache_write, api_calls, cost_micro_usd, search_fees_micro_usd,
                                   latency_ms, status, error_code, enforcement_mode, would_refuse_code,
                                   would_refuse, usage_estimated, attempts, settled_late, max_tokens_fitted, admitted_at,
                                   created_at, api_key_id)
    VALUES (res.request_id, p_reservation, res.tenant_id, res.user_id, res.task_id, v_feature, p_provider,
            p_model_name, p_model_class, p_tokens_in, p_tokens_out, p_tokens_cached_in, p_tokens_cache_write,
            p_api_calls, p_cost, p_search_fees, p_latency_ms, p_status,
            p_error_code, res.enforcement_mode, p_would_refuse, p_reasons, p_estimated, p_attempts, v_late, p_max_tokens_fitted,
            res.created_at, p_now, res.api_key_id)
    RETURNING id INTO v_log;

    INSERT INTO metering_usagedaily AS d (tenant_id, user_id, task_id, model_name, day, requests, refused,
                                          tokens_in, tokens_out, tokens_cached_in, tokens_cache_write, api_calls,
                                          cost_micro_usd, search_fees_micro_usd)
    VALUES (res.tenant_id, res.user_id, res.task_id, p_model_name, (res.created_at AT TIME ZONE 'UTC')::date, 1, 0,
            p_tokens_in, p_tokens_out, p_tokens_cached_in, p_tokens_cache_write, p_api_calls, p_cost, p_search_fees)
    ON CONFLICT (tenant_id, user_id, task_id, model_name, day) DO UPDATE
    SET requests = d.requests + 1, tokens_in = d.tokens_in + excluded.tokens_in,
        tokens_out = d.tokens_out + excluded.tokens_out,
        tokens_cached_in = d.tokens_cached_in + excluded.tokens_cached_in,
        tokens_cache_write = d.tokens_cache_write + excluded.tokens_cache_write,
        api_calls = d.api_calls + excluded.api_calls,
        cost_micro_usd = d.cost_micro_usd + excluded.cost_micro_usd,
        search_fees_micro_usd = d.search_fees_micro_usd + excluded.search_fees_micro_usd;

    IF jsonb_array_length(p_reasons) > 0 THEN
        -- The would-refuse rollup (metering/rules.py would_refuse_rollup_rows), each row once: the call's
        -- (code ''), one per code (key ''), one per reason (code, rule, key).
        INSERT INTO metering_wouldrefusedaily AS w (tenant_id, day, task_id, code, rule_id, policy_key, calls,
                                                    tokens_in, tokens_out, api_calls, cost_micro_usd)
        SELECT res.tenant_id, (res.created_at AT TIME ZONE 'UTC')::date, res.task_id, r.code, r.rule_id, r.policy_key,
               1, p_tokens_in, p_tokens_out, p_api_calls, p_cost
        FROM (SELECT '' AS code, 0::bigint AS rule_id, '' AS policy_key
              UNION
              SELECT e->>'code', 0, '' FROM jsonb_array_elements(p_reasons) AS e
              UNION
              SELECT e->>'code', COALESCE((e->>'rule')::bigint, 0), COALESCE(e->>'key', '')
              FROM jsonb_array_elements(p_reasons) AS e) r
        ON CONFLICT (tenant_id, day, task_id, code, rule_id, policy_key) DO UPDATE
        SET calls = w.calls + 1, tokens_in = w.tokens_in + excluded.tokens_in,
            tokens_out = w.tokens_out + excluded.tokens_out, api_calls = w.api_calls + excluded.api_calls,
            cost_micro_usd = w.cost_micro_usd + excluded.cost_micro_usd;
    END IF;

    RETURN jsonb_build_object(
        'log_id', v_log, 'api_key_id', res.api_key_id, 'request_id', res.request_id, 'tenant_id', res.tenant_id, 'user_id', res.user_id,
        'task_id', res.task_id, 'feature_code', v_feature, 'enforcement_mode', res.enforcement_mode,
        'admitted_at', res.created_at, 'alerts', to_jsonb(v_alerts), 'late', v_late,
        'remaining', CASE WHEN v_remaining IS NULL THEN NULL ELSE GREATEST(v_remaining, 0) END);
END
$fn$;
"""


# metering/periods.period_end of the hold `h` (window h.w, start h.p), in UTC.
_PERIOD_END = ("CASE WHEN h.w = 'NONE' THEN 'infinity'::timestamptz ELSE (h.p AT TIME ZONE 'UTC' + CASE h.w "
               "WHEN 'MINUTE' THEN interval '1 minute' WHEN 'DAY' THEN interval '1 day' ELSE interval '1 month' END) "
               "AT TIME ZONE 'UTC' END")


def install_pg_functions(*, using: str = "default", **_: Any) -> None:
    from django.db import connections

    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(functions_sql(), None)


def functions_sql() -> str:
    """The functions' SQL with the shared rules (metering/rules.py) and the key registry written in."""
    from metering.policy_keys import POLICY_KEYS, KeyKind
    from metering.rules import CONCURRENCY_PERCENT, EXCEEDED_PERCENT, WARN_PERCENT, actual_sql, rollup_sql

    quota_keys = "ARRAY[" + ", ".join(f"'{key.name}'" for key in POLICY_KEYS.values() if key.kind == KeyKind.QUOTA)
    actual = actual_sql("m.metric", {"tokens_in": "p_tokens_in", "tokens_out": "p_tokens_out",
                                     "cost_micro_usd": "p_cost", "api_calls": "p_api_calls"})
    thresholds = f"({WARN_PERCENT}, 'QUOTA_WARNING'), ({EXCEEDED_PERCENT}, 'QUOTA_EXCEEDED')"
    key_actual = actual_sql("h.m", {"tokens_in": "l.tokens_in", "tokens_out": "l.tokens_out",
                                     "cost_micro_usd": "l.cost_micro_usd", "api_calls": "l.api_calls"})
    return (ADMIT.replace("__CONCURRENCY_PERCENT__", str(CONCURRENCY_PERCENT)).replace("__KEY_ACTUAL__", key_actual)
            .replace("__ROLLUP__", rollup_sql("h.m", "d")).replace("__PERIOD_END__", _PERIOD_END)
            + SETTLE.replace("__QUOTA_KEYS__", quota_keys + "]::text[]").replace("__ACTUAL__", actual)
            .replace("__THRESHOLDS__", thresholds))
