#!/usr/bin/env python3
"""Before/after on the real programs of bench/suite.py: two hermes builds and native,
interleaved in one run, so every ratio is against a native figure of the same run.

    bench/compare.py OLD_HERMES NEW_HERMES [--reps 21] [--out FILE]

Each hermes runs the suite's policy (`on_open = hermes.allow()`: every open observed)
with `--trace` beside the policy, as bench/suite.py does. Per program and runner:
median and minimum wall time over REPS repetitions. Then the program's own
cost of one observed open + close (bench/workload.c `openburst`: bursts the event
ring has room for, only the bursts timed). Needs what bench/run.sh makes in
target/bench (the workload build, the 3000-file git repository): run it once first.
"""

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    gitrepo = root / "target/bench/gitrepo"
    if not (gitrepo / ".git").is_dir():
        raise SystemExit(f"no {gitrepo}: run bench/run.sh --quick once to make it")
    work = Path(tempfile.mkdtemp(prefix="hermes-compare."))
    policy = work / "trace_opens.lua"
    policy.write_text("on_open = hermes.allow()\n")
    trace = work / "trace.jsonl"
    progs = [
        ("`tar cf - /usr/include` (piped to cat)", ["sh", "-c", "tar cf - /usr/include 2>/dev/null | cat >/dev/null"], None),
        ("`git status` (3000-file repo)", ["git", "status", "--porcelain"], gitrepo),
    ]
    runners = {"native": []}
    for name, hermes in (("old", a.old), ("new", a.new)):
        runners[name] = [str(Path(hermes).resolve()), "launch", "--policy", str(policy), "--trace", str(trace), "--"]
    walls, lines = {}, {}
    for _ in range(a.reps):
        for label, cmd, cwd in progs:
            for r, prefix in runners.items():
                trace.unlink(missing_ok=True)
                t0 = time.perf_counter()
                subprocess.run(prefix + cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                walls.setdefault((label, r), []).append(time.perf_counter() - t0)
                if r != "native":
                    lines[(label, r)] = sum(1 for _ in trace.open("rb"))
    workload, f = root / "target/bench/workload", work / "f"
    f.write_text("x\n")
    report = work / "report"
    bursts = {}
    for _ in range(a.reps):
        for r, prefix in runners.items():
            subprocess.run(prefix + [str(workload), "openburst", "4000", str(report), str(f)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            bursts.setdefault(r, []).append(int(report.read_text()) / 4000)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out = [
        f"Interleaved, median of {a.reps} (min in brackets); load average at the end {load}.",
        f"old: `{a.old}`; new: `{a.new}`.",
        "",
        "| program | native | old | new | traced (old / new) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, _, _ in progs:
        nat = statistics.median(walls[(label, "native")])
        cells = [f"{nat * 1e3:.1f} ms [{min(walls[(label, 'native')]) * 1e3:.1f}]"]
        for r in ("old", "new"):
            m = statistics.median(walls[(label, r)])
            cells.append(f"{m / nat:.2f}× ({m * 1e3:.1f} ms [{min(walls[(label, r)]) * 1e3:.1f}])")
        cells.append(f"{lines[(label, 'old')]} / {lines[(label, 'new')]}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    per = {r: statistics.median(v) for r, v in bursts.items()}
    out += [
        "",
        "| observed open + close, in the program | native | old | new |",
        "|---|---:|---:|---:|",
        f"| per call (overhead) | {per['native']:.0f} ns | {per['old']:.0f} ns (+{per['old'] - per['native']:.0f}) "
        f"| {per['new']:.0f} ns (+{per['new'] - per['native']:.0f}) |",
    ]
    text = "\n".join(out) + "\n"
    print(text, end="")
    if a.out:
        Path(a.out).write_text(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
