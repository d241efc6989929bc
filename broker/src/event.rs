//! A mediated call as the policy sees it: the wire request decoded, its paths resolved,
//! and the calling process described.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hermes_wire::{Args, Layer, Op, SockAddr, API_ARGS};

use crate::json::{self, Object};
use crate::resolve::{self, Links, Viewer};

/// A socket address owned by the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetAddr {
    Ip { ip: IpAddr, port: u16, flowinfo: u32, scope_id: u32 },
    Unix(Vec<u8>),
    Other(u16),
}

impl NetAddr {
    pub fn from_wire(addr: &SockAddr) -> Self {
        match *addr {
            SockAddr::Inet { ip, port } => {
                NetAddr::Ip { ip: Ipv4Addr::from(ip).into(), port, flowinfo: 0, scope_id: 0 }
            }
            SockAddr::Inet6 { ip, port, flowinfo, scope_id } => {
                NetAddr::Ip { ip: Ipv6Addr::from(ip).into(), port, flowinfo, scope_id }
            }
            SockAddr::Unix { path } => NetAddr::Unix(path.to_vec()),
            SockAddr::Other { family } => NetAddr::Other(family),
        }
    }

    pub fn to_wire(&self) -> SockAddr<'_> {
        match *self {
            NetAddr::Ip { ip: IpAddr::V4(ip), port, .. } => SockAddr::Inet { ip: ip.octets(), port },
            NetAddr::Ip { ip: IpAddr::V6(ip), port, flowinfo, scope_id } => {
                SockAddr::Inet6 { ip: ip.octets(), port, flowinfo, scope_id }
            }
            NetAddr::Unix(ref path) => SockAddr::Unix { path },
            NetAddr::Other(family) => SockAddr::Other { family },
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            NetAddr::Ip { ip: IpAddr::V4(_), .. } => "inet",
            NetAddr::Ip { ip: IpAddr::V6(_), .. } => "inet6",
            NetAddr::Unix(_) => "unix",
            NetAddr::Other(_) => "other",
        }
    }

    /// `ev.addr`: the IP as text, or the socket path with abstract names as `@name`.
    pub fn addr_bytes(&self) -> Option<Vec<u8>> {
        match self {
            NetAddr::Ip { ip, .. } => Some(ip.to_string().into_bytes()),
            NetAddr::Unix(path) => Some(match path.split_first() {
                Some((0, rest)) => [b"@".as_slice(), rest].concat(),
                _ => path.clone(),
            }),
            NetAddr::Other(_) => None,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            NetAddr::Ip { port, .. } => Some(*port),
            _ => None,
        }
    }

    /// strace-like text: `127.0.0.1:80`, `[::1]:80`, `unix:/run/x.sock`.
    pub fn display(&self) -> String {
        match self {
            NetAddr::Ip { ip: IpAddr::V4(ip), port, .. } => format!("{ip}:{port}"),
            NetAddr::Ip { ip: IpAddr::V6(ip), port, .. } => format!("[{ip}]:{port}"),
            NetAddr::Unix(_) => {
                format!("unix:{}", String::from_utf8_lossy(&self.addr_bytes().unwrap_or_default()))
            }
            NetAddr::Other(family) => format!("family={family}"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum EventArgs {
    Open {
        dirfd: i32,
        path: Vec<u8>,
        raw_path: Vec<u8>,
        flags: i32,
        mode: u32,
    },
    Connect {
        fd: i32,
        addr: NetAddr,
    },
    Send {
        fd: i32,
        len: u64,
        flags: i32,
        addr: Option<NetAddr>,
    },
    Exec {
        path: Vec<u8>,
        raw_path: Vec<u8>,
        argv: Vec<Vec<u8>>,
        envp: Vec<Vec<u8>>,
    },
    /// A hooked library function (`--hook LIB:SYMBOL`).
    Api {
        lib: String,
        symbol: String,
        raw: [u64; API_ARGS],
        args: Vec<ApiArg>,
        /// The calling thread's return addresses as `FILE+OFFSET`, when asked for.
        backtrace: Vec<String>,
    },
}

/// One argument of a hooked library call, decoded by its declared kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiArg {
    Int(i64),
    Ptr(u64),
    /// A C string or a buffer, copied out of the caller's memory (capped).
    Bytes(Vec<u8>),
}

impl ApiArg {
    /// Decode the declared arguments (`kinds`, see [`hermes_wire::Args::Api`]).
    fn decode(
        kinds: &[u8; API_ARGS],
        raw: &[u64; API_ARGS],
        data: &[&hermes_wire::serde_bytes::Bytes; API_ARGS],
    ) -> Vec<Self> {
        kinds
            .iter()
            .zip(raw)
            .zip(data)
            .take_while(|((k, _), _)| **k != b'-')
            .map(|((k, r), d)| match k {
                b's' | b'0'..=b'5' => ApiArg::Bytes(d.to_vec()),
                b'p' => ApiArg::Ptr(*r),
                _ => ApiArg::Int(*r as i64),
            })
            .collect()
    }
}

/// The calling process, as far as the broker can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub ppid: i32,
    pub exe: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub func: String,
    pub op: Op,
    pub pid: i32,
    pub tid: i32,
    pub layer: Layer,
    pub proc: ProcInfo,
    pub args: EventArgs,
    /// A relative path whose starting directory could not be read from /proc: what
    /// the kernel would open is unknown, so the call is denied without asking.
    pub unresolved: bool,
    /// When the broker received the call (CLOCK_MONOTONIC, ns: the clock every
    /// process on the machine shares).
    pub mono_ns: u64,
    /// What the policy asked to see beyond the arguments (`hermes.want`).
    pub ctx: EventContext,
}

/// Context on demand (`hermes.want{…}`); empty unless asked for.
#[derive(Clone, Debug, Default)]
pub struct EventContext {
    /// The calling thread's return addresses, symbolised (`libc.so.6!fopen+0x1a`).
    pub backtrace: Vec<String>,
    /// The first bytes of a send's payload.
    pub payload: Option<Vec<u8>>,
    /// The ptrace layer's registers at the stop, in [`hermes_wire::REGS`] order.
    pub regs: Option<[u64; hermes_wire::REGS_LEN]>,
    /// `/proc/PID/maps` at the call.
    pub maps: Option<String>,
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live local timespec; CLOCK_MONOTONIC is always supported.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND;

impl Event {
    /// Decode a wire request, resolving its paths in the caller's view.
    pub fn new(func: &str, pid: i32, tid: i32, layer: Layer, proc: ProcInfo, args: &Args<Vec<&[u8]>>) -> Self {
        Event::observed(func, Viewer { pid, tid }, layer, proc, args, |_| None, None)
    }

    /// [`Event::new`] for a call that ran before the broker read it (an observed call):
    /// by then its directory descriptor may have been closed and its number reused, so
    /// a path relative to one starts from `dirs(dirfd)`, the directory the process's
    /// reported opens left at that number, when known. `links`: the symlinks read for
    /// the batch of observed calls this one is read with.
    pub fn observed(
        func: &str,
        viewer: Viewer,
        layer: Layer,
        proc: ProcInfo,
        args: &Args<Vec<&[u8]>>,
        dirs: impl Fn(i32) -> Option<Vec<u8>>,
        links: Option<&mut Links>,
    ) -> Self {
        let Viewer { pid, tid } = viewer;
        let op = args.op();
        let mut unresolved = false;
        let args = match *args {
            Args::Open { dirfd, path, flags, mode } => EventArgs::Open {
                dirfd,
                path: {
                    let known = (dirfd != resolve::AT_FDCWD && path.first() != Some(&b'/')).then(|| dirs(dirfd));
                    viewer.resolve_from(known.flatten(), dirfd, path, flags & O_NOFOLLOW == 0, links)
                }
                .unwrap_or_else(|| {
                    unresolved = true;
                    path.to_vec()
                }),
                raw_path: path.to_vec(),
                flags,
                mode,
            },
            Args::Connect { fd, ref addr } => EventArgs::Connect { fd, addr: NetAddr::from_wire(addr) },
            Args::SendTo { fd, len, flags, ref addr } | Args::SendMsg { fd, len, flags, ref addr } => {
                EventArgs::Send { fd, len, flags, addr: addr.as_ref().map(NetAddr::from_wire) }
            }
            Args::Exec { dirfd, path, search_path, ref argv, ref envp, .. } => {
                let found = search_path
                    .then(|| {
                        let path_var = envp.iter().find_map(|e| e.strip_prefix(b"PATH="));
                        resolve::search_path(path, path_var)
                    })
                    .flatten();
                EventArgs::Exec {
                    path: viewer.resolve(dirfd, found.as_deref().unwrap_or(path), true).unwrap_or_else(|| {
                        unresolved = true;
                        path.to_vec()
                    }),
                    raw_path: path.to_vec(),
                    argv: argv.iter().map(|a| a.to_vec()).collect(),
                    envp: envp.iter().map(|e| e.to_vec()).collect(),
                }
            }
            Args::Api { symbol, kinds, raw, ref data, backtrace } => {
                let (lib, name) = symbol.split_once(':').unwrap_or(("", symbol));
                let frames = backtrace.map(|b| b.iter().take_while(|&ip| ip != 0).collect::<Vec<_>>());
                EventArgs::Api {
                    lib: lib.to_owned(),
                    symbol: name.to_owned(),
                    raw,
                    args: ApiArg::decode(&kinds, &raw, data),
                    backtrace: frames.map(|f| symbolize(pid, &f)).unwrap_or_default(),
                }
            }
        };
        Event {
            func: func.to_owned(),
            op,
            pid,
            tid,
            layer,
            proc,
            args,
            unresolved,
            mono_ns: monotonic_ns(),
            ctx: EventContext::default(),
        }
    }

    /// Add the context a client sent, and what the broker reads itself when wanted.
    pub fn with_context(mut self, ctx: &hermes_wire::Context, maps: bool) -> Self {
        if let Some(frames) = ctx.backtrace {
            let frames: Vec<u64> = frames.iter().take_while(|&ip| ip != 0).collect();
            self.ctx.backtrace = symbolize(self.pid, &frames);
        }
        self.ctx.payload = ctx.payload.map(|p| p.to_vec());
        self.ctx.regs = ctx.regs.and_then(hermes_wire::Words::array);
        if maps {
            self.ctx.maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok();
        }
        self
    }

    /// The decoded arguments for the trace, one JSON object (the tests compare it
    /// with what a trace line holds).
    #[cfg(test)]
    pub fn args_json(&self) -> serde_json::Value {
        let mut out = Vec::new();
        let mut o = Object::new(&mut out);
        self.write_args(&mut o);
        o.end();
        serde_json::from_slice(&out).expect("the trace's own JSON parses")
    }

    /// The decoded arguments as members of `o` (the trace's `args`), in key order.
    pub(crate) fn write_args(&self, o: &mut Object<'_>) {
        match &self.args {
            EventArgs::Open { dirfd, path, raw_path, flags, mode } => {
                o.value("dirfd", dirfd);
                o.value("flags", flags);
                o.value("mode", mode);
                o.bytes("path", path);
                o.bytes("raw_path", raw_path);
            }
            EventArgs::Connect { fd, addr } => {
                let addr_bytes = addr.addr_bytes();
                if let Some(a) = &addr_bytes {
                    o.bytes("addr", a);
                }
                o.str("family", addr.family());
                o.value("fd", fd);
                if let Some(port) = addr.port() {
                    o.value("port", &port);
                }
            }
            EventArgs::Send { fd, len, flags, addr } => {
                let addr_bytes = addr.as_ref().and_then(NetAddr::addr_bytes);
                if let Some(a) = &addr_bytes {
                    o.bytes("addr", a);
                }
                if let Some(addr) = addr {
                    o.str("family", addr.family());
                }
                o.value("fd", fd);
                o.value("flags", flags);
                o.value("len", len);
                if let Some(port) = addr.as_ref().and_then(NetAddr::port) {
                    o.value("port", &port);
                }
            }
            EventArgs::Exec { path, raw_path, argv, envp } => {
                o.bytes_list("argv", argv);
                o.bytes_list("envp", envp);
                o.bytes("path", path);
                o.bytes("raw_path", raw_path);
            }
            EventArgs::Api { lib, symbol, raw, args, backtrace } => {
                o.with("args", |out| {
                    out.push(b'[');
                    for (i, a) in args.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        match a {
                            ApiArg::Int(n) => json::value_into(out, n),
                            ApiArg::Ptr(p) => json::hex_string(out, *p),
                            ApiArg::Bytes(b) => json::bytes(out, b),
                        }
                    }
                    out.push(b']');
                });
                if !backtrace.is_empty() {
                    o.value("backtrace", backtrace);
                }
                o.str("lib", lib);
                o.value("raw", raw);
                o.str("symbol", symbol);
            }
        }
    }

    /// A short strace-like rendering for `-v`: `openat("/etc/passwd", 0x0)`.
    pub fn summary(&self) -> String {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match &self.args {
            EventArgs::Open { path, flags, .. } => format!("{}({:?}, {:#o})", self.func, lossy(path), flags),
            EventArgs::Connect { fd, addr } => format!("{}({fd}, {})", self.func, addr.display()),
            EventArgs::Send { fd, len, addr, .. } => match addr {
                Some(addr) => format!("{}({fd}, {len} bytes, {})", self.func, addr.display()),
                None => format!("{}({fd}, {len} bytes)", self.func),
            },
            EventArgs::Exec { path, argv, .. } => {
                let argv: Vec<String> = argv.iter().map(|a| format!("{:?}", lossy(a))).collect();
                format!("{}({:?}, [{}])", self.func, lossy(path), argv.join(", "))
            }
            EventArgs::Api { raw, args, .. } if args.is_empty() => {
                let raw: Vec<String> = raw.iter().map(|r| format!("{r:#x}")).collect();
                format!("{}({}, …)", self.func, raw.join(", "))
            }
            EventArgs::Api { args, .. } => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match a {
                        ApiArg::Int(i) => i.to_string(),
                        ApiArg::Ptr(p) => format!("{p:#x}"),
                        ApiArg::Bytes(b) => format!("{:?}", lossy(b)),
                    })
                    .collect();
                format!("{}({})", self.func, args.join(", "))
            }
        }
    }

    /// Whether an open may modify the file (`ev.write`).
    pub fn writes(flags: i32) -> bool {
        flags & WRITE_FLAGS != 0
    }
}

/// Name each return address by the file mapped there and, when its symbol tables say,
/// the function: `/usr/lib/x86_64-linux-gnu/libz.so.1+0x2f10 (deflate+0x40)` (the offset
/// is the file offset, what `addr2line -e FILE` takes for a shared object).
fn symbolize(pid: i32, frames: &[u64]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let regions: Vec<(u64, u64, u64, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, _perms, offset) = (f.next()?, f.next()?, f.next()?);
            let path = f.nth(2).unwrap_or("");
            let (lo, hi) = range.split_once('-')?;
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
                u64::from_str_radix(offset, 16).ok()?,
                path,
            ))
        })
        .collect();
    frames
        .iter()
        .map(|&ip| match regions.iter().find(|(lo, hi, _, _)| (*lo..*hi).contains(&ip)) {
            Some((lo, _, off, path)) if !path.is_empty() => {
                let offset = ip - lo + off;
                // A return address is just past the call: name the call's function.
                match crate::symbols::name(path, offset.saturating_sub(1)) {
                    Some(function) => format!("{path}+{offset:#x} ({function})"),
                    None => format!("{path}+{offset:#x}"),
                }
            }
            _ => format!("{ip:#x}"),
        })
        .collect()
}
