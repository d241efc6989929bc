//! Mediation under load and under hostile descriptor handling: many threads at once,
//! many forked children at once, and a program that closes or overwrites every
//! descriptor the preload could be using.

use std::collections::HashSet;
use std::time::Duration;

use hermes_tests::{c_program, launch, Outcome, Scratch};

/// Deny `denied` with EACCES, allow everything else.
fn deny_policy(denied: &str) -> String {
    format!("function on_open(ev) if ev.path == {denied:?} then return hermes.deny(\"EACCES\") end end\n")
}

/// Like `Outcome::check`, for runs whose trace is too long to print whole.
#[track_caller]
fn check_big(run: &Outcome, cond: bool, what: &str) {
    assert!(
        cond,
        "{what}\n--- exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- trace: {} records, first: {:?}",
        run.code,
        run.stdout,
        run.stderr,
        run.trace.len(),
        run.trace.first()
    );
}

/// Two files in a fresh scratch directory: (dir, allowed path, denied path).
fn files() -> (Scratch, String, String) {
    let dir = Scratch::new();
    let allowed = dir.write("allowed", "allowed\n").display().to_string();
    let denied = dir.write("denied", "denied\n").display().to_string();
    (dir, allowed, denied)
}

#[test]
fn eight_threads_ten_thousand_opens_all_decided_right() {
    let (_dir, allowed, denied) = files();
    let run = launch(&deny_policy(&denied), c_program("threads"), &[&allowed, &denied]).run();
    check_big(&run, run.code == 0, "threads exits 0");
    for i in 0..8 {
        let want = format!("thread {i} ok=625 eacces=625 other=0");
        check_big(&run, run.stdout.lines().any(|l| l == want), &format!("per-thread counts: {want}"));
    }
    check_big(&run, run.stdout.lines().any(|l| l == "total ok=5000 eacces=5000 other=0"), "10,000 opens, all right");

    // Every call reached the broker, from eight distinct threads of one process.
    check_big(&run, run.trace.len() == 10_000, "10,000 records in the trace");
    let denied_recs = run.trace.iter().filter(|r| r["decision"] == "deny" && r["args"]["path"] == denied.as_str());
    check_big(&run, denied_recs.count() == 5000, "5,000 denials of the denied path traced");
    let allowed_recs = run.trace.iter().filter(|r| r["decision"] == "allow" && r["result"].as_i64() >= Some(0));
    check_big(&run, allowed_recs.count() == 5000, "5,000 successful allowed opens traced");
    let tids: HashSet<i64> = run.trace.iter().filter_map(|r| r["tid"].as_i64()).collect();
    let pids: HashSet<i64> = run.trace.iter().filter_map(|r| r["pid"].as_i64()).collect();
    check_big(&run, tids.len() == 8 && pids.len() == 1, &format!("8 threads of 1 process: {tids:?} {pids:?}"));
}

#[test]
fn two_hundred_forked_children_all_decided_right() {
    let (_dir, allowed, denied) = files();
    let run = launch(&deny_policy(&denied), c_program("forks"), &[&allowed, &denied]).run();
    check_big(&run, run.code == 0, "forks exits 0");
    check_big(&run, run.stdout.lines().any(|l| l == "children=200 right=200 wrong=0"), "all 200 children right");

    // The program's own opens (libc's internal ones, seen through the inline hooks,
    // are not what this test counts). The parent opens `allowed` once before forking.
    let recs: Vec<_> = run
        .trace
        .iter()
        .filter(|r| r["args"]["path"] == allowed.as_str() || r["args"]["path"] == denied.as_str())
        .collect();
    let first = recs.iter().min_by(|a, b| a["time"].as_f64().partial_cmp(&b["time"].as_f64()).expect("times"));
    let parent = first.and_then(|r| r["pid"].as_i64()).unwrap_or_default();
    let from_children: Vec<_> = recs.iter().filter(|r| r["pid"].as_i64() != Some(parent)).collect();
    let children: HashSet<i64> = from_children.iter().filter_map(|r| r["pid"].as_i64()).collect();
    check_big(&run, children.len() == 200, &format!("200 distinct child pids in the trace, got {}", children.len()));
    check_big(
        &run,
        from_children.len() == 400 && from_children.iter().all(|r| r["ppid"].as_i64() == Some(parent)),
        "two calls from each child, each naming the parent as ppid",
    );
    let denials = run.trace.iter().filter(|r| r["decision"] == "deny" && r["errno"] == "EACCES").count();
    check_big(&run, denials == 200, "200 denials traced");
}

