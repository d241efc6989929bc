#!/usr/bin/env bash
# What one exec'd image costs under HERMES, step by step: where the fork + exec target's
# time goes on the child's side.
#
#   bench/exec_cost.sh [ROUNDS] [N]      (defaults: 7 rounds of 300 fork + exec each)
#
# A harness outside HERMES (bench/exec_cost.c) forks and execs a child N times per round
# with one environment after another, taking turns, and reports the median time of one
# fork + exec + wait and the child's page faults. The environments are taken from a live
# session (`hermes launch` with a policy that observes every open), so the child finds a
# real broker and board:
#   native          /bin/true, no LD_PRELOAD
#   empty preload   /bin/true with a C library whose constructor does nothing: the
#                   dynamic loader's share of any preload
#   hermes, no hooks  /bin/true with the preload, HERMES_INLINE=0: loading our library
#                   and reading the configuration, the board mapped, no inline patch
#   hermes          /bin/true with the preload as `hermes launch` sets it up
#   one open        the harness itself with no arguments, which opens one file, natively
#                   and under the preload: the price of a process's first observed call
#                   (its connection, its ring, its exit's flush) comes out as the
#                   difference of the two differences
# and the constructor's own split (HERMES_DEBUG_HOOKS=1: configuration, board, hooks),
# median over N runs of /bin/true.
#
# The parent's side of a fork + exec under HERMES (a preloaded parent forks a larger
# address space, and its exec hook builds the child's environment) is not here: the
# forkexec rows of bench/run.sh measure the whole loop.
#
# Environment: HERMES=path/to/hermes (default: the release build, built here
# incrementally). Writes the tables to stdout and to bench/results/exec_cost.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

ROUNDS=${1:-7}
N=${2:-300}
case $ROUNDS$N in
    *[!0-9]*)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
esac

say() { echo "exec_cost: $*" >&2; }
for tool in gcc python3; do
    command -v "$tool" >/dev/null || {
        say "needs $tool"
        exit 1
    }
done
out=$root/target/bench
mkdir -p "$out" bench/results
source bench/release_hermes.sh
release_hermes "$root"
gcc -O2 -Wall -Wextra -o "$out/exec_cost" bench/exec_cost.c
printf 'static void __attribute__((constructor)) nothing(void) {}\n' >"$out/empty_preload.c"
gcc -O2 -shared -fPIC -o "$out/empty_preload.so" "$out/empty_preload.c"

