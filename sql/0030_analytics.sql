-- Analytics: hourly and daily rollups kept by the ETL job (pi_server/analytics), its
-- watermark, per-device pump flow rates, and alerts with an open/close lifecycle.
-- Rollups are derived data: any window can be recomputed from processed_record and gives the
-- same rows (the ETL upserts and skips rows whose values did not change).

-- Which record types feed which rollup series. Every type is its own series; extension
-- readings of both firmwares also feed one unified series in mm (20 ticks = 1 mm, the same
-- conversion as v_platform_extension_mm), while the ticks keep their own raw series.
CREATE VIEW rollup_series AS
SELECT t.id AS record_type_id, t.name AS series, 1.0::float8 AS divisor
FROM record_type t
WHERE t.name <> 'platform_extension_mm'
UNION ALL
SELECT t.id, 'platform_extension_mm',
       CASE t.name WHEN 'platform_extension_ticks' THEN 20.0::float8 ELSE 1.0::float8 END
FROM record_type t
WHERE t.name IN ('platform_extension_ticks', 'platform_extension_mm');

-- One row per device, series and UTC hour.
CREATE TABLE rollup_hourly (
    device_id   bigint NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    hour        timestamptz NOT NULL,
    series      text NOT NULL,
    n           bigint NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    sum_value   double precision NOT NULL,
    avg_value   double precision NOT NULL,
    first_time  timestamptz NOT NULL,
    last_time   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, hour, series)
);
CREATE INDEX rollup_hourly_series_idx ON rollup_hourly (series, hour);
CREATE INDEX rollup_hourly_hour_idx ON rollup_hourly (hour);

-- One row per device and UTC day. Pump figures come from the pump_runtime_s / pump_starts
-- counters when the device reports them, else from pump_on samples (pump_source says which).
CREATE TABLE rollup_daily (
    device_id       bigint NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    day             date NOT NULL,
    pump_runtime_s  double precision,
    pump_starts     double precision,
    pump_source     text CHECK (pump_source IN ('counters', 'pump_on')),
    moisture_min    double precision,
    moisture_avg    double precision,
    battery_min     double precision,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, day)
);
CREATE INDEX rollup_daily_day_idx ON rollup_daily (day);

-- Per-device settings the rollups need; a pump's flow rate turns run time into water.
CREATE TABLE analytics_device_config (
    device_id            bigint PRIMARY KEY REFERENCES device (id) ON DELETE CASCADE,
    pump_flow_l_per_min  double precision CHECK (pump_flow_l_per_min > 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Daily rollups as the API shows them: device key and watering volume (from the flow rate
-- configured now, so a corrected rate corrects history too).
CREATE VIEW v_rollup_daily AS
SELECT r.device_id, d.device_key, r.day, r.pump_runtime_s, r.pump_starts, r.pump_source,
       r.pump_runtime_s * c.pump_flow_l_per_min / 60.0 AS watering_l,
       r.moisture_min, r.moisture_avg, r.battery_min, r.updated_at
FROM rollup_daily r
JOIN device d ON d.id = r.device_id
LEFT JOIN analytics_device_config c ON c.device_id = r.device_id;

-- The ETL's single state row: facts with id <= last_id are in the rollups; hours before
-- pruned_before lost their facts to retention and are never recomputed.
CREATE TABLE analytics_state (
    name            text PRIMARY KEY,
    last_id         bigint NOT NULL DEFAULT 0,
    pruned_before   timestamptz,
    last_run_at     timestamptz,
    last_run_ms     double precision,
    last_run_facts  bigint,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO analytics_state (name) VALUES ('rollup');

-- Alerts: opened once, closed when the condition clears. subject is what the alert is about
-- (a device key, a rollout id, or '' for the whole fleet); the partial unique index makes a
-- second open alert for the same kind and subject impossible. published_state is the
-- outbox: the last state announced on {prefix}/alerts/{kind}.
CREATE TABLE alert (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL,
    subject          text NOT NULL DEFAULT '',
    device_key       text,
    state            text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    opened_at        timestamptz NOT NULL,
    closed_at        timestamptz,
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb,
    published_state  text,
    CHECK ((state = 'open') = (closed_at IS NULL))
);
CREATE UNIQUE INDEX alert_open_uq ON alert (kind, subject) WHERE state = 'open';
CREATE INDEX alert_opened_idx ON alert (opened_at);
CREATE INDEX alert_device_idx ON alert (device_key, opened_at);
CREATE INDEX alert_unpublished_idx ON alert (id) WHERE published_state IS DISTINCT FROM state;
