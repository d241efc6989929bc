//! A client thread's lane: the state its frames are handled against (its calls
//! awaiting results, the processes it spoke for) and its event ring
//! ([`hermes_wire::ring`]), whose records are handled exactly like the one-way frames
//! the socket carries.
//!
//! A ring is read (drained):
//! 1. before each frame that arrives on its connection's socket, so the thread's
//!    frames are handled in the order it sent them (a record the ring had no room
//!    for went on the socket after everything already in the ring);
//! 2. when the connection ends (the thread exited, exec'd, or was killed): the broker
//!    keeps its own mapping, so nothing the thread published is lost;
//! 3. periodically ([`Lanes::read_periodically`]), so a thread that has stopped
//!    calling still has its events traced and observed promptly; but not once its
//!    process is gone, since the working directory its relative paths need is then
//!    only in the Exit frame that may still be on its way (rules 2 and 6 read it);
//! 4. when the client nudges ([`hermes_wire::ClientMsg::Nudge`]): a socket frame, so
//!    rule 1 covers it;
//! 5. before a call of the same process is decided: every ring of that process, so
//!    what the policy reads (`hermes.fd`, built from results) includes everything
//!    the process published before the call. A thread writes into a ring it made as
//!    soon as its Hello is sent, so the call says how many such rings its process
//!    image had passed ([`hermes_wire::Call::rings`]), and their Hellos are read first
//!    ([`Lanes::await_rings`]);
//! 6. when the process says it is exiting ([`hermes_wire::ClientMsg::Exit`], or the
//!    `Flush` round trip when it could not name its working directory): every ring
//!    of that process, its threads' working directories kept first for the relative
//!    paths still unread.
//!
//! Readers of one ring (its connection's thread, the periodic drainer, another
//! connection deciding a call) take the lane's lock. The lock is never held while a
//! policy decides, and a lane's reader takes no other lane's lock, so readers cannot
//! deadlock.
//!
//! The ring is the target's memory: a ring that breaks the rules is reported once
//! (stderr and a `ring_error` line in the trace), shut (its producer then sees it full
//! and sends on the socket) and never read again.

use std::collections::HashMap;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use hermes_wire::ring::{self, Ring};
use hermes_wire::{self as wire, Call, ClientMsg, Layer};

use crate::event::{monotonic_ns, Event, EventArgs, ProcInfo};
use crate::policy::{self, Outcome, Verdict};
use crate::resolve::{Links, Viewer};
use crate::server::{ClientFrame, Shared};
use crate::shm::{self, Mapping};
use crate::state::alive;
use crate::trace::{CallResult, Record, Sink};

/// How often every ring is read while rings have news.
const PERIOD: Duration = Duration::from_millis(10);
/// How often at the least while rings are listed: each look that finds no news
/// doubles the period up to this.
const QUIET_PERIOD: Duration = Duration::from_millis(250);
/// Calls in flight per connection whose results are still awaited.
const MAX_PENDING: usize = 256;
/// Processes whose /proc details a connection keeps.
const MAX_PROCS: usize = 4096;

/// The broker's mapping of one event ring.
pub struct RingMap(Mapping);

impl RingMap {
    /// A fresh ring, and the descriptor to hand its client. Sealed against resizing,
    /// which the broker's mapping could not survive; a kernel that cannot seal gets no
    /// ring.
    pub fn create() -> io::Result<(RingMap, OwnedFd)> {
        let (fd, mapping) = shm::memfd(c"hermes-ring", ring::SIZE)?;
        shm::seal(&fd, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL)?;
        let map = RingMap(mapping);
        map.ring().ok_or_else(|| io::Error::other("ring mapping of the wrong size"))?.init();
        Ok((map, fd))
    }

    /// The ring a client made and passed with its Hello: a memfd of the ring's size,
    /// sealed against resizing, that the client has set up.
    pub fn adopt(fd: &OwnedFd) -> io::Result<RingMap> {
        let map = RingMap(shm::adopt(fd, ring::SIZE)?);
        match map.ring() {
            Some(ring) if ring.valid() => Ok(map),
            _ => Err(io::Error::other("not an event ring")),
        }
    }

    fn ring(&self) -> Option<Ring<'_>> {
        Ring::new(self.0.words())
    }
}

