//! Step 3 of the pipeline: executable memory near the function. Trampolines and thunks are
//! carved out of pages mapped inside a ±2 GiB window; several share a page. Pages are mapped
//! read-write, filled, then turned read-execute; adding code to a page that already holds
//! trampolines flips it to read-write-execute for the copy (other threads may be running the
//! code already there, so execute permission never goes away). Inside a batch a new chunk is
//! turned read-write-execute instead, and read-execute when the batch ends.
//!
//! Nothing is ever freed: after a hook is removed another thread may still be inside its
//! trampoline, or about to call it through a pointer it loaded earlier.

use crate::batch;
use crate::error::HookError;
use crate::maps::{self, Mapping};
use crate::relocate::{MAX_USER_ADDR, MIN_USER_ADDR};
use crate::sys::{self, PAGE_SIZE, PROT_EXEC, PROT_READ};

/// Size of one pool chunk.
const CHUNK_SIZE: u64 = 4 * PAGE_SIZE;
/// Every piece of code starts 16-byte aligned.
const ALIGN: u64 = 16;
/// Room reserved when asking for the code to be built: an upper bound on any trampoline (at
/// most 19 stolen bytes, each relative branch growing to at most 16 bytes, plus the way back).
pub(crate) const MAX_CODE: u64 = 512;
/// How many candidate addresses are tried with `MAP_FIXED_NOREPLACE` before giving up.
const MAX_MAP_ATTEMPTS: usize = 64;
/// Room left free after `[heap]` so `brk` can keep growing, and below `[stack]`.
const HEAP_GROWTH: u64 = 1 << 30;
const STACK_GROWTH: u64 = 256 << 20;

struct Chunk {
    base: u64,
    used: u64,
}

/// The pool. Lives inside the engine's lock (see `Engine` in lib.rs).
#[derive(Default)]
pub(crate) struct Pool {
    chunks: Vec<Chunk>,
}

impl Pool {
    pub(crate) const fn new() -> Self {
        Pool { chunks: Vec::new() }
    }

    /// Places code built by `build(address)` at an address in the inclusive `window`, as close
    /// to `near` as the pool allows, and makes it executable. `build` may be called more than
    /// once (the encoding depends on the address) and must return at most [`MAX_CODE`] bytes.
    /// `addr` is the hooked function, for errors.
    pub(crate) fn place(
        &mut self,
        addr: u64,
        window: (u64, u64),
        near: u64,
        mut build: impl FnMut(u64) -> Result<Vec<u8>, HookError>,
    ) -> Result<u64, HookError> {
        let (low, high) = window;
        // An existing chunk with room inside the window.
        for chunk in &mut self.chunks {
            let at = align_up(chunk.base + chunk.used);
            if at < low || at > high || at + MAX_CODE > chunk.base + CHUNK_SIZE {
                continue;
            }
            let code = build(at)?;
            if code.len() as u64 > MAX_CODE {
                return Err(too_large(addr));
            }
            let whole = (chunk.base, chunk.base + CHUNK_SIZE);
            // SAFETY: the chunk is our own mapping, read-execute; making it RWX keeps the code
            // other threads may run there executable.
            let Ok(unlocked) = (unsafe { batch::unlock(whole, whole, PROT_READ | PROT_EXEC) }) else {
                continue; // W^X enforced (SELinux execmem, PaX): use a fresh chunk instead.
            };
            // SAFETY: `at..at + code.len()` lies in the unused tail of the chunk (checked above
            // against MAX_CODE), now writable, and nothing executes it yet.
            unsafe { sys::write_bytes(at, &code) };
            // SAFETY: back to read-execute; the chunk holds only code.
            unsafe { unlocked.relock() }.map_err(|errno| HookError::Protect { addr, errno })?;
            chunk.used = at + code.len() as u64 - chunk.base;
            return Ok(at);
        }

        // A new chunk.
        let base = map_near(addr, window, near)?;
        let code = build(base)?;
        if code.len() as u64 > MAX_CODE {
            return Err(too_large(addr));
        }
        // SAFETY: `base` is a fresh read-write mapping of CHUNK_SIZE > MAX_CODE bytes.
        unsafe { sys::write_bytes(base, &code) };
        // SAFETY: the new chunk holds only the code just written; nothing runs it yet.
        unsafe { batch::seal_new(base, base + CHUNK_SIZE) }.map_err(|errno| HookError::Protect { addr, errno })?;
        self.chunks.push(Chunk { base, used: code.len() as u64 });
        Ok(base)
    }
}

fn too_large(addr: u64) -> HookError {
    HookError::Relocate { addr, reason: format!("relocated code is larger than {MAX_CODE} bytes") }
}

fn align_up(value: u64) -> u64 {
    value.saturating_add(ALIGN - 1) & !(ALIGN - 1)
}

