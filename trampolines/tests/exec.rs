//! Execution tests: hook real functions of this test binary, call them, unhook them.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hermes_trampolines::{plan_at, write_order, Hook, HookError, WriteOrder};

type Unary = extern "C" fn(u64) -> u64;

/// Calls through a pointer the optimizer cannot see through, so the call really goes to the
/// function's (patched) code.
fn call(f: Unary, x: u64) -> u64 {
    black_box(f)(black_box(x))
}

fn as_unary(address: *const u8) -> Unary {
    // SAFETY: every address passed here is a trampoline or function with the Unary signature.
    unsafe { std::mem::transmute::<*const u8, Unary>(address) }
}

#[inline(never)]
extern "C" fn mix(x: u64) -> u64 {
    let y = black_box(x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let z = y ^ (y >> 29);
    black_box(z).wrapping_add(black_box(x) % 7)
}

static MIX_ORIGINAL: AtomicUsize = AtomicUsize::new(0);
static MIX_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn mix_detour(x: u64) -> u64 {
    MIX_CALLS.fetch_add(1, Ordering::SeqCst);
    let original = as_unary(MIX_ORIGINAL.load(Ordering::SeqCst) as *const u8);
    original(x) ^ 0xdead_0000
}

#[test]
fn hook_call_original_and_remove() {
    let f: Unary = black_box(mix);
    let inputs = [0u64, 1, 42, 0xffff_ffff_ffff_ffff, 0x1234_5678_9abc_def0];
    let before: Vec<u64> = inputs.iter().map(|&x| call(f, x)).collect();

    // SAFETY: mix and mix_detour share the Unary signature.
    let mut hook = unsafe { Hook::new(mix as *const u8, mix_detour as *const u8) }.expect("hook mix");
    assert_eq!(hook.target(), mix as *const u8);
    MIX_ORIGINAL.store(hook.original() as usize, Ordering::SeqCst);
    // Before enabling, nothing changed.
    assert_eq!(call(f, 42), before[2]);
    assert_eq!(MIX_CALLS.load(Ordering::SeqCst), 0);

    // SAFETY: MIX_ORIGINAL is stored.
    unsafe { hook.enable() }.expect("enable");
    assert!(hook.is_enabled());
    for (x, expected) in inputs.iter().zip(&before) {
        assert_eq!(call(f, *x), expected ^ 0xdead_0000, "detour ran and called the original");
    }
    assert_eq!(MIX_CALLS.load(Ordering::SeqCst), inputs.len());
    // The trampoline runs the original directly.
    assert_eq!(call(as_unary(hook.original()), 42), before[2]);

    // SAFETY: nothing relies on the patch.
    unsafe { hook.remove() }.expect("remove");
    for (x, expected) in inputs.iter().zip(&before) {
        assert_eq!(call(f, *x), *expected, "original behaviour is back");
    }
    assert_eq!(MIX_CALLS.load(Ordering::SeqCst), inputs.len(), "detour no longer runs");
    // The trampoline stays valid after removal (a detour in flight may still call it).
    assert_eq!(call(as_unary(MIX_ORIGINAL.load(Ordering::SeqCst) as *const u8), 42), before[2]);
}

// Hand-written functions whose exact bytes the tests rely on:
// - `hermes_test_scale`: one 6-byte first instruction, so the patch steals exactly one
//   instruction and no thread can be caught between two stolen instructions;
// - `hermes_test_scale_endbr`: the same after `endbr64`, so the patch goes at +4 and is written
//   with the self-loop order;
// - `hermes_test_chain`: several short instructions.
std::arch::global_asm!(
    ".pushsection .text.hermes_test_functions,\"ax\",@progbits",
    ".p2align 6",
    ".globl hermes_test_scale",
    "hermes_test_scale:",
    "    imul rax, rdi, 0x01000193",
    "    add rax, 7",
    "    ret",
    ".p2align 6",
    ".globl hermes_test_scale_endbr",
    "hermes_test_scale_endbr:",
    "    endbr64",
    "    imul rax, rdi, 0x01000193",
    "    add rax, 7",
    "    ret",
    ".p2align 6",
    ".globl hermes_test_chain",
    "hermes_test_chain:",
    "    mov rax, rdi",
    "    add rax, 1",
    "    shl rax, 2",
    "    ret",
    ".popsection",
);

extern "C" {
    fn hermes_test_scale(x: u64) -> u64;
    fn hermes_test_scale_endbr(x: u64) -> u64;
    fn hermes_test_chain(x: u64) -> u64;
}

/// Tests that hook the hand-written functions take this, so they never hook the same function
/// at the same time.
static ASM_FUNCTIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock_asm_functions() -> std::sync::MutexGuard<'static, ()> {
    ASM_FUNCTIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn scale_expected(x: u64) -> u64 {
    x.wrapping_mul(0x0100_0193).wrapping_add(7)
}

#[test]
fn asm_functions_plan_as_expected() {
    let _serial = lock_asm_functions();
    // SAFETY: the functions are code of this binary.
    let plan = unsafe { plan_at(hermes_test_scale as *const u8) }.expect("plan");
    assert_eq!((plan.patch_offset(), plan.stolen_len(), plan.stolen_instructions()), (0, 7, 1));
    assert_eq!(write_order(plan.patch_address()), Some(WriteOrder::AlignedQword));
    // SAFETY: as above.
    let plan = unsafe { plan_at(hermes_test_scale_endbr as *const u8) }.expect("plan");
    assert_eq!((plan.patch_offset(), plan.stolen_len(), plan.stolen_instructions()), (4, 7, 1));
    assert_eq!(write_order(plan.patch_address()), Some(WriteOrder::SelfLoop));
    // SAFETY: as above.
    let plan = unsafe { plan_at(hermes_test_chain as *const u8) }.expect("plan");
    assert_eq!((plan.stolen_len(), plan.stolen_instructions()), (7, 2));
}

static CHAIN_A: AtomicUsize = AtomicUsize::new(0);
static CHAIN_B: AtomicUsize = AtomicUsize::new(0);

extern "C" fn chain_a(x: u64) -> u64 {
    as_unary(CHAIN_A.load(Ordering::SeqCst) as *const u8)(x) + 1000
}

extern "C" fn chain_b(x: u64) -> u64 {
    as_unary(CHAIN_B.load(Ordering::SeqCst) as *const u8)(x) + 20_000
}

/// A second hook on a hooked function steals the first one's jump; removing out of order is
/// refused, in order restores everything.
#[test]
fn hooks_stack_and_must_be_removed_in_reverse_order() {
    let _serial = lock_asm_functions();
    let f: Unary = as_unary(hermes_test_chain as *const u8);
    assert_eq!(call(f, 5), 24);
    // SAFETY: same signatures; originals stored before enabling.
    unsafe {
        let mut a = Hook::new(hermes_test_chain as *const u8, chain_a as *const u8).expect("a");
        CHAIN_A.store(a.original() as usize, Ordering::SeqCst);
        a.enable().expect("enable a");
        assert_eq!(call(f, 5), 1024);

        let mut b = Hook::new(hermes_test_chain as *const u8, chain_b as *const u8).expect("b");
        assert_eq!(b.stolen_instructions(), 1, "b steals a's jump");
        CHAIN_B.store(b.original() as usize, Ordering::SeqCst);
        b.enable().expect("enable b");
        assert_eq!(call(f, 5), 21_024);

        let err = a.disable().expect_err("a's jump was replaced by b's");
        assert_eq!(err, HookError::TargetChanged { addr: hermes_test_chain as *const u8 as u64 });
        assert_eq!(call(f, 5), 21_024, "a refused removal leaves everything in place");

        b.remove().expect("remove b");
        assert_eq!(call(f, 5), 1024);
        a.remove().expect("remove a");
        assert_eq!(call(f, 5), 24);
    }
}

static FAR_ORIGINAL: AtomicUsize = AtomicUsize::new(0);

extern "C" fn scale_far_detour(x: u64) -> u64 {
    as_unary(FAR_ORIGINAL.load(Ordering::SeqCst) as *const u8)(x).wrapping_neg()
}

/// Maps a stub `movabs rax, target; jmp rax` more than 2 GiB away from `near`.
fn far_stub(near: u64, target: u64) -> u64 {
    for gib in 8..64u64 {
        let hint = (near + (gib << 30)) & !0xfff;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let page = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED || page as u64 != hint {
            continue;
        }
        let mut stub = vec![0x48, 0xb8];
        stub.extend_from_slice(&target.to_le_bytes());
        stub.extend_from_slice(&[0xff, 0xe0]);
        // SAFETY: the page is ours, writable, 4096 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(stub.as_ptr(), page as *mut u8, stub.len());
            assert_eq!(libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
        }
        return hint;
    }
    panic!("no far page");
}

#[test]
fn far_detour_goes_through_a_near_thunk() {
    let _serial = lock_asm_functions();
    let target = hermes_test_scale_endbr as *const u8 as u64;
    let stub = far_stub(target, scale_far_detour as *const u8 as u64);
    let f: Unary = as_unary(hermes_test_scale_endbr as *const u8);
    // SAFETY: the stub forwards to a detour of the same signature; original stored first.
    unsafe {
        let mut hook = Hook::new(target as *const u8, stub as *const u8).expect("hook");
        let thunk = hook.thunk().expect("detour is out of rel32 reach: a thunk is needed") as u64;
        assert!(thunk.abs_diff(target) < 1 << 31);
        FAR_ORIGINAL.store(hook.original() as usize, Ordering::SeqCst);
        hook.enable().expect("enable");
        assert_eq!(call(f, 3), scale_expected(3).wrapping_neg());
        hook.remove().expect("remove");
    }
    assert_eq!(call(f, 3), scale_expected(3));
}

#[test]
fn refuses_data_and_unmapped_addresses() {
    static DATA: [u8; 64] = [0x90; 64];
    // SAFETY: plan_at only reads after checking the mapping.
    let err = unsafe { plan_at(DATA.as_ptr()) }.expect_err("data is not executable");
    assert_eq!(err, HookError::NotCode { addr: DATA.as_ptr() as u64 });
    // SAFETY: as above; nothing is mapped at 8 (below mmap_min_addr).
    let err = unsafe { Hook::new(8 as *const u8, mix_detour as *const u8) }.expect_err("unmapped");
    assert_eq!(err, HookError::NotCode { addr: 8 });
    assert!(err.to_string().contains("0x8"), "{err}");
}

static THREAD_ORIGINAL: AtomicUsize = AtomicUsize::new(0);
static THREAD_DETOUR_CALLS: AtomicU64 = AtomicU64::new(0);

extern "C" fn thread_detour(x: u64) -> u64 {
    THREAD_DETOUR_CALLS.fetch_add(1, Ordering::Relaxed);
    as_unary(THREAD_ORIGINAL.load(Ordering::Acquire) as *const u8)(x)
}

/// 4 threads call `f` in a tight loop while the main thread installs and removes a hook
/// `cycles` times; every result must be right, and the detour must have run.
fn hammer(f: Unary, target: *const u8, cycles: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (stop, wrong, calls) = (stop.clone(), wrong.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut x = t << 40;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_add(0x9e37_79b9);
                    if call(f, x) != scale_expected(x) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let detour_before = THREAD_DETOUR_CALLS.load(Ordering::SeqCst);
    for _ in 0..cycles {
        // SAFETY: same signature; THREAD_ORIGINAL is stored before the hook is enabled, and
        // every trampoline made stays valid, so a detour that loaded an older one is fine.
        unsafe {
            let mut hook = Hook::new(target, thread_detour as *const u8).expect("hook");
            THREAD_ORIGINAL.store(hook.original() as usize, Ordering::Release);
            hook.enable().expect("enable");
            hook.remove().expect("remove");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    let detour_calls = THREAD_DETOUR_CALLS.load(Ordering::SeqCst) - detour_before;
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "wrong results");
    assert!(calls.load(Ordering::SeqCst) > 0);
    assert!(detour_calls > 0, "the detour never ran while hooked");
    // Unhooked now: calls do not reach the detour.
    let before = THREAD_DETOUR_CALLS.load(Ordering::SeqCst);
    assert_eq!(call(f, 11), scale_expected(11));
    assert_eq!(THREAD_DETOUR_CALLS.load(Ordering::SeqCst), before);
}

/// Both threaded tests share THREAD_ORIGINAL, so they run one after the other.
#[test]
fn threads_call_while_hook_is_installed_and_removed_1000_times() {
    let _serial = lock_asm_functions();
    // Aligned 8-byte store.
    hammer(as_unary(hermes_test_scale as *const u8), hermes_test_scale as *const u8, 1000);
    // Self-loop write order (patch after endbr64).
    hammer(as_unary(hermes_test_scale_endbr as *const u8), hermes_test_scale_endbr as *const u8, 1000);
}
