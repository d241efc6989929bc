//! The broker's side of the board ([`hermes_wire::board`]): a sealed memfd page it
//! writes and every process of the run maps read-only, so a reloaded policy's
//! subscriptions reach running processes without a message to each.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use hermes_wire::board::{self, Notice};

use crate::shm::{self, Mapping};

pub struct Board {
    fd: OwnedFd,
    page: Mapping,
}

impl Board {
    pub fn new(notice: Notice) -> io::Result<Self> {
        let (fd, page) = shm::memfd(c"hermes-board", 4096)?;
        // Nobody else may write it, grow it or shrink it. A hardening: an old kernel
        // without F_SEAL_FUTURE_WRITE is not fatal.
        let _ = shm::seal(&fd, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL);
        let board = Board { fd, page };
        board.post(notice);
        Ok(board)
    }

    fn words(&self) -> &[AtomicU64] {
        &self.page.words()[..board::WORDS]
    }

    /// Publish a new notice: every word first, the generation last.
    pub fn post(&self, notice: Notice) {
        let words = notice.words();
        let page = self.words();
        for (i, w) in words.iter().enumerate() {
            if i != board::GENERATION {
                page[i].store(*w, Ordering::Relaxed);
            }
        }
        page[board::GENERATION].store(words[board::GENERATION], Ordering::Release);
    }

    /// Where the processes of the run open the board: valid in the process that holds
    /// it, so ask after any fork.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    pub fn word(&self, i: usize) -> u64 {
        self.words()[i].load(Ordering::Acquire)
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
