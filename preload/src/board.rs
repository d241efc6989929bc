//! The board ([`hermes_wire::board`]) as this process sees it: the broker's page mapped
//! read-only at start-up, so a reloaded policy's subscriptions and cache generation
//! reach us without a message. Until it is mapped (or when it cannot be), the words
//! come from the environment and the broker's Welcome instead.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering::Relaxed};

use hermes_wire::board;
pub use hermes_wire::board::*;

/// The words when there is no board.
static FALLBACK: [AtomicU64; board::WORDS] = [const { AtomicU64::new(0) }; board::WORDS];
/// The mapped board, or null.
static MAPPED: AtomicPtr<[AtomicU64; board::WORDS]> = AtomicPtr::new(null_mut());

#[inline(always)]
fn words() -> &'static [AtomicU64; board::WORDS] {
    let mapped = MAPPED.load(Relaxed);
    if mapped.is_null() {
        &FALLBACK
    } else {
        // SAFETY: a non-null MAPPED points at a page mapped once and never unmapped.
        unsafe { &*mapped }
    }
}

/// One word of the board (see [`hermes_wire::board`] for the indices).
#[inline(always)]
pub fn word(i: usize) -> u64 {
    words()[i].load(Relaxed)
}

/// Whether the broker's board is mapped (else the words are the fallback's).
pub fn is_mapped() -> bool {
    !MAPPED.load(Relaxed).is_null()
}

/// Set a word of the fallback (the environment's mask, a Welcome's).
pub fn set_fallback(i: usize, value: u64) {
    FALLBACK[i].store(value, Relaxed);
    let watched = FALLBACK[board::MASK].load(Relaxed) | FALLBACK[board::OBSERVE].load(Relaxed);
    FALLBACK[board::WATCHED].store(watched, Relaxed);
}

/// Map the board named by `path` (`HERMES_BOARD`). Runs in the constructor.
pub fn map(path: &[u8]) {
    let mut cpath = [0u8; 256];
    if path.is_empty() || path.len() >= cpath.len() {
        return;
    }
    cpath[..path.len()].copy_from_slice(path);
    let cookie = crate::strict::COOKIE.load(Relaxed) as usize;
    // SAFETY: a NUL-terminated path in a live buffer; r9 carries the strict-mode cookie
    // so that the seccomp filter lets our own open through.
    let fd = unsafe {
        crate::sys::syscall6(
            libc::SYS_openat,
            libc::AT_FDCWD as usize,
            cpath.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_CLOEXEC) as usize,
            0,
            0,
            cookie,
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: a read-only shared mapping of the descriptor we just opened; it is never
    // unmapped, so references to it live as long as the process.
    let at = unsafe { libc::mmap(null_mut(), board::SIZE, libc::PROT_READ, libc::MAP_SHARED, fd as i32, 0) };
    crate::sys::close(fd as i32);
    if at == libc::MAP_FAILED {
        return;
    }
    let page = at.cast::<[AtomicU64; board::WORDS]>();
    // SAFETY: the page is mapped, aligned and at least SIZE bytes.
    if unsafe { &*page }[board::MAGIC].load(Relaxed) == board::MAGIC_VALUE {
        MAPPED.store(page, Relaxed);
    }
}
