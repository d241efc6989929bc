//! Policy engine depth, end to end: decisions cached in the target, rewritten
//! arguments, injected faults, observe-only handlers, context on demand and the
//! broker's record of descriptors and processes, each through real programs (tests/c/
//! depth.c, and depth_static.c for the ptrace layer) under a real `hermes launch`;
//! and the mistakes a policy can make with these, which fail closed and say where.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hermes_tests::{c_program, hermes, launch, EchoServer, Outcome, Scratch, UdpSink};
use serde_json::Value as Json;

const TIMEOUT: Duration = Duration::from_secs(20);

fn depth() -> PathBuf {
    c_program("depth")
}

fn depth_static() -> PathBuf {
    c_program("depth_static")
}

/// The result printed for `step` (the first such line), or "" when there is none.
fn result<'a>(run: &'a Outcome, step: &str) -> &'a str {
    results(run, step).first().copied().unwrap_or("")
}

/// Every result printed for `step`, in order (a forked child prints its own).
fn results<'a>(run: &'a Outcome, step: &str) -> Vec<&'a str> {
    let prefix = format!("{step} = ");
    run.stdout.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

/// The failing iterations of a `loop:` step's result `ok=K fails=I/ENAME,…`.
fn loop_fails(line: &str) -> (usize, Vec<(usize, String)>) {
    let (ok, fails) = line
        .strip_prefix("ok=")
        .and_then(|rest| rest.split_once(" fails="))
        .unwrap_or_else(|| panic!("not a loop result: {line:?}"));
    let ok = ok.parse().unwrap_or_else(|_| panic!("bad count in {line:?}"));
    if fails == "-" {
        return (ok, Vec::new());
    }
    let fails = fails
        .split(',')
        .map(|f| {
            let (i, e) = f.split_once('/').unwrap_or_else(|| panic!("bad failure {f:?} in {line:?}"));
            (i.parse().unwrap_or_else(|_| panic!("bad iteration {i:?}")), e.to_owned())
        })
        .collect();
    (ok, fails)
}

/// Trace records of calls (not reloads or shadows) whose `args.path` is `path`.
fn at_path<'a>(run: &'a Outcome, path: &Path) -> Vec<&'a Json> {
    let path = path.display().to_string();
    run.trace.iter().filter(|r| r["args"]["path"] == path.as_str()).collect()
}

/// The `hermes.log` lines on stderr, in order.
fn policy_logs(run: &Outcome) -> Vec<&str> {
    run.stderr.lines().filter_map(|l| l.strip_prefix("hermes: policy: ")).collect()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------
// (1) Decisions cached in the target.

#[test]
fn a_cached_allow_reaches_the_broker_once_for_a_thousand_opens() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"function on_open(ev) if ev.path == "{}" then return hermes.allow{{cache = true}} end end"#,
        f.display()
    );
    let step = format!("loop:1000:{}:r", f.display());
    let run = launch(&src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    run.check(result(&run, &step) == "ok=1000 fails=-", "all 1000 opens succeed");
    let recs = at_path(&run, &f);
    run.check(recs.len() == 1, &format!("one trace record for 1000 opens, got {}", recs.len()));
    run.check(recs[0]["decision"] == "allow" && recs[0]["cache"] == true, "the record is a cacheable allow");
}

#[test]
fn a_cached_deny_fails_every_call_with_its_errno() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"function on_open(ev) if ev.path == "{}" then return hermes.deny("EACCES", {{cache = true}}) end end"#,
        f.display()
    );
    let step = format!("loop:1000:{}:r", f.display());
    let run = launch(&src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    let (ok, fails) = loop_fails(result(&run, &step));
    run.check(ok == 0 && fails.len() == 1000, "all 1000 opens fail");
    run.check(fails.iter().enumerate().all(|(i, (n, e))| *n == i + 1 && e == "EACCES"), "each with EACCES");
    let recs = at_path(&run, &f);
    run.check(recs.len() == 1, &format!("one trace record, got {}", recs.len()));
    run.check(recs[0]["decision"] == "deny" && recs[0]["errno"] == "EACCES", "traced as the EACCES denial");
}

#[test]
fn a_cached_emulate_answers_sends_without_sending() {
    let sink = UdpSink::start();
    let src = format!(
        "function on_sendto(ev) if ev.port == {} then return hermes.emulate(4, {{cache = true}}) end end",
        sink.port
    );
    let step = format!("sendto:{}:ping:200", sink.port);
    let run = launch(&src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    run.check(result(&run, &step) == "OK sent=200 rc=4", "every send 'succeeds' with the emulated 4");
    let recs = run.calls("sendto");
    run.check(recs.len() == 1 && recs[0]["decision"] == "emulate", "one emulate record for 200 sends");
    run.check(sink.quiet_for(Duration::from_millis(200)), "nothing was sent");
}

#[test]
fn a_relative_path_is_never_cached() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"function on_open(ev) if ev.path == "{}" then return hermes.allow{{cache = true}} end end"#,
        f.display()
    );
    let run = launch(&src, depth(), &["loop:20:f:r"]).current_dir(dir.path()).timeout(TIMEOUT).run();
    run.check(result(&run, "loop:20:f:r") == "ok=20 fails=-", "all 20 opens succeed");
    let recs = at_path(&run, &f);
    run.check(recs.len() == 20, &format!("each relative open is asked (20 records), got {}", recs.len()));
    run.check(recs.iter().all(|r| r["args"]["raw_path"] == "f"), "as the program named it");
}

