//! Faults: bad policies, policies that fail at run time, a broker that dies, programs
//! that cannot run or die by a signal. HERMES fails closed, says why, and never hangs.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Duration;

use hermes_tests::{c_program, hermes, hermes_bin, launch, Outcome, Scratch};

/// The `opens` line for `path`: `(result, milliseconds the open took)`.
fn opened<'a>(run: &'a Outcome, path: &str) -> Vec<(&'a str, u64)> {
    let prefix = format!("{path} = ");
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (result, ms) = rest.rsplit_once(" (")?;
            Some((result, ms.strip_suffix(" ms)")?.parse().ok()?))
        })
        .collect()
}

/// A scratch directory with files `a` and `b` (contents "a" and "b").
fn two_files() -> (Scratch, String, String) {
    let dir = Scratch::new();
    let a = dir.write("a", "a\n").display().to_string();
    let b = dir.write("b", "b\n").display().to_string();
    (dir, a, b)
}

#[test]
fn a_policy_that_does_not_load_stops_the_launch_and_check_names_the_line() {
    // (source, line the message must name)
    let cases = [
        ("function on_open(ev)\n  if ev.path == \"x\" then\n    return hermes.deny(\nend\n", 4),
        ("local x = nil\nlocal y = x.field\nfunction on_open(ev) end\n", 2),
    ];
    for (src, line) in cases {
        let dir = Scratch::new();
        let marker = dir.join("marker");
        let step = format!("write:{}", marker.display());
        let run = launch(src, c_program("calls"), &[&step]).run();
        let at = format!("policy.lua:{line}:");
        run.check(run.code != 0, "hermes launch fails");
        run.check(!marker.exists(), "the target never ran (its marker file does not exist)");
        run.check(run.stdout.is_empty(), "the target printed nothing");
        run.check(run.stderr.contains(&at), &format!("the message names {at}"));

        let policy = dir.write("policy.lua", src);
        let check = hermes(&["check", &policy.display().to_string()]).run();
        check.check(check.code != 0, "hermes check fails");
        check.check(check.stderr.contains(&at), &format!("hermes check names {at}"));
    }
}

#[test]
fn a_handler_error_denies_that_call_only() {
    let (dir, a, _b) = two_files();
    let boom = dir.write("boom", "boom\n").display().to_string();
    let src = "function on_open(ev)\n  if ev.path:match(\"/boom$\") then\n    error(\"boom\")\n  end\nend\n";
    let run = launch(src, c_program("opens"), &["0", &boom, &a]).run();
    run.check(run.code == 0, "opens exits 0");
    run.check(opened(&run, &boom).first().map(|r| r.0) == Some("ERR EPERM"), "the failing handler's call gets EPERM");
    run.check(opened(&run, &a).first().map(|r| r.0) == Some("OK a"), "the next open still works");
    run.check(run.stderr.contains("boom") && run.stderr.contains("policy.lua:3"), "stderr names the error and line");
    let rec = run.trace.iter().find(|r| r["args"]["path"] == boom.as_str()).cloned().unwrap_or_default();
    let error = rec["error"].as_str().unwrap_or_default();
    run.check(rec["decision"] == "deny" && rec["errno"] == "EPERM", "traced as a denial with EPERM");
    run.check(error.contains("policy.lua:3") && error.contains("boom"), &format!("trace error names it: {error:?}"));
}

#[test]
fn a_handler_past_the_time_limit_denies_that_call_only() {
    let (dir, a, b) = two_files();
    let slow = dir.write("loop", "loop\n").display().to_string();
    let src = "function on_open(ev)\n  if ev.path:match(\"/loop$\") then\n    while true do end\n  end\nend\n";
    let run = launch(src, c_program("opens"), &["0", &a, &slow, &b])
        .launch_option("--policy-timeout=50")
        .timeout(Duration::from_secs(20))
        .run();
    run.check(run.code == 0, "opens exits 0");
    let looped = opened(&run, &slow);
    run.check(looped.first().map(|r| r.0) == Some("ERR EPERM"), "the looping handler's call gets EPERM");
    let ms = looped.first().map(|r| r.1).unwrap_or(u64::MAX);
    run.check((40..2000).contains(&ms), &format!("it was stopped by the 50 ms limit ({ms} ms)"));
    run.check(opened(&run, &a).first().map(|r| r.0) == Some("OK a"), "the open before works");
    run.check(opened(&run, &b).first().map(|r| r.0) == Some("OK b"), "the open after works");
    run.check(run.elapsed < Duration::from_secs(5), "the run is fast");
    let rec = run.trace.iter().find(|r| r["args"]["path"] == slow.as_str()).cloned().unwrap_or_default();
    run.check(rec["decision"] == "deny" && rec["error"].as_str().is_some_and(|e| e.contains("time limit")), "traced");
    run.check(run.stderr.contains("time limit"), "reported on stderr");
}

