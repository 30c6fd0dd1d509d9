-- The simulated plant with online detection: no model files, each machine learns its
-- own normal from its first five minutes of windows and keeps learning slowly. Run it
-- with `forewarn demo --queries queries/online/plant_online.sql`. Not part of the
-- shipped demo (it lives in a subdirectory).
--
-- Readings every 5 s: one-minute windows sliding every 5 s (12 readings, at least 6
-- present), the features of queries/plant_health.sql, and one sink per machine kind so
-- each kind keeps its own feature set.

CREATE TABLE telemetry (
  site TEXT, line TEXT, device TEXT, ts TIMESTAMP,
  vibration DOUBLE, kurtosis DOUBLE, temperature DOUBLE, motor_current DOUBLE,
  pressure DOUBLE, load DOUBLE, ambient DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
  connector = 'mqtt',
  topic = 'plant/+/+/+/telemetry',
  topic_template = 'plant/{site}/{line}/{device}/telemetry',
  format = 'json',
  watermark_key = 'device',
  max_future = '10 minutes'
);

CREATE TABLE alerts WITH (
  connector = 'mqtt',
  topic = 'forewarn/alerts/{device}',
  detector = 'online'
);

INSERT INTO alerts
SELECT device, window_start, window_end,
       min(vibration) AS vibration_floor, avg(kurtosis) AS kurtosis,
       avg(temperature) - avg(ambient) AS temperature_rise,
       avg(motor_current) / avg(load) AS current_per_load,
       avg(pressure) / avg(load) AS pressure_per_load
FROM telemetry
WHERE load > 0.3
GROUP BY hop(INTERVAL '5' SECOND, INTERVAL '1' MINUTE), device
HAVING count(*) >= 6;
