//! A dynamic program (preload) that execs a static one (no preload can enter it): the
//! static program keeps being mediated, by the ptrace fallback, with the same broker
//! and policy, and its exit status reaches the parent as usual.

use hermes_tests::{
    c_program, hermes_bin, launch, privileged_calls, run_command, set_uid_nobody, wait_for_line, Outcome, Scratch,
    PRIVILEGED_POLICY,
};

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

fn check_traced_privileged(run: &Outcome, what: &str) {
    run.check(run.code == 7, "sh's exit status passes through");
    run.check(run.stdout.contains("open:/etc/group = ERR EACCES"), "the policy denied the program's open");
    run.check(run.stdout.contains("open:/etc/passwd = OK"), "and allowed the other");
    run.check(run.stderr.contains(what) && run.stderr.contains("ptrace fallback"), "says how it runs");
}

/// A set-uid program that a mediated shell execs: the loader would ignore LD_PRELOAD
/// in it, so the exec goes to the ptrace fallback, as a static program's does. (It
/// used to run unmediated.)
#[test]
fn a_set_uid_program_execd_in_a_session_runs_under_the_ptrace_fallback() {
    let dir = Scratch::new();
    let prog = privileged_calls(&dir, set_uid_nobody);
    let script = format!("{prog} open:/etc/group open:/etc/passwd ids; exit 7");
    let run = launch(PRIVILEGED_POLICY, "sh", &["-c", &script]).run();
    check_traced_privileged(&run, "is a set-uid program");
    run.check(run.stdout.contains("ids = OK uid=0 euid=65534"), "run by root, traced, it kept its privilege");
}

/// A program with file capabilities, exec'd in a session that runs as a user other
/// than root (here nobody): the loader's secure mode again, so the ptrace fallback.
/// Root's exec of the same program is not in secure mode: it keeps the preload.
#[test]
fn a_program_with_file_capabilities_runs_under_the_ptrace_fallback_for_a_user() {
    let dir = Scratch::new();
    let prog = privileged_calls(&dir, |p| {
        // struct vfs_cap_data, revision 2: CAP_NET_RAW permitted and effective.
        let mut caps = [0u8; 20];
        caps[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        caps[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
        let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: NUL-terminated path and name, and a buffer of `caps.len()` bytes.
        let set = unsafe {
            libc::setxattr(path.as_ptr(), c"security.capability".as_ptr(), caps.as_ptr().cast(), caps.len(), 0)
        };
        assert_eq!(set, 0, "setxattr security.capability: {}", std::io::Error::last_os_error());
    });
    // The whole session runs as nobody (hermes itself not root: the case of a user
    // running `ping`), its policy and trace in a directory nobody may write.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod dir");
    let policy = dir.write("policy.lua", PRIVILEGED_POLICY);
    let trace = dir.join("trace.jsonl");
    let script = format!("{prog} open:/etc/group open:/etc/passwd; exit 7");
    let mut as_nobody = std::process::Command::new("setpriv");
    as_nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(hermes_bin())
        .arg("launch")
        .arg("--policy")
        .arg(&policy)
        .arg("--trace")
        .arg(&trace)
        .args(["--", "sh", "-c", &script]);
    let run = run_command(as_nobody, Some(&trace), std::time::Duration::from_secs(60));
    check_traced_privileged(&run, "is a program with file capabilities");
    let run = launch(PRIVILEGED_POLICY, "sh", &["-c", &format!("{prog} open:/etc/group")]).run();
    run.check(run.stdout.contains("open:/etc/group = ERR EACCES"), "run by root, the program is mediated");
    run.check(!run.stderr.contains("ptrace fallback"), "by the preload: root's exec is not in secure mode");
}

/// Nothing in HERMES can mediate a 32-bit program: its exec is refused with EACCES and
/// a reason (it used to run unmediated).
#[test]
fn a_32_bit_program_execd_in_a_session_is_refused() {
    let dir = Scratch::new();
    let i386 = dir.i386_program("i386");
    let run = launch("function on_exec(ev) end\n", c_program("calls"), &[&format!("execve:{}", i386.display())]).run();
    run.check(run.stdout.contains("= ERR EACCES"), "the exec failed with EACCES");
    run.check(run.stderr.contains("32-bit") && run.stderr.contains("x86-64 programs only"), "says why");
}

/// posix_spawn, posix_spawnp and execvp call libc's own execve from inside libc. With
/// the inline hooks (the default) that execve judges the program; without them
/// (`HERMES_INLINE=0`) it is not patched, so the program is judged before libc is
/// called, found along PATH as libc finds it. (A static program they ran went
/// unmediated there, and a 32-bit one ran.)
#[test]
fn spawned_and_path_searched_programs_are_judged_with_or_without_inline_hooks() {
    for inline in ["1", "0"] {
        check_spawned_and_path_searched(inline);
    }
}

fn check_spawned_and_path_searched(inline: &str) {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let stat = c_program("static_calls");
    let name = stat.file_name().expect("name").to_string_lossy().into_owned();
    let _prog32 = dir.i386_program("prog32");
    let steps = [
        format!("spawn|{}|open:{secret}", stat.display()),
        format!("spawnp|{name}|open:{secret}"),
        format!("execvp|{name}|open:{secret}"),
    ];
    let refused = "spawnp|prog32";
    let path = format!("{}:{}:/usr/bin:/bin", stat.parent().expect("dir").display(), dir.path().display());
    let run = launch(POLICY, c_program("calls"), &[&steps[0], &steps[1], &steps[2], refused])
        .env("HERMES_INLINE", inline)
        .env("PATH", &path)
        .run();
    run.check(run.code == 0, &format!("HERMES_INLINE={inline}: exits 0"));
    check_static_steps_mediated(&run, &secret, &steps);
    run.check(run.stdout.contains(&format!("{refused} = ERR EACCES")), "the 32-bit program was refused");
    run.check(run.stderr.contains("32-bit") && run.stderr.contains("x86-64 programs only"), "saying why");
}

/// A script runs its interpreter: a script whose interpreter is static is followed into
/// the ptrace fallback like the static program itself.
#[test]
fn a_script_with_a_static_interpreter_stays_mediated() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let stat = c_program("static_calls").display().to_string();
    let script = dir.write("script", &format!("#!{stat}\n"));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let run = launch(POLICY, "sh", &["-c", &format!("{} open:{secret}; exit 5", script.display())]).run();
    run.check(run.code == 5, "sh's exit status passes through");
    run.check(run.stdout.contains(&format!("open:{secret} = ERR EACCES")), "the interpreter's open was denied");
    let traced = run.calls("open").into_iter().any(|r| r["layer"] == "ptrace" && r["args"]["path"] == secret.as_str());
    run.check(traced, "by the ptrace layer");
    // The same script as the program `hermes launch` starts.
    let run = launch(POLICY, &script, &[&format!("open:{secret}")]).run();
    run.check(run.stdout.contains(&format!("open:{secret} = ERR EACCES")), "launched, its open was denied");
    let traced = run.calls("open").into_iter().any(|r| r["layer"] == "ptrace" && r["args"]["path"] == secret.as_str());
    run.check(traced, "launched, by the ptrace layer");
}

/// fexecve and execveat name the program by a descriptor: it is judged, and run under
/// the fallback, through /proc/self/fd (both used to run a static program unmediated).
#[test]
fn a_static_program_execd_by_descriptor_stays_mediated() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let stat = c_program("static_calls");
    let (stat_dir, stat_name) = (stat.parent().expect("dir"), stat.file_name().expect("name"));
    let steps = [
        format!("fexecve|{}|open:{secret}", stat.display()),
        format!("execveat|{}|{}|open:{secret}", stat_dir.display(), stat_name.to_string_lossy()),
    ];
    let run = launch(POLICY, c_program("calls"), &[&steps[0], &steps[1]]).run();
    run.check(run.code == 0, "exits 0");
    check_static_steps_mediated(&run, &secret, &steps);
}