#[test]
fn a_dead_broker_denies_every_later_call_quickly_and_the_target_status_passes_through() {
    let (dir, a, b) = two_files();
    let die = dir.write("die", "die\n").display().to_string();
    let src = "function on_open(ev)\n  if ev.path:match(\"/die$\") then os.exit(1) end\nend\n";
    let run = launch(src, c_program("opens"), &["7", &a, &die, &a, &b, &a]).timeout(Duration::from_secs(20)).run();
    run.check(run.code == 7, "hermes exits with the target's own status");
    run.check(run.elapsed < Duration::from_secs(4), "the whole run finishes quickly");
    let first_a = opened(&run, &a);
    run.check(first_a.len() == 3 && first_a[0].0 == "OK a", "the first open, before the broker died, works");
    let mut after = first_a[1..].to_vec();
    after.extend(opened(&run, &die));
    after.extend(opened(&run, &b));
    run.check(after.len() == 4, "four opens after the broker died");
    run.check(after.iter().all(|(r, _)| *r == "ERR EPERM"), "every open after it is denied with EPERM");
    run.check(after.iter().all(|(_, ms)| *ms < 1000), "each denial is quick");
    run.check(run.stderr.contains("broker"), "stderr says the broker went away");
}

#[test]
fn a_decision_that_is_not_one_fails_closed_with_a_message() {
    let (dir, a, _b) = two_files();
    let bogus = dir.write("bogus", "x\n").display().to_string();
    let maybe = dir.write("maybe", "x\n").display().to_string();
    let number = dir.write("number", "x\n").display().to_string();
    let src = r#"
function on_open(ev)
  if ev.path:match("/bogus$") then return hermes.deny("EBOGUS") end
  if ev.path:match("/maybe$") then return "MAYBE" end
  if ev.path:match("/number$") then return 42 end
end
"#;
    let run = launch(src, c_program("opens"), &["0", &bogus, &maybe, &number, &a]).run();
    run.check(run.code == 0, "opens exits 0");
    for (path, says) in [(&bogus, "EBOGUS"), (&maybe, "MAYBE"), (&number, "integer")] {
        run.check(opened(&run, path).first().map(|r| r.0) == Some("ERR EPERM"), &format!("{path}: EPERM"));
        run.check(run.stderr.lines().any(|l| l.contains(says) && l.contains("EPERM")), &format!("stderr names {says}"));
        let rec = run.trace.iter().find(|r| r["args"]["path"] == path.as_str()).cloned().unwrap_or_default();
        let error = rec["error"].as_str().unwrap_or_default();
        run.check(rec["errno"] == "EPERM" && error.contains(says), &format!("trace error names {says}: {error:?}"));
    }
    run.check(opened(&run, &a).first().map(|r| r.0) == Some("OK a"), "a normal open still works");
}

#[test]
fn check_refuses_policies_without_a_usable_entry_point() {
    let dir = Scratch::new();
    let cases = [
        ("none.lua", "local x = 1\nfunction helper() end\n", "no entry point"),
        ("notfn.lua", "on_open = 5\n", "on_open"),
    ];
    for (name, src, says) in cases {
        let path = dir.write(name, src).display().to_string();
        let check = hermes(&["check", &path]).run();
        check.check(check.code != 0, &format!("{name}: check fails"));
        check
            .check(check.stderr.contains(name) && check.stderr.contains(says), &format!("{name}: message says {says}"));
        let run = launch(src, "/bin/true", &[]).run();
        run.check(run.code != 0 && run.stderr.contains(says), &format!("{name}: launch refuses it too"));
    }
    let good = dir.write("good.lua", "function on_connect(ev) end\n").display().to_string();
    let check = hermes(&["check", &good]).run();
    check.check(check.code == 0 && check.stdout.contains("connect"), "a good policy passes and lists its subscription");
}

