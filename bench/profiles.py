"""bench/suite.py --profile: where the time goes, for each target the suite can miss.

One file per target in bench/results/ (profile-NAME.txt); the targets table links the
file of each missed target.

- Differential profiles, for the whole-process targets (fork+exec, start-up, the real
  programs, the uncached open loop): the same loop is recorded natively and under
  hermes with `perf record -a -F 4999` (system-wide: the broker is a process of its own
  whose threads run on the other core), reported per comm,dso,sym for the command's
  process tree (every process and thread it forked, the daemonized broker included;
  from `perf report --tasks`), so the other jobs of a shared machine stay out of the
  table; what ran outside the tree is summed per comm apart. A row's samples become µs
  of CPU per iteration (samples / frequency / iterations); the table is sorted by hermes
  minus native: the extra CPU each function costs per iteration, over all CPUs.
- The cached open loop costs tens of ns inside the target process: recorded there only
  (`perf record -F 10000`, `--comms workload --sort dso,sym`), in ns per iteration, with
  `perf annotate` of the hottest preload symbol.

Each recording lasts a few seconds (about one second with --quick). Standard library
only; a missing or failing perf is a note, never a failed run.
"""

import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

FREQ = 4999  # samples per second per CPU, system-wide differential recordings
FREQ_TARGET = 10000  # the cached loop, target process only
TOP = 40  # rows of a differential table
ANNOTATE_LINES = 60
TIMEOUT = 120
IDLE_SYMS = {"pv_native_safe_halt", "native_safe_halt", "default_idle_call", "cpu_idle_poll", "do_idle",
             "cpuidle_enter_state", "acpi_safe_halt"}


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def quote(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd)


# --- perf report parsing -----------------------------------------------------------
def parse_report(text, nkeys):
    """The rows of `perf report --stdio -q -n --sort K1,...,Kn`: [(keys, samples)].

    Takes both layouts: fields split by a tab (`-t '\\t'`, what report() asks for) and
    perf's padded columns, e.g. `    17.08%   5196  ld-linux-x86-64.so.2  [.] sym`, with
    comm (which may hold spaces) first when sorting by comm. A symbol's `[.]`/`[k]`
    marker is dropped. Lines that are not rows (headers, warnings, blank) are skipped."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" in line:
            f = [x.strip() for x in line.split("\t")]
            if len(f) < 2 + nkeys or not f[0].endswith("%") or not f[1].isdigit():
                continue
            keys = f[2:1 + nkeys] + ["\t".join(f[1 + nkeys:])]
            samples = int(f[1])
        else:
            m = re.match(r"\s*\d+(?:\.\d+)?%\s+(\d+)\s+(.*\S)", line)
            if not m:
                continue
            samples, rest = int(m.group(1)), m.group(2)
            # The symbol (`[.] name`, `[k] name`) is the last column and may hold spaces, and
            # so may comm, the first: split the columns between them from the right.
            sym = re.search(r"(?:^|\s)(\[[^\]]\]\s.*)$", rest)
            if sym:
                head = rest[:sym.start(1)].strip()
                keys = (head.rsplit(None, nkeys - 2) if nkeys >= 2 and head else []) + [sym.group(1)]
            else:
                keys = rest.rsplit(None, nkeys - 1)
            if len(keys) != nkeys:
                continue
        keys[-1] = re.sub(r"^\[[^\]]\]\s+", "", keys[-1])
        rows.append((tuple(keys), samples))
    return rows


def report(data, sort, extra=()):
    """perf report of DATA by SORT: ([(keys, samples)], the command, error or None)."""
    cmd = ["perf", "report", "-i", str(data), "--stdio", "-q", "-n", "-g", "none", "--no-children",
           "--sort", sort, "-t", "\t"] + list(extra)
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    shown = " ".join("$'\\t'" if c == "\t" else "PIDS" if prev == "--pid" else shlex.quote(c)
                     for prev, c in zip([""] + cmd, cmd))
    if p.returncode != 0:
        return [], shown, f"perf report failed: {(p.stderr.strip().splitlines() or ['?'])[-1][:160]}"
    return parse_report(p.stdout, len(sort.split(","))), shown, None


def tree(data, root):
    """The pids of every task ROOT forked, and theirs, in a recording (`perf report --tasks`:
    pid, tid, and the tid of the parent at fork, so a daemon that left its parent stays in);
    ROOT's own threads left out."""
    p = subprocess.run(["perf", "report", "-i", str(data), "--tasks"], capture_output=True, text=True,
                       errors="replace")
    parent, pid_of = {}, {}
    for line in p.stdout.splitlines():
        m = re.match(r"\s*(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+\|", line)
        if m:
            pid, tid, ppid = map(int, m.groups())
            parent[tid], pid_of[tid] = ppid, pid
    inside = {root: True}

    def under(tid):
        chain = []
        while tid not in inside and tid in parent and len(chain) < 1000:
            chain.append(tid)
            tid = parent[tid]
        verdict = inside.get(tid, False)
        for t in chain:
            inside[t] = verdict
        return verdict

    return sorted({pid_of[t] for t in parent if pid_of[t] != root and under(t)})


