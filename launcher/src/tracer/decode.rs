//! A seccomp stop's registers and memory, decoded into the request the broker decides
//! on — the same [`Args`] the preload sends for the libc call.

use hermes_wire::{Args, SockAddr, MAX_PATH, SOCKADDR_MAX};
use serde_bytes::Bytes;

use super::mem::{self, Errno};
use super::ptrace::{Regs, Stopped};
use crate::seccomp::{Shape, Syscall};

/// The kernel's limit on one argv/envp string (MAX_ARG_STRLEN), NUL included.
const ARG_MAX_LEN: usize = 32 * 4096;
/// How many argv or envp entries we read before calling it E2BIG.
const ARG_MAX_COUNT: usize = 1 << 17;
/// How many bytes of argv and envp together (the wire's frame limit is 4 MiB).
const ARG_MAX_TOTAL: usize = 3 << 20;
/// Most iovecs sendmsg takes (UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// `struct open_how` (openat2, first version): flags, mode, resolve.
const OPEN_HOW_SIZE: u64 = 24;
/// `struct msghdr` on x86_64, and where its fields sit.
pub const MSGHDR_SIZE: usize = 56;
pub const MSGHDR_NAME: usize = 0;
pub const MSGHDR_NAMELEN: usize = 8;
const MSGHDR_IOV: usize = 16;
const MSGHDR_IOVLEN: usize = 24;

/// Syscall argument `i` (x86_64: rdi, rsi, rdx, r10, r8, r9).
pub fn arg(regs: &Regs, i: usize) -> u64 {
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9][i]
}

pub fn set_arg(regs: &mut Regs, i: usize, value: u64) {
    let slot = match i {
        0 => &mut regs.rdi,
        1 => &mut regs.rsi,
        2 => &mut regs.rdx,
        3 => &mut regs.r10,
        4 => &mut regs.r8,
        _ => &mut regs.r9,
    };
    *slot = value;
}

/// Where a redirect goes in a syscall's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The path is argument `n`.
    Path(usize),
    /// The socket address is argument `addr`, its length argument `len`.
    Addr { addr: usize, len: usize },
    /// The address is inside the `struct msghdr` that argument 1 points to.
    MsgHdr,
}

impl Target {
    pub fn of(shape: Shape) -> Target {
        match shape {
            Shape::Open | Shape::Creat | Shape::Execve => Target::Path(0),
            Shape::OpenAt | Shape::OpenAt2 | Shape::Execveat => Target::Path(1),
            Shape::Connect => Target::Addr { addr: 1, len: 2 },
            Shape::SendTo => Target::Addr { addr: 4, len: 5 },
            Shape::SendMsg => Target::MsgHdr,
        }
    }
}

/// A decoded request, owning what it read from the tracee.
#[derive(Debug)]
pub enum Request {
    Open { dirfd: i32, path: Vec<u8>, flags: i32, mode: u32 },
    Connect { fd: i32, addr: Vec<u8> },
    SendTo { fd: i32, len: u64, flags: i32, addr: Option<Vec<u8>> },
    SendMsg { fd: i32, len: u64, flags: i32, addr: Option<Vec<u8>>, hdr: [u8; MSGHDR_SIZE] },
    Exec { dirfd: i32, path: Vec<u8>, flags: i32, argv: Vec<Vec<u8>>, envp: Vec<Vec<u8>> },
}

/// The mode is only read by the kernel (and only sent) with O_CREAT or O_TMPFILE.
fn open_mode(flags: i32, mode: u64) -> u32 {
    if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE {
        mode as u32
    } else {
        0
    }
}

