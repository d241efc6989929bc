//! Hot reload and shadow policies: a long-running target under a real `hermes launch`
//! while the test edits the policy file beside it. The target (`open_loop`) logs each
//! open with its CLOCK_MONOTONIC time, so the test can tell which attempts came after
//! which write and how long the new decision took to arrive.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hermes_tests::{c_program, c_program_with, hermes, read_trace, Outcome, Scratch};
use serde_json::Value as Json;

/// How long a reload may take, from the write to the first call it decides (the issue
/// asks for 1 s; the watcher settles for 60 ms).
const RELOAD_BOUND: Duration = Duration::from_secs(1);
/// How long any awaited state may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(10);

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a live local timespec; CLOCK_MONOTONIC is always supported.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The trace's `policy` field for a policy file's contents.
fn hash(src: &str) -> String {
    let h = src.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("fnv1a64:{h:016x}")
}

/// One open attempt of `open_loop`.
#[derive(Clone, Debug)]
struct Attempt {
    /// CLOCK_MONOTONIC after the call returned.
    t: u64,
    pid: i32,
    /// Which PATH argument.
    idx: usize,
    /// `None` when it succeeded, else the errno name.
    err: Option<String>,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.err.is_none()
    }
}

/// A `hermes launch` of `open_loop` running on a thread while the test edits files.
struct Live {
    dir: Scratch,
    policy: PathBuf,
    trace: PathBuf,
    log: PathBuf,
    stop: PathBuf,
    run: Option<JoinHandle<Outcome>>,
}

impl Live {
    /// `hermes launch --policy policy.lua --trace … OPTS -- open_loop LOG STOP FORK PATHS`,
    /// with `policy_src` in a fresh scratch directory; returns once every process of the
    /// target has logged an attempt. `files` are created in the directory first (as
    /// `name`, `contents`) so that options can name them.
    fn start(policy_src: &str, files: &[(&str, &str)], opts: &[&str], fork: bool, paths: &[&str]) -> Live {
        Live::start_prog(&c_program("open_loop"), policy_src, files, opts, fork, paths)
    }