#[test]
fn different_flags_are_separate_decisions() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"
function on_open(ev)
  if ev.path ~= "{}" then return end
  if ev.write then return hermes.deny("EACCES", {{cache = true}}) end
  return hermes.allow{{cache = true}}
end
"#,
        f.display()
    );
    let fp = f.display();
    let steps = [format!("loop:50:{fp}:r"), format!("loop:50:{fp}:w"), format!("loop:50:{fp}:re")];
    let mut args: Vec<&str> = steps.iter().map(String::as_str).collect();
    args.push(&steps[0]); // read-only again: still cached as the allow
    let run = launch(&src, depth(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    let reads = results(&run, &steps[0]);
    run.check(reads == ["ok=50 fails=-", "ok=50 fails=-"], "read-only opens are allowed, before and after");
    let (ok, fails) = loop_fails(result(&run, &steps[1]));
    run.check(ok == 0 && fails.iter().all(|(_, e)| e == "EACCES"), "write opens are denied, every one");
    run.check(result(&run, &steps[2]) == "ok=50 fails=-", "O_CLOEXEC reads are allowed");
    let flags: Vec<i64> = at_path(&run, &f).iter().filter_map(|r| r["args"]["flags"].as_i64()).collect();
    let cloexec = i64::from(libc::O_CLOEXEC);
    run.check(
        flags == [0, i64::from(libc::O_WRONLY), cloexec],
        &format!("one decision per flags value, in order: {flags:?}"),
    );
}

#[test]
fn a_fork_child_still_gets_the_cached_answers_right() {
    let dir = Scratch::new();
    let ok = dir.write("ok", "ok\n");
    let no = dir.write("no", "no\n");
    let src = format!(
        r#"
function on_open(ev)
  if ev.path == "{}" then return hermes.allow{{cache = true}} end
  if ev.path == "{}" then return hermes.deny("EACCES", {{cache = true}}) end
end
"#,
        ok.display(),
        no.display()
    );
    let (read_ok, read_no) = (format!("loop:20:{}:r", ok.display()), format!("loop:20:{}:r", no.display()));
    let args = ["pid", &read_ok, &read_no, "fork", "pid", &read_ok, &read_no];
    let run = launch(&src, depth(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0 && result(&run, "fork") == "OK exit=0", "the child exits 0");
    run.check(results(&run, &read_ok) == ["ok=20 fails=-"; 2], "parent and child: allowed");
    for line in results(&run, &read_no) {
        let (n, fails) = loop_fails(line);
        run.check(n == 0 && fails.len() == 20 && fails.iter().all(|(_, e)| e == "EACCES"), "denied with EACCES");
    }
    let pids: Vec<i64> =
        results(&run, "pid").iter().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    run.check(pids.len() == 2 && pids[0] != pids[1], "parent and child pids printed");
    for pid in &pids {
        for path in [&ok, &no] {
            let n = at_path(&run, path).iter().filter(|r| r["pid"] == *pid).count();
            // The parent asks once; the child at most once (it may start from an empty
            // cache, never from a wrong one).
            let want = if *pid == pids[0] { 1..=1 } else { 0..=1 };
            run.check(want.contains(&n), &format!("pid {pid}: {n} records for {}", path.display()));
        }
    }
}

// ---------------------------------------------------------------------------------
// (2) Rewritten arguments.

/// The open rewrites, for `dir`: O_CREAT dropped on `missing`, O_RDONLY forced on
/// `keep*`, mode 0600 forced on `private`, O_TRUNC dropped on `notrunc`.
fn rewrite_policy(dir: &Scratch) -> String {
    format!(
        r#"
local dir = "{}"
function on_open(ev)
  if ev.path == dir .. "/missing" then return hermes.rewrite{{flags = ev.flags & ~hermes.O_CREAT}} end
  if ev.path:find(dir .. "/keep", 1, true) then return hermes.rewrite{{flags = hermes.O_RDONLY}} end
  if ev.path == dir .. "/private" then return hermes.rewrite{{mode = tonumber("600", 8)}} end
  if ev.path == dir .. "/notrunc" then return hermes.rewrite{{flags = ev.flags & ~hermes.O_TRUNC}} end
end
"#,
        dir.path().display()
    )
}

/// The same open steps and policy through the preload and the ptrace layer. creat has
/// no flags argument: the preload makes it an open with the new flags; the ptrace
/// layer refuses to rewrite it (EPERM).
#[test]
fn open_flag_rewrites_hold_in_both_layers() {
    for (layer, prog) in [("preload", depth()), ("ptrace", depth_static())] {
        let dir = Scratch::new();
        let keep = dir.write("keep", "precious\n");
        let keep2 = dir.write("keep2", "precious too\n");
        let notrunc = dir.write("notrunc", "precious\n");
        let creat = format!("creat:{}", notrunc.display());
        let missing = dir.join("missing");
        let private = dir.join("private");
        let d = dir.path().display();
        let (create, truncate, create_private) =
            (format!("open:{d}/missing:wc"), format!("open:{d}/keep:wt"), format!("open:{d}/private:wc"));
        let mut steps = vec![create.clone(), truncate.clone(), create_private.clone(), creat.clone()];
        let truncate2 = format!("openat2:{d}/keep2:bt");
        if layer == "ptrace" {
            steps.push(truncate2.clone()); // openat2 is a system call, no libc wrapper
        }
        let args: Vec<&str> = steps.iter().map(String::as_str).collect();
        let run = launch(&rewrite_policy(&dir), &prog, &args).timeout(TIMEOUT).run();
        let what = |w: &str| format!("{layer}: {w}");
        run.check(run.code == 0, &what("exits 0"));
        run.check(result(&run, &create) == "ERR ENOENT", &what("O_CREAT dropped: ENOENT"));
        run.check(!missing.exists(), &what("the missing file was not created"));
        run.check(result(&run, &truncate) == "OK wrote=ERR EBADF", &what("forced read-only: the write fails EBADF"));
        let kept = std::fs::read_to_string(&keep).unwrap_or_default();
        run.check(kept == "precious\n", &what(&format!("not truncated: {kept:?}")));
        run.check(result(&run, &create_private) == "OK wrote=4", &what("the mode rewrite creates the file"));
        let mode = std::fs::metadata(&private).ok().map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        run.check(mode.map(|m| m & 0o777) == Some(0o600), &what(&format!("created 0600: {:o}", mode.unwrap_or(0))));
        let (want_creat, want_content) = match layer {
            "preload" => ("OK wrote=4", "new\nious\n"),
            _ => ("ERR EPERM", "precious\n"),
        };
        run.check(result(&run, &creat) == want_creat, &what(&format!("creat without O_TRUNC: {want_creat}")));
        let content = std::fs::read_to_string(&notrunc).unwrap_or_default();
        run.check(content == want_content, &what(&format!("creat without O_TRUNC: {content:?}")));
        if layer == "ptrace" {
            // O_RDWR|O_TRUNC forced to O_RDONLY: readable, not truncated, not writable.
            let got = result(&run, &truncate2);
            run.check(got == "OK precious too wrote=ERR EBADF", &what(&format!("openat2 rewritten: {got:?}")));
            let kept = std::fs::read_to_string(&keep2).unwrap_or_default();
            run.check(kept == "precious too\n", &what("openat2: not truncated"));
        }
        let recs = at_path(&run, &missing);
        run.check(
            recs.len() == 1 && recs[0]["layer"] == layer && recs[0]["decision"] == "rewrite",
            &what("the rewrite is traced, in this layer"),
        );
        run.check(recs[0]["rewrite"]["flags"] == libc::O_WRONLY, &what("with the new flags (O_WRONLY)"));
        run.check(at_path(&run, &private)[0]["rewrite"]["mode"] == 0o600, &what("and the new mode"));
    }
}

#[test]
fn fopen_w_rewritten_to_read_only_cannot_write() {
    let dir = Scratch::new();
    let f = dir.write("keep", "precious\n");
    let step = format!("fopen:{}:w", f.display());
    let run = launch(&rewrite_policy(&dir), depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(result(&run, &step) == "OK put=ERR EBADF", "fopen succeeds read-only; the write fails EBADF");
    run.check(std::fs::read_to_string(&f).unwrap_or_default() == "precious\n", "the file was not truncated");
    let recs = at_path(&run, &f);
    let (want_flags, got_flags) = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, &recs[0]["args"]["flags"]);
    run.check(recs.len() == 1 && recs[0]["call"] == "fopen", "one fopen record");
    run.check(*got_flags == want_flags, "the policy saw fopen's \"w\" as O_WRONLY|O_CREAT|O_TRUNC");
    run.check(recs[0]["rewrite"]["flags"] == 0, "rewritten to O_RDONLY");
}

/// Send payloads rewritten: sendto and sendmsg through the preload, sendto through the
/// ptrace layer, where sendmsg (scattered payload) and creat (no flags) are refused.
#[test]
fn send_payload_rewrites_reach_the_peer() {
    let src = |port: u16| {
        format!(
            r#"
local function rewrite(ev)
  if ev.port == {port} then return hermes.rewrite{{data = "REWRITTEN " .. ev.name .. " " .. ev.len}} end
end
on_sendto = rewrite
on_sendmsg = rewrite
function on_open(ev)
  if ev.path:find("/creat$") then return hermes.rewrite{{flags = hermes.O_RDONLY}} end
end
"#
        )
    };
    let sink = UdpSink::start();
    let (to, msg) = (format!("sendto:{}:ping", sink.port), format!("sendmsg:{}:pingpong", sink.port));
    let run = launch(&src(sink.port), depth(), &[&to, &msg]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    run.check(result(&run, &to).starts_with("OK") && result(&run, &msg).starts_with("OK"), "both sends succeed");
    let got: Vec<String> =
        (0..2).filter_map(|_| sink.recv()).map(|d| String::from_utf8_lossy(&d).into_owned()).collect();
    run.check(got == ["REWRITTEN sendto 4", "REWRITTEN sendmsg 8"], &format!("the peer got the rewrites: {got:?}"));
    let rewrites: Vec<&Json> = run.trace.iter().filter(|r| r["decision"] == "rewrite").collect();
    run.check(rewrites.len() == 2, "two rewrite records");
    run.check(rewrites[0]["rewrite"]["data"] == "REWRITTEN sendto 4", "the trace has the new payload");

    let dir = Scratch::new();
    let sink = UdpSink::start();
    let creat = format!("creat:{}/creat", dir.path().display());
    let (to, msg) = (format!("sendto:{}:ping", sink.port), format!("sendmsg:{}:pingpong", sink.port));
    let run = launch(&src(sink.port), depth_static(), &[&to, &msg, &creat]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth_static exits 0");
    let rc = "REWRITTEN sendto 4".len();
    run.check(result(&run, &to) == format!("OK rc={rc}"), "ptrace sendto: the new payload was sent");
    let got = sink.recv().map(|d| String::from_utf8_lossy(&d).into_owned());
    run.check(got.as_deref() == Some("REWRITTEN sendto 4"), &format!("ptrace: the peer got the rewrite: {got:?}"));
    run.check(result(&run, &msg) == "ERR EPERM", "ptrace sendmsg: a payload rewrite is refused (EPERM)");
    run.check(sink.quiet_for(Duration::from_millis(200)), "and nothing was sent");
    run.check(result(&run, &creat) == "ERR EPERM", "ptrace creat: a flags rewrite is refused (EPERM)");
    run.check(!dir.join("creat").exists(), "the file was not created");
}

// ---------------------------------------------------------------------------------
// (3) Injected faults.

fn fault_run(f: &Path, seed: u64, n: usize) -> (Outcome, Vec<usize>) {
    let src = format!(
        r#"
function on_open(ev)
  if ev.path == "{}" then return hermes.fault{{errno = "EIO", probability = 0.25, seed = {seed}}} end
end
"#,
        f.display()
    );
    let step = format!("loop:{n}:{}:r", f.display());
    let run = launch(&src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    let (ok, fails) = loop_fails(result(&run, &step));
    run.check(ok + fails.len() == n, "every iteration accounted for");
    run.check(fails.iter().all(|(_, e)| e == "EIO"), "injected failures are EIO");
    // The trace marks exactly the failures as injected.
    let recs = at_path(&run, f);
    let injected: Vec<&&Json> = recs.iter().filter(|r| r["injected"] == true).collect();
    run.check(recs.len() == n, "one record per call");
    run.check(
        injected.len() == fails.len() && injected.iter().all(|r| r["decision"] == "deny" && r["errno"] == "EIO"),
        "the denials are traced as injected EIO",
    );
    run.check(
        recs.iter().filter(|r| r["injected"] != true).all(|r| r["decision"] == "allow"),
        "the rest are plain allows",
    );
    let fails = fails.into_iter().map(|(i, _)| i).collect();
    (run, fails)
}

#[test]
fn probability_faults_are_reproducible_from_the_seed() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    const N: usize = 400;
    let (_, a) = fault_run(&f, 42, N);
    let (_, b) = fault_run(&f, 42, N);
    let (_, c) = fault_run(&f, 7, N);
    assert_eq!(a, b, "the same seed fails the same iterations");
    assert_ne!(a, c, "another seed fails others");
    for (seed, fails) in [(42, &a), (7, &c)] {
        // p = 0.25 of 400: 100 expected, sd 8.7; the bounds are over 4 sd away.
        assert!((60..=140).contains(&fails.len()), "seed {seed}: {} of {N} failed", fails.len());
    }
    let (a, c): (BTreeSet<_>, BTreeSet<_>) = (a.into_iter().collect(), c.into_iter().collect());
    assert!(a.intersection(&c).count() < a.len(), "the two seeds' sets differ");
}

#[test]
fn nth_fails_exactly_that_call() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"function on_open(ev) if ev.path == "{}" then return hermes.fault{{errno = "ENOSPC", nth = 3}} end end"#,
        f.display()
    );
    let step = format!("loop:6:{}:r", f.display());
    let run = launch(&src, depth(), &[&step]).launch_option("-v").timeout(TIMEOUT).run();
    run.check(result(&run, &step) == "ok=5 fails=3/ENOSPC", "only the 3rd open fails, with ENOSPC");
    let recs = at_path(&run, &f);
    let marked: Vec<bool> = recs.iter().map(|r| r["injected"] == true).collect();
    run.check(marked == [false, false, true, false, false, false], &format!("the 3rd is marked injected: {marked:?}"));
    run.check(recs[2]["errno"] == "ENOSPC", "with its errno");
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("(injected)")).collect();
    run.check(lines.len() == 1 && lines[0].contains("deny ENOSPC (injected)"), "-v says (injected) once");
}

// ---------------------------------------------------------------------------------
// (4) Observe-only handlers.

#[test]
fn a_constant_allow_observes_calls_with_their_results() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let missing = dir.join("missing");
    let (open_f, open_missing) = (format!("open:{}:r", f.display()), format!("open:{}:r", missing.display()));
    let run = launch("on_open = hermes.allow()", depth(), &[&open_f, &open_missing]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    run.check(result(&run, &open_f) == "OK content", "the open ran");
    run.check(result(&run, &open_missing) == "ERR ENOENT", "the failing open failed on its own");
    let opens = run.calls("open");
    run.check(!opens.is_empty() && opens.iter().all(|r| r["observed"] == true), "every open record is observed");
    run.check(run.trace.iter().all(|r| r["decision"] == "allow"), "no decision but allow");
    let rec = at_path(&run, &f);
    run.check(rec.len() == 1 && rec[0]["result"].as_i64().is_some_and(|fd| fd >= 0), "the result (an fd) is there");
    run.check(rec[0]["duration_us"].is_number(), "and the call's duration");
    let rec = at_path(&run, &missing);
    run.check(rec.len() == 1 && rec[0]["result"] == -1 && rec[0]["result_errno"] == "ENOENT", "the failure too");
}

// ---------------------------------------------------------------------------------
// (5) Context on demand.

#[test]
fn want_backtrace_gives_the_callers_frames() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"
hermes.want{{"backtrace"}}
function on_open(ev)
  if ev.path == "{}" then hermes.log("bt " .. table.concat(ev.backtrace, " ")) end
end
"#,
        f.display()
    );
    let step = format!("open:{}:r", f.display());
    let prog = depth();
    let run = launch(&src, &prog, &[&step]).timeout(TIMEOUT).run();
    run.check(result(&run, &step) == "OK content", "the open ran");
    let rec = at_path(&run, &f);
    let frames: Vec<&str> = rec[0]["backtrace"].as_array().into_iter().flatten().filter_map(Json::as_str).collect();
    run.check(!frames.is_empty(), "the trace has the backtrace");
    let logged = policy_logs(&run).into_iter().find_map(|l| l.strip_prefix("bt ")).unwrap_or_default();
    run.check(logged == frames.join(" "), "ev.backtrace is what the trace records");
    // Innermost first: the program's own function that called open, then libc's start.
    let exe = s(&prog);
    // `FILE+0xOFFSET (function+0xN)`: the offset is what addr2line takes.
    let first = frames[0].strip_prefix(&format!("{exe}+0x")).unwrap_or_default();
    // The symbol table's function: open_once, or main when the compiler inlined it.
    run.check(
        first.contains(" (open_once+0x") || first.contains(" (main+0x"),
        &format!("the frame names its function: {frames:?}"),
    );
    let first = first.split(' ').next().unwrap_or_default();
    run.check(!first.is_empty(), &format!("the first frame is in {exe}: {frames:?}"));
    run.check(frames.iter().any(|f| f.contains("/libc.so")), "libc's frames are there");
    let a2l = Command::new("addr2line").args(["-f", "-e", &exe, &format!("0x{first}")]).output();
    let function = a2l.map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_owned());
    run.check(function.as_deref().ok() == Some("open_once"), &format!("it is depth.c's open_once: {function:?}"));
}

