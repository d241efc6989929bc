//! The trace read back: each JSON Lines record (see [`crate::trace`]) turned into the
//! [`Event`] the policy saw and the decision it made, so `hermes replay` can ask a
//! policy the same questions with no target running (no /proc, no ptrace: any OS),
//! and `hermes report` can summarise a run.
//!
//! Everything in a trace file is untrusted input: a line that does not parse is
//! reported with its number and skipped, never a panic, and the rest is read.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hermes_wire::{Layer, Op, API_ARGS};
use serde_json::{Map, Value as Json};

use crate::errno;
use crate::event::{ApiArg, Event, EventArgs, NetAddr, ProcInfo};
use crate::policy::{self, Outcome, Policy, Verdict};

/// Longest trace line read (a whole `envp` fits many times); a longer one is
/// reported and skipped.
pub const MAX_LINE: usize = 16 << 20;

/// Why one trace line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The line is not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// The last line has no newline and does not parse: its writer was cut off.
    #[error("truncated last line (no newline at the end): {0}")]
    Truncated(String),
    /// The line is JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A field every call record has is absent.
    #[error("missing field `{0}`")]
    Missing(String),
    /// A field has the wrong type or an impossible value.
    #[error("field `{field}`: {why}")]
    Invalid { field: String, why: String },
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {} MiB", MAX_LINE >> 20)]
    TooLong,
    /// Reading the trace failed; nothing after this line is read.
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

/// A decision as the trace records it, comparable across runs: kind and parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(i32),
    /// An open or exec sent to another path.
    RedirectPath(Vec<u8>),
    /// A connect or send sent to another address, as `NetAddr::display` writes it.
    RedirectAddr(String),
    Emulate(i64),
    Kill,
    /// Arguments replaced: open flags and mode, a send's payload.
    Rewrite {
        flags: Option<i32>,
        mode: Option<u32>,
        data: Option<Vec<u8>>,
    },
}

impl Decision {
    /// `"allow"`, `"deny"`, … as in the trace's `decision` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny(_) => "deny",
            Decision::RedirectPath(_) | Decision::RedirectAddr(_) => "redirect",
            Decision::Emulate(_) => "emulate",
            Decision::Kill => "kill",
            Decision::Rewrite { .. } => "rewrite",
        }
    }

    /// What the live broker would have recorded for `outcome` on `ev`: an address
    /// redirect is applied to the event's address, as the broker does before replying.
    pub fn from_outcome(ev: &Event, outcome: &Outcome) -> Self {
        match &outcome.verdict {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny(e) => Decision::Deny(*e),
            Verdict::Emulate(ret) => Decision::Emulate(*ret),
            Verdict::Kill => Decision::Kill,
            Verdict::Redirect(path) => Decision::RedirectPath(path.clone()),
            Verdict::Rewrite { flags, mode, data } => {
                Decision::Rewrite { flags: *flags, mode: *mode, data: data.clone() }
            }
            Verdict::RedirectAddr { .. } => Decision::RedirectAddr(
                policy::redirect_target(ev, &outcome.verdict).map(|to| to.display()).unwrap_or_default(),
            ),
        }
    }

    /// Read `decision` and its parameter (`errno`, `redirect`, `emulate`) from a record.
    fn from_record(op: Op, f: &Fields) -> Result<Self, RecordError> {
        let kind = f.string("decision")?.ok_or_else(|| f.missing("decision"))?;
        Ok(match kind {
            "allow" => Decision::Allow,
            "kill" => Decision::Kill,
            "deny" => Decision::Deny(f.errno("errno")?.ok_or_else(|| f.missing("errno"))?),
            "emulate" => Decision::Emulate(f.int("emulate")?.ok_or_else(|| f.missing("emulate"))?),
            "redirect" if matches!(op, Op::Open | Op::Exec) => {
                Decision::RedirectPath(f.bytes("redirect")?.ok_or_else(|| f.missing("redirect"))?)
            }
            "redirect" => {
                Decision::RedirectAddr(f.string("redirect")?.ok_or_else(|| f.missing("redirect"))?.to_owned())
            }
            "rewrite" => match f.get("rewrite") {
                Some(Json::Object(r)) => {
                    let r = Fields { m: r, prefix: "rewrite." };
                    Decision::Rewrite { flags: r.int("flags")?, mode: r.int("mode")?, data: r.bytes("data")? }
                }
                _ => return Err(f.missing("rewrite")),
            },
            other => {
                return Err(f.invalid(
                    "decision",
                    format!("unknown decision '{other}' (allow, deny, redirect, emulate, kill, rewrite)"),
                ))
            }
        })
    }
}

