//! Step 4 of the pipeline: write the 5-byte jump over the function's first bytes (or write the
//! original bytes back), while other threads may be running the function.
//!
//! # Why no thread can execute a half-written jump
//!
//! A thread that reaches the patch site fetches its bytes as one instruction. Two write
//! orders are used, both built from stores that are atomic for other cores:
//!
//! * **One aligned 8-byte store** when the 5 bytes lie in one aligned qword (the patch site is
//!   at 0–3 mod 8: every 16-aligned function without `endbr64`). The qword is read, the 5 bytes
//!   replaced, and the qword stored with one `mov`. A core sees the old or the new instruction.
//! * **Self-loop, tail, head** otherwise (typically the patch right after `endbr64`, at 4 mod
//!   16). (1) One 2-byte store puts `EB FE` (`jmp $`, a jump to itself) over the first two
//!   bytes: a thread arriving now spins there instead of running anything half-made. (2) The
//!   last 3 bytes are written; nothing executes them, arriving threads spin at (1). (3) One
//!   2-byte store writes the first two bytes of the final instruction: spinning threads fetch
//!   the complete new instruction on their next iteration. A 2-byte store is atomic when it
//!   does not cross a cache line, so a site whose first byte ends a cache line is refused
//!   ([`HookError::UnsafePatchSite`]). This is Linux's `text_poke_bp` with a self-loop in place
//!   of `int3`, so no signal handler is needed in the target.
//!
//! Between the steps every core is made to serialize (`membarrier` SYNC_CORE) so none keeps
//! running stale prefetched bytes; the patching thread blocks its signals so that a handler
//! calling the function cannot spin on its own self-loop; and nothing is called between the
//! steps but raw system calls (the function being patched may be `memcpy` or `mprotect`).
//!
//! What no write order can fix: a thread that had executed some stolen instructions, and is
//! stopped *between* two of them when the jump is written, resumes in the middle of the jump.
//! That can only happen when more than one instruction is stolen
//! ([`Plan::stolen_instructions`](crate::Plan::stolen_instructions) > 1); hooks are meant to be
//! installed while the process is single-threaded (the preload's constructor).

use crate::batch::{self, Unlocked};
use crate::error::HookError;
use crate::maps::{self, Mapping};
use crate::relocate::PATCH_LEN;
use crate::sys::{self, PAGE_SIZE, PROT_EXEC, PROT_READ};

/// `jmp $`: a 2-byte jump to itself, little-endian as a u16.
const SELF_LOOP: u16 = u16::from_le_bytes([0xEB, 0xFE]);
const CACHE_LINE: u64 = 64;

/// How the 5 bytes at `at` will be written; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOrder {
    /// One aligned 8-byte store.
    AlignedQword,
    /// `EB FE`, then the last 3 bytes, then the first 2.
    SelfLoop,
}

/// The write order for a patch at `at`, or `None` when no atomic order exists there.
pub fn write_order(at: u64) -> Option<WriteOrder> {
    if at % 8 + PATCH_LEN as u64 <= 8 {
        Some(WriteOrder::AlignedQword)
    } else if at % CACHE_LINE != CACHE_LINE - 1 {
        Some(WriteOrder::SelfLoop)
    } else {
        None
    }
}

/// Replaces the 5 bytes at `at`, which must currently be `expected`, by `new`. `addr` is the
/// hooked function, for errors. Page protection is raised to read-write-execute for the write
/// and then restored to what `pages` recorded (from `/proc/self/maps` when the hook was made).
/// `written` is set once the new bytes are in place, so a caller can tell an error before the
/// write (nothing changed) from one after it (restoring the protection failed).
///
/// # Safety
/// `at..at + 5` must be code of this process whose first instruction(s) may be replaced by
/// `new`: `new` must be a complete instruction (or the original bytes), and anything that
/// executes the old bytes must be fine executing the new ones.
pub(crate) unsafe fn replace(
    addr: u64,
    at: u64,
    pages: &Pages,
    expected: &[u8; PATCH_LEN],
    new: &[u8; PATCH_LEN],
    written: &mut bool,
) -> Result<(), HookError> {
    let order = write_order(at).ok_or(HookError::UnsafePatchSite { addr })?;

    // SAFETY: `pages` covers at..at + 5, readable per /proc/self/maps.
    let current = unsafe { sys::read_bytes(at, PATCH_LEN) };
    if current != expected {
        return Err(HookError::TargetChanged { addr });
    }

    // SAFETY: adding write permission to code pages, keeping read and execute so that threads
    // running there (possibly this one) go on.
    let unlocked = unsafe { pages.unlock() }.map_err(|errno| HookError::Protect { addr, errno })?;

    let mask = (!batch::block_signals()).then(sys::block_signals);
    match order {
        // SAFETY: at..at + 5 is now writable, and the caller vouches for `new`.
        WriteOrder::AlignedQword => unsafe { write_qword(at, new) },
        // SAFETY: as above; `write_order` checked the first 2 bytes are within a cache line.
        WriteOrder::SelfLoop => unsafe { write_self_loop(at, new) },
    }
    if let Some(mask) = mask {
        sys::restore_signals(mask);
    }
    *written = true;
    for held in unlocked.into_iter().flatten() {
        // SAFETY: restores the protection the pages had before.
        unsafe { held.relock() }.map_err(|errno| HookError::Protect { addr, errno })?;
    }
    Ok(())
}

