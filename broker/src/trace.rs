//! Where decisions go: the JSON Lines event trace (`--trace`) and the strace-like
//! one-line-per-call output on stderr (`-v`).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use crate::errno;
use crate::event::{Event, NetAddr};
use crate::json::{self, Object};
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

    /// Append the record's JSON object (keys in byte order, as `serde_json` sorts a map).
    fn write_json(&self, out: &mut Vec<u8>) {
        let (ev, outcome, ctx) = (&self.event, &self.outcome, &self.event.ctx);
        let result = self.result.or_else(|| self.implied_result());
        let mut o = Object::new(out);
        let mut args = o.object("args");
        ev.write_args(&mut args);
        args.end();
        if !ctx.backtrace.is_empty() {
            o.value("backtrace", &ctx.backtrace);
        }
        if outcome.cache {
            o.value("cache", &true);
        }
        o.str("call", &ev.func);
        if let Some(data) = &ctx.payload {
            o.bytes("data", data);
        }
        o.str("decision", outcome.verdict.kind());
        if let Some(r) = result {
            o.value("duration_us", &(r.duration.as_secs_f64() * 1e6));
        }
        emulate_and_errno(&mut o, &outcome.verdict);
        if let Some(e) = &outcome.error {
            o.str("error", e);
        }
        o.bytes("exe", &ev.proc.exe);
        o.str("handler", outcome.handler);
        if outcome.injected {
            o.value("injected", &true);
        }
        o.value("latency_us", &(self.latency.as_secs_f64() * 1e6));
        o.str("layer", ev.layer.name());
        if !outcome.logs.is_empty() {
            o.value("logs", &outcome.logs);
        }
        o.value("mono_ns", &ev.mono_ns);
        if self.observed {
            o.value("observed", &true);
        }
        o.str("op", ev.op.name());
        o.value("pid", &ev.pid);
        o.str("policy", &self.policy_hash);
        o.value("ppid", &ev.proc.ppid);
        redirect(&mut o, &outcome.verdict, self.redirected_to.as_ref());
        if let Some(regs) = &ctx.regs {
            // By name, as a JSON map is ordered.
            let mut named: [(&str, u64); hermes_wire::REGS_LEN] =
                std::array::from_fn(|i| (hermes_wire::REGS[i], regs[i]));
            named.sort_unstable_by_key(|(name, _)| *name);
            let mut r = o.object("regs");
            for (name, value) in named {
                r.with(name, |out| json::hex_string(out, value));
            }
            r.end();
        }
        if let Some(r) = result {
            o.value("result", &r.ret);
            if r.errno != 0 {
                o.with("result_errno", |out| errno(out, r.errno));
            }
        }
        rewrite(&mut o, &outcome.verdict);
        o.value("tid", &ev.tid);
        o.value("time", &unix_seconds(self.time));
        o.end();
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

/// The decision's `emulate` and `errno`, if it has them (one of the two at most).
fn emulate_and_errno(o: &mut Object<'_>, verdict: &Verdict) {
    match *verdict {
        Verdict::Emulate(ret) => o.value("emulate", &ret),
        Verdict::Deny(e) => o.with("errno", |out| errno(out, e)),
        _ => {}
    }
}

/// Where the decision redirected the call: a path, or for a connect or a send the
/// address it went to (`redirected_to`, when known).
fn redirect(o: &mut Object<'_>, verdict: &Verdict, redirected_to: Option<&NetAddr>) {
    match verdict {
        Verdict::Redirect(path) => o.bytes("redirect", path),
        Verdict::RedirectAddr { .. } => {
            if let Some(to) = redirected_to {
                o.str("redirect", &to.display());
            }
        }
        _ => {}
    }
}

/// The arguments a `rewrite` decision replaced.
fn rewrite(o: &mut Object<'_>, verdict: &Verdict) {
    if let Verdict::Rewrite { flags, mode, data } = verdict {
        let mut r = o.object("rewrite");
        if let Some(d) = data {
            r.bytes("data", d);
        }
        if let Some(f) = flags {
            r.value("flags", f);
        }
        if let Some(m) = mode {
            r.value("mode", m);
        }
        r.end();
    }
}

/// An errno by name (`"EACCES"`), or its number when it has none.
fn errno(out: &mut Vec<u8>, e: i32) {
    match errno::name(e) {
        Some(name) => json::string(out, name),
        None => json::value_into(out, &e),
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
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
        if self.trace.is_some() {
            let mut line = Vec::new();
            write_shadow(&mut line, event, enforced, candidate, shadow_hash, SystemTime::now());
            self.write_lines(&mut line);
        }
    }

    /// A client's event ring is unusable (refused at its Hello, or found corrupt when
    /// read): the trace says so, since events the thread wrote there are lost.
    pub fn ring_error(&self, pid: i32, tid: i32, why: &str) {
        self.note("ring_error", json!({ "pid": pid, "tid": tid, "error": why }));
    }

    /// A line that is not a call (`{"type": "reload", …}`): the trace's own events.
    pub fn note(&self, kind: &str, mut fields: Json) {
        if let Some(m) = fields.as_object_mut() {
            m.insert("type".into(), json!(kind));
            m.insert("time".into(), json!(unix_seconds(SystemTime::now())));
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
            write_record(lines, record);
            if lines.len() >= BATCH_MAX {
                self.write_lines(lines);
            }
        }
    }
}

/// Append the trace line of a call on which the shadow policy disagreed.
fn write_shadow(
    lines: &mut Vec<u8>,
    event: &Event,
    enforced: &Outcome,
    candidate: &Outcome,
    shadow_hash: &str,
    time: SystemTime,
) {
    let mut o = Object::new(lines);
    let mut args = o.object("args");
    event.write_args(&mut args);
    args.end();
    o.str("call", &event.func);
    o.str("decision", enforced.verdict.kind());
    emulate_and_errno(&mut o, &enforced.verdict);
    o.str("handler", enforced.handler);
    o.value("mono_ns", &event.mono_ns);
    o.str("op", event.op.name());
    o.value("pid", &event.pid);
    redirect(&mut o, &enforced.verdict, None);
    rewrite(&mut o, &enforced.verdict);
    let mut shadow = o.object("shadow");
    shadow.str("decision", candidate.verdict.kind());
    emulate_and_errno(&mut shadow, &candidate.verdict);
    if let Some(e) = &candidate.error {
        shadow.str("error", e);
    }
    shadow.str("handler", candidate.handler);
    shadow.str("policy", shadow_hash);
    redirect(&mut shadow, &candidate.verdict, None);
    rewrite(&mut shadow, &candidate.verdict);
    shadow.end();
    o.value("tid", &event.tid);
    o.value("time", &unix_seconds(time));
    o.str("type", "shadow");
    o.end();
    lines.push(b'\n');
}

/// Append `record`'s trace line to `lines`.
fn write_record(lines: &mut Vec<u8>, record: &Record) {
    record.write_json(lines);
    lines.push(b'\n');
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use hermes_wire::{Layer, Op};

    use super::{write_record, write_shadow, CallResult, Record};
    use crate::event::{ApiArg, Event, EventArgs, EventContext, NetAddr, ProcInfo};
    use crate::policy::{Outcome, Verdict};

    fn event(func: &str, op: Op, layer: Layer, args: EventArgs) -> Event {
        Event {
            func: func.into(),
            op,
            pid: 4242,
            tid: 4243,
            layer,
            proc: ProcInfo { ppid: 1, exe: b"/usr/bin/tar".to_vec() },
            args,
            unresolved: false,
            mono_ns: 15_068_510_902_746,
            ctx: EventContext::default(),
        }
    }

    fn record(event: Event, verdict: Verdict) -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_nanos(1_795_376_164_769_912_345),
            event,
            outcome: Outcome::fixed(verdict, "on_open", None),
            redirected_to: None,
            policy_hash: Arc::from("fnv1a64:c35f51cc2d069c2e"),
            latency: Duration::ZERO,
            result: None,
            observed: false,
        }
    }

    fn open(path: &[u8], raw_path: &[u8]) -> EventArgs {
        EventArgs::Open { dirfd: 7, path: path.to_vec(), raw_path: raw_path.to_vec(), flags: 657_664, mode: 0 }
    }

    fn line(record: &Record) -> String {
        let mut lines = Vec::new();
        write_record(&mut lines, record);
        String::from_utf8(lines).unwrap()
    }

    /// Every kind of line the trace holds, byte for byte: `hermes replay`, `hermes
    /// report` and the tests read these, so a change of key, order, number format or
    /// escaping must show here.
    #[test]
    fn trace_lines_are_byte_for_byte_as_documented() {
        // An observed open and its result, the bulk of a traced run.
        let mut observed = record(
            event("__openat_2", Op::Open, Layer::Preload, open(b"/usr/include/stdio.h", b"stdio.h")),
            Verdict::Allow,
        );
        observed.observed = true;
        observed.result = Some(CallResult { ret: 8, errno: 0, duration: Duration::from_nanos(939) });
        assert_eq!(
            line(&observed),
            r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":"/usr/include/stdio.h","raw_path":"stdio.h"},"call":"__openat_2","decision":"allow","duration_us":0.9390000000000001,"exe":"/usr/bin/tar","handler":"on_open","latency_us":0.0,"layer":"preload","mono_ns":15068510902746,"observed":true,"op":"open","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"result":8,"tid":4243,"time":1795376164.7699122}
"#
        );

        // A denial (its result implied), a path that is not UTF-8, logs that need escaping.
        let mut denied = record(
            event("open", Op::Open, Layer::Preload, open(b"/etc/\xff\"sh\\adow\"", b"../\x01")),
            Verdict::Deny(13),
        );
        denied.outcome.logs = vec!["tab\there \"quoted\"\n".into(), "é ✓ \u{7f}".into()];
        denied.latency = Duration::from_nanos(51_234);
        assert_eq!(
            line(&denied),
            concat!(
                r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":{"hex":"2f6574632fff2273685c61646f7722"},"raw_path":"../\u0001"},"call":"open","decision":"deny","duration_us":0.0,"errno":"EACCES","exe":"/usr/bin/tar","handler":"on_open","latency_us":51.233999999999995,"layer":"preload","logs":["tab\there \"quoted\"\n","é ✓ "#,
                "\u{7f}",
                r#""],"mono_ns":15068510902746,"op":"open","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"result":-1,"result_errno":"EACCES","tid":4243,"time":1795376164.7699122}
"#
            )
        );

        // A redirected open, cached; a result with an errno that has no name.
        let mut redirected = record(
            event("fopen", Op::Open, Layer::Preload, open(b"/etc/app.conf", b"app.conf")),
            Verdict::Redirect(b"/tmp/app.conf".to_vec()),
        );
        redirected.outcome.cache = true;
        redirected.result = Some(CallResult { ret: -1, errno: 4095, duration: Duration::from_micros(3) });
        assert_eq!(
            line(&redirected),
            r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":"/etc/app.conf","raw_path":"app.conf"},"cache":true,"call":"fopen","decision":"redirect","duration_us":3.0,"exe":"/usr/bin/tar","handler":"on_open","latency_us":0.0,"layer":"preload","mono_ns":15068510902746,"op":"open","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"redirect":"/tmp/app.conf","result":-1,"result_errno":4095,"tid":4243,"time":1795376164.7699122}
