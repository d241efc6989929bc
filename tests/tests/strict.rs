//! `--strict`: the seccomp+ptrace fallback beside the preload for a dynamic program.
//! What the preload cannot see (raw syscalls, inline `syscall` instructions, and with
//! HERMES_INLINE=0 a dlsym(RTLD_NEXT) lookup) is mediated by the tracer; what the
//! preload mediated is not stopped a second time.

use hermes_tests::{c_program, launch, Outcome, Scratch};

const POLICY: &str = r#"
function on_open(ev)
  if ev.path:match("/secret$") then return hermes.deny("EACCES") end
end
"#;

fn step<'a>(run: &'a Outcome, step: &str) -> &'a str {
    let prefix = format!("{step} = ");
    run.stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or("<no output line>")
}

/// The records for `path`, in the order the calls were decided (the trace is written in
/// completion order, and the preload's and the tracer's connections race).
fn records_for<'a>(run: &'a Outcome, path: &str) -> Vec<&'a serde_json::Value> {
    let mut recs: Vec<_> = run.trace.iter().filter(|r| r["args"]["path"] == path).collect();
    recs.sort_by(|a, b| a["time"].as_f64().partial_cmp(&b["time"].as_f64()).expect("times are numbers"));
    recs
}

#[test]
fn strict_mode_mediates_what_the_preload_cannot_see() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let eacces = libc::EACCES.to_string();
    let deny = format!("ERR {eacces}");

    let plain = launch(POLICY, c_program("bypass"), &[&secret]).run();
    plain.check(step(&plain, "libc") == deny, "the preload denies libc's open");
    plain.check(step(&plain, "raw") == "OK secret" && step(&plain, "asm") == "OK secret", "raw syscalls get past");

    let strict = launch(POLICY, c_program("bypass"), &[&secret]).launch_option("--strict").run();
    for s in ["libc", "raw", "asm", "direct"] {
        strict.check(step(&strict, s) == deny, &format!("{s}: denied under --strict"));
    }
    strict.check(step(&strict, "uring") == format!("ERR {}", libc::EPERM), "io_uring refused");
    // Each call decided exactly once: by the preload for libc's functions, by the
    // tracer for the raw ones.
    let recs = records_for(&strict, &secret);
    let layers: Vec<(&str, &str)> =
        recs.iter().map(|r| (r["layer"].as_str().unwrap_or(""), r["call"].as_str().unwrap_or(""))).collect();
    strict.check(
        layers == [("preload", "open"), ("ptrace", "openat"), ("ptrace", "openat"), ("preload", "open")],
        &format!("one decision per call, from the right layer: {layers:?}"),
    );
}

#[test]
fn strict_mode_covers_libc_paths_the_hooks_miss() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let deny = format!("ERR {}", libc::EACCES);
    // Without inline patches, libc's own open (looked up in libc's handle, as a
    // library's dlsym(RTLD_NEXT) finds it) is invisible to the preload; the tracer
    // still stops it.
    let plain = launch(POLICY, c_program("bypass"), &[&secret]).env("HERMES_INLINE", "0").run();
    plain.check(step(&plain, "direct") == "OK secret", "symbol interposition alone misses it");
    let strict =
        launch(POLICY, c_program("bypass"), &[&secret]).env("HERMES_INLINE", "0").launch_option("--strict").run();
    strict.check(step(&strict, "direct") == deny, "--strict catches it");
    strict.check(
        records_for(&strict, &secret).iter().any(|r| r["layer"] == "ptrace" && r["decision"] == "deny"),
        "decided by the tracer",
    );
}

#[test]
fn strict_mode_redirects_raw_syscalls_too() {
    let dir = Scratch::new();
    let from = dir.write("from", "original\n").display().to_string();
    dir.write("to", "redirected\n");
    let policy = "function on_open(ev)\n  if ev.path:match('/from$') then return hermes.redirect((ev.path:gsub('/from$', '/to'))) end\nend\n";
    let run = launch(policy, c_program("bypass"), &[&from]).launch_option("--strict").run();
    for s in ["libc", "raw", "asm", "direct"] {
        run.check(step(&run, s) == "OK redirected", &format!("{s}: redirected under --strict"));
    }
}

#[test]
fn strict_mode_kills_a_process_using_the_i386_entry() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let plain = launch(POLICY, c_program("bypass"), &[&secret, "int80"]).run();
    plain.check(plain.code == 0 && plain.stdout.contains("int80 = OK"), "without the filter, int 0x80 runs");
    let strict = launch(POLICY, c_program("bypass"), &[&secret, "int80"]).launch_option("--strict").run();
    // Another architecture's syscall table: the filter cannot reason about it.
    strict.check(strict.code == 128 + libc::SIGSYS, "killed by SIGSYS under --strict");
    strict.check(!strict.stdout.contains("int80 = OK"), "the call never ran");
}

#[test]
fn strict_mode_keeps_exit_status_and_children() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret\n").display().to_string();
    let script = format!("cat {secret}; exit 7");
    let run = launch(POLICY, "sh", &["-c", &script]).launch_option("--strict").run();
    run.check(run.code == 7, "the target's exit status");
    run.check(run.stderr.contains("Permission denied"), "cat, a child of sh, denied");
    run.check(records_for(&run, &secret).len() == 1, "cat's open decided once");
}
