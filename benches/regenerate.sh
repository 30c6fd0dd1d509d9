#!/usr/bin/env bash
# Regenerates every measured figure in docs/benchmarks.md: runs each benchmark in the
# release profile and replaces the text between its <!-- BEGIN name --> and
# <!-- END name --> markers with the output of this run, stamped with the machine.
#
#   benches/regenerate.sh            # all of them (44 min here before footprint compiled
#                                    # DataFusion cold in both release and the fat-LTO
#                                    # gateway profile, and before peers: far longer now)
#   benches/regenerate.sh decode     # just one: decode waveform dsp scoring online windowed windowed-10 windowed-100 windowed-1000 hop memory e2e scale_out footprint peers
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
    # Cold builds in a target directory of their own (removed afterwards), so the build
    # times are comparable: per profile, the first binary compiles the dependencies and
    # the second reuses them (its time is mostly its own link, with LTO the whole
    # program's optimisation). The gateway profile strips; release is stripped after.
    local dir=target/footprint
    rm -rf "$dir"
    mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
    printf '%-44s %-8s %9s %8s\n' "binary" "profile" "stripped" "build"
    local profile what args bin out secs
    # gateway-abort: the gateway profile with panic = "abort" (its own dependency build).
    for profile in release gateway gateway-abort; do
        # pump-gateway built alone, so forewarn has only the features it asks for (none).
        for what in "pump-gateway example (library only)|-p pump-gateway|pump-gateway" \
            "forewarn CLI (default features)|--bin forewarn|forewarn"; do
            IFS='|' read -r label args bin <<<"$what"
            /usr/bin/time -f %e -o /tmp/footprint-secs env CARGO_TARGET_DIR="$dir" \
                cargo build -q --profile "$profile" $args >/dev/null 2>&1
            secs=$(cat /tmp/footprint-secs)
            out=$dir/$profile/$bin
            strip -o /tmp/footprint-stripped "$out"
            printf '%-44s %-8s %8s M %6.0f s\n' "$label" "$profile" \
                "$(mib "$(stat -c %s /tmp/footprint-stripped)")" "$secs"
        done
    done
    rm -f /tmp/footprint-stripped /tmp/footprint-secs
    rm -rf "$dir"
}

cargo bench --no-run -q 2>/dev/null
run decode cargo bench -q --bench decode
run waveform cargo bench -q --bench waveform
run dsp cargo bench -q -p forewarn-dsp
run scoring cargo bench -q --bench scoring
run online cargo bench -q -p forewarn-scorer --bench online
run windowed cargo bench -q --bench windowed -- 10000 2000000 tumble
# The fixed cost per window shows with few devices (issue 22's target: all four sizes).
run windowed-10 cargo bench -q --bench windowed -- 10 2000000 tumble
run windowed-100 cargo bench -q --bench windowed -- 100 2000000 tumble
run windowed-1000 cargo bench -q --bench windowed -- 1000 2000000 tumble
run hop cargo bench -q --bench windowed -- 10000 2000000 hop
run memory cargo bench -q --bench memory
run e2e cargo bench -q --bench e2e
run scale_out cargo bench -q --bench scale_out
run footprint footprint
run peers benches/peers.sh