    /// [`Live::start`] with another build of `open_loop`.
    fn start_prog(
        prog: &Path,
        policy_src: &str,
        files: &[(&str, &str)],
        opts: &[&str],
        fork: bool,
        paths: &[&str],
    ) -> Live {
        let dir = Scratch::new();
        let policy = dir.write("policy.lua", policy_src);
        for (name, contents) in files {
            dir.write(name, contents);
        }
        let trace = dir.join("trace.jsonl");
        let log = dir.join("log");
        let stop = dir.join("stop");
        let mut args: Vec<String> = ["launch", "--policy"].map(String::from).to_vec();
        args.push(policy.display().to_string());
        args.push("--trace".into());
        args.push(trace.display().to_string());
        args.extend(opts.iter().map(|o| o.replace("{dir}", &dir.path().display().to_string())));
        args.push("--".into());
        args.push(prog.display().to_string());
        args.push(log.display().to_string());
        args.push(stop.display().to_string());
        args.push(if fork { "1" } else { "0" }.into());
        args.extend(paths.iter().map(|p| p.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let launch = hermes(&argv).timeout(Duration::from_secs(40));
        let run = std::thread::spawn(move || launch.run());
        let live = Live { dir, policy, trace, log, stop, run: Some(run) };
        let procs = if fork { 2 } else { 1 };
        live.wait_log("every process of the target made an attempt", |a| {
            let mut pids: Vec<i32> = a.iter().map(|a| a.pid).collect();
            pids.sort_unstable();
            pids.dedup();
            pids.len() == procs
        });
        live
    }

    /// Every attempt logged so far (whole lines only).
    fn attempts(&self) -> Vec<Attempt> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let parse = |i: usize| f.get(i).unwrap_or_else(|| panic!("short log line {l:?}"));
                Attempt {
                    t: parse(0).parse().expect("time"),
                    pid: parse(1).parse().expect("pid"),
                    idx: parse(2).parse().expect("index"),
                    err: match *parse(3) {
                        "OK" => None,
                        "ERR" => Some(parse(4).to_string()),
                        other => panic!("bad log line {l:?} ({other})"),
                    },
                }
            })
            .collect()
    }

    /// The trace so far (whole lines only).
    fn trace_now(&self) -> Vec<Json> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace line {l:?}: {e}"))).collect()
    }

    /// The trace's own lines (reload, shadow, …) and how many call records it has.
    fn trace_summary(&self) -> String {
        let trace = self.trace_now();
        let notes: Vec<String> = trace.iter().filter(|r| r.get("type").is_some()).map(Json::to_string).collect();
        format!("trace: {} lines; not calls:\n{}", trace.len(), notes.join("\n"))
    }

    /// Poll the log until `cond` holds; fail the test (showing the log) after PATIENCE.
    fn wait_log(&self, what: &str, cond: impl Fn(&[Attempt]) -> bool) -> Vec<Attempt> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let a = self.attempts();
            if cond(&a) {
                return a;
            }
            if Instant::now() > deadline {
                let tail: Vec<_> = a.iter().rev().take(20).rev().collect();
                panic!("timed out waiting until {what}\nlast attempts: {tail:#?}\n{}", self.trace_summary());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Poll the trace until a line satisfies `cond`; returns it.
    fn wait_trace(&self, what: &str, cond: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.trace_now().into_iter().find(&cond) {
                return line;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting until the trace has {what}\n{}", self.trace_summary());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write the policy file in place (truncate, write, close); returns the monotonic
    /// time just before the write.
    fn rewrite(&self, src: &str) -> u64 {
        let t = mono_ns();
        std::fs::write(&self.policy, src).expect("rewrite policy");
        t
    }

    /// Wait for the first attempt on path `idx` after `since` that `want` accepts, and
    /// check that it came within RELOAD_BOUND of `since`. Returns its time.
    fn first_after(&self, since: u64, idx: usize, what: &str, want: impl Fn(&Attempt) -> bool) -> u64 {
        let found = self.wait_log(what, |a| a.iter().any(|a| a.t > since && a.idx == idx && want(a)));
        let first = found.iter().find(|a| a.t > since && a.idx == idx && want(a)).expect("found above");
        let took = Duration::from_nanos(first.t - since);
        assert!(took < RELOAD_BOUND, "{what}: the first such attempt came {took:?} after the write");
        first.t
    }

    /// Let the target make `n` more attempts on each path (a run of calls under the
    /// policy in force now).
    fn more_attempts(&self, n: usize) -> u64 {
        let since = mono_ns();
        self.wait_log(&format!("{n} more attempts"), |a| a.iter().filter(|a| a.t > since).count() >= n);
        since
    }

    /// Stop the target and wait for `hermes` to exit; the outcome carries the trace.
    fn finish(mut self) -> (Outcome, Vec<Attempt>) {
        std::fs::write(&self.stop, "").expect("create stop file");
        let mut out = self.run.take().expect("running").join().expect("hermes thread");
        out.trace = read_trace(&self.trace);
        let attempts = self.attempts();
        out.check(out.code == 0, "the target was stopped by its stop file and exited 0");
        (out, attempts)
    }
}

impl Drop for Live {
    /// A failed test still stops the target, so nothing is left running.
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, "");
        if let Some(run) = self.run.take() {
            let _ = run.join();
        }
    }
}

fn allow_src(tag: &str) -> String {
    format!("-- {tag}\nfunction on_open(ev) return hermes.allow() end\n")
}

fn deny_src(path: &str) -> String {
    format!("function on_open(ev)\n  if ev.path == \"{path}\" then return hermes.deny(\"EACCES\") end\nend\n")
}

/// Records of opens of `path`.
fn opens_of<'a>(trace: &'a [Json], path: &str) -> Vec<&'a Json> {
    trace.iter().filter(|r| r["op"] == "open" && r["args"]["path"] == path && r.get("type").is_none()).collect()
}

fn lines_of<'a>(trace: &'a [Json], kind: &str) -> Vec<&'a Json> {
    trace.iter().filter(|r| r["type"] == kind).collect()
}

