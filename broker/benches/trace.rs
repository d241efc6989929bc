//! What the broker spends on each observed call (`on_open = hermes.allow()` with
//! `--trace`), outside any system call the target waits for:
//! - `event/*`: building the event from the decoded request ([`Event::observed`]):
//!   copying the arguments and resolving the path as the target saw it, here
//!   `openat(dirfd, "stdio.h")` with the directory known from the process's earlier
//!   opens (tar's pattern: one name per open), and an absolute path of four names;
//! - `trace_line/observed_open`: writing its trace line once the result came
//!   ([`Sink::emit_into`]: the JSON line added to the lane's batch).
//!
//! `cargo bench -p hermes-broker --bench trace` (add `-- --quick` for a faster run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use hermes_broker::event::{Event, ProcInfo};
use hermes_broker::policy::{Outcome, Verdict};
use hermes_broker::resolve::Viewer;
use hermes_broker::trace::{CallResult, Record};
use hermes_broker::Sink;
use hermes_wire::{Args, Layer};

#[path = "../../bench/criterion.rs"]
mod settings;

const DIR: &[u8] = b"/usr/include";
const NAME: &[u8] = b"stdio.h";
const ABSOLUTE: &[u8] = b"/usr/include/linux/types.h";
const FLAGS: i32 = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn proc_info() -> ProcInfo {
    ProcInfo { ppid: 1, exe: b"/usr/bin/tar".to_vec() }
}

fn observed(dirfd: i32, path: &[u8]) -> Event {
    let me = std::process::id() as i32;
    let args: Args<Vec<&[u8]>> = Args::Open { dirfd, path, flags: FLAGS, mode: 0 };
    let viewer = Viewer { pid: me, tid: me };
    Event::observed("__openat_2", viewer, Layer::Preload, proc_info(), &args, |_| Some(DIR.to_vec()), None)
}

fn bench_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    group.bench_function("open_in_known_dir", |b| b.iter(|| observed(black_box(7), black_box(NAME))));
    group.bench_function("open_absolute", |b| b.iter(|| observed(black_box(libc::AT_FDCWD), black_box(ABSOLUTE))));
    group.finish();
}

fn bench_line(c: &mut Criterion) {
    let devnull = std::fs::File::options().write(true).open("/dev/null").expect("/dev/null opens");
    let sink = Sink::new(Some(devnull), 0);
    let event = observed(7, NAME);
    let record = Record {
        time: SystemTime::now(),
        event,
        outcome: Outcome::fixed(Verdict::Allow, "on_open", None),
        redirected_to: None,
        policy_hash: Arc::from("fnv1a64:c35f51cc2d069c2e"),
        latency: Duration::ZERO,
        result: Some(CallResult { ret: 8, errno: 0, duration: Duration::from_nanos(939) }),
        observed: true,
    };
    let mut lines = Vec::with_capacity(4096);
    sink.emit_into(&record, &mut lines);
    assert!(lines.starts_with(b"{\"args\":{\"dirfd\":7,") && lines.ends_with(b"}\n"), "a trace line");
    let mut group = c.benchmark_group("trace_line");
    group.bench_function("observed_open", |b| {
        b.iter(|| {
            lines.clear();
            sink.emit_into(black_box(&record), &mut lines);
        })
    });
    group.finish();
}

fn main() {
    let mut c = settings::criterion(30);
    bench_event(&mut c);
    bench_line(&mut c);
    c.final_summary();
}