def fmt_wall(ns):
    return f"{ns / 1e6:.2f} ms" if ns >= 1e7 else f"{ns / 1e3:.1f} µs" if ns >= 1e4 else f"{ns:.0f} ns"


def idle(keys):
    comm, sym = keys[0], keys[-1]
    return comm.startswith("swapper") or sym in IDLE_SYMS or sym.endswith("_idle")


# --- the profiles ------------------------------------------------------------------
class Profiler:
    def __init__(self, s):
        self.s = s
        self.out = s.root / "bench/results"
        self.secs = 1.0 if s.quick else 2.5  # per recording under hermes (native is shorter)
        self.repeat = str(Path(s.a.bin).resolve() / "repeat")
        self.written = {}  # profile name -> path relative to the root
        self.notes = []
        self.rev = self.git_rev()

    def git_rev(self):
        g = ["git", "-C", str(self.s.root)]
        rev = subprocess.run(g + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(g + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return (rev or "?") + ("+dirty" if dirty else "")

    def usable(self):
        """None if perf can record system-wide here, else why not."""
        if not shutil.which("perf"):
            return "perf is not installed"
        data = self.s.work / "probe.data"
        p = subprocess.run(["perf", "record", "-q", "-a", "-F", "99", "-o", str(data), "--", "true"],
                           capture_output=True, text=True)
        if p.returncode != 0 or not data.exists():
            return f"perf record -a fails here: {(p.stderr.strip().splitlines() or ['?'])[-1][:160]}"
        return None

    def record(self, cmd, data, cwd=None, system=True, freq=FREQ, callgraph=False):
        """perf record of CMD: (the perf command, perf's pid, error or None)."""
        rec = (["perf", "record", "-q", "-F", str(freq)] + (["-a"] if system else []) + (["-g"] if callgraph else [])
               + ["-o", str(data), "--"] + cmd)
        log = self.s.work / "perf.log"
        with open(log, "wb") as sink:
            p = subprocess.Popen(rec, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=cwd or self.s.work)
            try:
                rc = p.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                return rec, p.pid, f"timed out after {TIMEOUT} s"
        if rc != 0:
            lines = [x for x in log.read_bytes().decode(errors="replace").splitlines() if x.strip()]
            return rec, p.pid, f"exit {rc}: {(lines or [''])[-1][:160]}"
        return rec, p.pid, None

    def header(self, title, what, lines):
        s = self.s
        return [f"# {title}", "#",
                *[f"# {x}" for x in what], "#",
                f"# Recorded {datetime.datetime.now():%Y-%m-%d %H:%M}, hermes {self.rev} ({s.hermes}), "
                f"{os.cpu_count()} CPUs, load average "
                f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; made by bench/run.sh --profile"
                f"{' --quick' if s.quick else ''} (bench/profiles.py).",
                *[f"# {x}" for x in lines if x is not None]]

    def policy_text(self, path):
        return " ".join(Path(path).read_text().split())

    # --- differential: native vs hermes, system-wide ------------------------------
    def differential(self, name, title, what, build, wall, cwd=None, n0=3, nmax=1000):
        """Records build(n, report) -> (native, hermes) commands; wall(report, n) -> ns of one
        iteration as the program timed it. Returns the file's lines (or None: see notes)."""
        s = self.s
        rep = s.work / f"prof-{name}.report"
        # Calibration (and a warm page cache): one short run under hermes, unprofiled; a
        # repeat run's figure is the median of its N0 runs, so a cold first run does not count.
        rep.unlink(missing_ok=True)
        _, err = s.run_once(build(n0, rep)[1], cwd=cwd)
        if err or not rep.exists():
            self.notes.append(f"{name}: the calibration run failed ({err or 'no report'})")
            return None
        n = int(min(max(self.secs / max(wall(rep, n0) / 1e9, 1e-9), 3), nmax))
        cmds, res, rest, walls, recs, whole = build(n, rep), {}, {}, {}, {}, False
        for side, cmd in zip(("native", "hermes"), cmds):
            data = s.work / f"prof-{name}-{side}.data"
            rep.unlink(missing_ok=True)
            recs[side], root, err = self.record(cmd, data, cwd=cwd)
            if err or not rep.exists():
                self.notes.append(f"{name}: perf record of the {side} run failed ({err or 'no report'})")
                return None
            walls[side] = wall(rep, n)
            # The command's process tree, apart from the rest of the machine (other jobs,
            # kernel threads): a shared machine's other work is no noise in the table.
            pids = tree(data, root)
            whole = whole or not pids
            rows, rcmd, err = report(data, "comm,dso,sym", ["--pid", ",".join(map(str, pids))] if pids else [])
            everything, _, err2 = report(data, "comm")
            if err or err2:
                self.notes.append(f"{name}: {err or err2}")
                return None
            res[side] = rows
            ours = {}
            for k, v in rows:
                ours[k[0]] = ours.get(k[0], 0) + v
            rest[side] = [((c,), v - ours.get(c, 0)) for (c,), v in everything if v > ours.get(c, 0)] if pids else []
        unit, scale = "µs", 1e6 / FREQ / n
        L = self.header(title, what, [
            f"Iterations: {n} in each recording; wall time of one iteration as the program timed it, under perf: "
            f"native {fmt_wall(walls['native'])}, hermes {fmt_wall(walls['hermes'])} "
            f"({walls['hermes'] / walls['native']:.2f}×).",
            "Commands:",
            f"  native: {quote(recs['native'])}",
            f"  hermes: {quote(recs['hermes'])}",
            f"  each:   {rcmd.replace(str(s.work / f'prof-{name}-hermes.data'), 'DATA')}",
            "           --pid PIDS: the command's process tree (from perf report --tasks: every process and thread",
            "           it forked, the broker included), and perf report --sort comm for everything else",
            "How to read: figures are CPU time per iteration, in µs, summed over all CPUs and all the command's",
            f"  processes and threads (perf samples / {FREQ} Hz / {n} iterations); `extra` = hermes - native.",
            f"  One sample is {scale:.3g} µs here: rows of a few samples are noise. The recordings are system-wide;",
            "  what ran outside the command's process tree (other jobs on this machine, kernel threads) is",
            "  summed per comm at the end, idle (swapper, *_idle, pv_native_safe_halt) and perf itself left out.",
            "  (perf report --tasks gave no process tree here: the table counts every process on the machine.)"
            if whole else None,
        ])
        L += self.diff_tables(res["native"], res["hermes"], scale, unit)
        if rest["native"] or rest["hermes"]:
            L += ["", ""] + self.diff_tables(
                rest["native"], rest["hermes"], scale, unit, keys=("comm",), top=12,
                total="Outside the command's process tree (kernel threads, other jobs on this machine)")[1:]
        return L

    def diff_tables(self, nat, her, scale, unit, keys=("comm", "dso", "symbol"), top=TOP,
                    total="Total CPU per iteration"):
        """A total and the rows sorted by hermes - native, at most TOP; when sorted by comm, idle
        and perf are left out, and with dso and symbol too a by-process summary comes first."""
        system = keys[0] == "comm"

        def split(rows):
            kept, excl = {}, {}
            for k, v in rows:
                d = excl if system and (idle(k) or k[0] == "perf") else kept
                d[k] = d.get(k, 0) + v
            return kept, excl

        (n_k, n_x), (h_k, h_x) = split(nat), split(her)
        tot_n, tot_h = sum(n_k.values()) * scale, sum(h_k.values()) * scale
        L = ["", f"{total}: native {tot_n:.2f} {unit}, hermes {tot_h:.2f} {unit}, "
                 f"extra {tot_h - tot_n:+.2f} {unit}."]
        if n_x or h_x:
            L.append(f"Left out: idle and perf, native {sum(n_x.values()) * scale:.2f} {unit}, "
                     f"hermes {sum(h_x.values()) * scale:.2f} {unit}.")
        if system and len(keys) > 1:
            by = {}
            for d, i in ((n_k, 0), (h_k, 1)):
                for k, v in d.items():
                    by.setdefault(k[0], [0, 0])[i] += v
            comms = sorted(by.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))[:15]
            L += ["", f"By process (comm), {unit} of CPU per iteration:",
                  f"{'extra':>10} {'native':>9} {'hermes':>9}  comm"]
            for c, (a, b) in comms:
                L.append(f"{(b - a) * scale:>+10.2f} {a * scale:>9.2f} {b * scale:>9.2f}  {c}")
        rows = [(k, n_k.get(k, 0), h_k.get(k, 0)) for k in set(n_k) | set(h_k)]
        rows.sort(key=lambda r: (-(r[2] - r[1]), r[0]))
        w = [min(max([len(k[i]) for k, _, _ in rows[:top]] + [len(keys[i])]), 28) for i in range(len(keys) - 1)]
        L += ["", f"Top {min(top, len(rows))} by extra CPU, {unit} per iteration:",
              f"{'extra':>10} {'native':>9} {'hermes':>9}  " + "".join(
                  f"{keys[i]:<{w[i]}}  " for i in range(len(w))) + keys[-1]]
        for k, a, b in rows[:top]:
            L.append(f"{(b - a) * scale:>+10.2f} {a * scale:>9.2f} {b * scale:>9.2f}  " + "".join(
                f"{k[i][:w[i]]:<{w[i]}}  " for i in range(len(w))) + k[-1])
        shown = sum(b - a for _, a, b in rows[:top]) * scale
        L.append(f"(these rows: {shown:+.2f} {unit} of the {tot_h - tot_n:+.2f} {unit} extra; "
                 f"{len(rows)} rows in all)")
        return L

    # --- the targets' profiles ----------------------------------------------------
    def write(self, name, lines):
        if not lines:
            return
        path = self.out / f"profile-{name}.txt"
        path.write_text("\n".join(x for x in lines if x is not None) + "\n")
        self.written[name] = str(path.relative_to(self.s.root))
        say(f"profile written to {self.written[name]}")

    def loop_wall(self, rep, n):
        return int(rep.read_text()) / n

    def median_wall(self, rep, n):
        return int(rep.read_text())

    def workload(self, wl_name, runner="preload"):
        wl = next(w for w in self.s.workloads() if w.name == wl_name)
        return wl, lambda n, rep: (self.s.command(wl, "native", n, rep), self.s.command(wl, runner, n, rep))

    def forkexec(self):
        wl, build = self.workload("forkexec")
        pol = self.s.policy("exec")
        self.write("forkexec", self.differential(
            "forkexec", "Differential profile: fork + exec /bin/true + wait, under hermes (preload) vs native",
            ["What: bench/workload.c `forkexec` (fork; the child execs /bin/true; waitpid) recorded natively and",
             f"under `hermes launch --policy exec.lua` (the suite's policy: `{self.policy_text(pol)}`).",
             "Target: fork + exec under the preload <= 1.2x native."],
            build, self.loop_wall, n0=100, nmax=100_000))

    def startup(self):
        r = self.repeat

        def build(n, rep):
            return [r, str(rep), str(n), "/bin/true"], [r, str(rep), str(n), self.s.hermes, "launch", "--",
                                                        "/bin/true"]

        self.write("startup", self.differential(
            "startup", "Differential profile: start-up, `hermes launch -- /bin/true` vs `/bin/true`",
            ["What: bench/repeat.c runs `/bin/true`, or `hermes launch -- /bin/true` (no policy), N times one",
             "after the other. Target: start-up <= +20 ms."],
            build, self.median_wall))

    def programs(self):
        trace = self.s.work / "prof-trace.jsonl"
        prefix = self.s.traced(trace)
        for label, name, cmd, cwd in self.s.programs():
            def build(n, rep, cmd=cmd):
                head = [self.repeat, str(rep), str(n)]
                return head + cmd, head + prefix + cmd

            self.write(name, self.differential(
                name, f"Differential profile: `{label}`, whole runs under `hermes launch --trace` vs native",
                [f"What: bench/repeat.c runs the program N times one after the other{f' (in {cwd})' if cwd else ''},"
                 " natively or each run under its own",
                 f"`hermes launch --policy trace_opens.lua --trace FILE` (the suite's policy: "
                 f"`{self.policy_text(self.s.policy('trace_opens'))}`),",
                 "so HERMES's start-up (launcher, broker, Lua) is in every iteration, as in the whole-run target.",
                 f"Targets: `{label}` under hermes --trace <= 1.05x native, whole run and in a session (the",
                 "in-session figure leaves the start-up out: see also profile-startup.txt)."],
                build, self.median_wall, cwd=cwd))

    def open_uncached(self):
        s = self.s
        wl, build = self.workload("open")
        pol = s.policy("open")
        L = self.differential(
            "open", "Profiles: the uncached open loop under hermes (preload)",
            ["What: bench/workload.c `open` (open + close of one file) natively and under",
             f"`hermes launch --policy open.lua` (the suite's policy: `{self.policy_text(pol)}`): every open is",
             "decided by the broker. Targets: uncached decision <= 1.5x a Unix-socket round trip, and <= 1/3",
             "of strace --seccomp-bpf's per-call overhead. First the differential profile (system-wide),",
             "then a plain profile of the hermes run (the launcher's process tree, -g, self time)."],
            build, self.loop_wall, n0=2000, nmax=200_000)
        if not L:
            return
        n = 5000 if s.quick else 20000
        data, rep = s.work / "prof-open-plain.data", s.work / "prof-open.report"
        rec, _, err = self.record(s.command(wl, "preload", n, rep), data, system=False, freq=2000, callgraph=True)
        if err:
            L += ["", f"(plain profile: perf record failed: {err})"]
        else:
            rcmd = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "comm,dso,sym",
                    "--percent-limit", "0.7", "-g", "none"]
            p = subprocess.run(rcmd, capture_output=True, text=True, errors="replace")
            lines = [x for x in p.stdout.splitlines() if x.strip() and not x.startswith("#")]
            L += ["", "", "# Plain profile of the hermes run: share of its samples (entries >= 0.7 %)",
                  f"# {quote(rec)}", f"# {quote(rcmd)}", ""] + lines[:80]
        self.write("open", L)

    def cached(self):
        s = self.s
        _, base = self.workload("open")
        wl, build = self.workload("open-cached")
        rep = s.work / "prof-cached.report"
        rep.unlink(missing_ok=True)
        _, err = s.run_once(build(20000, rep)[1])
        if err or not rep.exists():
            self.notes.append(f"cached: the calibration run failed ({err or 'no report'})")
            return
        n = int(min(max(self.secs / max(int(rep.read_text()) / 20000 / 1e9, 1e-9), 1000), 20_000_000))
        cmds = (base(n, rep)[0], build(n, rep)[1])
        res, walls, recs = {}, {}, {}
        for side, cmd in zip(("native", "hermes"), cmds):
            data = s.work / f"prof-cached-{side}.data"
            rep.unlink(missing_ok=True)
            recs[side], _, err = self.record(cmd, data, system=False, freq=FREQ_TARGET)
            if err or not rep.exists():
                self.notes.append(f"cached: perf record of the {side} run failed ({err or 'no report'})")
                return
            walls[side] = int(rep.read_text()) / n
            res[side], rcmd, err = report(data, "dso,sym", ["--comms", "workload"])
            if err:
                self.notes.append(f"cached: {err}")
                return
        scale = 1e9 / FREQ_TARGET / n
        L = self.header("Differential profile: an open decided from the cache (`hermes.allow{cache=true}`) vs native", [
            "What: bench/workload.c `open` (open + close of one file) natively and under `hermes launch --policy",
            f"cached.lua` (the suite's policy: `{self.policy_text(s.policy('cached'))}`): after the first",
            "call every open is decided in the target process from the cached decision, without the broker.",
            "Only the target process is recorded (its comm, `workload`). Target: cached decision <= +50 ns.",
        ], [
            f"Iterations: {n} in each recording; wall time of one iteration as the program timed it, under perf: "
            f"native {fmt_wall(walls['native'])}, hermes {fmt_wall(walls['hermes'])}.",
            "Commands:",
            f"  native: {quote(recs['native'])}",
            f"  hermes: {quote(recs['hermes'])}",
            f"  each:   {rcmd.replace(str(s.work / 'prof-cached-hermes.data'), 'DATA')}",
            "How to read: figures are CPU time per iteration, in ns, of the target process (user and kernel)",
            f"  (perf samples / {FREQ_TARGET} Hz / {n} iterations); `extra` = hermes - native. One sample is "
            f"{scale:.3g} ns here.",
            "  The preload's own functions (libhermes_preload.so) have no native counterpart: their rows are the",
            "  hook's cost. A kernel row's difference is either work hermes makes the kernel do on each open",
            "  or the run-to-run noise of open(2) itself (a few ns): a second run tells which.",
        ])
        L += self.diff_tables(res["native"], res["hermes"], scale, "ns", keys=("dso", "symbol"), top=30)
        pre = sorted(((v, k[1]) for k, v in res["hermes"] if k[0] == "libhermes_preload.so"), reverse=True)
        if pre:
            L += self.annotate(s.work / "prof-cached-hermes.data", pre[0][1])
        self.write("cached", L)

    def annotate(self, data, sym):
        cmd = ["perf", "annotate", "-i", str(data), "--stdio", "--no-source", "--dsos", "libhermes_preload.so", sym]
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        lines = p.stdout.splitlines()
        head = [f"", f"# perf annotate of the hottest preload symbol, `{sym}`: its hottest instructions in address",
                f"# order, with the (inlined) function each belongs to; `…` marks instructions left out.",
                f"# {quote(cmd).replace(str(data), 'DATA')}", ""]
        if p.returncode != 0 or not lines:
            return head + [f"(perf annotate failed: {(p.stderr.strip().splitlines() or ['no output'])[-1][:160]})"]
        ins = [(i, float(m.group(1))) for i, x in enumerate(lines)
               if (m := re.match(r"\s*(\d+\.\d+)\s*:\s+[0-9a-f]+:", x))]
        if not ins:
            return head + lines[:ANNOTATE_LINES]
        at = {i for i, _ in ins}
        hot = [t for t in sorted(ins, key=lambda t: -t[1]) if t[1] > 0]

        def show(k):
            keep = {i for i, _ in hot[:k]}
            out, label, shown_label, last = [], None, None, None
            for i, x in enumerate(lines):
                if re.match(r"\s*:\s+\d+\s+\S.*:$", x):  # `: LINE  function:` (inlined) or `<sym>:`
                    label = x
                if i not in keep:
                    continue
                if last is not None and any(j in at for j in range(last + 1, i)):
                    out.append("         …")
                if label is not None and label != shown_label:
                    out.append(label)
                    shown_label = label
                out.append(x)
                last = i
            return out, sum(p for _, p in hot[:k])

        k = 30
        out, share = show(k)
        while len(out) > ANNOTATE_LINES and k > 5:  # as many of the hottest as fit in the lines
            k -= 1
            out, share = show(k)
        return head + lines[:1] + out + [f"({min(k, len(hot))} hottest instructions shown, {share:.0f} % of the "
                                         f"symbol's samples)"]

    def run(self):
        why = self.usable()
        if why:
            self.notes.append(f"{why}: no profiles")
            return
        t0 = time.time()
        for step in (self.forkexec, self.startup, self.programs, self.open_uncached, self.cached):
            t = time.time()
            try:
                step()
            except Exception as e:  # noqa: BLE001 -- a profile that fails is a note, never a failed run
                self.notes.append(f"{step.__name__}: {type(e).__name__}: {e}")
            say(f"profile {step.__name__}: {time.time() - t:.0f} s")
        self.took = time.time() - t0


def run(s):
    """Writes the profiles; returns (name -> path relative to the root, notes, seconds taken)."""
    p = Profiler(s)
    p.took = 0.0
    p.run()
    for n in p.notes:
        say(f"--profile: {n}")
    return p.written, p.notes, p.took
