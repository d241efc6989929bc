//! Asking the broker: the guard, the per-thread connection, and the exchange of one
//! call. Nothing here allocates or takes a lock; requests are built on the stack (with
//! an mmap fallback for huge exec requests), replies are read into the caller's buffer.
//! One-way frames (an observed call, a result) go into the thread's event ring when it
//! has one ([`crate::ring`]): no system call.

use core::cell::Cell;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use hermes_wire::cache::{Cache, Cached, Key, KeyBuilder};
use hermes_wire::ring::{CallResult, Pushed};
use hermes_wire::{self as wire, Args, Call, ClientMsg, Context, Decision, Done, Hello, Layer, Op, Reply, Welcome};
use serde::Serialize;

use crate::{board, busy, config, fds, ring, sys};

/// Decisions the policy marked cacheable: 1024 slots, 48 KiB.
static CACHE: Cache<1024> = Cache::new();
/// Set once every hook is resolved and the configuration is read.
pub static READY: AtomicBool = AtomicBool::new(false);
/// This process image, its three words side by side: a fork child rewrites them, and
/// so copies one page of ours rather than one per word.
static IMAGE: Image = Image { pid: AtomicI32::new(0), stamp: AtomicU32::new(0), rings_passed: AtomicU32::new(0) };

#[repr(C, align(16))] // never across a page boundary
struct Image {
    /// The pid whose memory this is: set by the constructor and in fork children. A
    /// caller with another pid shares our memory without having forked through libc:
    /// a vfork or posix_spawn child. It must not touch the thread's connection.
    pid: AtomicI32,
    /// This image's stamp ([`Hello::image`]), drawn by its first connection
    /// ([`image_stamp`]); 0 until then.
    stamp: AtomicU32,
    /// How many rings of this image's making went to the broker with a Hello
    /// ([`Call::rings`]). Counted before the thread that made one writes into it, so a
    /// thread that learned of what another published there counts that ring too.
    rings_passed: AtomicU32,
}
static WARNED: AtomicBool = AtomicBool::new(false);
/// A vfork or posix_spawn child's connection, made by its first mediated call and kept
/// for the rest (a connection per call would be a Hello per call, each waiting for its
/// Welcome: a connection without a ring of its own reads it at once). The child's memory is its
/// parent's, so these are the parent's statics, written only by such children: the
/// child's pid and descriptor (`pid << 32 | fd`), and the socket's inode, which proves
/// the descriptor is still that connection (a later child with a recycled pid has
/// descriptors of its own). The kernel closes it when the child execs or exits.
static SPAWN_CONN: AtomicU64 = AtomicU64::new(0);
static SPAWN_INODE: AtomicU64 = AtomicU64::new(0);
/// Sequence numbers of calls on children's connections: distinct on each.
static SPAWN_SEQ: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// This thread's broker connection (-1: none yet) and its next sequence number.
    static CONN: Cell<(i32, u32)> = const { Cell::new((-1, 0)) };
    /// This thread's tid and its process's pid, once learned. A caller whose tid is
    /// this one is this thread, in this process: a vfork or posix_spawn child sharing
    /// the memory has a tid of its own. So the pid costs no system call.
    static SELF: Cell<(i32, i32)> = const { Cell::new((0, 0)) };
    /// This thread's connection whose Welcome is still unread (-1: none). A connection
    /// made with a ring of our own, the board mapped, does not wait for it: it is read
    /// before the connection's first reply, if one ever comes (see [`connect`],
    /// [`settle_welcome`]).
    static WELCOME_DUE: Cell<i32> = const { Cell::new(-1) };
    /// This thread's connection made for an exec alone, without a ring (-1: none). Its
    /// exec failed if the thread calls again: that call goes on a new connection.
    static EXEC_CONN: Cell<i32> = const { Cell::new(-1) };
    /// The broker's last answer to this thread came within the spin ([`board::SPIN`]):
    /// poll for the next one rather than sleep at once.
    static QUICK: Cell<bool> = const { Cell::new(true) };
}

/// A process image begins: the constructor's, or a fork child's. Its pid; its stamp
/// is drawn when it first connects (a fork child that only execs, unwatched, never
/// reads the clock).
pub fn begin_image() {
    IMAGE.pid.store(sys::getpid(), Relaxed);
    IMAGE.stamp.store(0, Relaxed);
    IMAGE.rings_passed.store(0, Relaxed);
}

/// This image's stamp: a number no other image of its pid has had (the clock differs,
/// whatever the pid), never 0 (the tracer's). The first caller draws it; a vfork
/// child draws its parent's, whose memory it shares and whose stamp it sends anyway.
fn image_stamp() -> u32 {
    let kept = IMAGE.stamp.load(Relaxed);
    if kept != 0 {
        return kept;
    }
    let pid = IMAGE.pid.load(Relaxed);
    let mut x = sys::monotonic_ns() ^ (u64::from(pid as u32) << 32);
    // splitmix64's finaliser: every bit of the clock and the pid stirs the low 32.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let drawn = ((x ^ (x >> 31)) as u32).max(1);
    match IMAGE.stamp.compare_exchange(0, drawn, Relaxed, Relaxed) {
        Ok(_) => drawn,
        Err(other) => other,
    }
}

/// The rings a call must have the broker wait for ([`Call::rings`]): none for a call
/// on a vfork or posix_spawn child's connection, whose memory (and so count) is its
/// parent's while its pid is its own.
fn rings_passed(in_child: bool) -> u32 {
    if in_child {
        0
    } else {
        IMAGE.rings_passed.load(Relaxed)
    }
}

