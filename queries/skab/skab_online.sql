-- SKAB with an online detector: the same features as skab.sql (10 s means of six
-- channels, every second), scored by the sink's `online` detector, which learns each
-- run from its own first minute and keeps learning as it goes. For
-- `forewarn eval --protocol skab`, which then runs this rule as deployed on each file.
--
-- One setting for the whole corpus: SKAB's runs are short bench experiments, so the
-- threshold is given as a surprise (warning_at) rather than as a monthly rate, and one
-- window at or above it raises.

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

CREATE TABLE pump_alerts WITH (
  connector = 'mqtt',
  topic = 'skab/alerts',
  detector = 'online',
  warning_at = '3',
  raise_after = '1'
);

INSERT INTO pump_alerts
SELECT window_start, window_end,
       avg("Accelerometer1RMS") AS acc1, avg("Accelerometer2RMS") AS acc2,
       avg("Current") AS current, avg("Pressure") AS pressure,
       avg("Voltage") AS voltage, avg("Volume Flow RateRMS") AS flow
FROM pump
GROUP BY hop(INTERVAL '1' SECOND, INTERVAL '10' SECOND)
HAVING count(*) >= 5;
