-- Issue 18: the ledger (raw_record, processed_record, ingest_error) partitioned by UTC day, so
-- retention drops whole partitions instead of DELETE (no bloat, no vacuum on an SD card) and
-- the cost of a write stays flat as the ledger grows. Native declarative partitioning: the
-- embedded cluster has it; TimescaleDB is not used.
--
-- Partition keys: raw_record.received_at, processed_record.record_time (the device's time),
-- ingest_error.created_at. PostgreSQL enforces a unique key only within a partition, so every
-- unique key now holds the partition key:
--   uq_processed_seq   (device_id, seq, item_idx, record_time)  WHERE seq IS NOT NULL
--   uq_processed_event (device_id, record_type_id, record_time, value) WHERE seq IS NULL
--   uq_processed_by_raw (raw_id, item_idx, record_time)
-- A redelivered copy carries the same device time, so it is the same fact however late it
-- comes (readings without a device time take the first copy's time within
-- untimed_dedupe_window_s, as before). A seq repeated with another device time is no longer
-- refused: it is stored as a reading of its own (a seq repeated at the same time with other
-- content is still a seq_conflict).
--
-- Foreign keys to raw_record(id) cannot exist any more (a key referencing a partitioned table
-- must hold its partition key): raw_id in processed_record, ingest_error and deploy_event is a
-- plain reference, like untimed_message.raw_id. Retention drops each table's old days.
--
-- Conversion: the old tables are renamed, the partitioned ones created under the old names,
-- every row copied, the views re-pointed, the old tables dropped. Sequences are kept (ids go
-- on where they were).

-- 1. Move the old tables aside, with nothing left on them that a new name would collide with.
ALTER TABLE raw_record RENAME TO raw_record_v0;
ALTER TABLE processed_record RENAME TO processed_record_v0;
ALTER TABLE ingest_error RENAME TO ingest_error_v0;
ALTER SEQUENCE raw_record_id_seq OWNED BY NONE;
ALTER SEQUENCE processed_record_id_seq OWNED BY NONE;
ALTER SEQUENCE ingest_error_id_seq OWNED BY NONE;
ALTER TABLE processed_record_v0 ALTER COLUMN id DROP DEFAULT;
ALTER TABLE ingest_error_v0 ALTER COLUMN id DROP DEFAULT;
ALTER TABLE raw_record_v0 ALTER COLUMN id DROP DEFAULT;

DO $$
DECLARE
    old regclass[] := ARRAY['raw_record_v0', 'processed_record_v0', 'ingest_error_v0']::regclass[];
    r record;
BEGIN
    -- Foreign keys first (also deploy_event's to raw_record), then unique keys, then indexes.
    FOR r IN
        SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
        WHERE (conrelid = ANY (old) OR confrelid = ANY (old)) AND contype IN ('f', 'p', 'u')
        ORDER BY contype = 'f' DESC
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
    END LOOP;
    FOR r IN SELECT indexrelid::regclass AS idx FROM pg_index WHERE indrelid = ANY (old) LOOP
        EXECUTE format('DROP INDEX %s', r.idx);
    END LOOP;
END
$$;

-- 2. The partitioned tables: the same columns in the same order.
CREATE TABLE raw_record (
    id            bigint NOT NULL DEFAULT nextval('raw_record_id_seq'),
    received_at   timestamptz NOT NULL,
    source        text NOT NULL CHECK (source IN ('mqtt', 'http', 'usb')),
    topic         text NOT NULL,
    device_key    text,
    payload       bytea NOT NULL,
    payload_size  integer NOT NULL,
    body          jsonb,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE raw_record_id_seq OWNED BY raw_record.id;
CREATE INDEX raw_record_received_idx ON raw_record (received_at);
CREATE INDEX raw_record_device_idx ON raw_record (device_key, received_at);
CREATE TABLE raw_record_default PARTITION OF raw_record DEFAULT;

CREATE TABLE ingest_error (
    id          bigint NOT NULL DEFAULT nextval('ingest_error_id_seq'),
    raw_id      bigint NOT NULL,
    item_idx    integer NOT NULL DEFAULT 0,
    code        text NOT NULL,
    detail      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    UNIQUE (raw_id, item_idx, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE ingest_error_id_seq OWNED BY ingest_error.id;
CREATE INDEX ingest_error_code_idx ON ingest_error (code, created_at);
CREATE INDEX ingest_error_created_idx ON ingest_error (created_at);
CREATE TABLE ingest_error_default PARTITION OF ingest_error DEFAULT;

CREATE TABLE processed_record (
    id              bigint NOT NULL DEFAULT nextval('processed_record_id_seq'),
    raw_id          bigint NOT NULL,
    item_idx        integer NOT NULL DEFAULT 0,
    device_id       bigint NOT NULL REFERENCES device (id),
    record_type_id  smallint NOT NULL REFERENCES record_type (id),
    record_time     timestamptz NOT NULL,
    value           double precision NOT NULL,
    seq             bigint,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, record_time),
    CONSTRAINT uq_processed_by_raw UNIQUE (raw_id, item_idx, record_time)
) PARTITION BY RANGE (record_time);
ALTER SEQUENCE processed_record_id_seq OWNED BY processed_record.id;
CREATE UNIQUE INDEX uq_processed_seq ON processed_record (device_id, seq, item_idx, record_time)
    WHERE seq IS NOT NULL;
CREATE UNIQUE INDEX uq_processed_event
    ON processed_record (device_id, record_type_id, record_time, value) WHERE seq IS NULL;
CREATE INDEX processed_device_time_idx ON processed_record (device_id, record_time);
CREATE INDEX processed_type_time_idx ON processed_record (record_type_id, record_time);
CREATE TABLE processed_record_default PARTITION OF processed_record DEFAULT;

-- 3. Partition upkeep. The hub's runtime role owns no table, so it creates and drops
-- partitions through these functions, which run as their owner and touch only the ledger.
-- Callers serialise them (picofleet/core/partitions.py takes an advisory lock).
CREATE FUNCTION picofleet_ledger_table(parent regclass) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    key text;
BEGIN
    IF parent::text NOT IN ('raw_record', 'processed_record', 'ingest_error') THEN
        RAISE EXCEPTION 'picofleet: % is not a ledger table', parent;
    END IF;
    SELECT a.attname INTO STRICT key
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent;
    RETURN key;
END
$$;

-- The partition of one UTC day ({table}_pYYYYMMDD). Rows of that day that went to the default
-- partition (no partition existed yet) are moved into it. True when it was created now.
CREATE FUNCTION picofleet_ensure_partition(parent regclass, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    key text := picofleet_ledger_table(parent);
    part text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
    dflt text := format('%s_default', parent);
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    stray boolean;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        IF (SELECT relispartition FROM pg_class WHERE oid = to_regclass(part)) THEN
            RETURN false;
        END IF;
        EXECUTE format('DROP TABLE %I', part);  -- detached by retention, not yet dropped
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

-- Partitions from yesterday to ahead_days from today, and one for every day that has rows in
-- a default partition (a device clock far off, a hub that was down). Partitions created.
CREATE FUNCTION picofleet_ensure_ledger_partitions(ahead_days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    parent regclass;
    day date;
    today date := (now() AT TIME ZONE 'UTC')::date;
    made integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['raw_record', 'processed_record', 'ingest_error']::regclass[]
    LOOP
        FOR day IN
            SELECT today + g FROM generate_series(-1, ahead_days) AS g
        LOOP
            made := made + picofleet_ensure_partition(parent, day)::integer;
        END LOOP;
        FOR day IN EXECUTE format('SELECT DISTINCT (%I AT TIME ZONE ''UTC'')::date FROM %I',
                                  picofleet_ledger_table(parent), parent::text || '_default')
        LOOP
            made := made + picofleet_ensure_partition(parent, day)::integer;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- Retention, first step: detach every day partition of ``parent`` that ends at or before
-- ``cutoff`` (rows of such days in the default partition are first given their partition).
-- With ``max_id``, a partition holding a row with a greater id (a fact the rollups have not
-- seen yet) is kept for a later run. Returns the rows detached. The detached tables are
-- dropped by picofleet_drop_detached in a transaction of its own: freeing a day's files takes
-- a while, and writers must not wait for it behind this one's exclusive lock.
CREATE FUNCTION picofleet_drop_partitions(parent regclass, cutoff timestamptz,
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
        -- Counted before the lock, which blocks writers to the whole table until commit.
        EXECUTE format('SELECT count(*) FROM %I', part.relname) INTO n;
        parts := parts || part.relname::text;
        counts := counts || n;
    END LOOP;
    IF cardinality(parts) = 0 THEN
        RETURN 0;
    END IF;
    -- The parent first: a writer holds it before it reaches a partition, so this order
    -- cannot deadlock with one.
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

-- Retention, second step: drop ``parent``'s day tables that are no longer partitions.
CREATE FUNCTION picofleet_drop_detached(parent regclass) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    t record;
    n integer := 0;
BEGIN
    PERFORM picofleet_ledger_table(parent);
    FOR t IN
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
          AND NOT c.relispartition AND c.relname ~ ('^' || parent::text || '_p[0-9]{8}$')
    LOOP
        EXECUTE format('DROP TABLE %I', t.relname);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION picofleet_ledger_table(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION picofleet_ensure_partition(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION picofleet_ensure_ledger_partitions(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION picofleet_drop_partitions(regclass, timestamptz, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION picofleet_drop_detached(regclass) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'picofleet_runtime') THEN
        GRANT EXECUTE ON FUNCTION picofleet_ensure_ledger_partitions(integer)
            TO picofleet_runtime;
        GRANT EXECUTE ON FUNCTION picofleet_drop_partitions(regclass, timestamptz, bigint)
            TO picofleet_runtime;
        GRANT EXECUTE ON FUNCTION picofleet_drop_detached(regclass) TO picofleet_runtime;
    END IF;
END
$$;

-- 4. Every row over: a partition for each day that has rows, then the copy.
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date FROM raw_record_v0 LOOP
        PERFORM picofleet_ensure_partition('raw_record', day);
    END LOOP;
    FOR day IN SELECT DISTINCT (record_time AT TIME ZONE 'UTC')::date FROM processed_record_v0
    LOOP
        PERFORM picofleet_ensure_partition('processed_record', day);
    END LOOP;
    FOR day IN SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM ingest_error_v0 LOOP
        PERFORM picofleet_ensure_partition('ingest_error', day);
    END LOOP;
    PERFORM picofleet_ensure_ledger_partitions(7);
END
$$;

INSERT INTO raw_record (id, received_at, source, topic, device_key, payload, payload_size, body)
SELECT id, received_at, source, topic, device_key, payload, payload_size, body
FROM raw_record_v0;
INSERT INTO processed_record (id, raw_id, item_idx, device_id, record_type_id, record_time,
                              value, seq, ingested_at)
SELECT id, raw_id, item_idx, device_id, record_type_id, record_time, value, seq, ingested_at
FROM processed_record_v0;
INSERT INTO ingest_error (id, raw_id, item_idx, code, detail, created_at)
SELECT id, raw_id, item_idx, code, detail, created_at FROM ingest_error_v0;

-- 5. The views of 0002, unchanged, now on the partitioned tables (views that read these views
-- follow them).
CREATE OR REPLACE VIEW v_platform_extension_mm AS
SELECT p.device_id,
       p.record_time AS observed_at,
       CASE t.name
           WHEN 'platform_extension_ticks' THEN (p.value / 20.0)::numeric(10, 3)
           ELSE p.value::numeric(10, 3)
       END AS extension_mm
FROM processed_record p
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name IN ('platform_extension_ticks', 'platform_extension_mm');

CREATE OR REPLACE VIEW metric_battery_summary AS
SELECT p.device_id,
       min(p.value) AS min_pct,
       max(p.value) AS max_pct,
       avg(p.value)::numeric(10, 2) AS avg_pct,
       max(p.record_time) AS last_seen
FROM processed_record p
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name = 'battery_charge'
GROUP BY p.device_id;

CREATE OR REPLACE VIEW metric_platform_height AS
SELECT p.device_id,
       min(p.value) AS min_height_mm,
       max(p.value) AS max_height_mm,
       avg(p.value)::numeric(10, 3) AS avg_height_mm
FROM processed_record p
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name = 'platform_height_mm'
GROUP BY p.device_id;

CREATE OR REPLACE VIEW ingest_parse AS
SELECT r.id AS raw_data_id,
       d.id AS device_id,
       NOT EXISTS (SELECT 1 FROM ingest_error e WHERE e.raw_id = r.id) AS parse_ok,
       (SELECT string_agg(e.code || ': ' || e.detail, '; ' ORDER BY e.item_idx)
          FROM ingest_error e WHERE e.raw_id = r.id) AS error,
       r.topic,
       r.received_at,
       (SELECT count(*) FROM processed_record p WHERE p.raw_id = r.id) AS processed_count
FROM raw_record r
LEFT JOIN device d ON d.device_key = r.device_key;

DROP TABLE ingest_error_v0, processed_record_v0, raw_record_v0;

-- 6. The runtime's grants on the new tables (and the views, read-only again).
DO $$
BEGIN
    PERFORM picofleet_grant_runtime();
END
$$;

-- 7. The read-only role's grants (sql/0071) on the new tables and views.
DO $$
BEGIN
    PERFORM picofleet_grant_readonly();
END
$$;