/// The pid of the calling thread, whose tid is `tid`.
fn pid_of(tid: i32) -> i32 {
    let (known, pid) = SELF.with(Cell::get);
    if known == tid && tid > 0 {
        return pid;
    }
    let pid = sys::getpid();
    // Only this process's own thread fills the cache, never a child sharing it.
    if pid == IMAGE.pid.load(Relaxed) {
        SELF.with(|s| s.set((tid, pid)));
    }
    pid
}

/// How long a broker may take to answer before the call fails closed.
const BROKER_TIMEOUT_SECS: i64 = 5;
/// Broker descriptors live at or above this number, away from the program's own.
const HIGH_FD: i32 = 700;
const REQUEST_STACK: usize = 2048;
pub const REPLY_BUF: usize = wire::MAX_PATH + 256;

/// Room for a reply on the caller's stack, zeroed only when a reply is awaited: a
/// cached or observed call never touches (or pays for) its 4 KiB.
/// (Zeroed in place: building the array and moving it in would take another 4 KiB
/// of stack, which a posix_spawn child's small stack does not have.)
pub struct ReplyBuf {
    zeroed: bool,
    buf: core::mem::MaybeUninit<[u8; REPLY_BUF]>,
}

impl ReplyBuf {
    #[inline(always)]
    pub const fn new() -> Self {
        ReplyBuf { zeroed: false, buf: core::mem::MaybeUninit::uninit() }
    }

    fn get(&mut self) -> &mut [u8; REPLY_BUF] {
        if !self.zeroed {
            // SAFETY: writing REPLY_BUF zero bytes into our own MaybeUninit array.
            unsafe { self.buf.as_mut_ptr().write_bytes(0, 1) };
            self.zeroed = true;
        }
        // SAFETY: zeroed above (or by an earlier call): every byte is initialised.
        unsafe { self.buf.assume_init_mut() }
    }
}

/// What to do with one call, as the preload applies it.
#[derive(Debug)]
pub enum Verdict<'r> {
    Allow,
    Deny(i32),
    /// A NUL-terminated path.
    Redirect(&'r [u8]),
    RedirectAddr(wire::SockAddr<'r>),
    Emulate(i64),
    Kill,
    /// Run with these arguments replaced (open flags and mode, a send's payload).
    Rewrite {
        flags: Option<i32>,
        mode: Option<u32>,
        data: Option<&'r [u8]>,
    },
}

impl From<Cached> for Verdict<'_> {
    fn from(c: Cached) -> Self {
        match c {
            Cached::Allow => Verdict::Allow,
            Cached::Deny(e) => Verdict::Deny(e),
            Cached::Emulate(v) => Verdict::Emulate(v),
        }
    }
}

/// The guard word ([`busy`]) while a cached decision's call runs: not a thread id, so
/// a vfork child that leaves it set cannot make its parent's calls look nested (and
/// cached calls are never execs, so they always return and clear it).
const CACHED_CALL: i32 = -1;

/// Holds the reentrancy guard for this thread; dropping it releases the guard.
struct Guard {
    prev: i32,
    /// The caller's tid, read once per mediated call.
    tid: i32,
}

impl Guard {
    /// The guard for a call answered from the cache: no system call to learn the tid.
    fn cached() -> Option<Guard> {
        // Nested, or in a vfork child of a busy thread: ask properly.
        if busy::get() != 0 {
            return None;
        }
        busy::set(CACHED_CALL);
        Some(Guard { prev: 0, tid: CACHED_CALL })
    }

    fn take() -> Option<Guard> {
        let tid = sys::gettid();
        let prev = busy::get();
        if prev == tid {
            return None;
        }
        busy::set(tid);
        Some(Guard { prev, tid })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        busy::set(self.prev);
    }
}

/// Permission to mediate one call. The guard is held from [`Token::ask`] until the
/// [`Session`] ends, so the real call runs guarded too.
pub struct Token {
    op: Op,
}

impl Token {
    /// `None` when the call must go straight to the original: the policy does not
    /// watch this operation, or the preload is not ready.
    #[inline(always)]
    pub fn begin(op: Op) -> Option<Token> {
        if board::word(board::WATCHED) & op.bit() == 0 || !READY.load(Relaxed) {
            return None;
        }
        Some(Token { op })
    }

    /// Ask the broker, or answer from the cache. Any failure to get an answer is a
    /// deny with EPERM. Inside a mediated call (a nested call of the same thread, a
    /// signal handler's) the answer is allow, unasked.
    pub fn ask<'r, L: Serialize>(
        self,
        func: &str,
        args: Args<'_, L>,
        reply: &'r mut ReplyBuf,
    ) -> (Verdict<'r>, Session) {
        self.ask_with(func, args, None, reply)
    }

    /// [`Token::ask`] for a send, whose payload the policy may ask to see.
    pub fn ask_with<'r, L: Serialize>(
        self,
        func: &str,
        args: Args<'_, L>,
        payload: Option<&[u8]>,
        reply: &'r mut ReplyBuf,
    ) -> (Verdict<'r>, Session) {
        debug_assert_eq!(args.op(), self.op);
        // The kernel marked the broker dead on the board: nothing it would have seen may
        // run now, not even a call it would only have observed, or one it let us cache.
        if board::word(board::BROKER) & board::BROKER_DIED != 0 {
            warn_unreachable(b"it died");
            return (Verdict::Deny(libc::EPERM), Session::unguarded());
        }
        let generation = board::word(board::GENERATION);
        // An observed operation's only decision is a constant allow: never cached.
        let observe = board::word(board::OBSERVE) & self.op.bit() != 0 && observable(&args);
        let key = if observe { None } else { cache_key(func, &args) };
        if let Some(key) = &key {
            if let Some(hit) = CACHE.get(key, generation) {
                if let Some(guard) = Guard::cached() {
                    return (hit.into(), Session::quiet(guard));
                }
            }
        }
        let Some(guard) = Guard::take() else { return (Verdict::Allow, Session::unguarded()) };
        let errno = sys::errno();
        let pid = pid_of(guard.tid);
        let shared_memory = pid != IMAGE.pid.load(Relaxed);
        let mut session = Session { fd: -1, seq: 0, in_child: shared_memory, start: 0, slot: None, guard: Some(guard) };
        let payload = payload.map(|p| &p[..p.len().min(board::word(board::PAYLOAD) as usize)]);
        let report = board::word(board::FLAGS) & board::REPORT != 0;
        let exchanged =
            session.exchange((func, pid), &args, payload.filter(|p| !p.is_empty()), reply, (observe, report));
        let verdict = match exchanged {
            Ok((v, cacheable)) => {
                if let (true, Some(key)) = (cacheable, &key) {
                    if let Some(c) = cached_form(&v) {
                        CACHE.put(key, generation, c);
                    }
                }
                v
            }
            Err(e) => {
                session.abandon();
                warn_unreachable(crate::errno_text(e));
                Verdict::Deny(libc::EPERM)
            }
        };
        // A decided call starts now, its answer in; an observed one started when it
        // was stamped (see `exchange`). No start: no result to report.
        if !report || session.fd < 0 {
            session.start = 0;
        } else if !observe {
            session.start = sys::monotonic_ns();
        }
        sys::set_errno(errno);
        (verdict, session)
    }
}

