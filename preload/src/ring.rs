//! This thread's event ring ([`hermes_wire::ring`]): shared memory the thread's
//! connection shares with the broker (made here and passed with the Hello, or made by
//! the broker and passed with the Welcome), into which the thread writes its one-way
//! frames instead of sending them. Mapped when the thread connects; unmapped with the
//! connection (dropped, or the thread exits) and in a fork child, whose copy of the
//! mapping is its parent's ring. A vfork or posix_spawn child shares its parent's
//! memory and never touches it (it makes a connection of its own).

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use hermes_wire::ring::{self, CallResult, Pushed, Ring};

use crate::sys;

/// Whether a thread of this process has had a ring: then its exit tells the broker,
/// which reads them after it ([`crate::mediate`]'s `flush_at_exit`).
static HAD_RING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The address of this thread's ring mapping (0: none), and how many one-way
    /// frames went on its connection's socket instead.
    static RING: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// Map the ring whose memfd the broker attached to its Welcome, and close the
/// descriptor. The address, or 0 when it cannot be mapped or is not a ring.
pub fn map(fd: i32) -> usize {
    let at = sys::map_shared(fd, ring::SIZE);
    sys::close(fd);
    match at {
        Some(at) if with_ring(at, |ring| ring.valid()) == Some(true) => at,
        Some(at) => {
            // SAFETY: our own fresh mapping, which nothing else has seen.
            unsafe { sys::unmap(at, ring::SIZE) };
            0
        }
        None => 0,
    }
}

/// A ring of our own making for a new connection: a sealed memfd, mapped and set up,
/// whose descriptor goes to the broker with the Hello, so that the thread can write
/// into it at once instead of waiting for the broker to make one. The descriptor (to
/// pass, then close) and the mapping's address; `None` when it cannot be made.
pub fn create() -> Option<(i32, usize)> {
    let fd = sys::memfd_sealed(c"hermes-ring", ring::SIZE).ok()?;
    let Some(at) = sys::map_shared(fd, ring::SIZE) else {
        sys::close(fd);
        return None;
    };
    with_ring(at, |ring| ring.init());
    Some((fd, at))
}

/// Undo [`create`] for a ring the broker did not take.
pub fn discard(at: usize) {
    // SAFETY: `at` is a mapping from `create` that no thread installed.
    unsafe { sys::unmap(at, ring::SIZE) };
}

/// Run `f` on the ring mapped at `at` (from [`map`] or [`create`]).
fn with_ring<R>(at: usize, f: impl FnOnce(Ring<'_>) -> R) -> Option<R> {
    // SAFETY: `at` is a live, page-aligned mapping of ring::SIZE bytes made by `map`.
    // Only the thread that holds it unmaps it (`install`), never while `f` runs, and
    // its words are only accessed through atomics (the broker writes them too).
    let words = unsafe { core::slice::from_raw_parts(at as *const AtomicU64, ring::WORDS) };
    Ring::new(words).map(f)
}

/// Make the mapping at `at` (from [`map`]; 0 for none) this thread's ring, unmapping
/// the one it replaces: the broker keeps its own mapping and reads what was published
/// there when the old connection closes.
pub fn install(at: usize) {
    if at != 0 {
        HAD_RING.store(true, Relaxed);
    }
    let (old, _) = RING.with(|r| r.replace((at, 0)));
    if old != 0 {
        // SAFETY: `old` was this thread's ring, mapped by `map`; it was just taken out
        // of RING, the only place that refers to it.
        unsafe { sys::unmap(old, ring::SIZE) };
    }
}

/// In a fork child: the ring this thread holds is its parent's; unmap it, and forget
/// that the process had any.
pub fn forget_after_fork() {
    install(0);
    // Written only when set: a fork child of a process that never had one copies
    // nothing of this page.
    if HAD_RING.load(Relaxed) {
        HAD_RING.store(false, Relaxed);
    }
}

pub fn had_ring() -> bool {
    HAD_RING.load(Relaxed)
}

/// Where an observed call's record is, for its result: the ring's mapping and the
/// record's position in it.
#[derive(Clone, Copy)]
pub struct Slot {
    ring: usize,
    start: u64,
}

/// Append `frame` to this thread's ring, stamped `mono_ns` (when it was made); with
/// `awaiting` (an observed call about to run), where [`complete`] can write its result.
/// `None` when the thread has no ring or the ring cannot take it: the caller sends it
/// on the socket, and the ring takes nothing more until the broker has handled it.
pub fn push(frame: &[u8], mono_ns: u64, awaiting: bool) -> Option<(Pushed, Option<Slot>)> {
    let (at, on_socket) = RING.with(Cell::get);
    if at == 0 {
        return None;
    }
    let pushed = with_ring(at, |ring| {
        if awaiting {
            ring.push_awaiting(mono_ns, frame, on_socket).ok().map(|(p, start)| (p, Some(Slot { ring: at, start })))
        } else {
            ring.push(mono_ns, frame, on_socket).ok().map(|p| (p, None))
        }
    })
    .flatten();
    if pushed.is_none() {
        RING.with(|r| r.set((at, on_socket + 1)));
    }
    pushed
}

/// Write the result of the call at `slot` into its record. False when the broker read
/// the record first (or the thread's ring is another by now): the result must be sent.
pub fn complete(slot: Slot, result: CallResult) -> bool {
    let (at, _) = RING.with(Cell::get);
    at == slot.ring && with_ring(at, |ring| ring.complete(slot.start, result)) == Some(true)
}
