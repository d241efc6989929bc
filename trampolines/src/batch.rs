//! Many hooks at once. A library's constructor that installs thirty hooks would otherwise
//! read `/proc/self/maps` thirty times, flip the protection of a code page and of a trampoline
//! page twice per hook (each `mprotect` splitting and merging the mapping), and block and
//! unblock signals per patch. Inside [`batch`] the maps are read once, each mapping written to
//! is made writable once and restored when the batch ends, and signals stay blocked from the
//! first patch to the end; in a process that never had a second thread, no core barrier is
//! needed between the steps of a patch either. A hook on code of a loaded ELF object finds its
//! mapping from the dynamic loader's program headers, and a trampoline chunk is first tried
//! where the kernel puts a mapping by itself: a batch whose hooks all fit reads
//! `/proc/self/maps` not at all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::maps::{self, Mapping};
use crate::sys::{self, PROT_EXEC, PROT_READ, PROT_WRITE};

struct Batch {
    /// Read on first need.
    mappings: Option<Arc<Vec<Mapping>>>,
    /// Ranges made writable, with the protection each gets back at the end.
    unlocked: Vec<(u64, u64, u32)>,
    /// The signal mask from before the first patch blocked them all.
    signals: Option<u64>,
}

static BATCH: Mutex<Option<Batch>> = Mutex::new(None);

fn open() -> MutexGuard<'static, Option<Batch>> {
    BATCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `f`, which makes several hooks, as one batch (see the module docs). Only for when
/// nothing else maps, unmaps or runs the hooked code meanwhile: a library's constructor,
/// single-threaded. Memory the engine maps itself is accounted for. When the batch ends the
/// protections are restored and the signal mask put back.
pub fn batch<R>(f: impl FnOnce() -> R) -> R {
    *open() = Some(Batch { mappings: None, unlocked: Vec::new(), signals: None });
    sys::ALONE.store(sys::single_threaded(), Ordering::Relaxed);
    let result = f();
    sys::ALONE.store(false, Ordering::Relaxed);
    if let Some(batch) = open().take() {
        for (start, end, prot) in batch.unlocked {
            // SAFETY: the protection the range had when the batch made it writable.
            let _ = unsafe { sys::mprotect(start, end - start, prot) };
        }
        if let Some(mask) = batch.signals {
            sys::restore_signals(mask);
        }
    }
    result
}

/// The open batch's snapshot of the mappings, read now if it was not yet; `None` outside a
/// batch (or when the maps cannot be read: each caller then reads them itself).
pub(crate) fn mappings() -> Option<Arc<Vec<Mapping>>> {
    let mut guard = open();
    let batch = guard.as_mut()?;
    if batch.mappings.is_none() {
        batch.mappings = maps::read_self_maps().ok().map(Arc::new);
    }
    batch.mappings.clone()
}

/// Inside a batch: the mapping of the loaded object's segment holding `addr`, from the
/// dynamic loader, when there is one.
pub(crate) fn segment(addr: u64) -> Option<Mapping> {
    open().as_ref()?;
    let (start, end, prot) = sys::elf_segment(addr)?;
    Some(Mapping { start, end, prot, name: String::new() })
}

/// The engine mapped `start..end` (read-write): the snapshot includes it from now on.
pub(crate) fn mapped(start: u64, end: u64) {
    if let Some(Batch { mappings: Some(snapshot), .. }) = open().as_mut() {
        let mut mappings = snapshot.as_ref().clone();
        let at = mappings.partition_point(|m| m.start < start);
        mappings.insert(at, Mapping { start, end, prot: PROT_READ | PROT_WRITE, name: String::new() });
        *snapshot = Arc::new(mappings);
    }
}

/// Write permission on some code, as one writer holds it.
#[must_use = "the protection is put back by `relock`"]
pub(crate) enum Unlocked {
    /// The batch holds it, and puts the protection back when it ends.
    ByBatch,
    /// Held for this write only: `relock` puts `restore` back on `start..end`.
    Here { start: u64, end: u64, restore: u32 },
}

impl Unlocked {
    /// End this writer's hold (nothing to do when the batch holds it).
    ///
    /// # Safety
    /// Nothing writes the range any more; `restore` is what it had before.
    pub(crate) unsafe fn relock(self) -> Result<(), i32> {
        match self {
            Unlocked::ByBatch => Ok(()),
            // SAFETY: the caller's contract.
            Unlocked::Here { start, end, restore } => unsafe { sys::mprotect(start, end - start, restore) },
        }
    }
}

/// Make code writable, keeping it readable and executable: inside a batch, all of `batched`
/// (a whole mapping: one `mprotect` for every write into it) until the batch ends; outside,
/// just `alone` until the caller's [`Unlocked::relock`].
///
/// # Safety
/// Both ranges must be code of this process (`alone` inside `batched`) whose protection is
/// `restore` now.
pub(crate) unsafe fn unlock(alone: (u64, u64), batched: (u64, u64), restore: u32) -> Result<Unlocked, i32> {
    let writable = PROT_READ | PROT_WRITE | PROT_EXEC;
    let mut guard = open();
    let Some(batch) = guard.as_mut() else {
        let (start, end) = alone;
        // SAFETY: adds write permission, keeping read and execute, to code the caller vouches for.
        unsafe { sys::mprotect(start, end - start, writable) }?;
        return Ok(Unlocked::Here { start, end, restore });
    };
    let (start, end) = batched;
    if !batch.unlocked.iter().any(|&(s, e, _)| s <= start && end <= e) {
        // SAFETY: as above.
        unsafe { sys::mprotect(start, end - start, writable) }?;
        batch.unlocked.push((start, end, restore));
    }
    Ok(Unlocked::ByBatch)
}

/// Inside a batch: block every signal until it ends (true); outside, do nothing (false).
pub(crate) fn block_signals() -> bool {
    let mut guard = open();
    let Some(batch) = guard.as_mut() else { return false };
    if batch.signals.is_none() {
        batch.signals = Some(sys::block_signals());
    }
    true
}