/// Maps a new chunk whose every byte lies in `[window.0, window.1 + MAX_CODE)`: where the
/// kernel puts a mapping by itself (just below the libraries, usually) when that is inside,
/// else as close to `near` as possible in a hole of the address space found in
/// `/proc/self/maps`.
fn map_near(addr: u64, window: (u64, u64), near: u64) -> Result<u64, HookError> {
    if let Ok(base) = sys::map_anywhere(CHUNK_SIZE) {
        if base >= window.0 && base + CHUNK_SIZE <= window.1 {
            batch::mapped(base, base + CHUNK_SIZE);
            return Ok(base);
        }
        // SAFETY: the mapping just made, which nothing else knows of.
        unsafe { sys::unmap(base, CHUNK_SIZE) };
    }
    let mappings = maps::current()?;
    let candidates = candidates(&mappings, window, near);
    for base in candidates.into_iter().take(MAX_MAP_ATTEMPTS) {
        match sys::map_fixed_noreplace(base, CHUNK_SIZE) {
            Ok(()) => {
                batch::mapped(base, base + CHUNK_SIZE);
                return Ok(base);
            }
            Err(_) => continue, // taken meanwhile by another thread, or refused: next hole
        }
    }
    Err(HookError::NoNearMemory { addr })
}

/// Chunk addresses to try, best (closest to `near`) first: at most one per hole.
pub(crate) fn candidates(mappings: &[Mapping], window: (u64, u64), near: u64) -> Vec<u64> {
    let page_down = |v: u64| v & !(PAGE_SIZE - 1);
    let page_up = |v: u64| v.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    // The chunk [base, base + CHUNK_SIZE) must satisfy: base >= low and base + CHUNK_SIZE <= high
    // end of the window plus room (any code start in the chunk is then <= window.1).
    let low = page_up(window.0.max(MIN_USER_ADDR));
    let high = window.1.min(MAX_USER_ADDR);

    let mut holes = Vec::with_capacity(mappings.len() + 1);
    let mut previous_end = MIN_USER_ADDR;
    for mapping in mappings {
        let (start, end) = reserved(mapping);
        if start > previous_end {
            holes.push((previous_end, start));
        }
        previous_end = previous_end.max(end);
    }
    if MAX_USER_ADDR > previous_end {
        holes.push((previous_end, MAX_USER_ADDR));
    }

    let mut found: Vec<(u64, u64)> = Vec::new();
    for (hole_start, hole_end) in holes {
        let first = page_up(hole_start).max(low);
        let Some(last) = page_down(hole_end.min(high)).checked_sub(CHUNK_SIZE) else { continue };
        if first > last {
            continue;
        }
        let base = page_down(near).clamp(first, last);
        found.push((base.abs_diff(near), base));
    }
    found.sort_unstable();
    found.into_iter().map(|(_, base)| base).collect()
}

/// The range a mapping keeps out of the pool's reach: itself, plus growth room after the heap
/// and below the stack.
fn reserved(mapping: &Mapping) -> (u64, u64) {
    match mapping.name.as_str() {
        "[heap]" => (mapping.start, mapping.end.saturating_add(HEAP_GROWTH)),
        "[stack]" => (mapping.start.saturating_sub(STACK_GROWTH), mapping.end),
        _ => (mapping.start, mapping.end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: u64, end: u64, name: &str) -> Mapping {
        Mapping { start, end, prot: PROT_READ, name: name.to_string() }
    }

    #[test]
    fn candidates_stay_in_window_and_prefer_near() {
        let maps = vec![m(0x10_0000_0000, 0x10_0010_0000, "lib"), m(0x10_0020_0000, 0x10_0030_0000, "lib2")];
        let near = 0x10_0000_5000;
        let window = (near - (1 << 30), near + (1 << 30));
        let found = candidates(&maps, window, near);
        assert!(!found.is_empty());
        // The closest hole is the one just below the first library.
        assert_eq!(found[0], 0x10_0000_0000 - CHUNK_SIZE);
        for base in &found {
            assert!(*base >= window.0 && *base + CHUNK_SIZE <= window.1, "{base:#x}");
            assert!(maps.iter().all(|m| *base + CHUNK_SIZE <= m.start || *base >= m.end), "{base:#x} overlaps");
        }
        assert!(found.contains(&0x10_0010_0000), "the hole between the libraries");
    }

    #[test]
    fn heap_growth_is_left_free() {
        let maps = vec![m(0x5555_0000_0000, 0x5555_0001_0000, "[heap]")];
        let near = 0x5555_0001_0000;
        let found = candidates(&maps, (near - (1 << 30), near + (1 << 31) - 1), near);
        assert!(found.iter().all(|b| *b + CHUNK_SIZE <= 0x5555_0000_0000 || *b >= near + HEAP_GROWTH));
    }

    #[test]
    fn empty_when_window_is_full() {
        let maps = vec![m(0x1000_0000, 0x9000_0000, "big")];
        assert!(candidates(&maps, (0x2000_0000, 0x3000_0000), 0x2800_0000).is_empty());
    }
}
