#!/usr/bin/env bash
# Forewarn beside DuckDB and (when installed) Flink on one workload: 10,000 devices, one
# reading a second each, mild disorder; per device 10 s tumbling windows of count(*),
# avg(vibration), max(temperature), stddev(current), watermark 5 s. Each engine runs on
# a 2M-reading and a 4M-reading file, Parquet and CSV, RUNS times, the engines taking
# turns; every run is a whole process timed by /usr/bin/time -v (start-up included).
# Prints the table of docs/benchmarks.md ("Peers on one workload") on stdout, progress
# on stderr.
#
#   benches/peers.sh                                   # builds target/release/forewarn
#   FOREWARN=path/to/forewarn RUNS=3 benches/peers.sh  # a given binary
#
# DuckDB is pip-installed into target/peers-venv (not a project dependency). Flink runs
# when a Python with PyFlink is there: FLINK_PYTHON, else target/peers-venv/bin/python,
# else python3 (`target/peers-venv/bin/pip install apache-flink`; needs Java 11 or 17).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
venv=target/peers-venv
data=target/peers-data
out=target/peers-out
mkdir -p "$data" "$out"

if [[ -z "${FOREWARN:-}" ]]; then
    cargo build --release --bin forewarn -q
    FOREWARN=target/release/forewarn
fi
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb >&2
py="$venv/bin/python"

flink_py=""
for p in "${FLINK_PYTHON:-}" "$py" python3; do
    if [[ -n "$p" ]] && "$p" -c 'import pyflink' 2>/dev/null; then flink_py=$p; break; fi
done

# ROWS and DEVICES (defaults 2000000, 10000) only to try the script on less data.
rows=${ROWS:-2000000}
devices=${DEVICES:-10000}
sizes=("$rows" $((2 * rows)))
for n in "${sizes[@]}"; do
    d=$data/$devices-$n
    if [[ ! -f $d/complete ]]; then
        "$py" benches/peers/gen.py "$n" "$devices" "$d" >&2
        # Flink's csv format cannot skip a header line.
        tail -n +2 "$d/readings.csv" >"$d/readings-noheader.csv"
        touch "$d/complete"
    fi
done

results=$out/results.tsv
: >"$results"
# One timed run: engine input rows run command... Records wall seconds and peak RSS (KiB).
timed() {
    local engine=$1 input=$2 n=$3 run=$4; shift 4
    local log=$out/$engine-$input-$n.log
    local status=ok
    /usr/bin/time -v -o "$out/time.txt" "$@" >"$log" 2>&1 || status=failed
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0;
        for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$out/time.txt")
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$out/time.txt")
    # Flink's JVM is not a child /usr/bin/time sees (flink_windows.py): add its peak.
    local jvm
    jvm=$(awk '/^jvm_peak_rss_kib/ { print $2 }' "$log")
    [[ -n $jvm ]] && rss=$((rss + jvm))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$engine" "$input" "$n" "$run" "$wall" "$rss" "$status" >>"$results"
    echo "  $engine $input $n run $run: ${wall} s, ${rss} KiB, $status" >&2
}

for run in $(seq "$runs"); do
    for n in "${sizes[@]}"; do
        for input in parquet csv; do
            f=$data/$devices-$n/readings.$input
            timed forewarn "$input" "$n" "$run" "$FOREWARN" replay --data "$f" \
                --queries benches/peers/query.sql --out "$out/forewarn-$input-$n.jsonl"
            timed duckdb "$input" "$n" "$run" "$py" benches/peers/duckdb_windows.py "$f" \
                "$out/duckdb-$input-$n.csv"
            if [[ -n "$flink_py" && $input == csv ]]; then
                rm -rf "$out/flink-$input-$n"
                timed flink "$input" "$n" "$run" "$flink_py" benches/peers/flink_windows.py \
                    "$PWD/$data/$devices-$n/readings-noheader.csv" "$PWD/$out/flink-$input-$n"
            fi
        done
    done
done

# Windows of the last run of each engine against Forewarn's from Parquet.
equal=$out/equal.tsv
: >"$equal"
for n in "${sizes[@]}"; do
    ref=$out/forewarn-parquet-$n.jsonl
    for other in forewarn-csv-$n.jsonl duckdb-parquet-$n.csv duckdb-csv-$n.csv flink-csv-$n; do
        [[ -e $out/$other ]] || continue
        verdict=$("$py" benches/peers/compare.py "$ref" "$out/$other" || true)
        IFS=- read -r engine input _ <<<"${other%.*}"
        printf '%s\t%s\t%s\t%s\n' "$engine" "$input" "$n" "$verdict" >>"$equal"
    done
done

flink_version=""
[[ -n "$flink_py" ]] && flink_version=$("$flink_py" -c 'import importlib.metadata as m; print(m.version("apache-flink"))')
"$py" benches/peers/table.py "$results" "$equal" \
    "$("$FOREWARN" --version)" "$("$py" -c 'import duckdb; print(duckdb.__version__)')" \
    "$flink_version" "$(tail -n 1 "$out/forewarn-parquet-${sizes[1]}.log")"