/// Say once per process that calls are being denied for want of a broker.
fn warn_unreachable(why: &[u8]) {
    if !WARNED.swap(true, Relaxed) {
        sys::warn(&[b"hermes-preload: broker unreachable (", why, b"): denying mediated calls with EPERM\n"]);
    }
}

/// Calls the preload can run first and tell the broker after. An exec among them: one
/// that works does not return, and its record stays without a result (a failed one
/// returns and reports as any call); but only by an absolute path, since the broker
/// reads the record after the exec, when the descriptor a relative or `AT_EMPTY_PATH`
/// one names (fexecve, execveat) may be closed and the working directory another's.
/// A library hook's stubs expect a decision.
fn observable<L>(args: &Args<'_, L>) -> bool {
    match *args {
        Args::Open { .. } | Args::Connect { .. } | Args::SendTo { .. } | Args::SendMsg { .. } => true,
        Args::Exec { path, flags, .. } => path.first() == Some(&b'/') && flags & libc::AT_EMPTY_PATH == 0,
        _ => false,
    }
}

/// The cache key of a call whose decision may be cached: the function, and the
/// arguments that reach the policy. A relative path is not cached (its meaning
/// depends on the working directory), nor are execs and library calls.
fn cache_key<L>(func: &str, args: &Args<'_, L>) -> Option<Key> {
    let k = KeyBuilder::new(args.op(), func.as_ptr() as u64);
    match *args {
        Args::Open { dirfd: _, path, flags, mode } if path.first() == Some(&b'/') => {
            Some(k.bytes(path).int(flags as u64).int(u64::from(mode)).finish())
        }
        Args::Connect { fd, addr } => Some(addr_key(k.int(fd as u64), Some(addr))),
        Args::SendTo { fd, flags, addr, .. } | Args::SendMsg { fd, flags, addr, .. } => {
            Some(addr_key(k.int(fd as u64).int(flags as u64), addr))
        }
        _ => None,
    }
}

fn addr_key(k: KeyBuilder, addr: Option<wire::SockAddr<'_>>) -> Key {
    let mut raw = [0u8; wire::SOCKADDR_MAX];
    match addr.and_then(|a| a.to_raw(&mut raw)) {
        Some(n) => k.bytes(&raw[..n]).finish(),
        None => k.int(u64::MAX).finish(),
    }
}

fn cached_form(v: &Verdict) -> Option<Cached> {
    match *v {
        Verdict::Allow => Some(Cached::Allow),
        Verdict::Deny(e) => Some(Cached::Deny(e)),
        Verdict::Emulate(r) => Some(Cached::Emulate(r)),
        _ => None,
    }
}

/// Context the policy asked for, gathered for one call (a backtrace's words in `frames`).
fn context<'a>(payload: Option<&'a [u8]>, frames: &'a mut [u8; wire::BACKTRACE_MAX * 8]) -> Context<'a> {
    let flags = board::word(board::FLAGS);
    Context {
        backtrace: (flags & board::BACKTRACE != 0)
            .then(|| wire::Words::new(&crate::api::caller_backtrace_any(), frames)),
        payload: payload.map(wire::serde_bytes::Bytes::new),
        regs: None,
    }
}

/// One call in flight: reports the result (when the broker wants it).
pub struct Session {
    fd: i32,
    seq: u32,
    in_child: bool,
    start: u64,
    /// The observed call's record in the thread's ring, which its result goes into.
    slot: Option<ring::Slot>,
    /// `None` for a nested call, which runs under its outer call's guard.
    guard: Option<Guard>,
}

impl Session {
    /// A call answered without the broker (from the cache): nothing to report.
    fn quiet(guard: Guard) -> Self {
        Session { fd: -1, seq: 0, in_child: false, start: 0, slot: None, guard: Some(guard) }
    }

    /// A nested call, let through unasked.
    fn unguarded() -> Self {
        Session { fd: -1, seq: 0, in_child: false, start: 0, slot: None, guard: None }
    }

