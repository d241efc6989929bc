//! Hook real libc functions of this process (the implementations dlsym resolves, IFUNCs
//! included), call them through libc's symbols, unhook, and compare with unhooked results.
//! The detours count and forward to the original through the trampoline.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::ffi::{c_char, c_int, c_void, CString};
use std::fmt::Debug;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use hermes_trampolines::{Hook, Recipe};

/// Declares `$detour`, a detour that counts its calls in `$calls` and forwards to the
/// trampoline stored in `$original`.
macro_rules! counting_detour {
    ($detour:ident, $original:ident, $calls:ident, fn($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        static $original: AtomicUsize = AtomicUsize::new(0);
        static $calls: AtomicUsize = AtomicUsize::new(0);
        extern "C" fn $detour($($arg: $ty),*) -> $ret {
            $calls.fetch_add(1, Ordering::SeqCst);
            // SAFETY: $original holds the trampoline of the libc function with this signature.
            let original: unsafe extern "C" fn($($ty),*) -> $ret =
                unsafe { std::mem::transmute::<usize, _>($original.load(Ordering::SeqCst)) };
            // SAFETY: forwards the caller's arguments unchanged.
            unsafe { original($($arg),*) }
        }
    };
}

counting_detour!(strlen_detour, STRLEN_ORIGINAL, STRLEN_CALLS, fn(s: *const c_char) -> usize);
counting_detour!(strcmp_detour, STRCMP_ORIGINAL, STRCMP_CALLS, fn(a: *const c_char, b: *const c_char) -> c_int);
counting_detour!(abs_detour, ABS_ORIGINAL, ABS_CALLS, fn(x: c_int) -> c_int);
counting_detour!(
    memcpy_detour,
    MEMCPY_ORIGINAL,
    MEMCPY_CALLS,
    fn(d: *mut c_void, s: *const c_void, n: usize) -> *mut c_void
);
counting_detour!(toupper_detour, TOUPPER_ORIGINAL, TOUPPER_CALLS, fn(c: c_int) -> c_int);
counting_detour!(atoi_detour, ATOI_ORIGINAL, ATOI_CALLS, fn(s: *const c_char) -> c_int);
counting_detour!(strchr_detour, STRCHR_ORIGINAL, STRCHR_CALLS, fn(s: *const c_char, c: c_int) -> *mut c_char);
counting_detour!(memset_detour, MEMSET_ORIGINAL, MEMSET_CALLS, fn(d: *mut c_void, c: c_int, n: usize) -> *mut c_void);

/// Hooks libc's `name`, and checks that `call` gives the same result unhooked, hooked (with
/// the detour counting at least one call) and unhooked again (with the detour silent); twice:
/// decoded, then from the first hook's recipe (as a child process hooks, without decoding).
fn check<R: PartialEq + Debug>(
    name: &str,
    detour: *const u8,
    original: &AtomicUsize,
    calls: &AtomicUsize,
    call: impl Fn() -> R,
) -> String {
    let symbol = CString::new(name).expect("name");
    // SAFETY: a lookup; for an IFUNC it returns the implementation calls are bound to.
    let target = unsafe { libc::dlsym(libc::RTLD_DEFAULT, symbol.as_ptr()) } as *const u8;
    assert!(!target.is_null(), "{name} not found");

    let unhooked = call();
    let round = |recipes: &[Recipe]| {
        // SAFETY: the detour has the function's signature and forwards to `original`, stored
        // before the hook is enabled.
        let mut hook = unsafe { Hook::with_recipes(target, detour, recipes) }.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hook.from_recipe(), !recipes.is_empty(), "{name}: recipe used or not");
        original.store(hook.original() as usize, Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { hook.enable() }.unwrap_or_else(|e| panic!("{name}: {e}"));

        let before = calls.load(Ordering::SeqCst);
        let hooked = call();
        let during = calls.load(Ordering::SeqCst) - before;
        let recipe = hook.recipe().cloned();
        let note = format!(
            "{name} at {target:p}: {} stolen instruction(s), thunk {:?}, recipe {}",
            hook.stolen_instructions(),
            hook.thunk(),
            recipe.as_ref().map_or("none".into(), |r| r.to_string())
        );
        // SAFETY: nothing relies on the patch.
        unsafe { hook.remove() }.unwrap_or_else(|e| panic!("{name}: {e}"));
        let before = calls.load(Ordering::SeqCst);
        let again = call();
        let after = calls.load(Ordering::SeqCst) - before;

        assert!(during >= 1, "{name}: the detour did not run");
        assert_eq!(hooked, unhooked, "{name}: hooked result differs");
        assert_eq!(after, 0, "{name}: the detour still runs after removal");
        assert_eq!(again, unhooked, "{name}: result differs after removal");
        (note, recipe)
    };
    let (note, recipe) = round(&[]);
    let recipe = recipe.unwrap_or_else(|| panic!("{name}: no recipe"));
    // Through text, as it travels between processes.
    round(&Recipe::parse_list(&recipe.to_string()));
    note
}

#[test]
fn hook_call_unhook_libc_functions() {
    let text = CString::new("Hello, hermes 12345").expect("text");
    let other = CString::new("Hello, hermes 12346").expect("text");
    let number = CString::new("  -9041x").expect("number");

    let mut done = Vec::new();
    done.push(check("strlen", strlen_detour as *const u8, &STRLEN_ORIGINAL, &STRLEN_CALLS, || {
        // SAFETY: a NUL-terminated string.
        unsafe { black_box(libc::strlen as unsafe extern "C" fn(*const c_char) -> usize)(text.as_ptr()) }
    }));
    done.push(check("strcmp", strcmp_detour as *const u8, &STRCMP_ORIGINAL, &STRCMP_CALLS, || {
        let f = black_box(libc::strcmp as unsafe extern "C" fn(*const c_char, *const c_char) -> c_int);
        // SAFETY: NUL-terminated strings.
        unsafe {
            (
                f(text.as_ptr(), other.as_ptr()).signum(),
                f(other.as_ptr(), text.as_ptr()).signum(),
                f(text.as_ptr(), text.as_ptr()),
            )
        }
    }));
    done.push(check("abs", abs_detour as *const u8, &ABS_ORIGINAL, &ABS_CALLS, || {
        let f = black_box(libc::abs as unsafe extern "C" fn(c_int) -> c_int);
        // SAFETY: plain integers.
        unsafe { (f(-17), f(17), f(0), f(c_int::MIN + 1)) }
    }));
    done.push(check("memcpy", memcpy_detour as *const u8, &MEMCPY_ORIGINAL, &MEMCPY_CALLS, || {
        let f = black_box(libc::memcpy as unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void);
        let source: Vec<u8> = (0..200u8).collect();
        let mut destination = [0u8; 200];
        // SAFETY: both buffers are 200 bytes and distinct.
        let returned = unsafe { f(destination.as_mut_ptr().cast(), source.as_ptr().cast(), 200) };
        (returned == destination.as_mut_ptr().cast(), destination.to_vec())
    }));
    done.push(check("toupper", toupper_detour as *const u8, &TOUPPER_ORIGINAL, &TOUPPER_CALLS, || {
        let f = black_box(libc::toupper as unsafe extern "C" fn(c_int) -> c_int);
        // SAFETY: characters in unsigned char range.
        (0..128).map(|c| unsafe { f(c) }).collect::<Vec<_>>()
    }));
    done.push(check("atoi", atoi_detour as *const u8, &ATOI_ORIGINAL, &ATOI_CALLS, || {
        // SAFETY: a NUL-terminated string.
        unsafe { black_box(libc::atoi as unsafe extern "C" fn(*const c_char) -> c_int)(number.as_ptr()) }
    }));
    done.push(check("strchr", strchr_detour as *const u8, &STRCHR_ORIGINAL, &STRCHR_CALLS, || {
        let f = black_box(libc::strchr as unsafe extern "C" fn(*const c_char, c_int) -> *mut c_char);
        // SAFETY: a NUL-terminated string.
        let found = unsafe { f(text.as_ptr(), c_int::from(b'h')) };
        found as usize - text.as_ptr() as usize
    }));
    done.push(check("memset", memset_detour as *const u8, &MEMSET_ORIGINAL, &MEMSET_CALLS, || {
        let f = black_box(libc::memset as unsafe extern "C" fn(*mut c_void, c_int, usize) -> *mut c_void);
        let mut buffer = [0u8; 77];
        // SAFETY: 77 writable bytes.
        unsafe { f(buffer.as_mut_ptr().cast(), 0x5a, 77) };
        buffer.to_vec()
    }));
    println!("hooked, called and unhooked:\n  {}", done.join("\n  "));
}
