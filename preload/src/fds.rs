//! Which descriptors are broker connections, and whose. Programs close or dup2 over
//! descriptors they do not own (daemons closing everything, shells setting up
//! redirections); the close/dup2/dup3/close_range/closefrom hooks forget the ones of
//! ours they hit, and a connection that is no longer ours is abandoned (never written
//! to) and made again. Each slot holds the owning thread's tid, so a number the
//! program freed and another thread's new connection then took is never mistaken
//! for the first thread's.
//!
//! A vfork or posix_spawn child shares this memory but not the parent's descriptor
//! table: what it closes is its own copy, so it must not touch the table.

use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering::Relaxed};

use crate::{mediate, sys};

const TRACKED: usize = 4096;
/// Owner tid per descriptor number; 0: not a broker connection.
static OWNER: [AtomicI32; TRACKED] = [const { AtomicI32::new(0) }; TRACKED];
/// The lowest and one past the highest number ever marked: a fork child looks there
/// only (our connections sit together from `mediate`'s high number up).
static SPAN: [AtomicUsize; 2] = [AtomicUsize::new(TRACKED), AtomicUsize::new(0)];

fn slot(fd: i32) -> Option<&'static AtomicI32> {
    usize::try_from(fd).ok().and_then(|fd| OWNER.get(fd))
}

pub fn mark_ours(fd: i32, tid: i32) {
    if let Some(owner) = slot(fd) {
        SPAN[0].fetch_min(fd as usize, Relaxed);
        SPAN[1].fetch_max(fd as usize + 1, Relaxed);
        owner.store(tid, Relaxed);
    }
}

/// Forget `fd` if it is still thread `tid`'s connection; true when it was.
pub fn release(fd: i32, tid: i32) -> bool {
    slot(fd).is_some_and(|owner| owner.compare_exchange(tid, 0, Relaxed, Relaxed).is_ok())
}

/// Forget `fd`; true when it was a broker connection.
pub fn unmark_ours(fd: i32) -> bool {
    slot(fd).is_some_and(|owner| owner.swap(0, Relaxed) != 0)
}

/// Whether `fd` is still the connection thread `tid` made. Descriptors beyond the
/// tracked range are trusted.
pub fn is_ours(fd: i32, tid: i32) -> bool {
    slot(fd).is_none_or(|owner| owner.load(Relaxed) == tid)
}

/// The program is about to close or replace `first..=last`.
pub fn program_takes(first: u32, last: u32) {
    // Only where ours ever were: closefrom(3) need not read 4093 slots.
    let first = first.max(SPAN[0].load(Relaxed) as u32);
    let last = last.min(TRACKED as u32 - 1).min((SPAN[1].load(Relaxed) as u32).wrapping_sub(1));
    if first > last || !(first..=last).any(|fd| OWNER[fd as usize].load(Relaxed) != 0) {
        return;
    }
    if mediate::in_shared_memory_child() {
        return; // its own descriptor table: our connections in the parent are intact
    }
    for fd in first..=last {
        unmark_ours(fd as i32);
    }
}

/// Close every broker connection (in a fork child, where they are copies). Free slots
/// are only read, so the child does not copy the table's pages.
pub fn close_all_ours() {
    let (low, high) = (SPAN[0].load(Relaxed), SPAN[1].load(Relaxed));
    for (fd, owner) in OWNER.iter().enumerate().take(high).skip(low) {
        if owner.load(Relaxed) != 0 && owner.swap(0, Relaxed) != 0 {
            sys::close(fd as i32);
        }
    }
}
