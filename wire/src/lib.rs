//! Wire types spoken between a mediation layer (the preload inside the target, or the
//! ptrace tracer in the launcher) and the broker.
//!
//! Every message travels as a frame: a little-endian `u32` body length followed by a
//! postcard-encoded body. The client sends [`ClientMsg`]s, the broker answers
//! [`Hello`] with a [`Welcome`] and each [`Call`] (and [`ClientMsg::Flush`]) with a
//! [`Reply`]; [`Done`], [`ClientMsg::Observe`], [`ClientMsg::Nudge`] and
//! [`ClientMsg::Exit`] are one-way.
//!
//! A preload thread's connection has an event [`ring`]: usually one the thread made and
//! passed with its Hello, else one the broker made and passed with the Welcome. The
//! thread writes its one-way frames into the ring, where the broker reads them without
//! a system call on either side, and sends on the socket only the frames that wait for
//! an answer (and one-way frames the ring has no room for). The broker reads the ring
//! before each frame that arrives on the socket, and the ring takes nothing while
//! one-way frames sent on the socket are unhandled, so the thread's frames are handled
//! in the order it sent them ([`ring`]).
//!
//! The crate is `no_std` and allocation-free so the preload can build requests in
//! stack buffers, even in a vfork child or a signal handler.
#![no_std]
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod api_list;
pub mod board;
pub mod cache;
mod doors;
pub mod elf;
pub mod handoff;
pub mod program;
pub mod ring;
pub use doors::Doors;
mod sockaddr;
pub use serde_bytes;
pub use sockaddr::{SockAddr, SOCKADDR_MAX};

/// The libc functions the preload patches inline (its other hooks interpose symbols only).
/// The launcher makes their recipes (`hermes_trampolines::Recipe`) from its own libc while
/// the broker starts, so that the first process of a run hooks without a decoder too.
pub const INLINE_HOOKED: [&str; 8] =
    ["open", "openat", "__open_nocancel", "connect", "sendto", "sendmsg", "execve", "execveat"];

/// Bump when a message changes shape; the broker refuses other versions.
pub const PROTOCOL_VERSION: u16 = 8;

/// Largest frame body either side accepts. exec requests carry argv and envp, which
/// the kernel caps at a quarter of the stack limit (2 MiB by default).
pub const MAX_FRAME: usize = 4 << 20;

/// Longest path a decision may carry (PATH_MAX, including the terminating NUL).
pub const MAX_PATH: usize = 4096;

/// Longest payload a rewrite may carry: a reply must fit the client's stack buffer.
pub const REWRITE_DATA_MAX: usize = 4000;

/// A family of mediated calls. Many C functions map to one operation (open, open64,
/// openat, `__open_2`, fopen, creat… are all [`Op::Open`]); the subscription mask has
/// one bit per operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Open = 0,
    Connect = 1,
    SendTo = 2,
    SendMsg = 3,
    Exec = 4,
    /// A call to a library function hooked with `--hook LIB:SYMBOL` or `hermes.hook`.
    Api = 5,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Open, Op::Connect, Op::SendTo, Op::SendMsg, Op::Exec, Op::Api];

    /// The operation's bit in a subscription mask.
    pub const fn bit(self) -> u64 {
        1 << self as u8
    }

    /// The name policies see in `ev.op`.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Connect => "connect",
            Op::SendTo => "sendto",
            Op::SendMsg => "sendmsg",
            Op::Exec => "exec",
            Op::Api => "api",
        }
    }

    /// The per-operation Lua handler (`on_open`, …).
    pub const fn handler(self) -> &'static str {
        match self {
            Op::Open => "on_open",
            Op::Connect => "on_connect",
            Op::SendTo => "on_sendto",
            Op::SendMsg => "on_sendmsg",
            Op::Exec => "on_exec",
            Op::Api => "on_api",
        }
    }
}

/// Which layer saw the call.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The LD_PRELOAD library's libc hooks.
    Preload,
    /// The seccomp + ptrace fallback in the launcher.
    Ptrace,
}

impl Layer {
    pub const fn name(self) -> &'static str {
        match self {
            Layer::Preload => "preload",
            Layer::Ptrace => "ptrace",
        }
    }
}

