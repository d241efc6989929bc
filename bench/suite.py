#!/usr/bin/env python3
"""The measuring half of bench/run.sh: runs every workload under every runner, in one
interleaved run, and writes the markdown table (standard library only).

bench/run.sh builds what this needs and passes the paths; run it through that script.

Method
- Micro workloads (bench/workload.c) time their own loop. The per-call cost is the
  slope between two iteration counts, (t(N2) - t(N1)) / (N2 - N1), so whatever a run
  pays once (start-up, the broker connection on the first call, attach) cancels. N2 is
  chosen per workload and runner from a calibration run, so every runner's loop takes
  about the same time; N1 = N2 / 4.
- Each figure is the median of REPS repetitions; within a repetition every workload and
  runner takes its turn, so a slow spell of the (shared, noisy) machine hits them alike.
- Overhead = runner's per-call cost - native's; ratios are within this run only.
- Real programs: whole-run wall time, median of REPS, ratio to native.
"""

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import profiles

RUNNERS = ["native", "preload", "strict", "ptrace", "strace", "strace-bpf", "ltrace", "frida"]
LABELS = {
    "native": "native",
    "preload": "hermes (preload)",
    "strict": "hermes --strict",
    "ptrace": "hermes ptrace (static build)",
    "strace": "strace -f",
    "strace-bpf": "strace -f --seccomp-bpf",
    "ltrace": "ltrace -f",
    "frida": "frida-trace",
}
# What each tool is told to watch, per operation the workload's policy watches.
STRACE = {"open": "openat", "connect": "connect", "sendto": "sendto", "exec": "execve"}
LTRACE = {"open": "open", "connect": "connect", "sendto": "sendto", "exec": "execv+execve"}
FRIDA = {"open": "open", "connect": "connect", "sendto": "sendto", "exec": "execve"}
HANDLER = {"open": "on_open", "connect": "on_connect", "sendto": "on_sendto", "exec": "on_exec"}

TIMEOUT = 120


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Workload:
    def __init__(self, name, label, mode, arg, watch, runners, ncal=200, weight=1.0, cap=4_000_000,
                 baseline=None, policy=None, static_all=False):
        self.name, self.label, self.mode, self.arg = name, label, mode, arg
        self.watch, self.runners, self.ncal, self.weight, self.cap = watch, runners, ncal, weight, cap
        self.baseline = baseline or name  # whose native run the ratios use
        self.policy = policy  # policy file key; default: the watch set
        self.static_all = static_all  # every runner runs the static build