"#
        );

        // A connect redirected to another address by an injected fault's rule, with a backtrace.
        let to = NetAddr::Ip { ip: IpAddr::V6(Ipv6Addr::LOCALHOST), port: 8080, flowinfo: 0, scope_id: 0 };
        let from = NetAddr::Ip { ip: "10.1.2.3".parse().unwrap(), port: 443, flowinfo: 0, scope_id: 0 };
        let mut ev = event("connect", Op::Connect, Layer::Preload, EventArgs::Connect { fd: 3, addr: from });
        ev.ctx.backtrace = vec!["/usr/lib/libc.so.6+0x1234 (connect+0x14)".into(), "0x7f00".into()];
        let mut connect = record(ev, Verdict::RedirectAddr { ip: None, port: Some(8080), unix: None });
        connect.redirected_to = Some(to);
        connect.outcome.injected = true;
        connect.outcome.handler = "on_connect";
        connect.result = Some(CallResult { ret: 0, errno: 0, duration: Duration::from_nanos(18_750) });
        assert_eq!(
            line(&connect),
            r#"{"args":{"addr":"10.1.2.3","family":"inet","fd":3,"port":443},"backtrace":["/usr/lib/libc.so.6+0x1234 (connect+0x14)","0x7f00"],"call":"connect","decision":"redirect","duration_us":18.75,"exe":"/usr/bin/tar","handler":"on_connect","injected":true,"latency_us":0.0,"layer":"preload","mono_ns":15068510902746,"op":"connect","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"redirect":"[::1]:8080","result":0,"tid":4243,"time":1795376164.7699122}
"#
        );

        // A sendto to an abstract socket, its payload asked for, emulated.
        let mut ev = event(
            "sendto",
            Op::SendTo,
            Layer::Preload,
            EventArgs::Send { fd: 5, len: 12, flags: 0x4000, addr: Some(NetAddr::Unix(b"\0bus".to_vec())) },
        );
        ev.ctx.payload = Some(b"GET /\r\n\xc3\x28".to_vec());
        let send = record(ev, Verdict::Emulate(12));
        assert_eq!(
            line(&send),
            r#"{"args":{"addr":"@bus","family":"unix","fd":5,"flags":16384,"len":12},"call":"sendto","data":{"hex":"474554202f0d0ac328"},"decision":"emulate","duration_us":0.0,"emulate":12,"exe":"/usr/bin/tar","handler":"on_open","latency_us":0.0,"layer":"preload","mono_ns":15068510902746,"op":"sendto","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"result":12,"tid":4243,"time":1795376164.7699122}
"#
        );

        // A send with no address, on the ptrace layer, registers wanted, killed.
        let mut ev =
            event("sendmsg", Op::SendMsg, Layer::Ptrace, EventArgs::Send { fd: 6, len: 0, flags: 0, addr: None });
        ev.ctx.regs = Some(std::array::from_fn(|i| (i as u64) << 40 | 0xabc));
        let kill = record(ev, Verdict::Kill);
        assert_eq!(
            line(&kill),
            r#"{"args":{"fd":6,"flags":0,"len":0},"call":"sendmsg","decision":"kill","exe":"/usr/bin/tar","handler":"on_open","latency_us":0.0,"layer":"ptrace","mono_ns":15068510902746,"op":"sendmsg","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"regs":{"eflags":"0x110000000abc","orig_rax":"0x120000000abc","r10":"0xa0000000abc","r11":"0xb0000000abc","r12":"0xc0000000abc","r13":"0xd0000000abc","r14":"0xe0000000abc","r15":"0xf0000000abc","r8":"0x80000000abc","r9":"0x90000000abc","rax":"0xabc","rbp":"0x60000000abc","rbx":"0x10000000abc","rcx":"0x20000000abc","rdi":"0x50000000abc","rdx":"0x30000000abc","rip":"0x100000000abc","rsi":"0x40000000abc","rsp":"0x70000000abc"},"tid":4243,"time":1795376164.7699122}
"#
        );

        // An exec, its arguments rewritten, with a policy error.
        let ev = event(
            "execve",
            Op::Exec,
            Layer::Preload,
            EventArgs::Exec {
                path: b"/usr/bin/env".to_vec(),
                raw_path: b"env".to_vec(),
                argv: vec![b"env".to_vec(), b"\xfe".to_vec()],
                envp: vec![b"PATH=/bin".to_vec(), Vec::new()],
            },
        );
        let mut exec =
            record(ev, Verdict::Rewrite { flags: Some(0o1101), mode: Some(0o644), data: Some(b"\x00\x01ok".to_vec()) });
        exec.outcome.error = Some("policy.lua:3: attempt to index a nil value (\"ev\")".into());
        exec.outcome.handler = "error";
        assert_eq!(
            line(&exec),
            r#"{"args":{"argv":["env",{"hex":"fe"}],"envp":["PATH=/bin",""],"path":"/usr/bin/env","raw_path":"env"},"call":"execve","decision":"rewrite","error":"policy.lua:3: attempt to index a nil value (\"ev\")","exe":"/usr/bin/tar","handler":"error","latency_us":0.0,"layer":"preload","mono_ns":15068510902746,"op":"exec","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"rewrite":{"data":"\u0000\u0001ok","flags":577,"mode":420},"tid":4243,"time":1795376164.7699122}
"#
        );

        // A hooked library call with every kind of argument.
        let ev = event(
            "SSL_write",
            Op::Api,
            Layer::Preload,
            EventArgs::Api {
                lib: "libssl.so.3".into(),
                symbol: "SSL_write".into(),
                raw: [0x5555_0000, 0x7fff_1234, 5, 0, u64::MAX, 1],
                args: vec![ApiArg::Ptr(0x5555_0000), ApiArg::Bytes(b"hello".to_vec()), ApiArg::Int(-5)],
                backtrace: vec!["/usr/lib/libssl.so.3+0x40 (SSL_write+0x10)".into()],
            },
        );
        let mut api = record(ev, Verdict::Rewrite { flags: Some(2), mode: None, data: None });
        api.outcome.logs = vec!["seen".into()];
        api.result = Some(CallResult { ret: i64::MIN, errno: 0, duration: Duration::from_secs(2) });
        assert_eq!(
            line(&api),
            r#"{"args":{"args":["0x55550000","hello",-5],"backtrace":["/usr/lib/libssl.so.3+0x40 (SSL_write+0x10)"],"lib":"libssl.so.3","raw":[1431633920,2147422772,5,0,18446744073709551615,1],"symbol":"SSL_write"},"call":"SSL_write","decision":"rewrite","duration_us":2000000.0,"exe":"/usr/bin/tar","handler":"on_open","latency_us":0.0,"layer":"preload","logs":["seen"],"mono_ns":15068510902746,"op":"api","pid":4242,"policy":"fnv1a64:c35f51cc2d069c2e","ppid":1,"result":-9223372036854775808,"rewrite":{"flags":2},"tid":4243,"time":1795376164.7699122}
"#
        );
    }

    #[test]
    fn shadow_lines_are_byte_for_byte_as_documented() {
        let time = UNIX_EPOCH + Duration::from_nanos(1_795_376_164_769_912_345);
        let shadow_line = |ev: &Event, enforced: &Outcome, candidate: &Outcome| {
            let mut lines = Vec::new();
            write_shadow(&mut lines, ev, enforced, candidate, "fnv1a64:0123456789abcdef", time);
            String::from_utf8(lines).unwrap()
        };
        let ev = event("openat", Op::Open, Layer::Preload, open(b"/etc/shadow", b"shadow"));
        let allowed = Outcome::fixed(Verdict::Allow, "on_open", None);
        let denied = Outcome::fixed(Verdict::Deny(13), "on_open", None);
        let (a, b) = (shadow_line(&ev, &allowed, &denied), shadow_line(&ev, &denied, &allowed));
        assert_eq!(
            a,
            r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":"/etc/shadow","raw_path":"shadow"},"call":"openat","decision":"allow","handler":"on_open","mono_ns":15068510902746,"op":"open","pid":4242,"shadow":{"decision":"deny","errno":"EACCES","handler":"on_open","policy":"fnv1a64:0123456789abcdef"},"tid":4243,"time":1795376164.7699122,"type":"shadow"}
"#
        );
        assert_eq!(
            b,
            r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":"/etc/shadow","raw_path":"shadow"},"call":"openat","decision":"deny","errno":"EACCES","handler":"on_open","mono_ns":15068510902746,"op":"open","pid":4242,"shadow":{"decision":"allow","handler":"on_open","policy":"fnv1a64:0123456789abcdef"},"tid":4243,"time":1795376164.7699122,"type":"shadow"}
"#
        );
        let redirected = Outcome::fixed(Verdict::Redirect(b"/tmp/\\x".to_vec()), "on_open", None);
        let failed = Outcome::fixed(
            Verdict::Rewrite { flags: None, mode: Some(0o600), data: None },
            "error",
            Some("shadow.lua:1: boom".into()),
        );
        let emulated = Outcome::fixed(Verdict::Emulate(-3), "on_call", None);
        let (c, d) = (shadow_line(&ev, &redirected, &failed), shadow_line(&ev, &failed, &emulated));
        assert_eq!(
            c,
            r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":"/etc/shadow","raw_path":"shadow"},"call":"openat","decision":"redirect","handler":"on_open","mono_ns":15068510902746,"op":"open","pid":4242,"redirect":"/tmp/\\x","shadow":{"decision":"rewrite","error":"shadow.lua:1: boom","handler":"error","policy":"fnv1a64:0123456789abcdef","rewrite":{"mode":384}},"tid":4243,"time":1795376164.7699122,"type":"shadow"}
"#
        );
        assert_eq!(
            d,
            r#"{"args":{"dirfd":7,"flags":657664,"mode":0,"path":"/etc/shadow","raw_path":"shadow"},"call":"openat","decision":"rewrite","handler":"error","mono_ns":15068510902746,"op":"open","pid":4242,"rewrite":{"mode":384},"shadow":{"decision":"emulate","emulate":-3,"handler":"on_call","policy":"fnv1a64:0123456789abcdef"},"tid":4243,"time":1795376164.7699122,"type":"shadow"}
"#
        );
    }
}