/// Messages from a mediation layer to the broker.
// Built on the stack once per call; boxing the large variant would need the allocator
// the preload may not use.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug)]
pub enum ClientMsg<'a, L> {
    /// First message on every connection; answered by [`Welcome`].
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// A call to decide; answered by [`Reply`].
    Call(Call<'a, L>),
    /// The outcome of an allowed call (one-way, only when [`Welcome::report`] is set).
    Done(Done),
    /// A call the policy only records ([`board::OBSERVE`]): one-way, sent as the
    /// call starts, without waiting for an answer; a [`Done`] follows when results
    /// are reported.
    Observe(Call<'a, L>),
    /// One-way, on the socket: the client's [`ring`] just passed half full; read it
    /// now rather than at the next periodic drain.
    Nudge,
    /// Answered by a [`Reply`] (allow, with this `seq`) once the broker has read what
    /// the calls the process sent before, through every thread's [`ring`], need of it
    /// in /proc (its threads' working directories). A process sends it as it exits
    /// when it cannot send [`ClientMsg::Exit`], while /proc still shows it.
    /// `rings`: as [`Call::rings`].
    Flush { seq: u32, rings: u32 },
    /// One-way, on the socket: the process is exiting, and `cwd` is its working
    /// directory (getcwd(2)), against which its unread calls' relative paths resolve
    /// once it is gone. It takes the place of a [`ClientMsg::Flush`]'s round trip.
    /// `rings`: as [`Call::rings`].
    Exit {
        #[serde(with = "serde_bytes")]
        cwd: &'a [u8],
        rings: u32,
    },
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Hello<'a> {
    pub version: u16,
    pub layer: Layer,
    pub pid: i32,
    pub tid: i32,
    /// Free-form client name for diagnostics (`"preload"`, `"ptrace"`).
    pub client: &'a str,
    /// The client would write its one-way frames into an event [`ring`]: the one whose
    /// descriptor is attached to this frame (SCM_RIGHTS), or else one the broker makes.
    /// Only a thread's own connection asks: not the ptrace tracer, not a vfork child's
    /// one-shot connection (it shares its parent's memory).
    pub ring: bool,
    /// The client's process image, as the preload stamps it: a number drawn anew in
    /// each exec'd image and each fork child, under which the broker counts the rings
    /// passed with Hellos ([`Call::rings`]). 0 from the tracer.
    pub image: u32,
    /// The process as it sees itself (the preload: getppid(2), and readlink(2) of
    /// /proc/self/exe), for the broker to use when /proc no longer shows this image by
    /// the time it reads the Hello: the process exited or exec'd, which a client that
    /// needs no answer does without waiting for its Welcome. 0 and empty from the
    /// tracer, whose tracee is stopped while the broker reads /proc.
    pub ppid: i32,
    #[serde(with = "serde_bytes")]
    pub exe: &'a [u8],
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Operations the policy decides ([`Op::bit`]); others need not be sent.
    pub mask: u64,
    /// Operations the policy only records: run them, then send [`ClientMsg::Observe`]
    /// (a client that cannot may ask as for [`Welcome::mask`]).
    pub observe: u64,
    /// Whether the client should send [`Done`] after allowed calls.
    pub report: bool,
    /// The connection has an event [`ring`]: the client's own, or one the broker made,
    /// whose descriptor (a memfd of [`ring::SIZE`] bytes) is attached to this frame
    /// (SCM_RIGHTS). `false` when the Hello did not ask, or the broker could neither
    /// use the client's ring nor make one: one-way frames then go on the socket.
    pub ring: bool,
}

/// One intercepted call.
#[derive(Serialize, Deserialize, Debug)]
pub struct Call<'a, L> {
    /// Per-connection sequence number, echoed in the [`Reply`] and [`Done`].
    pub seq: u32,
    /// The C function (or syscall) the program called: `"openat"`, `"fopen"`, `"execvp"`.
    pub func: &'a str,
    pub pid: i32,
    pub tid: i32,
    /// Which program image of `pid` made the call: the client counts the process's
    /// execs, so the broker may cache what it learns of a process (exe, parent) per
    /// image. The preload, whose connections do not outlive an exec, sends 0.
    pub image: u32,
    /// How many rings the calling process image had passed with its Hellos
    /// ([`Hello::image`]) when it sent this call. A thread writes into the ring it
    /// made before the broker has read its Hello; the broker reads that many of the
    /// image's Hellos before it reads the process's rings for a decision, so the
    /// policy sees everything the process published before the call. 0: no wait
    /// (the tracer; a vfork child, whose memory is its parent's).
    pub rings: u32,
    #[serde(borrow)]
    pub args: Args<'a, L>,
    /// What the policy asked to see beyond the arguments ([`board::FLAGS`]).
    #[serde(borrow)]
    pub ctx: Context<'a>,
}

