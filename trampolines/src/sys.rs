//! The only room with raw system calls. They are made with the `syscall` instruction, not
//! through libc: the engine may be patching libc's `mprotect` or `syscall` at that very moment,
//! and the preload's hooks must never see the engine's own calls.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

pub(crate) const PAGE_SIZE: u64 = 4096;

/// A raw Linux system call with up to six arguments. Returns the kernel's result: a value, or
/// `-errno` in `-4095..0`.
///
/// # Safety
/// The caller must uphold the contract of system call `nr` for these arguments (pointers valid
/// for what the kernel reads or writes, memory it unmaps not in use, …).
#[inline]
unsafe fn syscall6(nr: i64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64, a6: u64) -> i64 {
    let ret: i64;
    // SAFETY: the x86-64 Linux syscall ABI: number in rax, arguments in rdi, rsi, rdx, r10, r8,
    // r9, result in rax, rcx and r11 clobbered, the stack untouched. What the call does to
    // memory is the caller's contract (see above).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            in("r8") a5,
            in("r9") a6,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Splits a raw result into `Ok(value)` or `Err(errno)`.
fn check(ret: i64) -> Result<u64, i32> {
    if (-4095..0).contains(&ret) {
        Err((-ret) as i32)
    } else {
        Ok(ret as u64)
    }
}

pub(crate) const PROT_READ: u32 = libc::PROT_READ as u32;
pub(crate) const PROT_WRITE: u32 = libc::PROT_WRITE as u32;
pub(crate) const PROT_EXEC: u32 = libc::PROT_EXEC as u32;

/// `mprotect(addr, len, prot)`.
///
/// # Safety
/// Taking away access from memory that code of this process still uses (for instance execute
/// permission from a page another thread runs) crashes it; the caller keeps the access needed.
pub(crate) unsafe fn mprotect(addr: u64, len: u64, prot: u32) -> Result<(), i32> {
    // SAFETY: mprotect reads no user memory; the access change is the caller's contract.
    check(unsafe { syscall6(libc::SYS_mprotect, addr, len, u64::from(prot), 0, 0, 0) }).map(|_| ())
}

/// Maps `len` bytes of fresh anonymous read-write memory exactly at `addr`, failing (`EEXIST`)
/// rather than replacing anything mapped there. Returns `Err` if the kernel placed the mapping
/// elsewhere (kernels before 4.17 take `MAP_FIXED_NOREPLACE` as a mere hint).
pub(crate) fn map_fixed_noreplace(addr: u64, len: u64) -> Result<(), i32> {
    let placed = map_rw(addr, len, libc::MAP_FIXED_NOREPLACE)?;
    if placed != addr {
        // SAFETY: `placed` is the mapping just created above, which nothing else knows of.
        unsafe { unmap(placed, len) };
        return Err(libc::EEXIST);
    }
    Ok(())
}

/// Maps `len` bytes of fresh anonymous read-write memory wherever the kernel chooses.
pub(crate) fn map_anywhere(len: u64) -> Result<u64, i32> {
    map_rw(0, len, 0)
}

/// A new private anonymous read-write mapping of `len` bytes at (or near, by `flags`) `addr`.
fn map_rw(addr: u64, len: u64, flags: i32) -> Result<u64, i32> {
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags) as u64;
    let prot = u64::from(PROT_READ | PROT_WRITE);
    // SAFETY: a new anonymous mapping; without MAP_FIXED nothing mapped is replaced (callers
    // pass at most MAP_FIXED_NOREPLACE), so no memory in use is affected.
    check(unsafe { syscall6(libc::SYS_mmap, addr, len, prot, flags, u64::MAX, 0) })
}

/// Opens `path` (NUL-terminated) read-only.
pub(crate) fn open_read(path: &core::ffi::CStr) -> Result<i32, i32> {
    let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    // SAFETY: `path` is a valid NUL-terminated string that the kernel only reads.
    let fd = check(unsafe { syscall6(libc::SYS_openat, libc::AT_FDCWD as u64, path.as_ptr() as u64, flags, 0, 0, 0) })?;
    Ok(fd as i32)
}

/// `read(fd, buf)`: the number of bytes read, 0 at end of file.
pub(crate) fn read(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we borrow mutably.
    let n = check(unsafe { syscall6(libc::SYS_read, fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0) })?;
    Ok(n as usize)
}

/// `close(fd)`.
pub(crate) fn close(fd: i32) {
    // SAFETY: closing a descriptor this module opened and nobody else holds.
    let _ = unsafe { syscall6(libc::SYS_close, fd as u64, 0, 0, 0, 0, 0) };
}

/// Blocks every signal in the calling thread; returns the previous mask for [`restore_signals`].
/// While a patch is half-written the patching thread must not run a handler that could call the
/// function being patched (it would spin on the self-loop forever).
pub(crate) fn block_signals() -> u64 {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads the 8-byte set at `&all` and writes the old one into `old`;
    // both live on this stack frame. SIGKILL and SIGSTOP are silently left unblocked.
    let _ = unsafe {
        syscall6(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as u64,
            &all as *const u64 as u64,
            &mut old as *mut u64 as u64,
            8,
            0,
            0,
        )
    };
    old
}

/// Restores the signal mask saved by [`block_signals`].
pub(crate) fn restore_signals(old: u64) {
    // SAFETY: as in block_signals; `old` is a mask this thread had before.
    let _ =
        unsafe { syscall6(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK as u64, &old as *const u64 as u64, 0, 8, 0, 0) };
}

const MEMBARRIER_CMD_QUERY: u64 = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: u64 = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: u64 = 1 << 6;

