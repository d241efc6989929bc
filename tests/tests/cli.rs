//! The command line as a user meets it: -v / -vv output, --help that teaches, check.

use hermes_tests::{c_program, hermes, launch, Scratch};

#[test]
fn verbose_levels_show_decisions_then_everything() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "s\n").display().to_string();
    let plain = dir.write("plain", "p\n").display().to_string();
    let policy = "function on_open(ev) if ev.path:match('/secret$') then return hermes.deny('EACCES') end end\n";
    let opens = c_program("opens");
    let v = launch(policy, &opens, &["0", &secret, &plain]).launch_option("-v").run();
    v.check(v.stderr.contains(&format!("open(\"{secret}\", 0o0) = deny EACCES (on_open)")), "-v shows the denial");
    v.check(!v.stderr.contains(&format!("\"{plain}\"")), "-v leaves out calls no handler decided");
    let vv = launch(policy, &opens, &["0", &secret, &plain]).launch_option("-vv").run();
    vv.check(vv.stderr.contains(&format!("open(\"{plain}\", 0o0) = allow (default) -> 3")), "-vv shows every call");
}

#[test]
fn help_teaches_with_examples() {
    let run = hermes(&["launch", "--help"]).run();
    for needle in ["--policy", "--trace", "--strict", "--hook", "--backtrace", "Examples:", "Exit status"] {
        run.check(run.stdout.contains(needle), &format!("launch --help mentions {needle}"));
    }
    let run = hermes(&["--help"]).run();
    run.check(run.stdout.contains("launch") && run.stdout.contains("check"), "top-level help lists the commands");
    let run = hermes(&["launch", "--policy-timeout", "99999", "--", "true"]).run();
    run.check(run.code == 2 && run.stderr.contains("3000"), "an out-of-range time limit is refused with its range");
    let run = hermes(&["launch", "--spin-us", "20000", "--", "true"]).run();
    run.check(run.code == 2 && run.stderr.contains("10000"), "an out-of-range spin is refused with its range");
}

#[test]
fn check_reports_what_a_policy_subscribes_to() {
    let dir = Scratch::new();
    let p = dir.write("p.lua", "function on_connect(ev) end\nfunction on_exec(ev) end\n").display().to_string();
    let run = hermes(&["check", &p]).run();
    run.check(run.code == 0 && run.stdout.contains("subscribes to: connect, exec"), "check names the subscriptions");
}