/// Context a policy asks for (`hermes.want{…}`); each part costs the client time, so
/// it is sent only when wanted.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct Context<'a> {
    /// Return addresses of the calling thread, innermost first (at most
    /// [`BACKTRACE_MAX`]; 0: unused slot).
    #[serde(borrow)]
    pub backtrace: Option<Words<'a>>,
    /// The first bytes of a send's payload (at most [`board::PAYLOAD`] of them).
    #[serde(borrow)]
    pub payload: Option<&'a serde_bytes::Bytes>,
    /// The ptrace layer's registers at the stop, in [`REGS`] order.
    #[serde(borrow)]
    pub regs: Option<Words<'a>>,
}

/// Machine words (a backtrace, registers) sent as their little-endian bytes and
/// borrowed from the frame when decoded. As arrays they would make every message
/// hundreds of bytes long, and decoding moves a message whole at each step, though
/// few messages carry any.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(transparent)]
pub struct Words<'a>(#[serde(borrow)] &'a serde_bytes::Bytes);

impl<'a> Words<'a> {
    /// `words`, written into `buf` (8 bytes each): as many as it holds.
    pub fn new(words: &[u64], buf: &'a mut [u8]) -> Words<'a> {
        let n = words.len().min(buf.len() / 8);
        for (bytes, word) in buf.chunks_exact_mut(8).zip(&words[..n]) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        Words(serde_bytes::Bytes::new(&buf[..n * 8]))
    }

    /// The words (a partial one at the end, which no client sends, is left out).
    pub fn iter(self) -> impl Iterator<Item = u64> + 'a {
        self.0.chunks_exact(8).map(le_word8)
    }

    /// Exactly `N` words, or `None`.
    pub fn array<const N: usize>(self) -> Option<[u64; N]> {
        let mut words = self.iter();
        let array = core::array::from_fn(|_| words.next().unwrap_or(0));
        (self.0.len() == N * 8).then_some(array)
    }
}

/// The little-endian word in the first 8 of `bytes` (a fixed-size copy: one load).
#[inline]
pub(crate) fn le_word8(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

/// The word holding `bytes` (at most 8) little-endian, zero-padded; built byte by byte,
/// since a copy of a length not known at compile time is a call to memcpy.
#[inline]
pub(crate) fn le_word(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b))
}

/// Registers the ptrace layer reports, in this order.
pub const REGS: [&str; REGS_LEN] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "eflags", "orig_rax",
];
pub const REGS_LEN: usize = 19;

/// Decoded arguments, one variant per [`Op`]. `L` is a list of byte strings: the
/// preload serialises C `char **` arrays in place, the broker decodes `Vec<&[u8]>`.
#[allow(clippy::large_enum_variant)] // as for ClientMsg: built on the stack, never boxed
#[derive(Serialize, Deserialize, Debug)]
pub enum Args<'a, L> {
    Open {
        /// `AT_FDCWD` (-100) for calls relative to the working directory.
        dirfd: i32,
        #[serde(with = "serde_bytes")]
        path: &'a [u8],
        flags: i32,
        mode: u32,
    },
    Connect {
        fd: i32,
        #[serde(borrow)]
        addr: SockAddr<'a>,
    },
    SendTo {
        fd: i32,
        len: u64,
        flags: i32,
        #[serde(borrow)]
        addr: Option<SockAddr<'a>>,
    },
    SendMsg {
        fd: i32,
        len: u64,
        flags: i32,
        #[serde(borrow)]
        addr: Option<SockAddr<'a>>,
    },
    Exec {
        dirfd: i32,
        #[serde(with = "serde_bytes")]
        path: &'a [u8],
        /// The program name is looked up in `PATH` (execvp, posix_spawnp).
        search_path: bool,
        flags: i32,
        argv: L,
        envp: L,
    },
    /// A hooked library function: its first six integer arguments as passed, and
    /// for the arguments its signature declares as strings or buffers, their bytes.
    Api {
        /// `LIB:SYMBOL` as the hook was declared.
        symbol: &'a str,
        /// Per argument: `i` integer, `p` pointer, `s` C string, `0`..`5` buffer whose
        /// length is that argument; `-` past the declared arguments.
        kinds: [u8; API_ARGS],
        raw: [u64; API_ARGS],
        #[serde(borrow)]
        data: [&'a serde_bytes::Bytes; API_ARGS],
        /// Return addresses of the calling thread, innermost first, when the hook
        /// asked for a backtrace.
        #[serde(borrow)]
        backtrace: Option<Words<'a>>,
    },
}

