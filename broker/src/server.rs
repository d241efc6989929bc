//! The broker's socket: one connection per target thread, one server thread per
//! connection, taken from the threads waiting in accept ([`Acceptors`]). Each
//! connection is a typed exchange: `Hello` (with the client's event ring attached, or
//! asking for one) → `Welcome` (with the ring made here attached, if that was asked),
//! then any number of `Call` → `Reply`, with one-way `Observe`s and `Done`s, on the
//! socket or through the ring ([`crate::lane`]). A client may send its first call
//! right after its Hello, and one with a ring of its own write into it, before the
//! Welcome; a client whose first frame is an observed exec sends it after its Hello
//! on a connection without a ring, and may be gone before the Welcome is sent.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hermes_wire::{self as wire, Call, ClientMsg, Decision, Doors, Layer, Reply, Welcome};

use crate::engine::{Engine, Late};
use crate::event::EventArgs;
use crate::lane::{self, Lane, Lanes, RingMap};
use crate::policy::{ApiHook, Outcome, Policy, Verdict};
use crate::trace::{Record, Sink};

pub(crate) type ClientFrame<'a> = ClientMsg<'a, Vec<&'a [u8]>>;

/// Why a connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Reading or writing the socket failed (the peer is usually gone).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer belongs to another user.
    #[error("peer uid {0} is not ours")]
    Foreign(u32),
    /// A frame that does not decode, is too large, or arrives out of turn.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

impl ConnError {
    /// The client went away: it exited, exec'd, or was killed.
    fn peer_gone(&self) -> bool {
        let gone = [io::ErrorKind::UnexpectedEof, io::ErrorKind::BrokenPipe, io::ErrorKind::ConnectionReset];
        matches!(self, ConnError::Io(io) if gone.contains(&io.kind()))
    }
}

/// State shared by all connections.
pub struct Shared {
    pub(crate) engine: Engine,
    pub(crate) sink: Arc<Sink>,
    /// The connections' lanes that have event rings.
    lanes: Lanes,
    live: Mutex<usize>,
    idle: Condvar,
    next_id: AtomicUsize,
    /// Server threads waiting in accept.
    acceptors: AtomicUsize,
    /// The listening socket, to see connections still waiting to be accepted.
    listening: RawFd,
    /// The run's launcher: its descendants are served whatever user they run as.
    session: Option<i32>,
}

/// A bound, ready broker.
pub struct Broker {
    listener: UnixListener,
    engine: Engine,
    sink: Sink,
    /// Policy settings fixed at start (hooks, doors), which a reload cannot change.
    hooks: Vec<ApiHook>,
    doors: Doors,
    session: Option<i32>,
}

impl Broker {
    /// Bind the abstract socket `name` (no file on disk, nothing to clean up). No
    /// thread starts until [`Broker::spawn`], so the caller may still fork.
    pub fn bind(name: &[u8], policy: Policy, sink: Sink) -> io::Result<Self> {
        let addr = SocketAddr::from_abstract_name(name)?;
        let listener = UnixListener::bind_addr(&addr)?;
        let (hooks, doors) = (policy.hooks().to_vec(), policy.doors());
        let engine = Engine::new(policy, sink.wants_results())?;
        Ok(Broker { listener, engine, sink, hooks, doors, session: None })
    }

    /// Serve the descendants of `pid` (the run's launcher) whatever user they run as: a
    /// program of the run that drops its privileges (a server started by root that
    /// becomes nobody) stays mediated. Other processes are served only when they run as
    /// the broker's user, or root.
    pub fn admit_descendants_of(&mut self, pid: i32) {
        self.session = Some(pid);
    }

    /// Poll instead of sleeping, for up to `spin`, where an answer or a call is due
    /// soon: a client for the answer to its call, a connection for the next call of a
    /// thread whose calls have been coming quickly. Waking a sleeping thread costs tens
    /// of microseconds on a virtual machine, several times a decision; on one CPU
    /// polling only delays the side it waits for, so give zero there.
    pub fn set_spin(&self, spin: Duration) {
        self.engine.set_spin(spin);
    }

    /// Operations decided with a round trip.
    pub fn mask(&self) -> u64 {
        self.engine.decided()
    }

