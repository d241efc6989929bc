//! The event ring: shared memory through which a preload thread sends its one-way
//! frames ([`crate::ClientMsg::Observe`], [`crate::ClientMsg::Done`]) without a system
//! call. One ring per thread connection, a memfd sealed against shrinking and growing
//! (the broker's mapping would not survive either). Usually the client makes it, sets
//! it up ([`Ring::init`]) and attaches its descriptor to the [`crate::Hello`]
//! (SCM_RIGHTS): it can write into it at once, and the broker maps it once it has
//! checked the seals and the size. A client that does not (or cannot) asks for one
//! with the Hello, and the broker makes it and attaches it to the [`crate::Welcome`].
//! Either way the [`crate::Welcome`] says whether the connection has a ring.
//!
//! Layout: one page of header ([`HEADER`] bytes) and [`DATA`] bytes of records, all
//! little-endian `u64` words used only through atomics. The header holds the magic,
//! `head` (bytes the producer has published since the ring was made) and `tail`
//! (bytes the consumer has read), each on its own cache line. A record sits at
//! `position % DATA` and wraps around the end word by word:
//!
//! ```text
//! word 0   the frame's length in bytes (low 32 bits) and the result's state (high 32)
//! word 1   the client's CLOCK_MONOTONIC in ns when it wrote the record
//! word 2   the call's return value   } the result of an observed call, written
//! word 3   its errno (low 32 bits)   } into its own record once the call returns
//! word 4   its duration in ns        } (state `DONE`); otherwise unused
//! then     the frame exactly as the socket would carry it (u32 length prefix and
//!          postcard body), zero-padded to a multiple of 8 bytes
//! ```
//!
//! An observed call whose result the broker wants is pushed before it runs with its
//! state `IN_FLIGHT` ([`Ring::push_awaiting`]). When it returns, the producer writes the
//! result into the record and moves the state to `DONE` ([`Ring::complete`]), so one
//! record carries the call and its result. The consumer may read the record first (a
//! slow call): it moves the state to `TAKEN` ([`Ring::take_result`]), and the producer,
//! finding it so, sends the result as a [`crate::Done`] frame, as it does for any call
//! without a record of its own. Both moves are compare-and-swaps on word 0, so exactly
//! one of them happens, and a call killed while it runs leaves its record in the ring.
//!
//! Single producer (the client thread that owns the connection), single consumer
//! (the broker, which serialises its readers with a lock). The producer writes a
//! record's words, then publishes `head` with a Release store; the consumer loads
//! `head` with Acquire, copies records out, then publishes `tail` with a Release store.
//!
//! A frame that does not fit (no room, or larger than [`MAX_FRAME`]) is sent on the
//! socket instead, and the thread's order is kept both ways: the broker reads the
//! ring before it handles any frame from the socket (so what was in the ring before
//! goes first), and the producer writes nothing more into the ring until the broker
//! has handled every one-way frame it sent on the socket (so a reader of the ring,
//! which cannot see the socket, never overtakes them). For the second rule the
//! header holds `acked`: how many one-way frames the broker has handled from the
//! socket ([`Ring::acknowledge`]); the producer counts those it sent.
//!
//! Every word is writable by the target. The consumer checks every position and
//! length against its own copy of `tail` and reports a ring that breaks the rules
//! ([`Corrupt`]) instead of trusting it; the producer only ever writes inside the
//! data area, whatever the words say.

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::{le_word, le_word8};

/// Bytes before the data area: one page, so the data is page-aligned.
pub const HEADER: usize = 4096;
/// Bytes of records: about a thousand observed opens with their results (~130 bytes
/// each), some 20 ms of the busiest program measured (tar), so the broker's 10 ms
/// periodic read and a nudge at half full keep a busy thread off the socket. The cost
/// is 132 KiB of address space per thread connection on each side, whose pages are
/// touched only as records reach them.
pub const DATA: usize = 128 * 1024;
/// Bytes the broker's memfd holds and each side maps.
pub const SIZE: usize = HEADER + DATA;
/// Words in a ring.
pub const WORDS: usize = SIZE / 8;
/// Largest frame a record carries: bigger ones go on the socket, so one record never
/// takes more than a quarter of the ring.
pub const MAX_FRAME: usize = DATA / 4;
/// Bytes of a record before its frame.
pub const RECORD_HEADER: usize = 40;

