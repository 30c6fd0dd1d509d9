-- Numenta Anomaly Benchmark: one value per row, about every 5 minutes. For
-- `forewarn eval --protocol nab`, which replays each file as its own device. Not part
-- of the demo (it lives in a subdirectory).
--
-- The canonical shape of an online rule (docs/models.md): windows of the series, the
-- features selected by name, and a sink that learns each device as it streams. Nothing
-- here is tuned for NAB: the sink uses the documented defaults.

CREATE TABLE series (
  "timestamp" TIMESTAMP,
  value DOUBLE,
  WATERMARK FOR "timestamp" AS "timestamp"
) WITH (connector = 'mqtt', topic = 'nab/series', format = 'json');

CREATE TABLE alerts WITH (
  connector = 'mqtt',
  topic = 'nab/alerts',
  detector = 'online'
);

INSERT INTO alerts
SELECT window_start, window_end, avg(value) AS value
FROM series
GROUP BY tumble(INTERVAL '5' MINUTE);