/// One connection's handling state and ring.
pub struct Lane {
    /// The process the connection speaks for (SO_PEERCRED); the tracer's lane speaks
    /// for many, named in each call.
    peer_pid: i32,
    /// The thread, as the Hello gave it (for diagnostics).
    tid: i32,
    /// The process image's stamp, as the Hello gave it ([`wire::Hello::image`]).
    image: u32,
    layer: Layer,
    ring: Option<RingMap>,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    /// What was read of each (pid, image) seen on this connection.
    procs: HashMap<(i32, u32), ProcInfo>,
    /// Allowed calls waiting for their `Done`, oldest first. More than one when calls
    /// nest (a hooked library function that opens a file) or, for the tracer's single
    /// connection, when several tracees have calls in flight.
    /// Boxed: a record is some 700 bytes, and moving it in and out by value cost more
    /// than the allocation.
    pending: Vec<(u32, Box<Record>)>,
    /// How far the ring has been read (ours: the ring's own word is the target's).
    tail: u64,
    /// One-way frames handled from the socket (the ring stays closed to its producer
    /// until it has heard that all it sent there are).
    from_socket: u64,
    /// The ring broke the rules: it is not read again.
    broken: bool,
    /// The frame being handled, copied out of the ring.
    frame: Vec<u8>,
    /// Trace lines made while the lane is held, written when it is let go.
    lines: Vec<u8>,
    /// Symlinks read for the observed calls of the batch being read.
    links: Links,
}

/// A lane's state, held. The trace lines made meanwhile (a ring's worth, often) are
/// written in one go when it is let go, in the order they were made.
struct Held<'a> {
    state: MutexGuard<'a, LaneState>,
    sink: &'a Sink,
}

impl Deref for Held<'_> {
    type Target = LaneState;
    fn deref(&self) -> &LaneState {
        &self.state
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut LaneState {
        &mut self.state
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.sink.write_lines(&mut self.state.lines);
    }
}

/// Whether a reader waits for a lane another reader holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It must have read everything published so far (rules 1, 2, 5).
    Yes,
    /// Whoever holds the lane is reading it anyway (rule 3).
    No,
}

impl Lane {
    /// The lane of a connection whose Hello was just read. What its events will carry
    /// of the preload's process (its parent, its executable) is taken now, even those
    /// read after it has gone: from /proc while it still shows the image that sent the
    /// Hello, else from the Hello (the process may have exited or exec'd meanwhile: a
    /// client that needs no answer does not wait for its Welcome).
    pub fn new(shared: &Shared, peer_pid: i32, hello: &wire::Hello<'_>, ring: Option<RingMap>) -> Self {
        let (tid, image, layer) = (hello.tid, hello.image, hello.layer);
        let lane = Lane { peer_pid, tid, image, layer, ring, state: Mutex::default() };
        if layer == Layer::Preload {
            // Its parent's pid is only ours to use when the process sees pids as we do.
            let ppid = if hello.pid == peer_pid { hello.ppid } else { 0 };
            let told = ProcInfo { ppid, exe: hello.exe.to_vec() };
            lane.hold(shared).process(shared, layer, peer_pid, 0, &told);
        }
        lane
    }

    fn hold<'a>(&'a self, shared: &'a Shared) -> Held<'a> {
        Held { state: self.state.lock().unwrap_or_else(|e| e.into_inner()), sink: &shared.sink }
    }

    fn has_news(&self) -> bool {
        self.ring.as_ref().and_then(RingMap::ring).is_some_and(Ring::has_news)
    }

    /// The process the connection speaks for (the tracer's: its own).
    pub fn peer_pid(&self) -> i32 {
        self.peer_pid
    }

    /// The thread whose connection this is.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The process a call comes from: the kernel's word on who is calling beats the
    /// message's, for the preload.
    pub fn caller(&self, call: &Call<'_, Vec<&[u8]>>) -> i32 {
        if self.layer == Layer::Preload {
            self.peer_pid
        } else {
            call.pid
        }
    }