impl fmt::Display for Decision {
    /// The way `-v` prints decisions: `deny EACCES`, `redirect "/tmp/x"`, `redirect 127.0.0.1:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allow"),
            Decision::Deny(e) => write!(f, "deny {}", errno::text(*e)),
            Decision::RedirectPath(p) => write!(f, "redirect {:?}", String::from_utf8_lossy(p)),
            Decision::RedirectAddr(a) => write!(f, "redirect {a}"),
            Decision::Emulate(ret) => write!(f, "emulate {ret}"),
            Decision::Kill => f.write_str("kill"),
            Decision::Rewrite { flags, mode, data } => {
                f.write_str("rewrite")?;
                if let Some(v) = flags {
                    write!(f, " flags={v:#o}")?;
                }
                if let Some(v) = mode {
                    write!(f, " mode={v:#o}")?;
                }
                if let Some(d) = data {
                    write!(f, " data={:?}", String::from_utf8_lossy(d))?;
                }
                Ok(())
            }
        }
    }
}

/// One mediated call read back from the trace.
#[derive(Debug)]
pub struct CallRecord {
    /// The event as the policy saw it (paths as they were resolved during the run).
    pub event: Event,
    pub decision: Decision,
    /// The handler that decided, `"default"`, or `"error"` when the broker did not ask
    /// the policy (a relative path it could not resolve).
    pub handler: String,
    /// The policy error that made the call fail closed, if any.
    pub error: Option<String>,
    /// Wall-clock seconds at the decision.
    pub time: Option<f64>,
    pub latency_us: Option<f64>,
    pub duration_us: Option<f64>,
    /// The whole record, unknown fields included.
    pub json: Map<String, Json>,
}

impl CallRecord {
    /// Build a record from one parsed trace object.
    pub fn from_json(m: Map<String, Json>) -> Result<Self, RecordError> {
        let f = Fields { m: &m, prefix: "" };
        let call = f.string("call")?.ok_or_else(|| f.missing("call"))?.to_owned();
        let op_name = f.string("op")?.ok_or_else(|| f.missing("op"))?;
        let op = Op::ALL.into_iter().find(|o| o.name() == op_name).ok_or_else(|| {
            f.invalid("op", format!("unknown operation '{op_name}' (open, connect, sendto, sendmsg, exec, api)"))
        })?;
        let pid = f.int("pid")?.ok_or_else(|| f.missing("pid"))?;
        let tid = f.int("tid")?.ok_or_else(|| f.missing("tid"))?;
        let proc = ProcInfo { ppid: f.int("ppid")?.unwrap_or(0), exe: f.bytes("exe")?.unwrap_or_default() };
        let layer = match f.string("layer")? {
            None | Some("preload") => Layer::Preload,
            Some("ptrace") => Layer::Ptrace,
            Some(other) => return Err(f.invalid("layer", format!("unknown layer '{other}' (preload, ptrace)"))),
        };
        let args = match f.get("args") {
            Some(Json::Object(a)) => event_args(op, &call, &Fields { m: a, prefix: "args." })?,
            Some(_) => return Err(f.invalid("args", "expected an object".into())),
            None => return Err(f.missing("args")),
        };
        let decision = Decision::from_record(op, &f)?;
        let handler = f.string("handler")?.unwrap_or("default").to_owned();
        let error = f.string("error")?.map(str::to_owned);
        let time = f.float("time")?;
        let latency_us = f.float("latency_us")?;
        let duration_us = f.float("duration_us")?;
        let mut event = new_event(call, op, pid, tid, layer, proc, args);
        event.mono_ns = f.int("mono_ns")?.unwrap_or(0);
        // Context the policy asked for during the run is replayed to it.
        event.ctx.payload = f.bytes("data")?;
        if let Some(Json::Array(frames)) = f.get("backtrace") {
            event.ctx.backtrace = frames.iter().filter_map(|b| b.as_str().map(str::to_owned)).collect();
        }
        Ok(CallRecord { event, decision, handler, error, time, latency_us, duration_us, json: m })
    }

