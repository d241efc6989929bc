//! Shared memory the broker makes for its clients (the board, the event rings): a
//! memfd of a fixed size, mapped read-write here and sealed so that nobody can shrink
//! it under our mapping (a read past the end of a shrunk file would kill the broker
//! with SIGBUS).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Our read-write mapping of a memfd, unmapped when dropped. Its memory is only ever
/// accessed through atomics: clients map it too.
pub struct Mapping {
    at: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, touched only through atomics, and owned
// by this value alone: any thread may use it and drop it.
unsafe impl Send for Mapping {}
// SAFETY: as above; `words` hands out shared references to atomics only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The mapping as words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `at` is a live, page-aligned mapping of `len` bytes for as long as
        // `self` lives; AtomicU64 has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts(self.at.as_ptr(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region `memfd` mapped; the references `words` gave out
        // borrowed `self`, so none outlives it.
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// A new memfd `name` of `len` bytes (a multiple of the page size), mapped here.
pub fn memfd(name: &CStr, len: usize) -> io::Result<(OwnedFd, Mapping)> {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on our own descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh shared mapping of our memfd, at an address the kernel picks.
    let at = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    match NonNull::new(at.cast::<AtomicU64>()) {
        Some(at) if at.as_ptr().cast() != libc::MAP_FAILED => Ok((fd, Mapping { at, len })),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Add `seals` to a memfd from [`memfd`]. Our own mapping, made before, keeps its
/// rights (F_SEAL_FUTURE_WRITE only refuses new writers).
pub fn seal(fd: &OwnedFd, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