#[test]
fn an_edit_in_place_flips_the_running_targets_decisions_within_a_second() {
    let v1 = allow_src("v1");
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    let live = Live::start(&v1, &[], &[], false, &[&file]);
    let v2 = deny_src(&file);
    let v3 = allow_src("v3");

    let wrote_v2 = live.rewrite(&v2);
    let denied_at = live.first_after(wrote_v2, 0, "an open is denied after v2 was written", |a| !a.ok());
    live.more_attempts(5);
    let wrote_v3 = live.rewrite(&v3);
    let allowed_at = live.first_after(wrote_v3, 0, "an open is allowed again after v3 was written", Attempt::ok);
    live.more_attempts(5);
    let (out, attempts) = live.finish();

    // Allowed until the first denial, denied (EACCES) from it until the first allowed
    // attempt after v3, allowed from then on: one thread calls one at a time and the
    // swap is atomic, so the decisions never flicker.
    for a in &attempts {
        let allowed = a.t < denied_at || a.t >= allowed_at;
        out.check(a.ok() == allowed, &format!("attempt {a:?} should be allowed: {allowed}"));
        out.check(a.err.as_deref().is_none_or(|e| e == "EACCES"), &format!("denied with EACCES: {a:?}"));
    }
    out.check(attempts.iter().filter(|a| a.t <= wrote_v2).all(Attempt::ok), "allowed before v2 was written");

    // The trace: two reload lines naming the file, the hash and the generation ...
    let reloads = lines_of(&out.trace, "reload");
    out.check(reloads.len() == 2, "two reload lines");
    let policy_path = out.trace.iter().find_map(|r| r["file"].as_str()).unwrap_or_default().to_owned();
    out.check(policy_path.ends_with("/policy.lua"), "the reload line names the policy file");
    out.check(reloads[0]["policy"] == hash(&v2) && reloads[0]["generation"] == 2, "v2 is generation 2");
    out.check(reloads[1]["policy"] == hash(&v3) && reloads[1]["generation"] == 3, "v3 is generation 3");
    // ... and each call record names the policy that decided it.
    let records = opens_of(&out.trace, &file);
    out.check(records.len() == attempts.len(), "one record per attempt");
    for r in &records {
        let p = r["policy"].as_str().unwrap_or_default();
        let ok = match r["decision"].as_str() {
            Some("deny") => p == hash(&v2) && r["errno"] == "EACCES",
            Some("allow") => p == hash(&v1) || p == hash(&v3),
            _ => false,
        };
        out.check(ok, &format!("record decided by the right policy: {r}"));
    }
    for (v, n) in [(&v1, "v1"), (&v2, "v2"), (&v3, "v3")] {
        out.check(records.iter().any(|r| r["policy"] == hash(v)), &format!("some call was decided by {n}"));
    }
    for (n, src) in [(2, &v2), (3, &v3)] {
        let line = format!("hermes: policy reloaded: {policy_path} ({}, generation {n})", hash(src));
        out.check(out.stderr.contains(&line), &format!("stderr says {line}"));
    }
}

#[test]
fn a_file_renamed_over_the_policy_is_picked_up() {
    let v1 = allow_src("v1");
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    let live = Live::start(&v1, &[], &[], false, &[&file]);
    let v2 = deny_src(&file);
    // Written beside it under another name (that write must not be taken for the
    // policy), then renamed over it.
    let tmp = live.dir.join(".policy.lua.swp");
    std::fs::write(&tmp, "this is not lua ((((\n").expect("write temp");
    let wrote = mono_ns();
    std::fs::write(&tmp, &v2).expect("write temp");
    std::fs::rename(&tmp, &live.policy).expect("rename over the policy");
    live.first_after(wrote, 0, "an open is denied after the rename", |a| !a.ok());
    live.more_attempts(3);
    let (out, attempts) = live.finish();
    out.check(attempts.iter().filter(|a| a.t <= wrote).all(Attempt::ok), "allowed before the rename");
    let reloads = lines_of(&out.trace, "reload");
    out.check(reloads.len() == 1 && reloads[0]["policy"] == hash(&v2), "one reload, to the renamed file's policy");
    out.check(lines_of(&out.trace, "reload_error").is_empty(), "the temp file was never loaded");
    out.check(opens_of(&out.trace, &file).iter().any(|r| r["decision"] == "deny" && r["policy"] == hash(&v2)), "v2");
}

