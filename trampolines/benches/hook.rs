//! What an inline hook costs per call.
//!
//! One `#[inline(never)]` function, always called through a `black_box`ed pointer so the
//! call really runs the function's (patched) code, measured:
//! - `unhooked`: the plain call;
//! - `hooked`: patched; the detour only calls the original through the trampoline (the
//!   hook itself: the jump to the detour, the detour's call, the relocated prologue and
//!   the jump back);
//! - `hooked_gated`: patched; the detour first does what the preload does for a call the
//!   policy does not subscribe to (load an atomic flag word, test it, branch) and then
//!   calls the original.
//!
//! The same function is hooked, measured and unhooked in turn, so the three numbers differ
//! only by the hook. After criterion's report a short summary (median of a few timed
//! loops) prints ns per call and the overhead over `unhooked` (under `cargo bench` only).
//!
//! `cargo bench -p hermes-trampolines --bench hook` (add `-- --quick` for a faster run).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use criterion::Criterion;

#[path = "../../bench/criterion.rs"]
mod settings;

type Unary = extern "C" fn(u64) -> u64;

/// The measured function: a few cycles of work, with a prologue the engine relocates.
#[inline(never)]
extern "C" fn work(x: u64) -> u64 {
    let y = black_box(x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let z = y ^ (y >> 29);
    black_box(z).wrapping_add(black_box(x) % 7)
}

/// The trampoline of the current hook.
static ORIGINAL: AtomicUsize = AtomicUsize::new(0);
/// Stands for the preload's subscription mask: 0, nothing subscribed.
static MASK: AtomicU64 = AtomicU64::new(0);
/// Bumped on the (never taken) subscribed branch, so it is not optimised away.
static SUBSCRIBED: AtomicUsize = AtomicUsize::new(0);
const API_BIT: u64 = 1 << 9;

fn original() -> Unary {
    // SAFETY: ORIGINAL holds the trampoline of `work` whenever a detour can run.
    unsafe { std::mem::transmute::<usize, Unary>(ORIGINAL.load(Ordering::Relaxed)) }
}

extern "C" fn detour_plain(x: u64) -> u64 {
    original()(x)
}

extern "C" fn detour_gated(x: u64) -> u64 {
    if MASK.load(Ordering::Relaxed) & API_BIT != 0 {
        SUBSCRIBED.fetch_add(1, Ordering::Relaxed);
    }
    original()(x)
}

/// Calls `work` the way foreign code would: through a pointer the optimiser cannot see.
#[inline(always)]
fn call(f: Unary, x: u64) -> u64 {
    black_box(f)(black_box(x))
}

#[derive(Clone, Copy)]
enum Mode {
    Unhooked,
    Hooked,
    HookedGated,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Unhooked, Mode::Hooked, Mode::HookedGated];

    fn name(self) -> &'static str {
        match self {
            Mode::Unhooked => "unhooked",
            Mode::Hooked => "hooked",
            Mode::HookedGated => "hooked_gated",
        }
    }
}

/// Runs `body` with `work` in the given state, then restores it.
fn with_mode<R>(mode: Mode, body: impl FnOnce() -> R) -> R {
    let detour: Unary = match mode {
        Mode::Unhooked => return body(),
        Mode::Hooked => detour_plain,
        Mode::HookedGated => detour_gated,
    };
    // SAFETY: `work` and the detours share the Unary signature.
    let mut hook = unsafe { hermes_trampolines::Hook::new(work as *const u8, detour as *const u8) }.expect("hook work");
    ORIGINAL.store(hook.original() as usize, Ordering::Relaxed);
    // SAFETY: ORIGINAL is stored.
    unsafe { hook.enable() }.expect("enable");
    let expected = work_reference(12345);
    assert_eq!(call(work, 12345), expected, "the hooked call returns the original's result");
    let result = body();
    // SAFETY: nothing relies on the patch once the body returned.
    unsafe { hook.remove() }.expect("remove");
    result
}

/// `work`'s result computed without calling it (checks the detours pass it through).
fn work_reference(x: u64) -> u64 {
    let y = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (y ^ (y >> 29)).wrapping_add(x % 7)
}

fn bench_hook(c: &mut Criterion) {
    let mut group = c.benchmark_group("call");
    for mode in Mode::ALL {
        with_mode(mode, || {
            group.bench_function(mode.name(), |b| {
                let mut x = 0u64;
                b.iter(|| {
                    x = x.wrapping_add(1);
                    call(work, x)
                })
            });
        });
    }
    group.finish();
}

/// ns per call: the median of a few timed loops.
fn ns_per_call(calls: u64, rounds: usize) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let mut acc = 0u64;
            for i in 0..calls {
                acc = acc.wrapping_add(call(work, i));
            }
            black_box(acc);
            start.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn summary() {
    const CALLS: u64 = 2_000_000;
    const ROUNDS: usize = 7;
    let ns: Vec<(Mode, f64)> = Mode::ALL.iter().map(|&m| (m, with_mode(m, || ns_per_call(CALLS, ROUNDS)))).collect();
    let base = ns[0].1;
    println!("\nsummary (median of {ROUNDS} loops of {CALLS} calls):");
    for (mode, t) in ns {
        println!("  {:<13} {t:6.2} ns/call   overhead {:+6.2} ns", mode.name(), t - base);
    }
    assert_eq!(SUBSCRIBED.load(Ordering::Relaxed), 0);
}

fn main() {
    let mut c = settings::criterion(30);
    bench_hook(&mut c);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` runs each benchmark once, without.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