    /// Read what the ring holds now; whether there was something to read (or another
    /// reader was at it).
    pub fn drain(&self, shared: &Shared, wait: Wait) -> bool {
        if !self.has_news() {
            return false;
        }
        let mut held = match (wait, self.state.try_lock()) {
            (_, Ok(state)) => Held { state, sink: &shared.sink },
            (_, Err(TryLockError::Poisoned(e))) => Held { state: e.into_inner(), sink: &shared.sink },
            (Wait::No, Err(TryLockError::WouldBlock)) => return true,
            (Wait::Yes, Err(TryLockError::WouldBlock)) => self.hold(shared),
        };
        held.drain(self, shared, wait)
    }

    /// A one-way frame from the socket: read the ring first, since everything in it
    /// was sent before; then tell the producer it may use the ring again, if this was
    /// the last of the frames it sent on the socket.
    pub fn socket_frame(&self, shared: &Shared, msg: &ClientFrame<'_>) -> Result<(), &'static str> {
        let mut state = self.hold(shared);
        state.drain(self, shared, Wait::Yes);
        let counted = matches!(msg, ClientMsg::Observe(_) | ClientMsg::Done(_));
        state.one_way(self, shared, msg, None)?;
        if let (true, Some(ring)) = (counted, self.ring.as_ref().and_then(RingMap::ring)) {
            state.from_socket += 1;
            ring.acknowledge(state.from_socket);
        }
        Ok(())
    }

    /// The event for a call to decide.
    pub fn event(&self, shared: &Shared, call: &Call<'_, Vec<&[u8]>>) -> Event {
        self.hold(shared).event(self, shared, call, false)
    }

    /// Answer a decided call with `send`, and keep its record until its result comes;
    /// `started`: when the call was read, for the record's latency.
    /// The lane is held while the answer goes out: the result may come back through
    /// the ring at once, and whoever reads it must find the record waiting. A call
    /// whose result will not come (denied, emulated, or results not reported) is
    /// traced before it is answered: what the answer lets the program do next, in any
    /// of its processes, must not be traced before it.
    pub fn answer(
        &self,
        shared: &Shared,
        (seq, started): (u32, Instant),
        mut record: Record,
        send: impl FnOnce(&Record) -> Result<(), crate::server::ConnError>,
    ) -> Result<(), crate::server::ConnError> {
        let mut state = self.hold(shared);
        if awaits_result(shared, &record) {
            let sent = send(&record);
            record.latency = started.elapsed();
            state.await_result(shared, seq, record);
            return sent;
        }
        record.latency = started.elapsed();
        let state = &mut *state;
        shared.sink.emit_into(&record, &mut state.lines);
        shared.sink.write_lines(&mut state.lines);
        send(&record)
    }

    /// The connection ended: read what is left in the ring, and write the records
    /// whose results will not come.
    pub fn close(&self, shared: &Shared) {
        let mut state = self.hold(shared);
        state.drain(self, shared, Wait::Yes);
        for (_, record) in std::mem::take(&mut state.pending) {
            ran_unreported(shared, &record);
            shared.sink.emit_into(&record, &mut state.lines);
        }
    }
}

/// An observed exec ran (at `at`, CLOCK_MONOTONIC): its program is the process's.
fn kept_exec(shared: &Shared, event: &Event, at: u64) {
    if let EventArgs::Exec { path, argv, .. } = &event.args {
        shared.engine.state().exec(event.pid, path, argv, at);
    }
}

/// `record` is traced without the result it waited for: an observed exec that sent
/// none ran (its connection closed with its image).
fn ran_unreported(shared: &Shared, record: &Record) {
    if record.observed {
        kept_exec(shared, &record.event, record.event.mono_ns);
    }
}

/// How a one-way frame came through the ring.
struct Ringed {
    /// The client's clock when it wrote the record.
    mono_ns: u64,
    /// When the ring was read.
    read_at: ReadAt,
    /// The result the record carried (an observed call that had returned).
    result: Option<ring::CallResult>,
}

/// When a ring is read: the wall clock and CLOCK_MONOTONIC, read together once for
/// all the records of that read (two clock reads per read, not per record).
#[derive(Clone, Copy)]
struct ReadAt {
    wall: SystemTime,
    mono_ns: u64,
}

impl ReadAt {
    fn now() -> Self {
        ReadAt { mono_ns: monotonic_ns(), wall: SystemTime::now() }
    }

