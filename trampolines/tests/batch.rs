//! A batch told where its hooks go ([`hermes_trampolines::batch_at`]) unlocks only the
//! stretch of libc they span: the hooks still work, and every page is read-execute again
//! when the batch ends.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::ffi::c_int;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use hermes_trampolines::{batch_at, Hook};

static ABS_CALLS: AtomicUsize = AtomicUsize::new(0);
static LABS_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn abs_detour(x: c_int) -> c_int {
    ABS_CALLS.fetch_add(1, Ordering::SeqCst);
    x.wrapping_abs()
}

extern "C" fn labs_detour(x: libc::c_long) -> libc::c_long {
    LABS_CALLS.fetch_add(1, Ordering::SeqCst);
    x.wrapping_abs()
}

/// The permissions `/proc/self/maps` gives the mapping holding `addr`.
fn perms_at(addr: u64) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    maps.lines()
        .find_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (start, end) = range.split_once('-')?;
            let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            (start <= addr && addr < end).then(|| rest[..4].to_owned())
        })
        .expect("a mapping holds the function")
}

#[test]
fn hooks_announced_to_the_batch_work_and_the_code_is_locked_again() {
    // SAFETY: lookups of libc functions.
    let (abs, labs) = unsafe {
        (libc::dlsym(libc::RTLD_DEFAULT, c"abs".as_ptr()), libc::dlsym(libc::RTLD_DEFAULT, c"labs".as_ptr()))
    };
    assert!(!abs.is_null() && !labs.is_null());
    let targets = [abs as u64, labs as u64];
    let hooks = batch_at(&targets, || {
        // SAFETY: both detours have their function's signature and do not call it.
        unsafe {
            [Hook::install(abs.cast(), abs_detour as *const u8), Hook::install(labs.cast(), labs_detour as *const u8)]
        }
    });
    let hooks: Vec<Hook> = hooks.into_iter().map(|h| h.expect("hooked")).collect();
    for &at in &targets {
        assert_eq!(perms_at(at), "r-xp", "code at {at:#x} is locked again after the batch");
    }
    for hook in &hooks {
        // The trampolines' chunk, writable while the batch added to it, is read-execute again.
        let at = hook.original() as u64;
        assert_eq!(perms_at(at), "r-xp", "trampoline at {at:#x} is locked again after the batch");
    }
    // Called through pointers: the compiler knows abs and labs, and would otherwise compute
    // them inline in an optimized build, never calling libc.
    type Abs = extern "C" fn(c_int) -> c_int;
    type Labs = extern "C" fn(libc::c_long) -> libc::c_long;
    // SAFETY: abs and labs, looked up above, with their own signatures.
    let (abs_fn, labs_fn) = unsafe {
        (
            std::mem::transmute::<*mut libc::c_void, Abs>(black_box(abs)),
            std::mem::transmute::<*mut libc::c_void, Labs>(black_box(labs)),
        )
    };
    let (a, l) = (abs_fn(black_box(-7)), labs_fn(black_box(-9)));
    assert_eq!((a, l), (7, 9));
    assert!(ABS_CALLS.load(Ordering::SeqCst) >= 1 && LABS_CALLS.load(Ordering::SeqCst) >= 1, "both detours ran");
    for hook in hooks {
        // SAFETY: nothing runs the hooked functions meanwhile (this test is alone in its binary).
        unsafe { hook.remove() }.expect("unhooked");
    }
    assert_eq!(abs_fn(black_box(-3)), 3);
    assert_eq!(ABS_CALLS.load(Ordering::SeqCst), 1);
}