    /// Operations only observed.
    pub fn observe(&self) -> u64 {
        self.engine.observe()
    }

    /// The policy's settings for the seccomp filter.
    pub fn doors(&self) -> Doors {
        self.doors
    }

    /// Where the run's processes find the board.
    pub fn board_path(&self) -> String {
        self.engine.board_path()
    }

    /// Tie the board to the calling thread's life, so that the run's processes learn of
    /// the broker's death from it ([`hermes_wire::board::BROKER`]). Call it from the
    /// thread that lives as long as the broker, before any process can be told the
    /// broker is ready: one that reached the board before would see no broker to
    /// outlive, and carry on past its death.
    pub fn watch_over_board(&self) -> io::Result<()> {
        self.engine.watch_over_board()
    }

    /// The library functions the policy hooks.
    pub fn hooks(&self) -> &[ApiHook] {
        &self.hooks
    }

    /// Evaluate `policy` beside the enforced one and record where they differ.
    pub fn set_shadow(&self, policy: Policy) {
        self.engine.set_shadow(policy);
    }

    /// Start serving connections on a background thread; returns a handle to reload
    /// the policy and to drain the connections.
    pub fn spawn(self) -> io::Result<Handle> {
        let Broker { listener, engine, sink, session, .. } = self;
        let sink = Arc::new(sink);
        engine.start(&sink)?;
        let listening = listener.as_raw_fd();
        let shared = Arc::new(Shared {
            engine,
            sink,
            lanes: Lanes::default(),
            live: Mutex::new(0),
            idle: Condvar::new(),
            next_id: AtomicUsize::new(0),
            acceptors: AtomicUsize::new(0),
            listening,
            session,
        });
        let draining = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("hermes-rings".into())
            .spawn(move || draining.lanes.read_periodically(&draining))?;
        Acceptors::spawn(Arc::clone(&shared), Arc::new(listener))?;
        Ok(Handle { shared })
    }
}

/// The server threads. Each waits in accept, serves the connection it gets until it
/// ends, and waits again; the kernel hands a new connection to one waiting thread. So
/// a new process's first call costs one wake-up, not an accept thread's wake-up and
/// then a new thread's start. There is always a thread waiting: the one that takes
/// the last waiting place starts another before it serves.
struct Acceptors;

/// Threads kept waiting once their connections have ended; more exit.
const MAX_WAITING: usize = 8;

impl Acceptors {
    fn spawn(shared: Arc<Shared>, listener: Arc<UnixListener>) -> io::Result<()> {
        shared.acceptors.fetch_add(1, Ordering::AcqRel);
        let counted = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("hermes-conn".into())
            .spawn(move || Self::serve(shared, listener))
            .inspect_err(|_| {
                counted.acceptors.fetch_sub(1, Ordering::AcqRel);
            })
            .map(drop)
    }