/// More connections held open at once than the broker keeps server threads waiting:
/// each new one is still answered (a thread takes the last waiting place only after
/// starting another).
#[test]
fn forty_threads_holding_their_connections_at_once_are_all_answered() {
    let (_dir, allowed, denied) = files();
    let run =
        launch(&deny_policy(&denied), c_program("held_conns"), &[&allowed]).timeout(Duration::from_secs(30)).run();
    check_big(&run, run.code == 0 && run.stdout.contains("ok=82 other=0"), "every open answered and allowed");
    let recs: Vec<_> = run.trace.iter().filter(|r| r["args"]["path"] == allowed.as_str()).collect();
    let tids: HashSet<i64> = recs.iter().filter_map(|r| r["tid"].as_i64()).collect();
    check_big(
        &run,
        recs.len() == 82 && recs.iter().all(|r| r["decision"] == "allow" && r["observed"].is_null()),
        "82 decided opens in the trace",
    );
    check_big(&run, tids.len() == 41, &format!("from 41 threads, got {}", tids.len()));
}

#[test]
fn closing_or_overwriting_every_descriptor_keeps_mediation() {
    let (_dir, allowed, denied) = files();
    let run = launch(&deny_policy(&denied), c_program("closefds"), &[&allowed, &denied]).run();
    run.check(run.code == 0, "closefds exits 0");
    let eacces = libc::EACCES;
    for round in ["start", "close_range", "dup2", "closefrom", "raw"] {
        let ok = format!("{round} allowed = OK");
        let no = format!("{round} denied = ERR {eacces}");
        run.check(run.stdout.lines().any(|l| l == ok), &format!("{round}: allowed open works"));
        run.check(run.stdout.lines().any(|l| l == no), &format!("{round}: denied open is denied"));
    }
    for fd in 700..=710 {
        let want = format!("fd {fd} = allowed");
        run.check(run.stdout.lines().any(|l| l == want), &format!("fd {fd} still holds the program's file"));
    }
    run.check(run.stdout.matches("= ERR").count() == 5, "no other call failed");
    let opens: Vec<_> = run
        .calls("open")
        .into_iter()
        .filter(|r| r["args"]["path"] == allowed.as_str() || r["args"]["path"] == denied.as_str())
        .collect();
    // 5 rounds of 2, plus the open of the file that is dup2()ed.
    run.check(opens.len() == 11, "every open reached the broker");
    run.check(opens.iter().filter(|r| r["decision"] == "deny").count() == 5, "five denials traced");
}

#[test]
fn concurrent_calls_under_the_time_limit_are_not_denied() {
    let (_dir, allowed, _denied) = files();
    // Every open of `allowed` costs 25 ms of policy CPU time, a fortieth of the 1 s
    // limit: room for a loaded CI machine to deschedule the policy thread (a 20 ms
    // handler under a 300 ms limit was once cut off there). Sixteen threads ask four
    // times at once: the queue is 64 x 25 ms = 1.6 s deep, more than the limit, but no
    // handler runs past it, so every call must be allowed.
    let src = format!(
        "function on_open(ev)\n  if ev.path == {allowed:?} then\n    local t = os.clock()\n    \
         while os.clock() - t < 0.025 do end\n  end\nend\n"
    );
    let run = launch(&src, c_program("parallel_opens"), &["16", "4", &allowed])
        .launch_option("--policy-timeout=1000")
        .timeout(Duration::from_secs(30))
        .run();
    run.check(run.code == 0, "parallel_opens exits 0");
    run.check(run.stdout.trim() == "ok=64 eperm=0 other=0", "all 64 opens allowed");
    run.check(run.trace.iter().all(|r| r["error"].is_null()), "no policy error traced");
}

/// Threads and connections poll for answers and calls (`--spin-us`) or sleep for them;
/// either way each call gets its own decision. A spin of 10 ms always polls; 1 µs
/// polls once, misses and sleeps from then on; 0 never polls.
#[test]
fn decisions_are_the_same_whether_answers_are_polled_for_or_slept_for() {
    let (_dir, allowed, denied) = files();
    let src = format!("function on_open(ev) if ev.path == {denied:?} then return hermes.deny('EPERM') end end\n");
    for spin in ["10000", "1", "0"] {
        for (path, want) in [(&allowed, "ok=200 eperm=0 other=0"), (&denied, "ok=0 eperm=200 other=0")] {
            let run = launch(&src, c_program("parallel_opens"), &["4", "50", path])
                .launch_option(&format!("--spin-us={spin}"))
                .timeout(Duration::from_secs(20))
                .run();
            run.check(run.code == 0 && run.stdout.trim() == want, &format!("--spin-us {spin}, {path}: {want}"));
            run.check(run.calls("open").iter().filter(|r| r["args"]["path"] == path.as_str()).count() == 200, "traced");
        }
    }
}