#[test]
fn a_program_that_cannot_run_gives_127_or_126() {
    let dir = Scratch::new();
    let policy = "function on_open(ev) end\n";
    for prog in ["/nonexistent/program", "hermes-no-such-program-anywhere"] {
        let run = launch(policy, prog, &[]).run();
        run.check(run.code == 127, &format!("{prog}: exit 127"));
        run.check(run.stderr.contains(prog) && run.stderr.contains("not found"), &format!("{prog}: says not found"));
    }
    let script = dir.write("script", "#!/bin/sh\necho ran\n");
    let run = launch(policy, &script, &[]).run();
    run.check(run.code == 126, "a file without execute permission: exit 126");
    run.check(run.stderr.contains("script") && run.stderr.contains("not executable"), "says not executable");
    run.check(!run.stdout.contains("ran"), "it did not run");
    // A 32-bit program: the preload cannot enter it (ld.so would skip it with a
    // warning and run the program unmediated), nor may the fallback's filter let its
    // system calls by. Refused before anything starts; a header is all it takes.
    let i386 = dir.i386_program("i386");
    let run = launch(policy, &i386, &[]).run();
    run.check(run.code == 126, "a 32-bit program: exit 126");
    run.check(run.stderr.contains("32-bit") && run.stderr.contains("x86-64 programs only"), "says why");
}

