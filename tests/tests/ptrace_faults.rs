//! The ptrace fallback under stress and abuse: busybox-static's applets (fork, exec,
//! pipes, sockets), a hundred children at once, targets that die or stop with a
//! thread inside a mediated call, a launcher killed under its target, bad pointers in
//! every mediated call, and the side doors (`int 0x80`, io_uring, a seccomp listener
//! of the program's own, an untraced clone) under a denying and a redirecting policy.
//! Nothing may hang, nothing may be left running, the tracer never crashes, and what
//! a side door does never depends on the policy.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hermes_tests::{c_program, hermes_bin, launch, EchoServer, Outcome, Scratch};
use serde_json::Value as Json;

const TIMEOUT: Duration = Duration::from_secs(15);
/// A port the policies name where no test program goes (static_faults sends to 9).
const UNUSED_PORT: u16 = 7;

/// Busybox-static (Debian's `busybox-static` package; `.ci/run` installs it).
fn busybox() -> PathBuf {
    let bin = PathBuf::from("/bin/busybox");
    assert!(bin.exists(), "/bin/busybox is missing: apt-get install busybox-static (.ci/run does)");
    bin
}

fn static_faults() -> PathBuf {
    c_program("static_faults")
}

fn static_calls() -> PathBuf {
    c_program("static_calls")
}

/// A scratch directory with `plain`, `secret` and `to` in it.
fn scratch() -> Scratch {
    let dir = Scratch::new();
    dir.write("plain", "plain content\n");
    dir.write("secret", "secret content\n");
    dir.write("to", "redirected content\n");
    dir
}

/// The two policies every program here runs under. Both watch every operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// `secret` cannot be opened, `port` cannot be reached, `denied` cannot be run.
    Deny,
    /// `secret` opens `to`, port 1 reaches `port`, `denied` runs `/bin/true`.
    Redirect,
}

const POLICIES: [Policy; 2] = [Policy::Deny, Policy::Redirect];

impl Policy {
    fn source(self, dir: &Scratch, port: u16) -> String {
        let d = dir.path().display();
        match self {
            Policy::Deny => format!(
                r#"
function on_open(ev) if ev.path == "{d}/secret" then return hermes.deny("EACCES") end end
function on_connect(ev) if ev.port == {port} then return hermes.deny("ECONNREFUSED") end end
function on_sendto(ev) if ev.port == {port} then return hermes.deny("ENETUNREACH") end end
on_sendmsg = on_sendto
function on_exec(ev) if ev.argv[2] == "denied" then return hermes.deny("EACCES") end end
"#
            ),
            Policy::Redirect => format!(
                r#"
function on_open(ev) if ev.path == "{d}/secret" then return hermes.redirect("{d}/to") end end
function on_connect(ev) if ev.port == 1 then return hermes.redirect{{port = {port}}} end end
function on_sendto(ev) if ev.port == 1 then return hermes.redirect{{port = {port}}} end end
on_sendmsg = on_sendto
function on_exec(ev) if ev.argv[2] == "denied" then return hermes.redirect("/bin/true") end end
"#
            ),
        }
    }
}

/// The result printed for `step`, or "" when the step printed nothing.
fn result<'a>(stdout: &'a str, step: &str) -> &'a str {
    let prefix = format!("{step} = ");
    stdout.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("")
}

fn no_tracer_trouble(run: &Outcome) {
    run.check(!run.stderr.contains("panicked") && !run.stderr.contains("hermes: ptrace"), "no tracer trouble");
}

/// The trace as a list of `"P call decision what"` lines, pids renumbered 1, 2, … in
/// order of appearance, keeping only records `keep` selects.
fn sequence(trace: &[Json], keep: impl Fn(&Json) -> Option<String>) -> Vec<String> {
    let mut pids: HashMap<i64, usize> = HashMap::new();
    trace
        .iter()
        .filter_map(|r| {
            let what = keep(r)?;
            let pid = r["pid"].as_i64().unwrap_or(-1);
            let n = pids.len() + 1;
            let p = *pids.entry(pid).or_insert(n);
            Some(format!("{p} {} {} {what}", r["call"].as_str().unwrap_or("?"), r["decision"].as_str().unwrap_or("?")))
        })
        .collect()
}

/// A one-shot-per-connection HTTP server on 127.0.0.1 that answers every request
/// with `body`.
fn http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = (&stream).write_all(reply.as_bytes());
            });
        }
    });
    port
}

