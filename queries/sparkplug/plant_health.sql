-- Plant health over Sparkplug B: queries/plant_health.sql with the same windows,
-- features, models and alert lifecycle, reading the plant from Sparkplug B edge nodes
-- (`forewarn demo --sparkplug`, `forewarn simulate --sparkplug`) instead of JSON.
-- Each site is a Sparkplug group and each of its lines an edge node ({site}-{line});
-- every machine is a device of its line's edge node, with the same device id as in the
-- JSON plant. The metrics carry the same names as the JSON fields, so they land in the
-- same columns; `site` is the group id.
--
-- (The header of queries/plant_health.sql explains the features.)

CREATE TABLE telemetry (
  "group" TEXT,         -- the Sparkplug group: the site
  edge_node TEXT,       -- the edge node: {site}-{line}
  device TEXT,
  ts TIMESTAMP,         -- each metric's own timestamp
  vibration DOUBLE,     -- vibration velocity RMS, mm/s
  kurtosis DOUBLE,      -- kurtosis of the vibration signal (3 = healthy)
  temperature DOUBLE,   -- casing / bearing temperature, degC
  motor_current DOUBLE, -- A
  pressure DOUBLE,      -- discharge pressure, bar
  load DOUBLE,          -- 0..1, from the controller
  ambient DOUBLE,       -- site ambient temperature, degC
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
  connector = 'sparkplug',
  group = '#',
  -- As in queries/plant_health.sql: one watermark per machine, and readings more than
  -- 10 minutes ahead dead-lettered as future_timestamp.
  watermark_key = 'device',
  max_future = '10 minutes'
);

-- Alerts are state transitions, not window rows: a machine is raised to `warning`
-- after two consecutive windows scoring at least 1.0 (the models' threshold),
-- escalated to `alarm` after two at 3.0 or more, and cleared only after five
-- windows below 0.7; no new episode within 30 minutes of a clear. Its current
-- health is kept retained on forewarn/state/{device}.
CREATE TABLE alerts WITH (
  connector = 'mqtt',
  topic = 'forewarn/alerts/{device}',
  format = 'json',
  score = 'score',
  warning_at = '1.0',
  alarm_at = '3.0',
  clear_below = '0.7',
  raise_after = '2',
  clear_after = '5',
  cooldown = '30 minutes',
  severity = 'maintenance'
);

-- Centrifugal pumps: bearing wear, overheating and cavitation.
INSERT INTO alerts
SELECT device, "group" AS site, window_start, window_end,
       min(vibration) AS vibration_floor,
       avg(kurtosis) AS kurtosis,
       avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient) AS temperature_rise,
       avg(load) AS load,
       avg(motor_current) AS motor_current,
       avg(pressure) AS pressure,
       anomaly_score('pump_gmm', min(vibration), avg(kurtosis), avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient),
                     avg(load), avg(motor_current), avg(pressure)) AS score,
       top_contributors('pump_gmm', min(vibration), avg(kurtosis), avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient),
                        avg(load), avg(motor_current), avg(pressure)) AS explanation
FROM telemetry
WHERE device LIKE 'pump-%' AND load > 0.3
GROUP BY tumble(interval '1 minute'), device, "group"
HAVING count(*) >= 6;

-- Motors: bearing wear and overheating (no pressure sensor).
INSERT INTO alerts
SELECT device, "group" AS site, window_start, window_end,
       min(vibration) AS vibration_floor,
       avg(kurtosis) AS kurtosis,
       avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient) AS temperature_rise,
       avg(load) AS load,
       avg(motor_current) AS motor_current,
       anomaly_score('motor_gmm', min(vibration), avg(kurtosis), avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient),
                     avg(load), avg(motor_current)) AS score,
       top_contributors('motor_gmm', min(vibration), avg(kurtosis), avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient),
                        avg(load), avg(motor_current)) AS explanation
FROM telemetry
WHERE device LIKE 'motor-%' AND load > 0.3
GROUP BY tumble(interval '1 minute'), device, "group"
HAVING count(*) >= 6;

-- Compressors: bearing wear and overheating.
INSERT INTO alerts
SELECT device, "group" AS site, window_start, window_end,
       min(vibration) AS vibration_floor,
       avg(kurtosis) AS kurtosis,
       avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient) AS temperature_rise,
       avg(load) AS load,
       avg(motor_current) AS motor_current,
       avg(pressure) AS pressure,
       anomaly_score('compressor_gmm', min(vibration), avg(kurtosis), avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient),
                     avg(load), avg(motor_current), avg(pressure)) AS score,
       top_contributors('compressor_gmm', min(vibration), avg(kurtosis), avg(temperature) + 240 * regr_slope(temperature, date_part('epoch', ts)) - avg(ambient),
                        avg(load), avg(motor_current), avg(pressure)) AS explanation
FROM telemetry
WHERE device LIKE 'compressor-%' AND load > 0.3
GROUP BY tumble(interval '1 minute'), device, "group"
HAVING count(*) >= 6;
