//! Every hooked open-family function, allowed, denied and redirected, through a real
//! `hermes launch` of a C program that calls it.

use hermes_tests::{c_program, launch, Scratch};

/// The policy: deny `secret`, redirect `from` to `to`, allow the rest.
fn policy(dir: &Scratch) -> String {
    format!(
        r#"
local dir = "{d}"
function on_open(ev)
  if ev.path == dir .. "/secret" then return hermes.deny("EACCES") end
  if ev.path == dir .. "/from" then return hermes.redirect(dir .. "/to") end
  return hermes.allow()
end
"#,
        d = dir.path().display()
    )
}

#[test]
fn each_open_function_is_allowed_denied_and_redirected() {
    let dir = Scratch::new();
    dir.write("plain", "plain content\n");
    dir.write("secret", "secret content\n");
    dir.write("from", "original content\n");
    dir.write("to", "redirected content\n");
    let d = dir.path().display().to_string();
    let mut steps = Vec::new();
    for op in ["open", "open64", "open2", "fopen", "freopen"] {
        for name in ["plain", "secret", "from"] {
            steps.push(format!("{op}:{d}/{name}"));
        }
    }
    for op in ["openat", "openat2f"] {
        for name in ["plain", "secret", "from"] {
            steps.push(format!("{op}:{d}:{name}"));
        }
    }
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&policy(&dir), c_program("calls"), &args).current_dir(dir.path()).run();
    run.check(run.code == 0, "calls exits 0");
    for step in &steps {
        let line = run.stdout.lines().find(|l| l.starts_with(&format!("{step} = "))).unwrap_or_default();
        let want = if step.ends_with("plain") {
            "OK plain content"
        } else if step.ends_with("secret") {
            "ERR EACCES"
        } else {
            "OK redirected content"
        };
        run.check(line.ends_with(want), &format!("{step}: want {want}, got {line:?}"));
    }
    // Every call is in the trace with its decision; the open of the directory for
    // openat is there too.
    let denied = run.trace.iter().filter(|r| r["decision"] == "deny").count();
    let redirected = run.trace.iter().filter(|r| r["decision"] == "redirect").count();
    run.check(denied == 7 && redirected == 7, "7 denials and 7 redirects in the trace");
    let fopen = run.calls("fopen");
    run.check(
        fopen.iter().any(|r| r["args"]["path"] == format!("{d}/secret") && r["errno"] == "EACCES"),
        "fopen denial traced",
    );
}

/// The fortified opens are mediated once and then go to the original `openat`, but a
/// call glibc's own check refuses (O_CREAT with no mode to give) still ends the program
/// as glibc ends it, with nothing created.
#[test]
fn a_fortified_open_without_its_mode_still_aborts() {
    let dir = Scratch::new();
    let d = dir.path().display().to_string();
    let (ok, bad) = (format!("open2:{d}/present"), format!("open2creat:{d}/created"));
    dir.write("present", "here\n");
    let run = launch(&policy(&dir), c_program("calls"), &[&ok, &bad]).run();
    run.check(run.stdout.contains(&format!("{ok} = OK")), "the fortified open before it ran");
    run.check(run.code == 128 + libc::SIGABRT, "the program died of SIGABRT, as natively");
    run.check(!dir.path().join("created").exists(), "no file was created");
    run.check(run.calls("__open_2").len() == 1, "only the open that ran is traced");
}

#[test]
fn creat_and_write_opens_carry_their_flags() {
    let dir = Scratch::new();
    let d = dir.path().display().to_string();
    let src = r#"
function on_open(ev)
  if ev.write and not ev.path:find("/allowed", 1, true) then return hermes.deny("EROFS") end
end
"#;
    let steps = [
        format!("creat:{d}/created"),
        format!("write:{d}/written"),
        format!("write:{d}/allowed"),
        format!("open:{d}/allowed"),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(src, c_program("calls"), &args).run();
    run.check(run.stdout.contains(&format!("creat:{d}/created = ERR EROFS")), "creat is a write");
    run.check(run.stdout.contains(&format!("write:{d}/written = ERR EROFS")), "O_WRONLY|O_CREAT is a write");
    run.check(run.stdout.contains(&format!("write:{d}/allowed = OK")), "allowed write");
    run.check(run.stdout.contains(&format!("open:{d}/allowed = OK written")), "read back");
    run.check(!dir.join("created").exists() && !dir.join("written").exists(), "denied files were not created");
}