    /// The broker did not ask the policy about this call during the run (see
    /// `Event::unresolved`): a replay gives the same fail-closed answer.
    pub fn was_unresolved(&self) -> bool {
        self.handler == "error"
    }
}

/// The struct built field by field here, so the event module keeps one constructor
/// (the live one, which reads /proc).
fn new_event(func: String, op: Op, pid: i32, tid: i32, layer: Layer, proc: ProcInfo, args: EventArgs) -> Event {
    Event {
        func,
        op,
        pid,
        tid,
        layer,
        proc,
        args,
        unresolved: false,
        mono_ns: 0,
        ctx: crate::event::EventContext::default(),
    }
}

fn event_args(op: Op, call: &str, a: &Fields) -> Result<EventArgs, RecordError> {
    Ok(match op {
        Op::Open => {
            let path = a.bytes("path")?.ok_or_else(|| a.missing("path"))?;
            EventArgs::Open {
                dirfd: a.int("dirfd")?.unwrap_or(libc::AT_FDCWD),
                raw_path: a.bytes("raw_path")?.unwrap_or_else(|| path.clone()),
                path,
                flags: a.int("flags")?.unwrap_or(0),
                mode: a.int("mode")?.unwrap_or(0),
            }
        }
        Op::Connect => EventArgs::Connect {
            fd: a.int("fd")?.unwrap_or(-1),
            addr: net_addr(a)?.ok_or_else(|| a.missing("family"))?,
        },
        Op::SendTo | Op::SendMsg => EventArgs::Send {
            fd: a.int("fd")?.unwrap_or(-1),
            len: a.int("len")?.unwrap_or(0),
            flags: a.int("flags")?.unwrap_or(0),
            addr: net_addr(a)?,
        },
        Op::Exec => {
            let path = a.bytes("path")?.ok_or_else(|| a.missing("path"))?;
            EventArgs::Exec {
                raw_path: a.bytes("raw_path")?.unwrap_or_else(|| path.clone()),
                path,
                argv: a.byte_list("argv")?.unwrap_or_default(),
                envp: a.byte_list("envp")?.unwrap_or_default(),
            }
        }
        Op::Api => {
            let mut raw = [0u64; API_ARGS];
            if let Some(list) = a.list("raw")? {
                for (i, (slot, v)) in raw.iter_mut().zip(list).enumerate() {
                    *slot = v.as_u64().ok_or_else(|| a.invalid(&format!("raw[{i}]"), "expected an integer".into()))?;
                }
            }
            let args = match a.list("args")? {
                Some(list) => list.iter().enumerate().map(|(i, v)| api_arg(a, i, v)).collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let backtrace = match a.list("backtrace")? {
                Some(list) => list.iter().map(|v| v.as_str().unwrap_or("?").to_owned()).collect(),
                None => Vec::new(),
            };
            EventArgs::Api {
                lib: a.string("lib")?.unwrap_or_default().to_owned(),
                symbol: a.string("symbol")?.unwrap_or(call).to_owned(),
                raw,
                args,
                backtrace,
            }
        }
    })
}

/// A decoded library-call argument as `Event::args_json` wrote it: an integer, a
/// pointer as a `"0x…"` string, or bytes (a string or `{"hex": …}`).
fn api_arg(a: &Fields, i: usize, v: &Json) -> Result<ApiArg, RecordError> {
    let field = format!("args[{i}]");
    if let Some(n) = v.as_i64() {
        return Ok(ApiArg::Int(n));
    }
    if let Some(p) = v.as_str().and_then(|s| s.strip_prefix("0x")).and_then(|h| u64::from_str_radix(h, 16).ok()) {
        return Ok(ApiArg::Ptr(p));
    }
    json_bytes(v)
        .map(ApiArg::Bytes)
        .ok_or_else(|| a.invalid(&field, "expected an integer, a \"0x…\" pointer or bytes".into()))
}

/// `family`/`addr`/`port` back into an address; `None` when there is no `family`.
fn net_addr(a: &Fields) -> Result<Option<NetAddr>, RecordError> {
    let Some(family) = a.string("family")? else { return Ok(None) };
    let ip = |parse: fn(&str) -> Option<IpAddr>| -> Result<NetAddr, RecordError> {
        let text = a.string("addr")?.ok_or_else(|| a.missing("addr"))?;
        let ip = parse(text).ok_or_else(|| a.invalid("addr", format!("'{text}' is not an {family} address")))?;
        Ok(NetAddr::Ip { ip, port: a.int("port")?.unwrap_or(0), flowinfo: 0, scope_id: 0 })
    };
    Ok(Some(match family {
        "inet" => ip(|s| s.parse::<Ipv4Addr>().ok().map(IpAddr::from))?,
        "inet6" => ip(|s| s.parse::<Ipv6Addr>().ok().map(IpAddr::from))?,
        "unix" => {
            let path = a.bytes("addr")?.unwrap_or_default();
            // `ev.addr` writes an abstract name (leading NUL) as `@name`.
            NetAddr::Unix(match path.strip_prefix(b"@") {
                Some(name) => [b"\0".as_slice(), name].concat(),
                None => path,
            })
        }
        // The trace does not keep the family number of other families.
        "other" => NetAddr::Other(0),
        other => return Err(a.invalid("family", format!("unknown family '{other}' (inet, inet6, unix, other)"))),
    }))
}

/// Bytes as the trace writes them (`json::bytes`): a string, or `{"hex": "…"}`.
fn json_bytes(v: &Json) -> Option<Vec<u8>> {
    match v {
        Json::String(s) => Some(s.as_bytes().to_vec()),
        Json::Object(o) => {
            let hex = o.get("hex")?.as_str()?.as_bytes();
            if hex.len() % 2 != 0 {
                return None;
            }
            hex.chunks(2)
                .map(|pair| {
                    let digit = |c: u8| (c as char).to_digit(16);
                    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
                })
                .collect()
        }
        _ => None,
    }
}

/// Typed access to one object of a record, with errors that name the field.
struct Fields<'a> {
    m: &'a Map<String, Json>,
    /// `""` for the record, `"args."` for its arguments.
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    /// The field's value; JSON `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Json> {
        self.m.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> RecordError {
        RecordError::Missing(format!("{}{key}", self.prefix))
    }

    fn invalid(&self, key: &str, why: String) -> RecordError {
        RecordError::Invalid { field: format!("{}{key}", self.prefix), why }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, RecordError> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(key, "expected a string".into())),
        }
    }

    /// An integer that fits `T` (`i32` for descriptors, `u16` for ports, …).
    fn int<T: TryFrom<i64> + TryFrom<u64>>(&self, key: &str) -> Result<Option<T>, RecordError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let fitted = match (v.as_i64(), v.as_u64()) {
            (Some(i), _) => T::try_from(i).ok(),
            (None, Some(u)) => T::try_from(u).ok(),
            _ => None,
        };
        let why = || format!("expected an integer of type {}, got {v}", std::any::type_name::<T>());
        fitted.map(Some).ok_or_else(|| self.invalid(key, why()))
    }

    fn float(&self, key: &str) -> Result<Option<f64>, RecordError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.invalid(key, "expected a number".into())),
        }
    }

    fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, RecordError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                json_bytes(v).map(Some).ok_or_else(|| self.invalid(key, "expected a string or {\"hex\": \"…\"}".into()))
            }
        }
    }

    fn list(&self, key: &str) -> Result<Option<&'a Vec<Json>>, RecordError> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::Array(list)) => Ok(Some(list)),
            Some(_) => Err(self.invalid(key, "expected an array".into())),
        }
    }

    fn byte_list(&self, key: &str) -> Result<Option<Vec<Vec<u8>>>, RecordError> {
        let Some(list) = self.list(key)? else { return Ok(None) };
        let items = list.iter().enumerate().map(|(i, v)| {
            json_bytes(v)
                .ok_or_else(|| self.invalid(&format!("{key}[{i}]"), "expected a string or {\"hex\": …}".into()))
        });
        items.collect::<Result<_, _>>().map(Some)
    }

    /// An errno by name (`"EACCES"`) or number.
    fn errno(&self, key: &str) -> Result<Option<i32>, RecordError> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::String(name)) => {
                errno::by_name(name).map(Some).ok_or_else(|| self.invalid(key, format!("unknown errno name '{name}'")))
            }
            Some(_) => self.int(key),
        }
    }
}