#[test]
fn busybox_cat_and_wget_under_both_policies() {
    let dir = scratch();
    let port = http_server("served body\n");
    let secret = dir.join("secret").display().to_string();
    for policy in POLICIES {
        let src = policy.source(&dir, port);
        let cat = launch(&src, busybox(), &["cat", &secret]).timeout(TIMEOUT).run();
        no_tracer_trouble(&cat);
        cat.check(
            !cat.trace.is_empty() && cat.trace.iter().all(|r| r["layer"] == "ptrace"),
            "busybox-static runs under the ptrace layer",
        );
        let url = match policy {
            Policy::Deny => format!("http://127.0.0.1:{port}/"),
            Policy::Redirect => "http://127.0.0.1:1/".to_owned(),
        };
        let wget = launch(&src, busybox(), &["wget", "-q", "-O", "-", &url]).timeout(TIMEOUT).run();
        no_tracer_trouble(&wget);
        match policy {
            Policy::Deny => {
                cat.check(cat.code == 1 && cat.stderr.contains("Permission denied"), "cat: EACCES");
                cat.check(!cat.stdout.contains("secret content"), "nothing of secret printed");
                wget.check(wget.code == 1 && wget.stderr.contains("refused"), "wget: connection refused");
                wget.check(!wget.stdout.contains("served body"), "nothing served");
            }
            Policy::Redirect => {
                cat.check(cat.code == 0 && cat.stdout == "redirected content\n", "cat read the redirect target");
                wget.check(wget.code == 0 && wget.stdout == "served body\n", "wget reached the real server");
                let connect = wget.calls("connect");
                wget.check(
                    connect.len() == 1 && connect[0]["redirect"] == format!("127.0.0.1:{port}"),
                    "the connect was redirected",
                );
            }
        }
    }
}

/// `busybox sh -c` runs applets as separate processes (fork, then exec of
/// /proc/self/exe) and through a pipe: every one of them is followed and mediated,
/// in the order the script runs them.
#[test]
fn busybox_sh_forks_and_execs_applets_under_both_policies() {
    let dir = scratch();
    let echo = EchoServer::start();
    let d = dir.path().display().to_string();
    let script = format!(
        "cat {d}/plain; busybox cat {d}/secret; echo cat=$?; /bin/busybox wc -c < {d}/secret; \
         echo hello | busybox nc 127.0.0.1 $NC_PORT"
    );
    for policy in POLICIES {
        let nc_port = match policy {
            Policy::Deny => echo.port,
            Policy::Redirect => 1,
        };
        let run = launch(&policy.source(&dir, echo.port), busybox(), &["sh", "-c", &script])
            .env("NC_PORT", nc_port.to_string())
            .timeout(TIMEOUT)
            .run();
        no_tracer_trouble(&run);
        let mut lines = run.stdout.lines();
        run.check(lines.next() == Some("plain content"), "first applet read plain");
        let (secret, cat_status, wc) = match policy {
            Policy::Deny => (None, "cat=1", None),
            Policy::Redirect => (Some("redirected content"), "cat=0", Some("19")),
        };
        if let Some(secret) = secret {
            run.check(lines.next() == Some(secret), "second applet read the redirect target");
        }
        run.check(lines.next() == Some(cat_status), "the applet's exit status reached the shell");
        match policy {
            // The shell's own redirection (`< secret`) is its own open, denied too.
            Policy::Deny => {
                run.check(run.stderr.contains("cat: can't open"), "cat's open denied");
                run.check(run.stderr.matches("Permission denied").count() == 2, "and the shell's");
                run.check(run.code == 1 && lines.next().is_none(), "nc: connection refused");
            }
            Policy::Redirect => {
                run.check(lines.next() == wc, "wc counted the redirect target");
                run.check(run.code == 0 && lines.next() == Some("echo: hello"), "nc was redirected");
            }
        }

        // The mediated calls in order, one process after the other. Pid 1 below is
        // the shell's first child (the shell's own exec is the launcher's); the shell
        // itself shows up as pid 3, opening `< secret` before it forks wc (pid 4).
        let seq = sequence(&run.trace, |r| {
            if r["op"] == "exec" {
                let argv: Vec<&str> = r["args"]["argv"].as_array()?.iter().filter_map(Json::as_str).collect();
                return Some(argv.join(" ").replace(&format!("{d}/"), ""));
            }
            if let Some(port) = r["args"]["port"].as_i64() {
                return Some(if port == i64::from(echo.port) { "echo".to_owned() } else { port.to_string() });
            }
            r["args"]["path"].as_str()?.strip_prefix(&format!("{d}/")).map(str::to_owned)
        });
        let (script_seq, nc_seq): (Vec<&str>, Vec<&str>) =
            seq.iter().map(String::as_str).partition(|l| !l.contains(" connect ") && !l.contains(" nc "));
        let want: &[&str] = match policy {
            Policy::Deny => &[
                "1 execve allow cat plain",
                "1 openat allow plain",
                "2 execve allow busybox cat secret",
                "2 openat deny secret",
                "3 openat deny secret",
            ],
            Policy::Redirect => &[
                "1 execve allow cat plain",
                "1 openat allow plain",
                "2 execve allow busybox cat secret",
                "2 openat redirect secret",
                "3 openat redirect secret",
                "4 execve allow /bin/busybox wc -c",
            ],
        };
        run.check(script_seq == want, &format!("sequence {seq:#?}"));
        // The pipeline's sides run at once: only nc's own order is fixed.
        let (decision, to) = if policy == Policy::Deny { ("deny", "echo") } else { ("redirect", "1") };
        run.check(
            nc_seq.len() == 2
                && nc_seq[0].ends_with(&format!("execve allow busybox nc 127.0.0.1 {nc_port}"))
                && nc_seq[1].ends_with(&format!("connect {decision} {to}")),
            &format!("nc's exec and connect were mediated: {nc_seq:#?}"),
        );
    }
}