#[test]
fn want_payload_shows_what_is_sent() {
    let sink = UdpSink::start();
    let src = format!(
        r#"
hermes.want{{payload = 64}}
local function show(ev)
  if ev.port == {} then hermes.log(ev.name .. " " .. ev.len .. " [" .. ev.data .. "]") end
end
on_sendto = show
on_sendmsg = show
"#,
        sink.port
    );
    let text = "hello-payload";
    let (to, msg) = (format!("sendto:{}:{text}", sink.port), format!("sendmsg:{}:{text}", sink.port));
    for (layer, prog) in [("preload", depth()), ("ptrace", depth_static())] {
        let run = launch(&src, prog, &[&to, &msg]).timeout(TIMEOUT).run();
        run.check(run.code == 0, &format!("{layer}: exits 0"));
        let logs = policy_logs(&run);
        run.check(
            logs == [format!("sendto 13 [{text}]"), format!("sendmsg 13 [{text}]")],
            &format!("{layer}: ev.data is the payload (depth's sendmsg gathered from two iovecs)"),
        );
        let data: Vec<&Json> = run.trace.iter().filter(|r| r["op"] == "sendto" || r["op"] == "sendmsg").collect();
        run.check(
            data.len() == 2 && data.iter().all(|r| r["data"] == text && r["layer"] == layer),
            &format!("{layer}: the trace has it as \"data\""),
        );
        for _ in 0..2 {
            run.check(sink.recv().as_deref() == Some(text.as_bytes()), "the payload was sent unchanged");
        }
    }

    // A smaller window: the first bytes only; ev.len still says how many are sent.
    let src = src.replace("payload = 64", "payload = 5");
    for prog in [depth(), depth_static()] {
        let run = launch(&src, prog, &[&to, &msg]).timeout(TIMEOUT).run();
        let logs = policy_logs(&run);
        run.check(logs == ["sendto 13 [hello]", "sendmsg 13 [hello]"], "ev.data is capped at the wanted size");
    }
}