#[test]
fn a_broken_policy_is_reported_with_its_line_and_the_old_one_stays() {
    let v1 = allow_src("v1");
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    let live = Live::start(&v1, &[], &[], false, &[&file]);
    // Would deny, but the `(` on line 3 is never closed: Lua notices at line 4.
    let broken = format!(
        "function on_open(ev)\n  if ev.path == \"{file}\" then\n    return hermes.deny(\"EACCES\"\n  end\nend\n"
    );
    live.rewrite(&broken);
    let error = live.wait_trace("a reload_error line", |l| l["type"] == "reload_error");
    // The previous policy stays: the opens after the error still succeed.
    let after_error = error["mono_ns"].as_u64().expect("reload_error has mono_ns");
    live.wait_log("10 attempts after the reload error", |a| a.iter().filter(|a| a.t > after_error).count() >= 10);
    let fixed = deny_src(&file);
    let wrote_fixed = live.rewrite(&fixed);
    live.first_after(wrote_fixed, 0, "an open is denied after the fixed file was written", |a| !a.ok());
    let (out, attempts) = live.finish();

    out.check(attempts.iter().filter(|a| a.t <= wrote_fixed).all(Attempt::ok), "allowed until the fixed file");
    let message = error["error"].as_str().unwrap_or_default();
    out.check(message.contains("policy.lua:4:"), &format!("the trace's error names policy.lua:4: {message:?}"));
    out.check(error["file"].as_str().is_some_and(|f| f.ends_with("/policy.lua")), "and the file");
    let stderr_line = out.stderr.lines().find(|l| l.contains("policy reload failed")).unwrap_or_default();
    out.check(
        stderr_line.contains("the previous policy stays in force") && stderr_line.contains("policy.lua:4:"),
        &format!("stderr names file:line: {stderr_line:?}"),
    );
    let reloads = lines_of(&out.trace, "reload");
    out.check(reloads.len() == 1 && reloads[0]["policy"] == hash(&fixed), "only the fixed file was enforced");
    out.check(lines_of(&out.trace, "reload_error").len() == 1, "one reload_error line");
    out.check(opens_of(&out.trace, &file).iter().all(|r| r["policy"] != hash(&broken)), "nothing decided by it");
}

#[test]
fn a_file_written_in_two_halves_ends_with_the_whole_policy_in_force() {
    use std::io::Write;
    let v1 = allow_src("v1");
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    let live = Live::start(&v1, &[], &[], false, &[&file]);
    let v2 = deny_src(&file);
    // The first half ends inside the `if`: a syntax error on its own.
    let (first, rest) = v2.split_at(v2.find("then").expect("then"));
    let mut f = std::fs::File::create(&live.policy).expect("open policy for writing");
    f.write_all(first.as_bytes()).expect("first half");
    f.flush().expect("flush");
    f.sync_data().expect("sync");
    std::thread::sleep(Duration::from_millis(100));
    f.write_all(rest.as_bytes()).expect("second half");
    let closed = mono_ns();
    drop(f);
    live.first_after(closed, 0, "an open is denied after the file was completed", |a| !a.ok());
    live.more_attempts(5);
    let (out, attempts) = live.finish();
    let last = attempts.last().expect("attempts");
    out.check(last.err.as_deref() == Some("EACCES"), "the whole policy is in force at the end");
    let reloads = lines_of(&out.trace, "reload");
    out.check(reloads.last().is_some_and(|r| r["policy"] == hash(&v2)), "the last reload is the whole file");
    out.check(reloads.iter().all(|r| r["policy"] == hash(&v2)), "no half file was ever enforced");
    // Allowed: a transient error for the half file (this writer did close it in one go,
    // so the watcher should have waited; accept it anyway, the end state is what counts).
    out.check(lines_of(&out.trace, "reload_error").len() <= 1, "at most one transient reload error");
}