/// What one trace line holds.
#[derive(Debug)]
pub enum Line {
    /// A mediated call.
    Call(Box<CallRecord>),
    /// A record of another `type` (not `"call"`), which readers of calls skip.
    Other(String),
}

/// Parse one line (without its newline).
pub fn parse_line(text: &[u8]) -> Result<Line, RecordError> {
    let value: Json = serde_json::from_slice(text).map_err(|e| RecordError::Json(e.to_string()))?;
    let Json::Object(m) = value else { return Err(RecordError::NotObject) };
    match m.get("type") {
        None | Some(Json::Null) => {}
        Some(Json::String(t)) if t == "call" => {}
        Some(Json::String(t)) => return Ok(Line::Other(t.clone())),
        Some(_) => return Err(RecordError::Invalid { field: "type".into(), why: "expected a string".into() }),
    }
    CallRecord::from_json(m).map(|r| Line::Call(Box::new(r)))
}

/// The lines of a trace, numbered from 1, parsed one at a time (a trace may be far
/// larger than memory). Blank lines are passed over; a read error ends the iteration.
pub struct TraceReader<R> {
    input: R,
    buf: Vec<u8>,
    line: usize,
    done: bool,
}

impl<R: BufRead> TraceReader<R> {
    pub fn new(input: R) -> Self {
        TraceReader { input, buf: Vec::new(), line: 0, done: false }
    }

