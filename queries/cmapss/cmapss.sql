-- NASA C-MAPSS turbofan fleet (FD001): one row per engine and operating cycle, 21
-- sensors. For `forewarn eval --protocol cmapss`, which streams each engine as a
-- device, one cycle an hour. Not part of the demo (it lives in a subdirectory).
--
-- Each hour, the mean of every sensor over the engine's last 10 cycles: averaging
-- takes the sensor noise down so that slow wear shows. Every sensor goes in; the
-- detector learns each engine's own normal from its first windows, and sensors that
-- never move (several in FD001) cost nothing.

CREATE TABLE cycles (
  unit BIGINT, cycle BIGINT, ts TIMESTAMP,
  op1 DOUBLE, op2 DOUBLE, op3 DOUBLE,
  s1 DOUBLE, s2 DOUBLE, s3 DOUBLE, s4 DOUBLE, s5 DOUBLE, s6 DOUBLE, s7 DOUBLE,
  s8 DOUBLE, s9 DOUBLE, s10 DOUBLE, s11 DOUBLE, s12 DOUBLE, s13 DOUBLE, s14 DOUBLE,
  s15 DOUBLE, s16 DOUBLE, s17 DOUBLE, s18 DOUBLE, s19 DOUBLE, s20 DOUBLE, s21 DOUBLE,
  WATERMARK FOR ts AS ts
) WITH (connector = 'mqtt', topic = 'cmapss/cycles', format = 'json');

CREATE TABLE alerts WITH (
  connector = 'mqtt',
  topic = 'cmapss/alerts/{unit}',
  detector = 'online'
);

INSERT INTO alerts
SELECT unit, window_start, window_end,
       avg(s1) AS s1, avg(s2) AS s2, avg(s3) AS s3, avg(s4) AS s4, avg(s5) AS s5,
       avg(s6) AS s6, avg(s7) AS s7, avg(s8) AS s8, avg(s9) AS s9, avg(s10) AS s10,
       avg(s11) AS s11, avg(s12) AS s12, avg(s13) AS s13, avg(s14) AS s14,
       avg(s15) AS s15, avg(s16) AS s16, avg(s17) AS s17, avg(s18) AS s18,
       avg(s19) AS s19, avg(s20) AS s20, avg(s21) AS s21
FROM cycles
GROUP BY hop(INTERVAL '1' HOUR, INTERVAL '10' HOUR), unit
HAVING count(*) >= 10;
