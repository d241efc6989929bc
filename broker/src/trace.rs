//! Where decisions go: the JSON Lines event trace (`--trace`) and the strace-like
//! one-line-per-call output on stderr (`-v`).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use crate::errno;
use crate::event::{bytes_json, Event, EventContext, NetAddr};
use crate::policy::{Outcome, Verdict};

/// The result of the real call, when it ran.
#[derive(Clone, Copy, Debug)]
pub struct CallResult {
    pub ret: i64,
    pub errno: i32,
    pub duration: Duration,
}

/// One mediated call, from request to result.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    pub event: Event,
    pub outcome: Outcome,
    /// The address a connect/sendto was redirected to.
    pub redirected_to: Option<NetAddr>,
    pub policy_hash: std::sync::Arc<str>,
    /// Time from request received to reply sent.
    pub latency: Duration,
    pub result: Option<CallResult>,
    /// The call ran without asking (the policy only observes it).
    pub observed: bool,
}

impl Record {
    /// The result implied by the decision when the real call did not run.
    pub fn implied_result(&self) -> Option<CallResult> {
        let zero = Duration::ZERO;
        match self.outcome.verdict {
            Verdict::Deny(e) => Some(CallResult { ret: -1, errno: e, duration: zero }),
            Verdict::Emulate(ret) => Some(CallResult { ret, errno: 0, duration: zero }),
            _ => None,
        }
    }

    fn to_json(&self) -> Json {
        let ev = &self.event;
        let verdict = &self.outcome.verdict;
        let time = self.time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut j = json!({
            "time": time,
            "mono_ns": ev.mono_ns,
            "pid": ev.pid,
            "tid": ev.tid,
            "ppid": ev.proc.ppid,
            "exe": bytes_json(&ev.proc.exe),
            "layer": ev.layer.name(),
            "call": ev.func,
            "op": ev.op.name(),
            "args": ev.args_json(),
            "decision": verdict.kind(),
            "handler": self.outcome.handler,
            "policy": &*self.policy_hash,
            "latency_us": self.latency.as_secs_f64() * 1e6,
        });
        let m = j.as_object_mut().expect("json! object");
        verdict_json(m, verdict, self.redirected_to.as_ref());
        if self.outcome.injected {
            m.insert("injected".into(), json!(true));
        }
        if self.outcome.cache {
            m.insert("cache".into(), json!(true));
        }
        if self.observed {
            m.insert("observed".into(), json!(true));
        }
        context_json(m, &ev.ctx);
        if let Some(r) = self.result.or_else(|| self.implied_result()) {
            m.insert("result".into(), json!(r.ret));
            if r.errno != 0 {
                m.insert("result_errno".into(), errno_json(r.errno));
            }
            m.insert("duration_us".into(), json!(r.duration.as_secs_f64() * 1e6));
        }
        if !self.outcome.logs.is_empty() {
            m.insert("logs".into(), json!(self.outcome.logs));
        }
        if let Some(e) = &self.outcome.error {
            m.insert("error".into(), json!(e));
        }
        j
    }

    /// `[pid 123] openat("/etc/passwd", 0o0) = deny EACCES (on_open)`
    fn to_line(&self) -> String {
        let decision = match &self.outcome.verdict {
            Verdict::Allow => "allow".to_owned(),
            Verdict::Deny(e) => format!("deny {}", errno::text(*e)),
            Verdict::Redirect(p) => format!("redirect {:?}", String::from_utf8_lossy(p)),
            Verdict::RedirectAddr { .. } => {
                format!("redirect {}", self.redirected_to.as_ref().map(NetAddr::display).unwrap_or_default())
            }
            Verdict::Emulate(ret) => format!("emulate {ret}"),
            Verdict::Kill => "kill".to_owned(),
            Verdict::Rewrite { flags, mode, data } => {
                let mut parts = Vec::new();
                if let Some(f) = flags {
                    parts.push(format!("flags={f:#o}"));
                }
                if let Some(m) = mode {
                    parts.push(format!("mode={m:#o}"));
                }
                if let Some(d) = data {
                    parts.push(format!("data={} bytes", d.len()));
                }
                format!("rewrite {}", parts.join(" "))
            }
        };
        let decision = if self.outcome.injected { format!("{decision} (injected)") } else { decision };
        let result = match self.result {
            Some(r) if r.errno != 0 => format!(" -> {} {}", r.ret, errno::text(r.errno)),
            Some(r) => format!(" -> {}", r.ret),
            None => String::new(),
        };
        format!(
            "hermes: [pid {}] {} = {decision} ({}){result}",
            self.event.pid,
            self.event.summary(),
            self.outcome.handler
        )
    }
}

/// The decision's parameters: `errno`, `redirect`, `emulate`, `rewrite`.
fn verdict_json(m: &mut serde_json::Map<String, Json>, verdict: &Verdict, redirected_to: Option<&NetAddr>) {
    match verdict {
        Verdict::Deny(e) => {
            m.insert("errno".into(), errno_json(*e));
        }
        Verdict::Redirect(path) => {
            m.insert("redirect".into(), bytes_json(path));
        }
        Verdict::RedirectAddr { .. } => {
            if let Some(to) = redirected_to {
                m.insert("redirect".into(), json!(to.display()));
            }
        }
        Verdict::Emulate(ret) => {
            m.insert("emulate".into(), json!(ret));
        }
        Verdict::Rewrite { flags, mode, data } => {
            let mut r = serde_json::Map::new();
            if let Some(f) = flags {
                r.insert("flags".into(), json!(f));
            }
            if let Some(md) = mode {
                r.insert("mode".into(), json!(md));
            }
            if let Some(d) = data {
                r.insert("data".into(), bytes_json(d));
            }
            m.insert("rewrite".into(), Json::Object(r));
        }
        Verdict::Allow | Verdict::Kill => {}
    }
}