    /// Send the call; wait for the decision unless the policy only `observe`s it
    /// (`report`: the broker wants the result too).
    /// Returns the verdict and whether the policy marked it cacheable.
    fn exchange<'r, L: Serialize>(
        &mut self,
        (func, pid): (&str, i32),
        args: &Args<'_, L>,
        payload: Option<&[u8]>,
        reply: &'r mut ReplyBuf,
        (observe, report): (bool, bool),
    ) -> Result<(Verdict<'r>, bool), i32> {
        let tid = self.guard.as_ref().map_or(0, |g| g.tid);
        // A thread connection may have been closed under us (close_range, dup2 over
        // it); then it is reconnected once.
        let mut len = 0;
        let mut frames = [0u8; wire::BACKTRACE_MAX * 8];
        let ctx = context(payload, &mut frames);
        for attempt in 0..2 {
            self.seq = call_seq(!self.in_child);
            let rings = rings_passed(self.in_child);
            let call = Call { seq: self.seq, func, pid, tid, image: 0, rings, args: clone_args(args), ctx };
            let msg = if observe { ClientMsg::Observe(call) } else { ClientMsg::Call(call) };
            let exchanged = with_frame(&msg, |frame| {
                if observe {
                    // One clock read stamps the record and starts the call's duration:
                    // what is left before the call runs is the ring's few stores.
                    let made = sys::monotonic_ns();
                    // An exec (not a spawn, whose parent goes on) ends the image.
                    let last = matches!(args, Args::Exec { .. }) && !func.starts_with("posix_spawn");
                    self.deliver((pid, tid), frame, Some(Event { made, report, last }))?;
                    self.start = made;
                    return Ok(0);
                }
                self.deliver((pid, tid), frame, None)?;
                if !self.in_child {
                    settle_welcome(self.fd)?;
                }
                recv_frame(self.fd, reply.get(), None).map(<[u8]>::len)
            });
            match exchanged {
                Ok(n) => {
                    len = n;
                    break;
                }
                // A stale connection (the program closed it, an old broker) is made
                // again once. A slow or garbled answer is not: the call is not re-sent.
                Err(e) if attempt == 0 && !self.in_child && e != libc::EAGAIN && e != libc::EPROTO => {
                    drop_thread_conn()
                }
                Err(e) => return Err(e),
            }
        }
        if observe {
            return Ok((Verdict::Allow, false));
        }
        let reply: &'r [u8; REPLY_BUF] = reply.get();
        let reply: Reply<'r> = wire::decode(&reply[4..4 + len]).map_err(|_| libc::EPROTO)?;
        if reply.seq != self.seq {
            return Err(libc::EPROTO);
        }
        let verdict = match reply.decision {
            Decision::Allow => Verdict::Allow,
            Decision::Deny { errno } => Verdict::Deny(errno),
            d @ Decision::Redirect { .. } => Verdict::Redirect(d.redirect_cstr().ok_or(libc::EPROTO)?),
            Decision::RedirectAddr(a) => Verdict::RedirectAddr(a),
            Decision::Emulate { ret } => Verdict::Emulate(ret),
            Decision::Kill => Verdict::Kill,
            Decision::Rewrite { flags, mode, data } => Verdict::Rewrite { flags, mode, data: data.map(|d| &d[..]) },
        };
        Ok((verdict, reply.cache))
    }

    /// Send `frame` on the call's connection. A new connection is made when there is
    /// none, and a call goes right after its Hello, before the Welcome comes back: a
    /// new process's first decided call costs one round trip. A one-way frame (an
    /// `Event`) on the thread's connection goes into its ring when it can, where the
    /// result can join it.
    fn deliver(&mut self, (pid, tid): (i32, i32), frame: &[u8], event: Option<Event>) -> Result<(), i32> {
        if self.in_child {
            self.fd = send_from_child(pid, tid, frame)?;
            return Ok(());
        }
        if EXEC_CONN.with(Cell::get) >= 0 {
            // The exec it was made for failed (its result went after it): the thread's
            // next calls go on a connection of the usual kind, with a ring when wanted,
            // whose Welcome is the only one the thread will read.
            drop_thread_conn();
        }
        self.fd = match (own_conn(tid), event) {
            (Some(fd), _) => fd,
            (None, None) => {
                self.fd = new_thread_conn(pid, tid, First::Call(frame))?;
                return Ok(());
            }
            // A fork child's exec, the one frame its image will send, goes with the
            // Hello: no ring to make (and the broker to map) for it, no Welcome to wait
            // for. Should the exec fail, its result follows on the socket, and the
            // thread's next call makes a new connection.
            (None, Some(Event { last: true, .. })) if board::is_mapped() => {
                self.fd = new_thread_conn(pid, tid, First::Event(frame))?;
                EXEC_CONN.with(|c| c.set(self.fd));
                return Ok(());
            }
            // Any other one-way frame goes into the new connection's ring, not on the
            // socket: there it would close the ring until the broker has handled it,
            // and the thread's next frames would chase it. (The ring is ours at once,
            // or the broker's with the Welcome when there is no board.)
            (None, Some(_)) => new_thread_conn(pid, tid, First::Nothing)?,
        };
        match event {
            Some(Event { made, report, .. }) => {
                self.slot = post_frame(self.fd, false, frame, made, report)?;
                Ok(())
            }
            None => sys::write_all(self.fd, frame),
        }
    }

    /// The real call ran and returned `ret`; tell the broker if it asked (under the
    /// call's guard, still held).
    #[inline]
    pub fn done(self, ret: i64) {
        let Session { fd, seq, in_child, start, slot, guard } = self;
        // A cached or unwatched call's session: just the guard to drop.
        if fd >= 0 {
            Pending { fd, seq, in_child, start, slot }.finish(ret);
        }
        drop(guard);
    }

    /// Release the guard but keep what reporting the result needs: for calls whose
    /// real function runs unguarded (library hooks: what it calls is mediated on its
    /// own).
    pub fn detach(self) -> Pending {
        let Session { fd, seq, in_child, start, slot, guard: _ } = self;
        Pending { fd, seq, in_child, start, slot }
    }

    /// The call will not run (denied, emulated): nothing to report, the guard to drop.
    pub fn release(self) {}

    /// The exchange failed: the connection is in an unknown state (a late reply may
    /// still arrive on it), so it is closed, never reused.
    fn abandon(&mut self) {
        if self.in_child && self.fd >= 0 {
            forget_child_conn(self.fd);
            sys::close(self.fd);
        } else if self.fd >= 0 {
            drop_thread_conn();
        }
        self.fd = -1;
        self.start = 0;
    }
}

