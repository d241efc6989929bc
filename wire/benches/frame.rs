//! What one message costs to put on the wire and to read back: the preload encodes a
//! [`Call`] per mediated call and decodes the [`Reply`]; the broker does the reverse.
//!
//! - `encode/*`: [`encode`] into a stack buffer, as the preload does (length prefix +
//!   postcard body);
//! - `decode/*`: [`decode`] of the body, as the broker reads a Call (`Vec<&[u8]>` lists,
//!   borrowed paths) and the preload reads a Reply.
//!
//! Messages: an open of a 30-byte path, a connect to 127.0.0.1:8080, an Allow reply and
//! a Redirect reply carrying a path.
//!
//! `cargo bench -p hermes-wire --bench frame` (add `-- --quick` for a faster run).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use hermes_wire::{decode, encode, Args, Call, ClientMsg, Context, Decision, Reply, SockAddr};

#[path = "../../bench/criterion.rs"]
mod settings;

/// The broker's view of a client message (as in broker/src/server.rs).
type Frame<'a> = ClientMsg<'a, Vec<&'a [u8]>>;

fn open_call() -> Frame<'static> {
    ClientMsg::Call(Call {
        seq: 41,
        func: "openat",
        pid: 12345,
        tid: 12346,
        image: 0,
        rings: 0,
        args: Args::Open { dirfd: -100, path: b"/usr/share/zoneinfo/Europe/Rome", flags: 0o2000000, mode: 0 },
        ctx: Context::default(),
    })
}

fn connect_call() -> Frame<'static> {
    ClientMsg::Call(Call {
        seq: 42,
        func: "connect",
        pid: 12345,
        tid: 12346,
        image: 0,
        rings: 0,
        args: Args::Connect { fd: 7, addr: SockAddr::Inet { ip: [127, 0, 0, 1], port: 8080 } },
        ctx: Context::default(),
    })
}

fn allow_reply() -> Reply<'static> {
    Reply { seq: 41, decision: Decision::Allow, cache: false }
}

fn redirect_reply() -> Reply<'static> {
    Reply { seq: 41, decision: Decision::Redirect { path: b"/tmp/sandbox/zoneinfo/Europe/Rome\0" }, cache: false }
}

/// Encodes once to get the body a decoder will see.
fn body<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = [0u8; 512];
    encode(msg, &mut buf).expect("encode")[4..].to_vec()
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let mut buf = [0u8; 512];
    for (name, msg) in [("call_open", open_call()), ("call_connect", connect_call())] {
        group.throughput(Throughput::Bytes(body(&msg).len() as u64 + 4));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| encode(black_box(&msg), &mut buf).map(<[u8]>::len))
        });
    }
    for (name, msg) in [("reply_allow", allow_reply()), ("reply_redirect", redirect_reply())] {
        group.throughput(Throughput::Bytes(body(&msg).len() as u64 + 4));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| encode(black_box(&msg), &mut buf).map(<[u8]>::len))
        });
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, msg) in [("call_open", open_call()), ("call_connect", connect_call())] {
        let bytes = body(&msg);
        assert!(matches!(decode::<Frame>(&bytes), Ok(ClientMsg::Call(_))), "{name} round-trips");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| match decode::<Frame>(black_box(&bytes)) {
                Ok(ClientMsg::Call(call)) => call.seq,
                _ => unreachable!(),
            })
        });
    }
    for (name, msg) in [("reply_allow", allow_reply()), ("reply_redirect", redirect_reply())] {
        let bytes = body(&msg);
        assert_eq!(decode::<Reply>(&bytes), Ok(msg.clone()), "{name} round-trips");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| decode::<Reply>(black_box(&bytes)).map(|r| r.seq))
        });
    }
    group.finish();
}

fn main() {
    let mut c = settings::criterion(30);
    bench_encode(&mut c);
    bench_decode(&mut c);
    c.final_summary();
}
