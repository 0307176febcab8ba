-- Least privilege: the hub's long-running processes connect as picofleet_runtime, which may
-- read and write rows but owns nothing, so it can neither drop nor alter a table. Migrations
-- keep running as the owner. The role is cluster-wide and created NOLOGIN here; the hub gives
-- it a login (pi_server/security/roles.py) after migrating.
--
-- On a server where the migrating user may not create roles, the role is skipped with a
-- notice and the hub keeps using the owner's connection (it logs that it does).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_runtime') THEN
        BEGIN
            CREATE ROLE picofleet_runtime NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
                NOINHERIT NOREPLICATION NOBYPASSRLS;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'picofleet: cannot create role picofleet_runtime (%); the hub will '
                         'use the owner role', SQLERRM;
        END;
    END IF;
END
$$;

-- No one but the owner creates objects in the schema (the default since PostgreSQL 15).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The runtime's grants in one place. Runs here, and again at every hub start (as the owner),
-- so tables a later migration adds are covered even when another user migrated them.
CREATE OR REPLACE FUNCTION picofleet_grant_runtime() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_runtime') THEN
        RETURN false;
    END IF;
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO picofleet_runtime',
                   current_database());
    GRANT USAGE ON SCHEMA public TO picofleet_runtime;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO picofleet_runtime;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO picofleet_runtime;
    -- Views are read-only for the runtime: a write through an updatable view would run with
    -- the view owner's rights.
    FOR rel IN
        SELECT c.oid::regclass AS name FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s FROM picofleet_runtime', rel.name);
    END LOOP;
    -- The migration ledger is the owner's: the runtime may read which versions are applied.
    REVOKE INSERT, UPDATE, DELETE ON schema_migration FROM picofleet_runtime;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION picofleet_grant_runtime() FROM PUBLIC;

-- Tables and sequences the owner creates later get the same grants without a new migration.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_runtime') THEN
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO picofleet_runtime;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT USAGE, SELECT ON SEQUENCES TO picofleet_runtime;
        PERFORM picofleet_grant_runtime();
    END IF;
END
$$;
