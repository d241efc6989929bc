//! Inline hooks: libc's own callers are mediated, which symbol interposition cannot
//! do. Each test runs the same program with the default (inline) preload and with
//! `HERMES_INLINE=0` (symbol interposition only) and shows the difference.

use hermes_tests::{c_program, launch, Scratch};

const POLICY: &str = r#"
function on_open(ev)
  if ev.path:match("/secret$") then return hermes.deny("EACCES") end
end
function on_exec(ev)
  hermes.log(ev.name .. " " .. table.concat(ev.argv, " "))
  if ev.path:match("/cat$") then return hermes.deny("EACCES") end
end
"#;

#[test]
fn fopen_is_denied_through_the_open_hook_alone() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "top secret\n").display().to_string();
    // libc's own fopen symbol: the preload's exported fopen is never called.
    let run = launch(POLICY, c_program("libc_internal"), &["fopen", &secret]).run();
    run.check(run.stdout.trim() == "ERR 13", "fopen reached through libc's symbol is denied (EACCES)");
    let rec = run.trace.iter().find(|r| r["args"]["path"] == secret.as_str()).cloned().unwrap_or_default();
    run.check(rec["call"] == "open" && rec["decision"] == "deny", "seen by the inline open hook, not an fopen hook");

    let plain = launch(POLICY, c_program("libc_internal"), &["fopen", &secret]).env("HERMES_INLINE", "0").run();
    plain.check(plain.stdout.trim() == "OK top secret", "symbol interposition alone cannot see it");
}

#[test]
fn system_and_posix_spawn_execs_are_seen_through_the_execve_hook() {
    let dir = Scratch::new();
    let file = dir.write("file", "file content\n").display().to_string();
    let run = launch(POLICY, c_program("libc_internal"), &["system", &format!("cat {file}; echo done")]).run();
    // sh ran (its exec was mediated and allowed), cat was denied inside it.
    run.check(run.stdout.contains("done") && !run.stdout.contains("file content"), "cat denied under system()");
    let execs = run.calls("exec");
    run.check(
        execs.iter().any(|r| r["call"] == "execve" && r["args"]["argv"][0] == "sh" && r["decision"] == "allow"),
        "system()'s exec of sh seen through the execve hook",
    );
    run.check(
        execs
            .iter()
            .any(|r| r["args"]["path"].as_str().is_some_and(|p| p.ends_with("/cat")) && r["decision"] == "deny"),
        "cat denied",
    );

    let run = launch(POLICY, c_program("libc_internal"), &["spawn", "/bin/cat"]).run();
    run.check(run.stdout.trim() == "ERR 13", "libc's posix_spawn of a denied program fails with EACCES");

    let plain = launch(POLICY, c_program("libc_internal"), &["system", "echo unseen"]).env("HERMES_INLINE", "0").run();
    plain.check(plain.stdout.contains("unseen"), "system works without inline hooks");
    plain.check(
        !plain.calls("exec").iter().any(|r| r["args"]["argv"][0] == "sh"),
        "but the exec of sh is not seen without inline hooks",
    );
}