tmp=$(mktemp -d /tmp/hermes-exec-cost.XXXXXX)
session=
finish() {
    # Opened read-write, the FIFO never blocks us, whether or not the session reads it.
    [[ -p $tmp/release ]] && echo 1<>"$tmp/release"
    if [[ -n $session ]]; then
        # A session that never reached its `read` is stopped instead.
        for _ in $(seq 50); do kill -0 "$session" 2>/dev/null || break; sleep 0.1; done
        kill "$session" 2>/dev/null || true
        wait "$session" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap finish EXIT

# The session: observes every open (one-way, no decision), and waits on a FIFO while the
# harness borrows its environment.
echo 'on_open = hermes.allow()' >"$tmp/observe.lua"
mkfifo "$tmp/release"
"$HERMES" launch --policy "$tmp/observe.lua" -- \
    sh -c 'env -0 > "$1.part" && mv "$1.part" "$1" && read -r _ < "$2"' sh "$tmp/session.env0" "$tmp/release" &
session=$!
for _ in $(seq 100); do
    [[ -s $tmp/session.env0 ]] && break
    sleep 0.1
done
[[ -s $tmp/session.env0 ]] || {
    say "the session did not start"
    exit 1
}

# One NAME=value a line for the harness (an entry with a newline in it, an exported
# shell function say, is left out); the variants' environments from the session's.
python3 - "$tmp" "$out/empty_preload.so" <<'EOF'
import sys
tmp, empty = sys.argv[1:]
session = [e for e in open(f"{tmp}/session.env0", "rb").read().split(b"\0") if e and b"\n" not in e]
native = [e for e in session if not e.startswith((b"LD_PRELOAD=", b"HERMES_"))]
for name, entries in [("session", session), ("native", native),
                      ("empty", native + [b"LD_PRELOAD=" + empty.encode()]),
                      ("nohooks", session + [b"HERMES_INLINE=0"]),
                      ("debug", session + [b"HERMES_DEBUG_HOOKS=1"])]:
    open(f"{tmp}/{name}.env", "wb").write(b"".join(e + b"\n" for e in entries))
EOF

say "$ROUNDS rounds of $N fork + exec per variant"
"$out/exec_cost" "$ROUNDS" "$N" \
    "native=$tmp/native.env=/bin/true" \
    "empty=$tmp/empty.env=/bin/true" \
    "nohooks=$tmp/nohooks.env=/bin/true" \
    "hermes=$tmp/session.env=/bin/true" \
    "native_open=$tmp/native.env=$out/exec_cost" \
    "hermes_open=$tmp/session.env=$out/exec_cost" >"$tmp/times"
"$out/exec_cost" 1 "$N" "debug=$tmp/debug.env=/bin/true" >/dev/null 2>"$tmp/constructor"

python3 - "$tmp/times" "$tmp/constructor" "$ROUNDS" "$N" "$HERMES" <<'EOF' | tee bench/results/exec_cost.md
import re, statistics, subprocess, sys, time

times_file, ctor_file, rounds, n, hermes = sys.argv[1:]
t = {}
for line in open(times_file):
    name, median, best, faults, cpu = line.split()
    t[name] = (float(median), float(faults), float(cpu))

def rev():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

print(f"## What one exec'd image costs: {time.strftime('%Y-%m-%d %H:%M')}\n")
print(f"hermes {rev()} ({hermes}); {rounds} interleaved rounds of {n} fork + exec + wait per row, "
      "median round; made by bench/exec_cost.sh. The parent is not under HERMES: each row is "
      "the child image's cost alone.\n")
print("| child | fork + exec + wait | added by this step | ratio to native | child CPU | added CPU | page faults |")
print("|---|---:|---:|---:|---:|---:|---:|")
rows = [("native", "`/bin/true`", None),
        ("empty", "+ an empty LD_PRELOAD library (one C constructor that does nothing)", "native"),
        ("nohooks", "+ libhermes_preload instead: loaded, configured, board mapped, `HERMES_INLINE=0`", "empty"),
        ("hermes", "+ its inline hooks (the default)", "nohooks")]
for key, label, prev in rows:
    us, faults, cpu = t[key]
    added = f"{us - t[prev][0]:+.1f} µs" if prev else "—"
    added_cpu = f"{cpu - t[prev][2]:+.1f} µs" if prev else "—"
    print(f"| {label} | {us:.1f} µs | {added} | {us / t['native'][0]:.2f}× | {cpu:.1f} µs | {added_cpu} | {faults:.1f} |")
def over_image(i):
    return (t["hermes_open"][i] - t["native_open"][i]) - (t["hermes"][i] - t["native"][i])
print(f"| a child that opens one file: native {t['native_open'][0]:.1f} µs, under the preload "
      f"{t['hermes_open'][0]:.1f} µs | | {over_image(0):+.1f} µs: its first observed call, over the image's cost | "
      f"{t['hermes_open'][0] / t['native_open'][0]:.2f}× | {t['hermes_open'][2]:.1f} µs | {over_image(2):+.1f} µs | "
      f"{t['hermes_open'][1]:.1f} |")
print("\nChild CPU: user + system time per exec (the fork child before its exec included); wall time "
      "beyond it is time the child spent off its CPU, waiting or preempted.")

fields = {"total": [], "configuration": [], "board": [], "hooks": [], "dlsym": [], "patches": []}
pat = re.compile(r"constructor ([\d.]+) us: configuration ([\d.]+), board ([\d.]+), hooks ([\d.]+) "
                 r"\(dlsym ([\d.]+), patches ([\d.]+)\)")
for line in open(ctor_file):
    m = pat.search(line)
    if m:
        for key, value in zip(fields, m.groups()):
            fields[key].append(float(value))
if fields["total"]:
    print(f"\nThe preload's constructor in the same children (`HERMES_DEBUG_HOOKS=1`, median of "
          f"{len(fields['total'])} runs of `/bin/true`), µs: " +
          ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in fields.items()) +
          ". The rest of each step above is outside the constructor's clock: the dynamic loader, "
          "page faults, the exit.")
else:
    print("\nThe constructor's split is missing: no HERMES_DEBUG_HOOKS line came.")
EOF