/// Context the policy asked for, as the trace keeps it.
fn context_json(m: &mut serde_json::Map<String, Json>, ctx: &EventContext) {
    if !ctx.backtrace.is_empty() {
        m.insert("backtrace".into(), json!(ctx.backtrace));
    }
    if let Some(data) = &ctx.payload {
        m.insert("data".into(), bytes_json(data));
    }
    if let Some(regs) = &ctx.regs {
        let r: serde_json::Map<String, Json> =
            hermes_wire::REGS.iter().zip(regs).map(|(n, v)| ((*n).to_owned(), json!(format!("{v:#x}")))).collect();
        m.insert("regs".into(), Json::Object(r));
    }
}

fn errno_json(e: i32) -> Json {
    errno::name(e).map_or_else(|| json!(e), |n| json!(n))
}

/// Where records are written. Each record is one `write` of one line, so a broker
/// that is killed loses at most the line it was writing; records made in a batch
/// (a ring's worth, read at once) are written together, in one `write` of whole
/// lines ([`Sink::emit_into`]).
pub struct Sink {
    trace: Option<Mutex<File>>,
    /// 0: quiet; 1: calls a policy handler decided, and every denial; 2: every call.
    verbose: u8,
}

impl Sink {
    pub fn new(trace: Option<File>, verbose: u8) -> Self {
        Sink { trace: trace.map(Mutex::new), verbose }
    }

    /// Whether clients should report results of allowed calls.
    pub fn wants_results(&self) -> bool {
        self.trace.is_some() || self.verbose > 0
    }

    /// A call on which the shadow policy disagreed with the enforced one.
    pub fn shadow(&self, event: &Event, enforced: &Outcome, candidate: &Outcome, shadow_hash: &str) {
        if self.verbose >= 1 {
            eprintln!(
                "hermes: shadow: [pid {}] {} = {} (enforced), {} (shadow, {})",
                event.pid,
                event.summary(),
                enforced.verdict.kind(),
                candidate.verdict.kind(),
                candidate.handler
            );
        }
        let mut shadow = serde_json::Map::new();
        shadow.insert("decision".into(), json!(candidate.verdict.kind()));
        shadow.insert("handler".into(), json!(candidate.handler));
        shadow.insert("policy".into(), json!(shadow_hash));
        verdict_json(&mut shadow, &candidate.verdict, None);
        if let Some(e) = &candidate.error {
            shadow.insert("error".into(), json!(e));
        }
        let mut j = json!({
            "type": "shadow",
            "time": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
            "mono_ns": event.mono_ns,
            "pid": event.pid,
            "tid": event.tid,
            "call": event.func,
            "op": event.op.name(),
            "args": event.args_json(),
            "decision": enforced.verdict.kind(),
            "handler": enforced.handler,
        });
        let m = j.as_object_mut().expect("json! object");
        verdict_json(m, &enforced.verdict, None);
        m.insert("shadow".into(), Json::Object(shadow));
        self.write(&j);
    }

    /// A line that is not a call (`{"type": "reload", …}`): the trace's own events.
    pub fn note(&self, kind: &str, mut fields: Json) {
        if let Some(m) = fields.as_object_mut() {
            m.insert("type".into(), json!(kind));
            m.insert(
                "time".into(),
                json!(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()),
            );
            m.insert("mono_ns".into(), json!(crate::event::monotonic_ns()));
        }
        self.write(&fields);
    }

    fn write(&self, j: &Json) {
        if self.trace.is_some() {
            let mut line = Vec::new();
            push_line(&mut line, j);
            self.write_lines(&mut line);
        }
    }

    /// Write whole trace lines in one `write`, and empty `lines`.
    pub fn write_lines(&self, lines: &mut Vec<u8>) {
        if let (Some(trace), false) = (&self.trace, lines.is_empty()) {
            let mut file = trace.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(lines) {
                eprintln!("hermes: cannot write trace: {e}");
            }
        }
        lines.clear();
    }

    pub fn emit(&self, record: &Record) {
        let mut line = Vec::new();
        self.emit_into(record, &mut line);
        self.write_lines(&mut line);
    }

    /// [`Sink::emit`], but the trace line is added to `lines`, for the caller to
    /// write with others ([`Sink::write_lines`]); written at once past [`BATCH_MAX`].
    pub fn emit_into(&self, record: &Record, lines: &mut Vec<u8>) {
        let decided = record.outcome.handler != "default" || record.outcome.verdict != Verdict::Allow;
        if self.verbose >= 2 || (self.verbose == 1 && decided) {
            eprintln!("{}", record.to_line());
        }
        if self.trace.is_some() {
            push_line(lines, &record.to_json());
            if lines.len() >= BATCH_MAX {
                self.write_lines(lines);
            }
        }
    }
}

/// Append `j` and a newline to `lines` (serialised straight into the buffer, not
/// through `Display`, which goes by way of `fmt::Write`).
fn push_line(lines: &mut Vec<u8>, j: &Json) {
    // Writing into a Vec cannot fail, nor can serialising a Value (its keys are strings).
    let _ = serde_json::to_writer(&mut *lines, j);
    lines.push(b'\n');
}

/// Bytes of trace lines a batch holds before they are written.
pub const BATCH_MAX: usize = 256 * 1024;