    /// Read the next line into `buf`. `None` at the end; otherwise whether it ended
    /// with a newline and whether it was longer than [`MAX_LINE`] (then `buf` is empty).
    fn next_line(&mut self) -> io::Result<Option<(bool, bool)>> {
        self.buf.clear();
        let (mut any, mut too_long) = (false, false);
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok(any.then_some((false, too_long)));
            }
            any = true;
            let (take, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long && self.buf.len() + take > MAX_LINE + 1 {
                too_long = true;
                self.buf = Vec::new();
            }
            if !too_long {
                self.buf.extend_from_slice(&chunk[..take]);
            }
            self.input.consume(take);
            if ended {
                return Ok(Some((true, too_long)));
            }
        }
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    /// The line number and what the line holds.
    type Item = (usize, Result<Line, RecordError>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.line += 1;
            let (ended, too_long) = match self.next_line() {
                Ok(Some(read)) => read,
                Ok(None) => return None,
                Err(e) => {
                    self.done = true;
                    return Some((self.line, Err(e.into())));
                }
            };
            if too_long {
                return Some((self.line, Err(RecordError::TooLong)));
            }
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let parsed = match parse_line(text) {
                Err(RecordError::Json(e)) if !ended => Err(RecordError::Truncated(e)),
                other => other,
            };
            return Some((self.line, parsed));
        }
        None
    }
}