/// 0: not yet probed, 1: registered, 2: unavailable.
static SYNC_CORE: AtomicU8 = AtomicU8::new(0);
/// Set while a batch runs in a process that has never had a second thread: no other core can
/// be running stale bytes of ours, and this one sees its own stores.
pub(crate) static ALONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether the process has never started a second thread (glibc's `__libc_single_threaded`).
pub(crate) fn single_threaded() -> bool {
    // SAFETY: a symbol lookup with a NUL-terminated name.
    let flag = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__libc_single_threaded".as_ptr()) } as *const u8;
    // SAFETY: glibc's `char __libc_single_threaded`, which lives as long as libc.
    !flag.is_null() && unsafe { core::ptr::read_volatile(flag) } != 0
}

/// Makes every thread of the process execute a serializing instruction before it runs user
/// code again (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, Linux ≥ 4.16), so no
/// core keeps executing stale prefetched bytes of the code just written. This is the
/// cross-modifying-code protocol the Intel SDM asks for (§8.1.3). Where the kernel lacks it the
/// call does nothing: x86 cores snoop stores into code, and the writes below are ordered so
/// that any mix of old and new bytes a core could fetch is still safe.
pub(crate) fn sync_cores() {
    if ALONE.load(Ordering::Relaxed) {
        return;
    }
    let mut state = SYNC_CORE.load(Ordering::Acquire);
    if state == 0 {
        // SAFETY: membarrier with QUERY/REGISTER touches no user memory.
        let mask = check(unsafe { syscall6(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0, 0, 0, 0) }).unwrap_or(0);
        let registered = mask & MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE != 0
            // SAFETY: as above.
            && check(unsafe {
                syscall6(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0, 0, 0, 0)
            })
            .is_ok();
        state = if registered { 1 } else { 2 };
        SYNC_CORE.store(state, Ordering::Release);
    }
    if state == 1 {
        // SAFETY: a barrier; touches no user memory.
        let _ = unsafe { syscall6(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0, 0, 0, 0) };
    }
}

/// One 2-byte store, done by a single `mov` so that it is atomic for other cores when it does
/// not cross a cache line (Intel SDM §8.1.1: unaligned 16-bit accesses within a cache line).
///
/// # Safety
/// `addr..addr + 2` must be writable memory.
pub(crate) unsafe fn store_u16(addr: u64, value: u16) {
    // SAFETY: the caller guarantees the two bytes are writable; `mov` has no other effect.
    unsafe { asm!("mov word ptr [{addr}], {value:x}", addr = in(reg) addr, value = in(reg) value, options(nostack)) };
}

/// One aligned 8-byte store by a single `mov`: atomic for other cores.
///
/// # Safety
/// `addr` must be 8-byte aligned and `addr..addr + 8` writable memory.
pub(crate) unsafe fn store_u64(addr: u64, value: u64) {
    // SAFETY: the caller guarantees alignment and writability.
    unsafe { asm!("mov qword ptr [{addr}], {value}", addr = in(reg) addr, value = in(reg) value, options(nostack)) };
}

/// One aligned 8-byte load.
///
/// # Safety
/// `addr` must be 8-byte aligned and `addr..addr + 8` readable memory.
pub(crate) unsafe fn load_u64(addr: u64) -> u64 {
    // SAFETY: the caller guarantees alignment and readability.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Reads `len` bytes at `addr` into a vector.
///
/// # Safety
/// `addr..addr + len` must be readable memory.
pub(crate) unsafe fn read_bytes(addr: u64, len: usize) -> Vec<u8> {
    // SAFETY: the caller guarantees the range is readable for the duration of the copy.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
}

/// Copies `bytes` to `addr` with volatile byte stores (never a call to `memcpy`, which may be
/// the very function being patched).
///
/// # Safety
/// `addr..addr + bytes.len()` must be writable memory that nothing else is writing.
pub(crate) unsafe fn write_bytes(addr: u64, bytes: &[u8]) {
    for (i, byte) in bytes.iter().enumerate() {
        // SAFETY: inside the range the caller vouches for.
        unsafe { core::ptr::write_volatile((addr as *mut u8).add(i), *byte) };
    }
}

/// Unmaps `addr..addr + len`.
///
/// # Safety
/// The range must be a mapping of the caller's that nothing uses.
pub(crate) unsafe fn unmap(addr: u64, len: u64) {
    // SAFETY: the caller's contract.
    let _ = unsafe { syscall6(libc::SYS_munmap, addr, len, 0, 0, 0, 0) };
}

/// The loadable segment of a loaded ELF object (the program, a library) that contains `addr`:
/// page-rounded start and end, and its protection from the program header's flags. Asks the
/// dynamic loader, not the kernel: no `/proc/self/maps` to read and parse.
pub(crate) fn elf_segment(addr: u64) -> Option<(u64, u64, u32)> {
    struct Search {
        addr: u64,
        found: Option<(u64, u64, u32)>,
    }
    extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut core::ffi::c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid info for this call; `data` is the Search below.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers of a loaded object.
        let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        for ph in headers.iter().filter(|ph| ph.p_type == libc::PT_LOAD) {
            let start = info.dlpi_addr.wrapping_add(ph.p_vaddr);
            let end = start.wrapping_add(ph.p_memsz);
            if (start..end).contains(&search.addr) {
                let mut prot = 0;
                for (flag, bit) in [(libc::PF_R, PROT_READ), (libc::PF_W, PROT_WRITE), (libc::PF_X, PROT_EXEC)] {
                    if ph.p_flags & flag != 0 {
                        prot |= bit;
                    }
                }
                let end = end.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
                search.found = Some((start & !(PAGE_SIZE - 1), end, prot));
                return 1;
            }
        }
        0
    }
    let mut search = Search { addr, found: None };
    // SAFETY: `visit` matches the callback type and only reads what the loader hands it;
    // `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast()) };
    search.found
}
