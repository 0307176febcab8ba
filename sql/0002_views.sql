-- Views of the older system, with its column names, so its queries and dashboards keep working.
-- Units are never rewritten at rest: ticks are converted here (20 ticks = 1 mm).

CREATE VIEW v_platform_extension_mm AS
SELECT p.device_id,
       p.record_time AS observed_at,
       CASE t.name
           WHEN 'platform_extension_ticks' THEN (p.value / 20.0)::numeric(10, 3)
           ELSE p.value::numeric(10, 3)
       END AS extension_mm
FROM processed_record p
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name IN ('platform_extension_ticks', 'platform_extension_mm');

CREATE VIEW metric_avg_extension_mm AS
SELECT device_id, avg(extension_mm)::numeric(10, 3) AS avg_extension_mm
FROM v_platform_extension_mm
GROUP BY device_id;

-- Consecutive readings per device: a rise is an extension, a fall a retraction.
CREATE VIEW metric_extension_vs_retraction AS
WITH steps AS (
    SELECT device_id,
           extension_mm - lag(extension_mm) OVER (
               PARTITION BY device_id ORDER BY observed_at) AS delta
    FROM v_platform_extension_mm
)
SELECT device_id,
       count(*) FILTER (WHERE delta > 0) AS extensions,
       count(*) FILTER (WHERE delta < 0) AS retractions
FROM steps
GROUP BY device_id;

CREATE VIEW metric_battery_summary AS
SELECT p.device_id,
       min(p.value) AS min_pct,
       max(p.value) AS max_pct,
       avg(p.value)::numeric(10, 2) AS avg_pct,
       max(p.record_time) AS last_seen
FROM processed_record p
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name = 'battery_charge'
GROUP BY p.device_id;

CREATE VIEW metric_platform_height AS
SELECT p.device_id,
       min(p.value) AS min_height_mm,
       max(p.value) AS max_height_mm,
       avg(p.value)::numeric(10, 3) AS avg_height_mm
FROM processed_record p
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name = 'platform_height_mm'
GROUP BY p.device_id;

-- Left/right switches: consecutive extension readings whose sign flips (negative = left).
CREATE VIEW v_side_switch AS
WITH sided AS (
    SELECT device_id, observed_at, extension_mm,
           sign(extension_mm) AS side,
           lag(sign(extension_mm)) OVER (
               PARTITION BY device_id ORDER BY observed_at) AS prev_side
    FROM v_platform_extension_mm
    WHERE extension_mm <> 0
)
SELECT device_id, observed_at, extension_mm,
       CASE WHEN prev_side < 0 THEN 'left' ELSE 'right' END AS from_side,
       CASE WHEN side < 0 THEN 'left' ELSE 'right' END AS to_side
FROM sided
WHERE prev_side IS NOT NULL AND side <> prev_side;

CREATE VIEW metric_side_switches AS
SELECT device_id,
       count(*) FILTER (WHERE from_side = 'left') AS left_to_right,
       count(*) FILTER (WHERE from_side = 'right') AS right_to_left,
       count(*) AS switches
FROM v_side_switch
GROUP BY device_id;

-- One pane of glass: every raw message, whether it produced facts, and why not.
CREATE VIEW ingest_parse AS
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
