-- A pump's vibration against the ISO 10816 boundary of zone C (4.5 mm/s RMS for a
-- class II machine): a minute's mean above it raises a warning after two minutes in
-- a row, above 1.6 times it (7.1 mm/s, zone D) an alarm.

CREATE TABLE registers (
  device TEXT,
  ts TIMESTAMP,
  vibration DOUBLE,    -- mm/s RMS, from holding register 40001 (x 0.01)
  temperature DOUBLE,  -- bearing, degC, from holding register 40002 (x 0.1)
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
  -- The gateway pushes the readings itself, by the table's name.
  connector = 'channel',
  watermark_key = 'device'
);

CREATE TABLE pump_alerts WITH (
  connector = 'channel',
  warning_at = '1.0',
  alarm_at = '1.6',
  clear_below = '0.8',
  raise_after = '2',
  clear_after = '3'
);

INSERT INTO pump_alerts
SELECT device, window_start,
       avg(vibration) / 4.5 AS score,
       avg(vibration) AS vibration,
       max(temperature) AS temperature
FROM registers
GROUP BY tumble(interval '1 minute'), device;
