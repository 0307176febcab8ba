-- Issue 16: picofleet_readonly, the role dashboards (Grafana) read through. It may SELECT the
-- facts, the older system's views, the rollups, alerts and the OTA/deploy log, and nothing
-- else: not raw_record (exact payloads, refused startups' tokens), not provisioning nonces,
-- ingest grants or the migration ledger; it writes nowhere. Created NOLOGIN, like
-- picofleet_runtime (0040); the operator gives it a login for Grafana:
--     ALTER ROLE picofleet_readonly LOGIN PASSWORD '...';
-- On a server where the migrating user may not create roles, it is skipped with a notice.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_readonly') THEN
        BEGIN
            CREATE ROLE picofleet_readonly NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
                NOINHERIT NOREPLICATION NOBYPASSRLS;
            -- A dashboard's query never writes and never runs for long on a Pi.
            ALTER ROLE picofleet_readonly SET default_transaction_read_only = on;
            ALTER ROLE picofleet_readonly SET statement_timeout = '30s';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'picofleet: cannot create role picofleet_readonly (%); dashboards '
                         'need another read-only login', SQLERRM;
        END;
    END IF;
END
$$;

-- The read-only grants in one place; a later migration that adds a relation dashboards
-- should see adds it to the list and calls this again.
CREATE OR REPLACE FUNCTION picofleet_grant_readonly() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    rel text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_readonly') THEN
        RETURN false;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO picofleet_readonly', current_database());
    GRANT USAGE ON SCHEMA public TO picofleet_readonly;
    FOREACH rel IN ARRAY ARRAY[
        'device', 'record_type', 'processed_record', 'ingest_error', 'ingest_parse',
        'v_platform_extension_mm', 'metric_avg_extension_mm', 'metric_extension_vs_retraction',
        'metric_battery_summary', 'metric_platform_height', 'v_side_switch',
        'metric_side_switches', 'rollup_series', 'rollup_hourly', 'rollup_daily',
        'v_rollup_daily', 'analytics_state', 'alert', 'deploy_event', 'ota_rollout',
        'ota_rollout_device', 'ota_device_state'
    ]
    LOOP
        IF to_regclass(rel) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO picofleet_readonly', to_regclass(rel));
        END IF;
    END LOOP;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION picofleet_grant_readonly() FROM PUBLIC;

SELECT picofleet_grant_readonly();
