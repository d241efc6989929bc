//! `hermes report`: a summary of a trace for people (what was called, what was denied
//! and by which handler, where it went, how long it took) and an export to the Chrome
//! trace-event format that Perfetto and chrome://tracing open.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde_json::{json, Map, Value as Json};

use crate::errno;
use crate::event::{EventArgs, NetAddr};
use crate::replay::{CallRecord, Decision};

/// Counts and samples gathered from the call records of one trace.
#[derive(Debug, Default)]
pub struct Report {
    /// Call records seen.
    pub events: usize,
    /// Records of another `type`.
    pub skipped: usize,
    /// Lines that could not be read.
    pub unreadable: usize,
    calls: HashMap<String, usize>,
    decisions: HashMap<&'static str, usize>,
    /// (call, errno, handler) of denials.
    denied: HashMap<(String, String, String), usize>,
    policy_errors: HashMap<String, usize>,
    paths: HashMap<String, usize>,
    peers: HashMap<String, usize>,
    latency_us: Vec<f64>,
    duration_us: Vec<f64>,
    /// pid → (exe, calls).
    procs: BTreeMap<i32, (String, usize)>,
    first_time: Option<f64>,
    last_time: Option<f64>,
}

impl Report {
    pub fn add(&mut self, rec: &CallRecord) {
        let ev = &rec.event;
        self.events += 1;
        *self.calls.entry(ev.func.clone()).or_default() += 1;
        *self.decisions.entry(rec.decision.kind()).or_default() += 1;
        if let Decision::Deny(e) = rec.decision {
            *self.denied.entry((ev.func.clone(), errno::text(e), rec.handler.clone())).or_default() += 1;
        }
        if let Some(error) = &rec.error {
            *self.policy_errors.entry(error.clone()).or_default() += 1;
        }
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match &ev.args {
            EventArgs::Open { path, .. } | EventArgs::Exec { path, .. } => {
                *self.paths.entry(lossy(path)).or_default() += 1;
            }
            EventArgs::Connect { addr, .. } | EventArgs::Send { addr: Some(addr), .. } => {
                *self.peers.entry(NetAddr::display(addr)).or_default() += 1;
            }
            EventArgs::Send { addr: None, .. } | EventArgs::Api { .. } => {}
        }
        self.latency_us.extend(rec.latency_us.filter(|v| v.is_finite()));
        self.duration_us.extend(rec.duration_us.filter(|v| v.is_finite()));
        let proc = self.procs.entry(ev.pid).or_insert_with(|| (String::new(), 0));
        if !ev.proc.exe.is_empty() {
            proc.0 = lossy(&ev.proc.exe);
        }
        proc.1 += 1;
        if let Some(t) = rec.time.filter(|t| t.is_finite()) {
            self.first_time = Some(self.first_time.map_or(t, |f| f.min(t)));
            self.last_time = Some(self.last_time.map_or(t, |l| l.max(t)));
        }
    }

    /// The summary as text, with at most `top` entries in each ranked list.
    pub fn render(&self, name: &str, top: usize) -> String {
        let mut s = String::new();
        let span = match (self.first_time, self.last_time) {
            (Some(f), Some(l)) => format!(" over {:.3} s", l - f),
            _ => String::new(),
        };
        s += &format!(
            "{name}: {}, {}{span}; {}, {}\n",
            counted(self.events, "call", "calls"),
            counted(self.procs.len(), "process", "processes"),
            counted(self.skipped, "other record skipped", "other records skipped"),
            counted(self.unreadable, "unreadable line", "unreadable lines"),
        );
        section(&mut s, "calls", &ranked(&self.calls, usize::MAX));
        let decisions: HashMap<String, usize> = self.decisions.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        section(&mut s, "decisions", &ranked(&decisions, usize::MAX));
        let denied: HashMap<String, usize> =
            self.denied.iter().map(|((call, errno, handler), n)| (format!("{call} {errno} ({handler})"), *n)).collect();
        section(&mut s, "denied (call errno (handler))", &ranked(&denied, top));
        section(&mut s, "policy errors", &ranked(&self.policy_errors, top));
        section(&mut s, "top paths (open, exec)", &ranked(&self.paths, top));
        section(&mut s, "top peers (connect, sendto, sendmsg)", &ranked(&self.peers, top));
        s += "latency (µs)                      p50        p90        p99        max      count\n";
        for (what, samples) in
            [("broker decision (latency_us)", &self.latency_us), ("call (duration_us)", &self.duration_us)]
        {
            match Percentiles::of(samples) {
                Some(p) => {
                    s += &format!(
                        "  {what:<28} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}\n",
                        p.p50, p.p90, p.p99, p.max, p.count
                    )
                }
                None => s += &format!("  {what:<28} {:>10}\n", "-"),
            }
        }
        let procs: Vec<(String, usize)> =
            self.procs.iter().map(|(pid, (exe, n))| (format!("pid {pid} {exe}"), *n)).collect();
        let mut procs = procs;
        procs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        procs.truncate(top);
        section(&mut s, "processes", &procs);
        s
    }

