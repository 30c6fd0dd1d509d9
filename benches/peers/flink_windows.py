# The peers workload's windows on Flink (PyFlink Table API, local mini-cluster), streaming
# mode, parallelism 1: event-time TUMBLE windows with a 5 s watermark over the CSV file,
# written as CSV part files into OUT_DIR.
#
#   python flink_windows.py INPUT.csv OUT_DIR
#
# Flink's csv format has no header option, so INPUT is the readings CSV without its
# header line (benches/peers.sh makes one beside the file).
#
# The job runs in a JVM this process starts and does not wait for, so /usr/bin/time's
# peak RSS misses it: the JVM's own peak (VmHWM) is printed last, as
# `jvm_peak_rss_kib N`, for benches/peers.sh to add.
import sys

from pyflink.java_gateway import get_gateway
from pyflink.table import EnvironmentSettings, TableEnvironment

inp, out = sys.argv[1], sys.argv[2]
t = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
t.get_config().set("parallelism.default", "1")
t.get_config().set("table.local-time-zone", "UTC")
t.execute_sql(f"""
CREATE TABLE readings (
  device STRING,
  ts_text STRING,
  vibration DOUBLE,
  temperature DOUBLE,
  `current` DOUBLE,
  ts AS TO_TIMESTAMP(ts_text, 'yyyy-MM-dd''T''HH:mm:ss.SSS''Z'''),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{inp}', 'format' = 'csv')
""")
t.execute_sql(f"""
CREATE TABLE windows (
  device STRING, window_start STRING, n BIGINT,
  avg_vibration DOUBLE, max_temperature DOUBLE, stddev_current DOUBLE
) WITH ('connector' = 'filesystem', 'path' = '{out}', 'format' = 'csv')
""")
t.execute_sql("""
INSERT INTO windows
SELECT device, CAST(window_start AS STRING), count(*), avg(vibration), max(temperature),
       stddev_samp(`current`)
FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, device
""").wait()

pid = get_gateway().jvm.java.lang.ProcessHandle.current().pid()
with open(f"/proc/{pid}/status") as f:
    hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
print(f"jvm_peak_rss_kib {hwm}")