/// A one-way frame's circumstances.
#[derive(Clone, Copy)]
struct Event {
    /// When it was made (CLOCK_MONOTONIC).
    made: u64,
    /// Whether the call's result is to follow.
    report: bool,
    /// Whether it is likely the last this image sends (an exec).
    last: bool,
}

/// What goes with a new connection's Hello, in the same write.
#[derive(Clone, Copy)]
enum First<'a> {
    Nothing,
    /// A call: its answer follows the Welcome.
    Call(&'a [u8]),
    /// A one-way frame: nothing to wait for.
    Event(&'a [u8]),
}

/// A call that ran with its result still to report. Plain data: a library hook keeps
/// it on its side stack between the call and its return.
#[derive(Clone, Copy)]
pub struct Pending {
    fd: i32,
    seq: u32,
    in_child: bool,
    start: u64,
    slot: Option<ring::Slot>,
}

impl Pending {
    /// Whether the broker wants this call's result.
    pub fn reports(&self) -> bool {
        self.start != 0 && self.fd >= 0
    }

    /// Tell the broker the result, if it asked. Guarded: the clock read below is a
    /// libc call a library hook may be tracing.
    pub fn done(self, ret: i64) {
        let _guard = self.reports().then(Guard::take);
        self.finish(ret);
    }

    /// Report (the caller holds the guard) and release.
    #[inline(never)]
    fn finish(self, ret: i64) {
        if self.reports() {
            self.report(ret);
        }
    }

    /// Send the `Done` (the caller holds the guard).
    fn report(&self, ret: i64) {
        let errno = sys::errno();
        let end = sys::monotonic_ns();
        let duration_ns = end.saturating_sub(self.start);
        let errno_sent = if ret < 0 { errno } else { 0 };
        // Into the call's own record when the broker has not read it yet: no frame.
        let joined =
            self.slot.is_some_and(|slot| ring::complete(slot, CallResult { ret, errno: errno_sent, duration_ns }));
        if !joined {
            let msg: ClientMsg<'_, ()> = ClientMsg::Done(Done { seq: self.seq, ret, errno: errno_sent, duration_ns });
            // A few varints: a small buffer, not with_frame's 2 KiB one to clear.
            let mut buf = [0u8; 64];
            if let Ok(frame) = wire::encode(&msg, &mut buf) {
                let _ = post_frame(self.fd, self.in_child, frame, end, false);
            }
        }
        sys::set_errno(errno);
    }
}

/// Postcard encodes `Args<L>` the same whatever the borrow; re-borrow to satisfy the
/// message's lifetimes.
fn clone_args<'a, L: Serialize>(args: &'a Args<'a, L>) -> Args<'a, &'a L> {
    match *args {
        Args::Open { dirfd, path, flags, mode } => Args::Open { dirfd, path, flags, mode },
        Args::Connect { fd, addr } => Args::Connect { fd, addr },
        Args::SendTo { fd, len, flags, addr } => Args::SendTo { fd, len, flags, addr },
        Args::SendMsg { fd, len, flags, addr } => Args::SendMsg { fd, len, flags, addr },
        Args::Exec { dirfd, path, search_path, flags, ref argv, ref envp } => {
            Args::Exec { dirfd, path, search_path, flags, argv, envp }
        }
        Args::Api { symbol, kinds, raw, data, backtrace } => Args::Api { symbol, kinds, raw, data, backtrace },
    }
}

/// The sequence number of a frame that waits for an answer: a thread's connection
/// counts its calls; other connections (children's, the exit's one-shot) share a count.
fn call_seq(thread_conn: bool) -> u32 {
    if thread_conn {
        next_seq()
    } else {
        SPAWN_SEQ.fetch_add(1, Relaxed)
    }
}

/// Send `frame` on the connection of the vfork or posix_spawn child `pid`: the one its
/// first call made, or a new one (its Hello first, its Welcome awaited). Returns it.
fn send_from_child(pid: i32, tid: i32, frame: &[u8]) -> Result<i32, i32> {
    if let Some(fd) = child_conn(pid) {
        if sys::write_all(fd, frame).is_ok() {
            return Ok(fd);
        }
        // The broker closed it: the call goes on a new one.
        forget_child_conn(fd);
        sys::close(fd);
    }
    let fd = connect(pid, tid, false, First::Call(frame))?.fd;
    // A socket's fstat does not fail; if it did, inode 0 would match no descriptor and
    // each call would make a connection, all closed when the child execs or exits.
    let inode = sys::socket_inode(fd).unwrap_or(0);
    // Cleared first: a reader that sees the new pid and descriptor sees the new inode.
    SPAWN_CONN.store(0, Relaxed);
    SPAWN_INODE.store(inode, Release);
    SPAWN_CONN.store((u64::from(pid as u32) << 32) | u64::from(fd as u32), Release);
    Ok(fd)
}

/// The connection the child `pid` made, if that descriptor is still it.
fn child_conn(pid: i32) -> Option<i32> {
    let kept = SPAWN_CONN.load(Acquire);
    let fd = kept as u32 as i32;
    if kept == 0 || (kept >> 32) as u32 as i32 != pid {
        return None;
    }
    let inode = SPAWN_INODE.load(Acquire);
    (inode != 0 && sys::socket_inode(fd) == Some(inode)).then_some(fd)
}

