//! Many hooks at once. A library's constructor that installs thirty hooks would otherwise
//! read `/proc/self/maps` thirty times, flip the protection of a code page and of a trampoline
//! page twice per hook (each `mprotect` splitting and merging the mapping), and block and
//! unblock signals per patch. Inside [`batch`] the maps are read once, each mapping written to
//! is made writable once and restored when the batch ends, and signals stay blocked from the
//! first patch to the end; in a process that never had a second thread, no core barrier is
//! needed between the steps of a patch either. Told where the hooks will be ([`batch_at`]), a
//! batch unlocks only the stretch of each mapping they span: changing the protection of a
//! whole library's code walks every page of it the process has touched, twice. A hook on
//! code of a loaded ELF object finds its mapping from the dynamic loader's program headers,
//! and a trampoline chunk is first tried where the kernel puts a mapping by itself: a batch
//! whose hooks all fit reads `/proc/self/maps` not at all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::maps::{self, Mapping};
use crate::sys::{self, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE};

struct Batch {
    /// Read on first need.
    mappings: Option<Arc<Vec<Mapping>>>,
    /// Ranges made writable, with the protection each gets back at the end.
    unlocked: Vec<(u64, u64, u32)>,
    /// The signal mask from before the first patch blocked them all.
    signals: Option<u64>,
    /// Where the hooks will be patched, if the caller said: see [`Batch::span`].
    near: Vec<u64>,
}

impl Batch {
    /// A batch that has done nothing yet, its hooks announced at `near`.
    fn new(near: &[u64]) -> Self {
        Batch { mappings: None, unlocked: Vec::new(), signals: None, near: near.to_vec() }
    }

    /// The stretch of `mapping` to unlock for a write into `page`: the pages the
    /// announced hooks in that mapping span (a patch may end in the next page), or
    /// the whole mapping when `page` is not among them.
    fn span(&self, page: (u64, u64), mapping: (u64, u64)) -> (u64, u64) {
        let inside = self.near.iter().map(|&at| at & !(PAGE_SIZE - 1)).filter(|&p| mapping.0 <= p && p < mapping.1);
        let (lo, hi) = inside.fold((u64::MAX, 0), |(lo, hi), p| (lo.min(p), hi.max(p + 2 * PAGE_SIZE)));
        let hi = hi.min(mapping.1);
        if lo <= page.0 && page.1 <= hi {
            (lo, hi)
        } else {
            mapping
        }
    }
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
    batch_at(&[], f)
}

/// [`batch`], told the addresses of the functions `f` will hook: code is then unlocked
/// only around them (addresses `f` does not hook cost nothing but a wider stretch).
pub fn batch_at<R>(near: &[u64], f: impl FnOnce() -> R) -> R {
    *open() = Some(Batch::new(near));
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
/// (a whole mapping, or the stretch of it the batch's hooks span: one `mprotect` for every
/// write into it) until the batch ends; outside, just `alone` until the caller's
/// [`Unlocked::relock`].
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
    if batch.unlocked.iter().any(|&(s, e, _)| s <= alone.0 && alone.1 <= e) {
        return Ok(Unlocked::ByBatch);
    }
    let (start, end) = batch.span(alone, batched);
    // SAFETY: as above (`span` stays inside `batched`).
    unsafe { sys::mprotect(start, end - start, writable) }?;
    batch.unlocked.push((start, end, restore));
    Ok(Unlocked::ByBatch)
}

/// Make the new trampoline chunk `start..end`, just filled, executable. Inside a batch it
/// stays writable too, until the batch ends: the batch's next trampolines go into it with no
/// `mprotect` each (two for the whole batch, not three). Outside a batch, or where writable
/// code is refused (W^X), it is read-execute at once.
///
/// # Safety
/// `start..end` is a chunk of the pool's, read-write, holding only code nothing runs yet.
pub(crate) unsafe fn seal_new(start: u64, end: u64) -> Result<(), i32> {
    let mut guard = open();
    if let Some(batch) = guard.as_mut() {
        // SAFETY: the caller's contract; execute permission is added, write kept.
        if unsafe { sys::mprotect(start, end - start, PROT_READ | PROT_WRITE | PROT_EXEC) }.is_ok() {
            batch.unlocked.push((start, end, PROT_READ | PROT_EXEC));
            return Ok(());
        }
    }
    // SAFETY: the caller's contract.
    unsafe { sys::mprotect(start, end - start, PROT_READ | PROT_EXEC) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlocks_the_stretch_the_announced_hooks_span() {
        let mapping = (0x10_0000, 0x20_0000);
        let page = |at: u64| (at & !0xfff, (at & !0xfff) + 0x1000);
        let batch = Batch::new(&[0x12_3456, 0x15_0ffe, 0x30_0000]);
        // From the first hook's page to the page after the last one's (a patch may cross
        // into it); a hook in another mapping does not widen it.
        assert_eq!(batch.span(page(0x12_3456), mapping), (0x12_3000, 0x15_2000));
        assert_eq!(batch.span(page(0x15_1000), mapping), (0x12_3000, 0x15_2000));
        // A write the batch was not told of: the whole mapping, as without hints.
        assert_eq!(batch.span(page(0x18_0000), mapping), mapping);
        assert_eq!(Batch::new(&[]).span(page(0x12_3456), mapping), mapping);
        // Never past the mapping's end.
        let near_end = Batch::new(&[0x1f_f800]);
        assert_eq!(near_end.span(page(0x1f_f800), mapping), (0x1f_f000, 0x20_0000));
    }
}
