-- Plant health: one multivariate anomaly model per machine kind, scored on
-- one-minute event-time windows of each running machine.
--
-- The features are chosen to see through normal operation: the vibration floor
-- (min over the window) ignores start-up transients; temperature is taken as the
-- rise over ambient, and load, current and pressure go in beside it, so the model
-- learns what temperature and pressure a given load should give.
--
-- A casing follows a change of load with a thermal lag of about four minutes, so
-- right after a load step its temperature says little about the new load. The
-- temperature it is heading for is the window's mean plus the lag times its slope
-- (a first-order lag: T_final = T + tau * dT/dt, tau = 240 s); that estimate, not the
-- lagging reading, is compared with the load, and an overheating machine shows
-- minutes earlier.

CREATE TABLE telemetry (
  site TEXT,
  line TEXT,
  device TEXT,
  ts TIMESTAMP,
  vibration DOUBLE,     -- vibration velocity RMS, mm/s
  kurtosis DOUBLE,      -- kurtosis of the vibration signal (3 = healthy)
  temperature DOUBLE,   -- casing / bearing temperature, degC
  motor_current DOUBLE, -- A
  pressure DOUBLE,      -- discharge pressure, bar
  load DOUBLE,          -- 0..1, from the controller
  ambient DOUBLE,       -- site ambient temperature, degC
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
  connector = 'mqtt',
  topic = 'plant/+/+/+/telemetry',
  topic_template = 'plant/{site}/{line}/{device}/telemetry',
  format = 'json',
  -- One watermark per machine: a machine whose clock runs ahead cannot make the rest
  -- of the fleet's readings late, and one that stops cannot hold windows open.
  watermark_key = 'device',
  -- A reading more than 10 minutes ahead of the newest one (a clock that jumped) is
  -- dead-lettered as future_timestamp instead of moving time on for its machine.
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
SELECT device, site, window_start, window_end,
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
GROUP BY tumble(interval '1 minute'), device, site
HAVING count(*) >= 6;

-- Motors: bearing wear and overheating (no pressure sensor).
INSERT INTO alerts
SELECT device, site, window_start, window_end,
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
GROUP BY tumble(interval '1 minute'), device, site
HAVING count(*) >= 6;

-- Compressors: bearing wear and overheating.
INSERT INTO alerts
SELECT device, site, window_start, window_end,
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
GROUP BY tumble(interval '1 minute'), device, site
HAVING count(*) >= 6;
