//! The tracer's one connection to the broker: `Hello` → `Welcome`, then `Call` →
//! `Reply` for each mediated syscall and a one-way `Done` with its result when the
//! broker asks for results. Every failure to get a valid answer is a deny with EPERM.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

use hermes_broker::board::BoardView;
use hermes_wire::{self as wire, board, Args, Call, ClientMsg, Decision, Done, Hello, Layer, Op, Reply, Welcome};
use serde_bytes::Bytes;

/// How long the broker may take to answer before the call fails closed.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest reply: a redirect path or rewritten payload and the frame around it.
const REPLY_MAX: usize = wire::MAX_PATH + 256;

/// A decision as the tracer applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(i32),
    /// A path, NUL-terminated.
    Redirect(Vec<u8>),
    /// A socket address in the kernel's layout.
    RedirectAddr(Vec<u8>),
    Emulate(i64),
    Kill,
    /// Run the call with these arguments replaced.
    Rewrite {
        flags: Option<i32>,
        mode: Option<u32>,
        data: Option<Vec<u8>>,
    },
}

/// Why an exchange failed (each one ends in EPERM for the call).
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The socket failed or the broker went away.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A frame that does not decode, is too large, or answers another call.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

pub struct Client {
    socket: String,
    board: Option<BoardView>,
    stream: Option<UnixStream>,
    welcome: Option<Welcome>,
    seq: u32,
    buf: Vec<u8>,
    warned: bool,
}

type List<'a> = Vec<&'a Bytes>;

impl Client {
    /// Connect to the broker's abstract socket `socket`. A failure is reported and
    /// leaves the client disconnected: every call is then denied with EPERM.
    pub fn connect(socket: &str, board: Option<&str>) -> Self {
        let mut client = Client {
            socket: socket.to_owned(),
            board: board.and_then(BoardView::map),
            stream: None,
            welcome: None,
            seq: 0,
            buf: Vec::new(),
            warned: false,
        };
        if let Err(e) = client.reconnect() {
            client.warn(&e);
        }
        client
    }

