//! What a cached decision costs in the target: building the key from a call's
//! arguments (an open's absolute path, flags and mode; a connect's address) and
//! looking it up in the preload's table, hit and miss; and a store.
//!
//! `cargo bench -p hermes-wire --bench cache` (add `-- --quick` for a faster run).

use std::hint::black_box;

use criterion::Criterion;
use hermes_wire::cache::{Cache, Cached, KeyBuilder};
use hermes_wire::Op;

#[path = "../../bench/criterion.rs"]
mod settings;

static CACHE: Cache<1024> = Cache::new();

fn open_key(path: &[u8], flags: u64) -> hermes_wire::cache::Key {
    KeyBuilder::new(Op::Open, 0x1234).bytes(path).int(flags).int(0).finish()
}

fn bench(c: &mut Criterion) {
    let path = b"/usr/share/zoneinfo/Europe/Rome";
    for i in 0..512u64 {
        CACHE.put(&open_key(format!("/usr/lib/file{i}").as_bytes(), 0), 1, Cached::Allow);
    }
    CACHE.put(&open_key(path, 0), 1, Cached::Deny(13));

    let mut g = c.benchmark_group("cache");
    g.bench_function("key/open 31-byte path", |b| b.iter(|| open_key(black_box(path), black_box(0))));
    g.bench_function("key+get/open hit", |b| b.iter(|| CACHE.get(&open_key(black_box(path), 0), black_box(1))));
    g.bench_function("key+get/open miss", |b| {
        b.iter(|| CACHE.get(&open_key(black_box(b"/usr/share/zoneinfo/Europe/Oslo"), 0), black_box(1)))
    });
    g.bench_function("key+get/open stale generation", |b| {
        b.iter(|| CACHE.get(&open_key(black_box(path), 0), black_box(2)))
    });
    let addr = [2u8, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    g.bench_function("key+get/connect 127.0.0.1:8080", |b| {
        b.iter(|| CACHE.get(&KeyBuilder::new(Op::Connect, 7).int(3).bytes(black_box(&addr)).finish(), 1))
    });
    g.bench_function("put", |b| b.iter(|| CACHE.put(&open_key(black_box(path), 0), 1, Cached::Allow)));
    g.finish();
}

fn main() {
    let mut c = settings::criterion(100);
    bench(&mut c);
    c.final_summary();
}