/// How `hermes replay` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Print only the events whose decision differs.
    pub diff_only: bool,
}

/// What a replay found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Call records replayed.
    pub events: usize,
    /// Of those, how many got a different decision.
    pub differ: usize,
    /// Records that are not calls (another `type`).
    pub skipped: usize,
    /// Lines that could not be read.
    pub unreadable: usize,
    /// Replayed calls the policy failed on (fail-closed denials).
    pub policy_errors: usize,
}

impl ReplayStats {
    /// `hermes replay`'s exit status: 0 same decisions, 1 some differ, 3 no
    /// difference but some lines were unreadable (2 is for usage and policy errors).
    pub fn exit_code(&self) -> u8 {
        if self.differ > 0 {
            1
        } else if self.unreadable > 0 {
            3
        } else {
            0
        }
    }
}

/// Ask `policy` about one recorded call, on this thread. A call the live broker
/// denied without asking (an unresolvable relative path) is answered the same way.
pub fn replay_one(policy: &Policy, rec: &CallRecord) -> Outcome {
    if rec.was_unresolved() {
        return Outcome::fixed(
            Verdict::Deny(libc::EPERM),
            "error",
            Some("the path was not resolved during the run: denied without asking the policy".into()),
        );
    }
    policy.decide(&rec.event)
}

