#!/usr/bin/env bash
# Library-call tracing cost, whole process: one program (bench/api_loop.c) calls zlib's
# adler32() N times, run
#   native;
#   under `hermes launch --hook libz.so.1:adler32` with a policy that does not subscribe
#     to library calls (the hook is installed, calls are not sent to the broker);
#   under the same with the default policy (every call goes to the broker);
#   under ltrace, and under frida-trace (from PyPI, in a venv under target/bench/venv).
# Each is run REPS times and the median kept. The program times its own loop, so the
# per-call figures exclude start-up and injection; the total column is the wall time of
# the whole run (start-up, tool attach and exit included).
#
#   bench/api_trace.sh                 # defaults below, about a minute
#   N=5000000 REPS=7 bench/api_trace.sh
#
# Environment: N (calls, native and untraced hook), NT (calls, hermes traced and
# frida-trace), NL (calls, ltrace), REPS, REPS_SLOW (ltrace and frida), HERMES (the
# hermes binary; default target/release/hermes, else target/debug/hermes), PINNED=0
# (skip the runs of the tracers pinned to one CPU with taskset).
# Writes the table to bench/results/api_trace.md as well.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/target/bench
results=$root/bench/results/api_trace.md
mkdir -p "$out" "$root/bench/results"

N=${N:-10000000}
NT=${NT:-20000}
NL=${NL:-3000}
REPS=${REPS:-7}
REPS_SLOW=${REPS_SLOW:-3}
TIMEOUT=${TIMEOUT:-120}
PINNED=${PINNED:-1}

say() { echo "api_trace: $*" >&2; }

# --- the program -----------------------------------------------------------------
prog=$out/api_loop
if [[ ! -x $prog || $root/bench/api_loop.c -nt $prog ]]; then
    gcc -O2 -Wall -o "$prog" "$root/bench/api_loop.c" -lz || { say "cannot build api_loop (gcc, zlib1g-dev)"; exit 1; }
fi

# --- hermes ------------------------------------------------------------------------
hermes_note=""
if [[ -n ${HERMES:-} ]]; then
    hermes=$HERMES
elif [[ -x $root/target/release/hermes && -f $root/target/release/libhermes_preload.so ]]; then
    hermes=$root/target/release/hermes
elif [[ -x $root/target/debug/hermes && -f $root/target/debug/libhermes_preload.so ]]; then
    hermes=$root/target/debug/hermes
    hermes_note=" (debug build)"
    say "no release build (cargo build --release -p hermes-launcher -p hermes-preload): using target/debug"
else
    say "building hermes (release; the vendored Lua takes a few minutes the first time)"
    (cd "$root" && cargo build -q --release -p hermes-launcher -p hermes-preload) || { say "cannot build hermes"; exit 1; }
    hermes=$root/target/release/hermes
fi
noapi=$out/api_trace_noapi.lua
echo 'function on_open(ev) end  -- subscribes to opens only: library calls are not sent' >"$noapi"

# --- ltrace and frida-trace: install when missing ----------------------------------
ltrace_reason=""
if ! command -v ltrace >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ltrace"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ltrace; } >"$out/ltrace-install.log" 2>&1
    fi
    command -v ltrace >/dev/null 2>&1 || ltrace_reason="not installed (apt-get install ltrace failed)"
fi

frida_reason=""
venv=$out/venv
frida=$venv/bin/frida-trace
if [[ ! -x $frida ]]; then
    say "installing frida-tools into $venv"
    if ! python3 -m venv "$venv" >"$out/frida-install.log" 2>&1; then
        frida_reason="python3 -m venv failed"
    elif ! timeout 600 "$venv/bin/pip" install -q frida-tools >>"$out/frida-install.log" 2>&1; then
        frida_reason="pip install frida-tools failed: $(tail -n 1 "$out/frida-install.log")"
    fi
    [[ -z $frida_reason && ! -x $frida ]] && frida_reason="no frida-trace after pip install"
fi

