//! The broker's side of the board ([`hermes_wire::board`]): a sealed memfd page it
//! writes and every process of the run maps read-only, so a reloaded policy's
//! subscriptions reach running processes without a message to each.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use hermes_wire::board::{self, Notice};

pub struct Board {
    fd: OwnedFd,
    words: &'static [AtomicU64; board::WORDS],
}

impl Board {
    pub fn new(notice: Notice) -> io::Result<Self> {
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let raw = unsafe { libc::memfd_create(c"hermes-board".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let page = 4096;
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), page) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of our memfd, never unmapped: the board
        // lives as long as the broker process.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Nobody else may write it, grow it or shrink it (our own mapping stays
        // writable: F_SEAL_FUTURE_WRITE only refuses new writers).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own descriptor. Sealing is a hardening; failure (an old
        // kernel) is not fatal.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        // SAFETY: the mapping is page-aligned, at least SIZE bytes, lives forever (never
        // unmapped) and is only accessed through these atomics.
        let words = unsafe { &*(at as *const [AtomicU64; board::WORDS]) };
        let board = Board { fd, words };
        board.post(notice);
        Ok(board)
    }

    /// Publish a new notice: every word first, the generation last.
    pub fn post(&self, notice: Notice) {
        let words = notice.words();
        for (i, w) in words.iter().enumerate() {
            if i != board::GENERATION {
                self.words[i].store(*w, Ordering::Relaxed);
            }
        }
        self.words[board::GENERATION].store(words[board::GENERATION], Ordering::Release);
    }

    /// Where the processes of the run open the board: valid in the process that holds
    /// it, so ask after any fork.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    pub fn word(&self, i: usize) -> u64 {
        self.words[i].load(Ordering::Acquire)
    }
}

/// A board mapped read-only by a client of the broker that links this crate (the
/// ptrace tracer); the preload has its own, allocation-free reader.
#[derive(Clone, Copy)]
pub struct BoardView(&'static [AtomicU64; board::WORDS]);

impl BoardView {
    /// Map the board at `path` (a [`Board::path`]); `None` if it is not one.
    pub fn map(path: &str) -> Option<Self> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: a read-only shared mapping of a file we opened, never unmapped (the
        // caller lives as long as the run); it is read only through atomics.
        let at = unsafe {
            libc::mmap(std::ptr::null_mut(), board::SIZE, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if at == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the mapping is page-aligned, at least SIZE bytes and lives forever.
        let words = unsafe { &*(at as *const [AtomicU64; board::WORDS]) };
        (words[board::MAGIC].load(Ordering::Relaxed) == board::MAGIC_VALUE).then_some(BoardView(words))
    }

    pub fn word(self, i: usize) -> u64 {
        self.0[i].load(Ordering::Acquire)
    }
}
