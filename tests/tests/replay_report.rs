//! `hermes replay` and `hermes report` on a trace recorded from a real run: a C program
//! opening files (one denied, one redirected) and connecting to a local listener (one
//! connect redirected), under a real `hermes launch`.

use std::net::TcpListener;
use std::path::PathBuf;

use hermes_tests::{c_program, hermes, launch, EchoServer, Outcome, Scratch};
use serde_json::Value as Json;

/// A recorded run and what the test knows about it.
struct Recorded {
    dir: Scratch,
    trace: PathBuf,
    records: Vec<Json>,
    echo: EchoServer,
    dead: u16,
}

impl Recorded {
    fn d(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The policy the run was recorded under.
    fn policy(&self) -> String {
        format!(
            r#"
local dir = "{d}"
function on_open(ev)
  if ev.path == dir .. "/secret" then return hermes.deny("EACCES") end
  if ev.path == dir .. "/from" then return hermes.redirect(dir .. "/to") end
end
function on_connect(ev)
  if ev.port == {dead} then return hermes.redirect{{port = {echo}}} end
end
"#,
            d = self.d(),
            dead = self.dead,
            echo = self.echo.port
        )
    }

    /// Write `src` as NAME in the scratch directory; returns its path as text.
    fn file(&self, name: &str, src: &str) -> String {
        self.dir.write(name, src).display().to_string()
    }

    fn trace(&self) -> String {
        self.trace.display().to_string()
    }

    /// The one record of an open of `name` in the scratch directory.
    fn open_of(&self, name: &str) -> &Json {
        let path = format!("{}/{name}", self.d());
        let found: Vec<&Json> =
            self.records.iter().filter(|r| r["op"] == "open" && r["args"]["path"] == path).collect();
        assert_eq!(found.len(), 1, "one open of {path} in {:#?}", self.records);
        found[0]
    }
}

/// Run `calls` under the recording policy and keep its trace in a file.
fn record() -> Recorded {
    let dir = Scratch::new();
    dir.write("plain", "plain content\n");
    dir.write("secret", "secret content\n");
    dir.write("from", "original content\n");
    dir.write("to", "redirected content\n");
    let echo = EchoServer::start();
    // A port nothing listens on (bound, then released): connecting there only works
    // because the policy redirects it to the echo server.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut rec = Recorded { trace: dir.join("run.jsonl"), dir, records: Vec::new(), echo, dead };
    let d = rec.d();
    let steps = [
        format!("open:{d}/plain"),
        format!("open:{d}/secret"),
        format!("open:{d}/from"),
        format!("connect:127.0.0.1:{}", rec.echo.port),
        format!("connect:127.0.0.1:{}", rec.dead),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&rec.policy(), c_program("calls"), &args).run();
    run.check(run.code == 0, "calls exits 0");
    let outputs = ["OK plain content", "ERR EACCES", "OK redirected content", "OK echo: hello", "OK echo: hello"];
    for (step, want) in steps.iter().zip(outputs) {
        let line = run.stdout.lines().find(|l| l.starts_with(&format!("{step} = "))).unwrap_or_default();
        run.check(line.ends_with(want), &format!("{step}: want {want}, got {line:?}"));
    }
    // The launch's own scratch directory (and its trace file) is gone: write the
    // records back, one JSON object per line, as the broker wrote them.
    let mut text = String::new();
    for r in &run.trace {
        text += &format!("{r}\n");
    }
    std::fs::write(&rec.trace, text).expect("write trace");
    rec.records = run.trace;
    rec
}

/// The lines of the replay's stdout that mark a difference.
fn diffs(run: &Outcome) -> Vec<&str> {
    run.stdout.lines().filter(|l| l.starts_with('!')).collect()
}

fn summary(run: &Outcome) -> &str {
    run.stdout.lines().rfind(|l| l.starts_with("replay: ")).unwrap_or("<no summary line>")
}

#[test]
fn replay_with_the_recording_policy_agrees_and_another_policy_differs() {
    let rec = record();
    let n = rec.records.len();
    let same = rec.file("same.lua", &rec.policy());
    let run = hermes(&["replay", &rec.trace(), "--policy", &same]).run();
    run.check(run.code == 0, "same policy: exit 0");
    run.check(diffs(&run).is_empty(), "same policy: no difference");
    run.check(summary(&run).starts_with(&format!("replay: {n} events, 0 differ, 0 skipped, 0 unreadable")), "summary");
    let secret = run.stdout.lines().find(|l| l.contains(&format!("{}/secret", rec.d()))).unwrap_or_default();
    run.check(secret.ends_with("= deny EACCES (on_open)"), &format!("the denial is shown: {secret:?}"));
    let connect = format!(", 127.0.0.1:{}) = redirect 127.0.0.1:{} (on_connect)", rec.dead, rec.echo.port);
    run.check(run.stdout.contains(&connect), "the connect redirect is recomputed from the recorded address");

    // Another policy: another errno for secret, another target for from, and the dead
    // port denied instead of redirected. Everything else is decided the same.
    let other = rec.file(
        "other.lua",
        &format!(
            r#"
local dir = "{d}"
function on_open(ev)
  if ev.path == dir .. "/secret" then return hermes.deny("EPERM") end
  if ev.path == dir .. "/from" then return hermes.redirect(dir .. "/elsewhere") end
end
function on_connect(ev)
  if ev.port == {dead} then return hermes.deny("ECONNREFUSED") end
end
"#,
            d = rec.d(),
            dead = rec.dead
        ),
    );
    let run = hermes(&["replay", &rec.trace(), "--policy", &other]).run();
    run.check(run.code == 1, "other policy: exit 1");
    run.check(summary(&run).starts_with(&format!("replay: {n} events, 3 differ,")), "3 differ");
    let d = rec.d();
    let expected = [
        format!("{d}/secret\", 0o0): recorded deny EACCES (on_open), replayed deny EPERM (on_open)"),
        format!(
            "{d}/from\", 0o0): recorded redirect \"{d}/to\" (on_open), replayed redirect \"{d}/elsewhere\" (on_open)"
        ),
        format!(
            ", 127.0.0.1:{}): recorded redirect 127.0.0.1:{} (on_connect), replayed deny ECONNREFUSED (on_connect)",
            rec.dead, rec.echo.port
        ),
    ];
    let got = diffs(&run);
    run.check(got.len() == 3, "three lines marked with !");
    for want in &expected {
        run.check(got.iter().any(|l| l.ends_with(want.as_str())), &format!("a ! line ending with {want}"));
    }
    // Each marked line names its line in the trace.
    let secret_line = rec.records.iter().position(|r| std::ptr::eq(r, rec.open_of("secret"))).unwrap_or(0) + 1;
    run.check(
        got.iter().any(|l| l.starts_with(&format!("! {secret_line:>5}: [pid "))),
        &format!("the secret line is numbered {secret_line}"),
    );

    // --diff-only prints the differences and the summary, nothing else.
    let run = hermes(&["replay", &rec.trace(), "--policy", &other, "--diff-only"]).run();
    run.check(run.code == 1, "--diff-only: exit 1");
    run.check(run.stdout.lines().count() == 4, "--diff-only: 3 differences and the summary");
}

#[test]
fn corrupt_and_truncated_lines_are_reported_by_number_and_the_rest_is_replayed() {
    let rec = record();
    let good: Vec<String> = rec.records.iter().map(Json::to_string).collect();
    let n = good.len();
    let secret = rec.open_of("secret").to_string();
    // Line 1 good, 2 not JSON, 3 a record without `call`, 4 another record type, then
    // the good records, and last a record cut in the middle without a newline.
    let mut text = format!("{}\nthis is not json\n{{\"pid\":1,\"tid\":1,\"op\":\"open\"}}\n", good[0]);
    text += "{\"type\":\"shadow\",\"pid\":1}\n";
    for line in &good[1..] {
        text += line;
        text += "\n";
    }
    text += secret.get(..secret.len() / 2).unwrap_or("{");
    let last = n + 4;
    let broken = rec.file("broken.jsonl", &text);
    let policy = rec.file("same.lua", &rec.policy());

    let run = hermes(&["replay", &broken, "--policy", &policy]).run();
    run.check(run.code == 3, "unreadable lines and no difference: exit 3");
    for want in [
        format!("hermes: {broken}:2: not JSON"),
        format!("hermes: {broken}:3: missing field `call`"),
        format!("hermes: {broken}:{last}: truncated last line (no newline at the end)"),
    ] {
        run.check(run.stderr.contains(&want), &format!("stderr has {want}"));
    }
    run.check(!run.stderr.contains(&format!("{broken}:4:")), "another record type is no error");
    run.check(summary(&run).starts_with(&format!("replay: {n} events, 0 differ, 1 skipped, 3 unreadable")), "summary");

    // Differences win over unreadable lines.
    let allow = rec.file("allow.lua", "function on_open(ev) return hermes.allow() end\n");
    let run = hermes(&["replay", &broken, "--policy", &allow]).run();
    run.check(run.code == 1, "differences and unreadable lines: exit 1");

    let run = hermes(&["report", &broken, "--json"]).run();
    run.check(run.code == 3, "report with unreadable lines: exit 3");
    run.check(run.stderr.contains(&format!("hermes: {broken}:2: not JSON")), "report names the line");
    let j: Json = serde_json::from_str(&run.stdout).unwrap_or_default();
    run.check(j["events"] == n && j["unreadable"] == 3 && j["skipped"] == 1, "report counts the rest");
}

#[test]
fn a_policy_that_returns_a_non_decision_fails_closed_during_replay() {
    let rec = record();
    let bad = rec.file(
        "bad.lua",
        &format!(
            "local dir = \"{}\"\nfunction on_open(ev)\n  if ev.path == dir .. \"/plain\" then return 42 end\nend\n",
            rec.d()
        ),
    );
    let run = hermes(&["replay", &rec.trace(), "--policy", &bad, "-q"]).run();
    run.check(run.code == 1, "the fail-closed denial differs from the recorded allow");
    let plain = format!("{}/plain\", 0o0): recorded allow (default), replayed deny EPERM (on_open) error: ", rec.d());
    let line = diffs(&run).into_iter().find(|l| l.contains(&plain)).unwrap_or_default();
    run.check(line.contains("returned an integer"), &format!("the error is shown: {line:?}"));
    run.check(
        run.stderr.contains("policy error, call denied (EPERM): ") && run.stderr.contains("returned an integer"),
        "and reported on stderr as the broker does",
    );
    run.check(summary(&run).contains("1 policy errors"), "counted");

    // A policy that does not load is a usage error that names file:line.
    let broken = rec.file("syntax.lua", "function on_open(ev)\n  return hermes.allow(\nend\n");
    let run = hermes(&["replay", &rec.trace(), "--policy", &broken]).run();
    run.check(run.code == 2 && run.stderr.contains(&format!("{broken}:3:")), "bad policy: exit 2, file:line");
    let run = hermes(&["replay", "/nonexistent/trace.jsonl", "--policy", &bad]).run();
    run.check(run.code == 2 && run.stderr.contains("cannot read trace /nonexistent/trace.jsonl"), "missing trace");
}

#[test]
fn report_counts_the_run_and_exports_a_chrome_trace() {
    let rec = record();
    let n = rec.records.len();
    let d = rec.d();
    let run = hermes(&["report", &rec.trace(), "--json"]).run();
    run.check(run.code == 0, "report: exit 0");
    let j: Json = serde_json::from_str(&run.stdout).unwrap_or_default();
    run.check(j["events"] == n, "every record counted");
    run.check(j["decisions"]["deny"] == 1 && j["decisions"]["redirect"] == 2, "1 denial, 2 redirects");
    run.check(j["calls"]["connect"] == 2, "2 connects");
    let secret_call = rec.open_of("secret")["call"].clone();
    let denied = serde_json::json!([{"call": secret_call, "errno": "EACCES", "handler": "on_open", "count": 1}]);
    run.check(j["denied"] == denied, "the denial grouped with its handler and errno");
    let has = |list: &str, key: &str, value: &str, count: usize| {
        j[list].as_array().is_some_and(|l| l.iter().any(|e| e[key] == value && e["count"] == count))
    };
    run.check(has("paths", "path", &format!("{d}/secret"), 1), "secret among the paths");
    run.check(has("peers", "peer", &format!("127.0.0.1:{}", rec.echo.port), 1), "the echo server among the peers");
    run.check(has("peers", "peer", &format!("127.0.0.1:{}", rec.dead), 1), "the dead port among the peers");
    run.check(j["latency_us"]["count"] == n, "a latency for every call");
    let procs = j["processes"].as_array().cloned().unwrap_or_default();
    let calls_exe = procs.iter().find(|p| p["exe"].as_str().is_some_and(|e| e.contains("/calls-")));
    run.check(calls_exe.is_some_and(|p| p["count"] == n), "all calls from the calls process");

    // The text form shows the same.
    let run = hermes(&["report", &rec.trace()]).run();
    run.check(run.code == 0, "text report: exit 0");
    run.check(run.stdout.starts_with(&format!("{}: {n} calls, 1 process", rec.trace())), "header");
    let denial = format!("1  {} EACCES (on_open)", secret_call.as_str().unwrap_or_default());
    run.check(run.stdout.lines().any(|l| l.trim_start() == denial), "the denial line");
    run.check(run.stdout.contains("broker decision (latency_us)"), "latency percentiles");

    // The Chrome export, to a file and to stdout.
    let out = rec.dir.join("chrome.json").display().to_string();
    let run = hermes(&["report", &rec.trace(), "--chrome", &out]).run();
    run.check(run.code == 0, "--chrome: exit 0");
    let doc: Json = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default()).unwrap_or_default();
    let events = doc["traceEvents"].as_array().cloned().unwrap_or_default();
    let complete: Vec<&Json> = events.iter().filter(|e| e["ph"] == "X").collect();
    run.check(complete.len() == n, "one X event per call");
    for e in &complete {
        let fields = e["name"].is_string()
            && e["ts"].as_f64().is_some_and(|t| t > 1e15)
            && e["dur"].as_f64().is_some_and(|t| t >= 0.0)
            && e["pid"].is_i64()
            && e["tid"].is_i64()
            && e["args"]["decision"].is_string();
        run.check(fields, &format!("the fields Perfetto needs: {e}"));
    }
    let secret = complete.iter().find(|e| e["args"]["path"] == format!("{d}/secret"));
    run.check(secret.is_some_and(|e| e["args"]["decision"] == "deny EACCES"), "args carry the decision");
    let names: Vec<&Json> = events.iter().filter(|e| e["ph"] == "M" && e["name"] == "process_name").collect();
    run.check(
        names.len() == 1 && names[0]["args"]["name"].as_str().is_some_and(|e| e.contains("/calls-")),
        "the process is named by its executable",
    );
    let run = hermes(&["report", &rec.trace(), "--chrome", "-"]).run();
    let doc: Json = serde_json::from_str(&run.stdout).unwrap_or_default();
    run.check(doc["traceEvents"].as_array().is_some_and(|e| e.len() == n + 1), "--chrome - writes only the export");
}
