//! The reentrancy guard's thread-local word, reached in two instructions: the thread id
//! that is inside a mediated call (0: none). While it is set, the same thread's nested
//! calls go straight to the original: libc's own calls made by the real function
//! (fopen's open, execvp's execve), and calls from a signal handler. It holds a tid, not
//! a flag, because a vfork or posix_spawn child shares this memory (and runs on its
//! parent's thread pointer) and may exec while holding it: the parent, resuming with
//! another tid, is not fooled.
//!
//! Every mediated call reads and writes it, a cached decision included, whose whole
//! budget is tens of nanoseconds. A `thread_local!` in a shared library uses the
//! general-dynamic model: each access calls `__tls_get_addr`. This word is declared in
//! assembly and accessed with the initial-exec model instead: the thread pointer plus
//! an offset the dynamic loader writes into the GOT once. That needs the library in
//! the static TLS block, which an LD_PRELOAD library always is (the linker marks the
//! library `STATIC_TLS`; a `dlopen` of it would need the loader's TLS surplus).

core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 2",
    // Global for the crate's other codegen units, hidden from every other object.
    ".globl hermes_busy_tid",
    ".hidden hermes_busy_tid",
    ".type hermes_busy_tid, @object",
    ".size hermes_busy_tid, 4",
    "hermes_busy_tid:",
    ".zero 4",
    ".popsection",
);

/// This thread's word.
#[inline(always)]
fn word() -> *mut i32 {
    let at: *mut i32;
    // SAFETY: reads the thread pointer's self-pointer (fs:0, set up by libc for every
    // thread) and adds the word's offset in the static TLS block, which the loader
    // put in the GOT at load. Neither changes during the thread's life, so the
    // result is the same on every call from one thread (`pure`).
    unsafe {
        core::arch::asm!(
            "mov {at}, qword ptr fs:[0]",
            "add {at}, qword ptr [rip + hermes_busy_tid@GOTTPOFF]",
            at = out(reg) at,
            options(pure, readonly, nostack),
        );
    }
    at
}

#[inline(always)]
pub fn get() -> i32 {
    // SAFETY: the calling thread's own word, aligned and live for the thread's life;
    // only this thread (or a vfork child, while this thread is suspended) touches it.
    unsafe { word().read_volatile() }
}

#[inline(always)]
pub fn set(value: i32) {
    // SAFETY: as in `get`.
    unsafe { word().write_volatile(value) }
}