    fn serve(shared: Arc<Shared>, listener: Arc<UnixListener>) {
        loop {
            Priority::Background.set();
            let accepted = listener.accept();
            *lock(&shared.live) += 1;
            let last = shared.acceptors.fetch_sub(1, Ordering::AcqRel) == 1;
            let replaced = !last || Self::spawn(Arc::clone(&shared), Arc::clone(&listener)).is_ok();
            match accepted {
                // Without a thread left waiting, a long connection here would leave
                // new ones unanswered: this one is dropped (its calls fail closed).
                Ok((stream, _)) if replaced => Self::connection(&shared, stream),
                Ok(_) => eprintln!("hermes: broker: cannot start a server thread: a connection was dropped"),
                // Out of descriptors, say: let some close before trying again.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
            shared.connection_closed();
            // The last thread waits again whatever the count.
            if replaced && shared.acceptors.load(Ordering::Acquire) >= MAX_WAITING {
                return;
            }
            shared.acceptors.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn connection(shared: &Shared, stream: UnixStream) {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = Connection::new(shared, stream).and_then(|c| c.run()) {
            // The client went away (exited, or was killed): not worth a word.
            if !e.peer_gone() {
                eprintln!("hermes: broker: connection {id}: {e}");
            }
        }
    }
}

/// How a server thread's wake-ups compete with the program it serves. A new process's
/// connection wakes a thread waiting in accept, usually on the CPU of the process that
/// connected (the kernel's guess that the waker will sleep soon): in the background
/// (SCHED_BATCH) it does not preempt that process, which needs no answer to its Hello
/// and goes on running while the thread takes the connection on another CPU, or after
/// it. Once the Welcome is sent the thread serves in the foreground again: a woken
/// thread then has a call to decide that the process may be waiting for.
#[derive(Clone, Copy)]
enum Priority {
    Background,
    Foreground,
}

impl Priority {
    /// Apply to the calling thread, unless the broker runs under another policy than
    /// the default (real-time, say), which is left alone.
    fn set(self) {
        static DEFAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
        let default = *DEFAULT
            .get_or_init(|| unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK == libc::SCHED_OTHER);
        if !default {
            return;
        }
        let policy = match self {
            Priority::Background => libc::SCHED_BATCH,
            Priority::Foreground => libc::SCHED_OTHER,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a live struct the call only
        // reads. Lowering our own thread's policy and restoring it needs no privilege.
        unsafe { libc::sched_setscheduler(0, policy, &param) };
    }
}

/// Lets the owner reload the policy and wait for connections to finish.
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Wait until no connection is open, nor waiting to be accepted (a process that
    /// connected, reported and exited before a server thread got to it), or `timeout`
    /// passes. Returns how many remain.
    pub fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let live = lock(&self.shared.live);
            let left = deadline.saturating_duration_since(Instant::now());
            let (live, _) =
                self.shared.idle.wait_timeout_while(live, left, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
            let waiting = self.shared.waiting_to_be_accepted();
            if (*live == 0 && !waiting) || Instant::now() >= deadline {
                return *live + usize::from(waiting);
            }
            drop(live);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Enforce `policy` from now on; returns its generation.
    pub fn reload(&self, policy: Policy) -> u64 {
        let name = policy.name().to_owned();
        let hash = policy.hash().to_owned();
        let generation = self.shared.engine.reload(policy);
        self.shared.sink.note("reload", serde_json::json!({ "policy": hash, "file": name, "generation": generation }));
        generation
    }

    /// A reload that failed: the old policy stays; the trace says why.
    pub fn reload_failed(&self, file: &str, error: &str) {
        self.shared.sink.note("reload_error", serde_json::json!({ "file": file, "error": error }));
    }

    pub fn set_shadow(&self, policy: Policy) {
        self.shared.engine.set_shadow(policy);
    }

    /// Where the run's processes find the board.
    pub fn board_path(&self) -> String {
        self.shared.engine.board_path()
    }

    /// Wait (up to `wait`) for the shadow to evaluate the calls still queued; see
    /// [`Engine::finish_shadow`]. Returns whether it finished.
    pub fn finish_shadow(&self, wait: Duration) -> bool {
        self.shared.engine.finish_shadow(wait)
    }

    /// Calls on which the shadow policy differed, and evaluations it dropped.
    pub fn shadow_counts(&self) -> Option<(u64, u64)> {
        self.shared.engine.has_shadow().then(|| self.shared.engine.shadow_counts())
    }
}

impl Shared {
    fn waiting_to_be_accepted(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.listening, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd, zero timeout; the listener lives as long as the accept
        // thread, which runs until the process exits.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    fn connection_closed(&self) {
        let mut live = lock(&self.live);
        *live -= 1;
        if *live == 0 {
            self.idle.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's writing side, shared with the engine's watchdog: whoever answers
/// a call first answers it, the other stays quiet.
struct Replier {
    out: Mutex<ReplyState>,
}

struct ReplyState {
    stream: UnixStream,
    seq: u32,
    answered: bool,
}

impl Replier {
    fn begin(&self, seq: u32) {
        let mut out = lock(&self.out);
        out.seq = seq;
        out.answered = false;
    }

    /// Send `reply` unless the call was answered already.
    fn answer(&self, reply: &Reply) -> Result<(), ConnError> {
        let mut out = lock(&self.out);
        if std::mem::replace(&mut out.answered, true) {
            return Ok(());
        }
        write_frame(&mut out.stream, reply)
    }

    fn send<T: serde::Serialize>(&self, msg: &T) -> Result<(), ConnError> {
        write_frame(&mut lock(&self.out).stream, msg)
    }

    /// Send `msg` with `fd` attached (SCM_RIGHTS).
    fn send_with_fd<T: serde::Serialize>(&self, msg: &T, fd: BorrowedFd<'_>) -> Result<(), ConnError> {
        let frame = frame(msg)?;
        let mut out = lock(&self.out);
        let sent = send_fd(&out.stream, &frame, fd)?;
        out.stream.write_all(&frame[sent..])?;
        Ok(())
    }
}

impl Late for Replier {
    fn fail_closed(&self, _outcome: &Outcome) {
        let seq = lock(&self.out).seq;
        let _ = self.answer(&Reply { seq, decision: Decision::Deny { errno: libc::EPERM }, cache: false });
    }
}

struct Connection<'s> {
    shared: &'s Shared,
    /// Buffered: a frame (often several) comes in one read.
    reader: BufReader<UnixStream>,
    replier: Arc<Replier>,
    peer_pid: i32,
    buf: Vec<u8>,
    /// When a call was last answered, until the next frame is read.
    answered: Option<Instant>,
    /// The frame after the last answer came within the spin: poll for the next one.
    quick: bool,
}

impl<'s> Connection<'s> {
    fn new(shared: &'s Shared, stream: UnixStream) -> Result<Self, ConnError> {
        let cred = peer_cred(&stream)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        // Another user's process: only one of the run's (the /proc walk is for these alone).
        let ours = cred.uid == me || cred.uid == 0;
        if !ours && !shared.session.is_some_and(|root| crate::state::descends_from(cred.pid, root)) {
            return Err(ConnError::Foreign(cred.uid));
        }
        let out = ReplyState { stream: stream.try_clone()?, seq: 0, answered: true };
        Ok(Connection {
            shared,
            reader: BufReader::with_capacity(64 * 1024, stream),
            replier: Arc::new(Replier { out: Mutex::new(out) }),
            peer_pid: cred.pid,
            buf: Vec::new(),
            answered: None,
            quick: !shared.engine.spin().is_zero(),
        })
    }

    fn run(mut self) -> Result<(), ConnError> {
        let (lane, welcomed) = self.welcome()?;
        // From now on a wake-up is a call (or its process's end) that may be waiting.
        Priority::Foreground.set();
        // A client that needs no answer does not wait for its Welcome, and may be gone
        // before it could be sent: what it sent after its Hello is read all the same, as
        // what it wrote into the ring it passed (`close`).
        let result = match welcomed {
            Err(e) if e.peer_gone() => self.serve(&lane, false),
            welcomed => welcomed.and_then(|()| self.serve(&lane, true)),
        };
        lane.close(self.shared);
        self.shared.lanes.remove(&lane);
        result
    }

    /// `Hello` → `Welcome`, with a ring when the client asks for one and can have it:
    /// the one it passed with the Hello, or one made here and passed with the Welcome.
    /// The lane is made, and listed, before the Welcome is sent (the client writes
    /// into a ring the Welcome brings at once) and even when it cannot be sent; the
    /// second result says whether it was.
    fn welcome(&mut self) -> Result<(Arc<Lane>, Result<(), ConnError>), ConnError> {
        let given = self.read_hello()?;
        let hello = match wire::decode::<ClientFrame>(&self.buf) {
            Ok(ClientMsg::Hello(h)) if h.version == wire::PROTOCOL_VERSION => h,
            Ok(ClientMsg::Hello(_)) => return Err(ConnError::Protocol("unsupported protocol version")),
            _ => return Err(ConnError::Protocol("expected Hello")),
        };
        let engine = &self.shared.engine;
        let mut welcome =
            Welcome { mask: engine.decided(), observe: engine.observe(), report: engine.reports(), ring: false };
        // Only a preload thread writes a ring: the tracer's calls stop the tracee anyway.
        let wants_ring = hello.ring && hello.layer == Layer::Preload;
        let passed = wants_ring && given.is_some();
        let (ring, fd) = match (wants_ring, given) {
            (true, Some(given)) => match RingMap::adopt(&given) {
                Ok(map) => (Some(map), None),
                Err(e) => {
                    // It may have written into it already: say so (the trace too, like a
                    // ring found corrupt later), the Welcome tells it.
                    eprintln!(
                        "hermes: broker: the event ring pid {} passed is unusable ({e}); what it wrote \
                         there is lost, its next events go on the socket",
                        self.peer_pid
                    );
                    self.shared.sink.ring_error(self.peer_pid, hello.tid, &e.to_string());
                    (None, None)
                }
            },
            (true, None) => match RingMap::create() {
                Ok((map, fd)) => (Some(map), Some(fd)),
                Err(e) => {
                    eprintln!(
                        "hermes: broker: no event ring for pid {} ({e}); its events go on the socket",
                        self.peer_pid
                    );
                    (None, None)
                }
            },
            (false, _) => (None, None),
        };
        welcome.ring = ring.is_some();
        // Before the Welcome, while the client waits for it.
        let lane = Arc::new(Lane::new(self.shared, self.peer_pid, &hello, ring));
        self.shared.lanes.add(&lane, passed);
        let sent = match fd {
            Some(fd) => self.replier.send_with_fd(&welcome, fd.as_fd()),
            None => self.replier.send(&welcome),
        };
        Ok((lane, sent))
    }

    /// Handle the connection's frames until it ends. Once the client is known to be
    /// gone (`answerable` false: its Welcome could not be sent), only its one-way frames
    /// are: a call it was waiting on would be decided, and traced, for nobody.
    fn serve(&mut self, lane: &Lane, answerable: bool) -> Result<(), ConnError> {
        loop {
            self.read_frame()?;
            let buf = std::mem::take(&mut self.buf);
            let handled = match wire::decode::<ClientFrame>(&buf) {
                Ok(ClientMsg::Call(_) | ClientMsg::Flush { .. }) if !answerable => Ok(()),
                Ok(ClientMsg::Call(call)) => self.on_call(lane, &call),
                Ok(ClientMsg::Flush { seq, rings }) => self.on_flush(lane, seq, rings),
                Ok(ClientMsg::Exit { cwd, rings }) => {
                    self.on_exit(lane, cwd, rings);
                    Ok(())
                }
                Ok(msg) => lane.socket_frame(self.shared, &msg).map_err(ConnError::Protocol),
                Err(_) => Err(ConnError::Protocol("malformed frame")),
            };
            self.buf = buf;
            handled?;
        }
    }

    fn on_call(&mut self, lane: &Lane, call: &Call<'_, Vec<&[u8]>>) -> Result<(), ConnError> {
        let started = Instant::now();
        self.replier.begin(call.seq);
        // Everything the process published before this call (through any of its
        // threads' rings, this one's included) is handled before the policy decides:
        // the rings passed with Hellos not read yet included.
        self.shared.lanes.await_rings(lane, call.rings);
        self.shared.lanes.drain_process(self.shared, lane.caller(call));
        let time = SystemTime::now();
        let event = lane.event(self.shared, call);
        let engine = &self.shared.engine;
        let (outcome, policy_hash) = if event.unresolved {
            // A rule on /etc/shadow must not be dodged by chdir("/etc") in a process
            // whose cwd the broker cannot read: fail closed.
            let why = format!(
                "cannot resolve the relative path: /proc/{}/cwd (or the dirfd) is unreadable \
                 (a non-dumpable process, or another PID namespace)",
                call.tid
            );
            (Outcome::fixed(Verdict::Deny(libc::EPERM), "error", Some(why)), engine.hash())
        } else {
            let late: Arc<dyn Late> = Arc::clone(&self.replier) as Arc<dyn Late>;
            engine.decide(&event, late)
        };
        let record = lane::record(event, outcome, policy_hash, time);
        // An exec that runs ends the image, and this connection with it: no next call.
        let execs = match &record.event.args {
            EventArgs::Exec { path, argv, .. } if record.outcome.verdict.runs() => {
                engine.state().exec(record.event.pid, path, argv, record.event.mono_ns);
                true
            }
            _ => false,
        };
        let replier = &self.replier;
        let answered = lane.answer(self.shared, (call.seq, started), record, |record| {
            let mut cpath = Vec::new();
            let decision = wire_decision(record, &mut cpath);
            let cache = record.outcome.cache && record.outcome.error.is_none();
            replier.answer(&Reply { seq: call.seq, decision, cache })
        });
        self.answered = (!execs).then(Instant::now);
        answered
    }

    /// A process about to exit whose working directory getcwd could not give waits
    /// until what its unread calls need of it is read: its threads' working
    /// directories, against which their relative paths resolve.
    /// Everything else they need is the broker's own (the descriptors its reported
    /// calls left, its details read at the Hello), so the calls themselves are read
    /// after the answer, while it exits.
    fn on_flush(&mut self, lane: &Lane, seq: u32, rings: u32) -> Result<(), ConnError> {
        self.replier.begin(seq);
        self.read_exiting(lane, rings, None, || {
            self.replier.answer(&Reply { seq, decision: Decision::Allow, cache: false })
        })
    }

    /// A process exiting says where its unread calls' relative paths start (its
    /// working directory) and goes on without waiting: its calls are read now, after
    /// it, against that.
    fn on_exit(&mut self, lane: &Lane, cwd: &[u8], rings: u32) {
        self.read_exiting(lane, rings, Some(cwd), || ());
    }

    /// The steps of a process's exit (rule 6 of [`crate::lane`]): its rings listed,
    /// its threads' working directories kept (`cwd`: the one the exiting thread gave),
    /// then `meanwhile` (the answer a waiting process needs), then its rings read and
    /// its image forgotten.
    fn read_exiting<R>(&self, lane: &Lane, rings: u32, cwd: Option<&[u8]>, meanwhile: impl FnOnce() -> R) -> R {
        let (lanes, pid) = (&self.shared.lanes, lane.peer_pid());
        lanes.await_rings(lane, rings);
        lanes.pin_cwds(self.shared, pid, cwd.map(|cwd| (lane.tid(), cwd)));
        let result = meanwhile();
        lanes.drain_process(self.shared, pid);
        lanes.forget_image(lane);
        result
    }

    /// Read the Hello, the connection's first frame, and the descriptor the client
    /// passed with it, if any (SCM_RIGHTS: its event ring).
    fn read_hello(&mut self) -> Result<Option<OwnedFd>, ConnError> {
        // Straight from the socket, which recvmsg(2) needs: nothing is buffered yet.
        debug_assert!(self.reader.buffer().is_empty());
        let mut header = [0u8; 4];
        let mut got = 0;
        let mut given = None;
        while got < header.len() {
            let (n, fd) = recv_with_fd(self.reader.get_ref(), &mut header[got..])?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            got += n;
            given = given.or(fd);
        }
        self.read_body(header)?;
        Ok(given)
    }

    fn read_frame(&mut self) -> Result<(), ConnError> {
        // After an answer, a thread calling in a loop sends its next call within a few
        // microseconds: poll for it rather than sleep, as long as that keeps paying.
        let answered = self.answered.take();
        // As long as a client polls for its answer (the board's spin).
        let spin = self.shared.engine.spin();
        let mut ready = !self.reader.buffer().is_empty();
        if let (Some(at), true) = (answered, self.quick && !ready) {
            self.quick = poll_readable(self.reader.get_ref(), at + spin);
            ready = self.quick;
        }
        if !ready {
            wait_readable(self.reader.get_ref());
        }
        let mut header = [0u8; 4];
        self.reader.read_exact(&mut header)?;
        if let (Some(at), false) = (answered, self.quick) {
            self.quick = at.elapsed() <= spin;
        }
        self.read_body(header)
    }

    fn read_body(&mut self, header: [u8; 4]) -> Result<(), ConnError> {
        let len = wire::body_len(header, wire::MAX_FRAME).map_err(|_| ConnError::Protocol("frame too large"))?;
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf)?;
        Ok(())
    }
}

/// Poll `stream` until it has something to read (or has ended), or `until`; whether
/// it has.
fn poll_readable(stream: &UnixStream, until: Instant) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte peek into a live local; MSG_DONTWAIT never blocks.
        let n =
            unsafe { libc::recv(stream.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        // Whatever else is ready to run on this CPU (the thread whose call is due, a
        // connection with work) runs first.
        std::thread::yield_now();
    }
}

/// Sleep until `stream` has something to read (or has ended). In `poll`, not in the
/// read: a thread asleep in a Unix socket's read is also woken each time the client
/// reads one of our frames (the kernel wakes a socket's waiters when its sent data is
/// consumed), to find nothing and sleep again, and on the client's CPU, which it
/// preempts. `poll` for input is woken by input only. A failed poll leaves the read to
/// report the error.
fn wait_readable(stream: &UnixStream) {
    let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one live pollfd, for the call's duration; no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn frame<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, ConnError> {
    let body = postcard::to_allocvec(msg).map_err(|_| ConnError::Protocol("cannot encode reply"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn write_frame<T: serde::Serialize>(stream: &mut UnixStream, msg: &T) -> Result<(), ConnError> {
    stream.write_all(&frame(msg)?)?;
    Ok(())
}

/// One sendmsg of (a first part of) `bytes` with `fd` attached; returns how many
/// bytes went.
fn send_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    // A cmsghdr and one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a constant computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    assert!(msg.msg_controllen <= std::mem::size_of_val(&control), "room for one descriptor");
    // SAFETY: msg_control points at `control`, which holds the CMSG_SPACE(4) bytes
    // (asserted above) that the first header and its one descriptor take.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(fd.as_raw_fd());
    }
    loop {
        // SAFETY: `msg` describes the live `bytes` and `control`; the socket is ours.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One recvmsg(2) into `buf`, retried on EINTR: the bytes read, and the first
/// descriptor passed with them (made close-on-exec); any others are closed.
fn recv_with_fd(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // Room for a cmsghdr and a few descriptors, aligned for cmsghdr.
    let mut control = [0u64; 8];
    loop {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at `iov` (the live, writable `buf`) and at `control`, both
        // of the lengths given; the socket is ours.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut first = None;
        // SAFETY: `msg` is the header recvmsg just filled in: msg_control points at our
        // buffer and msg_controllen says how much of it the kernel wrote, which the CMSG
        // helpers stay within.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies inside the buffer.
            let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN(0) is a constant computation.
                let count = (len - unsafe { libc::CMSG_LEN(0) } as usize) / std::mem::size_of::<i32>();
                for i in 0..count {
                    // SAFETY: the kernel wrote `count` new descriptors after the header,
                    // inside msg_controllen (maybe unaligned); each is ours to own.
                    let fd =
                        unsafe { OwnedFd::from_raw_fd(libc::CMSG_DATA(cmsg).cast::<i32>().add(i).read_unaligned()) };
                    // Any but the first is closed here.
                    first.get_or_insert(fd);
                }
            }
            // SAFETY: as above; returns null after the last header.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        return Ok((n as usize, first));
    }
}

/// The reply for a record; a redirect path gets its C terminator in `cpath`.
fn wire_decision<'r>(record: &'r Record, cpath: &'r mut Vec<u8>) -> Decision<'r> {
    match &record.outcome.verdict {
        Verdict::Allow => Decision::Allow,
        Verdict::Deny(errno) => Decision::Deny { errno: *errno },
        Verdict::Emulate(ret) => Decision::Emulate { ret: *ret },
        Verdict::Kill => Decision::Kill,
        Verdict::Redirect(path) => {
            cpath.extend_from_slice(path);
            cpath.push(0);
            Decision::Redirect { path: cpath }
        }
        Verdict::RedirectAddr { .. } => match &record.redirected_to {
            Some(to) => Decision::RedirectAddr(to.to_wire()),
            None => Decision::Deny { errno: libc::EPERM },
        },
        Verdict::Rewrite { flags, mode, data } => {
            Decision::Rewrite { flags: *flags, mode: *mode, data: data.as_deref().map(wire::serde_bytes::Bytes::new) }
        }
    }
}

struct PeerCred {
    pid: i32,
    uid: u32,
}

fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the sizes getsockopt is told about;
    // the fd is owned by `stream` for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred { pid: cred.pid, uid: cred.uid })
}