/// `fd` is closing: no later call may use it.
fn forget_child_conn(fd: i32) {
    let kept = SPAWN_CONN.load(Relaxed);
    if kept != 0 && kept as u32 as i32 == fd {
        let _ = SPAWN_CONN.compare_exchange(kept, 0, Relaxed, Relaxed);
    }
}

fn next_seq() -> u32 {
    CONN.with(|c| {
        let (fd, seq) = c.get();
        c.set((fd, seq.wrapping_add(1)));
        seq
    })
}

/// This thread's connection, if it has one still.
fn own_conn(tid: i32) -> Option<i32> {
    let (fd, seq) = CONN.with(Cell::get);
    if fd >= 0 && fds::is_ours(fd, tid) {
        return Some(fd);
    }
    if fd >= 0 {
        // The program closed or replaced it: the number is not ours any more.
        forget_thread_conn(seq);
    }
    None
}

/// Make this thread's connection, with a ring when one-way frames may come (unless
/// `first` is one: then it is the image's last), and send `first` right after its
/// Hello.
fn new_thread_conn(pid: i32, tid: i32, first: First<'_>) -> Result<i32, i32> {
    let made = connect(pid, tid, wants_ring() && !matches!(first, First::Event(_)), first)?;
    fds::mark_ours(made.fd, tid);
    config::on_thread_exit_close(made.fd);
    CONN.with(|c| c.set((made.fd, c.get().1)));
    WELCOME_DUE.with(|w| w.set(if made.welcome_due { made.fd } else { -1 }));
    ring::install(made.ring);
    Ok(made.fd)
}

/// This thread has no connection (any more): forget it, its Welcome and its ring.
fn forget_thread_conn(seq: u32) {
    CONN.with(|c| c.set((-1, seq)));
    WELCOME_DUE.with(|w| w.set(-1));
    EXEC_CONN.with(|c| c.set(-1));
    ring::install(0);
}

/// Read the Welcome of this thread's connection `fd` if it is still due: it comes
/// before any reply on the connection.
fn settle_welcome(fd: i32) -> Result<(), i32> {
    if WELCOME_DUE.with(Cell::get) != fd {
        return Ok(());
    }
    WELCOME_DUE.with(|w| w.set(-1));
    let (welcome, passed) = read_welcome(fd)?;
    if passed >= 0 {
        sys::close(passed);
    }
    if !welcome.ring {
        // The broker did not take our ring: what the thread wrote there is lost, and
        // its next one-way frames go on the socket.
        ring::install(0);
        sys::warn(&[b"hermes-preload: the broker refused a thread's event ring: calls it observed were lost\n"]);
    }
    Ok(())
}

/// Whether a new connection should have an event ring: the policy observes calls or
/// wants results (both sent one-way), or the board is not there to say.
fn wants_ring() -> bool {
    !board::is_mapped() || board::word(board::OBSERVE) != 0 || board::word(board::FLAGS) & board::REPORT != 0
}

fn drop_thread_conn() {
    let (fd, seq) = CONN.with(Cell::get);
    if fd >= 0 && fds::release(fd, sys::gettid()) {
        sys::close(fd);
    }
    forget_thread_conn(seq);
}

/// Whether the caller shares this memory without having forked through libc: a vfork
/// or posix_spawn child (or a raw clone).
pub fn in_shared_memory_child() -> bool {
    sys::getpid() != IMAGE.pid.load(Relaxed)
}

/// Before a fork: read this image's executable, once, for its children to inherit (a
/// fork child runs the same program, and its Hello names it). Each child that connects
/// would otherwise read /proc/self/exe itself, its first /proc lookup (~10 µs in a new
/// process against ~1 µs in one that has looked before). Only when the policy watches
/// something: else no child connects.
pub fn before_fork() {
    if READY.load(Relaxed) && board::word(board::WATCHED) != 0 {
        let _ = own_exe();
    }
}

/// In a fork child: the inherited connections are the parent's; close our copies, and
/// unmap the forking thread's ring, which is its parent's (the child makes its own
/// when it reconnects). Other threads' rings stay mapped, unused, until an exec: no
/// thread of the child owns them.
pub fn after_fork_child() {
    busy::set(0);
    fds::close_all_ours();
    CONN.with(|c| c.set((-1, 0)));
    WELCOME_DUE.with(|w| w.set(-1));
    EXEC_CONN.with(|c| c.set(-1));
    SELF.with(|s| s.set((0, 0)));
    ring::forget_after_fork();
    // Another thread of the parent was reading it: nobody here will finish.
    let _ = EXE_STATE.compare_exchange(EXE_READING, EXE_UNREAD, Relaxed, Relaxed);
    // A slot some other thread of the parent was writing stays locked here: start over.
    CACHE.clear();
    begin_image();
}

/// Runs as the process exits (exit(), or main returning), after the program's own
/// atexit handlers.
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = flush_at_exit;