/// A record's result states (word 0's high half). No result will be written into it.
const NO_RESULT: u64 = 0;
/// The call runs; its result goes into the record unless the consumer takes it first.
const IN_FLIGHT: u64 = 1;
/// The result is in the record.
const DONE: u64 = 2;
/// The consumer read the record before the result came: it comes in a `Done` frame.
const TAKEN: u64 = 3;
const LEN_MASK: u64 = 0xffff_ffff;

/// `b"HERMESR1"`: a mapping with anything else in word 0 is not a ring.
pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"HERMESR1");
const MAGIC: usize = 0;
/// Word indices of the positions and the socket count, a cache line apart.
const HEAD: usize = 8;
const TAIL: usize = 16;
const ACKED: usize = 24;
const DATA_AT: usize = HEADER / 8;
const DATA_WORDS: u64 = (DATA / 8) as u64;

/// One ring, seen through its words.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    words: &'a [AtomicU64],
}

/// The producer must send the frame on the socket: the ring has no room, the frame
/// is too large, or frames sent on the socket before are not all handled yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A record was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The ring has room to spare.
    Stored,
    /// This record took the ring past half full: the broker should be nudged
    /// ([`crate::ClientMsg::Nudge`]) to drain it before it fills.
    HalfFull,
}

/// How a ring broke the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// `head` is behind the consumer, more than the data area ahead of it, or
    /// not on a record boundary.
    Head,
    /// A record's length is impossible or runs past `head`.
    Length,
    /// The frame's own length prefix disagrees with its record.
    Frame,
}

impl Corrupt {
    pub const fn text(self) -> &'static str {
        match self {
            Corrupt::Head => "the head position is impossible",
            Corrupt::Length => "a record's length is impossible",
            Corrupt::Frame => "a record's frame does not match its length",
        }
    }
}

/// A published record, as [`Ring::peek`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts (its word 0).
    start: u64,
    /// Where its frame starts.
    at: u64,
    /// The frame's length in bytes.
    pub len: usize,
    /// The client's CLOCK_MONOTONIC when it wrote the record.
    pub mono_ns: u64,
    /// The position after it: the consumer's `tail` once it is read.
    pub next: u64,
}

/// The result of an observed call, as its record carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallResult {
    pub ret: i64,
    pub errno: i32,
    pub duration_ns: u64,
}

const fn padded(len: usize) -> usize {
    (len + 7) & !7
}

impl<'a> Ring<'a> {
    /// View `words` as a ring; `None` unless it is exactly [`WORDS`] long.
    pub fn new(words: &'a [AtomicU64]) -> Option<Self> {
        (words.len() == WORDS).then_some(Ring { words })
    }

    /// Make a fresh ring (the broker, before the client sees it).
    pub fn init(self) {
        self.words[HEAD].store(0, Relaxed);
        self.words[TAIL].store(0, Relaxed);
        self.words[ACKED].store(0, Relaxed);
        self.words[MAGIC].store(MAGIC_VALUE, Release);
    }

    /// Whether the magic is in place.
    pub fn valid(self) -> bool {
        self.words[MAGIC].load(Acquire) == MAGIC_VALUE
    }

