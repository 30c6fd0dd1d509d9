# The peers workload's windows on DuckDB, single-threaded, as one batch GROUP BY over the
# whole file (a batch engine needs no watermark; none of the readings is late under 5 s).
#
#   python duckdb_windows.py INPUT(.parquet|.csv) OUT.csv
import sys

import duckdb

inp, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads = 1")
if inp.endswith(".parquet"):
    src = f"read_parquet('{inp}')"
else:
    src = (f"read_csv('{inp}', header = true, columns = {{'device': 'VARCHAR', 'ts': 'TIMESTAMP', "
           "'vibration': 'DOUBLE', 'temperature': 'DOUBLE', 'current': 'DOUBLE'})")
# stddev is stddev_samp in DuckDB, as in DataFusion; window_start in epoch milliseconds.
con.execute(f"""
COPY (
  SELECT device, epoch_ms(time_bucket(INTERVAL '10 seconds', ts)) AS window_start,
         count(*) AS n, avg(vibration) AS avg_vibration, max(temperature) AS max_temperature,
         stddev(current) AS stddev_current
  FROM {src}
  GROUP BY ALL
) TO '{out}' (HEADER)
""")
