//! The seccomp + ptrace fallback: a statically linked program (no PT_INTERP, so the
//! preload never loads) runs under the tracer, with the same decisions as the preload
//! gives a dynamic program, its children and threads followed, hostile arguments
//! answered without hurting the tracer, and its exit status passed through.

use std::time::Duration;

use hermes_tests::{
    c_program, launch, privileged_calls, set_uid_nobody, EchoServer, Scratch, UdpSink, PRIVILEGED_POLICY,
};
use serde_json::Value as Json;

const TIMEOUT: Duration = Duration::from_secs(15);
/// A policy that allows everything (and so asks about everything).
const ALLOW_ALL: &str = "function on_call(ev) end";

/// The decision matrix both layers get.
fn policy(dir: &Scratch, echo: u16, udp: u16) -> String {
    format!(
        r#"
local dir = "{d}"
function on_open(ev)
  if ev.path == dir .. "/secret" then return hermes.deny("EACCES") end
  if ev.path == dir .. "/from" then return hermes.redirect(dir .. "/to") end
  if ev.write and ev.path:sub(1, #dir) == dir and ev.path ~= dir .. "/allowed" then return hermes.deny("EROFS") end
end
function on_connect(ev)
  if ev.port == 1 then return hermes.redirect{{port = {echo}}} end
  if ev.port == 2 then return hermes.deny("ECONNREFUSED") end
end
local function send(ev)
  if ev.port == 3 then return hermes.redirect{{port = {udp}}} end
  if ev.port == 4 then return hermes.deny("ENETUNREACH") end
  if ev.port == 5 then return hermes.emulate(4) end
end
on_sendto = send
on_sendmsg = send
function on_exec(ev)
  if ev.path == dir .. "/fake-prog" then return hermes.redirect(ev.argv[2]) end
  if ev.argv[2] == "denied" then return hermes.deny("EACCES") end
end
"#,
        d = dir.path().display()
    )
}

fn scratch() -> Scratch {
    let dir = Scratch::new();
    dir.write("plain", "plain content\n");
    dir.write("secret", "secret content\n");
    dir.write("from", "original content\n");
    dir.write("to", "redirected content\n");
    dir
}

/// The result printed for `step`, or "" when the step printed nothing.
fn result<'a>(stdout: &'a str, step: &str) -> &'a str {
    let prefix = format!("{step} = ");
    stdout.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("")
}

fn static_calls() -> std::path::PathBuf {
    c_program("static_calls")
}

