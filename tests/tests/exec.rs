//! The exec family (execve, execv, execvp, execvpe, posix_spawn, posix_spawnp) allowed,
//! denied and redirected; children that scrub their environment or come from vfork
//! stay mediated; the legacy `on_syscall` entry point.

use std::path::Path;

use hermes_tests::{c_program, launch, EchoServer, Outcome, Scratch};

/// The result part of the `STEP = …` line `calls` printed for `step`.
fn step<'a>(run: &'a Outcome, step: &str) -> &'a str {
    let prefix = format!("{step} = ");
    run.stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or("<no output line>")
}

/// `/bin/NAME` with symlinks resolved, as `ev.path` has it (on a merged-/usr system,
/// `/usr/bin/NAME`).
fn resolved_bin(name: &str) -> String {
    std::fs::canonicalize(Path::new("/bin").join(name)).expect("canonicalize /bin/NAME").display().to_string()
}

/// Redirect `false` to /bin/true, deny `cat`, allow the rest — by the resolved path,
/// so it holds whether the program named /bin/false, false (PATH search) or
/// /usr/bin/false.
const EXEC_POLICY: &str = r#"
function on_exec(ev)
  local base = ev.path:match("([^/]*)$")
  if base == "false" then return hermes.redirect("/bin/true") end
  if base == "cat" then return hermes.deny("EACCES") end
end
"#;

#[test]
fn each_exec_function_is_allowed_denied_and_redirected() {
    exec_matrix(true);
}

/// With symbol interposition only, posix_spawn(p) is decided in the parent, under its
/// own name.
#[test]
fn each_exec_function_is_allowed_denied_and_redirected_without_inline_hooks() {
    exec_matrix(false);
}

