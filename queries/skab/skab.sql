-- SKAB (Skoltech Anomaly Benchmark) water-pump test bench: window features for
-- `forewarn eval --protocol skab`, which trains a 'skab' model per file from this
-- query's anomaly_score arguments (no model file is shipped for it). Not part of the
-- demo (it lives in a subdirectory).
--
-- One reading per second from 8 sensors. Each second, the last 10 seconds are
-- summarised by the mean of each sensor, which smooths single-reading noise away.
-- The two temperature channels are left out: on this bench they drift for the
-- whole run (the water warms up), so a model trained on a file's first 400 seconds
-- would take the drift itself for an anomaly (see docs/models.md for the figures
-- with them). The column names are SKAB's, quoted because they have capitals and
-- spaces.

CREATE TABLE pump (
  "datetime" TIMESTAMP,
  "Accelerometer1RMS" DOUBLE,
  "Accelerometer2RMS" DOUBLE,
  "Current" DOUBLE,
  "Pressure" DOUBLE,
  "Temperature" DOUBLE,
  "Thermocouple" DOUBLE,
  "Voltage" DOUBLE,
  "Volume Flow RateRMS" DOUBLE,
  WATERMARK FOR "datetime" AS "datetime" - INTERVAL '1' SECOND
) WITH (connector = 'mqtt', topic = 'skab/pump', format = 'json');

CREATE TABLE pump_alerts WITH (connector = 'mqtt', topic = 'skab/alerts');

INSERT INTO pump_alerts
SELECT window_end,
       anomaly_score('skab',
         avg("Accelerometer1RMS"), avg("Accelerometer2RMS"), avg("Current"),
         avg("Pressure"), avg("Voltage"), avg("Volume Flow RateRMS")) AS score
FROM pump
GROUP BY hop(INTERVAL '1' SECOND, INTERVAL '10' SECOND)
HAVING count(*) >= 5;