    /// The wall-clock time of `mono_ns`, a moment (before the read) on CLOCK_MONOTONIC.
    fn wall_time(self, mono_ns: u64) -> SystemTime {
        let age = Duration::from_nanos(self.mono_ns.saturating_sub(mono_ns));
        self.wall.checked_sub(age).unwrap_or(self.wall)
    }
}

impl LaneState {
    /// Read the ring; whether it held a record. (A shut ring, or one whose process is
    /// gone, can look unread for the rest of its connection: it holds none for this
    /// reader.)
    fn drain(&mut self, lane: &Lane, shared: &Shared, wait: Wait) -> bool {
        self.links.clear(); // a new batch
        let Some(ring) = lane.ring.as_ref().and_then(RingMap::ring) else { return false };
        if self.broken {
            return false;
        }
        // The periodic reader leaves the ring of a process already gone to whoever
        // reads the end of its connection: the Exit frame that may be on its way
        // names the working directory the relative paths start from, which /proc no
        // longer shows.
        if wait == Wait::No && self.links.lost_cwd(Viewer { pid: lane.peer_pid, tid: lane.tid }) {
            return false;
        }
        // Only what is published now: a producer that never stops cannot keep a
        // reader here forever.
        let head = ring.published();
        let read_at = ReadAt::now();
        let mut read_any = false;
        loop {
            let record = match ring.peek(self.tail, head) {
                Ok(Some(record)) => record,
                Ok(None) => return read_any,
                Err(e) => {
                    self.corrupt(lane, shared, ring, e.text());
                    return read_any;
                }
            };
            read_any = true;
            let mut frame = std::mem::take(&mut self.frame);
            frame.resize(record.len, 0);
            let read = ring.read(&record, &mut frame);
            // Before the record's room is released: an observed call's result, if it
            // is in the record; else the record is marked taken and a Done will bring it.
            let result = ring.take_result(&record);
            self.tail = record.next;
            ring.release(self.tail);
            let handled = match read {
                Ok(()) => match wire::decode::<ClientFrame>(&frame[4..]) {
                    Ok(msg) => {
                        self.one_way(lane, shared, &msg, Some(Ringed { mono_ns: record.mono_ns, read_at, result }))
                    }
                    Err(_) => Err("a malformed frame"),
                },
                Err(e) => Err(e.text()),
            };
            self.frame = frame;
            if let Err(why) = handled {
                self.corrupt(lane, shared, ring, why);
                return true;
            }
        }
    }

    fn corrupt(&mut self, lane: &Lane, shared: &Shared, ring: Ring<'_>, why: &str) {
        self.broken = true;
        ring.shut();
        eprintln!(
            "hermes: broker: the event ring of pid {} (tid {}) is corrupt ({why}); it is ignored from now on",
            lane.peer_pid, lane.tid
        );
        shared.sink.write_lines(&mut self.lines); // what was read before, first
        shared.sink.ring_error(lane.peer_pid, lane.tid, why);
    }

    /// Handle a one-way frame; `ringed` when it came through the ring. A frame that is
    /// not one-way is refused.
    fn one_way(
        &mut self,
        lane: &Lane,
        shared: &Shared,
        msg: &ClientFrame<'_>,
        ringed: Option<Ringed>,
    ) -> Result<(), &'static str> {
        match msg {
            ClientMsg::Observe(call) => {
                let engine = &shared.engine;
                // Whether anything would see the event: a trace, -v, a shadow policy.
                // Building it resolves the path (a readlink per new name when no result
                // says what a descriptor is): not for nobody, unless it is an exec,
                // whose program is policy state to keep.
                let seen = engine.reports() || engine.has_shadow();
                if !seen && call.args.op() != wire::Op::Exec {
                    return Ok(());
                }
                let mut event = self.event(lane, shared, call, true);
                // It ran before it was told (one that works does not return): the
                // process's program, as `hermes.process` tells it, is the broker's to
                // keep whoever watches; unless the record says it failed. On the socket
                // its result is yet to come when results are reported (a Done if it
                // failed, else the connection's end): kept then ([`kept_exec`]).
                let failed = ringed.as_ref().and_then(|r| r.result).is_some_and(|r| r.ret < 0);
                let later = ringed.is_none() && engine.reports();
                if !failed && !later {
                    let at = ringed.as_ref().map_or(event.mono_ns, |r| r.mono_ns);
                    kept_exec(shared, &event, at);
                }
                if !seen {
                    return Ok(());
                }
                let time = match &ringed {
                    // The event happened when the client wrote it, not when we read it.
                    Some(r) => {
                        event.mono_ns = r.mono_ns;
                        r.read_at.wall_time(r.mono_ns)
                    }
                    None => SystemTime::now(),
                };
                let outcome = Outcome::fixed(Verdict::Allow, engine.observer(event.op), None);
                engine.observed(&event, &outcome);
                let mut record = record(event, outcome, engine.hash(), time);
                record.observed = true;
                match ringed.and_then(|r| r.result) {
                    // The call had returned, its result in its record: no Done to wait for.
                    Some(r) => {
                        let done = wire::Done { seq: call.seq, ret: r.ret, errno: r.errno, duration_ns: r.duration_ns };
                        self.finish_and_emit(shared, &mut record, &done);
                    }
                    None => self.await_result(shared, call.seq, record),
                }
            }
            ClientMsg::Done(done) => {
                if let Some(at) = self.pending.iter().position(|(seq, _)| *seq == done.seq) {
                    let (_, mut record) = self.pending.remove(at);
                    self.finish_and_emit(shared, &mut record, done);
                }
            }
            // The ring was read before this frame was handled.
            ClientMsg::Nudge => {}
            ClientMsg::Call(_) | ClientMsg::Flush { .. } => return Err("a frame that waits for an answer"),
            ClientMsg::Exit { .. } => return Err("an Exit off the socket"),
            ClientMsg::Hello(_) => return Err("a second Hello"),
        }
        Ok(())
    }