/// At exit, tell the broker where this process's unread calls' relative paths start:
/// it reads them (every thread's ring) after the process is gone, when /proc no longer
/// shows its working directory. One-way ([`ClientMsg::Exit`]); only a working directory
/// getcwd cannot give costs a round trip ([`ClientMsg::Flush`]: the broker reads /proc
/// while the process waits). Everything else those calls need is the broker's own: the
/// descriptors its reported calls left, the details it read at the Hello. (After `_exit`
/// or a kill the broker still reads every ring, later.)
extern "C" fn flush_at_exit() {
    if !READY.load(Relaxed) || !ring::had_ring() || in_shared_memory_child() {
        return;
    }
    let Some(guard) = Guard::take() else { return };
    let (own, _) = CONN.with(Cell::get);
    let (fd, one_shot) = if own >= 0 && fds::is_ours(own, guard.tid) {
        (own, false)
    } else {
        match connect(pid_of(guard.tid), guard.tid, false, First::Nothing) {
            Ok(made) => (made.fd, true),
            Err(_) => return,
        }
    };
    let mut dir = [0u8; libc::PATH_MAX as usize];
    // Whatever the broker makes of it, the process goes on exiting.
    let _ = match sys::getcwd(&mut dir) {
        Some(cwd) => {
            let exit: ClientMsg<'_, ()> = ClientMsg::Exit { cwd, rings: rings_passed(false) };
            send(fd, &exit)
        }
        None => {
            // The Welcome comes before the Flush's answer on our own connection.
            if !one_shot && settle_welcome(fd).is_err() {
                return;
            }
            let seq = call_seq(!one_shot);
            let flush: ClientMsg<'_, ()> = ClientMsg::Flush { seq, rings: rings_passed(false) };
            send(fd, &flush).and_then(|()| {
                let mut buf = [0u8; 64];
                let body = recv_frame(fd, &mut buf, None)?;
                wire::decode::<Reply>(body).map(drop).map_err(|_| libc::EPROTO)
            })
        }
    };
    if one_shot {
        sys::close(fd);
    }
}

/// Thread exit: close the connection the thread made, if it still is its own, and
/// forget it (and unmap its ring).
pub fn close_thread_conn(fd: i32) {
    if fds::release(fd, sys::gettid()) {
        sys::close(fd);
    }
    forget_thread_conn(CONN.with(Cell::get).1);
}

/// A new connection to the broker.
struct Connected {
    fd: i32,
    /// Its event ring's mapping (0: none).
    ring: usize,
    /// Its Welcome is still to be read ([`settle_welcome`]).
    welcome_due: bool,
}

/// Connect to the broker; with `want_ring`, with an event ring as well. `first`, a
/// frame, goes with the Hello, in the same write.
///
/// With the board mapped, the Welcome brings no news: the ring is then made here and
/// passed with the Hello, and a connection made for a one-way frame does not wait for
/// the broker at all (a thread's first observed call costs a few system calls, not a
/// round trip). Otherwise the broker makes the ring and passes it with the Welcome.
fn connect(pid: i32, tid: i32, want_ring: bool, first: First<'_>) -> Result<Connected, i32> {
    let fd = sys::connect_abstract(config::get().socket())?;
    let fd = sys::move_high(fd, HIGH_FD);
    sys::set_timeouts(fd, BROKER_TIMEOUT_SECS);
    let hello: ClientMsg<'_, ()> = ClientMsg::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        layer: Layer::Preload,
        pid,
        tid,
        client: "preload",
        ring: want_ring,
        image: image_stamp(),
        // So that no image need wait for the broker before it exits or execs: the
        // broker takes these when /proc no longer shows this image.
        ppid: sys::getppid(),
        exe: own_exe(),
    });
    let (given, own) = if want_ring && board::is_mapped() { ring::create().unwrap_or((-1, 0)) } else { (-1, 0) };
    // The first frame goes with the Hello: the broker, woken once, finds both.
    let with = match first {
        First::Nothing => &[][..],
        First::Call(frame) | First::Event(frame) => frame,
    };
    let sent = with_frame(&hello, |frame| sys::write_all_passing(fd, [frame, with], given));
    if sent.is_ok() && given >= 0 {
        // Before the ring is installed, so before the thread writes into it.
        IMAGE.rings_passed.fetch_add(1, Relaxed);
    }
    if given >= 0 {
        sys::close(given);
    }
    let welcome = match sent {
        Ok(()) if own != 0 && matches!(first, First::Nothing) => {
            return Ok(Connected { fd, ring: own, welcome_due: true })
        }
        Ok(()) if matches!(first, First::Event(_)) => return Ok(Connected { fd, ring: own, welcome_due: true }),
        Ok(()) => read_welcome(fd),
        Err(e) => Err(e),
    };
    match welcome {
        Ok((w, passed)) => {
            let ring = match passed {
                -1 if own != 0 && w.ring => own,
                -1 => 0,
                ring_fd if own == 0 && w.ring && want_ring => ring::map(ring_fd),
                other => {
                    sys::close(other);
                    0
                }
            };
            if own != 0 && ring != own {
                ring::discard(own);
            }
            Ok(Connected { fd, ring, welcome_due: false })
        }
        Err(e) => {
            if own != 0 {
                ring::discard(own);
            }
            sys::close(fd);
            Err(e)
        }
    }
}

/// This image's executable as /proc shows it, read by its first connection. The
/// process's memory holds it: a fork child inherits it and a vfork child shares it,
/// each running the same program, and an exec starts over. Empty while another thread
/// (or a signal handler interrupting this one) is reading it, or when it is unreadable:
/// the broker then has only /proc's word.
fn own_exe() -> &'static [u8] {
    if EXE_STATE.compare_exchange(EXE_UNREAD, EXE_READING, Acquire, Acquire).is_ok() {
        // SAFETY: this thread alone moved the state to READING, so nothing else writes
        // or reads the buffer until it is read.
        let len = sys::own_exe(unsafe { &mut *EXE.0.get() }).len();
        EXE_STATE.store(EXE_READ + len, Release);
    }
    let Some(len) = EXE_STATE.load(Acquire).checked_sub(EXE_READ) else { return &[] };
    // SAFETY: read: its first `len` bytes were written before the Release store, and
    // the buffer is never written again.
    unsafe { &(&*EXE.0.get())[..len] }
}

