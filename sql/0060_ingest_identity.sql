-- Issue 19: who may write for which device, redelivered messages without a device time,
-- and readings that share a seq. Forward-only: a new file, 0001 stays as shipped.

-- Extra devices a legacy sender may speak for on picofleet/ingest or POST /ingest (it always
-- speaks for itself). Written by the operator; read by the write path.
CREATE TABLE ingest_grant (
    sender      text NOT NULL,
    device_key  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, device_key)
);

-- A message with neither a device time nor a seq has only its bytes to be known by: copies of
-- the same bytes on the same topic within the dedupe window are one message, and their facts
-- take the time of the first copy (so uq_processed_event makes the copies no-ops).
CREATE TABLE untimed_message (
    digest    bytea PRIMARY KEY,  -- sha256(topic || 0x00 || payload)
    first_at  timestamptz NOT NULL,
    raw_id    bigint NOT NULL     -- the first copy (no foreign key: retention may drop it)
);
CREATE INDEX untimed_message_first_idx ON untimed_message (first_at);

-- A firmware envelope's readings are identified by (device, seq, index) alone: two equal
-- readings in one envelope are two facts. The event key keeps deduplicating what has no seq.
ALTER TABLE processed_record DROP CONSTRAINT uq_processed_event;
CREATE UNIQUE INDEX uq_processed_event
    ON processed_record (device_id, record_type_id, record_time, value) WHERE seq IS NULL;
