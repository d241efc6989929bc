//! The board: one small page of shared memory the broker writes and every mediation
//! layer reads, so a reloaded policy reaches processes that are already running
//! without a message to each. The broker creates it as a memfd and names it to the
//! launched tree in `HERMES_BOARD` (a `/proc/PID/fd/N` path); each process maps it
//! read-only at start-up. Words are little-endian `u64`s at these indices, read with
//! relaxed atomic loads; the broker writes every other word before it bumps
//! [`GENERATION`].

/// Bytes the board occupies (one word per index below, rounded up).
pub const SIZE: usize = 128;
/// Words on the board.
pub const WORDS: usize = SIZE / 8;

/// `b"HERMESB1"`: a file with anything else here is not a board.
pub const MAGIC: usize = 0;
pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"HERMESB1");
/// Counts policy loads: 1 for the first policy, +1 per reload. Cached decisions of
/// another generation are stale.
pub const GENERATION: usize = 1;
/// Operations the policy decides ([`crate::Op::bit`]): each is a round trip.
pub const MASK: usize = 2;
/// Operations the policy only records: they run at once and are reported one-way
/// ([`crate::ClientMsg::Observe`]).
pub const OBSERVE: usize = 3;
/// [`REPORT`], [`BACKTRACE`] bits.
pub const FLAGS: usize = 4;
/// How many bytes of a send's payload to include ([`crate::Context::payload`]); 0: none.
pub const PAYLOAD: usize = 5;
/// [`MASK`] | [`OBSERVE`]: whether a hook has anything to do, in one load.
pub const WATCHED: usize = 6;

/// The broker's main thread id, as a robust futex word (the low 32 bits): when the broker
/// dies, however it dies, the kernel sets [`BROKER_DIED`] in it. A process that sees that
/// bit denies its calls at once, observed and cached ones too, instead of carrying on
/// until it next talks to the broker. Not part of a [`Notice`]: only the broker's main
/// thread and the kernel write it.
pub const BROKER: usize = 7;
/// `FUTEX_OWNER_DIED`, in [`BROKER`].
pub const BROKER_DIED: u64 = 0x4000_0000;
/// How long (ns) a client that waits for the broker's answer polls for it before it
/// sleeps (`hermes launch --spin-us`): on this VM a sleeping thread takes tens of
/// microseconds to wake, several times what a decision costs. 0: it sleeps at once
/// (one CPU, or spinning turned off). Not part of a [`Notice`]: set once at start.
pub const SPIN: usize = 8;

/// Report the result of every allowed call ([`crate::ClientMsg::Done`]).
pub const REPORT: u64 = 1;
/// Send the calling thread's backtrace with each call.
pub const BACKTRACE: u64 = 2;

/// Largest payload excerpt a policy may ask for.
pub const PAYLOAD_MAX: u64 = 64 * 1024;
/// Send the ptrace layer's registers with each call.
pub const REGISTERS: u64 = 4;

/// What the board says, as one value (the broker's side; clients read single words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    pub generation: u64,
    pub mask: u64,
    pub observe: u64,
    pub flags: u64,
    pub payload: u64,
}

impl Notice {
    /// The words to write, in index order ([`MAGIC`] first).
    pub fn words(&self) -> [u64; WORDS] {
        let mut w = [0; WORDS];
        w[MAGIC] = MAGIC_VALUE;
        w[GENERATION] = self.generation;
        w[MASK] = self.mask;
        w[OBSERVE] = self.observe;
        w[FLAGS] = self.flags;
        w[PAYLOAD] = self.payload.min(PAYLOAD_MAX);
        w[WATCHED] = self.mask | self.observe;
        w
    }
}
