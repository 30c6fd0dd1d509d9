#!/usr/bin/env bash
# Regenerates every measured figure in docs/benchmarks.md: runs each benchmark in the
# release profile and replaces the text between its <!-- BEGIN name --> and
# <!-- END name --> markers with the output of this run, stamped with the machine.
#
#   benches/regenerate.sh            # all of them (44 min here; the library-only gateway
#                                    # build compiles DataFusion a second time)
#   benches/regenerate.sh decode     # just one: decode waveform dsp scoring online windowed memory e2e scale_out footprint peers
#
# Needs mosquitto for e2e and nats-server for scale_out (apt-get install mosquitto nats-server);
# peers pip-installs DuckDB into target/peers-venv and runs Flink only when PyFlink is there.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=docs/benchmarks.md
only="${1:-}"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
stamp="$(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $(free -g | awk '/Mem:/{print $2}') GiB"

run() { # name command...
    local name=$1; shift
    [[ -n "$only" && "$only" != "$name" ]] && return 0
    echo "== $name: $*" >&2
    local out
    out=$("$@" 2>/dev/null)
    echo "$out" >&2
    local block
    block=$(printf '%s\n```text\n$ %s\n%s\n```\n' "Measured $stamp:" "$*" "$out")
    BLOCK="$block" NAME="$name" perl -0pi -e \
        's/(<!-- BEGIN $ENV{NAME} -->\n).*?(<!-- END $ENV{NAME} -->)/$1$ENV{BLOCK}\n$2/s' "$doc"
}

footprint() {
    cargo build --release --bin forewarn -q
    # Built alone, so forewarn has only the features the example asks for (none).
    cargo build --release -p pump-gateway -q
    local full gw
    full=$(stat -c %s target/release/forewarn)
    gw=$(stat -c %s target/release/pump-gateway)
    strip -o /tmp/fw-stripped target/release/forewarn
    strip -o /tmp/gw-stripped target/release/pump-gateway
    mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
    printf '%-56s %8s %10s\n' "binary" "MiB" "stripped"
    printf '%-56s %8s %10s\n' "forewarn (CLI, embedded broker, MQTT, history, plots)" \
        "$(mib "$full")" "$(mib "$(stat -c %s /tmp/fw-stripped)")"
    printf '%-56s %8s %10s\n' "pump-gateway example (library only, default features off)" \
        "$(mib "$gw")" "$(mib "$(stat -c %s /tmp/gw-stripped)")"
    rm -f /tmp/fw-stripped /tmp/gw-stripped
}

cargo bench --no-run -q 2>/dev/null
run decode cargo bench -q --bench decode
run waveform cargo bench -q --bench waveform
run dsp cargo bench -q -p forewarn-dsp
run scoring cargo bench -q --bench scoring
run online cargo bench -q -p forewarn-scorer --bench online
run windowed cargo bench -q --bench windowed -- 10000 2000000 tumble
run hop cargo bench -q --bench windowed -- 10000 2000000 hop
run memory cargo bench -q --bench memory
run e2e cargo bench -q --bench e2e
run scale_out cargo bench -q --bench scale_out
run footprint footprint
run peers benches/peers.sh
