//! The broker's socket: one connection per target thread, one server thread per
//! connection. Each connection is a typed exchange: `Hello` → `Welcome`, then any
//! number of `Call` → `Reply`, with one-way `Done`s reporting results.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hermes_wire::{self as wire, Call, ClientMsg, Decision, Doors, Layer, Reply, Welcome};

use crate::engine::{Engine, Late};
use crate::event::{Event, EventArgs, ProcInfo};
use crate::policy::{self, ApiHook, Outcome, Policy, Verdict};
use crate::trace::{CallResult, Record, Sink};

type ClientFrame<'a> = ClientMsg<'a, Vec<&'a [u8]>>;

/// Calls in flight per connection whose results are still awaited.
const MAX_PENDING: usize = 256;
/// Processes whose /proc details a connection keeps.
const MAX_PROCS: usize = 4096;

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

/// State shared by all connections.
pub struct Shared {
    engine: Engine,
    sink: Arc<Sink>,
    live: Mutex<usize>,
    idle: Condvar,
    next_id: AtomicUsize,
    /// The listening socket, to see connections still waiting to be accepted.
    listening: RawFd,
}

/// A bound, ready broker.
pub struct Broker {
    listener: UnixListener,
    engine: Engine,
    sink: Sink,
    /// Policy settings fixed at start (hooks, doors), which a reload cannot change.
    hooks: Vec<ApiHook>,
    doors: Doors,
}

impl Broker {
    /// Bind the abstract socket `name` (no file on disk, nothing to clean up). No
    /// thread starts until [`Broker::spawn`], so the caller may still fork.
    pub fn bind(name: &[u8], policy: Policy, sink: Sink) -> io::Result<Self> {
        let addr = SocketAddr::from_abstract_name(name)?;
        let listener = UnixListener::bind_addr(&addr)?;
        let (hooks, doors) = (policy.hooks().to_vec(), policy.doors());
        let engine = Engine::new(policy, sink.wants_results())?;
        Ok(Broker { listener, engine, sink, hooks, doors })
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
        let Broker { listener, engine, sink, .. } = self;
        let sink = Arc::new(sink);
        engine.start(&sink)?;
        let listening = listener.as_raw_fd();
        let shared = Arc::new(Shared {
            engine,
            sink,
            live: Mutex::new(0),
            idle: Condvar::new(),
            next_id: AtomicUsize::new(0),
            listening,
        });
        let accepting = Arc::clone(&shared);
        std::thread::Builder::new().name("hermes-accept".into()).spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                *lock(&shared.live) += 1;
                let spawned = std::thread::Builder::new().name("hermes-conn".into()).spawn({
                    let shared = Arc::clone(&shared);
                    move || {
                        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = Connection::new(&shared, stream).and_then(|c| c.run()) {
                            if !matches!(&e, ConnError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof) {
                                eprintln!("hermes: broker: connection {id}: {e}");
                            }
                        }
                        shared.connection_closed();
                    }
                });
                if spawned.is_err() {
                    shared.connection_closed();
                }
            }
        })?;
        Ok(Handle { shared })
    }
}

/// Lets the owner reload the policy and wait for connections to finish.
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Wait until no connection is open, nor waiting to be accepted (a process that
    /// connected, reported and exited before the accept thread got to it), or `timeout`
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
}

impl Late for Replier {
    fn fail_closed(&self, _outcome: &Outcome) {
        let seq = lock(&self.out).seq;
        let _ = self.answer(&Reply { seq, decision: Decision::Deny { errno: libc::EPERM }, cache: false });
    }
}

struct Connection<'s> {
    shared: &'s Shared,
    /// Buffered: a frame (often several: an Observe and its Done) comes in one read.
    reader: BufReader<UnixStream>,
    replier: Arc<Replier>,
    peer_pid: i32,
    layer: Layer,
    /// What was read of each (pid, image) seen on this connection.
    procs: HashMap<(i32, u32), ProcInfo>,
    /// Allowed calls waiting for their `Done`, oldest first. More than one when calls
    /// nest (a hooked library function that opens a file) or, for the tracer's single
    /// connection, when several tracees have calls in flight.
    pending: Vec<(u32, Record)>,
    buf: Vec<u8>,
}