/// The same steps and policy through the preload (dynamic `calls`) and the ptrace
/// fallback (static `static_calls`) print the same results.
#[test]
fn the_decision_matrix_matches_the_preload_layer() {
    let dir = scratch();
    let echo = EchoServer::start();
    let sink = UdpSink::start();
    let d = dir.path().display().to_string();
    let mut steps = Vec::new();
    for name in ["plain", "secret", "from"] {
        steps.push(format!("open:{d}/{name}"));
        steps.push(format!("openat:{d}:{name}"));
    }
    steps.extend([format!("creat:{d}/created"), format!("write:{d}/allowed"), format!("write:{d}/written")]);
    for port in [echo.port, 1, 2] {
        steps.push(format!("connect:127.0.0.1:{port}"));
    }
    for port in [3, 4, 5] {
        steps.push(format!("sendto:127.0.0.1:{port}"));
        steps.push(format!("sendmsg:127.0.0.1:{port}"));
    }
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let src = policy(&dir, echo.port, sink.port);
    let preload = launch(&src, c_program("calls"), &args).timeout(TIMEOUT).run();
    let traced = launch(&src, static_calls(), &args).timeout(TIMEOUT).run();
    preload.check(preload.code == 0, "calls exits 0");
    traced.check(traced.code == 0, "static_calls exits 0");
    for step in &steps {
        let (want, got) = (result(&preload.stdout, step), result(&traced.stdout, step));
        traced.check(!want.is_empty() && want == got, &format!("{step}: preload gave {want:?}, ptrace {got:?}"));
    }
    // Spot checks, so that the matrix cannot pass by both layers failing alike.
    let r = |step: &str| result(&traced.stdout, step).to_owned();
    assert_eq!(r(&format!("open:{d}/plain")), "OK plain content");
    assert_eq!(r(&format!("open:{d}/secret")), "ERR EACCES");
    assert_eq!(r(&format!("openat:{d}:from")), "OK redirected content");
    assert_eq!(r(&format!("creat:{d}/created")), "ERR EROFS");
    assert_eq!(r("connect:127.0.0.1:1"), "OK echo: hello");
    assert_eq!(r("connect:127.0.0.1:2"), "ERR ECONNREFUSED");
    assert_eq!(r("sendmsg:127.0.0.1:4"), "ERR ENETUNREACH");
    assert_eq!(r("sendto:127.0.0.1:5"), "OK 4");
    // Two redirected datagrams per layer, nothing from the denied or emulated ones.
    for _ in 0..4 {
        assert_eq!(sink.recv().as_deref(), Some(&b"ping"[..]), "a redirected datagram arrived");
    }
    assert!(sink.quiet_for(Duration::from_millis(200)), "denied and emulated datagrams were not sent");
    assert!(!dir.join("created").exists() && !dir.join("written").exists(), "denied files were not created");

    // The ptrace run's trace: every record from the ptrace layer, with the syscall's
    // name, the resolved path, and the results of the calls that ran.
    traced.check(!traced.trace.is_empty(), "the ptrace run has a trace");
    traced.check(traced.trace.iter().all(|r| r["layer"] == "ptrace"), "every record says layer ptrace");
    let of = |path: &str, decision: &str| -> Vec<&Json> {
        traced.trace.iter().filter(|r| r["args"]["path"] == path && r["decision"] == decision).collect()
    };
    traced.check(of(&format!("{d}/secret"), "deny").len() == 2, "both denied opens traced");
    let redirected = of(&format!("{d}/from"), "redirect");
    traced.check(
        redirected.len() == 2 && redirected.iter().all(|r| r["call"] == "openat" && r["result"].as_i64() >= Some(0)),
        "redirected opens traced as openat, with their results",
    );
    let connects = traced.calls("connect");
    traced.check(connects.len() == 3, "three connects traced");
    traced
        .check(connects.iter().any(|r| r["redirect"] == format!("127.0.0.1:{}", echo.port)), "connect redirect traced");
    let exe = static_calls();
    traced.check(traced.trace.iter().all(|r| r["exe"] == exe.display().to_string()), "exe is the static program");
}

/// The dynamic loader ignores LD_PRELOAD in a program that runs set-uid (here to
/// nobody, from root): such a program runs under the ptrace fallback, which decides its
/// calls, and nothing meant for the preload reaches it.
#[test]
fn a_set_uid_program_runs_under_the_ptrace_fallback() {
    let dir = Scratch::new();
    let prog = privileged_calls(&dir, set_uid_nobody);
    let run = launch(PRIVILEGED_POLICY, &prog, &["open:/etc/group", "open:/etc/passwd", "ids"]).timeout(TIMEOUT).run();
    run.check(run.code == 0, "exits 0");
    run.check(run.stdout.contains("ids = OK uid=0 euid=65534"), "traced by root, it kept its privilege");
    run.check(result(&run.stdout, "open:/etc/group") == "ERR EACCES", "the policy denied its open");
    run.check(result(&run.stdout, "open:/etc/passwd").starts_with("OK"), "and allowed the other");
    run.check(
        run.stderr.contains("is a set-uid program") && run.stderr.contains("ptrace fallback"),
        "says how it runs",
    );
    let opens = run.calls("open");
    run.check(!opens.is_empty() && opens.iter().all(|r| r["layer"] == "ptrace"), "its opens were traced");
}