/// Replay every call of a trace through `policy`, printing one line per event to `out`
/// (`!` in the first column marks a different decision) and a summary line; problems
/// with the trace go to `diag` as `hermes: NAME:LINE: …`.
pub fn replay(
    input: impl BufRead,
    name: &str,
    policy: &Policy,
    opts: ReplayOptions,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> io::Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    for (line, item) in TraceReader::new(input) {
        let rec = match item {
            Ok(Line::Call(rec)) => rec,
            Ok(Line::Other(_)) => {
                stats.skipped += 1;
                continue;
            }
            Err(e) => {
                stats.unreadable += 1;
                writeln!(diag, "hermes: {name}:{line}: {e}")?;
                continue;
            }
        };
        stats.events += 1;
        let outcome = replay_one(policy, &rec);
        let now = Decision::from_outcome(&rec.event, &outcome);
        let differs = now != rec.decision;
        stats.differ += usize::from(differs);
        if let Some(error) = &outcome.error {
            stats.policy_errors += 1;
            writeln!(diag, "hermes: {name}:{line}: policy error, call denied (EPERM): {error}")?;
        }
        if opts.diff_only && !differs {
            continue;
        }
        let head = format!("{line:>5}: [pid {}] {}", rec.event.pid, rec.event.summary());
        let error = outcome.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default();
        if differs {
            writeln!(
                out,
                "! {head}: recorded {} ({}), replayed {} ({}){error}",
                rec.decision, rec.handler, now, outcome.handler
            )?;
        } else {
            writeln!(out, "  {head} = {now} ({}){error}", outcome.handler)?;
        }
    }
    let ReplayStats { events, differ, skipped, unreadable, policy_errors } = stats;
    writeln!(
        out,
        "replay: {events} events, {differ} differ, {skipped} skipped, {unreadable} unreadable lines, \
         {policy_errors} policy errors ({} {})",
        policy.name(),
        policy.hash()
    )?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn policy(src: &str) -> Policy {
        Policy::from_source("p.lua", src.as_bytes(), Path::new("/policies"), Duration::from_millis(50))
            .expect("test policy loads")
    }

    fn call(line: &str) -> CallRecord {
        match parse_line(line.as_bytes()) {
            Ok(Line::Call(rec)) => *rec,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse_line(line.as_bytes()) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("{line}: parsed as {other:?}"),
        }
    }

    const OPEN: &str = r#"{"time":1.5,"pid":7,"tid":8,"ppid":1,"exe":"/bin/cat","layer":"preload","call":"openat","op":"open","args":{"path":"/etc/shadow","raw_path":"../shadow","dirfd":-100,"flags":0,"mode":0},"decision":"deny","errno":"EACCES","handler":"on_open","policy":"fnv1a64:0","latency_us":12.5,"result":-1,"result_errno":"EACCES","duration_us":0.0,"future":{"x":1}}"#;

    #[test]
    fn an_open_record_becomes_the_event_the_policy_saw() {
        let rec = call(OPEN);
        assert_eq!(rec.decision, Decision::Deny(libc::EACCES));
        assert_eq!((rec.handler.as_str(), rec.time, rec.latency_us), ("on_open", Some(1.5), Some(12.5)));
        let ev = &rec.event;
        assert_eq!((ev.pid, ev.tid, ev.proc.ppid, ev.op, ev.layer), (7, 8, 1, Op::Open, Layer::Preload));
        assert_eq!(ev.summary(), r#"openat("/etc/shadow", 0o0)"#);
        let EventArgs::Open { raw_path, dirfd, .. } = &ev.args else { panic!("{:?}", ev.args) };
        assert_eq!((raw_path.as_slice(), *dirfd), (b"../shadow".as_slice(), libc::AT_FDCWD));
        // The event written back is the record's `args`.
        assert_eq!(ev.args_json(), rec.json["args"]);
    }

    #[test]
    fn addresses_bytes_and_exec_round_trip() {
        let rec = call(
            r#"{"pid":1,"tid":1,"call":"connect","op":"connect","args":{"fd":3,"family":"inet6","addr":"::1","port":80},"decision":"redirect","redirect":"127.0.0.1:81"}"#,
        );
        assert_eq!(rec.event.summary(), "connect(3, [::1]:80)");
        assert_eq!(rec.decision, Decision::RedirectAddr("127.0.0.1:81".into()));
        let rec = call(
            r#"{"pid":1,"tid":1,"call":"sendto","op":"sendto","args":{"fd":3,"len":4,"flags":0,"family":"unix","addr":"@bus"},"decision":"allow"}"#,
        );
        let EventArgs::Send { addr: Some(NetAddr::Unix(path)), .. } = &rec.event.args else { panic!() };
        assert_eq!(path, b"\0bus");
        assert_eq!(rec.event.args_json()["addr"], "@bus");
        let rec = call(
            r#"{"pid":1,"tid":1,"call":"execve","op":"exec","args":{"path":{"hex":"2fff"},"argv":["a",{"hex":"ff"}],"envp":[]},"decision":"redirect","redirect":{"hex":"2ffe"}}"#,
        );
        let EventArgs::Exec { path, argv, .. } = &rec.event.args else { panic!() };
        assert_eq!((path.as_slice(), argv.clone()), (b"/\xff".as_slice(), vec![b"a".to_vec(), vec![0xff]]));
        assert_eq!(rec.decision, Decision::RedirectPath(b"/\xfe".to_vec()));
        let rec = call(
            r#"{"pid":1,"tid":1,"call":"deflate","op":"api","args":{"lib":"libz.so.1","symbol":"deflate","raw":[1,18446744073709551615,0,0,0,0],"args":[5,"0x10","hi"]},"decision":"emulate","emulate":-2}"#,
        );
        assert_eq!(rec.event.summary(), r#"deflate(5, 0x10, "hi")"#);
        assert_eq!(rec.decision, Decision::Emulate(-2));
    }

    #[test]
    fn bad_records_are_refused_with_the_field_named() {
        assert!(error("{\"pid\":").starts_with("not JSON"));
        assert_eq!(error("[1,2]"), "not a JSON object");
        let missing = r#"{"pid":1,"tid":1,"op":"open","args":{"path":"/x"},"decision":"allow"}"#;
        assert_eq!(error(missing), "missing field `call`");
        let no_path = r#"{"pid":1,"tid":1,"call":"open","op":"open","args":{},"decision":"allow"}"#;
        assert_eq!(error(no_path), "missing field `args.path`");
        let no_errno = r#"{"pid":1,"tid":1,"call":"open","op":"open","args":{"path":"/x"},"decision":"deny"}"#;
        assert_eq!(error(no_errno), "missing field `errno`");
        let big_pid =
            r#"{"pid":99999999999,"tid":1,"call":"open","op":"open","args":{"path":"/x"},"decision":"allow"}"#;
        assert!(error(big_pid).starts_with("field `pid`: expected an integer of type i32"), "{}", error(big_pid));
        let bad_ip = r#"{"pid":1,"tid":1,"call":"connect","op":"connect","args":{"family":"inet","addr":"::1"},"decision":"allow"}"#;
        assert_eq!(error(bad_ip), "field `args.addr`: '::1' is not an inet address");
        let bad_hex = r#"{"pid":1,"tid":1,"call":"open","op":"open","args":{"path":{"hex":"zz"}},"decision":"allow"}"#;
        assert!(error(bad_hex).starts_with("field `args.path`"));
        let bad_errno =
            r#"{"pid":1,"tid":1,"call":"open","op":"open","args":{"path":"/x"},"decision":"deny","errno":"EWHAT"}"#;
        assert_eq!(error(bad_errno), "field `errno`: unknown errno name 'EWHAT'");
        assert!(matches!(parse_line(br#"{"type":"shadow","anything":1}"#), Ok(Line::Other(t)) if t == "shadow"));
    }

    #[test]
    fn the_reader_numbers_lines_and_keeps_going() {
        let text = format!("{OPEN}\n\nnot json\n{{\"type\":\"shadow\"}}\n{OPEN}\n{{\"pid\":1,");
        let lines: Vec<(usize, Result<Line, RecordError>)> = TraceReader::new(text.as_bytes()).collect();
        let summary: Vec<String> = lines
            .iter()
            .map(|(n, r)| match r {
                Ok(Line::Call(_)) => format!("{n}:call"),
                Ok(Line::Other(t)) => format!("{n}:{t}"),
                Err(RecordError::Json(_)) => format!("{n}:json"),
                Err(RecordError::Truncated(_)) => format!("{n}:truncated"),
                Err(e) => format!("{n}:{e}"),
            })
            .collect();
        assert_eq!(summary, ["1:call", "3:json", "4:shadow", "5:call", "6:truncated"]);
    }

    #[test]
    fn replay_compares_kind_and_parameter() {
        let trace = [
            OPEN.to_owned(),
            OPEN.replace(r#""errno":"EACCES""#, r#""errno":13"#),
            OPEN.replace(r#""deny","errno":"EACCES""#, r#""allow""#),
            r#"{"pid":2,"tid":2,"call":"connect","op":"connect","args":{"fd":3,"family":"inet","addr":"10.0.0.1","port":80},"decision":"redirect","redirect":"127.0.0.1:80"}"#.to_owned(),
            r#"{"type":"shadow"}"#.to_owned(),
            "garbage\n".to_owned(),
        ]
        .join("\n");
        let p = policy(
            r#"
            function on_open(ev) if ev.path == "/etc/shadow" then return hermes.deny("EACCES") end end
            function on_connect(ev) return hermes.redirect{addr = "127.0.0.1"} end
            "#,
        );
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        let stats = replay(trace.as_bytes(), "t.jsonl", &p, ReplayOptions::default(), &mut out, &mut diag).unwrap();
        let out = String::from_utf8_lossy(&out);
        let diag = String::from_utf8_lossy(&diag);
        assert_eq!(stats, ReplayStats { events: 4, differ: 1, skipped: 1, unreadable: 1, policy_errors: 0 }, "{out}");
        assert_eq!(stats.exit_code(), 1);
        assert!(out.contains("!     3: [pid 7] openat(\"/etc/shadow\", 0o0): recorded allow (on_open), replayed deny EACCES (on_open)"), "{out}");
        assert!(out.contains("      4: [pid 2] connect(3, 10.0.0.1:80) = redirect 127.0.0.1:80 (on_connect)"), "{out}");
        assert!(diag.starts_with("hermes: t.jsonl:6: not JSON"), "{diag}");
    }
}
