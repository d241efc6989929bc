//! The broker's side of the board ([`hermes_wire::board`]): a sealed memfd page it
//! writes and every process of the run maps read-only, so a reloaded policy's
//! subscriptions reach running processes without a message to each.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
        // From BROKER on, the words are not the policy's: not a notice's to write.
        for (i, w) in words.iter().enumerate().take(board::BROKER) {
            if i != board::GENERATION {
                page[i].store(*w, Ordering::Relaxed);
            }
        }
        page[board::GENERATION].store(words[board::GENERATION], Ordering::Release);
    }

    /// Tell clients how long to poll for an answer before they sleep ([`board::SPIN`]).
    pub fn set_spin(&self, spin: Duration) {
        self.words()[board::SPIN].store(spin.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// Where the processes of the run open the board: valid in the process that holds
    /// it, so ask after any fork.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    pub fn word(&self, i: usize) -> u64 {
        self.words()[i].load(Ordering::Acquire)
    }

    /// Make the calling thread the broker's life on the board: its id goes into
    /// [`board::BROKER`], registered as the thread's only robust futex, so that the kernel
    /// marks the word when the thread ends (the process's end: call this from the thread
    /// that lives as long as the broker). This replaces the list glibc registered for the
    /// thread, which only its robust pthread mutexes use; none is locked here.
    pub fn watch_over(&self) -> io::Result<()> {
        #[repr(C)]
        struct RobustList {
            next: *const RobustList,
        }
        #[repr(C)]
        struct RobustListHead {
            list: RobustList,
            futex_offset: libc::c_long,
            list_op_pending: *const RobustList,
        }
        let word = &self.words()[board::BROKER];
        // The one entry, whose futex is the word, linked back to the head. Both must
        // outlive the thread: leaked (a few words, once per broker).
        let entry = Box::into_raw(Box::new(RobustList { next: std::ptr::null() }));
        let head = Box::into_raw(Box::new(RobustListHead {
            list: RobustList { next: entry },
            futex_offset: word.as_ptr() as libc::c_long - entry as libc::c_long,
            list_op_pending: std::ptr::null(),
        }));
        // SAFETY: `entry` is the live allocation made above, ours alone.
        unsafe { (*entry).next = &raw const (*head).list };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        word.store(tid as u64, Ordering::Release);
        // SAFETY: `head` describes a well-formed circular list (one entry, whose futex word
        // is in our shared page), and both live until the process ends.
        let done = unsafe { libc::syscall(libc::SYS_set_robust_list, head, std::mem::size_of::<RobustListHead>()) };
        if done != 0 {
            word.store(0, Ordering::Release);
            return Err(io::Error::last_os_error());
        }
        Ok(())
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