/// A program that is statically linked runs (it used to be refused), with raw
/// syscalls and bare syscall instructions mediated like libc's.
#[test]
fn raw_syscalls_are_mediated_and_registers_survive_redirects() {
    let dir = scratch();
    let d = dir.path().display().to_string();
    let steps = [
        format!("rawopenat:{d}/secret"),
        format!("rawopenat:{d}/from"),
        format!("asmopenat:{d}/secret"),
        format!("asmopenat:{d}/from"),
        format!("openat2:{d}/secret"),
        format!("openat2:{d}/from"),
        format!("open:{d}/plain"),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&policy(&dir, 9, 9), static_calls(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0, "exits 0");
    for step in &steps {
        let want = match step.rsplit('/').next() {
            Some("secret") => "ERR EACCES",
            Some("from") => "OK redirected content",
            _ => "OK plain content",
        };
        run.check(result(&run.stdout, step) == want, &format!("{step}: want {want}"));
    }
    run.check(run.calls("openat2").len() == 2, "openat2 is traced under its own name");
}

/// execve of a static child (mediated too), an exec redirect and an exec denial,
/// a forked child and a thread: every one of them is under the policy.
#[test]
fn exec_fork_and_threads_are_followed() {
    let dir = scratch();
    let d = dir.path().display().to_string();
    let prog = static_calls().display().to_string();
    let steps = [
        "pid".to_owned(),
        format!("exec|{prog}|open:{d}/secret|pid"),
        format!("exec|{d}/fake-prog|{prog}|open:{d}/from"),
        format!("exec|{prog}|denied"),
        // A dynamic program exec'd from the static one: no preload, but the filter
        // (inherited across exec) keeps it under the tracer.
        format!("exec|/bin/cat|{d}/secret"),
        "fork".to_owned(),
        "pid".to_owned(),
        format!("open:{d}/secret"),
        "thread".to_owned(),
        format!("open:{d}/from"),
        "exit:5".to_owned(),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&policy(&dir, 9, 9), static_calls(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 5, "the forked child's exit status comes back through the parent");
    let pids: Vec<i64> =
        run.stdout.lines().filter_map(|l| l.strip_prefix("pid = ")).filter_map(|p| p.parse().ok()).collect();
    run.check(pids.len() == 3 && pids[0] != pids[1] && pids[0] != pids[2], "three processes printed their pids");
    // The exec'd child: its own open is denied.
    run.check(result(&run.stdout, &format!("open:{d}/secret")) == "ERR EACCES", "denied in the exec'd child");
    run.check(result(&run.stdout, &steps[1]) == "OK exit=0", "the exec'd child ran");
    // The redirected exec ran the real program, whose open was redirected in turn.
    run.check(result(&run.stdout, &format!("open:{d}/from")) == "OK redirected content", "redirect after exec");
    run.check(result(&run.stdout, &steps[3]) == "ERR EACCES", "exec denied");
    let secret_denials: Vec<&Json> =
        run.trace.iter().filter(|r| r["args"]["path"] == format!("{d}/secret") && r["decision"] == "deny").collect();
    let denial_pids: Vec<i64> = secret_denials.iter().filter_map(|r| r["pid"].as_i64()).collect();
    run.check(denial_pids.len() == 3, "three denials of secret: the exec'd children and the forked one");
    run.check(denial_pids.contains(&pids[1]) && denial_pids.contains(&pids[2]), "attributed to those processes");
    run.check(result(&run.stdout, &steps[4]) == "OK exit=1", "cat could not read secret");
    run.check(
        denial_pids.iter().any(|p| !pids.contains(p)),
        "the dynamic child's open (cat, no preload) was denied by the ptrace layer",
    );
    let execs = run.calls("execve");
    run.check(execs.len() == 4, "four execve calls traced (not the launcher's own exec)");
    run.check(execs.iter().any(|r| r["decision"] == "redirect"), "exec redirect traced");
    // The thread's open: same pid as the forked child, another tid.
    let from = run.trace.iter().filter(|r| r["args"]["path"] == format!("{d}/from")).collect::<Vec<_>>();
    run.check(from.iter().any(|r| r["pid"] == pids[2] && r["tid"] != pids[2]), "the thread's call has its own tid");
}

/// Bad pointers get EFAULT without hurting the tracer; io_uring and x32 are refused.
#[test]
fn hostile_arguments_and_side_doors() {
    let dir = scratch();
    let d = dir.path().display().to_string();
    let prog = static_calls().display().to_string();
    let steps = [
        "badptr".to_owned(),
        format!("badargv:{prog}"),
        "uring".to_owned(),
        "x32".to_owned(),
        format!("open:{d}/secret"),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&policy(&dir, 9, 9), static_calls(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 0, "exits 0");
    run.check(result(&run.stdout, "badptr") == "ERR EFAULT", "open of an unmapped path: EFAULT");
    run.check(result(&run.stdout, &steps[1]) == "ERR EFAULT", "execve of an unmapped argv: EFAULT");
    run.check(result(&run.stdout, "uring") == "ERR EPERM", "io_uring_setup: EPERM");
    run.check(result(&run.stdout, "x32") == "ERR ENOSYS", "x32 syscall numbers: ENOSYS");
    run.check(result(&run.stdout, &steps[4]) == "ERR EACCES", "the tracer still mediates afterwards");
}

/// `int 0x80` enters the i386 syscall table, whose numbers mean other calls: the
/// filter's architecture check kills the process with SIGSYS.
#[test]
fn int80_kills_the_process() {
    let run = launch(ALLOW_ALL, static_calls(), &["pid", "int80", "pid"]).timeout(TIMEOUT).run();
    run.check(run.code == 128 + libc::SIGSYS, "killed by SIGSYS (159)");
    run.check(!run.stdout.contains("int80 = OK"), "the int 0x80 call did not return");
}

#[test]
fn exit_status_passes_through() {
    let run = launch(ALLOW_ALL, static_calls(), &["exit:42"]).timeout(TIMEOUT).run();
    run.check(run.code == 42, "exit 42");
    let run = launch(ALLOW_ALL, static_calls(), &["killself"]).timeout(TIMEOUT).run();
    run.check(run.code == 137, "SIGKILL: 137");
}

/// A kill decision kills the process before the call runs.
#[test]
fn kill_decision_kills_the_caller() {
    let dir = scratch();
    let d = dir.path().display().to_string();
    let src = format!(r#"function on_open(ev) if ev.path == "{d}/secret" then return hermes.kill() end end"#);
    let steps = [format!("open:{d}/plain"), format!("open:{d}/secret"), format!("open:{d}/plain2")];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, static_calls(), &args).timeout(TIMEOUT).run();
    run.check(run.code == 137, "killed: 137");
    run.check(run.stdout.contains("plain = OK") && !run.stdout.contains("secret = "), "stopped at the killing call");
}

/// A target that stops itself stays stopped (PTRACE_LISTEN) until a SIGCONT, then runs
/// on to the end.
#[test]
fn a_stopped_target_is_continued_not_hung() {
    let run = launch(ALLOW_ALL, static_calls(), &["stopcont", "exit:3"]).timeout(TIMEOUT).run();
    run.check(run.code == 3, "ran to the end");
    let state = result(&run.stdout, "stopcont");
    // 't': stopped under a tracer; 'T': stopped. Anything else: it kept running.
    run.check(state == "OK state=t" || state == "OK state=T", "the target was stopped while its child looked");
}

/// Operations the policy does not watch are not sent to the broker at all.
#[test]
fn unwatched_operations_are_not_asked() {
    let dir = scratch();
    let d = dir.path().display().to_string();
    let src = "function on_connect(ev) return hermes.deny(\"ECONNREFUSED\") end";
    let steps = [format!("open:{d}/secret"), "connect:127.0.0.1:9".to_owned()];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(src, static_calls(), &args).timeout(TIMEOUT).run();
    run.check(result(&run.stdout, &steps[0]) == "OK secret content", "open allowed");
    run.check(result(&run.stdout, &steps[1]) == "ERR ECONNREFUSED", "connect denied");
    run.check(run.trace.len() == 1 && run.trace[0]["op"] == "connect", "only the connect was asked");
}