    /// The event for `call`; `observed`: the call ran before we read it.
    fn event(&mut self, lane: &Lane, shared: &Shared, call: &Call<'_, Vec<&[u8]>>, observed: bool) -> Event {
        let pid = lane.caller(call);
        let proc = self.process(shared, lane.layer, pid, call.image, &ProcInfo::default());
        let (func, tid, layer, args) = (call.func, call.tid, lane.layer, &call.args);
        let event = if observed {
            let state = shared.engine.state();
            Event::observed(
                func,
                Viewer { pid, tid },
                layer,
                proc,
                args,
                |fd| state.recorded_dir(pid, fd),
                Some(&mut self.links),
            )
        } else {
            Event::new(func, pid, tid, layer, proc, args)
        };
        event.with_context(&call.ctx, shared.engine.wants().maps)
    }

    /// What /proc said of `pid` when it was first seen on this connection (or, once
    /// /proc shows it no more, what it said of itself: `told`).
    fn process(&mut self, shared: &Shared, layer: Layer, pid: i32, image: u32, told: &ProcInfo) -> ProcInfo {
        // A preload connection lives in one process image (it is close-on-exec); the
        // tracer's single connection sees many, numbered by `image`.
        let key = (pid, if layer == Layer::Preload { 0 } else { image });
        if let Some(info) = self.procs.get(&key) {
            return info.clone();
        }
        let info = shared.engine.state().seen(pid, told);
        if self.procs.len() >= MAX_PROCS {
            self.procs.clear();
        }
        self.procs.insert(key, info.clone());
        info
    }

    /// The call of `record` ran, with the result `done`: trace it.
    fn finish_and_emit(&mut self, shared: &Shared, record: &mut Record, done: &wire::Done) {
        finish(shared, record, done);
        shared.sink.emit_into(record, &mut self.lines);
    }

    /// Hold the record until the call's `Done`, when results are reported and the
    /// call runs; else write it now.
    fn await_result(&mut self, shared: &Shared, seq: u32, record: Record) {
        if awaits_result(shared, &record) {
            if self.pending.len() >= MAX_PENDING {
                // A client that never reports: keep the trace flowing.
                let (_, oldest) = self.pending.remove(0);
                ran_unreported(shared, &oldest);
                shared.sink.emit_into(&oldest, &mut self.lines);
            }
            self.pending.push((seq, Box::new(record)));
        } else {
            shared.sink.emit_into(&record, &mut self.lines);
        }
    }
}

/// Whether a `Done` will bring `record`'s result: results are reported, and the
/// call runs.
fn awaits_result(shared: &Shared, record: &Record) -> bool {
    record.implied_result().is_none() && shared.engine.reports()
}