#[test]
fn want_registers_in_the_ptrace_layer_shows_the_system_call() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"
hermes.want{{"registers"}}
function on_open(ev)
  if ev.path == "{}" then
    hermes.log(string.format("%s %s %d %x", ev.layer, ev.name, ev.regs.orig_rax, ev.regs.rip))
  end
end
"#,
        f.display()
    );
    let (open, openat2) = (format!("open:{}:r", f.display()), format!("openat2:{}:r", f.display()));
    let run = launch(&src, depth_static(), &[&open, &openat2]).timeout(TIMEOUT).run();
    run.check(run.code == 0 && result(&run, &open) == "OK content", "depth_static ran");
    let logs = policy_logs(&run);
    run.check(logs.len() == 2, "one log line per open");
    for line in &logs {
        let parts: Vec<&str> = line.split(' ').collect();
        let [layer, name, nr, rip] = parts[..] else { panic!("bad log line {line:?}") };
        let want = match name {
            "open" => libc::SYS_open,
            "openat" => libc::SYS_openat,
            "openat2" => libc::SYS_openat2,
            other => panic!("unexpected call {other}"),
        };
        run.check(layer == "ptrace", "ptrace layer");
        run.check(nr == want.to_string(), &format!("{name}: orig_rax is the syscall number {want}: {line}"));
        run.check(u64::from_str_radix(rip, 16).is_ok_and(|r| r != 0), &format!("rip is set: {line}"));
    }
    let rec = at_path(&run, &f);
    run.check(rec[0]["regs"]["rip"].as_str().is_some_and(|r| r.starts_with("0x")), "the trace has regs");
}