    /// The summary as one JSON object (`hermes report --json`).
    pub fn to_json(&self, top: usize) -> Json {
        let counts = |m: &HashMap<String, usize>, key: &str, top: usize| -> Json {
            ranked(m, top).into_iter().map(|(k, n)| json!({ key: k, "count": n })).collect()
        };
        let decisions: Map<String, Json> = self.decisions.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let calls: Map<String, Json> = self.calls.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut denied: Vec<(&(String, String, String), &usize)> = self.denied.iter().collect();
        denied.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let denied: Vec<Json> = denied
            .into_iter()
            .take(top)
            .map(|((call, errno, handler), n)| json!({"call": call, "errno": errno, "handler": handler, "count": n}))
            .collect();
        let percentiles = |samples: &[f64]| Percentiles::of(samples).map(|p| p.to_json()).unwrap_or(Json::Null);
        let procs: Vec<Json> =
            self.procs.iter().map(|(pid, (exe, n))| json!({"pid": pid, "exe": exe, "count": n})).collect();
        json!({
            "events": self.events,
            "skipped": self.skipped,
            "unreadable": self.unreadable,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "calls": calls,
            "decisions": decisions,
            "denied": denied,
            "policy_errors": counts(&self.policy_errors, "error", top),
            "paths": counts(&self.paths, "path", top),
            "peers": counts(&self.peers, "peer", top),
            "latency_us": percentiles(&self.latency_us),
            "duration_us": percentiles(&self.duration_us),
            "processes": procs,
        })
    }
}

/// `1 call`, `2 calls`.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Entries by count, largest first, ties by name.
fn ranked(m: &HashMap<String, usize>, top: usize) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

fn section(s: &mut String, title: &str, rows: &[(String, usize)]) {
    *s += &format!("{title}\n");
    if rows.is_empty() {
        *s += "  -\n";
    }
    for (what, n) in rows {
        *s += &format!("  {n:>8}  {what}\n");
    }
}

/// Nearest-rank percentiles of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Percentiles {
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles { p50: rank(50.0), p90: rank(90.0), p99: rank(99.0), max: v[v.len() - 1], count: v.len() })
    }

    fn to_json(self) -> Json {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max, "count": self.count})
    }
}

/// Writes the Chrome trace-event JSON (`{"traceEvents": [...]}`) as records arrive:
/// one complete ("X") event per call, then metadata ("M") events naming each process
/// by its executable. Times are microseconds since the epoch.
pub struct ChromeTrace<W: Write> {
    out: W,
    written: usize,
    /// Calls left out because the record has no `time` (or one too large to place).
    pub untimed: usize,
    procs: BTreeMap<i32, String>,
}