/// Each of `steps` of `calls` ran `static_calls open:SECRET` to its end, and each
/// open was denied by the policy through the ptrace layer.
fn check_static_steps_mediated(run: &Outcome, secret: &str, steps: &[String]) {
    let denied = run.stdout.matches(&format!("open:{secret} = ERR EACCES")).count();
    run.check(denied == steps.len(), &format!("{} opens denied, {denied} were", steps.len()));
    let traced = run.calls("open").into_iter().filter(|r| r["layer"] == "ptrace" && r["args"]["path"] == secret);
    run.check(traced.count() == steps.len(), "by the ptrace layer");
    for step in steps {
        run.check(run.stdout.contains(&format!("{step} = OK exit=0")), &format!("{step}: the program ran to its end"));
    }
}

/// A program of the run that becomes another user (a server started by root that drops
/// to nobody) stays mediated: the broker serves the launcher's descendants whatever user
/// they run as. (Its calls were all refused with EPERM: "peer uid 65534 is not ours".)
#[test]
fn a_program_that_becomes_another_user_stays_mediated() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test drops a program to nobody: it needs root");
    let calls = c_program("calls").display().to_string();
    let script =
        format!("setpriv --reuid=65534 --regid=65534 --clear-groups {calls} ids open:/etc/group open:/etc/passwd");
    let run = launch(PRIVILEGED_POLICY, "sh", &["-c", &script]).run();
    run.check(run.stdout.contains("ids = OK uid=65534 euid=65534"), "the program ran as nobody");
    run.check(run.stdout.contains("open:/etc/group = ERR EACCES"), "the policy denied its open");
    run.check(run.stdout.contains("open:/etc/passwd = OK"), "and allowed the other");
    run.check(!run.stderr.contains("not ours"), "the broker served it");
}

/// Another user's process outside the run is still turned away.
#[test]
fn another_users_process_outside_the_run_is_refused() {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test connects as nobody: it needs root");
    let dir = Scratch::new();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod dir");
    let sock_file = dir.join("sock");
    // The run's program says where its broker listens, then waits for us.
    let done = dir.join("done");
    let script = format!(
        "echo \"$HERMES_SOCK\" > {}; for i in $(seq 200); do [ -e {} ] && break; sleep 0.05; done",
        sock_file.display(),
        done.display()
    );
    let session = std::thread::spawn(move || launch(PRIVILEGED_POLICY, "sh", &["-c", &script]).run());
    let name = wait_for_line(&sock_file, "the run's socket name");
    // A child of this test (not of the run's launcher) becomes nobody and connects.
    // SAFETY: the child only makes system calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let refused = (|| {
            // SAFETY: setgid/setuid with constant ids.
            if unsafe { libc::setgid(65534) } != 0 || unsafe { libc::setuid(65534) } != 0 {
                return None;
            }
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
            let mut stream = std::os::unix::net::UnixStream::connect_addr(&addr).ok()?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
            let mut buf = [0u8; 16];
            // Refused: the broker closes the connection without a word (admitted, it
            // would wait for our Hello: the read times out).
            Some(match stream.read(&mut buf) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            })
        })()
        .unwrap_or(false);
        // SAFETY: leaving the forked child without running the test harness's code.
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    std::fs::write(&done, "").expect("tell the run to end");
    let run = session.join().expect("the run");
    run.check(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the connection was closed unanswered");
    run.check(run.stderr.contains("peer uid 65534 is not ours"), "and the broker says why");
}
