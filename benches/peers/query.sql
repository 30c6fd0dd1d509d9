-- The peers workload of docs/benchmarks.md ("Peers on one workload"): per device, 10 s
-- tumbling windows over readings 1 s apart with up to 2 s of disorder, watermark 5 s.
-- benches/peers.sh runs it with `forewarn replay` and the same windows on DuckDB and
-- (when installed) Flink, and compares the results.
CREATE TABLE readings (
  device TEXT,
  ts TIMESTAMP,
  vibration DOUBLE,
  temperature DOUBLE,
  current DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  connector = 'mqtt',
  topic = 'bench/+',
  topic_template = 'bench/{device}',
  format = 'json'
);

CREATE TABLE windows WITH (connector = 'mqtt', topic = 'bench/windows/{device}');

INSERT INTO windows
SELECT device, window_start, window_end,
       count(*) AS n,
       avg(vibration) AS avg_vibration,
       max(temperature) AS max_temperature,
       stddev(current) AS stddev_current
FROM readings
GROUP BY tumble(interval '10 seconds'), device;