impl<'s> Connection<'s> {
    fn new(shared: &'s Shared, stream: UnixStream) -> Result<Self, ConnError> {
        let cred = peer_cred(&stream)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if cred.uid != me && cred.uid != 0 {
            return Err(ConnError::Foreign(cred.uid));
        }
        let out = ReplyState { stream: stream.try_clone()?, seq: 0, answered: true };
        Ok(Connection {
            shared,
            reader: BufReader::with_capacity(64 * 1024, stream),
            replier: Arc::new(Replier { out: Mutex::new(out) }),
            peer_pid: cred.pid,
            layer: Layer::Preload,
            procs: HashMap::new(),
            pending: Vec::new(),
            buf: Vec::new(),
        })
    }

    fn run(mut self) -> Result<(), ConnError> {
        let result = self.exchange();
        for (_, record) in std::mem::take(&mut self.pending) {
            self.shared.sink.emit(&record);
        }
        result
    }

    fn exchange(&mut self) -> Result<(), ConnError> {
        self.read_frame()?;
        let hello = match wire::decode::<ClientFrame>(&self.buf) {
            Ok(ClientMsg::Hello(h)) if h.version == wire::PROTOCOL_VERSION => h,
            Ok(ClientMsg::Hello(_)) => return Err(ConnError::Protocol("unsupported protocol version")),
            _ => return Err(ConnError::Protocol("expected Hello")),
        };
        self.layer = hello.layer;
        let engine = &self.shared.engine;
        let welcome = Welcome { mask: engine.decided(), observe: engine.observe(), report: engine.reports() };
        self.replier.send(&welcome)?;
        loop {
            self.read_frame()?;
            let buf = std::mem::take(&mut self.buf);
            let handled = match wire::decode::<ClientFrame>(&buf) {
                Ok(ClientMsg::Call(call)) => self.on_call(&call),
                Ok(ClientMsg::Done(done)) => {
                    if let Some(at) = self.pending.iter().position(|(seq, _)| *seq == done.seq) {
                        let (_, record) = self.pending.remove(at);
                        self.finish(record, &done);
                    }
                    Ok(())
                }
                Ok(ClientMsg::Observe(call)) => {
                    let mut record = self.record(&call, true);
                    record.observed = true;
                    self.shared.engine.observed(&record.event, &record.outcome);
                    self.await_result(call.seq, record);
                    Ok(())
                }
                Ok(ClientMsg::Hello(_)) => Err(ConnError::Protocol("second Hello")),
                Err(_) => Err(ConnError::Protocol("malformed frame")),
            };
            self.buf = buf;
            handled?;
        }
    }

    fn on_call(&mut self, call: &Call<'_, Vec<&[u8]>>) -> Result<(), ConnError> {
        let started = Instant::now();
        self.replier.begin(call.seq);
        let mut record = self.record(call, false);
        let mut cpath = Vec::new();
        let decision = wire_decision(&record, &mut cpath);
        let cache = record.outcome.cache && record.outcome.error.is_none();
        let sent = self.replier.answer(&Reply { seq: call.seq, decision, cache });
        record.latency = started.elapsed();
        if let (EventArgs::Exec { path, argv, .. }, true) = (&record.event.args, record.outcome.verdict.runs()) {
            self.shared.engine.state().exec(record.event.pid, path, argv);
        }
        self.await_result(call.seq, record);
        sent
    }

    /// Hold the record until the call's `Done`, when results are reported and the
    /// call runs; else write it now.
    fn await_result(&mut self, seq: u32, record: Record) {
        if record.implied_result().is_none() && self.shared.engine.reports() {
            if self.pending.len() >= MAX_PENDING {
                // A client that never reports: keep the trace flowing.
                let (_, oldest) = self.pending.remove(0);
                self.shared.sink.emit(&oldest);
            }
            self.pending.push((seq, record));
        } else {
            self.shared.sink.emit(&record);
        }
    }

