-- Issue 16: Home Assistant MQTT discovery. One row per device and record type the hub has
-- announced to Home Assistant (picofleet/homeassistant), with the newest fact it republished.
-- It is the outbox's memory: a row whose device is gone or blocked is the cue to publish the
-- empty retained configs that remove the entities, even after a restart of the hub.
CREATE TABLE ha_entity (
    device_key   text NOT NULL,
    record_type  text NOT NULL,
    unit         text NOT NULL,
    fact_id      bigint NOT NULL,           -- processed_record.id of the value last published
    value        double precision NOT NULL,
    PRIMARY KEY (device_key, record_type)
);
