-- The deploy log: every step of every update of every device, over the air or over USB.
-- OTA (ota/status reports, announcer decisions) and USB flashing write here alike, so one
-- query tells a device's whole history.
CREATE TABLE deploy_event (
    id          bigserial PRIMARY KEY,
    device_key  text NOT NULL,
    version     text,
    state       text NOT NULL,
    reason      text,
    source      text NOT NULL CHECK (source IN ('ota', 'usb', 'hub')),
    seq         bigint,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    raw_id      bigint REFERENCES raw_record (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deploy_event_device_idx ON deploy_event (device_key, created_at);
CREATE INDEX deploy_event_version_idx ON deploy_event (version, created_at);