/// Frames a library hook's backtrace holds (unused slots are 0).
pub const BACKTRACE_MAX: usize = 16;

/// Integer argument registers a library hook sees (rdi, rsi, rdx, rcx, r8, r9).
pub const API_ARGS: usize = 6;

/// Longest string or buffer copied out of a hooked call's arguments.
pub const API_DATA_MAX: usize = 4096;

impl<L> Args<'_, L> {
    pub fn op(&self) -> Op {
        match self {
            Args::Open { .. } => Op::Open,
            Args::Connect { .. } => Op::Connect,
            Args::SendTo { .. } => Op::SendTo,
            Args::SendMsg { .. } => Op::SendMsg,
            Args::Exec { .. } => Op::Exec,
            Args::Api { .. } => Op::Api,
        }
    }
}

/// What the broker decided for one [`Call`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Run the call unchanged.
    Allow,
    /// Do not run it; fail with this errno.
    Deny { errno: i32 },
    /// Run it on another path. The bytes end with exactly one NUL.
    Redirect {
        #[serde(with = "serde_bytes")]
        path: &'a [u8],
    },
    /// Run it against another socket address.
    #[serde(borrow)]
    RedirectAddr(SockAddr<'a>),
    /// Do not run it; return this value.
    Emulate { ret: i64 },
    /// Kill the calling process with SIGKILL.
    Kill,
    /// Run it with some arguments replaced: open flags and mode, a send's payload.
    /// Fields left `None` keep the program's.
    Rewrite {
        flags: Option<i32>,
        mode: Option<u32>,
        #[serde(borrow)]
        data: Option<&'a serde_bytes::Bytes>,
    },
}

impl<'a> Decision<'a> {
    /// The redirect path as a C string, if it is one (ends in its only NUL).
    pub fn redirect_cstr(&self) -> Option<&'a [u8]> {
        match self {
            Decision::Redirect { path } => match path.iter().position(|&b| b == 0) {
                Some(nul) if nul + 1 == path.len() && nul > 0 => Some(path),
                _ => None,
            },
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    pub seq: u32,
    #[serde(borrow)]
    pub decision: Decision<'a>,
    /// The policy marked the decision cacheable: the client may answer identical
    /// calls itself until the policy changes ([`board::GENERATION`]).
    pub cache: bool,
}

/// The outcome of an allowed call, reported without waiting for an answer.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub seq: u32,
    pub ret: i64,
    /// errno after the call when it failed, else 0.
    pub errno: i32,
    /// How long the real call took, in nanoseconds.
    pub duration_ns: u64,
}

/// FNV-1a, 64 bit: a stable content hash with no dependency (policy hashes, the
/// launcher's recipe file names).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Errors building or reading a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The output buffer is too small for the message.
    BufferFull,
    /// The announced body length exceeds [`MAX_FRAME`] or the buffer.
    TooLarge,
    /// The body is not a valid message of the expected type.
    Malformed,
}

/// Encode `msg` as a frame (length prefix + body) at the start of `buf`; returns the
/// frame's bytes.
pub fn encode<'b, T: Serialize>(msg: &T, buf: &'b mut [u8]) -> Result<&'b [u8], FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::BufferFull);
    }
    let body_len = match postcard::serialize_with_flavor(msg, Body { buf: &mut buf[4..], at: 0 }) {
        Ok(len) => len,
        Err(postcard::Error::SerializeBufferFull) => return Err(FrameError::BufferFull),
        Err(_) => return Err(FrameError::Malformed),
    };
    if body_len > MAX_FRAME {
        return Err(FrameError::TooLarge);
    }
    buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    Ok(&buf[..4 + body_len])
}

