//! The broker's socket: one connection per target thread, one server thread per
//! connection. Each connection is a typed exchange: `Hello` → `Welcome`, then any
//! number of `Call` → `Reply`, with one-way `Done`s reporting results.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hermes_wire::{self as wire, Args, ClientMsg, Decision, Layer, Reply, Welcome};

use crate::event::{Event, EventArgs, NetAddr, ProcInfo};
use crate::policy::{self, Policy, Verdict};
use crate::trace::{CallResult, Record, Sink};
use crate::worker::Worker;

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
    policy: Worker,
    sink: Sink,
    live: Mutex<usize>,
    idle: Condvar,
    next_id: AtomicUsize,
}

/// A bound, ready broker.
pub struct Broker {
    listener: UnixListener,
    policy: Policy,
    sink: Sink,
}

impl Broker {
    /// Bind the abstract socket `name` (no file on disk, nothing to clean up). No
    /// thread starts until [`Broker::spawn`], so the caller may still fork.
    pub fn bind(name: &[u8], policy: Policy, sink: Sink) -> io::Result<Self> {
        let addr = SocketAddr::from_abstract_name(name)?;
        let listener = UnixListener::bind_addr(&addr)?;
        Ok(Broker { listener, policy, sink })
    }

    pub fn mask(&self) -> u64 {
        self.policy.mask()
    }

    /// The policy's settings for the seccomp filter.
    pub fn doors(&self) -> crate::policy::Doors {
        self.policy.doors()
    }

    /// The library functions the policy hooks.
    pub fn hooks(&self) -> &[crate::policy::ApiHook] {
        self.policy.hooks()
    }

    /// Start the policy thread and serve connections on a background thread; returns
    /// a handle to drain them.
    pub fn spawn(self) -> io::Result<Handle> {
        let Broker { listener, policy, sink } = self;
        let shared = Arc::new(Shared {
            policy: Worker::start(policy)?,
            sink,
            live: Mutex::new(0),
            idle: Condvar::new(),
            next_id: AtomicUsize::new(0),
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

/// Lets the owner wait for connections to finish before exiting.
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Wait until no connection is open, or `timeout` passes. Returns how many remain.
    pub fn drain(&self, timeout: Duration) -> usize {
        let live = lock(&self.shared.live);
        let (live, _) =
            self.shared.idle.wait_timeout_while(live, timeout, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
        *live
    }
}

impl Shared {
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

struct Connection<'s> {
    shared: &'s Shared,
    stream: UnixStream,
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
        Ok(Connection {
            shared,
            stream,
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
        let welcome = Welcome { mask: self.shared.policy.mask(), report: self.shared.sink.wants_results() };
        self.send(&welcome)?;
        loop {
            self.read_frame()?;
            let buf = std::mem::take(&mut self.buf);
            let handled = match wire::decode::<ClientFrame>(&buf) {
                Ok(ClientMsg::Call(call)) => {
                    let started = Instant::now();
                    let mut record = self.decide(call.func, call.pid, call.tid, call.image, &call.args);
                    let mut cpath = Vec::new();
                    let decision = wire_decision(&record, &mut cpath);
                    let sent = self.send(&Reply { seq: call.seq, decision });
                    record.latency = started.elapsed();
                    if record.implied_result().is_none() && self.shared.sink.wants_results() {
                        if self.pending.len() >= MAX_PENDING {
                            // A client that never reports: keep the trace flowing.
                            let (_, oldest) = self.pending.remove(0);
                            self.shared.sink.emit(&oldest);
                        }
                        self.pending.push((call.seq, record));
                    } else {
                        self.shared.sink.emit(&record);
                    }
                    sent
                }
                Ok(ClientMsg::Done(done)) => {
                    let result = CallResult {
                        ret: done.ret,
                        errno: done.errno,
                        duration: Duration::from_nanos(done.duration_ns),
                    };
                    if let Some(at) = self.pending.iter().position(|(seq, _)| *seq == done.seq) {
                        let (_, mut record) = self.pending.remove(at);
                        record.result = Some(result);
                        self.shared.sink.emit(&record);
                    }
                    Ok(())
                }
                Ok(ClientMsg::Hello(_)) => Err(ConnError::Protocol("second Hello")),
                Err(_) => Err(ConnError::Protocol("malformed frame")),
            };
            self.buf = buf;
            handled?;
        }
    }

    fn decide(&mut self, func: &str, pid: i32, tid: i32, image: u32, args: &Args<Vec<&[u8]>>) -> Record {
        // The kernel's word on who is calling beats the message's, for the preload.
        let pid = if self.layer == Layer::Preload { self.peer_pid } else { pid };
        // A preload connection lives in one process image (it is close-on-exec); the
        // tracer's single connection sees many, numbered by `image`.
        let key = (pid, if self.layer == Layer::Preload { 0 } else { image });
        let proc = match self.procs.get(&key) {
            Some(info) => info.clone(),
            None => {
                let info = ProcInfo::read(pid);
                if self.procs.len() >= MAX_PROCS {
                    self.procs.clear();
                }
                self.procs.insert(key, info.clone());
                info
            }
        };
        let time = SystemTime::now();
        let event = Event::new(func, pid, tid, self.layer, proc, args);
        let outcome = if event.unresolved {
            // A rule on /etc/shadow must not be dodged by chdir("/etc") in a process
            // whose cwd the broker cannot read: fail closed.
            crate::policy::Outcome {
                verdict: Verdict::Deny(libc::EPERM),
                handler: "error",
                logs: Vec::new(),
                error: Some(format!(
                    "cannot resolve the relative path: /proc/{tid}/cwd (or the dirfd) is unreadable \
                     (a non-dumpable process, or another PID namespace)"
                )),
            }
        } else {
            self.shared.policy.decide(&event)
        };
        if let Some(error) = &outcome.error {
            eprintln!("hermes: policy error, call denied (EPERM): {error}");
        }
        let mut redirected_to = None;
        if let Verdict::RedirectAddr { ip, port, unix } = &outcome.verdict {
            let orig = match &event.args {
                EventArgs::Connect { addr, .. } | EventArgs::Send { addr: Some(addr), .. } => addr.clone(),
                _ => NetAddr::Other(0),
            };
            redirected_to = Some(policy::redirect_addr(&orig, *ip, *port, unix.as_deref()));
        }
        Record {
            time,
            event,
            outcome,
            redirected_to,
            policy_hash: Arc::clone(self.shared.policy.hash()),
            latency: Duration::ZERO,
            result: None,
        }
    }

    fn read_frame(&mut self) -> Result<(), ConnError> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header)?;
        let len = wire::body_len(header, wire::MAX_FRAME).map_err(|_| ConnError::Protocol("frame too large"))?;
        self.buf.resize(len, 0);
        self.stream.read_exact(&mut self.buf)?;
        Ok(())
    }

    fn send<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        let body = postcard::to_allocvec(msg).map_err(|_| ConnError::Protocol("cannot encode reply"))?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        Ok(())
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
