# Prints the peers table from benches/peers.sh's measurements.
#
#   python table.py RESULTS.tsv EQUAL.tsv FOREWARN_VERSION DUCKDB_VERSION FLINK_VERSION REPLAY_LINE
#
# RESULTS.tsv: engine, input, rows, run, wall seconds, peak RSS KiB, ok|failed.
# EQUAL.tsv: engine, input, rows, verdict of compare.py against Forewarn's Parquet windows.
import csv
import statistics
import sys

results, equal_path, fw_version, duck_version, flink_version, replay_line = sys.argv[1:7]
runs = {}
failed = set()
for engine, inp, n, _run, wall, rss, status in csv.reader(open(results), delimiter="\t"):
    key = (engine, inp, int(n))
    if status != "ok":
        failed.add(key)
    runs.setdefault(key, []).append((float(wall), int(rss)))
SMALL, LARGE = min(n for _, _, n in runs), max(n for _, _, n in runs)
S, L = (f"{n / 1e6:g}M" for n in (SMALL, LARGE))
equal = {}
for engine, inp, n, verdict in csv.reader(open(equal_path), delimiter="\t"):
    equal.setdefault((engine, inp), []).append(verdict)


def median_wall(key):
    return statistics.median(w for w, _ in runs[key]) if key in runs else None


def min_wall(key):
    return min(w for w, _ in runs[key]) if key in runs else None


def steady(engine, inp, wall=median_wall):
    """Extra readings per extra second from the 2M to the 4M file (medians, or `wall`)."""
    a, b = wall((engine, inp, SMALL)), wall((engine, inp, LARGE))
    if a is None or b is None or b <= a:
        return None
    return (LARGE - SMALL) / (b - a)


def walls(key):
    if key not in runs:
        return "-"
    w = [x for x, _ in runs[key]]
    return f"{min(w):.2f} / {statistics.median(w):.2f}"


def peak_mb(key):
    return max(r for _, r in runs[key]) * 1024 / 1e6 if key in runs else None


def same(engine, inp):
    if engine == "forewarn" and inp == "parquet":
        return "reference"
    v = equal.get((engine, inp))
    if not v:
        return "not compared"
    if all(x.startswith("yes") for x in v):
        return "yes"
    return "no: " + "; ".join(x for x in v if not x.startswith("yes"))


names = {"forewarn": f"Forewarn replay ({fw_version.split()[-1]})",
         "duckdb": f"DuckDB {duck_version}, 1 thread",
         "flink": f"Flink {flink_version}, parallelism 1"}
print(f"{'engine':<34} {'input':<8} {f'wall {S} min/med':>16} {f'wall {L} min/med':>16} "
      f"{'steady rate':>13} {f'peak RSS {L}':>12}  windows equal")
for engine in ("forewarn", "duckdb", "flink"):
    for inp in ("parquet", "csv"):
        name = names[engine]
        if engine == "flink" and not flink_version:
            print(f"{'Flink, parallelism 1':<34} {inp:<8} not installed")
            continue
        if engine == "flink" and inp == "parquet":
            print(f"{name:<34} {inp:<8} not run (the PyFlink package ships no Parquet format)")
            continue
        rate = steady(engine, inp)
        rss = peak_mb((engine, inp, LARGE))
        note = " (failed runs)" if any((engine, inp, n) in failed for n in (SMALL, LARGE)) else ""
        print(f"{name:<34} {inp:<8} {walls((engine, inp, SMALL)) + ' s':>16} "
              f"{walls((engine, inp, LARGE)) + ' s':>16} "
              f"{(f'{rate / 1e6:.2f} M/s' if rate else 'n/a'):>13} "
              f"{(f'{rss:.1f} MB' if rss else '-'):>12}  {same(engine, inp)}{note}")

print()


def steady_ratio(label, engine, inp, target):
    """Forewarn's steady rate over `engine`'s, from the median walls and from the
    minimum walls: one slow run of three moves either, so the target is met only when
    both meet it."""
    both = []
    for wall in (median_wall, min_wall):
        num, den = steady("forewarn", inp, wall), steady(engine, inp, wall)
        both.append(num / den if num and den else None)
    if None in both:
        print(f"{label}: n/a (target >= {target})")
        return
    met = min(both) >= target
    print(f"{label}: {both[0]:.2f} from the medians, {both[1]:.2f} from the minimums "
          f"(target >= {target}: {'met' if met else 'missed'})")


steady_ratio("Forewarn / DuckDB steady rate, Parquet", "duckdb", "parquet", 0.5)
steady_ratio("Forewarn / DuckDB steady rate, CSV", "duckdb", "csv", 0.5)
if flink_version:
    steady_ratio("Forewarn / Flink steady rate, CSV", "flink", "csv", 5)
else:
    print("Forewarn / Flink steady rate, CSV: n/a, Flink not installed (target >= 5)")
for inp in ("parquet", "csv"):
    rss = peak_mb(("forewarn", inp, LARGE))
    if rss is not None:
        print(f"Forewarn peak RSS, {L} {inp}: {rss:.1f} MB (target <= 150 MB: {'met' if rss <= 150 else 'missed'})")
print(f"Forewarn, last {L} Parquet run: {replay_line}")