/// A hundred children exist at once, each makes a mediated call (denied), and when
/// `hermes` returns not one of them is left, running or zombie.
#[test]
fn a_hundred_parallel_children_are_all_mediated_and_none_survives() {
    let dir = scratch();
    let step = format!("children:100:{}", dir.path().display());
    let run = launch(&Policy::Deny.source(&dir, UNUSED_PORT), static_faults(), &[&step]).timeout(TIMEOUT).run();
    no_tracer_trouble(&run);
    run.check(run.code == 0, "exits 0");
    run.check(result(&run.stdout, &step) == "OK denied=100/100", "every child's open was denied");
    let pids: BTreeSet<i64> = std::fs::read_dir(dir.path())
        .expect("read scratch")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("pid.")?.parse().ok())
        .collect();
    run.check(pids.len() == 100, "a hundred children recorded their pids");
    let denied: BTreeSet<i64> = run
        .trace
        .iter()
        .filter(|r| r["decision"] == "deny" && r["args"]["path"] == format!("{}/secret", dir.path().display()))
        .filter_map(|r| r["pid"].as_i64())
        .collect();
    run.check(denied == pids, "each child's denial is attributed to that child");
    // Not running, and not a zombie either: every one of them was reaped.
    let left: Vec<&i64> = pids
        .iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(" (static_faults")))
        .collect();
    run.check(left.is_empty(), &format!("children left behind: {left:?}"));
    run.check(run.elapsed < Duration::from_secs(10), "took under 10 s");
}

/// Whether `pid` is a live (not zombie) process running `exe`.
fn is_alive_as(pid: i64, exe: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'));
    !zombie && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
}

/// A thread sleeps inside a mediated call (an open of a FIFO with no writer, a
/// connect to a full backlog — both past the tracer's stop, with their result
/// awaited) while the process exits, kills itself, or is killed from outside: the
/// status comes back at once.
#[test]
fn a_target_that_dies_with_a_thread_inside_a_mediated_call() {
    let dir = scratch();
    for kind in ["fifo", "connect"] {
        for (end, code) in [("exit", 7), ("kill", 128 + libc::SIGKILL), ("wait", 128 + libc::SIGKILL)] {
            let step = format!("blocked:{kind}:{}:{end}", dir.path().display());
            let killer = (end == "wait").then(|| kill_when_pid_file_appears(dir.path().to_owned()));
            let run = launch("function on_call(ev) end", static_faults(), &[&step]).timeout(TIMEOUT).run();
            if let Some(killer) = killer {
                killer.join().expect("killer thread");
            }
            no_tracer_trouble(&run);
            run.check(result(&run.stdout, &step) == "OK blocked", "the thread blocked in the call");
            run.check(run.code == code, &format!("{kind}/{end}: status {code}"));
            run.check(run.elapsed < Duration::from_secs(5), "no hang");
            let call = if kind == "fifo" { "openat" } else { "connect" };
            let blocked: Vec<&Json> = run.calls(call).into_iter().filter(|r| r["tid"] != r["pid"]).collect();
            run.check(
                blocked.len() == 1 && blocked[0]["decision"] == "allow" && blocked[0]["result"].is_null(),
                "the blocked call was allowed and never returned",
            );
        }
    }
}

