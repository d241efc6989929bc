//! The memory of a stopped tracee: reading what its syscall arguments point at, and
//! writing the replacement of a redirected path or address below its stack.
//!
//! Everything read here is hostile input: every read is bounded, and a pointer that
//! does not point at readable memory is an EFAULT for the call, never a tracer error.

use super::ptrace::{Regs, Stopped};

/// Bytes below the stack pointer that the x86_64 ABI lets a function use without
/// moving it (the red zone): our scratch space starts below them.
const RED_ZONE: u64 = 128;
const PAGE: u64 = 4096;

/// Why memory could not be read, as the errno the syscall gets.
pub type Errno = i32;

fn last_errno() -> Errno {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Read exactly `buf.len()` bytes at `addr`, or fail with EFAULT.
pub fn read(st: &Stopped, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        // One page at a time: process_vm_readv never splits an iovec, so a read that
        // crosses into an unmapped page fails whole.
        let at = addr.checked_add(done as u64).ok_or(libc::EFAULT)?;
        let chunk = ((PAGE - at % PAGE) as usize).min(buf.len() - done);
        read_chunk(st, at, &mut buf[done..done + chunk])?;
        done += chunk;
    }
    Ok(())
}

/// Read `buf.len()` bytes that lie within one page.
fn read_chunk(st: &Stopped, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if addr == 0 {
        return Err(libc::EFAULT);
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, which is live and writable for its length; the
    // remote address is only dereferenced by the kernel, in the tracee.
    let n = unsafe { libc::process_vm_readv(st.tid(), &local, 1, &remote, 1, 0) };
    if n == buf.len() as isize {
        return Ok(());
    }
    match last_errno() {
        // No process_vm_readv here (seccomp'd container, old kernel): word by word.
        libc::ENOSYS | libc::EPERM if n < 0 => read_peek(st, addr, buf),
        _ => Err(libc::EFAULT),
    }
}

fn read_peek(st: &Stopped, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let start = addr & !7;
    let skip = (addr - start) as usize;
    let mut word_at = start;
    let mut filled = 0;
    while filled < buf.len() {
        let word = st.peek(word_at).map_err(|_| libc::EFAULT)?.to_ne_bytes();
        let from = if word_at == start { skip } else { 0 };
        let n = (8 - from).min(buf.len() - filled);
        buf[filled..filled + n].copy_from_slice(&word[from..from + n]);
        filled += n;
        word_at += 8;
    }
    Ok(())
}

/// Read a NUL-terminated string at `addr`, without its NUL. `cap` counts the NUL:
/// a string that does not end within it fails with `too_long`.
pub fn read_cstr(st: &Stopped, addr: u64, cap: usize, too_long: Errno) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < cap {
        let chunk = ((PAGE - at % PAGE) as usize).min(cap - out.len());
        let start = out.len();
        out.resize(start + chunk, 0);
        read_chunk(st, at, &mut out[start..])?;
        if let Some(nul) = out[start..].iter().position(|&b| b == 0) {
            out.truncate(start + nul);
            return Ok(out);
        }
        at = at.checked_add(chunk as u64).ok_or(libc::EFAULT)?;
    }
    Err(too_long)
}

/// Read a NULL-terminated array of pointers (argv, envp) at `addr`; at most `cap`
/// entries, else `E2BIG`. A NULL array is empty, as the kernel treats it.
pub fn read_ptr_list(st: &Stopped, addr: u64, cap: usize) -> Result<Vec<u64>, Errno> {
    let mut out = Vec::new();
    if addr == 0 {
        return Ok(out);
    }
    let mut at = addr;
    let mut page = [0u8; PAGE as usize];
    loop {
        let chunk = ((PAGE - at % PAGE) as usize).min(PAGE as usize) & !7;
        let chunk = if chunk == 0 { 8 } else { chunk };
        read(st, at, &mut page[..chunk])?;
        for word in page[..chunk].chunks_exact(8) {
            let ptr = u64::from_ne_bytes(word.try_into().unwrap_or_default());
            if ptr == 0 {
                return Ok(out);
            }
            if out.len() == cap {
                return Err(libc::E2BIG);
            }
            out.push(ptr);
        }
        at = at.checked_add(chunk as u64).ok_or(libc::EFAULT)?;
    }
}

/// Where scratch space starts in a thread stopped in a syscall: below its stack
/// pointer and red zone. Nothing of the program's lives there, and the kernel copies
/// a path or address in before anything (a signal handler) could run on that stack.
pub fn scratch_top(regs: &Regs) -> u64 {
    regs.rsp.saturating_sub(RED_ZONE)
}

/// Write `data` just below `top`, 16-byte aligned; returns its address.
pub fn write_scratch(st: &Stopped, top: u64, data: &[u8]) -> Result<u64, Errno> {
    let addr = top.checked_sub(data.len() as u64).ok_or(libc::EFAULT)? & !15;
    write(st, addr, data)?;
    Ok(addr)
}

/// Write `data` at `addr` with process_vm_writev, falling back to PTRACE_POKEDATA.
pub fn write(st: &Stopped, addr: u64, data: &[u8]) -> Result<(), Errno> {
    let local = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` describes `data`, live for the call (the kernel only reads it);
    // the remote range is the tracee's, checked by the kernel.
    let n = unsafe { libc::process_vm_writev(st.tid(), &local, 1, &remote, 1, 0) };
    if n == data.len() as isize {
        return Ok(());
    }
    write_poke(st, addr, data)
}

fn write_poke(st: &Stopped, addr: u64, data: &[u8]) -> Result<(), Errno> {
    let start = addr & !7;
    let end = addr + data.len() as u64;
    let mut word_at = start;
    while word_at < end {
        let mut word = if word_at < addr || word_at + 8 > end {
            st.peek(word_at).map_err(|_| libc::EFAULT)?.to_ne_bytes()
        } else {
            [0; 8]
        };
        for (i, byte) in word.iter_mut().enumerate() {
            let at = word_at + i as u64;
            if (addr..end).contains(&at) {
                *byte = data[(at - addr) as usize];
            }
        }
        st.poke(word_at, u64::from_ne_bytes(word)).map_err(|_| libc::EFAULT)?;
        word_at += 8;
    }
    Ok(())
}