/// With inline hooks (the default), posix_spawn(p) is decided where libc really
/// execs: in the spawned child, through the execve hook (for posix_spawnp, once per
/// PATH candidate libc tries).
fn exec_matrix(inline: bool) {
    let ops = ["execve", "execv", "execvp", "execvpe", "spawn", "spawnp"];
    let searched = |op: &str| matches!(op, "execvp" | "execvpe" | "spawnp");
    let mut steps = Vec::new();
    for op in ops {
        for prog in ["echo", "cat", "false"] {
            let prog = if searched(op) { prog.to_owned() } else { format!("/bin/{prog}") };
            // execv and execvpe take no extra arguments in `calls`.
            let arg = if matches!(op, "execv" | "execvpe") { String::new() } else { format!(":arg-of-{op}") };
            steps.push(format!("{op}:{prog}{arg}"));
        }
    }
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(EXEC_POLICY, c_program("calls"), &args)
        .env("HERMES_TEST_MARK", "exec-matrix")
        .env("HERMES_INLINE", if inline { "1" } else { "0" })
        .run();
    run.check(run.code == 0, "calls exits 0");
    for s in &steps {
        let prog = s.split(':').nth(1).unwrap_or_default();
        let want = if prog.ends_with("cat") {
            "ERR EACCES" // denied: without the policy cat (stdin /dev/null) exits 0
        } else {
            "OK exit=0" // echo allowed; false redirected to true (it would exit 1)
        };
        run.check(step(&run, s) == want, &format!("{s}: want {want}, got {:?}", step(&run, s)));
    }
    for op in ["execve", "execvp", "spawn", "spawnp"] {
        let printed = format!("arg-of-{op}");
        run.check(run.stdout.lines().any(|l| l == printed), &format!("the allowed echo of {op} ran and printed"));
    }

    // One trace record per call, under the C function's name, with argv and envp.
    let spawned = |r: &&serde_json::Value| {
        r["call"] == "execve" && r["args"]["argv"][1].as_str().is_some_and(|a| a.starts_with("arg-of-spawn"))
    };
    // In call order: each step execs in a child of its own, and an allowed exec's record is
    // written when its connection closes (a successful exec never returns to report), so
    // the next step's record can reach the trace first.
    let mut records = run.calls("exec");
    records.sort_by_key(|r| r["mono_ns"].as_u64());
    let (in_child, execs): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = records.into_iter().partition(spawned);
    let steps: Vec<&String> = if inline {
        // The spawn steps are checked below from the children's own records.
        for s in steps.iter().filter(|s| s.starts_with("spawn")) {
            let (op, prog) = (s.split(':').next().unwrap_or_default(), s.split(':').nth(1).unwrap_or_default());
            let base = prog.rsplit('/').next().unwrap_or_default();
            let decision = match base {
                "echo" => "allow",
                "cat" => "deny",
                _ => "redirect",
            };
            run.check(
                in_child.iter().any(|r| {
                    r["args"]["path"].as_str().is_some_and(|p| p.ends_with(&format!("/{base}")))
                        && r["decision"] == decision
                        && r["args"]["argv"][1] == format!("arg-of-{op}").as_str()
                }),
                &format!("{s}: the spawned child's execve was {decision}ed"),
            );
        }
        steps.iter().filter(|s| !s.starts_with("spawn")).collect()
    } else {
        run.check(in_child.is_empty(), "no exec is mediated in a spawned child");
        steps.iter().collect()
    };
    run.check(execs.len() == steps.len(), "every exec call traced");
    let (echo, cat, fals, tru) = (resolved_bin("echo"), resolved_bin("cat"), resolved_bin("false"), "/bin/true");
    for (rec, s) in execs.iter().zip(&steps) {
        let op = s.split(':').next().unwrap_or_default();
        let call = match op {
            "spawn" => "posix_spawn",
            "spawnp" => "posix_spawnp",
            other => other,
        };
        let raw = s.split(':').nth(1).unwrap_or_default();
        let a = &rec["args"];
        run.check(rec["call"] == call && rec["op"] == "exec", &format!("{s}: traced as {call}"));
        run.check(a["raw_path"] == raw, &format!("{s}: raw_path is {raw}"));
        let (path, decision) = match raw.rsplit('/').next().unwrap_or_default() {
            "echo" => (echo.as_str(), "allow"),
            "cat" => (cat.as_str(), "deny"),
            _ => (fals.as_str(), "redirect"),
        };
        run.check(a["path"] == path, &format!("{s}: ev.path is {path} (PATH searched, symlinks resolved)"));
        run.check(rec["decision"] == decision, &format!("{s}: decision {decision}"));
        if decision == "redirect" {
            run.check(rec["redirect"] == tru, &format!("{s}: redirected to {tru}"));
        }
        if decision == "deny" {
            run.check(rec["errno"] == "EACCES", &format!("{s}: errno EACCES"));
        }
        let argv: Vec<&str> =
            a["argv"].as_array().map(|v| v.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
        let mut want = vec![raw.to_owned()];
        if !matches!(op, "execv" | "execvpe") {
            want.push(format!("arg-of-{op}"));
        }
        run.check(argv == want, &format!("{s}: argv {argv:?} == {want:?}"));
        let envp = a["envp"].as_array().cloned().unwrap_or_default();
        run.check(
            envp.iter().any(|e| e == "HERMES_TEST_MARK=exec-matrix"),
            &format!("{s}: envp has the program's env"),
        );
    }
}

#[test]
fn children_exec_with_a_scrubbed_environment_are_still_mediated() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret content\n");
    let secret = secret.display().to_string();
    // Only on_open: exec is not even subscribed, and the environment must still be
    // re-injected into the child.
    let src = format!("function on_open(ev) if ev.path == {secret:?} then return hermes.deny(\"EACCES\") end end\n");
    for mode in ["clearenv", "emptyenv", "nullenv"] {
        let run = launch(&src, c_program("envexec"), &[mode, "/bin/cat", &secret]).env("HERMES_TEST_MARK", "x").run();
        run.check(run.code == 0, "envexec exits 0");
        run.check(run.stdout.contains(&format!("{mode} exit=1")), &format!("{mode}: the child cat failed"));
        run.check(!run.stdout.contains("secret content"), &format!("{mode}: the secret was not printed"));
        run.check(run.stderr.contains("Permission denied"), &format!("{mode}: cat reports Permission denied"));
        let denied = run.calls("open");
        run.check(
            denied.iter().any(|r| {
                r["decision"] == "deny"
                    && r["args"]["path"] == secret.as_str()
                    && r["exe"] == resolved_bin("cat").as_str()
            }),
            &format!("{mode}: the denial is cat's, in the trace"),
        );

        // The scrub did happen: the child's environment is only what HERMES put back.
        let run = launch(&src, c_program("envexec"), &[mode, "/usr/bin/env"]).env("HERMES_TEST_MARK", "x").run();
        run.check(run.stdout.contains(&format!("{mode} exit=0")), &format!("{mode}: env ran"));
        run.check(!run.stdout.contains("HERMES_TEST_MARK="), &format!("{mode}: the program's environment is gone"));
        run.check(
            run.stdout.lines().any(|l| l.starts_with("LD_PRELOAD=") && l.contains("libhermes_preload.so"))
                && run.stdout.lines().any(|l| l.starts_with("HERMES_SOCK=")),
            &format!("{mode}: LD_PRELOAD and HERMES_SOCK were re-injected"),
        );
    }
}