/// The program starts while the broker starts: its preload waits in its constructor for
/// what only the ready broker knows, which comes down an inherited pipe
/// (`HERMES_READY_FD`). The program keeps nothing of it: no descriptor, no variable.
#[test]
fn the_start_up_handoff_leaves_nothing_in_the_program() {
    // The program's own descriptors, then its environment (sh's $$ is the target).
    let script = "ls /proc/$$/fd; echo ---; env";
    let run = launch("function on_connect(ev) end\n", "sh", &["-c", script]).run();
    run.check(run.code == 0, "sh exits 0");
    let native = Command::new("sh").args(["-c", script]).stdin(Stdio::null()).output().expect("run sh");
    let fds = |out: &str| {
        out.split("---").next().unwrap_or_default().split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let expected = fds(&String::from_utf8_lossy(&native.stdout));
    run.check(fds(&run.stdout) == expected, &format!("the same descriptors as natively: {expected:?}"));
    run.check(!run.stdout.contains("HERMES_READY_FD"), "no HERMES_READY_FD in its environment");
    run.check(run.stdout.contains("HERMES_MASK="), "the handoff reached its environment, for its children");
}

/// A program whose handoff never completes (its launcher went away before the broker
/// was ready) or is not one stops in its constructor, before main, and says why.
#[test]
fn a_handoff_cut_short_stops_the_program_before_main() {
    let dir = Scratch::new();
    let marker = dir.join("marker");
    let step = format!("write:{}", marker.display());
    let preload = hermes_bin().with_file_name("libhermes_preload.so");
    let calls = c_program("calls");
    let cases = [
        ("", "went away before the broker was ready"),
        ("HERMES_MASK=1\0", "went away before the broker was ready"),
        ("garbage\0end\0", "malformed handoff"),
        ("PATH=/tmp\0end\0", "malformed handoff"),
    ];
    let run = |handoff: &str| {
        let file = dir.write("handoff", handoff);
        let out = Command::new("sh")
            .args([
                "-c",
                "exec env LD_PRELOAD=\"$1\" HERMES_SOCK=hermes-test-none HERMES_READY_FD=5 \"$2\" \"$3\" 5<\"$4\"",
            ])
            .args([OsStr::new("sh"), preload.as_os_str(), calls.as_os_str(), OsStr::new(&step), file.as_os_str()])
            .stdin(Stdio::null())
            .output()
            .expect("run sh");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (handoff, says) in cases {
        let (code, stderr) = run(handoff);
        assert_eq!(code, Some(126), "{handoff:?}: exit 126; stderr: {stderr}");
        assert!(stderr.contains(says), "{handoff:?}: says {says:?}; stderr: {stderr}");
        assert!(!marker.exists(), "{handoff:?}: the program never ran");
    }
    // A complete one: the program runs, with what it was handed (nothing watched).
    let (code, stderr) = run("HERMES_MASK=0\0end\0");
    assert_eq!(code, Some(0), "a complete handoff: exit 0; stderr: {stderr}");
    assert!(marker.exists(), "a complete handoff: the program ran");
}

#[test]
fn the_target_exit_status_or_signal_passes_through() {
    let policy = "function on_open(ev) end\n";
    for (script, code) in [("exit 42", 42), ("exit 0", 0), ("kill -9 $$", 137), ("kill -TERM $$", 143)] {
        let run = launch(policy, "sh", &["-c", script]).run();
        run.check(run.code == code, &format!("sh -c '{script}': hermes exits {code}"));
    }
}

#[test]
fn a_handler_blocked_in_a_c_function_is_bounded_by_the_time_limit() {
    let (dir, a, _b) = two_files();
    let slow = dir.write("slow", "slow\n").display().to_string();
    let src = "function on_open(ev)\n  if ev.path:match(\"/slow$\") then os.execute(\"sleep 0.5\") end\nend\n";
    // The slow call twice, the second once the first's handler has finished and the
    // watchdog has had nothing to watch for a while (it sleeps then: the handler that
    // starts must wake it); then an ordinary call.
    let opens = c_program("opens").display().to_string();
    let script = format!("{opens} 0 {slow}; sleep 0.8; {opens} 0 {slow}; sleep 0.8; {opens} 0 {a}");
    let run = launch(src, "sh", &["-c", &script]).launch_option("--policy-timeout=50").run();
    // docs/lua-api.md, "Faults: fail closed": a handler that runs past the time limit
    // gets the call denied with EPERM and the fault reported — even when it is stuck
    // in a C function the instruction hook cannot interrupt.
    let got = opened(&run, &slow);
    let denied_in_time = |r: &(&str, u64)| r.0 == "ERR EPERM" && r.1 < 450;
    run.check(got.len() == 2, &format!("two slow calls: {got:?}"));
    run.check(
        got.iter().all(denied_in_time),
        &format!("a 0.5 s handler with a 50 ms limit: denied with EPERM before it returned, both times: {got:?}"),
    );
    let rec = run.trace.iter().find(|r| r["args"]["path"] == slow.as_str()).cloned().unwrap_or_default();
    run.check(rec["decision"] == "deny" && rec["error"].is_string(), "traced as a fail-closed denial");
    run.check(run.stderr.contains("time limit"), "reported on stderr");
    run.check(opened(&run, &a).first().map(|r| r.0) == Some("OK a"), "a later open works");
}

#[test]
fn a_decision_slower_than_the_broker_timeout_does_not_break_later_calls() {
    let (dir, a, b) = two_files();
    let slow = dir.write("slow", "slow\n").display().to_string();
    // The broker stops itself (SIGSTOP) for 6 s in the middle of a decision — a wedged
    // broker, which no policy time limit can end: only the preload's own 5 s reply
    // timeout can.
    let src = "function on_open(ev)\n  if ev.path:match(\"/slow$\") then\n    \
               os.execute(\"kill -STOP $PPID; (sleep 6; kill -CONT $PPID) &\")\n  end\nend\n";
    let run = launch(src, c_program("opens"), &["0", &a, &slow, &a, &b, &a]).timeout(Duration::from_secs(40)).run();
    let got = opened(&run, &slow);
    run.check(got.first().map(|r| r.0) == Some("ERR EPERM"), "the call whose answer came too late fails closed");
    let a_results: Vec<&str> = opened(&run, &a).into_iter().map(|r| r.0).collect();
    run.check(a_results == ["OK a", "OK a", "OK a"], &format!("later opens of a work: {a_results:?}"));
    run.check(opened(&run, &b).first().map(|r| r.0) == Some("OK b"), "later open of b works");
    let ms = got.first().map(|r| r.1).unwrap_or(u64::MAX);
    run.check(ms < 8000, &format!("the late call waited one timeout, not two ({ms} ms)"));
}

/// The kernel marks the board when the broker dies, however it dies (here SIGKILL), so
/// even calls the preload never sends it fail closed at once: an observed open, which
/// would otherwise go into the thread's ring unread.
#[test]
fn after_the_broker_is_killed_even_observed_calls_are_denied() {
    let (_dir, a, _b) = two_files();
    let run = launch("on_open = hermes.allow()\n", c_program("kill_broker"), &["5", "3", &a])
        .timeout(Duration::from_secs(20))
        .run();
    run.check(run.code == 5, "hermes exits with the target's own status");
    let lines: Vec<&str> = run.stdout.lines().collect();
    run.check(lines.first() == Some(&"before = OK"), "the open before the kill is observed and runs");
    run.check(lines.len() == 4 && lines[1..].iter().all(|l| *l == "after = ERR EPERM"), "every later open is denied");
    run.check(run.stderr.contains("broker unreachable (it died)"), "the preload says why, once");
    run.check(run.elapsed < Duration::from_secs(5), "nothing waits for the dead broker");
}
