//! A dynamic program (preload) that execs a static one (no preload can enter it): the
//! static program keeps being mediated, by the ptrace fallback, with the same broker
//! and policy, and its exit status reaches the parent as usual.

use hermes_tests::{c_program, launch, Scratch};

const POLICY: &str = r#"
function on_open(ev)
  if ev.path:match("/secret$") then return hermes.deny("EACCES") end
  if ev.path:match("/from$") then return hermes.redirect(ev.path:gsub("/from$", "/to")) end
end
function on_exec(ev) end
"#;

#[test]
fn a_static_program_execd_by_a_dynamic_one_stays_mediated() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    dir.write("from", "original\n");
    dir.write("to", "redirected\n");
    let from = dir.join("from").display().to_string();
    let stat = c_program("static_calls").display().to_string();
    // sh (dynamic, preloaded) runs the static program twice, the second time as its
    // last command (sh may exec it in place), and exits with its status.
    let script = format!("{stat} open:{secret} open:{from}; {stat} open:{secret} exit:9");
    let run = launch(POLICY, "sh", &["-c", &script]).run();
    run.check(run.code == 9, "the static program's exit status passes through sh and hermes");
    let denied = run.stdout.matches(&format!("open:{secret} = ERR EACCES")).count();
    run.check(denied == 2, "the static program's opens are denied both times");
    run.check(run.stdout.contains(&format!("open:{from} = OK redirected")), "and redirected");
    let by_tracer: Vec<_> =
        run.trace.iter().filter(|r| r["layer"] == "ptrace" && r["args"]["path"] == secret.as_str()).collect();
    run.check(by_tracer.len() == 2 && by_tracer.iter().all(|r| r["decision"] == "deny"), "decided by the ptrace layer");
    let sh_exec = run.calls("exec");
    run.check(
        sh_exec.iter().any(|r| r["layer"] == "preload" && r["args"]["path"] == stat.as_str()),
        "sh's exec of the static program was itself mediated by the preload",
    );
}

#[test]
fn a_denied_static_exec_is_denied_before_anything_runs() {
    let stat = c_program("static_calls").display().to_string();
    let policy = "function on_exec(ev) if ev.path:match('static_calls') then return hermes.deny('EACCES') end end\n";
    let run = launch(policy, c_program("calls"), &[&format!("execve:{stat}:pid")]).run();
    run.check(
        run.stdout.contains("= ERR EACCES") && !run.stdout.lines().any(|l| l.starts_with("pid = ")),
        "denied, never ran",
    );
}