/// # Safety
/// `at..at + 5` writable, inside the aligned qword at `at & !7`.
unsafe fn write_qword(at: u64, new: &[u8; PATCH_LEN]) {
    let base = at & !7;
    let offset = (at - base) as usize;
    // SAFETY: the qword at `base` contains at..at + 5 and lies in the same (writable, readable)
    // page, since pages are 8-aligned; `base` is 8-aligned.
    let mut qword = unsafe { sys::load_u64(base) }.to_le_bytes();
    qword[offset..offset + PATCH_LEN].copy_from_slice(new);
    // SAFETY: aligned and writable (see above): one atomic store.
    unsafe { sys::store_u64(base, u64::from_le_bytes(qword)) };
    sys::sync_cores();
}

/// # Safety
/// `at..at + 5` writable; `at` not the last byte of a cache line.
unsafe fn write_self_loop(at: u64, new: &[u8; PATCH_LEN]) {
    // SAFETY (all three stores): the caller vouches for writability; the 2-byte stores stay
    // within one cache line, so other cores see them whole.
    unsafe { sys::store_u16(at, SELF_LOOP) };
    sys::sync_cores();
    // SAFETY: see above.
    unsafe { sys::write_bytes(at + 2, &new[2..]) };
    sys::sync_cores();
    // SAFETY: see above.
    unsafe { sys::store_u16(at, u16::from_le_bytes([new[0], new[1]])) };
    sys::sync_cores();
}

/// The one or two pages holding the 5 patch bytes, with their protection before the patch
/// and the extent of the mapping each lies in.
#[derive(Debug, Clone)]
pub(crate) struct Pages {
    pages: [(u64, u32); 2],
    mappings: [(u64, u64); 2],
    count: usize,
}

impl Pages {
    /// The pages of a patch at `at`, if they are mapped readable and executable.
    pub(crate) fn of(mappings: &[Mapping], at: u64) -> Option<Pages> {
        let first = at & !(PAGE_SIZE - 1);
        let last = (at + PATCH_LEN as u64 - 1) & !(PAGE_SIZE - 1);
        let code = |page: u64| {
            let mapping = maps::find(mappings, page)?;
            (mapping.prot & PROT_READ != 0 && mapping.prot & PROT_EXEC != 0).then_some(mapping)
        };
        let m = code(first)?;
        let mut pages = Pages { pages: [(first, m.prot), (0, 0)], mappings: [(m.start, m.end), (0, 0)], count: 1 };
        if last != first {
            let m = code(last)?;
            pages.pages[1] = (last, m.prot);
            pages.mappings[1] = (m.start, m.end);
            pages.count = 2;
        }
        Some(pages)
    }

    /// Make the pages writable (in a batch, their whole mappings); see [`batch::unlock`].
    ///
    /// # Safety
    /// The pages hold code of this process, as recorded by [`Pages::of`].
    unsafe fn unlock(&self) -> Result<[Option<Unlocked>; 2], i32> {
        let mut held = [None, None];
        for (i, slot) in held.iter_mut().enumerate().take(self.count) {
            let (page, prot) = self.pages[i];
            // SAFETY: a page of code and the mapping it lies in, with their protection.
            *slot = Some(unsafe { batch::unlock((page, page + PAGE_SIZE), self.mappings[i], prot) }?);
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_orders() {
        assert_eq!(write_order(0x1000), Some(WriteOrder::AlignedQword));
        assert_eq!(write_order(0x1003), Some(WriteOrder::AlignedQword));
        assert_eq!(write_order(0x1004), Some(WriteOrder::SelfLoop)); // after endbr64
        assert_eq!(write_order(0x103e), Some(WriteOrder::SelfLoop));
        assert_eq!(write_order(0x103f), None);
    }
}