class Suite:
    def __init__(self, a):
        self.a = a
        self.root = Path(a.root).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="hermes-bench."))
        self.hermes = str(Path(a.hermes).resolve())
        self.dyn = str(Path(a.bin).resolve() / "workload")
        self.static = str(Path(a.bin).resolve() / "workload-static")
        self.quick = a.quick
        self.reps = a.reps or (3 if a.quick else 7)
        self.target_s = 0.05 if a.quick else 0.2
        self.missing = {}  # runner -> why it is skipped everywhere
        self.cell_note = {}  # (workload, runner) -> why that cell is empty
        self.loops = {}  # (workload, runner, n) -> [loop ns]
        self.sizes = {}  # (workload, runner) -> (n1, n2)
        self.listener = None
        self.file = self.work / "file"
        self.file.write_text("data\n")

    # --- set-up ------------------------------------------------------------------
    def policy(self, key):
        # A directory of their own: hot reload watches the policy's directory, and the
        # kernel then does work (fsnotify) for every open and write of a file beside it.
        path = self.work / "policies" / f"{key}.lua"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            if key == "cached":
                src = "function on_open(ev) return hermes.allow{cache=true} end\n"
            elif key == "trace_opens":
                # Observed, not asked: the program never waits for the broker.
                src = "on_open = hermes.allow()\n"
            elif key == "observe_exec":
                src = "on_exec = hermes.allow()\n"
            else:
                src = "".join(f"function {HANDLER[op]}(ev) return hermes.allow() end\n" for op in key.split("+"))
            path.write_text(src)
        return str(path)

    def check_tools(self):
        if not shutil.which("strace"):
            self.missing["strace"] = self.missing["strace-bpf"] = "strace not installed"
        elif subprocess.run(["strace", "--seccomp-bpf", "-qq", "-f", "-o", "/dev/null", "true"],
                            capture_output=True).returncode != 0:
            self.missing["strace-bpf"] = "this strace has no --seccomp-bpf"
        if not shutil.which("ltrace"):
            self.missing["ltrace"] = "ltrace not installed"
        if not self.a.frida:
            self.missing["frida"] = self.a.frida_reason or "frida-trace not available"
        cached = subprocess.run([self.hermes, "check", self.policy("cached")], capture_output=True, text=True)
        self.cache_rejected = None
        if cached.returncode != 0:
            self.cache_rejected = (cached.stderr.strip().splitlines() or ["hermes check failed"])[-1]

    def start_listener(self):
        portfile = self.work / "ports"
        self.listener = subprocess.Popen([self.dyn, "listen", "0", str(portfile)], stdin=subprocess.DEVNULL)
        for _ in range(200):
            if portfile.exists():
                break
            time.sleep(0.01)
        self.tcp_port, self.udp_port = portfile.read_text().split()

    def stop_listener(self):
        if self.listener:
            self.listener.kill()
            self.listener.wait()

    def workloads(self):
        f = str(self.file)
        every = ["native", "preload", "strict", "ptrace", "strace", "strace-bpf", "ltrace", "frida"]
        hermes_only = ["preload", "strict", "ptrace"]
        return [
            Workload("open", "open + close of one file", "open", f, ["open"], every),
            Workload("open-cached", "open, policy `hermes.allow{cache=true}`", "open", f, ["open"],
                     ["preload", "strict"], baseline="open", policy="cached"),
            Workload("open2t", "open + close, 2 threads at once (per call)", "open2t", f, ["open"], every),
            Workload("open-static", "open + close, static binary (every runner)", "open", f, ["open"],
                     ["native", "ptrace", "strace", "strace-bpf", "ltrace", "frida"], static_all=True),
            Workload("write", "write 1 B to /dev/null, policy watches opens (write not hooked)", "write", None,
                     ["open"], every, ncal=2000, weight=2, cap=8_000_000),
            Workload("sendto-unwatched", "sendto on fd −1 (EBADF), policy watches opens only: hooked, not sent",
                     "badsendto", None, ["open"], ["native"] + hermes_only, ncal=2000, weight=2, cap=8_000_000),
            Workload("connect", "TCP connect to 127.0.0.1 (+ socket, close)", "connect", "tcp", ["connect"], every),
            Workload("sendto", "UDP sendto 127.0.0.1, 16 B", "sendto", "udp", ["sendto"], every),
            Workload("forkexec", "fork + exec /bin/true + wait", "forkexec", "/bin/true", ["exec"],
                     [r for r in every if r != "frida"], ncal=10, cap=20_000),
            # The same loop, what each exec'd image pays for the preload without a decision:
            # the exec observed (reported one-way), then not watched at all.
            Workload("forkexec-observed", "fork + exec, exec observed (`on_exec = hermes.allow()`)", "forkexec",
                     "/bin/true", ["exec"], ["preload", "strict"], ncal=10, cap=20_000, baseline="forkexec",
                     policy="observe_exec"),
            Workload("forkexec-unwatched", "fork + exec, policy watches opens only", "forkexec", "/bin/true",
                     ["open"], ["preload", "strict"], ncal=10, cap=20_000, baseline="forkexec"),
            Workload("pingpong64", "Unix socket request/reply, 64 B, two processes", "pingpong", "64", [],
                     ["native"]),
            Workload("pingpong1", "Unix socket request/reply, 1 B, two processes", "pingpong", "1", [],
                     ["native"]),
        ]

    # --- running -----------------------------------------------------------------
    def command(self, wl, runner, n, report):
        prog = self.static if (wl.static_all or runner == "ptrace") else self.dyn
        arg = {"tcp": self.tcp_port, "udp": self.udp_port}.get(wl.arg, wl.arg)
        target = [prog, wl.mode, str(n), str(report)] + ([arg] if arg else [])
        if runner == "native":
            return target
        policy = self.policy(wl.policy or "+".join(wl.watch))
        ops = wl.watch
        if runner in ("preload", "ptrace"):
            return [self.hermes, "launch", "--policy", policy, "--"] + target
        if runner == "strict":
            return [self.hermes, "launch", "--strict", "--policy", policy, "--"] + target
        if runner in ("strace", "strace-bpf"):
            bpf = ["--seccomp-bpf"] if runner == "strace-bpf" else []
            return ["strace", "-f", "-qq", "-o", "/dev/null"] + bpf + [
                "-e", "trace=" + ",".join(STRACE[o] for o in ops)] + target
        if runner == "ltrace":
            return ["ltrace", "-f", "-o", "/dev/null", "-e", "+".join(LTRACE[o] for o in ops)] + target
        if runner == "frida":
            mod = "" if wl.static_all else "libc.so.6!"
            spec = []
            for o in ops:
                spec += ["-i", mod + FRIDA[o]]
            return [self.a.frida, "-q"] + spec + ["-f"] + target
        raise ValueError(runner)

    def run_once(self, cmd, cwd=None):
        """Runs cmd; returns (wall ns, error or None)."""
        out = self.work / "out"
        with open(out, "wb") as sink:
            t0 = time.perf_counter_ns()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=cwd or self.work)
            # A blocking wait, and a timer for the timeout: `subprocess.run(timeout=…)`
            # polls with sleeps of up to 50 ms, which rounds short programs' wall times
            # up to the next poll (a 32 ms gcc -c measured 64 ms under every runner).
            killed = threading.Event()
            timer = threading.Timer(TIMEOUT, lambda: (killed.set(), p.kill()))
            timer.start()
            try:
                p.wait()
            finally:
                timer.cancel()
            wall = time.perf_counter_ns() - t0
            if killed.is_set():
                return None, f"timed out after {TIMEOUT} s"
        if p.returncode != 0:
            lines = [x for x in out.read_bytes().decode(errors="replace").splitlines() if x.strip()]
            return wall, f"exit {p.returncode}: {(lines or [''])[-1][:140]}"
        return wall, None

    def loop(self, wl, runner, n):
        report = self.work / "report"
        report.unlink(missing_ok=True)
        _, err = self.run_once(self.command(wl, runner, n, report))
        # The program writes its report only after the whole loop succeeded; some tools
        # (frida-trace) exit non-zero even then.
        if not report.exists():
            return None, err or "no report written (the program did not finish its loop)"
        return int(report.read_text()), None

    def calibrate(self, wls):
        for wl in wls:
            for r in wl.runners:
                if r in self.missing:
                    continue
                if wl.name == "open-cached" and self.cache_rejected:
                    continue
                ns, err = self.loop(wl, r, wl.ncal)
                if err:
                    self.cell_note[(wl.name, r)] = err
                    say(f"{wl.name} / {r}: unavailable ({err})")
                    continue
                per = max(ns / wl.ncal, 1.0)
                n2 = int(min(max(self.target_s * wl.weight * 1e9 / per, 8), wl.cap))
                self.sizes[(wl.name, r)] = (max(n2 // 4, 1), n2)

    def measure(self, wls):
        for rep in range(self.reps):
            t0 = time.time()
            for wl in wls:
                for r in wl.runners:
                    key = (wl.name, r)
                    if key not in self.sizes or key in self.cell_note:
                        continue
                    sizes = self.sizes[key] if rep % 2 == 0 else self.sizes[key][::-1]
                    for n in sizes:
                        ns, err = self.loop(wl, r, n)
                        if err:
                            self.cell_note[key] = err
                            say(f"{wl.name} / {r}: failed ({err})")
                            break
                        self.loops.setdefault((wl.name, r, n), []).append(ns)
            say(f"repetition {rep + 1}/{self.reps} of the micro workloads done ({time.time() - t0:.0f} s)")

    def per_call(self, wl_name, r):
        """Slope in ns per call, or None."""
        if (wl_name, r) in self.cell_note or (wl_name, r) not in self.sizes:
            return None
        n1, n2 = self.sizes[(wl_name, r)]
        t1 = statistics.median(self.loops[(wl_name, r, n1)])
        t2 = statistics.median(self.loops[(wl_name, r, n2)])
        return (t2 - t1) / (n2 - n1)

    def recheck(self, wls):
        """Measure again, once, every cell whose slope cannot be: below zero, or, where the
        runner intercepts the workload's own call, below native's (a tracer that stops on each
        call cannot make it cheaper). Such a figure is a measurement gone wrong: one run read
        strace --seccomp-bpf at −2.8 µs per open, another the ptrace column at −8.7 µs per
        unwatched sendto. A second wrong figure leaves the cell empty, with a note."""
        own = {"open": "open", "open2t": "open", "connect": "connect", "sendto": "sendto", "forkexec": "exec"}
        for wl in wls:
            base = self.per_call(wl.baseline, "native")
            if base is None:
                continue
            floor = base if own.get(wl.mode) in wl.watch else 0.0
            for r in wl.runners:
                per = self.per_call(wl.name, r)
                if r == "native" or per is None or per >= floor:
                    continue
                say(f"{wl.name} / {r}: {per - base:+.0f} ns per call over native cannot be: measuring it again")
                n1, n2 = self.sizes[(wl.name, r)]
                for n in (n1, n2):
                    self.loops[(wl.name, r, n)] = []
                for rep in range(self.reps):
                    for n in (n1, n2) if rep % 2 == 0 else (n2, n1):
                        ns, err = self.loop(wl, r, n)
                        if err:
                            self.cell_note[(wl.name, r)] = err
                            break
                        self.loops[(wl.name, r, n)].append(ns)
                    if (wl.name, r) in self.cell_note:
                        break
                per = self.per_call(wl.name, r)
                if per is not None and per < floor:
                    self.cell_note[(wl.name, r)] = (f"measured twice at an impossible {per - base:+.0f} ns per call "
                                                    "over native: not a figure to trust")

    # --- paired: a hook's cost, libc and raw calls alternating in one process ------
    def paired(self):
        """Overhead per call (ns) of the hook for write, sendto on fd -1 and a cached open:
        under the preload, (libc - raw) minus the same difference natively; median of reps."""
        reps = 3 if self.quick else 7
        kinds = {"write": ("open", 1_000_000), "badsendto": ("open", 1_000_000), "open": ("cached", 100_000)}
        report = self.work / "paired"
        found = {k: [] for k in kinds}
        for _ in range(reps):
            for kind, (policy, n) in kinds.items():
                diff = []
                for prefix in ([], [self.hermes, "launch", "--policy", self.policy(policy), "--"]):
                    report.unlink(missing_ok=True)
                    _, err = self.run_once(prefix + [self.dyn, "paired", kind, str(n), str(report), "/etc/hostname"])
                    if err or not report.exists():
                        say(f"paired {kind}: {err or 'no report'}")
                        break
                    libc, raw = map(int, report.read_text().split())
                    diff.append((libc - raw) / n)
                if len(diff) == 2:
                    found[kind].append(diff[1] - diff[0])
        return {k: statistics.median(v) for k, v in found.items() if v}

    # --- start-up and real programs ---------------------------------------------
    def startup(self):
        reps = 5 if self.quick else 15
        walls = {"native": [], "hermes": []}
        cmds = {"native": ["/bin/true"], "hermes": [self.hermes, "launch", "--", "/bin/true"]}
        for _ in range(reps):
            for k, c in cmds.items():
                wall, err = self.run_once(c)
                if err:
                    return None, err
                walls[k].append(wall)
        return {k: statistics.median(v) for k, v in walls.items()}, None

    def programs(self):
        """The real programs: (label, short name, command, cwd)."""
        tree = "/usr/include/linux" if self.quick else "/usr/include"
        small_c = self.work / "small.c"
        small_c.write_text("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
                           "int main(int c, char **v) { printf(\"%zu\\n\", strlen(v[0])); return c > 1 ? atoi(v[1]) : 0; }\n")
        py = self.a.python
        return [
            (f"tar cf - {tree} (piped to cat)", "tar",
             ["sh", "-c", f"tar cf - {shlex.quote(tree)} 2>/dev/null | cat >/dev/null"], None),
            ("git status (3000-file repo)", "gitstatus", ["git", "status", "--porcelain"], self.a.gitrepo),
            ("python3 -c 'import json, email, http.client'", "python",
             [py, "-c", "import json, email, http.client"], None),
            ("gcc -c small.c", "gcc", ["gcc", "-c", "-O2", str(small_c), "-o", str(self.work / "small.o")], None),
        ]

    def traced(self, trace):
        """The prefix that runs a real program under hermes: every open observed, traced to TRACE."""
        return [self.hermes, "launch", "--policy", self.policy("trace_opens"), "--trace", str(trace), "--"]

    def real_programs(self):
        progs = self.programs()
        trace = self.work / "trace.jsonl"
        runners = {
            "native": [],
            "hermes": self.traced(trace),
            "strace": ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=openat,connect,sendto,execve"],
            "strace-bpf": ["strace", "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null",
                           "-e", "trace=openat,connect,sendto,execve"],
        }
        runners = {k: v for k, v in runners.items() if k not in self.missing}
        # Inside a session: `repeat` runs the program several times under one hermes launch,
        # so start-up (launcher, broker, Lua) is paid outside the timed runs.
        repeat, report = str(Path(self.a.bin).resolve() / "repeat"), self.work / "repeat-report"
        session_n = 3 if self.quick else 5
        sessions = {"native-session": [repeat, str(report), str(session_n)],
                    "hermes-session": runners["hermes"] + [repeat, str(report), str(session_n)]}
        reps = 2 if self.quick else 5
        walls, notes, traced = {}, {}, {}
        for rep in range(reps):
            t0 = time.time()
            for label, _, cmd, cwd in progs:
                for r, prefix in runners.items():
                    if (label, r) in notes:
                        continue
                    trace.unlink(missing_ok=True)
                    wall, err = self.run_once(prefix + cmd, cwd=cwd)
                    if err:
                        notes[(label, r)] = err
                        say(f"{label} / {r}: failed ({err})")
                        continue
                    walls.setdefault((label, r), []).append(wall)
                    if r == "hermes" and trace.exists():
                        traced[label] = sum(1 for _ in trace.open("rb"))
                for r, prefix in sessions.items():
                    report.unlink(missing_ok=True)
                    _, err = self.run_once(prefix + cmd, cwd=cwd)
                    if err or not report.exists():
                        notes.setdefault((label, r), err or "no report")
                        continue
                    walls.setdefault((label, r), []).append(int(report.read_text()))
            say(f"repetition {rep + 1}/{reps} of the real programs done ({time.time() - t0:.0f} s)")
        return progs, list(runners), {k: statistics.median(v) for k, v in walls.items()}, notes, traced


# --- formatting -------------------------------------------------------------------
def fmt_ns(v):
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if a >= 1e3:
        return f"{v / 1e3:.1f} µs"
    if a >= 10:
        return f"{v:.0f} ns"
    return f"{v:.1f} ns"


def fmt_ratio(r):
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def signed(v):
    return ("+" if v >= 0 else "−") + fmt_ns(abs(v))


def check(rows, name, measured_text, ok, by, profile=None):
    """A targets-table row; a MISS says by how much, and where the profile of it is (--profile)."""
    miss = f"MISS — {by}" + (f" — profile: {profile}" if profile else "")
    rows.append(f"| {name} | {measured_text} | {'PASS' if ok else miss} |")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--hermes", required=True)
    ap.add_argument("--bin", required=True, help="directory with workload and workload-static")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gitrepo", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--frida", default="")
    ap.add_argument("--frida-reason", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated workload names (debugging)")
    a = ap.parse_args()
    a.frida = str(Path(a.frida).resolve()) if a.frida else ""

    s = Suite(a)
    started = time.time()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    try:
        s.check_tools()
        for r, why in s.missing.items():
            say(f"{LABELS[r]}: skipped ({why})")
        s.start_listener()
        wls = s.workloads()
        if a.only:
            wls = [w for w in wls if w.name in a.only.split(",")]
        say(f"calibrating {sum(len(w.runners) for w in wls)} workload × runner cells")
        s.calibrate(wls)
        s.measure(wls)
        s.recheck(wls)
        paired = s.paired() if not a.only else {}
        s.stop_listener()
        startup, startup_err = s.startup()
        real = s.real_programs() if not a.only else None
        prof, prof_notes, prof_took = profiles.run(s) if a.profile else ({}, [], 0.0)
    finally:
        s.stop_listener()
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    elapsed = time.time() - started

    # --- the report ---------------------------------------------------------------
    def cpu_model():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
        return platform.processor() or "unknown CPU"

    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    rev = subprocess.run(["git", "-C", str(s.root), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(s.root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    L = []
    L.append(f"## HERMES benchmark suite{' (--quick)' if a.quick else ''}: {datetime.date.today()}")
    L.append("")
    L.append(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}; load average "
             f"{' '.join(load0)} at the start, {' '.join(load1)} at the end (other jobs share the machine). "
             f"hermes {rev}{'+dirty' if dirty else ''} (release build); {version(['strace', '-V'])}; "
             f"{version(['ltrace', '-V']) if 'ltrace' not in s.missing else 'no ltrace'}; "
             f"{('frida ' + version([str(Path(a.frida).with_name('frida')), '--version'])) if a.frida else 'no frida'}. "
             f"Suite run time {elapsed / 60:.1f} min.")
    L.append("")
    L.append(f"Per call = slope between two iteration counts N1 = N2/4 and N2 (N2 sized so each runner's loop "
             f"takes ~{s.target_s * 1000:.0f} ms), loop timed by the program itself, median of {s.reps} "
             "interleaved repetitions. Cells: overhead per call over native, and the ratio to native. "
             "Policies watch the workload's own call (`on_open`, `on_connect`, `on_sendto`, `on_exec` returning "
             "`hermes.allow()`); peers trace the same calls (`strace -e trace=openat|connect|sendto|execve`, "
             "`ltrace -e open|connect|sendto|execv`, `frida-trace -i libc.so.6!open|…`).")
    L.append("")
    cols = RUNNERS[1:]
    L.append("| workload | native per call | " + " | ".join(LABELS[r] for r in cols) + " | preload ÷ strace-bpf |")
    L.append("|---|---:|" + "---:|" * len(cols) + "---:|")
    notes = []

    def note(text):
        if text not in notes:
            notes.append(text)
        return f"n/a[^{notes.index(text) + 1}]"

    per = {}
    for wl in wls:
        for r in RUNNERS:
            per[(wl.name, r)] = s.per_call(wl.name, r)
    for wl in wls:
        if wl.name.startswith("pingpong"):
            continue
        base = per.get((wl.baseline, "native"))
        cells = []
        for r in cols:
            v = per.get((wl.name, r))
            if r not in wl.runners:
                cells.append("—")
            elif wl.name == "open-cached" and s.cache_rejected:
                cells.append(note(f"`hermes check` rejects `hermes.allow{{cache=true}}`: {s.cache_rejected}"))
            elif r in s.missing:
                cells.append(note(f"{LABELS[r]}: {s.missing[r]}"))
            elif (wl.name, r) in s.cell_note:
                cells.append(note(f"{LABELS[r]} on {wl.name}: {s.cell_note[(wl.name, r)]}"))
            elif v is None or base is None:
                cells.append("?")
            else:
                cells.append(f"{signed(v - base)} ({fmt_ratio(v / base)})")
        pre, sb = per.get((wl.name, "preload")), per.get((wl.name, "strace-bpf"))
        vs = f"{(pre - base) / (sb - base):.2f}" if pre and sb and base and sb - base > 0 else "—"
        L.append(f"| {wl.label} | {fmt_ns(base) if base else '?'} | " + " | ".join(cells) + f" | {vs} |")
    if any(w.name == "open-static" for w in wls):
        L.append("")
        L.append("The static row runs the static build under every runner, with the static native loop as "
                 "baseline; the ptrace column of the other rows runs their static build against the dynamic "
                 "native loop. `—`: not applicable to that runner.")

    # --- targets ----------------------------------------------------------------------
    C = ["", "### Targets", "", "*Paired*: the workload makes the call through libc (hooked) and with "
         "syscall(2) (never hooked) in alternating blocks of 256 in one process; the hook's cost is that "
         "difference under the preload minus the same difference natively, median of "
         f"{3 if a.quick else 7} runs (bench/workload.c `paired`).", "",
         "| target | measured | result |", "|---|---|---|"]
    fails = 0

    def ov(name, r):
        base = next((w.baseline for w in wls if w.name == name), None)
        v, b = per.get((name, r)), per.get((base, "native"))
        return None if v is None or b is None else v - b

    def need(*vals):
        return all(v is not None for v in vals)

    # The small overheads come from the paired runs (libc and raw calls alternating in one
    # process), which cancel the system call's own run-to-run noise; the slope table's
    # figure is given beside them.
    for name, kind, label in (("write", "write", "unhooked call (write) under the preload: ≤ +5 ns"),
                              ("sendto-unwatched", "badsendto",
                               "hooked call the policy does not watch (sendto): ≤ +5 ns")):
        o, slope = paired.get(kind), ov(name, "preload") if any(w.name == name for w in wls) else None
        if need(o):
            also = f" (slopes: {signed(slope)})" if slope is not None else ""
            fails += not check(C, label, signed(o) + " per call, paired" + also, o <= 5, f"{signed(o - 5)} over")
    fe_n, fe_p = per.get(("forkexec", "native")), per.get(("forkexec", "preload"))
    if need(fe_n, fe_p):
        r = fe_p / fe_n
        fails += not check(C, "fork + exec under the preload: ≤ 1.2× native",
                           f"{fmt_ratio(r)} ({fmt_ns(fe_p)} vs {fmt_ns(fe_n)})", r <= 1.2,
                           f"{r / 1.2:.2f}× the target ({signed(fe_p - 1.2 * fe_n)} per fork+exec over)",
                           prof.get("forkexec"))
    if startup:
        d = startup["hermes"] - startup["native"]
        fails += not check(C, "start-up, `hermes launch -- /bin/true` vs `/bin/true`: ≤ +20 ms",
                           f"{signed(d)} ({fmt_ns(startup['hermes'])} vs {fmt_ns(startup['native'])}, "
                           f"median of {5 if a.quick else 15})", d <= 20e6, f"{signed(d - 20e6)} over",
                           prof.get("startup"))
    elif startup_err:
        C.append(f"| start-up | failed: {startup_err} | MISS |")
        fails += 1
    dec, rtt, rtt1 = ov("open", "preload"), per.get(("pingpong64", "native")), per.get(("pingpong1", "native"))
    if need(dec, rtt):
        r = dec / rtt
        fails += not check(C, "uncached decision (open, preload) ≤ 1.5× a Unix-socket round trip (64 B)",
                           f"{fmt_ns(dec)} = {r:.2f}× the round trip ({fmt_ns(rtt)}; 1 B: "
                           f"{fmt_ns(rtt1) if rtt1 else '?'})", r <= 1.5, f"{r / 1.5:.2f}× the target",
                           prof.get("open"))
    def unjudged(label, name, r):
        """A target whose peer has no figure in this run says so rather than vanish."""
        why = s.cell_note.get((name, r)) or s.missing.get(r) or "no figure"
        C.append(f"| {label} | not judged in this run: {LABELS[r]} on `{name}`: {why} | — |")

    sb = ov("open", "strace-bpf")
    label = "uncached decision ≤ 1/3 of strace --seccomp-bpf's per-call overhead (open)"
    if need(dec, sb):
        r = dec / sb
        fails += not check(C, label, f"{fmt_ns(dec)} = {r:.2f}× strace-bpf's {fmt_ns(sb)}", r <= 1 / 3,
                           f"{r * 3:.2f}× the target", prof.get("open"))
    elif dec is not None:
        unjudged(label, "open", "strace-bpf")
    if any(w.name == "open-static" for w in wls):
        pt, sbs = ov("open-static", "ptrace"), ov("open-static", "strace-bpf")
        label = ("seccomp+ptrace fallback, per trapped call (static open loop) ≤ strace -f --seccomp-bpf's "
                 "on the same loop")
        if need(pt, sbs):
            r = pt / sbs
            fails += not check(C, label, f"{fmt_ns(pt)} = {r:.2f}× strace-bpf's {fmt_ns(sbs)}", r <= 1,
                               f"{r:.2f}× the target")
        elif pt is not None:
            unjudged(label, "open-static", "strace-bpf")
    st, pre = ov("open", "strict"), dec
    if need(st, pre):
        r = (st + per[("open", "native")]) / (pre + per[("open", "native")])
        fails += not check(C, "--strict ≤ 1.5× preload-only (open loop; issue 4)", f"{r:.2f}×", r <= 1.5,
                           f"{r / 1.5:.2f}× the target")
    cached = ov("open-cached", "preload") if any(w.name == "open-cached" for w in wls) else None
    if s.cache_rejected:
        C.append(f"| cached decision (`hermes.allow{{cache=true}}`) | n/a: `hermes check` rejects it "
                 f"({s.cache_rejected}) | n/a |")
    elif need(paired.get("open"), dec):
        o = paired["open"]
        also = f"; slopes: {signed(cached)}" if cached is not None else ""
        fails += not check(C, "cached decision (`hermes.allow{cache=true}`, open) ≤ +50 ns",
                           f"{signed(o)} per call, paired ({o / dec:.4f}× uncached{also})", o <= 50,
                           f"+{o - 50:.0f} ns over", prof.get("cached"))

    # --- real programs ------------------------------------------------------------------
    R = []
    if real:
        progs, rnames, med, rnotes, traced = real
        R += ["", "### Real programs", "",
              f"Whole-run wall time, median of {2 if a.quick else 5} interleaved runs. hermes: the policy "
              "`on_open = hermes.allow()` (every open observed: run at once, reported one-way with its result), "
              "with `--trace FILE` (each written as JSON); "
              "strace: `-e trace=openat,connect,sendto,execve`. Target: hermes ≤ 1.05× native. tar writes to a pipe "
              "because GNU tar notices an archive on /dev/null and then opens no file at all. "
              "*In a session*: the program run "
              f"{3 if a.quick else 5} times by `bench/repeat.c` under one `hermes launch` (the same policy and "
              "trace), median of one run, against the same under no tracer: what a program costs inside a "
              "running session, HERMES's start-up (launcher, broker, Lua) excluded.", "",
              "| program | native | " + " | ".join({"hermes": "hermes --trace", "strace": "strace -f",
                                                      "strace-bpf": "strace -f --seccomp-bpf"}[r]
                                                     for r in rnames if r != "native") +
              " | in a session: native | in a session: hermes --trace | opens traced |",
              "|---|---:|" + "---:|" * (len(rnames) - 1) + "---:|---:|---:|"]

        def cell(label, r, nat):
            v = med.get((label, r))
            if (label, r) in rnotes:
                return note(f"{r} on {label}: {rnotes[(label, r)]}")
            if v is None or nat is None:
                return "?"
            return f"{fmt_ratio(v / nat)} ({fmt_ns(v)})"

        for label, name, *_ in progs:
            nat = med.get((label, "native"))
            cells = [cell(label, r, nat) for r in rnames[1:]]
            s_nat = med.get((label, "native-session"))
            cells += [fmt_ns(s_nat) if s_nat else cell(label, "native-session", None),
                      cell(label, "hermes-session", s_nat)]
            R.append(f"| `{label}` | {fmt_ns(nat) if nat else '?'} | " + " | ".join(cells) +
                     f" | {traced.get(label, '?')} |")
            for kind, base, h in (("", nat, med.get((label, "hermes"))),
                                  (" (in a session)", s_nat, med.get((label, "hermes-session")))):
                if base and h:
                    r = h / base
                    fails += not check(C, f"`{label}` under hermes --trace{kind} ≤ 1.05× native", fmt_ratio(r),
                                       r <= 1.05, f"{r / 1.05:.2f}× the target ({signed(h - 1.05 * base)} over)",
                                       prof.get(name))

    if a.profile:
        made = ", ".join(Path(v).name for v in prof.values()) or "none"
        C += ["", f"*Profiles* (`--profile`, {prof_took:.0f} s): {made} in bench/results/, linked from the "
              "missed targets above: per function, the CPU an iteration costs natively and under hermes and the "
              "difference (perf, system-wide; how to read them: each file's header)."
              + (f" Not made: {'; '.join(prof_notes)}." if prof_notes else "")]

    F = [""] + [f"[^{i + 1}]: {t}" for i, t in enumerate(notes)] if notes else []
    text = "\n".join(L + C + R + F) + "\n"
    Path(a.out).write_text(text)
    print(text)
    say(f"{fails} target(s) missed; table written to {a.out}")
    shutil.rmtree(s.work, ignore_errors=True)


if __name__ == "__main__":
    main()
