-- Issue 18, found by the growth bench: partition upkeep deadlocked with the write path.
--
-- processed_record's foreign keys name device and record_type. Creating or detaching one of its
-- partitions takes SHARE ROW EXCLUSIVE on both (PostgreSQL adds or moves the key's triggers),
-- and dropping a detached partition, whose keys are then its own, takes ACCESS EXCLUSIVE on
-- both. 0080 locked the ledger table first and let PostgreSQL take the others after it, while
-- a writer takes device first (the upsert), then the ledger, then record_type (the key
-- check): each could hold what the other waited for, and the deadlock detector killed one.
--
-- Now every step locks in the writers' order: the tables the ledger's foreign keys name
-- (device before record_type), then the ledger tables (raw_record, processed_record,
-- ingest_error: the order Ledger.write_in writes them). A detached partition loses its foreign
-- keys in a short transaction of its own (picofleet_unlink_detached), so that dropping it,
-- which waits for the filesystem to free the day's files, holds no lock anybody else needs.

-- Lock the tables the ledger's foreign keys name, in the writers' order (by name: device
-- before record_type, the order Ledger.write_in reaches them), whichever ledger table the
-- caller works on: it may go on to another one in the same transaction.
CREATE FUNCTION picofleet_lock_referenced(mode text) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    t text;
BEGIN
    IF mode NOT IN ('SHARE ROW EXCLUSIVE', 'ACCESS EXCLUSIVE') THEN
        RAISE EXCEPTION 'picofleet: lock mode % is not for partition upkeep', mode;
    END IF;
    FOR t IN
        SELECT DISTINCT c.confrelid::regclass::text AS name FROM pg_constraint c
        WHERE c.conrelid IN ('raw_record'::regclass, 'processed_record'::regclass,
                             'ingest_error'::regclass)
          AND c.contype = 'f'
        ORDER BY 1
    LOOP
        EXECUTE format('LOCK TABLE %s IN %s MODE', t, mode);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION picofleet_lock_referenced(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION picofleet_ensure_partition(parent regclass, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    key text := picofleet_ledger_table(parent);
    part text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
    dflt text := format('%s_default', parent);
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    stray boolean;
BEGIN
    IF to_regclass(part) IS NOT NULL
       AND (SELECT relispartition FROM pg_class WHERE oid = to_regclass(part)) THEN
        RETURN false;
    END IF;
    PERFORM picofleet_lock_referenced('SHARE ROW EXCLUSIVE');
    EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', parent);
    IF to_regclass(part) IS NOT NULL THEN
        -- Detached by retention, not yet dropped. Still holding foreign keys (the unlink step
        -- gave up on a lock), it could only go with ACCESS EXCLUSIVE on the tables they name,
        -- taken after the ledger's: give up instead, as a lock timeout would; retention's next
        -- unlink frees it, and meanwhile that day's rows wait in the default partition.
        IF EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = to_regclass(part) AND contype = 'f') THEN
            RAISE EXCEPTION USING ERRCODE = 'lock_not_available',
                MESSAGE = format('picofleet: %s was detached and still has foreign keys', part);
        END IF;
        EXECUTE format('DROP TABLE %I', part);
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= $1 AND %I < $2)',
                   dflt, key, key) INTO stray USING lo, hi;
    IF stray THEN
        EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       part, parent);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *)'
                       ' INSERT INTO %I SELECT * FROM moved', dflt, key, key, part)
            USING lo, hi;
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, part, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                       part, parent, lo, hi);
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION picofleet_drop_partitions(parent regclass, cutoff timestamptz,
                                                     max_id bigint DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    key text := picofleet_ledger_table(parent);
    day date;
    part record;
    parts text[] := '{}';
    counts bigint[] := '{}';
    n bigint;
    late boolean;
    dropped bigint := 0;
BEGIN
    FOR day IN EXECUTE format('SELECT DISTINCT (%I AT TIME ZONE ''UTC'')::date FROM %I'
                              ' WHERE %I < $1', key, parent::text || '_default', key)
        USING cutoff
    LOOP
        PERFORM picofleet_ensure_partition(parent, day);
    END LOOP;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent AND c.relname ~ '_p[0-9]{8}$'
          AND (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
              <= cutoff
        ORDER BY c.relname
    LOOP
        -- Counted before the locks, which block writers until commit.
        EXECUTE format('SELECT count(*) FROM %I', part.relname) INTO n;
        parts := parts || part.relname::text;
        counts := counts || n;
    END LOOP;
    IF cardinality(parts) = 0 THEN
        RETURN 0;
    END IF;
    -- The writers' order: the tables the foreign keys name, the parent, then its partitions.
    PERFORM picofleet_lock_referenced('SHARE ROW EXCLUSIVE');
    EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', parent);
    FOR i IN 1 .. cardinality(parts) LOOP
        IF max_id IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE id > $1)', parts[i])
                INTO late USING max_id;
            CONTINUE WHEN late;
        END IF;
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %I', parent, parts[i]);
        dropped := dropped + counts[i];
    END LOOP;
    RETURN dropped;
END
$$;

-- ``parent``'s detached day tables. A name of this shape that is not a partition can only be
-- one that retention detached.
CREATE FUNCTION picofleet_detached(parent regclass) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT c.relname::text FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
      AND NOT c.relispartition AND c.relname ~ ('^' || parent::text || '_p[0-9]{8}$')
    ORDER BY 1
$$;
REVOKE ALL ON FUNCTION picofleet_detached(regclass) FROM PUBLIC;

-- Retention, second step: the detached tables' foreign keys go (ACCESS EXCLUSIVE on the tables
-- they name, for as long as it takes to remove the triggers). Returns the keys dropped.
CREATE FUNCTION picofleet_unlink_detached(parent regclass) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    fk record;
    n integer := 0;
BEGIN
    PERFORM picofleet_ledger_table(parent);
    FOR fk IN
        SELECT c.conrelid::regclass AS tbl, c.conname FROM pg_constraint c
        WHERE c.contype = 'f'
          AND c.conrelid::regclass::text IN (SELECT picofleet_detached(parent))
        ORDER BY 1, 2
    LOOP
        IF n = 0 THEN
            PERFORM picofleet_lock_referenced('ACCESS EXCLUSIVE');
        END IF;
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Retention, last step: drop the detached tables that no longer have foreign keys (one that
-- still has one waits for the next run: dropping it would lock the tables it names while the
-- files are freed).
CREATE OR REPLACE FUNCTION picofleet_drop_detached(parent regclass) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    t text;
    n integer := 0;
BEGIN
    PERFORM picofleet_ledger_table(parent);
    FOR t IN
        SELECT d FROM picofleet_detached(parent) d
        WHERE NOT EXISTS (SELECT 1 FROM pg_constraint c
                          WHERE c.conrelid = d::regclass AND c.contype = 'f')
    LOOP
        EXECUTE format('DROP TABLE %I', t);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION picofleet_unlink_detached(regclass) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_runtime') THEN
        GRANT EXECUTE ON FUNCTION picofleet_unlink_detached(regclass) TO picofleet_runtime;
    END IF;
END
$$;

-- Tables detached by 0080's retention and not dropped yet keep their foreign keys: unlink them
-- now, so the next run drops them.
SELECT picofleet_unlink_detached(t) FROM unnest(ARRAY['raw_record', 'processed_record',
                                                      'ingest_error']::regclass[]) t;