#[test]
fn vfork_child_exec_is_mediated_and_the_parent_stays_mediated() {
    let dir = Scratch::new();
    let allowed = dir.write("allowed", "allowed\n").display().to_string();
    let denied = dir.write("denied", "denied\n").display().to_string();
    let src = format!(
        r#"
function on_open(ev)
  if ev.path == {denied:?} then return hermes.deny("EACCES") end
end
function on_exec(ev)
  if ev.path:match("/false$") then return hermes.deny("EACCES") end
end
"#
    );
    let run = launch(&src, c_program("vfork_exec"), &[&allowed, &denied]).run();
    run.check(run.code == 0, "vfork_exec exits 0");
    let eacces = libc::EACCES;
    let want = [
        format!("before {allowed} = OK"),
        format!("before {denied} = ERR {eacces}"),
        "from-vfork-child".to_owned(),
        "echo-child exit=0".to_owned(),
        format!("false-child exit={eacces}"),
        format!("after {allowed} = OK"),
        format!("after {denied} = ERR {eacces}"),
        format!("after {allowed} = OK"),
        format!("after {denied} = ERR {eacces}"),
    ];
    let got: Vec<&str> = run.stdout.lines().collect();
    run.check(got == want, &format!("output {got:?}\n want {want:?}"));

    // The program's own opens (libc's internal ones, locale files and the like, are
    // mediated too but are not what this test is about).
    let dir_prefix = format!("{}/", dir.path().display());
    let opens: Vec<_> = run
        .calls("open")
        .into_iter()
        .filter(|r| r["args"]["path"].as_str().is_some_and(|p| p.starts_with(&dir_prefix)))
        .collect();
    let parent = opens.first().map(|r| r["pid"].clone()).unwrap_or_default();
    let execs = run.calls("exec");
    run.check(execs.len() == 2, "both vfork children's execs traced");
    run.check(
        execs.iter().all(|r| r["call"] == "execve" && r["pid"] != parent && r["ppid"] == parent),
        "the execs are the vfork children's (their own pid, the parent as ppid)",
    );
    run.check(execs[0]["decision"] == "allow" && execs[1]["decision"] == "deny", "echo allowed, false denied");
    run.check(opens.len() == 6 && opens.iter().all(|r| r["pid"] == parent), "all six opens mediated, in the parent");
    run.check(opens.iter().filter(|r| r["decision"] == "deny").count() == 3, "three opens denied");
}

#[test]
fn legacy_on_syscall_blocks_exec_and_allows_the_rest() {
    let dir = Scratch::new();
    let file = dir.write("file", "file content\n").display().to_string();
    let server = EchoServer::start();
    let src = r#"
function on_syscall(name, args)
  if args.op == "exec" then
    hermes.log("blocked " .. name .. " " .. args.path)
    return "BLOCK"
  end
  return "ALLOW"
end
"#;
    let steps = [
        format!("open:{file}"),
        "execve:/bin/true".to_owned(),
        "execvp:true".to_owned(),
        "spawn:/bin/true".to_owned(),
        "spawnp:true".to_owned(),
        format!("connect:127.0.0.1:{}", server.port),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    // Symbol interposition only, so posix_spawn(p) reach the policy under their own
    // names, in the calling process (with inline hooks they are seen as the spawned
    // child's execve).
    let run = launch(src, c_program("calls"), &args).env("HERMES_INLINE", "0").run();
    run.check(run.code == 0, "calls exits 0");
    run.check(step(&run, &steps[0]) == "OK file content", "open allowed");
    for s in &steps[1..5] {
        run.check(step(&run, s) == "ERR EPERM", &format!("{s} blocked with EPERM"));
    }
    run.check(step(&run, &steps[5]) == "OK echo: hello", "connect allowed");
    run.check(run.trace.len() == 6, "six calls traced");
    run.check(run.trace.iter().all(|r| r["handler"] == "on_syscall"), "on_syscall decided every call");
    let execs = run.calls("exec");
    run.check(execs.iter().all(|r| r["decision"] == "deny" && r["errno"] == "EPERM"), "execs denied with EPERM");
    let tru = resolved_bin("true");
    let logs: Vec<String> = execs.iter().map(|r| r["logs"][0].as_str().unwrap_or_default().to_owned()).collect();
    let want: Vec<String> =
        ["execve", "execvp", "posix_spawn", "posix_spawnp"].iter().map(|n| format!("blocked {n} {tru}")).collect();
    run.check(logs == want, &format!("on_syscall got the C function name and args: {logs:?}"));
    run.check(run.calls("open")[0]["decision"] == "allow", "open allowed by \"ALLOW\"");
}
