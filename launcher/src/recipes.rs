//! Recipes for the first process of a run. Every process hands its inline hooks' recipes
//! to the programs it execs, which then hook without decoding; the first process has no
//! parent to get them from, and decoding costs it over a millisecond (the decoder's tables
//! are built on first use). The launcher links the same libc as most targets, so it makes
//! them from its own, on its core, while the broker starts on the other. Recipes carry the
//! hash of the bytes they were made from: a target with another libc ignores them.

use std::ffi::CString;

use hermes_wire::INLINE_HOOKED;

/// What the preload's `HERMES_RECIPES` would say after hooking this process's libc; `None`
/// when nothing could be planned.
pub fn from_own_libc() -> Option<String> {
    let targets: Vec<*const u8> = INLINE_HOOKED
        .iter()
        .filter_map(|name| {
            let name = CString::new(*name).ok()?;
            // SAFETY: a NUL-terminated symbol name; dlsym only looks it up.
            let at = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!at.is_null()).then_some(at as *const u8)
        })
        .collect();
    // SAFETY: functions of libc, which stays mapped for the life of the process.
    let recipes = unsafe { hermes_trampolines::recipes_at(&targets) }.ok()?;
    let text: Vec<String> = recipes.iter().map(ToString::to_string).collect();
    (!text.is_empty()).then(|| text.join(","))
}
