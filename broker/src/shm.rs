//! Shared memory between the broker and its clients (the board, the event rings): a
//! memfd of a fixed size, mapped read-write here and sealed so that nobody can shrink
//! it under our mapping (a read past the end of a shrunk file would kill the broker
//! with SIGBUS). The broker makes the board and some rings; a ring a client made is
//! mapped only once its seals are checked.

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
    let mapping = map(&fd, len)?;
    Ok((fd, mapping))
}

/// Map a memfd a client made, of `len` bytes: only when it is sealed against
/// shrinking and growing, so that it stays `len` bytes for as long as we map it.
pub fn adopt(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: fcntl on a descriptor we own; F_GET_SEALS fails on anything but a memfd
    // (or a shmem file), which we refuse.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::other(format!("not a memfd ({})", io::Error::last_os_error())));
    }
    let fixed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals & fixed != fixed {
        return Err(io::Error::other("not sealed against resizing"));
    }
    // SAFETY: fstat into a zeroed stat of our own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_size != len as libc::off_t {
        return Err(io::Error::other(format!("{} bytes, not {len}", st.st_size)));
    }
    map(fd, len)
}

/// Map `len` bytes of `fd` shared and read-write.
fn map(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: a fresh shared mapping of a memfd, at an address the kernel picks.
    let at = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    match NonNull::new(at.cast::<AtomicU64>()) {
        Some(at) if at.as_ptr().cast() != libc::MAP_FAILED => Ok(Mapping { at, len }),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd of `len` bytes with `seals`, as a client could pass one.
    fn client_memfd(len: usize, seals: libc::c_int) -> OwnedFd {
        let (fd, _ours) = memfd(c"test-ring", len).expect("memfd");
        if seals != 0 {
            seal(&fd, seals).expect("seal");
        }
        fd
    }

    #[test]
    fn a_client_memfd_is_mapped_only_when_sealed_against_resizing_and_of_the_right_size() {
        let fixed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        assert!(adopt(&client_memfd(8192, fixed), 8192).is_ok());
        assert!(adopt(&client_memfd(8192, fixed | libc::F_SEAL_SEAL), 8192).is_ok());
        // The client could shrink it under our mapping: SIGBUS in the broker.
        assert!(adopt(&client_memfd(8192, 0), 8192).is_err());
        assert!(adopt(&client_memfd(8192, libc::F_SEAL_GROW), 8192).is_err());
        assert!(adopt(&client_memfd(4096, fixed), 8192).is_err());
        // Not a memfd at all.
        let file = std::fs::File::open("/proc/self/exe").expect("open");
        assert!(adopt(&OwnedFd::from(file), 8192).is_err());
    }
}