/// Each process hands its hooks' plans (recipes) to the processes it execs, which then
/// build their trampolines by copying, without decoding: the inline hooks of a child work
/// the same. The first process gets them from the launcher, made from the libc file while
/// the broker started. Recipes that match nothing (a different libc, garbage) are ignored.
#[test]
fn exec_children_hook_from_their_parents_recipes() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "top secret\n").display().to_string();
    let prog = c_program("libc_internal").display().to_string();
    let script = format!("{prog} fopen {secret}; env | grep -c '^HERMES_RECIPES=.*:.*,.*:'");
    let run = launch(POLICY, "/bin/sh", &["-c", &script]).env("HERMES_DEBUG_HOOKS", "1").run();
    let reports: Vec<&str> = run.stderr.lines().filter(|l| l.contains("inline hooks,")).collect();
    run.check(reports.len() == 4, "sh, libc_internal, env and grep each report their hooks");
    let counts: Vec<(u32, u32)> = reports
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            Some((words.get(3)?.parse().ok()?, words.get(6)?.parse().ok()?))
        })
        .collect();
    run.check(
        counts.first().is_some_and(|&(hooks, copied)| hooks >= 5 && copied == hooks),
        "sh, the first process, copied every hook from the launcher's recipes",
    );
    run.check(counts[1..].iter().all(|&(hooks, copied)| hooks >= 5 && copied == hooks), "its children decoded none");
    // "…; constructor T us: configuration C, board B, hooks H (dlsym D, patches P)", each
    // figure rounded to 0.1 µs on its own.
    let costs_add_up = |line: &str| {
        let figures: Vec<f64> = line
            .split_once("; constructor ")
            .map(|(_, costs)| costs.split([' ', ',', '(', ')', ':']).filter_map(|w| w.parse().ok()).collect())
            .unwrap_or_default();
        matches!(figures[..], [total, config, board, hooks, dlsym, patches]
            if [config, board, hooks, dlsym, patches].iter().all(|&f| f > 0.0)
                && config + board + hooks <= total + 0.2 && dlsym + patches <= hooks + 0.1)
    };
    run.check(reports.iter().all(|l| costs_add_up(l)), "each report has the constructor's cost, its parts within it");
    let mut lines = run.stdout.lines();
    run.check(lines.next() == Some("ERR 13"), "the child's fopen, caught by a copied inline hook, is denied");
    run.check(lines.next() == Some("1"), "the recipes are in the children's environment");

    // Recipes given to `hermes launch` go to the first process as they are.
    for given in ["garbage", "0123456789abcdef:64:0:f:c5,zz:1:2:q:c1"] {
        let run = launch(POLICY, c_program("libc_internal"), &["fopen", &secret])
            .env("HERMES_RECIPES", given)
            .env("HERMES_DEBUG_HOOKS", "1")
            .run();
        run.check(run.stderr.contains(" from recipes") && run.stderr.contains(", 0 from recipes"), "nothing copied");
        run.check(run.stdout.trim() == "ERR 13", "recipes that match nothing change nothing");
    }
}

/// The launcher keeps the recipes it makes in a file per libc (`HERMES_CACHE_DIR`), so a
/// run that finds the file makes none. A file whose recipes do not match the libc, or that
/// others could have written, is not used: the recipes are made again and the file
/// replaced.
#[test]
fn the_launchers_recipes_are_kept_in_a_cache_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let dir = Scratch::new();
    let secret = dir.write("secret", "top secret\n").display().to_string();
    let cache = dir.join("cache");
    let run_once = || {
        let run = launch(POLICY, c_program("libc_internal"), &["fopen", &secret])
            .env("HERMES_CACHE_DIR", &cache)
            .env("HERMES_DEBUG_HOOKS", "1")
            .run();
        run.check(run.stdout.trim() == "ERR 13", "the inline open hook denies the fopen");
        let report = run.stderr.lines().find(|l| l.contains("inline hooks,")).unwrap_or_default().to_owned();
        let words: Vec<&str> = report.split_whitespace().collect();
        let copied_all = words.len() > 6 && words[3] == words[6] && words[3] != "0";
        run.check(copied_all, &format!("the first process copied every hook from recipes: {report:?}"));
        let files: Vec<_> =
            std::fs::read_dir(&cache).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        run.check(files.len() == 1, "one recipes file, and no temporary left beside it");
        files[0].clone()
    };

    let file = run_once();
    let made = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(made.split(',').count() >= 5, "the file holds the recipes: {made:?}");
    let meta = std::fs::metadata(&file).expect("recipes file");
    assert_eq!(meta.mode() & 0o777, 0o600, "only its owner may read or write it");

    // Found and used as it is: not written again.
    let again = run_once();
    assert_eq!(std::fs::metadata(&again).expect("recipes file").ino(), meta.ino(), "a matching file is not replaced");

    // Recipes that match nothing: made again, and the file replaced.
    std::fs::write(&file, "0123456789abcdef:64:0:f:c5").expect("overwrite");
    run_once();
    assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), made, "the stale file was replaced");

    // Good recipes in a file others may write are not trusted: replaced by the launcher's own.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let ino = std::fs::metadata(&file).expect("recipes file").ino();
    run_once();
    let replaced = std::fs::metadata(&file).expect("recipes file");
    assert!(
        replaced.ino() != ino && replaced.mode() & 0o777 == 0o600,
        "the group- and world-writable file was replaced"
    );
}