/// The record of a decided (or observed) event.
pub fn record(event: Event, outcome: Outcome, policy_hash: Arc<str>, time: SystemTime) -> Record {
    if let Some(error) = &outcome.error {
        eprintln!("hermes: policy error, call denied (EPERM): {error}");
    }
    let redirected_to = policy::redirect_target(&event, &outcome.verdict);
    Record { time, event, outcome, redirected_to, policy_hash, latency: Duration::ZERO, result: None, observed: false }
}

/// The call ran: record its result and learn from it.
fn finish(shared: &Shared, record: &mut Record, done: &wire::Done) {
    record.result =
        Some(CallResult { ret: done.ret, errno: done.errno, duration: Duration::from_nanos(done.duration_ns) });
    let state = shared.engine.state();
    let (pid, at) = (record.event.pid, record.event.mono_ns);
    match &record.event.args {
        // fopen and freopen return a FILE *, not a descriptor.
        crate::event::EventArgs::Open { path, .. } if done.ret >= 0 && !returns_file_pointer(&record.event.func) => {
            match &record.outcome.verdict {
                Verdict::Redirect(to) => state.opened(pid, done.ret, to, at),
                _ => state.opened(pid, done.ret, path, at),
            }
        }
        crate::event::EventArgs::Connect { fd, addr } if done.ret == 0 || done.errno == libc::EINPROGRESS => {
            state.connected(pid, *fd, record.redirected_to.as_ref().unwrap_or(addr), at)
        }
        _ => {}
    }
}

fn returns_file_pointer(func: &str) -> bool {
    func.starts_with("fopen") || func.starts_with("freopen")
}

/// The lanes with rings, by process, and the rings each process image has passed.
#[derive(Default)]
pub struct Lanes {
    listed: Mutex<Listed>,
    /// Signalled when an image's passed ring is counted.
    counted: Condvar,
    /// Signalled when a ring is listed while the periodic reader sleeps for want of one.
    listing: Condvar,
}

#[derive(Default)]
struct Listed {
    by_pid: HashMap<i32, Vec<Arc<Lane>>>,
    /// The periodic reader waits for a ring to be listed.
    reader_asleep: bool,
    /// Per pid, its latest images (stamp, rings passed with their Hellos): an exec'd
    /// image's new Hellos may be read before the old one's last.
    passed: HashMap<i32, Vec<(u32, u32)>>,
}

/// Images of one pid whose ring counts are kept.
const IMAGES_PER_PID: usize = 4;
/// Pids whose ring counts are kept beyond their lanes' lifetimes.
const MAX_COUNTED: usize = 4096;
/// The longest a decision waits for Hellos its call says were sent: only a Hello the
/// broker will never read (a client killed mid-write) makes it wait this long.
const HELLO_WAIT: Duration = Duration::from_secs(1);

impl Lanes {
    fn map(&self) -> MutexGuard<'_, Listed> {
        self.listed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start reading `lane`'s ring periodically and before its process's calls, and
    /// count the ring its Hello passed (`passed`), used or not ([`Lanes::await_rings`]).
    pub fn add(&self, lane: &Arc<Lane>, passed: bool) {
        if lane.ring.is_none() && !passed {
            return;
        }
        let mut listed = self.map();
        if lane.ring.is_some() {
            listed.by_pid.entry(lane.peer_pid).or_default().push(Arc::clone(lane));
            if listed.reader_asleep {
                listed.reader_asleep = false;
                self.listing.notify_one();
            }
        }
        if passed {
            if listed.passed.len() >= MAX_COUNTED && !listed.passed.contains_key(&lane.peer_pid) {
                // Processes gone without an Exit (killed, or exec'd into a program
                // without the preload): keep the counts of the living.
                let Listed { by_pid, passed, .. } = &mut *listed;
                passed.retain(|pid, _| by_pid.contains_key(pid) || alive(*pid));
            }
            let images = listed.passed.entry(lane.peer_pid).or_default();
            match images.iter_mut().find(|(image, _)| *image == lane.image) {
                Some((_, n)) => *n += 1,
                None => {
                    if images.len() >= IMAGES_PER_PID {
                        images.remove(0);
                    }
                    images.push((lane.image, 1));
                }
            }
            self.counted.notify_all();
        }
    }

