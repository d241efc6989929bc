#!/usr/bin/env bash
# The benchmark suite: every workload under every runner, in one interleaved run, one
# markdown table of per-call overheads and ratios, with PASS/MISS against the targets.
#
#   bench/run.sh              # the full suite (about 5 minutes on a 2-core VM)
#   bench/run.sh --quick      # a smoke run: fewer repetitions, shorter loops (< 1 min)
#   bench/run.sh --profile    # also profile each target that can miss (about 1 more minute):
#                             # bench/results/profile-{forkexec,startup,tar,gitstatus,python,gcc,
#                             # open,cached}.txt, linked from the missed targets in the table.
#                             # Each records the loop natively and under hermes (perf record -a,
#                             # then the command's process tree, the broker included) and lists
#                             # per comm,dso,sym the extra CPU per iteration (bench/profiles.py).
#   bench/run.sh --reps 9     # repetitions per figure (default 7, --quick 3)
#
# Runners: native; hermes with the preload; hermes --strict; hermes on a static build
# of the same loop (the seccomp + ptrace fallback); strace -f; strace -f --seccomp-bpf;
# ltrace -f (strace and ltrace installed with apt-get when missing and we are root);
# frida-trace (installed from PyPI into target/bench/venv the first time).
# A runner that is missing or cannot run a workload is a note in the table, never a
# failed run. Workloads: bench/workload.c (built here with gcc, dynamic and static);
# real programs: tar, git status, python3 imports, gcc -c. The measuring and the
# table are bench/suite.py (method in its docstring).
#
# Environment: HERMES=path/to/hermes (default: the release build, built here
# incrementally: cargo build --release -p hermes-launcher -p hermes-preload).
# Writes bench/results/latest.md (--quick: target/bench/quick.md) and prints it.
# Exit status 0 even when a target is missed: the table says which and by how much.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

quick=()
profile=()
reps=()
while (($#)); do
    case $1 in
        --quick) quick=(--quick) ;;
        --profile) profile=(--profile) ;;
        --reps)
            reps=(--reps "${2:?--reps needs a number}")
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench/run.sh: unknown option $1 (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

say() { echo "bench: $*" >&2; }
out=$root/target/bench
mkdir -p "$out" bench/results

# --- hermes (release) ----------------------------------------------------------------
source bench/release_hermes.sh
release_hermes "$root"

# --- the workload program, dynamic and static ----------------------------------------
for variant in workload workload-static; do
    if [[ ! -x $out/$variant || bench/workload.c -nt $out/$variant ]]; then
        static=()
        [[ $variant == workload-static ]] && static=(-static)
        gcc -O2 -Wall -Wextra -pthread "${static[@]}" -o "$out/$variant" bench/workload.c
    fi
done
# repeat: runs a real program N times inside one hermes session (start-up excluded).
if [[ ! -x $out/repeat || bench/repeat.c -nt $out/repeat ]]; then
    gcc -O2 -Wall -Wextra -o "$out/repeat" bench/repeat.c
fi

# --- peers ---------------------------------------------------------------------------
# strace and ltrace come from the distribution: installed here when missing and
# apt-get can (as root), else their columns say why they are empty.
missing=()
for tool in strace ltrace; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})) && ((EUID == 0)) && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt-get, first run only)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >"$out/peers-install.log" 2>&1 || say "could not install ${missing[*]} (see target/bench/peers-install.log)"
fi
command -v strace >/dev/null || say "strace is not installed: its columns are skipped (apt-get install strace)"
command -v ltrace >/dev/null || say "ltrace is not installed: its column is skipped (apt-get install ltrace)"
venv=$out/venv
frida=$venv/bin/frida-trace
frida_reason=""
if [[ ! -x $frida ]]; then
    say "installing frida-tools from PyPI into ${venv#"$root"/} (first run only)"
    if ! python3 -m venv "$venv" >"$out/frida-install.log" 2>&1; then
        frida_reason="python3 -m venv failed (see target/bench/frida-install.log)"
    elif ! timeout 600 "$venv/bin/pip" install -q frida-tools >>"$out/frida-install.log" 2>&1; then
        frida_reason="pip install frida-tools failed: $(tail -n 1 "$out/frida-install.log")"
    fi
fi
if [[ -z $frida_reason && -x $frida ]]; then
    # Can frida attach here at all (ptrace scope, containers)? One short spawn tells.
    probe=$(mktemp -d)
    # (frida-trace exits 1 when the spawned program ends: the report file is the test.)
    (cd "$probe" && timeout 60 "$frida" -q -i 'libc.so.6!open' -f "$out/workload" open 3 "$probe/r" /dev/null \
        >"$probe/log" 2>&1) || true
    if [[ ! -s $probe/r ]]; then
        frida_reason="frida-trace cannot attach on this machine: $(grep -v '^\s*$' "$probe/log" | tail -n 1 | cut -c1-120)"
        frida=""
    fi
    rm -rf "$probe"
else
    frida=""
    frida_reason=${frida_reason:-"no frida-trace after pip install"}
fi
[[ -n $frida_reason ]] && say "frida-trace: $frida_reason (its column is skipped)"

# --- a git repository of a few thousand files, made once -----------------------------
gitrepo=$out/gitrepo
if [[ ! -d $gitrepo/.git ]]; then
    say "creating $gitrepo (3000 files, one commit)"
    rm -rf "$gitrepo"
    mkdir -p "$gitrepo"
    for d in $(seq 0 29); do
        mkdir -p "$gitrepo/d$d"
        for f in $(seq 0 99); do echo "file $d/$f" >"$gitrepo/d$d/f$f.txt"; done
    done
    git -C "$gitrepo" init -q
    git -C "$gitrepo" add -A
    git -C "$gitrepo" -c user.name=bench -c user.email=bench@localhost commit -q -m "3000 files"
fi

# python3 may be a version-manager shim (a shell script): time the interpreter itself.
python=$(python3 -c 'import sys; print(sys.executable)')

if ((${#profile[@]})) && ! command -v perf >/dev/null; then
    say "--profile: installing perf (linux-perf)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; } >"$out/perf-install.log" 2>&1 ||
        say "could not install perf (see target/bench/perf-install.log): no profile"
    # Without perf the suite still runs, and the table says why there is no profile.
fi

# A smoke run must not replace the committed results of a full one.
results=bench/results/latest.md
((${#quick[@]})) && results=target/bench/quick.md
# -B: no bench/__pycache__ for the imported bench/profiles.py in the checkout.
exec python3 -B bench/suite.py --root "$root" --hermes "$HERMES" --bin "$out" --out "$results" \
    --gitrepo "$gitrepo" --python "$python" --frida "$frida" --frida-reason "$frida_reason" \
    "${quick[@]}" "${profile[@]}" "${reps[@]}"