impl<W: Write> ChromeTrace<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[")?;
        Ok(ChromeTrace { out, written: 0, untimed: 0, procs: BTreeMap::new() })
    }

    pub fn add(&mut self, rec: &CallRecord) -> io::Result<()> {
        let ev = &rec.event;
        let Some(ts) = rec.time.map(|t| t * 1e6).filter(|t| t.is_finite()) else {
            self.untimed += 1;
            return Ok(());
        };
        let dur = rec.duration_us.or(rec.latency_us).filter(|d| d.is_finite() && *d >= 0.0).unwrap_or(0.0);
        let mut args = match rec.json.get("args") {
            Some(Json::Object(a)) => a.clone(),
            _ => Map::new(),
        };
        args.insert("decision".into(), json!(rec.decision.to_string()));
        args.insert("handler".into(), json!(rec.handler));
        for key in ["result", "result_errno", "latency_us", "error", "logs", "layer"] {
            if let Some(v) = rec.json.get(key) {
                args.insert(key.into(), v.clone());
            }
        }
        let event = json!({
            "name": ev.func,
            "cat": ev.op.name(),
            "ph": "X",
            "ts": ts,
            "dur": dur,
            "pid": ev.pid,
            "tid": ev.tid,
            "args": args,
        });
        self.write(&event)?;
        let exe = String::from_utf8_lossy(&ev.proc.exe);
        let name = self.procs.entry(ev.pid).or_default();
        if name.is_empty() && !exe.is_empty() {
            *name = exe.into_owned();
        }
        Ok(())
    }

    fn write(&mut self, event: &Json) -> io::Result<()> {
        if self.written > 0 {
            self.out.write_all(b",")?;
        }
        self.out.write_all(b"\n")?;
        serde_json::to_writer(&mut self.out, event)?;
        self.written += 1;
        Ok(())
    }

    /// Write the process names and close the document; returns the number of "X" events.
    pub fn finish(mut self) -> io::Result<usize> {
        let calls = self.written;
        for (pid, exe) in std::mem::take(&mut self.procs) {
            let name = if exe.is_empty() { format!("pid {pid}") } else { exe };
            self.write(&json!({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}}))?;
        }
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{parse_line, Line};

    fn rec(line: &str) -> CallRecord {
        match parse_line(line.as_bytes()) {
            Ok(Line::Call(r)) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max, p.count), (50.0, 90.0, 99.0, 100.0, 100));
        assert_eq!(Percentiles::of(&[7.0]).unwrap().p99, 7.0);
        assert_eq!(Percentiles::of(&[]), None);
    }

    #[test]
    fn counts_and_chrome_events() {
        let recs = [
            r#"{"time":10.0,"pid":5,"tid":5,"exe":"/bin/cat","call":"openat","op":"open","args":{"path":"/a"},"decision":"deny","errno":"EACCES","handler":"on_open","latency_us":3.0}"#,
            r#"{"time":10.5,"pid":5,"tid":6,"exe":"/bin/cat","call":"openat","op":"open","args":{"path":"/a"},"decision":"allow","handler":"default","latency_us":1.0,"duration_us":4.0}"#,
            r#"{"pid":6,"tid":6,"call":"connect","op":"connect","args":{"fd":3,"family":"inet","addr":"127.0.0.1","port":9},"decision":"allow"}"#,
        ];
        let mut report = Report::default();
        let mut buf = Vec::new();
        let mut chrome = ChromeTrace::new(&mut buf).unwrap();
        for r in recs {
            let r = rec(r);
            report.add(&r);
            chrome.add(&r).unwrap();
        }
        let j = report.to_json(10);
        assert_eq!(j["events"], 3);
        assert_eq!(j["calls"]["openat"], 2);
        assert_eq!(j["decisions"]["deny"], 1);
        assert_eq!(j["denied"][0], json!({"call": "openat", "errno": "EACCES", "handler": "on_open", "count": 1}));
        assert_eq!(j["paths"][0], json!({"path": "/a", "count": 2}));
        assert_eq!(j["peers"][0], json!({"peer": "127.0.0.1:9", "count": 1}));
        assert_eq!(j["latency_us"]["max"], 3.0);
        assert_eq!(j["duration_us"]["count"], 1);
        let text = report.render("t.jsonl", 10);
        assert!(text.starts_with("t.jsonl: 3 calls, 2 processes over 0.500 s"), "{text}");
        assert!(text.contains("       1  openat EACCES (on_open)"), "{text}");

        assert_eq!(chrome.untimed, 1);
        assert_eq!(chrome.finish().unwrap(), 2);
    }

    #[test]
    fn chrome_output_is_one_json_document() {
        let mut buf = Vec::new();
        let mut chrome = ChromeTrace::new(&mut buf).unwrap();
        chrome
            .add(&rec(
                r#"{"time":2.0,"pid":5,"tid":6,"exe":"/bin/cat","call":"openat","op":"open","args":{"path":"/a"},"decision":"allow","latency_us":1.5}"#,
            ))
            .unwrap();
        assert_eq!(chrome.finish().unwrap(), 1);
        let doc: Json = serde_json::from_slice(&buf).expect("valid JSON");
        let events = doc["traceEvents"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["ph"], "X");
        assert_eq!(events[0]["ts"], 2e6);
        assert_eq!(events[0]["dur"], 1.5);
        assert_eq!(events[0]["args"]["path"], "/a");
        assert_eq!(events[0]["args"]["decision"], "allow");
        assert_eq!(
            events[1],
            json!({"name": "process_name", "ph": "M", "pid": 5, "tid": 5, "args": {"name": "/bin/cat"}})
        );
    }
}