/// Decode the call `sys` stopped in. An `Err` is the errno the syscall fails with
/// without asking the broker (an unreadable pointer: EFAULT, as the kernel would).
pub fn decode(st: &Stopped, sys: &Syscall, regs: &Regs) -> Result<Request, Errno> {
    let a = |i| arg(regs, i);
    let path = |i| mem::read_cstr(st, a(i), MAX_PATH, libc::ENAMETOOLONG);
    Ok(match sys.shape {
        Shape::Open => {
            let flags = a(1) as i32;
            Request::Open { dirfd: libc::AT_FDCWD, path: path(0)?, flags, mode: open_mode(flags, a(2)) }
        }
        Shape::OpenAt => {
            let flags = a(2) as i32;
            Request::Open { dirfd: a(0) as i32, path: path(1)?, flags, mode: open_mode(flags, a(3)) }
        }
        Shape::OpenAt2 => {
            if a(3) < OPEN_HOW_SIZE {
                return Err(libc::EINVAL);
            }
            let mut how = [0u8; OPEN_HOW_SIZE as usize];
            mem::read(st, a(2), &mut how)?;
            let word = |i: usize| u64::from_ne_bytes(how[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            let flags = word(0) as i32;
            Request::Open { dirfd: a(0) as i32, path: path(1)?, flags, mode: open_mode(flags, word(1)) }
        }
        Shape::Creat => {
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
            Request::Open { dirfd: libc::AT_FDCWD, path: path(0)?, flags, mode: a(1) as u32 }
        }
        Shape::Connect => Request::Connect { fd: a(0) as i32, addr: sockaddr(st, a(1), a(2))?.unwrap_or_default() },
        Shape::SendTo => {
            Request::SendTo { fd: a(0) as i32, len: a(2), flags: a(3) as i32, addr: sockaddr(st, a(4), a(5))? }
        }
        Shape::SendMsg => {
            let mut hdr = [0u8; MSGHDR_SIZE];
            mem::read(st, a(1), &mut hdr)?;
            let field = |at: usize| u64::from_ne_bytes(hdr[at..at + 8].try_into().unwrap_or_default());
            let namelen = u32::from_ne_bytes(hdr[MSGHDR_NAMELEN..MSGHDR_NAMELEN + 4].try_into().unwrap_or_default());
            let iovlen = field(MSGHDR_IOVLEN);
            if iovlen > IOV_MAX as u64 {
                return Err(libc::EMSGSIZE);
            }
            let mut iov = vec![0u8; iovlen as usize * 16];
            if iovlen > 0 {
                mem::read(st, field(MSGHDR_IOV), &mut iov)?;
            }
            // iovec: base, len. The sum is what the call would send at most.
            let len = iov
                .chunks_exact(16)
                .fold(0u64, |sum, v| sum.saturating_add(u64::from_ne_bytes(v[8..16].try_into().unwrap_or_default())));
            // The kernel truncates an over-long msg_namelen rather than refusing it.
            if (namelen as i32) < 0 {
                return Err(libc::EINVAL);
            }
            let addr = sockaddr(st, field(MSGHDR_NAME), (namelen as usize).min(SOCKADDR_MAX) as u64)?;
            Request::SendMsg { fd: a(0) as i32, len, flags: a(2) as i32, addr, hdr }
        }
        Shape::Execve => {
            Request::Exec { dirfd: libc::AT_FDCWD, path: path(0)?, flags: 0, argv: Vec::new(), envp: Vec::new() }
                .with_lists(st, a(1), a(2))?
        }
        Shape::Execveat => {
            Request::Exec { dirfd: a(0) as i32, path: path(1)?, flags: a(4) as i32, argv: Vec::new(), envp: Vec::new() }
                .with_lists(st, a(2), a(3))?
        }
    })
}

/// The first `len` bytes (at most a `sockaddr_storage`) of the address at `addr`;
/// `None` when there is none (NULL or zero length), which the kernel also accepts
/// for sendto and refuses for connect.
fn sockaddr(st: &Stopped, addr: u64, len: u64) -> Result<Option<Vec<u8>>, Errno> {
    let len = len as u32 as usize;
    if addr == 0 || len == 0 {
        return Ok(None);
    }
    if len > SOCKADDR_MAX {
        // The kernel refuses these (EINVAL) before reading them.
        return Err(libc::EINVAL);
    }
    let mut raw = vec![0u8; len];
    mem::read(st, addr, &mut raw)?;
    Ok(Some(raw))
}

/// The first `want` bytes a sendmsg would send: its iovecs' data, gathered in order
/// from the program's msghdr `hdr` (as the preload gathers them for `ev.data`).
pub fn msg_payload(st: &Stopped, hdr: &[u8; MSGHDR_SIZE], want: usize) -> Result<Vec<u8>, Errno> {
    let field = |at: usize| u64::from_ne_bytes(hdr[at..at + 8].try_into().unwrap_or_default());
    let iovlen = (field(MSGHDR_IOVLEN) as usize).min(IOV_MAX);
    let mut iov = vec![0u8; iovlen * 16];
    if iovlen > 0 {
        mem::read(st, field(MSGHDR_IOV), &mut iov)?;
    }
    let mut out = Vec::new();
    for v in iov.chunks_exact(16) {
        let word = |i: usize| u64::from_ne_bytes(v[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let take = (word(1) as usize).min(want - out.len());
        if word(0) == 0 || take == 0 {
            continue;
        }
        let start = out.len();
        out.resize(start + take, 0);
        mem::read(st, word(0), &mut out[start..])?;
        if out.len() == want {
            break;
        }
    }
    Ok(out)
}

impl Request {
    fn with_lists(mut self, st: &Stopped, argv_at: u64, envp_at: u64) -> Result<Self, Errno> {
        if let Request::Exec { argv, envp, .. } = &mut self {
            let mut total = 0;
            for (list, at) in [(argv, argv_at), (envp, envp_at)] {
                for ptr in mem::read_ptr_list(st, at, ARG_MAX_COUNT)? {
                    let s = mem::read_cstr(st, ptr, ARG_MAX_LEN, libc::E2BIG)?;
                    total += s.len() + 1;
                    if total > ARG_MAX_TOTAL {
                        return Err(libc::E2BIG);
                    }
                    list.push(s);
                }
            }
        }
        Ok(self)
    }

    /// The wire form. `None` when the call is left to the kernel, which refuses it:
    /// a connect whose address is too short for its family, as the preload does.
    pub fn wire(&self) -> Option<Args<'_, Vec<&Bytes>>> {
        fn addr(raw: &Option<Vec<u8>>) -> Option<SockAddr<'_>> {
            raw.as_deref().and_then(SockAddr::from_raw)
        }
        Some(match self {
            Request::Open { dirfd, path, flags, mode } => {
                Args::Open { dirfd: *dirfd, path, flags: *flags, mode: *mode }
            }
            Request::Connect { fd, addr } => Args::Connect { fd: *fd, addr: SockAddr::from_raw(addr)? },
            Request::SendTo { fd, len, flags, addr: raw } => {
                Args::SendTo { fd: *fd, len: *len, flags: *flags, addr: addr(raw) }
            }
            Request::SendMsg { fd, len, flags, addr: raw, .. } => {
                Args::SendMsg { fd: *fd, len: *len, flags: *flags, addr: addr(raw) }
            }
            Request::Exec { dirfd, path, flags, argv, envp } => Args::Exec {
                dirfd: *dirfd,
                path,
                search_path: false,
                flags: *flags,
                argv: argv.iter().map(|a| Bytes::new(a)).collect(),
                envp: envp.iter().map(|e| Bytes::new(e)).collect(),
            },
        })
    }
}
