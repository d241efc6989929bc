#!/usr/bin/env bash
# What --strict costs on top of the preload, on the same dynamic open loop, in one run.
#
#   bench/strict.sh [N] [REPS]       (defaults: N=20000 opens, REPS=7)
#
# bench/open_loop.c opens an existing file N times through libc. Runners, taking
# turns within each repetition: native; `hermes launch` (preload only) with a policy
# that watches opens and allows them; the same with --strict (the seccomp filter and
# the tracer beside the preload: the preload's own, already mediated, syscalls carry
# the run's cookie and are not stopped); and --strict with a policy that watches no
# open (the hook's flag test plus the filter's cost). The loop times itself, so
# start-up stays out. Goal (issue 4): --strict within 1.5x of preload-only.
#
# Environment: HERMES=path/to/hermes (default: a release build, built here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${1:-20000}
REPS=${2:-7}
source bench/release_hermes.sh
release_hermes "$PWD"
mkdir -p target/bench bench/results
LOOP=target/bench/open_loop
gcc -O2 -o "$LOOP" bench/open_loop.c
FILE=$(mktemp)
echo data >"$FILE"
WATCH=$(mktemp --suffix=.lua)
echo 'function on_open(ev) return hermes.allow() end' >"$WATCH"
QUIET=$(mktemp --suffix=.lua)
echo 'function on_connect(ev) end' >"$QUIET"
trap 'rm -f "$FILE" "$WATCH" "$QUIET"' EXIT

declare -A T
runners=(native preload strict strict-unwatched)
run() {
    case $1 in
        native) "$LOOP" "$N" "$FILE" ;;
        preload) "$HERMES" launch --policy "$WATCH" -- "$LOOP" "$N" "$FILE" ;;
        strict) "$HERMES" launch --strict --policy "$WATCH" -- "$LOOP" "$N" "$FILE" ;;
        strict-unwatched) "$HERMES" launch --strict --policy "$QUIET" -- "$LOOP" "$N" "$FILE" ;;
    esac
}
for ((r = 0; r < REPS; r++)); do
    for name in "${runners[@]}"; do
        T[$name]+="$(run "$name" | tail -n 1) "
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
native=$(median <<<"${T[native]}")
preload=$(median <<<"${T[preload]}")
{
    echo "## --strict against preload-only: dynamic open loop ($(date +%F))"
    echo
    echo "N = $N libc open+close per loop, median of $REPS repetitions, one run; $(nproc) CPUs, $(uname -r)."
    echo
    echo "| runner | loop time (ms) | per open (µs) | overhead per open (µs) | × native | × preload-only |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${runners[@]}"; do
        t=$(median <<<"${T[$name]}")
        awk -v n="$name" -v t="$t" -v nat="$native" -v pre="$preload" -v N="$N" 'BEGIN {
            printf "| %s | %.1f | %.2f | %.2f | %.2f | %.2f |\n", n, t/1e6, t/N/1e3, (t-nat)/N/1e3, t/nat, t/pre }'
    done
} | tee bench/results/strict.md
