# Readings for the peers benchmark (benches/peers.sh): DEVICES devices, one reading a
# second each, ROWS in all (ROWS / DEVICES seconds), with mild disorder: each row is
# written up to 2 s later in file order than its event time, never more, so a 5 s
# watermark finds none late. Writes OUT_DIR/readings.parquet and OUT_DIR/readings.csv
# with the same rows in the same order.
#
#   python gen.py ROWS DEVICES OUT_DIR      # e.g. 2000000 10000 target/peers-data/2m
import os
import sys

import duckdb

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
n_dev = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
out = sys.argv[3] if len(sys.argv) > 3 else "."
if rows % n_dev:
    sys.exit(f"ROWS ({rows}) must be a multiple of DEVICES ({n_dev})")
secs = rows // n_dev
os.makedirs(out, exist_ok=True)
con = duckdb.connect()
# Device d reports at second s, (d * 37) % 1000 ms into it; `ord` (the file order) adds
# 0 to 1999 ms, so a row follows rows up to 2 s newer than itself.
con.execute(f"""
CREATE TABLE r AS
SELECT printf('dev-%05d', d) AS device,
       make_timestamp(1764547200000000 + (s * 1000 + (d * 37) % 1000) * 1000) AS ts,
       round(1 + sin(d + s * 0.1) * 0.2 + hash(d * 100003 + s) % 1000 / 10000.0, 4) AS vibration,
       round(60 + (d % 17) + hash(s * 7 + d) % 100 / 50.0, 3) AS temperature,
       round(10 + hash(d * 31 + s * 17) % 1000 / 250.0, 3) AS current,
       s * 1000 + (d * 37) % 1000 + (hash(d * 13 + s) % 2000) AS ord
FROM range({n_dev}) t(d), range({secs}) u(s)
""")
parquet = os.path.join(out, "readings.parquet")
csv = os.path.join(out, "readings.csv")
con.execute(f"COPY (SELECT device, ts, vibration, temperature, current FROM r ORDER BY ord, device) TO '{parquet}' (FORMAT parquet)")
con.execute(f"COPY (SELECT device, strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS ts, vibration, temperature, current FROM r ORDER BY ord, device) TO '{csv}' (HEADER)")
print(f"{con.execute('select count(*) from r').fetchone()[0]} readings of {n_dev} devices over {secs} s in {parquet} and {csv}")