/// Where [`encode`] writes a body. postcard's own slice writer copies every field
/// (a varint is 1 to 10 bytes) with a call to `memcpy`: some 20 calls per observed
/// open, on the hooked call's path. Short runs are copied byte by byte here, inline;
/// only names and payloads go through `copy_from_slice`.
struct Body<'b> {
    buf: &'b mut [u8],
    at: usize,
}

/// Runs up to this long are copied inline (a varint is at most 10 bytes).
const INLINE_COPY: usize = 16;

impl postcard::ser_flavors::Flavor for Body<'_> {
    type Output = usize;

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        let slot = self.buf.get_mut(self.at).ok_or(postcard::Error::SerializeBufferFull)?;
        *slot = byte;
        self.at += 1;
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= INLINE_COPY {
            // A loop with an exit on every byte, which the compiler does not turn back
            // into a memcpy call.
            return bytes.iter().try_for_each(|&b| self.try_push(b));
        }
        let to = self.buf.get_mut(self.at..self.at + bytes.len()).ok_or(postcard::Error::SerializeBufferFull)?;
        to.copy_from_slice(bytes);
        self.at += bytes.len();
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.at)
    }
}

/// Read the body length from a frame header, refusing anything over `cap`.
pub fn body_len(header: [u8; 4], cap: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > cap.min(MAX_FRAME) {
        return Err(FrameError::TooLarge);
    }
    Ok(len)
}

/// Decode a frame body (without its length prefix). Trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(body) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(FrameError::Malformed),
    }
}