#[test]
fn want_maps_gives_the_process_memory_map() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let src = format!(
        r#"
hermes.want{{"maps"}}
function on_open(ev)
  if ev.path == "{}" then
    local has = function(s) return tostring(ev.maps:find(s, 1, true) ~= nil) end
    hermes.log("exe " .. has(ev.exe) .. " libc " .. has("/libc.so") .. " stack " .. has("[stack]"))
  end
end
"#,
        f.display()
    );
    let step = format!("open:{}:r", f.display());
    let run = launch(&src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(policy_logs(&run) == ["exe true libc true stack true"], "ev.maps maps the program, libc, the stack");
}

#[test]
fn events_are_timed_and_allowed_calls_have_durations() {
    let dir = Scratch::new();
    let names = ["a", "b", "c", "d"];
    let steps: Vec<String> = names.iter().map(|n| format!("open:{}:r", dir.write(n, n).display())).collect();
    let src = format!(
        r#"
function on_open(ev)
  if ev.path:find("{}/", 1, true) then hermes.log(ev.time_ns .. " " .. hermes.now()) end
end
"#,
        dir.path().display()
    );
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, depth(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    let times: Vec<(u64, u64)> = policy_logs(&run)
        .iter()
        .filter_map(|l| l.split_once(' ').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
        .collect();
    run.check(times.len() == names.len(), "one time per open");
    run.check(times.iter().all(|(t, now)| t <= now), "hermes.now() is not before ev.time_ns");
    run.check(times.windows(2).all(|w| w[0].0 < w[1].0), "ev.time_ns increases call by call");
    for (name, (t, _)) in names.iter().zip(&times) {
        let rec = at_path(&run, &dir.join(name));
        run.check(rec.len() == 1 && rec[0]["mono_ns"] == *t, &format!("{name}: the trace's mono_ns is ev.time_ns"));
        run.check(rec[0]["result"].as_i64().is_some_and(|r| r >= 0), &format!("{name}: result"));
        run.check(rec[0]["duration_us"].as_f64().is_some_and(|d| d >= 0.0), &format!("{name}: duration_us"));
    }
}

// ---------------------------------------------------------------------------------
// (6) The broker's record of descriptors and processes.

/// Logs every descriptor 0..15 of the sender, and an unknown one.
const FD_POLICY: &str = r#"
function on_connect(ev) end
function on_sendto(ev)
  for fd = 0, 15 do
    local i = hermes.fd(ev.pid, fd)
    if i then
      hermes.log(string.format("fd %d %s %s %s %s", fd, i.type, tostring(i.path), tostring(i.addr), tostring(i.port)))
    end
  end
  hermes.log("fd 999 " .. tostring(hermes.fd(ev.pid, 999)) .. ", sending on " .. ev.fd)
end
"#;

#[test]
fn hermes_fd_names_files_and_socket_peers() {
    let dir = Scratch::new();
    let f = dir.write("f", "content\n");
    let echo = EchoServer::start();
    let (hold, connect) = (format!("hold:{}", f.display()), format!("connect:{}", echo.port));
    let run = launch(FD_POLICY, depth(), &[&hold, &connect, "tcpsend:hello"]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    run.check(result(&run, "tcpsend:hello") == "OK echo: hello", "the send reached the server");
    let fd = |step: &str| result(&run, step).strip_prefix("OK fd=").unwrap_or("?").to_owned();
    let (file_fd, sock_fd) = (fd(&hold), fd(&connect));
    let logs = policy_logs(&run);
    let has = |line: &str| logs.contains(&line);
    run.check(has(&format!("fd {file_fd} file {} nil nil", f.display())), "the held file, by path");
    run.check(has(&format!("fd {sock_fd} socket nil 127.0.0.1 {}", echo.port)), "the socket, with its peer");
    run.check(has(&format!("fd 999 nil, sending on {sock_fd}")), "an unknown descriptor is nil");
    run.check(has("fd 0 file /dev/null nil nil"), "stdin (/dev/null, opened by nobody we saw)");
    run.check(logs.iter().any(|l| l.starts_with("fd 1 other pipe:[")), "stdout, a pipe");
    let rec = run.calls("sendto");
    let logged = rec[0]["logs"].as_array().map_or(0, Vec::len);
    run.check(logged == logs.len(), "the logs are in the sendto's trace record too");
}

/// Without a trace, results are reported only when the policy wants state: then the
/// broker learns the socket's peer from the connect's result.
#[test]
fn want_state_reports_results_without_a_trace() {
    let echo = EchoServer::start();
    let connect = format!("connect:{}", echo.port);
    for want in [false, true] {
        let dir = Scratch::new();
        let src = if want { format!("hermes.want{{\"state\"}}\n{FD_POLICY}") } else { FD_POLICY.to_owned() };
        let policy = s(&dir.write("policy.lua", &src));
        let prog = s(&depth());
        let run = hermes(&["launch", "--policy", &policy, "--", &prog, &connect, "tcpsend:hi"]).timeout(TIMEOUT).run();
        run.check(result(&run, "tcpsend:hi") == "OK echo: hi", "the send reached the server");
        let sock_fd = result(&run, &connect).strip_prefix("OK fd=").unwrap_or("?").to_owned();
        let line = policy_logs(&run).into_iter().find(|l| l.starts_with(&format!("fd {sock_fd} "))).unwrap_or("");
        let want_line = if want {
            format!("fd {sock_fd} socket nil 127.0.0.1 {}", echo.port)
        } else {
            format!("fd {sock_fd} socket nil nil nil")
        };
        run.check(line == want_line, &format!("want state {want}: {line:?}, expected {want_line:?}"));
    }
}

#[test]
fn hermes_process_knows_the_tree() {
    let dir = Scratch::new();
    let (pm, cm) = (dir.write("parent", "p\n"), dir.write("child", "c\n"));
    let src = format!(
        r#"
local function show(who, p)
  hermes.log(string.format("%s pid=%d ppid=%d exe=%s argc=%d argv1=%s start=%s alive=%s children=%s",
    who, p.pid, p.ppid, p.exe, #p.argv, p.argv[2] or "", tostring(p.start_time > 0), tostring(p.alive),
    table.concat(p.children, ",")))
end
function on_open(ev)
  if ev.path == "{}" or ev.path == "{}" then
    local me = hermes.process(ev.pid)
    hermes.log("ev.ppid=" .. ev.ppid)
    show("self", me)
    show("parent", hermes.process(me.ppid))
  end
  if ev.path == "{}" then hermes.log("no such process: " .. tostring(hermes.process(2147483000))) end
end
"#,
        pm.display(),
        cm.display(),
        pm.display()
    );
    let (open_p, open_c) = (format!("open:{}:r", pm.display()), format!("open:{}:r", cm.display()));
    let prog = depth();
    let args = ["pid", open_p.as_str(), "fork", "pid", open_c.as_str()];
    let run = launch(&src, &prog, &args).timeout(TIMEOUT).run();
    run.check(run.code == 0 && result(&run, "fork") == "OK exit=0", "depth and its child exit 0");
    let pids: Vec<(String, String)> = results(&run, "pid")
        .iter()
        .filter_map(|l| l.split_once(" ppid=").map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    run.check(pids.len() == 2, "both pids printed");
    let ((parent, launcher), (child, child_ppid)) = (&pids[0], &pids[1]);
    run.check(child_ppid == parent, "the child's parent is the first process");
    let logs = policy_logs(&run);
    let find = |prefix: &str| logs.iter().copied().filter(|l| l.starts_with(prefix)).collect::<Vec<_>>();
    let exe = s(&prog);
    let argv1 = &args[0];
    let selves = find("self ");
    let parents = find("parent ");
    run.check(selves.len() == 2 && parents.len() == 2, "two opens logged");
    // The first process: its own record from /proc.
    run.check(
        selves[0].starts_with(&format!(
            "self pid={parent} ppid={launcher} exe={exe} argc={} argv1={argv1} start=true alive=true children=",
            args.len() + 1
        )),
        &format!("the parent's record: {}", selves[0]),
    );
    run.check(find("ev.ppid=")[0] == format!("ev.ppid={launcher}"), "ev.ppid agrees");
    // The child: its parent is the first process, which lists it among its children.
    run.check(
        selves[1].starts_with(&format!("self pid={child} ppid={parent} exe={exe} argc={}", args.len() + 1)),
        &format!("the child's record: {}", selves[1]),
    );
    let children = parents[1].rsplit_once("children=").map(|(_, c)| c).unwrap_or_default();
    run.check(
        parents[1].starts_with(&format!("parent pid={parent} ")) && children.split(',').any(|c| c == child),
        &format!("the parent lists the child: {}", parents[1]),
    );
    run.check(find("no such process: nil").len() == 1, "an unknown pid is nil");
}

// ---------------------------------------------------------------------------------
// (7) Mistakes fail closed and say where.

#[test]
fn a_handler_returning_a_non_decision_fails_closed() {
    let dir = Scratch::new();
    let (num, tab, fine) = (dir.write("num", "n\n"), dir.write("tab", "t\n"), dir.write("fine", "fine\n"));
    let src = format!(
        r#"
function on_open(ev)
  if ev.path == "{}" then return 42 end
  if ev.path == "{}" then return {{decision = "allow"}} end
end
"#,
        num.display(),
        tab.display()
    );
    let steps: Vec<String> = [&num, &tab, &fine].iter().map(|p| format!("open:{}:r", p.display())).collect();
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, depth(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    run.check(result(&run, &steps[0]) == "ERR EPERM", "a number: EPERM");
    run.check(result(&run, &steps[1]) == "ERR EPERM", "a table: EPERM");
    run.check(result(&run, &steps[2]) == "OK fine", "the next call is fine");
    for (path, what) in [(&num, "returned an integer"), (&tab, "returned a table")] {
        let rec = at_path(&run, path);
        let error = rec[0]["error"].as_str().unwrap_or_default();
        run.check(error.contains(what) && error.contains("on_open"), &format!("trace error: {error:?}"));
        run.check(run.stderr.contains(what), &format!("stderr says {what}"));
    }
}

/// Errors raised by `hermes.fault` and `hermes.rewrite` inside a handler deny that
/// call with EPERM and name the policy line.
#[test]
fn bad_fault_and_rewrite_arguments_fail_closed_naming_the_line() {
    let dir = Scratch::new();
    let names = ["nofault", "bothfault", "emptyrewrite", "bigrewrite", "datarewrite"];
    let files: Vec<PathBuf> = names.iter().map(|n| dir.write(n, n)).collect();
    let d = dir.path().display();
    let src = format!(
        r#"function on_open(ev)
  if ev.path == "{d}/nofault" then return hermes.fault{{}} end
  if ev.path == "{d}/bothfault" then return hermes.fault{{errno = "EIO", probability = 0.5, nth = 2}} end
  if ev.path == "{d}/emptyrewrite" then return hermes.rewrite{{}} end
  if ev.path == "{d}/bigrewrite" then return hermes.rewrite{{data = string.rep("x", 5000)}} end
  if ev.path == "{d}/datarewrite" then return hermes.rewrite{{data = "x"}} end
end
"#
    );
    let steps: Vec<String> = files.iter().map(|p| format!("open:{}:r", p.display())).collect();
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, depth(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0, "depth exits 0");
    let expect = [
        ("policy.lua:2:", "hermes.fault needs probability"),
        ("policy.lua:3:", "hermes.fault needs probability"),
        ("policy.lua:4:", "needs flags, mode or data"),
        ("policy.lua:5:", "limited to 4000 bytes"),
        ("", "does not apply to open"),
    ];
    for ((step, path), (line, what)) in steps.iter().zip(&files).zip(expect) {
        run.check(result(&run, step) == "ERR EPERM", &format!("{step}: EPERM"));
        let rec = at_path(&run, path);
        let error = rec[0]["error"].as_str().unwrap_or_default();
        run.check(error.contains(line) && error.contains(what), &format!("{step}: error {error:?} names {line}"));
        run.check(rec[0]["decision"] == "deny" && rec[0]["errno"] == "EPERM", "traced as the EPERM denial");
    }
}

#[test]
fn a_flags_rewrite_of_a_connect_fails_closed() {
    let echo = EchoServer::start();
    let src = "function on_connect(ev) return hermes.rewrite{flags = hermes.O_RDONLY} end";
    let step = format!("connect:{}", echo.port);
    let run = launch(src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(result(&run, &step) == "ERR EPERM", "the connect is denied with EPERM");
    let rec = run.calls("connect");
    let error = rec[0]["error"].as_str().unwrap_or_default();
    run.check(error.contains("does not apply to connect"), &format!("and says why: {error:?}"));
}

#[test]
fn an_unknown_want_is_refused_before_the_target_runs() {
    let dir = Scratch::new();
    let src = "hermes.want{\"nonsense\"}\nfunction on_open(ev) end\n";
    let policy = s(&dir.write("policy.lua", src));
    let check = hermes(&["check", &policy]).timeout(TIMEOUT).run();
    check.check(check.code != 0, "hermes check fails");
    check.check(
        check.stderr.contains("policy.lua:1:") && check.stderr.contains("unknown context 'nonsense'"),
        "naming the file, line and the bad name",
    );
    let marker = dir.join("marker");
    let step = format!("open:{}:wc", marker.display());
    let run = launch(src, depth(), &[&step]).timeout(TIMEOUT).run();
    run.check(run.code != 0 && run.stdout.is_empty() && !marker.exists(), "hermes launch refuses; nothing ran");
    run.check(run.stderr.contains("policy.lua:1:"), "and names the line");
}