# --- running -----------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/api_trace.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The runs; each takes CALLS REPORT and ends with `api_loop CALLS REPORT`.
cmd_native() { timeout "$TIMEOUT" "$prog" "$@"; }
cmd_untraced() { timeout "$TIMEOUT" "$hermes" launch --policy "$noapi" --hook libz.so.1:adler32 -- "$prog" "$@"; }
cmd_traced() { timeout "$TIMEOUT" "$hermes" launch --hook libz.so.1:adler32 -- "$prog" "$@"; }
# -e adler32: the program's calls to adler32 (`-e adler32@libz.so.1` would select the
# calls made *from* libz, and trace none).
cmd_ltrace() { timeout "$TIMEOUT" ltrace -e adler32 -o /dev/null "$prog" "$@"; }
# frida-trace's generated handler logs every call; its output is discarded.
cmd_frida() { timeout "$TIMEOUT" "$frida" -i adler32 -f "$prog" "$@"; }

# The same, every process and thread on one CPU: a synchronous round trip then costs
# direct context switches instead of cross-CPU wake-ups (expensive in a VM).
cpu0() { timeout "$TIMEOUT" taskset -c 0 "$@"; }
cmd_traced_cpu0() { cpu0 "$hermes" launch --hook libz.so.1:adler32 -- "$prog" "$@"; }
cmd_ltrace_cpu0() { cpu0 ltrace -e adler32 -o /dev/null "$prog" "$@"; }
cmd_frida_cpu0() { cpu0 "$frida" -i adler32 -f "$prog" "$@"; }

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

declare -A WALLS LOOPS CALLS FAIL
# measure REPS NAME:CALLS… — runs the named commands in turn, REPS rounds (interleaved,
# so a slow spell of the machine hits all of them alike). A run that leaves no report
# marks its command failed, with the last line it printed.
measure() {
    local reps=$1 i spec name calls t0 t1
    shift
    for ((i = 0; i < reps; i++)); do
        for spec in "$@"; do
            name=${spec%%:*} calls=${spec#*:}
            CALLS[$name]=$calls
            [[ -n ${FAIL[$name]:-} ]] && continue
            rm -f "$work/report"
            t0=$(date +%s%N)
            (cd "$work" && "cmd_$name" "$calls" "$work/report" >"$work/stdout" 2>"$work/stderr" </dev/null)
            t1=$(date +%s%N)
            if [[ ! -s $work/report ]]; then
                FAIL[$name]="no result ($(cat "$work/stderr" "$work/stdout" | grep -v '^\s*$' | tail -n 1 | cut -c1-120))"
                continue
            fi
            if grep -q 'hermes-preload' "$work/stderr"; then say "$name: $(grep -m1 hermes-preload "$work/stderr")"; fi
            WALLS[$name]+="$((t1 - t0)) "
            LOOPS[$name]+="$(cut -d' ' -f1 "$work/report") "
        done
    done
    for spec in "$@"; do
        name=${spec%%:*}
        [[ -n ${FAIL[$name]:-} ]] && continue
        say "$(printf '%-9s %8d calls  wall %9.1f ms  loop %9.1f ms  (medians of %d)' "$name" "${CALLS[$name]}" \
            "$(med_of "${WALLS[$name]}" | awk '{ print $1 / 1e6 }')" "$(med_of "${LOOPS[$name]}" | awk '{ print $1 / 1e6 }')" "$reps")"
    done
}
med_of() { tr ' ' '\n' <<<"$1" | grep . | median; }

# Counts the calls a tool really saw, on a short run (a tracer that matched nothing
# would otherwise look free).
verify_calls=200
seen() { say "$1: saw ${2:-0} of $verify_calls calls"; }

fmt_ns() { # ns → "12.3 ns" / "4.56 µs" / "1.23 ms"
    awk -v v="$1" 'BEGIN { a = v < 0 ? -v : v
        if (a >= 1e6) printf "%.2f ms", v / 1e6; else if (a >= 1e3) printf "%.2f µs", v / 1e3; else printf "%.1f ns", v }'
}
rows=()
native_ns=""
row() { # NAME LABEL
    local name=$1 label=$2 wall loop calls per overhead ratio
    if [[ -n ${FAIL[$name]:-} ]]; then
        rows+=("| $label | — | unavailable: ${FAIL[$name]} | | | |")
        say "$label: unavailable (${FAIL[$name]})"
        return
    fi
    calls=${CALLS[$name]}
    wall=$(med_of "${WALLS[$name]}")
    loop=$(med_of "${LOOPS[$name]}")
    per=$(awk -v l="$loop" -v n="$calls" 'BEGIN { printf "%.3f", l / n }')
    if [[ -z $native_ns ]]; then
        native_ns=$per overhead="—" ratio="1.0×"
    else
        overhead=$(fmt_ns "$(awk -v a="$per" -v b="$native_ns" 'BEGIN { print a - b }')")
        [[ $overhead == -* ]] || overhead="+$overhead"
        ratio=$(awk -v a="$per" -v b="$native_ns" 'BEGIN { r = a / b; printf(r >= 100 ? "%.0f×" : "%.2f×", r) }')
    fi
    rows+=("| $label | $calls | $(fmt_ns "$wall") | $(fmt_ns "$per") | $overhead | $ratio |")
}