struct ExePath(core::cell::UnsafeCell<[u8; libc::PATH_MAX as usize]>);
// SAFETY: written only by the one thread that moves EXE_STATE from UNREAD to READING,
// read only once it is READ + its length (Release/Acquire in `own_exe`).
unsafe impl Sync for ExePath {}
static EXE: ExePath = ExePath(core::cell::UnsafeCell::new([0; libc::PATH_MAX as usize]));
/// UNREAD, READING, or READ plus the path's length.
static EXE_STATE: AtomicUsize = AtomicUsize::new(EXE_UNREAD);
const EXE_UNREAD: usize = 0;
const EXE_READING: usize = 1;
const EXE_READ: usize = 2;

/// Read a connection's Welcome, and the descriptor passed with it (-1: none). Without a
/// board, the Welcome is our news of the policy.
fn read_welcome(fd: i32) -> Result<(Welcome, i32), i32> {
    let mut passed = -1;
    let mut buf = [0u8; 64];
    let welcome = recv_frame(fd, &mut buf, Some(&mut passed))
        .and_then(|body| wire::decode::<Welcome>(body).map_err(|_| libc::EPROTO));
    match welcome {
        Ok(w) => {
            board::set_fallback(board::MASK, w.mask);
            board::set_fallback(board::OBSERVE, w.observe);
            board::set_fallback(board::FLAGS, if w.report { board::REPORT } else { 0 });
            Ok((w, passed))
        }
        Err(e) => {
            if passed >= 0 {
                sys::close(passed);
            }
            Err(e)
        }
    }
}

/// Encode `msg` as a frame (on the stack, or in a mapping for a huge one) and hand
/// it to `f`.
fn with_frame<T: Serialize, R>(msg: &T, f: impl FnOnce(&[u8]) -> Result<R, i32>) -> Result<R, i32> {
    let mut stack = [0u8; REQUEST_STACK];
    match wire::encode(msg, &mut stack) {
        Ok(frame) => f(frame),
        Err(wire::FrameError::BufferFull) => {
            let mut big = sys::Mapping::new(wire::MAX_FRAME + 4).ok_or(libc::ENOMEM)?;
            f(wire::encode(msg, big.bytes()).map_err(|_| libc::E2BIG)?)
        }
        Err(_) => Err(libc::E2BIG),
    }
}

fn send<T: Serialize>(fd: i32, msg: &T) -> Result<(), i32> {
    with_frame(msg, |frame| sys::write_all(fd, frame))
}

/// Send a one-way frame, made at `mono_ns`: into this thread's ring when `fd` is the
/// thread's own connection and the ring takes it, else on the socket (the ring and
/// the broker keep the two in order: see [`hermes_wire::ring`]). With `awaiting` (an
/// observed call whose result is to follow), where the result can join the record.
fn post_frame(fd: i32, in_child: bool, frame: &[u8], mono_ns: u64, awaiting: bool) -> Result<Option<ring::Slot>, i32> {
    let own = !in_child && CONN.with(Cell::get).0 == fd;
    match own.then(|| ring::push(frame, mono_ns, awaiting)).flatten() {
        Some((Pushed::Stored, slot)) => Ok(slot),
        Some((Pushed::HalfFull, slot)) => {
            // Ask for an early read. The frame is in the ring whatever becomes of the
            // nudge: the broker also reads it periodically and when the connection ends.
            let nudge: ClientMsg<'_, ()> = ClientMsg::Nudge;
            let _ = send(fd, &nudge);
            Ok(slot)
        }
        None => sys::write_all(fd, frame).map(|()| None),
    }
}

/// Before reading the broker's answer on `fd`: poll for it for up to the board's
/// spin while the broker has been answering this thread that quickly, so that the
/// thread need not sleep and be woken (on a virtual machine the wake-up costs more
/// than a decision). `Some(start)` when the answer is not there yet: the caller
/// sleeps in its read, and [`answer_came`] learns from how long that took.
fn await_answer(fd: i32) -> Option<u64> {
    let spin = board::word(board::SPIN);
    if spin == 0 {
        return None;
    }
    let start = sys::monotonic_ns();
    if QUICK.with(Cell::get) {
        while sys::monotonic_ns() - start < spin {
            if sys::readable_now(fd) {
                return None;
            }
            // The broker's thread, if it is ready to run on this CPU, runs first.
            sys::yield_now();
        }
    }
    Some(start)
}

/// The answer [`await_answer`] did not see come: poll next time only if it came
/// within the spin after all.
fn answer_came(start: u64) {
    let quick = sys::monotonic_ns() - start < board::word(board::SPIN);
    QUICK.with(|q| q.set(quick));
}

/// Read one frame into `buf` (header included) and return its body. The broker
/// writes a frame in one piece and sends nothing unasked, so one read usually has it
/// all; more than one frame's worth is a protocol error. With `passed` (for the
/// Welcome), a descriptor sent with the frame (SCM_RIGHTS) is stored there, and the
/// frame is read exactly: the reply to a frame sent with the Hello may follow it.
fn recv_frame<'b>(fd: i32, buf: &'b mut [u8], mut passed: Option<&mut i32>) -> Result<&'b [u8], i32> {
    let exact = passed.is_some();
    let mut read = |fd: i32, buf: &mut [u8]| match passed.as_deref_mut() {
        Some(slot) => sys::recv_some_with_fd(fd, buf, slot),
        None => sys::read_some(fd, buf),
    };
    let slept = await_answer(fd);
    let mut got = 0;
    while got < 4 {
        let end = if exact { 4 } else { buf.len() };
        got += read(fd, &mut buf[got..end])?;
    }
    if let Some(start) = slept {
        answer_came(start);
    }
    let header = [buf[0], buf[1], buf[2], buf[3]];
    let len = wire::body_len(header, buf.len() - 4).map_err(|_| libc::EPROTO)?;
    while got < 4 + len {
        got += read(fd, &mut buf[got..4 + len])?;
    }
    if got != 4 + len {
        return Err(libc::EPROTO);
    }
    Ok(&buf[4..4 + len])
}