#[test]
fn a_reload_that_adds_on_open_reaches_running_processes_and_their_children() {
    let v1 = "function on_connect(ev) return hermes.deny(\"ECONNREFUSED\") end\n";
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    // FORK 1: the target forks before its first attempt, long before the reload.
    let live = Live::start(v1, &[], &[], true, &[&file]);
    live.more_attempts(6);
    let before = live.trace_now();
    assert!(
        before.iter().all(|r| r["op"] != "open"),
        "a policy without on_open is not even asked about opens: {before:#?}"
    );
    let v2 = deny_src(&file);
    let wrote = live.rewrite(&v2);
    let pids: Vec<i32> = {
        let mut p: Vec<i32> = live.attempts().iter().map(|a| a.pid).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    assert_eq!(pids.len(), 2, "parent and child both ran before the reload");
    for pid in &pids {
        live.first_after(wrote, 0, &format!("pid {pid} sees a denial"), |a| a.pid == *pid && !a.ok());
    }
    live.more_attempts(6);
    let (out, attempts) = live.finish();
    for pid in &pids {
        let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.pid == *pid).collect();
        let first_denied = mine.iter().position(|a| !a.ok()).expect("denied");
        out.check(mine[..first_denied].iter().all(|a| a.t > 0 && a.ok()), "allowed before");
        out.check(
            mine[first_denied..].iter().all(|a| a.err.as_deref() == Some("EACCES")),
            &format!("pid {pid}: every open after the first denial is denied"),
        );
    }
    let records = opens_of(&out.trace, &file);
    out.check(records.iter().all(|r| r["policy"] == hash(&v2)), "every open record was decided by v2");
    for pid in &pids {
        out.check(records.iter().any(|r| r["pid"] == *pid && r["decision"] == "deny"), "both processes asked");
    }
}

#[test]
fn a_statically_linked_target_under_ptrace_follows_a_reload_too() {
    let v1 = "function on_connect(ev) return hermes.deny(\"ECONNREFUSED\") end\n";
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    let live = Live::start_prog(&c_program_with("open_loop", &["-static"]), v1, &[], &[], true, &[&file]);
    live.more_attempts(6);
    let before = live.trace_now();
    assert!(before.iter().all(|r| r["op"] != "open"), "no opens are asked about under v1: {before:#?}");
    let v2 = deny_src(&file);
    let wrote = live.rewrite(&v2);
    let pids: Vec<i32> = {
        let mut p: Vec<i32> = live.attempts().iter().map(|a| a.pid).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    for pid in &pids {
        live.first_after(wrote, 0, &format!("pid {pid} sees a denial"), |a| a.pid == *pid && !a.ok());
    }
    live.more_attempts(6);
    let (out, attempts) = live.finish();
    for pid in &pids {
        let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.pid == *pid).collect();
        let first_denied = mine.iter().position(|a| !a.ok()).expect("denied");
        out.check(
            mine[first_denied..].iter().all(|a| a.err.as_deref() == Some("EACCES")),
            &format!("pid {pid}: every open after the first denial is denied"),
        );
    }
    let records = opens_of(&out.trace, &file);
    out.check(!records.is_empty(), "the opens were asked about");
    out.check(records.iter().all(|r| r["layer"] == "ptrace" && r["policy"] == hash(&v2)), "ptrace layer, v2");
}

#[test]
fn a_reload_makes_cached_decisions_stale() {
    let v1 = "function on_open(ev) return hermes.allow{cache=true} end\n";
    let target = Scratch::new();
    let file = target.write("data", "x\n").display().to_string();
    let live = Live::start(v1, &[], &[], false, &[&file]);
    live.more_attempts(10);
    let before = live.trace_now();
    let asked = opens_of(&before, &file);
    assert_eq!(asked.len(), 1, "a cached allow: only the first open reached the broker\ntrace: {before:#?}");
    assert_eq!(asked[0]["cache"], true, "the record says the decision was cacheable: {before:#?}");
    let v2 = deny_src(&file);
    let wrote = live.rewrite(&v2);
    live.first_after(wrote, 0, "an open is denied after the reload", |a| !a.ok());
    live.more_attempts(5);
    let (out, attempts) = live.finish();
    out.check(attempts.iter().filter(|a| a.t <= wrote).all(Attempt::ok), "allowed (from the cache) before");
    let first_denied = attempts.iter().position(|a| !a.ok()).expect("denied");
    out.check(attempts[first_denied..].iter().all(|a| !a.ok()), "denied from then on");
    let records = opens_of(&out.trace, &file);
    let by_v1 = records.iter().filter(|r| r["policy"] == hash(v1)).count();
    out.check(by_v1 == 1, "v1 was asked once in the whole run (the rest came from the cache)");
    let denied = records.iter().filter(|r| r["decision"] == "deny" && r["policy"] == hash(&v2)).count();
    out.check(denied == attempts.len() - first_denied, "each denial after the reload was asked of v2");
}