measure "$REPS" "native:$N" "untraced:$N"
[[ -n ${FAIL[native]:-} ]] && { say "native run failed: ${FAIL[native]}"; exit 1; }
measure "$REPS" "traced:$NT"
if [[ -z ${FAIL[traced]:-} ]]; then
    (cd "$work" && "$hermes" launch --trace "$work/trace.jsonl" --hook libz.so.1:adler32 -- "$prog" "$verify_calls" "$work/report" >/dev/null 2>&1)
    seen "hermes traced" "$(grep -c adler32 "$work/trace.jsonl" 2>/dev/null)"
fi
if [[ -n $ltrace_reason ]]; then
    FAIL[ltrace]=$ltrace_reason
else
    measure "$REPS_SLOW" "ltrace:$NL"
    if [[ -z ${FAIL[ltrace]:-} ]]; then
        (cd "$work" && ltrace -e adler32 -o "$work/ltrace.txt" "$prog" "$verify_calls" "$work/report" >/dev/null 2>&1)
        seen ltrace "$(grep -c 'adler32(' "$work/ltrace.txt" 2>/dev/null)"
    fi
fi
if [[ -n $frida_reason ]]; then
    FAIL[frida]=$frida_reason
else
    measure "$REPS_SLOW" "frida:$NT"
    if [[ -z ${FAIL[frida]:-} ]]; then
        (cd "$work" && cmd_frida "$verify_calls" "$work/report" >"$work/frida.txt" 2>&1 </dev/null)
        seen frida-trace "$(grep -c 'adler32()' "$work/frida.txt" 2>/dev/null)"
    fi
fi

if [[ $PINNED == 1 ]] && command -v taskset >/dev/null 2>&1; then
    measure "$REPS" "traced_cpu0:$NT"
    [[ -z $ltrace_reason ]] && measure "$REPS_SLOW" "ltrace_cpu0:$NL"
    [[ -z $frida_reason ]] && measure "$REPS_SLOW" "frida_cpu0:$NT"
else
    PINNED=0
fi

row native "native"
row untraced "hermes --hook, policy without on_api/on_call (hook installed, calls not traced)$hermes_note"
row traced "hermes --hook, default policy (every call decided by the broker)$hermes_note"
row ltrace "ltrace -e adler32"
frida_label="frida-trace -i adler32"
frida_version=$("$venv/bin/frida" --version 2>/dev/null)
[[ -n $frida_version ]] && frida_label+=" (frida $frida_version)"
row frida "$frida_label"
if [[ $PINNED == 1 ]]; then
    row traced_cpu0 "hermes --hook, default policy, taskset -c 0$hermes_note"
    [[ -z $ltrace_reason ]] && row ltrace_cpu0 "ltrace -e adler32, taskset -c 0"
    [[ -z $frida_reason ]] && row frida_cpu0 "frida-trace -i adler32, taskset -c 0"
fi

# --- the table ---------------------------------------------------------------------
{
    echo "## adler32(1, buf, 16) in a loop: tracing cost per call"
    echo
    echo "$(date -u +%Y-%m-%d), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
        "Linux $(uname -r); median of $REPS runs ($REPS_SLOW for ltrace and frida-trace)."
    echo "Per call = the program's own loop time / calls (start-up and attach excluded);"
    echo "total = wall time of the whole run. Overhead and ratio are per call, against native."
    [[ $PINNED == 1 ]] && echo "\"taskset -c 0\": the tool, its helpers and the program all on CPU 0 (no cross-CPU wake-ups)."
    echo
    echo "| tool | calls | total (wall) | per call | overhead per call | ratio to native |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} >"$results"
echo
cat "$results"
echo
echo "(written to ${results#"$root"/})"
