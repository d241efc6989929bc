#!/usr/bin/env bash
# Per-call overhead of the seccomp+ptrace fallback, against strace on the same loop.
#
#   bench/ptrace.sh [N] [REPS]       (defaults: N=20000 calls, REPS=7)
#
# One static program (bench/loop.c) makes N openat calls of an existing file (each
# followed by a close, which nobody stops) and, as a control, N getppid calls, which
# neither HERMES's filter nor `strace --seccomp-bpf -e trace=openat` stops. Each loop
# runs natively, under `hermes launch` (a policy that watches opens and allows every
# one, no --trace), under `strace -f --seccomp-bpf` and under plain `strace -f`; and
# under `hermes launch` with a policy that watches only connects, whose openat calls
# still stop in the tracer (the filter is fixed) but are not sent to the broker: the
# tracer's own share of the cost.
# The runners take turns within each repetition, so drift in a noisy machine hits
# them alike; the table gives medians. The loop times itself (start-up of the broker
# or of strace is not in it): per-call overhead is (t - native) / N, and every figure
# is a ratio against the native run and strace --seccomp-bpf of the same run.
#
# Every runner runs twice per repetition: free to use every CPU, and pinned to one
# CPU (taskset -c 0). Tracing is a ping-pong between processes; on a small VM a
# wake-up on another CPU can cost more than the work, so the two rows can differ a lot.
#
# Environment: HERMES=path/to/hermes (default: a release build, built here);
# CC (default gcc). Writes the table to stdout and to bench/results/ptrace.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${1:-20000}
REPS=${2:-7}
CC=${CC:-gcc}

if [[ -z "${HERMES:-}" ]]; then
    cargo build --release --quiet -p hermes-launcher
    HERMES=target/release/hermes
fi
command -v strace >/dev/null || { echo "bench/ptrace.sh needs strace" >&2; exit 1; }

mkdir -p target/bench bench/results
LOOP=target/bench/loop
"$CC" -O2 -static -o "$LOOP" bench/loop.c

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
FILE="$work/file"
echo data >"$FILE"
POLICY="$work/policy.lua"
# Watching opens (so every openat stops in the tracer and is asked about), allowing all.
echo 'function on_open(ev) end' >"$POLICY"
UNWATCHED="$work/unwatched.lua"
echo 'function on_connect(ev) end' >"$UNWATCHED"

RUNNERS=(native hermes hermes-unwatched strace-seccomp strace)
LOOPS=(openat getppid)

CPUS=(all one)

run() { # cpus runner loop -> prints "loop_ns wall_ns"
    local cpus=$1 runner=$2 loop=$3 args start out end pin=()
    if [[ $loop == openat ]]; then args=(openat "$N" "$FILE"); else args=(getppid "$N"); fi
    if [[ $cpus == one ]]; then pin=(taskset -c 0); fi
    start=$(date +%s%N)
    case $runner in
        native) out=$("${pin[@]}" "$LOOP" "${args[@]}") ;;
        hermes) out=$("${pin[@]}" "$HERMES" launch --policy "$POLICY" -- "$LOOP" "${args[@]}") ;;
        hermes-unwatched) out=$("${pin[@]}" "$HERMES" launch --policy "$UNWATCHED" -- "$LOOP" "${args[@]}") ;;
        strace-seccomp) out=$("${pin[@]}" strace -f -qq -o /dev/null --seccomp-bpf -e trace=openat "$LOOP" "${args[@]}") ;;
        strace) out=$("${pin[@]}" strace -f -qq -o /dev/null -e trace=openat "$LOOP" "${args[@]}") ;;
    esac
    end=$(date +%s%N)
    echo "$out $((end - start))"
}

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A LOOP_NS WALL_NS
for ((rep = 0; rep < REPS; rep++)); do
    for cpus in "${CPUS[@]}"; do
        for loop in "${LOOPS[@]}"; do
            for runner in "${RUNNERS[@]}"; do
                read -r l w < <(run "$cpus" "$runner" "$loop")
                LOOP_NS[$cpus,$runner,$loop]+="$l "
                WALL_NS[$cpus,$runner,$loop]+="$w "
            done
        done
    done
    echo "repetition $((rep + 1))/$REPS done" >&2
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

table() {
    echo "## ptrace fallback: per-call overhead ($(date -u +%Y-%m-%d))"
    echo
    echo "N = $N calls per loop, median of $REPS repetitions, all in one run;" \
        "$(nproc) CPUs (load average $LOAD at the start), Linux $(uname -r), $(strace -V | head -1)."
    echo "Loop time is measured by the program around its loop; wall time includes start-up."
    echo
    echo "| CPUs | loop | runner | loop time (ms) | wall time (ms) | overhead per call (µs) | × native | × strace --seccomp-bpf |"
    echo "|---|---|---|---:|---:|---:|---:|---:|"
    for cpus in "${CPUS[@]}"; do
        for loop in "${LOOPS[@]}"; do
            local native strace_bpf
            native=$(median <<<"${LOOP_NS[$cpus,native,$loop]}")
            strace_bpf=$(median <<<"${LOOP_NS[$cpus,strace-seccomp,$loop]}")
            for runner in "${RUNNERS[@]}"; do
                local t w
                t=$(median <<<"${LOOP_NS[$cpus,$runner,$loop]}")
                w=$(median <<<"${WALL_NS[$cpus,$runner,$loop]}")
                awk -v c="$cpus" -v loop="$loop" -v r="$runner" -v t="$t" -v w="$w" -v nat="$native" -v sb="$strace_bpf" \
                    -v n="$N" 'BEGIN {
                        name = r == "strace-seccomp" ? "strace -f --seccomp-bpf" : r == "strace" ? "strace -f" : \
                            r == "hermes-unwatched" ? "hermes, opens not watched (tracer only)" : r
                        printf "| %s | %s | %s | %.1f | %.1f | %.2f | %.2f | %.2f |\n", c == "one" ? "1 (taskset)" : "all",
                            loop, name, t / 1e6, w / 1e6, (t - nat) / n / 1e3, t / nat, t / sb
                    }'
            done
        done
    done
}

table | tee bench/results/ptrace.md