/// A small deterministic generator for the tests that feed hostile input.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::vec::Vec;

    type Owned<'a> = ClientMsg<'a, Vec<&'a [u8]>>;

    /// A list type serialised the way the preload does it: from an iterator, not a Vec.
    struct Iter<'a>(&'a [&'a [u8]]);
    impl Serialize for Iter<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for item in self.0 {
                seq.serialize_element(serde_bytes::Bytes::new(item))?;
            }
            seq.end()
        }
    }

    #[test]
    fn exec_lists_round_trip_from_borrowed_iterators() {
        let argv: &[&[u8]] = &[b"/bin/echo", b"hi \xff"];
        let envp: &[&[u8]] = &[b"A=1"];
        let msg = ClientMsg::Call(Call {
            seq: 7,
            func: "execve",
            pid: 10,
            tid: 11,
            image: 0,
            rings: 0,
            args: Args::Exec {
                dirfd: -100,
                path: b"/bin/echo",
                search_path: false,
                flags: 0,
                argv: Iter(argv),
                envp: Iter(envp),
            },
            ctx: Context::default(),
        });
        let mut buf = [0u8; 256];
        let frame = encode(&msg, &mut buf).unwrap();
        let len = body_len(frame[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        assert_eq!(len, frame.len() - 4);
        match decode::<Owned>(&frame[4..]).unwrap() {
            ClientMsg::Call(Call { seq: 7, func: "execve", args: Args::Exec { argv, envp, .. }, .. }) => {
                assert_eq!(argv.len(), 2);
                assert_eq!(argv[1], b"hi \xff");
                assert_eq!(envp, [b"A=1".as_slice()]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Our writer ([`Body`]) makes postcard's own bytes, and reports a full buffer at
    /// every size, whether it runs out in a varint, a short run or a long copy.
    #[test]
    fn frames_are_postcards_bytes_and_a_full_buffer_is_reported_at_every_size() {
        let path = [b'p'; 40];
        let mut frames = [0u8; BACKTRACE_MAX * 8];
        let msg: ClientMsg<'_, ()> = ClientMsg::Observe(Call {
            seq: 300,
            func: "__openat_2",
            pid: 123_456,
            tid: -1,
            image: u32::MAX,
            rings: 2,
            args: Args::Open { dirfd: -100, path: &path, flags: 0o2_000_000, mode: 0o644 },
            ctx: Context { backtrace: Some(Words::new(&[u64::MAX; BACKTRACE_MAX], &mut frames)), ..Context::default() },
        });
        let body = postcard::to_allocvec(&msg).unwrap();
        let mut buf = [0u8; 512];
        let frame = encode(&msg, &mut buf).unwrap();
        assert_eq!(&frame[4..], body.as_slice());
        for size in 0..4 + body.len() {
            assert_eq!(encode(&msg, &mut buf[..size]), Err(FrameError::BufferFull), "buffer of {size}");
        }
    }

    #[test]
    fn words_round_trip_and_only_an_exact_count_makes_an_array() {
        let mut buf = [0u8; 4 * 8];
        let words = Words::new(&[1, u64::MAX, 0x7f00_0000_1234, 0, 99], &mut buf);
        let body = postcard::to_allocvec(&Some(words)).unwrap();
        let back: Option<Words<'_>> = postcard::from_bytes(&body).unwrap();
        let back = back.unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), [1, u64::MAX, 0x7f00_0000_1234, 0], "as many as the buffer holds");
        assert_eq!(back.array::<4>(), Some([1, u64::MAX, 0x7f00_0000_1234, 0]));
        assert_eq!(back.array::<3>(), None);
        assert_eq!(back.array::<5>(), None);
        let ragged: Words<'_> = postcard::from_bytes(&[9, 1, 0, 0, 0, 0, 0, 0, 0, 7]).unwrap();
        assert_eq!(ragged.iter().collect::<Vec<_>>(), [1], "a partial word is left out");
        assert_eq!(ragged.array::<1>(), None);
    }

    #[test]
    fn small_buffers_and_oversized_headers_are_refused() {
        let msg = Reply { seq: 1, decision: Decision::Redirect { path: &[b'x'; 64] }, cache: false };
        assert_eq!(encode(&msg, &mut [0u8; 16]), Err(FrameError::BufferFull));
        assert_eq!(body_len((MAX_FRAME as u32 + 1).to_le_bytes(), usize::MAX), Err(FrameError::TooLarge));
        assert_eq!(body_len(100u32.to_le_bytes(), 50), Err(FrameError::TooLarge));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        assert_eq!(decode::<Reply>(&[0xff, 0xff, 0xff]), Err(FrameError::Malformed));
        let mut buf = [0u8; 64];
        let frame = encode(&Reply { seq: 3, decision: Decision::Allow, cache: true }, &mut buf).unwrap();
        let mut body = Vec::from(&frame[4..]);
        assert!(decode::<Reply>(&body).is_ok());
        body.push(0);
        assert_eq!(decode::<Reply>(&body), Err(FrameError::Malformed));
    }

    #[test]
    fn redirect_paths_must_be_single_c_strings() {
        assert_eq!(Decision::Redirect { path: b"/tmp/x\0" }.redirect_cstr(), Some(&b"/tmp/x\0"[..]));
        assert_eq!(Decision::Redirect { path: b"/tmp/x" }.redirect_cstr(), None);
        assert_eq!(Decision::Redirect { path: b"/a\0b\0" }.redirect_cstr(), None);
        assert_eq!(Decision::Redirect { path: b"\0" }.redirect_cstr(), None);
    }

    /// Hostile input: random bytes and mutated valid frames never panic the decoder.
    #[test]
    fn random_and_mutated_frames_decode_or_fail_cleanly() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let argv: &[&[u8]] = &[b"/bin/sh", b"-c", b"true"];
        let mut buf = [0u8; 256];
        let valid = encode(
            &ClientMsg::Call(Call {
                seq: 1,
                func: "execve",
                pid: 1,
                tid: 1,
                image: 0,
                rings: 0,
                args: Args::Exec {
                    dirfd: -100,
                    path: b"/bin/sh",
                    search_path: true,
                    flags: 0,
                    argv: Iter(argv),
                    envp: Iter(&[]),
                },
                ctx: Context { payload: Some(serde_bytes::Bytes::new(b"hello")), ..Context::default() },
            }),
            &mut buf,
        )
        .unwrap()
        .to_vec();
        for round in 0..20_000 {
            let mut body: Vec<u8> =
                if round % 2 == 0 { (0..next() % 64).map(|_| next() as u8).collect() } else { valid[4..].to_vec() };
            if !body.is_empty() {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % body.len();
                    body[at] = next() as u8;
                }
            }
            let _ = decode::<Owned>(&body);
            let _ = decode::<Reply>(&body);
            let _ = decode::<Welcome>(&body);
        }
    }
}