    pub fn remove(&self, lane: &Arc<Lane>) {
        let mut listed = self.map();
        let by_pid = &mut listed.by_pid;
        if let Some(lanes) = by_pid.get_mut(&lane.peer_pid) {
            lanes.retain(|l| !Arc::ptr_eq(l, lane));
            if lanes.is_empty() {
                by_pid.remove(&lane.peer_pid);
            }
        }
    }

    /// Wait until `rings` rings that `lane`'s process image passed with its Hellos
    /// are counted ([`Lanes::add`]), or `HELLO_WAIT` has passed: a call or an exit
    /// says how many the image had passed when it was sent, and their lanes must be
    /// listed before the process's rings are read (rules 5 and 6).
    pub fn await_rings(&self, lane: &Lane, rings: u32) {
        if rings == 0 || lane.layer != Layer::Preload {
            return;
        }
        let counted = |listed: &mut Listed| {
            let images = listed.passed.get(&lane.peer_pid);
            images.and_then(|i| i.iter().find(|(image, _)| *image == lane.image)).map_or(0, |&(_, n)| n)
        };
        let listed = self.map();
        let _ = self
            .counted
            .wait_timeout_while(listed, HELLO_WAIT, |listed| counted(listed) < rings)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// `lane`'s process image has exited: forget its count.
    pub fn forget_image(&self, lane: &Lane) {
        let mut listed = self.map();
        let passed = &mut listed.passed;
        if let Some(images) = passed.get_mut(&lane.peer_pid) {
            images.retain(|(image, _)| *image != lane.image);
            if images.is_empty() {
                passed.remove(&lane.peer_pid);
            }
        }
    }

    /// Lanes with something to read (of `pid`, or of every process).
    fn with_news(&self, pid: Option<i32>) -> Vec<Arc<Lane>> {
        let listed = self.map();
        let by_pid = &listed.by_pid;
        let pick = |lanes: &Vec<Arc<Lane>>| lanes.iter().filter(|l| l.has_news()).cloned().collect::<Vec<_>>();
        match pid {
            Some(pid) => by_pid.get(&pid).map(pick).unwrap_or_default(),
            None => by_pid.values().flat_map(pick).collect(),
        }
    }

    /// `pid` is about to exit: keep the working directory of each of its threads with
    /// calls still unread, for them to resolve against once it is gone. `exiting`: the
    /// thread that says so and the directory it gave; the others' are read from /proc,
    /// or are that one when /proc no longer shows them (threads share one unless they
    /// unshared it).
    pub fn pin_cwds(&self, shared: &Shared, pid: i32, exiting: Option<(i32, &[u8])>) {
        for lane in self.with_news(Some(pid)) {
            let links = &mut lane.hold(shared).links;
            match exiting {
                Some((tid, cwd)) if tid == lane.tid => links.pin(tid, cwd),
                _ if links.pin_cwd(Viewer { pid, tid: lane.tid }) => {}
                Some((_, cwd)) => links.pin(lane.tid, cwd),
                None => {}
            }
        }
    }

    /// Read every ring of `pid` (rule 5), waiting for readers that hold one.
    pub fn drain_process(&self, shared: &Shared, pid: i32) {
        for lane in self.with_news(Some(pid)) {
            lane.drain(shared, Wait::Yes);
        }
    }

    /// Read every ring nobody is reading (rule 3); whether any held a record.
    fn drain_all(&self, shared: &Shared) -> bool {
        let mut read = false;
        for lane in self.with_news(None) {
            read |= lane.drain(shared, Wait::No);
        }
        read
    }

    /// The periodic reader's thread (rule 3): a look every [`PERIOD`] while rings have
    /// news, less often while they have none, and none while no ring is listed. A
    /// thread woken 100 times a second takes the CPU from the target's own threads
    /// on a small machine: tar under a policy that decides nothing ran ~4 % slower
    /// for the broker's two periodic threads.
    pub fn read_periodically(&self, shared: &Shared) -> ! {
        let mut period = PERIOD;
        loop {
            let mut listed = self.map();
            while listed.by_pid.is_empty() {
                listed.reader_asleep = true;
                listed = self.listing.wait(listed).unwrap_or_else(|e| e.into_inner());
                period = PERIOD;
            }
            drop(listed);
            std::thread::sleep(period);
            period = if self.drain_all(shared) { PERIOD } else { (period * 2).min(QUIET_PERIOD) };
        }
    }
}