/// A thread that SIGKILLs the first process to create `dir/pid.PID`, and removes
/// the file.
fn kill_when_pid_file_appears(dir: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            let found = std::fs::read_dir(&dir).into_iter().flatten().flatten().find_map(|e| {
                let pid: i32 = e.file_name().to_str()?.strip_prefix("pid.")?.parse().ok()?;
                Some((pid, e.path()))
            });
            if let Some((pid, path)) = found {
                // SAFETY: kill of the test's own target, by the pid it wrote.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = std::fs::remove_file(path);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Job control inside the traced tree: a child stops itself, and its (traced) parent
/// sees the stop, continues it, sees it continue, and reaps its exit status.
#[test]
fn a_parent_sees_its_child_stop_and_continue() {
    let run = launch("function on_call(ev) end", static_faults(), &["stopchild"]).timeout(TIMEOUT).run();
    no_tracer_trouble(&run);
    run.check(run.code == 0, "exits 0");
    run.check(result(&run.stdout, "stopchild") == "OK stopped=STOP continued=1 exit=5", "WUNTRACED, WCONTINUED, exit");
}

/// The process stops itself (SIGSTOP) while a thread waits in a mediated open; a child
/// sees it stopped, continues it (SIGCONT) and opens the FIFO's other end: the open
/// is mediated again when the kernel restarts it, and completes.
#[test]
fn sigstop_self_with_a_thread_in_a_mediated_call_then_sigcont_from_a_child() {
    let dir = scratch();
    let step = format!("stopwait:{}", dir.path().display());
    let run = launch("function on_call(ev) end", static_faults(), &[&step]).timeout(TIMEOUT).run();
    no_tracer_trouble(&run);
    run.check(run.code == 0, "exits 0");
    let got = result(&run.stdout, &step);
    run.check(got == "OK state=t data=fifo data" || got == "OK state=T data=fifo data", "stopped, then went on");
    let opens: Vec<&Json> =
        run.trace.iter().filter(|r| r["args"]["path"].as_str().is_some_and(|p| p.contains("/fifo."))).collect();
    // The stop interrupted the reader's open; the kernel restarted it, so the tracer
    // mediated it again: one decision without a result, one with the fd.
    let reader = opens.iter().filter(|r| r["args"]["flags"] == 0).collect::<Vec<_>>();
    run.check(
        reader.len() == 2
            && reader.iter().filter(|r| r["result"].is_null()).count() == 1
            && reader.iter().any(|r| r["result"].as_i64() >= Some(0)),
        "the reader's open: interrupted, then restarted and returned an fd",
    );
    run.check(opens.iter().any(|r| r["args"]["flags"] == 1 && r["result"].as_i64() >= Some(0)), "the writer's too");
}

/// SIGKILL from inside: a thread kills its process, or a forked child's thread kills
/// that child; the statuses come back (137, and the parent's own report of it).
#[test]
fn sigkill_self_from_a_thread_and_from_a_forked_child() {
    let run = launch("function on_call(ev) end", static_calls(), &["thread", "killself"]).timeout(TIMEOUT).run();
    no_tracer_trouble(&run);
    run.check(run.code == 137, "a thread's raise(SIGKILL) kills the process: 137");
    let run =
        launch("function on_call(ev) end", static_calls(), &["fork", "thread", "killself"]).timeout(TIMEOUT).run();
    run.check(run.code == 137, "the parent reports its child's SIGKILL as 137");
}

/// Kill `hermes` with SIGKILL while its target runs a tree of processes (one of them
/// stopped): PTRACE_O_EXITKILL takes every one of them down with it.
#[test]
fn killing_the_launcher_kills_the_whole_traced_tree() {
    let dir = scratch();
    // Orphans (the target, once hermes is gone) come to this process, which can then
    // tell how they died.
    // SAFETY: prctl with integer arguments.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let policy = dir.write("policy.lua", &Policy::Deny.source(&dir, UNUSED_PORT));
    let step = format!("tree:4:{}", dir.path().display());
    let mut hermes = Command::new(hermes_bin())
        .arg("launch")
        .arg("--policy")
        .arg(&policy)
        .arg("--")
        .arg(static_faults())
        .arg(&step)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: survivors would hold a pipe open and hang the test.
        .stderr(std::fs::File::create(dir.join("stderr")).expect("create stderr file"))
        .spawn()
        .expect("spawn hermes");
    let pids = || -> Vec<i32> {
        std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("pid.")?.parse().ok()).collect())
            .unwrap_or_default()
    };
    let state = |pid: i32| -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()).unwrap_or('?')
    };
    let start = Instant::now();
    while !(pids().len() == 5 && pids().iter().any(|&p| matches!(state(p), 't' | 'T'))) {
        assert!(start.elapsed() < TIMEOUT, "the tree did not start: {:?}", pids());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = pids();
    hermes.kill().expect("SIGKILL hermes");
    let status = hermes.wait().expect("wait hermes");
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{stderr}");

    let exe = static_faults();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<i32> = pids.clone();
    let mut not_killed = Vec::new();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&pid| {
            let mut wstatus = 0;
            // SAFETY: waitpid on a pid, into a live local, without blocking.
            let reaped = unsafe { libc::waitpid(pid, &mut wstatus, libc::WNOHANG) };
            if reaped == pid {
                if !(libc::WIFSIGNALED(wstatus) && libc::WTERMSIG(wstatus) == libc::SIGKILL) {
                    not_killed.push((pid, wstatus));
                }
                return false;
            }
            // Not ours (yet): reaped by its parent in the tree (gone), or still running.
            reaped >= 0 || is_alive_as(pid.into(), &exe)
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    let states: Vec<(i32, char)> = left.iter().map(|&p| (p, state(p))).collect();
    for &pid in &left {
        // SAFETY: kill of a survivor of this test's own run, so it does not outlive it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "processes survived the launcher (pid, state): {states:?}");
    assert!(not_killed.is_empty(), "ended otherwise than by SIGKILL (pid, wait status): {not_killed:?}");
    // The broker, orphaned to us too, leaves when its lifeline closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: reaping any child without blocking.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } >= 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every pointer the tracer follows, pointing nowhere: EFAULT for the call, as the
/// kernel gives natively, under either policy; the tracer goes on mediating.
#[test]
fn bad_pointers_in_every_mediated_call_give_efault() {
    let dir = scratch();
    let prog = static_faults();
    let args = ["badptrs:/bin/true".to_owned(), format!("open:{}/secret", dir.path().display())];
    let native = Command::new(&prog).args(&args).output().expect("run static_faults natively");
    let native = String::from_utf8_lossy(&native.stdout).into_owned();
    let bad_lines =
        |out: &str| out.lines().filter(|l| l.starts_with("badptrs/")).map(str::to_owned).collect::<Vec<_>>();
    let want = bad_lines(&native);
    assert!(want.len() >= 20 && want.iter().all(|l| l.ends_with(" = ERR EFAULT")), "native run: {native}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for policy in POLICIES {
        let run = launch(&policy.source(&dir, UNUSED_PORT), &prog, &args).timeout(TIMEOUT).run();
        no_tracer_trouble(&run);
        run.check(run.code == 0, "exits 0");
        run.check(bad_lines(&run.stdout) == want, "EFAULT everywhere, as natively");
        let after = match policy {
            Policy::Deny => "ERR EACCES",
            Policy::Redirect => "OK redirected content",
        };
        run.check(result(&run.stdout, args[1]) == after, "the tracer still decides afterwards");
        // Only calls whose pointers the tracer could read reach the broker: the
        // sendto with a bad buffer (the kernel faults on that), and the last open.
        let asked: Vec<&str> = run.trace.iter().filter_map(|r| r["call"].as_str()).collect();
        run.check(asked == ["sendto", "openat"], &format!("asked about {asked:?}"));
    }
}

/// The side doors, each aimed at a real file: `int 0x80` (the i386 open, with a
/// 32-bit pointer), io_uring (an IORING_OP_OPENAT), a seccomp user-notification
/// listener of the program's own that answers "continue" (its SECCOMP_RET_USER_NOTIF
/// outranks the tracer's SECCOMP_RET_TRACE), and a CLONE_UNTRACED child. Natively
/// each one opens the file. Under HERMES the outcome is the same whatever the policy
/// says, and the policy is never asked: the i386 entry kills the process, the others
/// fail with EPERM, and the plain open after them gets the policy's decision.
#[test]
fn side_doors_do_not_depend_on_the_policy() {
    let dir = scratch();
    let prog = static_faults();
    let secret = dir.join("secret").display().to_string();
    let doors = ["uringopen", "notifopen", "untraced"].map(|d| format!("{d}:{secret}"));
    let int80 = format!("int80open:{secret}");
    for door in doors.iter().chain([&int80]) {
        let native = Command::new(&prog).arg(door).output().expect("run natively");
        let native = String::from_utf8_lossy(&native.stdout).into_owned();
        let want = if door.starts_with("untraced") { "OK child-open=OK" } else { "OK secret content" };
        let uring_disabled =
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() != "0");
        if !(door.starts_with("uringopen") && uring_disabled) {
            assert_eq!(result(&native, door), want, "{door} opens natively: {native}");
        }
    }
    let last = format!("open:{secret}");
    for policy in POLICIES {
        let src = policy.source(&dir, UNUSED_PORT);
        let decided = match policy {
            Policy::Deny => "ERR EACCES",
            Policy::Redirect => "OK redirected content",
        };
        for door in &doors {
            let run = launch(&src, &prog, &[door, &last]).timeout(TIMEOUT).run();
            no_tracer_trouble(&run);
            run.check(run.code == 0 && result(&run.stdout, door) == "ERR EPERM", &format!("{door}: EPERM"));
            run.check(result(&run.stdout, &last) == decided, "the plain open after it gets the policy's decision");
            run.check(run.calls("open").len() == 1, "only the plain open was asked about");
        }
        let run = launch(&src, &prog, &[&int80, &last]).timeout(TIMEOUT).run();
        no_tracer_trouble(&run);
        run.check(run.code == 128 + libc::SIGSYS, "int 0x80: killed by SIGSYS");
        run.check(run.stdout.is_empty() && run.trace.is_empty(), "nothing opened, nothing asked");
    }
}

/// Raw `syscall(SYS_openat)` and a bare `syscall` instruction (static_calls) get the
/// policy's decision, denying or redirecting.
#[test]
fn raw_syscalls_under_both_policies() {
    let dir = scratch();
    let secret = dir.join("secret").display().to_string();
    let steps = [format!("rawopenat:{secret}"), format!("asmopenat:{secret}"), format!("openat2:{secret}")];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    for policy in POLICIES {
        let run = launch(&policy.source(&dir, UNUSED_PORT), static_calls(), &args).timeout(TIMEOUT).run();
        no_tracer_trouble(&run);
        run.check(run.code == 0, "exits 0");
        let want = match policy {
            Policy::Deny => "ERR EACCES",
            Policy::Redirect => "OK redirected content",
        };
        for step in &steps {
            run.check(result(&run.stdout, step) == want, &format!("{step}: {want}"));
        }
    }
}

/// The policy may open the two doors the filter closes by default: io_uring (whose
/// operations are then not mediated) and another architecture's entry (then ENOSYS
/// instead of a kill).
#[test]
fn a_policy_can_allow_io_uring_and_answer_foreign_syscalls_with_enosys() {
    let dir = scratch();
    let prog = static_faults();
    let secret = dir.join("secret").display().to_string();
    let (uring, int80, last) = (format!("uringopen:{secret}"), format!("int80open:{secret}"), format!("open:{secret}"));
    let src = "hermes.io_uring = 'allow'\nhermes.foreign_arch = 'enosys'\nfunction on_open(ev) end\n";
    let run = launch(src, &prog, &[&int80, &uring, &last]).timeout(TIMEOUT).run();
    no_tracer_trouble(&run);
    run.check(result(&run.stdout, &int80) == "ERR ENOSYS", "int 0x80: ENOSYS, the process lives on");
    let uring_disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() != "0");
    if uring_disabled {
        eprintln!("io_uring is disabled in this kernel: only the ENOSYS half is checked");
    } else {
        run.check(result(&run.stdout, &uring) == "OK secret content", "io_uring allowed by the policy");
    }
    run.check(result(&run.stdout, &last) == "OK secret content", "and the plain open after");
    let bad = launch("hermes.io_uring = 'maybe'\nfunction on_open(ev) end\n", &prog, &[&last]).timeout(TIMEOUT).run();
    bad.check(bad.code == 2 && bad.stderr.contains("hermes.io_uring must be"), "a bad setting is refused at load");
}
