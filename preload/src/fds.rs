//! Which descriptors are broker connections. Programs close or dup2 over descriptors
//! they do not own (daemons closing everything, shells setting up redirections); the
//! close/dup2/dup3/close_range/closefrom hooks clear the bits of ours they hit, and a
//! connection whose bit is gone is abandoned (never written to) and made again.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

const TRACKED: usize = 4096;
static OURS: [AtomicU64; TRACKED / 64] = [const { AtomicU64::new(0) }; TRACKED / 64];

fn slot(fd: i32) -> Option<(&'static AtomicU64, u64)> {
    let fd = usize::try_from(fd).ok().filter(|&fd| fd < TRACKED)?;
    Some((&OURS[fd / 64], 1u64 << (fd % 64)))
}

pub fn mark_ours(fd: i32) {
    if let Some((word, bit)) = slot(fd) {
        word.fetch_or(bit, Relaxed);
    }
}

/// Forget `fd`; true when it was ours.
pub fn unmark_ours(fd: i32) -> bool {
    slot(fd).is_some_and(|(word, bit)| word.fetch_and(!bit, Relaxed) & bit != 0)
}

/// Whether `fd` is still a broker connection. Descriptors beyond the tracked range
/// are trusted.
pub fn is_ours(fd: i32) -> bool {
    slot(fd).is_none_or(|(word, bit)| word.load(Relaxed) & bit != 0)
}

/// The program is about to close or replace `first..=last`.
pub fn program_takes(first: u32, last: u32) {
    let last = last.min(TRACKED as u32 - 1);
    for fd in first..=last {
        unmark_ours(fd as i32);
    }
}

/// Close every descriptor marked ours (in a fork child, where they are copies).
pub fn close_all_ours() {
    for (i, word) in OURS.iter().enumerate() {
        let mut bits = word.swap(0, Relaxed);
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            crate::sys::close((i * 64 + b) as i32);
            bits &= bits - 1;
        }
    }
}