    /// The call ran: record its result, learn from it, write the record.
    fn finish(&self, mut record: Record, done: &wire::Done) {
        record.result =
            Some(CallResult { ret: done.ret, errno: done.errno, duration: Duration::from_nanos(done.duration_ns) });
        let state = self.shared.engine.state();
        let pid = record.event.pid;
        match &record.event.args {
            // fopen and freopen return a FILE *, not a descriptor.
            EventArgs::Open { path, .. } if done.ret >= 0 && !returns_file_pointer(&record.event.func) => {
                match &record.outcome.verdict {
                    Verdict::Redirect(to) => state.opened(pid, done.ret, to),
                    _ => state.opened(pid, done.ret, path),
                }
            }
            EventArgs::Connect { fd, addr } if done.ret == 0 || done.errno == libc::EINPROGRESS => {
                state.connected(pid, *fd, record.redirected_to.as_ref().unwrap_or(addr))
            }
            _ => {}
        }
        self.shared.sink.emit(&record);
    }

    /// Decide one call (or, `observed`, record the allow its constant handler gives).
    fn record(&mut self, call: &Call<'_, Vec<&[u8]>>, observed: bool) -> Record {
        let (func, tid, image, args) = (call.func, call.tid, call.image, &call.args);
        // The kernel's word on who is calling beats the message's, for the preload.
        let pid = if self.layer == Layer::Preload { self.peer_pid } else { call.pid };
        // A preload connection lives in one process image (it is close-on-exec); the
        // tracer's single connection sees many, numbered by `image`.
        let key = (pid, if self.layer == Layer::Preload { 0 } else { image });
        let proc = match self.procs.get(&key) {
            Some(info) => info.clone(),
            None => {
                let info = ProcInfo::read(pid);
                self.shared.engine.state().seen(pid, &info);
                if self.procs.len() >= MAX_PROCS {
                    self.procs.clear();
                }
                self.procs.insert(key, info.clone());
                info
            }
        };
        let time = SystemTime::now();
        let engine = &self.shared.engine;
        let event = Event::new(func, pid, tid, self.layer, proc, args).with_context(&call.ctx, engine.wants().maps);
        let (outcome, policy_hash) = if observed {
            (Outcome::fixed(Verdict::Allow, engine.observer(event.op), None), engine.hash())
        } else if event.unresolved {
            // A rule on /etc/shadow must not be dodged by chdir("/etc") in a process
            // whose cwd the broker cannot read: fail closed.
            let why = format!(
                "cannot resolve the relative path: /proc/{tid}/cwd (or the dirfd) is unreadable \
                 (a non-dumpable process, or another PID namespace)"
            );
            (Outcome::fixed(Verdict::Deny(libc::EPERM), "error", Some(why)), engine.hash())
        } else {
            let late: Arc<dyn Late> = Arc::clone(&self.replier) as Arc<dyn Late>;
            engine.decide(&event, late)
        };
        if let Some(error) = &outcome.error {
            eprintln!("hermes: policy error, call denied (EPERM): {error}");
        }
        let redirected_to = policy::redirect_target(&event, &outcome.verdict);
        Record {
            time,
            event,
            outcome,
            redirected_to,
            policy_hash,
            latency: Duration::ZERO,
            result: None,
            observed: false,
        }
    }

    fn read_frame(&mut self) -> Result<(), ConnError> {
        let mut header = [0u8; 4];
        self.reader.read_exact(&mut header)?;
        let len = wire::body_len(header, wire::MAX_FRAME).map_err(|_| ConnError::Protocol("frame too large"))?;
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf)?;
        Ok(())
    }
}

fn write_frame<T: serde::Serialize>(stream: &mut UnixStream, msg: &T) -> Result<(), ConnError> {
    let body = postcard::to_allocvec(msg).map_err(|_| ConnError::Protocol("cannot encode reply"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)?;
    Ok(())
}

fn returns_file_pointer(func: &str) -> bool {
    func.starts_with("fopen") || func.starts_with("freopen")
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