    /// The data word holding byte `pos` of the stream (always inside the data area).
    fn slot(self, pos: u64) -> &'a AtomicU64 {
        &self.words[DATA_AT + ((pos / 8) % DATA_WORDS) as usize]
    }

    /// Producer: append `frame`, stamped `mono_ns`. `on_socket` counts the one-way
    /// frames the producer has sent on the socket so far; until the broker has
    /// handled them all, the ring takes nothing.
    pub fn push(self, mono_ns: u64, frame: &[u8], on_socket: u64) -> Result<Pushed, Full> {
        self.append(mono_ns, frame, on_socket, NO_RESULT).map(|(pushed, _)| pushed)
    }

    /// Producer: [`Ring::push`] the frame of an observed call about to run, whose
    /// result [`Ring::complete`] will write into the record. Also returns where the
    /// record starts, for that.
    pub fn push_awaiting(self, mono_ns: u64, frame: &[u8], on_socket: u64) -> Result<(Pushed, u64), Full> {
        self.append(mono_ns, frame, on_socket, IN_FLIGHT)
    }

    fn append(self, mono_ns: u64, frame: &[u8], on_socket: u64, state: u64) -> Result<(Pushed, u64), Full> {
        if frame.len() > MAX_FRAME || self.words[ACKED].load(Acquire) != on_socket {
            return Err(Full);
        }
        let need = (RECORD_HEADER + padded(frame.len())) as u64;
        let head = self.words[HEAD].load(Relaxed);
        let used = head.wrapping_sub(self.words[TAIL].load(Acquire));
        // A consumer position that makes no sense (scribbled on) reads as full: the
        // frame goes on the socket and nothing is overwritten.
        if used > DATA as u64 || DATA as u64 - used < need {
            return Err(Full);
        }
        self.slot(head).store(frame.len() as u64 | state << 32, Relaxed);
        self.slot(head + 8).store(mono_ns, Relaxed);
        let mut at = head + RECORD_HEADER as u64;
        // Whole words by value (a call to memcpy per word costs more than the store).
        let words = frame.chunks_exact(8);
        let rest = words.remainder();
        for word in words {
            self.slot(at).store(le_word8(word), Relaxed);
            at += 8;
        }
        if !rest.is_empty() {
            self.slot(at).store(le_word(rest), Relaxed);
        }
        self.words[HEAD].store(head.wrapping_add(need), Release);
        let half = DATA as u64 / 2;
        Ok((if used < half && used + need >= half { Pushed::HalfFull } else { Pushed::Stored }, head))
    }

    /// Producer: the call whose record starts at `start` (from [`Ring::push_awaiting`])
    /// returned `result`. False when the consumer took the record first, or when the
    /// producer has written a ring's worth since (its room may hold newer records): the
    /// result must go in a `Done` frame.
    pub fn complete(self, start: u64, result: CallResult) -> bool {
        if self.words[HEAD].load(Relaxed).wrapping_sub(start) > DATA as u64 {
            return false;
        }
        let word0 = self.slot(start);
        let seen = word0.load(Relaxed);
        if seen >> 32 != IN_FLIGHT {
            return false;
        }
        self.slot(start + 16).store(result.ret as u64, Relaxed);
        self.slot(start + 24).store(u64::from(result.errno as u32), Relaxed);
        self.slot(start + 32).store(result.duration_ns, Relaxed);
        // Release: a consumer that sees DONE sees the result words.
        word0.compare_exchange(seen, (seen & LEN_MASK) | DONE << 32, Release, Relaxed).is_ok()
    }

    /// Whether the producer has published past what the consumer released: a cheap
    /// look before taking the consumer's lock (a wrong answer costs a lock, no more).
    pub fn has_news(self) -> bool {
        self.words[HEAD].load(Relaxed) != self.words[TAIL].load(Relaxed)
    }

    /// Consumer: the producer's published position. Records before it may be read.
    pub fn published(self) -> u64 {
        self.words[HEAD].load(Acquire)
    }

    /// Consumer: the record at `tail` (the consumer's own position), if one was
    /// published before `head` (a value of [`Ring::published`]).
    pub fn peek(self, tail: u64, head: u64) -> Result<Option<Record>, Corrupt> {
        let avail = head.wrapping_sub(tail);
        if avail == 0 {
            return Ok(None);
        }
        if avail > DATA as u64 || avail & 7 != 0 || avail < RECORD_HEADER as u64 {
            return Err(Corrupt::Head);
        }
        let word0 = self.slot(tail).load(Relaxed);
        let (len, state) = (word0 & LEN_MASK, word0 >> 32);
        let mono_ns = self.slot(tail + 8).load(Relaxed);
        if !(4..=MAX_FRAME as u64).contains(&len) || state > TAKEN {
            return Err(Corrupt::Length);
        }
        let len = len as usize;
        let need = (RECORD_HEADER + padded(len)) as u64;
        if need > avail {
            return Err(Corrupt::Length);
        }
        Ok(Some(Record { start: tail, at: tail + RECORD_HEADER as u64, len, mono_ns, next: tail + need }))
    }

    /// Consumer: copy `record`'s frame into `out` (exactly `record.len` bytes), and
    /// check its length prefix against the record.
    pub fn read(self, record: &Record, out: &mut [u8]) -> Result<(), Corrupt> {
        if out.len() != record.len {
            return Err(Corrupt::Length);
        }
        let mut at = record.at;
        let mut words = out.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.slot(at).load(Relaxed).to_le_bytes());
            at += 8;
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.slot(at).load(Relaxed).to_le_bytes();
            rest.iter_mut().zip(last).for_each(|(b, w)| *b = w);
        }
        let prefix = u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as usize;
        if prefix != record.len - 4 {
            return Err(Corrupt::Frame);
        }
        Ok(())
    }

    /// Consumer: the result written into `record` (a peeked record not yet released),
    /// if its call has returned. A record still in flight is marked taken, so that its
    /// result comes in a `Done` frame instead; `None` too for a record that carries no
    /// result. (The words are the target's: the result is only numbers to report.)
    pub fn take_result(self, record: &Record) -> Option<CallResult> {
        let word0 = self.slot(record.start);
        let mut seen = word0.load(Acquire);
        if seen >> 32 == IN_FLIGHT {
            match word0.compare_exchange(seen, (seen & LEN_MASK) | TAKEN << 32, Acquire, Acquire) {
                Ok(_) => return None,
                Err(now) => seen = now,
            }
        }
        (seen >> 32 == DONE).then(|| CallResult {
            ret: self.slot(record.start + 16).load(Relaxed) as i64,
            errno: self.slot(record.start + 24).load(Relaxed) as u32 as i32,
            duration_ns: self.slot(record.start + 32).load(Relaxed),
        })
    }

    /// Consumer: everything before `tail` is read; the producer may reuse its room.
    pub fn release(self, tail: u64) {
        self.words[TAIL].store(tail, Release);
    }

    /// Consumer: `handled` one-way frames from the socket are handled (a running
    /// count): once it matches the producer's, the producer may use the ring again.
    pub fn acknowledge(self, handled: u64) {
        self.words[ACKED].store(handled, Release);
    }

    /// Consumer: read no more (the ring broke the rules). The producer sees the ring
    /// as full from now on, and sends its frames on the socket.
    pub fn shut(self) {
        let head = self.words[HEAD].load(Relaxed);
        self.words[TAIL].store(head.wrapping_add(1 << 63), Release);
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;
    use super::*;
    use alloc::sync::Arc;
    use alloc::vec;
    use alloc::vec::Vec;

    fn fresh() -> Vec<AtomicU64> {
        let words: Vec<AtomicU64> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        Ring::new(&words).unwrap().init();
        words
    }

    /// A frame as the socket would carry it: length prefix, then `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    /// Run `produce` on the ring `words` in a thread of its own.
    fn on_producer_thread<T: Send + 'static>(
        words: &Arc<Vec<AtomicU64>>,
        produce: impl FnOnce(Ring<'_>) -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let words = Arc::clone(words);
        std::thread::spawn(move || produce(Ring::new(&words).unwrap()))
    }

    /// Every record published, read and released as the broker does.
    fn drain(ring: Ring, tail: &mut u64) -> Result<Vec<(u64, Vec<u8>)>, Corrupt> {
        let head = ring.published();
        let mut out = Vec::new();
        while let Some(rec) = ring.peek(*tail, head)? {
            let mut buf = vec![0u8; rec.len];
            ring.read(&rec, &mut buf)?;
            *tail = rec.next;
            ring.release(*tail);
            out.push((rec.mono_ns, buf));
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_across_the_wrap_many_times() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        assert!(ring.valid());
        let mut tail = 0;
        let mut n = 0u64;
        // ~7 passes over the data area, in batches, with frames of every small length.
        for batch in 0..400u64 {
            let mut sent = Vec::new();
            for i in 0..(batch % 37) + 1 {
                let body: Vec<u8> = (0..(n % 301) as u8).map(|b| b ^ i as u8).collect();
                let f = frame(&body);
                ring.push(n, &f, 0).unwrap();
                sent.push((n, f));
                n += 1;
            }
            assert!(ring.has_news());
            assert_eq!(drain(ring, &mut tail).unwrap(), sent);
            assert!(!ring.has_news());
        }
        assert!(tail > 6 * DATA as u64, "the test wrapped the ring several times ({tail} bytes)");
    }

    /// A producer thread and a consumer thread at once: every record arrives, in
    /// order, intact; a full ring only delays the producer.
    #[test]
    fn a_concurrent_producer_and_consumer_agree() {
        const N: u64 = 100_000;
        let words: Arc<Vec<AtomicU64>> = Arc::new(fresh());
        let producer = on_producer_thread(&words, |ring| {
            let mut n = 0;
            while n < N {
                let body: Vec<u8> = (0..n % 97).map(|b| (b ^ n) as u8).collect();
                if ring.push(n, &frame(&body), 0).is_ok() {
                    n += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let ring = Ring::new(&words).unwrap();
        let (mut tail, mut want) = (0, 0);
        while want < N {
            for (mono, f) in drain(ring, &mut tail).unwrap() {
                let body: Vec<u8> = (0..want % 97).map(|b| (b ^ want) as u8).collect();
                assert_eq!((mono, f), (want, frame(&body)));
                want += 1;
            }
        }
        producer.join().unwrap();
    }

    #[test]
    fn a_result_goes_into_its_record_unless_the_consumer_took_it_first() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        let result = CallResult { ret: -1, errno: 13, duration_ns: 4242 };
        let peek = |tail| ring.peek(tail, ring.published()).unwrap().unwrap();
        // Completed before the consumer looks: one record, result inside.
        let (_, at) = ring.push_awaiting(1, &frame(b"open"), 0).unwrap();
        assert!(ring.complete(at, result));
        let first = peek(0);
        assert_eq!(ring.take_result(&first), Some(result));
        // Read while the call runs: taken, and the producer is told to send a Done.
        let (_, at) = ring.push_awaiting(2, &frame(b"slow"), 0).unwrap();
        let second = peek(first.next);
        assert_eq!(ring.take_result(&second), None);
        assert!(!ring.complete(at, result), "the consumer took it: the result goes in a frame");
        assert_eq!(ring.take_result(&second), None, "taken stays taken");
        // A record pushed without a result to await carries none, and cannot get one.
        ring.push(3, &frame(b"done"), 0).unwrap();
        let third = peek(second.next);
        assert!(!ring.complete(third.start, result));
        assert_eq!(ring.take_result(&third), None);
        let mut tail = 0;
        let frames: Vec<Vec<u8>> = drain(ring, &mut tail).unwrap().into_iter().map(|(_, f)| f).collect();
        assert_eq!(frames, [frame(b"open"), frame(b"slow"), frame(b"done")], "the state bits leave lengths alone");
    }

    /// A record the producer has since written a ring's worth past (the consumer read
    /// it and its room was reused) is left alone: the result goes in a frame.
    #[test]
    fn a_record_whose_room_was_reused_gets_no_result() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        // Records of 128 bytes tile the ring: a newer one starts where it did.
        let (_, old) = ring.push_awaiting(1, &frame(&[1; 84]), 0).unwrap();
        let mut tail = 0;
        drain(ring, &mut tail).unwrap();
        while ring.published().wrapping_sub(old) <= DATA as u64 {
            ring.push_awaiting(2, &frame(&[0; 84]), 0).unwrap();
            drain(ring, &mut tail).unwrap();
        }
        let result = CallResult { ret: 3, errno: 0, duration_ns: 1 };
        assert!(!ring.complete(old, result), "its room holds newer records");
        assert_eq!(drain(ring, &mut tail), Ok(vec![]), "and nothing newer was touched");
    }

    /// The producer completes each call while the consumer reads: every result is
    /// delivered exactly once, in its record or (when the consumer won) by the producer.
    #[test]
    fn completing_and_taking_at_once_deliver_each_result_exactly_once() {
        const N: u64 = 50_000;
        let words: Arc<Vec<AtomicU64>> = Arc::new(fresh());
        let producer = on_producer_thread(&words, |ring| {
            let mut in_frames = Vec::new();
            let mut n = 0;
            while n < N {
                let Ok((_, at)) = ring.push_awaiting(n, &frame(&n.to_le_bytes()), 0) else {
                    std::thread::yield_now();
                    continue;
                };
                let result = CallResult { ret: n as i64, errno: 0, duration_ns: n };
                if !ring.complete(at, result) {
                    in_frames.push(n);
                }
                n += 1;
            }
            in_frames
        });
        let ring = Ring::new(&words).unwrap();
        let (mut tail, mut seen, mut in_records) = (0, 0, Vec::new());
        while seen < N {
            let head = ring.published();
            while let Some(rec) = ring.peek(tail, head).unwrap() {
                if let Some(r) = ring.take_result(&rec) {
                    assert_eq!((r.ret as u64, r.duration_ns), (rec.mono_ns, rec.mono_ns));
                    in_records.push(rec.mono_ns);
                }
                tail = rec.next;
                ring.release(tail);
                seen += 1;
            }
        }
        let in_frames = producer.join().unwrap();
        let mut all: Vec<u64> = in_records.iter().chain(&in_frames).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..N).collect::<Vec<_>>(), "each result once, by one way or the other");
    }

    #[test]
    fn a_full_ring_refuses_and_takes_records_again_once_drained() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        let f = frame(&[7u8; 100]);
        let mut pushed = 0;
        let mut half = 0;
        loop {
            match ring.push(pushed, &f, 0) {
                Ok(Pushed::HalfFull) => half += 1,
                Ok(Pushed::Stored) => {}
                Err(Full) => break,
            }
            pushed += 1;
        }
        assert_eq!(half, 1, "exactly one nudge on the way to full");
        assert_eq!(pushed as usize, DATA / (RECORD_HEADER + padded(f.len())));
        let mut tail = 0;
        assert_eq!(drain(ring, &mut tail).unwrap().len(), pushed as usize);
        assert!(ring.push(0, &f, 0).is_ok());
        assert_eq!(ring.push(0, &frame(&vec![0; MAX_FRAME]), 0), Err(Full), "too large for the ring");
    }

    #[test]
    fn a_scribbled_or_shut_ring_reads_as_full_to_the_producer() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        words[TAIL].store(u64::MAX / 2, Relaxed);
        assert_eq!(ring.push(0, &frame(b"x"), 0), Err(Full));
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        ring.push(0, &frame(b"x"), 0).unwrap();
        ring.shut();
        assert_eq!(ring.push(0, &frame(b"x"), 0), Err(Full));
    }

    #[test]
    fn frames_sent_on_the_socket_keep_the_ring_closed_until_handled() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        // Two frames went on the socket: the ring must not overtake them.
        assert_eq!(ring.push(0, &frame(b"x"), 2), Err(Full));
        ring.acknowledge(1);
        assert_eq!(ring.push(0, &frame(b"x"), 2), Err(Full));
        ring.acknowledge(2);
        assert_eq!(ring.push(0, &frame(b"x"), 2), Ok(Pushed::Stored));
    }

    #[test]
    fn impossible_positions_and_lengths_are_corrupt() {
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        let f = frame(b"hello");
        ring.push(1, &f, 0).unwrap();
        let head = ring.published();
        // head behind the consumer, too far ahead, or mid-word
        assert_eq!(ring.peek(head + 8, head), Err(Corrupt::Head));
        assert_eq!(ring.peek(0, DATA as u64 + 8), Err(Corrupt::Head));
        assert_eq!(ring.peek(0, 3), Err(Corrupt::Head));
        // a length over the limit, under a prefix, or past head
        for bad in [0u64, 3, MAX_FRAME as u64 + 1, u64::MAX, 200] {
            words[DATA_AT].store(bad, Relaxed);
            assert_eq!(ring.peek(0, head), Err(Corrupt::Length), "length {bad}");
        }
        // a frame whose own prefix lies
        words[DATA_AT].store(f.len() as u64, Relaxed);
        words[DATA_AT + RECORD_HEADER / 8].store(le_word(&[9, 0, 0, 0, b'h', b'e', b'l', b'l']), Relaxed);
        let rec = ring.peek(0, head).unwrap().unwrap();
        assert_eq!(ring.read(&rec, &mut vec![0; rec.len]), Err(Corrupt::Frame));
    }

    /// Hostile input: random words anywhere never make the consumer panic or read
    /// outside the ring, and every record it accepts lies inside what was published.
    #[test]
    fn random_scribbles_are_read_or_refused_cleanly() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let words = fresh();
        let ring = Ring::new(&words).unwrap();
        for round in 0..2000 {
            for i in 0..1 + next() % 8 {
                let _ = ring.push(i, &frame(&vec![round as u8; (next() % 64) as usize]), 0);
            }
            for _ in 0..next() % 4 {
                let at = match next() % 5 {
                    0 => HEAD,
                    1 => TAIL,
                    2 => ACKED,
                    _ => DATA_AT + (next() % DATA_WORDS) as usize,
                };
                let value = if next() & 1 == 0 { next() } else { next() % 512 };
                words[at].store(value, Relaxed);
            }
            let start = words[TAIL].load(Relaxed);
            let mut tail = start;
            if let Ok(records) = drain(ring, &mut tail) {
                let len: u64 = records.iter().map(|(_, f)| (RECORD_HEADER + padded(f.len())) as u64).sum();
                assert!(len <= DATA as u64 && tail.wrapping_sub(start) == len);
            }
        }
    }
}