/// The shadow denies `b` (EACCES) where the enforced policy allows everything.
fn shadow_deny_src(b: &str) -> String {
    format!("function on_open(ev)\n  if ev.path == \"{b}\" then return hermes.deny(\"EACCES\") end\n  return hermes.allow()\nend\n")
}

/// Check the shadow lines of `out`: one per attempt on `b`, naming the shadow's
/// decision and errno; nothing for `a`.
fn check_shadow_lines(out: &Outcome, attempts: &[Attempt], a: &str, b: &str, shadow_hash: &str) -> usize {
    let shadows = lines_of(&out.trace, "shadow");
    for s in &shadows {
        out.check(s["args"]["path"] == b, &format!("a shadow line only for the differing path: {s}"));
        out.check(s["decision"] == "allow" && s["op"] == "open", "the enforced decision");
        let sh = &s["shadow"];
        out.check(
            sh["decision"] == "deny" && sh["errno"] == "EACCES" && sh["handler"] == "on_open",
            &format!("the shadow's decision: {s}"),
        );
        out.check(sh["policy"] == shadow_hash, "the shadow's hash");
    }
    let on_b = attempts.iter().filter(|x| x.idx == 1).count();
    out.check(shadows.len() == on_b, &format!("one shadow line per open of b ({} vs {on_b})", shadows.len()));
    let on_a = opens_of(&out.trace, a);
    out.check(!on_a.is_empty() && on_a.iter().all(|r| r["decision"] == "allow"), "a: allowed");
    shadows.len()
}

#[test]
fn a_shadow_policy_records_where_it_differs_and_changes_nothing() {
    let target = Scratch::new();
    let a = target.write("a", "a\n").display().to_string();
    let b = target.write("b", "b\n").display().to_string();
    let enforced = allow_src("enforced");
    let shadow = shadow_deny_src(&b);
    let live =
        Live::start(&enforced, &[("shadow.lua", &shadow)], &["--shadow", "{dir}/shadow.lua", "-v"], false, &[&a, &b]);
    live.more_attempts(10);
    let (out, attempts) = live.finish();
    out.check(attempts.iter().all(Attempt::ok), "every open succeeded: the shadow changes nothing");
    let n = check_shadow_lines(&out, &attempts, &a, &b, &hash(&shadow));
    out.check(n >= 5, "several differing calls");
    let count = format!("hermes: shadow policy differed from the enforced one on {n} call(s)");
    out.check(out.stderr.contains(&count), &format!("stderr at exit: {count}"));
    let line = format!("open(\"{b}\", 0o0) = allow (enforced), deny (shadow, on_open)");
    out.check(out.stderr.contains(&line), "-v prints each difference");
    out.check(!out.stderr.contains(&format!("open(\"{a}\", 0o0) = allow (enforced)")), "and nothing else");
}

#[test]
fn the_shadow_count_at_exit_includes_calls_it_was_still_evaluating() {
    // The shadow decides after the target got its answer; this one takes 40 ms over
    // each call, and the target exits right after its only open: the broker must wait
    // for the shadow before it counts (and before the trace is complete).
    let dir = Scratch::new();
    let b = dir.write("b", "b\n").display().to_string();
    let policy = dir.write("policy.lua", &allow_src("enforced")).display().to_string();
    let shadow_src = format!(
        "function on_open(ev)\n  local t = os.clock() + 0.04\n  while os.clock() < t do end\n  \
         if ev.path == \"{b}\" then return hermes.deny(\"EACCES\") end\nend\n"
    );
    let shadow = dir.write("shadow.lua", &shadow_src).display().to_string();
    let trace = dir.join("trace.jsonl");
    let opens = c_program("opens").display().to_string();
    let t = trace.display().to_string();
    let mut run =
        hermes(&["launch", "--policy", &policy, "--shadow", &shadow, "--trace", &t, "--", &opens, "0", &b]).run();
    run.trace = read_trace(&trace);
    run.check(run.code == 0 && run.stdout.contains(" = OK b"), "the open succeeded");
    run.check(lines_of(&run.trace, "shadow").len() == 1, "the difference is in the trace");
    run.check(run.stderr.contains("differed from the enforced one on 1 call(s)"), "and counted at exit");
}

