# Compares one engine's windows of the peers workload with Forewarn's: the same
# (device, window_start) keys, equal counts, and avg / max / stddev equal within 1e-9
# relative (NULL only against NULL). Prints "yes" or "no (...)"; exit 1 on "no".
#
#   python compare.py FOREWARN.jsonl OTHER
#
# OTHER: Forewarn's `replay --out` JSON lines (.jsonl), DuckDB's CSV with a header
# (window_start in epoch ms), or a directory of Flink's CSV part files (no header,
# window_start as 'yyyy-MM-dd HH:mm:ss.SSS' UTC).
import csv
import json
import math
import os
import sys
from datetime import datetime, timezone


def ms(text):
    """Epoch milliseconds of an RFC 3339 / SQL timestamp text without zone or with Z."""
    text = text.strip().rstrip("Z").replace("T", " ")
    return round(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def num(v):
    return None if v in (None, "") else float(v)


def forewarn(path):
    rows = {}
    with open(path) as f:
        for line in f:
            p = json.loads(line)["payload"]
            x = p["features"]
            rows[(p["device"], ms(p["window_start"]))] = (
                int(x["n"]), num(x.get("avg_vibration")), num(x.get("max_temperature")),
                num(x.get("stddev_current")))
    return rows


def duckdb(path):
    with open(path) as f:
        return {(r["device"], int(r["window_start"])): (
            int(r["n"]), num(r["avg_vibration"]), num(r["max_temperature"]), num(r["stddev_current"]))
            for r in csv.DictReader(f)}


def flink(directory):
    rows = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith("."):
                continue  # in-progress files and checksums
            with open(os.path.join(root, name)) as f:
                for device, start, n, a, m, s in csv.reader(f):
                    rows[(device, ms(start))] = (int(n), num(a), num(m), num(s))
    return rows


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def main():
    ref = forewarn(sys.argv[1])
    other_path = sys.argv[2]
    if os.path.isdir(other_path):
        other = flink(other_path)
    elif other_path.endswith(".jsonl"):
        other = forewarn(other_path)
    else:
        other = duckdb(other_path)
    missing = ref.keys() - other.keys()
    extra = other.keys() - ref.keys()
    differ = [k for k in ref.keys() & other.keys()
              if ref[k][0] != other[k][0] or not all(close(a, b) for a, b in zip(ref[k][1:], other[k][1:]))]
    if not missing and not extra and not differ:
        print(f"yes ({len(ref)} windows)")
        return 0
    example = differ[:1] and f", e.g. {differ[0]}: {ref[differ[0]]} vs {other[differ[0]]}"
    print(f"no ({len(ref)} vs {len(other)} windows: {len(missing)} missing, {len(extra)} extra, "
          f"{len(differ)} differ{example or ''})")
    return 1


sys.exit(main())