    fn reconnect(&mut self) -> Result<(), ExchangeError> {
        let addr = SocketAddr::from_abstract_name(self.socket.as_bytes())?;
        let mut stream = UnixStream::connect_addr(&addr)?;
        stream.set_read_timeout(Some(BROKER_TIMEOUT))?;
        stream.set_write_timeout(Some(BROKER_TIMEOUT))?;
        let hello: ClientMsg<'_, ()> = ClientMsg::Hello(Hello {
            version: wire::PROTOCOL_VERSION,
            layer: Layer::Ptrace,
            pid: std::process::id() as i32,
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
            client: "ptrace",
            // The tracer's calls stop the tracee anyway: it keeps to the socket.
            ring: false,
            image: 0,
            ppid: 0,
            exe: b"",
        });
        send(&mut stream, &hello, &mut self.buf)?;
        let welcome = recv(&mut stream, &mut self.buf, 64)?;
        self.welcome = Some(wire::decode::<Welcome>(welcome).map_err(|_| ExchangeError::Protocol("expected Welcome"))?);
        self.stream = Some(stream);
        Ok(())
    }

    /// Whether the policy watches `op` (decides it or only observes it: the tracer
    /// asks about both, its stop costs more than the question). Without a broker every
    /// operation counts as watched, so that it is denied. The board, when there is
    /// one, has the policy in force now (it may have been reloaded).
    pub fn watches(&self, op: Op) -> bool {
        if self.stream.is_some() {
            if let Some(board) = self.board {
                return board.word(board::WATCHED) & op.bit() != 0;
            }
        }
        match self.welcome {
            Some(w) => (w.mask | w.observe) & op.bit() != 0,
            None => true,
        }
    }

    /// Whether the broker wants the results of the calls it let run.
    pub fn wants_results(&self) -> bool {
        match self.board {
            Some(board) => board.word(board::FLAGS) & board::REPORT != 0,
            None => self.welcome.is_some_and(|w| w.report),
        }
    }

    /// Whether the policy asked for the registers at each stop.
    pub fn wants_registers(&self) -> bool {
        self.board.is_some_and(|b| b.word(board::FLAGS) & board::REGISTERS != 0)
    }

    /// How many bytes of a send's payload the policy asked for.
    pub fn wants_payload(&self) -> usize {
        self.board.map_or(0, |b| b.word(board::PAYLOAD) as usize)
    }

    /// Ask about one call. Returns the call's sequence number (for [`Client::done`])
    /// and the verdict; anything but a valid answer is a deny with EPERM.
    /// `image` counts `pid`'s execs (see [`Call::image`]).
    pub fn ask(
        &mut self,
        func: &str,
        (pid, tid, image): (i32, i32, u32),
        args: Args<'_, List<'_>>,
        ctx: wire::Context<'_>,
    ) -> (u32, Verdict) {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        match self.exchange(Call { seq, func, pid, tid, image, rings: 0, args, ctx }) {
            Ok(verdict) => (seq, verdict),
            Err(e) => {
                self.stream = None;
                self.warn(&e);
                (seq, Verdict::Deny(libc::EPERM))
            }
        }
    }

    fn exchange(&mut self, call: Call<'_, List<'_>>) -> Result<Verdict, ExchangeError> {
        if self.stream.is_none() {
            self.reconnect()?;
        }
        let Some(stream) = self.stream.as_mut() else { return Err(ExchangeError::Protocol("not connected")) };
        let seq = call.seq;
        send(stream, &ClientMsg::Call(call), &mut self.buf)?;
        let body = recv(stream, &mut self.buf, REPLY_MAX)?;
        let reply: Reply = wire::decode(body).map_err(|_| ExchangeError::Protocol("malformed reply"))?;
        if reply.seq != seq {
            return Err(ExchangeError::Protocol("reply to another call"));
        }
        Ok(match reply.decision {
            Decision::Allow => Verdict::Allow,
            Decision::Deny { errno } => Verdict::Deny(errno),
            Decision::Emulate { ret } => Verdict::Emulate(ret),
            Decision::Kill => Verdict::Kill,
            d @ Decision::Redirect { .. } => {
                let path = d.redirect_cstr().ok_or(ExchangeError::Protocol("redirect path is not a C string"))?;
                Verdict::Redirect(path.to_vec())
            }
            Decision::Rewrite { flags, mode, data } => Verdict::Rewrite { flags, mode, data: data.map(|d| d.to_vec()) },
            Decision::RedirectAddr(addr) => {
                let mut raw = [0u8; wire::SOCKADDR_MAX];
                match addr.to_raw(&mut raw) {
                    Some(n) => Verdict::RedirectAddr(raw[..n].to_vec()),
                    // As the preload: an address the kernel cannot take.
                    None => Verdict::Deny(libc::EAFNOSUPPORT),
                }
            }
        })
    }

    /// Report the result of call `seq` (one-way; a failure only loses the result).
    pub fn done(&mut self, seq: u32, ret: i64, errno: i32, duration: Duration) {
        let Some(stream) = self.stream.as_mut() else { return };
        let done: ClientMsg<'_, ()> =
            ClientMsg::Done(Done { seq, ret, errno, duration_ns: duration.as_nanos().min(u64::MAX as u128) as u64 });
        if send(stream, &done, &mut self.buf).is_err() {
            self.stream = None;
        }
    }

    fn warn(&mut self, e: &ExchangeError) {
        if !std::mem::replace(&mut self.warned, true) {
            eprintln!("hermes: ptrace fallback: broker unreachable ({e}): denying mediated calls with EPERM");
        }
    }
}

fn send<T: serde::Serialize>(stream: &mut UnixStream, msg: &T, buf: &mut Vec<u8>) -> Result<(), ExchangeError> {
    if buf.len() < 64 * 1024 {
        buf.resize(64 * 1024, 0);
    }
    let len = match wire::encode(msg, buf) {
        Ok(frame) => frame.len(),
        Err(wire::FrameError::BufferFull) => {
            buf.resize(wire::MAX_FRAME + 4, 0);
            wire::encode(msg, buf).map_err(|_| ExchangeError::Protocol("request too large"))?.len()
        }
        Err(_) => return Err(ExchangeError::Protocol("request too large")),
    };
    stream.write_all(&buf[..len])?;
    Ok(())
}

fn recv<'b>(stream: &mut UnixStream, buf: &'b mut Vec<u8>, cap: usize) -> Result<&'b [u8], ExchangeError> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = wire::body_len(header, cap).map_err(|_| ExchangeError::Protocol("reply too large"))?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    stream.read_exact(&mut buf[..len])?;
    Ok(&buf[..len])
}