#[test]
fn reload_shadow_runs_an_edited_policy_as_a_shadow() {
    let target = Scratch::new();
    let a = target.write("a", "a\n").display().to_string();
    let b = target.write("b", "b\n").display().to_string();
    let v1 = allow_src("v1");
    let live = Live::start(&v1, &[], &["--reload", "shadow"], false, &[&a, &b]);
    let v2 = shadow_deny_src(&b);
    live.rewrite(&v2);
    live.wait_trace("a shadow line", |l| l["type"] == "shadow");
    live.more_attempts(10);
    let (out, attempts) = live.finish();
    out.check(attempts.iter().all(Attempt::ok), "decisions did not change");
    out.check(lines_of(&out.trace, "reload").is_empty(), "nothing was reloaded");
    let on_b = opens_of(&out.trace, &b);
    out.check(!on_b.is_empty() && on_b.iter().all(|r| r["policy"] == hash(&v1)), "v1 decided every call");
    let shadows = lines_of(&out.trace, "shadow");
    out.check(shadows.len() >= 5, "the edited policy differed on the later opens of b");
    out.check(shadows.iter().all(|s| s["args"]["path"] == b.as_str()), "only on b");
    out.check(shadows.iter().all(|s| s["shadow"]["policy"] == hash(&v2) && s["shadow"]["errno"] == "EACCES"), "v2");
    out.check(out.stderr.contains("shadow policy loaded"), "stderr says the edit became the shadow");
    out.check(!out.stderr.contains("policy reloaded"), "and not that it was enforced");
    let count = format!("differed from the enforced one on {} call(s)", shadows.len());
    out.check(out.stderr.contains(&count), &format!("stderr at exit: {count}"));
}

#[test]
fn reload_off_ignores_edits() {
    let target = Scratch::new();
    let a = target.write("a", "a\n").display().to_string();
    let b = target.write("b", "b\n").display().to_string();
    let v1 = allow_src("v1");
    let quiet_shadow = allow_src("shadow v1");
    let live = Live::start(
        &v1,
        &[("shadow.lua", &quiet_shadow)],
        &["--reload", "off", "--shadow", "{dir}/shadow.lua"],
        false,
        &[&a, &b],
    );
    live.rewrite(&deny_src(&b));
    // The shadow file is still watched, on the same watch as the policy would be: once
    // its edit shows, an edit of the policy written before it would have shown too.
    let shadow = shadow_deny_src(&b);
    std::fs::write(live.dir.join("shadow.lua"), &shadow).expect("rewrite shadow");
    live.wait_trace("a shadow line", |l| l["type"] == "shadow");
    live.more_attempts(10);
    let (out, attempts) = live.finish();
    out.check(attempts.iter().all(Attempt::ok), "the edit to deny b was ignored");
    out.check(lines_of(&out.trace, "reload").is_empty(), "no reload line");
    out.check(!out.stderr.contains("policy reloaded"), "no reload on stderr");
    let on_b = opens_of(&out.trace, &b);
    out.check(!on_b.is_empty() && on_b.iter().all(|r| r["policy"] == hash(&v1)), "v1 decided every call");
    out.check(lines_of(&out.trace, "shadow").iter().all(|s| s["shadow"]["policy"] == hash(&shadow)), "shadow v2");
}

#[test]
fn a_shadow_that_is_missing_or_broken_stops_the_launch() {
    let dir = Scratch::new();
    let policy = dir.write("policy.lua", &allow_src("p")).display().to_string();
    let marker = dir.join("ran");
    let touch = format!("write:{}", marker.display());
    let calls = c_program("calls").display().to_string();
    let missing = dir.join("missing.lua").display().to_string();
    let run = hermes(&["launch", "--policy", &policy, "--shadow", &missing, "--", &calls, &touch]).run();
    run.check(run.code == 2, "a missing shadow: exit 2");
    run.check(run.stderr.contains("shadow") && run.stderr.contains(&missing), "the message names the shadow file");
    run.check(!marker.exists(), "the target never ran");

    let broken = dir.write("broken.lua", "function on_open(ev)\n  return hermes.deny(\nend\n").display().to_string();
    let run = hermes(&["launch", "--policy", &policy, "--shadow", &broken, "--", &calls, &touch]).run();
    run.check(run.code == 2, "a broken shadow: exit 2");
    run.check(run.stderr.contains("broken.lua:3:"), "the message names broken.lua:3");
    run.check(!marker.exists(), "the target never ran");
}
