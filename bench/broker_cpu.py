#!/usr/bin/env python3
"""The broker's own CPU per trace line, for one or more hermes builds, interleaved.

    bench/broker_cpu.py HERMES [HERMES…] [--reps 9] [-- PROGRAM ARGS…]

Runs PROGRAM (default: `tar cf - /usr/include | cat`) under each build with
`on_open = hermes.allow()` and `--trace`, REPS times, the builds taking turns. The
broker is forked twice by the launcher and so left to the nearest subreaper: this
script makes itself one, reaps the broker with wait4 and reads its rusage (user +
system CPU of all its threads, exactly, no sampling). The launcher's rusage (it reaps
the whole target tree) and the wall time are printed beside it. Each repetition also runs `/bin/true` under
the build, whose broker CPU (start-up, policy load, teardown) is subtracted before
dividing by the trace's line count. Per build: medians, and each run's broker CPU.
"""

import argparse
import ctypes
import os
import sys
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def run_once(hermes, policy, trace, prog):
    trace.unlink(missing_ok=True)
    t0 = time.perf_counter()
    launcher = subprocess.Popen([hermes, "launch", "--policy", str(policy), "--trace", str(trace), "--"] + prog,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, cpu = None, {}
    while True:
        try:
            pid, _, ru = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid == launcher.pid:
            wall = time.perf_counter() - t0
            launcher.returncode = 0  # reaped here, not by Popen
            cpu["launcher"] = ru.ru_utime + ru.ru_stime
        else:
            cpu["broker"] = cpu.get("broker", 0.0) + ru.ru_utime + ru.ru_stime
            cpu["broker_user"] = cpu.get("broker_user", 0.0) + ru.ru_utime
    lines = sum(1 for _ in trace.open("rb"))
    return wall, cpu.get("broker", 0.0), cpu.get("broker_user", 0.0), cpu.get("launcher", 0.0), lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hermes", nargs="+")
    ap.add_argument("--reps", type=int, default=9)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    prog = argv[cut + 1:] or ["sh", "-c", "tar cf - /usr/include 2>/dev/null | cat >/dev/null"]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    work = Path(tempfile.mkdtemp(prefix="hermes-brokercpu."))
    policy = work / "trace_opens.lua"
    policy.write_text("on_open = hermes.allow()\n")
    trace = work / "trace.jsonl"
    runs = {h: [] for h in a.hermes}
    idle = {h: [] for h in a.hermes}
    for _ in range(a.reps):
        for h in a.hermes:
            runs[h].append(run_once(str(Path(h).resolve()), policy, trace, prog))
            idle[h].append(run_once(str(Path(h).resolve()), policy, trace, ["/bin/true"]))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"median of {a.reps}, interleaved; load average at the end {load}")
    for h, rs in runs.items():
        med = lambda i: statistics.median(r[i] for r in rs)
        base = statistics.median(r[1] for r in idle[h])
        per_line = statistics.median((r[1] - base) / max(r[4], 1) * 1e6 for r in rs)
        print(f"{h}: wall {med(0) * 1e3:.1f} ms, broker CPU {med(1) * 1e3:.1f} ms "
              f"(under /bin/true: {base * 1e3:.1f} ms; the difference per line: {per_line:.2f} us), "
              f"launcher+target CPU {med(3) * 1e3:.1f} ms, lines {int(med(4))}")
        print(f"   of which user {med(2) * 1e3:.1f} ms; broker CPU (ms) each run: "
              + " ".join(f"{r[1] * 1e3:.1f}" for r in rs))


if __name__ == "__main__":
    main()
