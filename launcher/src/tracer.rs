//! The seccomp + ptrace fallback, for programs the preload cannot enter (static
//! binaries). The launcher forks the target, attaches to it with PTRACE_SEIZE, and
//! the child installs the seccomp filter before exec; from then on every mediated
//! syscall of the target and of every process and thread it starts stops in the
//! tracer loop below, which decodes it, asks the broker, and applies the decision.
//!
//! Limits of this first version, by design of ptrace: the tracer reads the
//! arguments before the kernel does, so another thread of a hostile program can
//! change a path between the two reads; and a multi-threaded program's calls are
//! decided one at a time.

mod client;
mod decode;
mod mem;
mod ptrace;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::Instant;

use hermes_wire::{self as wire, Op};

use crate::seccomp::{self, Doors, Filter, Shape};
use client::{Client, Verdict};
use decode::{Request, Target};
use ptrace::{Event, Regs, Restart, Resumed, Stop, Stopped, Tid};

/// Run `cmd` (its program, arguments and environment; `arg0` as its argv[0]) under
/// the fallback, asking the broker at abstract socket `socket`. Returns the target's
/// exit status (128+N for signal N) once every process of its tree is gone. An error
/// means the target never ran; exec's own errno comes back as is.
///
/// With `cookie` (strict mode: a dynamic target that also has the preload), the
/// syscalls carrying it are the preload's own, already mediated, and not stopped.
pub fn run(cmd: &Command, arg0: &OsStr, socket: &str, cookie: Option<u64>, doors: Doors) -> io::Result<u8> {
    let filter = Filter::new(cookie, doors).map_err(io::Error::other)?;
    // The board (hot reload): named in the target's environment, or inherited.
    let board = cmd
        .get_envs()
        .find(|(k, _)| *k == "HERMES_BOARD")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        .or_else(|| std::env::var("HERMES_BOARD").ok());
    let client = Client::connect(socket, board.as_deref());
    let child = spawn(cmd, arg0, &filter)?;
    crate::launch::forward_signals(child.pid);
    Tracer {
        client,
        target: child.pid,
        exec_errors: Some(child.exec_errors),
        threads: HashMap::new(),
        images: HashMap::new(),
        last_image: 0,
        status: None,
        launch_failed: None,
    }
    .run()
}

/// The forked target, attached and released.
struct Child {
    pid: Tid,
    /// Read end of a close-on-exec pipe: the child writes exec's errno into it.
    exec_errors: OwnedFd,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork the target. The child waits on a pipe until we have seized it, then installs
/// the filter (setting no_new_privs first when it must) and execs; everything it needs
/// is built here, before the fork, because the child may not allocate.
fn spawn(cmd: &Command, arg0: &OsStr, filter: &Filter) -> io::Result<Child> {
    let path = cstring(cmd.get_program())?;
    let argv: Vec<CString> = std::iter::once(arg0).chain(cmd.get_args()).map(cstring).collect::<io::Result<_>>()?;
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    for (key, value) in cmd.get_envs() {
        env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            env.push((key.to_owned(), value.to_owned()));
        }
    }
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstring(OsStr::from_bytes(&[k.as_bytes(), b"=", v.as_bytes()].concat())))
        .collect::<io::Result<_>>()?;
    let argv_ptrs: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_ptrs: Vec<*const libc::c_char> =
        envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let (release_r, release_w) = pipe()?;
    let (errors_r, errors_w) = pipe()?;

    // SAFETY: the child runs only `child_main`, which makes async-signal-safe calls
    // on memory prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let fds = ChildFds {
            release_r: release_r.as_raw_fd(),
            release_w: release_w.as_raw_fd(),
            errors_r: errors_r.as_raw_fd(),
            errors_w: errors_w.as_raw_fd(),
        };
        // SAFETY: the pointers are to NUL-terminated strings and NULL-terminated
        // arrays that live on in the child's copy of this frame.
        unsafe { child_main(fds, filter, path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) }
    }
    drop((release_r, errors_w));
    if let Err(e) = ptrace::seize(pid) {
        // SAFETY: our own child, still blocked on the pipe; kill and reap it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(io::Error::new(e.kind(), format!("cannot trace it (PTRACE_SEIZE: {e})")));
    }
    // Release the child: one byte. Closing the pipe without it means "give up".
    // SAFETY: writing one byte from a live local to our pipe.
    let released = unsafe { libc::write(release_w.as_raw_fd(), b"g".as_ptr().cast(), 1) } == 1;
    drop(release_w);
    if !released {
        return Err(io::Error::last_os_error());
    }
    Ok(Child { pid, exec_errors: errors_r })
}

struct ChildFds {
    release_r: libc::c_int,
    release_w: libc::c_int,
    errors_r: libc::c_int,
    errors_w: libc::c_int,
}

/// The fork child: async-signal-safe calls only, no allocation, never returns.
///
/// # Safety
/// Call only in a fresh fork child, with `path`, `argv` and `envp` valid for execve.
unsafe fn child_main(
    fds: ChildFds,
    filter: &Filter,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY: plain syscalls on descriptors and memory this process owns; `fail`
    // reports errno into the close-on-exec pipe and leaves.
    unsafe {
        let fail = |errno: i32| -> ! {
            libc::write(fds.errors_w, (&errno as *const i32).cast(), 4);
            libc::_exit(127)
        };
        libc::close(fds.release_w);
        libc::close(fds.errors_r);
        // The launcher (a Rust program) ignores SIGPIPE; a target starts with the
        // default dispositions and no blocked signals, as std's Command gives it.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Wait for the tracer. EOF (it gave up or died) means: do not run unmediated.
        let mut byte = 0u8;
        loop {
            match libc::read(fds.release_r, (&mut byte as *mut u8).cast(), 1) {
                1 => break,
                -1 if *libc::__errno_location() == libc::EINTR => continue,
                _ => fail(libc::ECHILD),
            }
        }
        libc::close(fds.release_r);
        // With CAP_SYS_ADMIN (root) the filter goes in as it is, and a set-uid program or
        // one with file capabilities keeps its privileges under the tracer, as under
        // strace run by root. Without, the kernel takes a filter only from a process that
        // can gain no privileges (no_new_privs): such a program then runs without them.
        let mut installed = filter.install();
        if installed == Err(libc::EACCES) {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                fail(*libc::__errno_location());
            }
            installed = filter.install();
        }
        if let Err(errno) = installed {
            fail(errno);
        }
        libc::execve(path, argv, envp);
        fail(*libc::__errno_location())
    }
}

/// What the tracer keeps per thread.
#[derive(Default)]
struct Thread {
    /// The thread's process (read from /proc on its first mediated call).
    tgid: Option<Tid>,
    /// A mediated call we let run and must see return: the thread is restarted with
    /// PTRACE_SYSCALL until its syscall-exit-stop.
    in_flight: Option<InFlight>,
}

struct InFlight {
    op: Op,
    /// The broker's sequence number, when it wants the result.
    report: Option<u32>,
    started: Instant,
    /// Argument registers a redirect changed, with the values to put back: the
    /// program's compiled code may rely on them surviving the syscall.
    restore: Vec<(usize, u64)>,
}

struct Tracer {
    client: Client,
    target: Tid,
    /// Until the target's first exec: that execve is the launcher's own, not the
    /// program's, and the pipe tells why it failed if it does.
    exec_errors: Option<OwnedFd>,
    threads: HashMap<Tid, Thread>,
    /// Per process: the number of its current program image, unique in this run (the
    /// broker caches what it reads of a process per image). Assigned on first use.
    images: HashMap<Tid, u32>,
    last_image: u32,
    /// The target's exit code, once it is gone.
    status: Option<u8>,
    /// The target died before its exec: exec's errno.
    launch_failed: Option<i32>,
}

/// `-ERESTARTSYS` … `-ERESTART_RESTARTBLOCK`: an interrupted call the kernel restarts
/// (and so mediates again); not a result.
fn is_restart(ret: i64) -> bool {
    (-516..=-512).contains(&ret)
}

fn tgid_of(tid: Tid) -> Option<Tid> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

impl Tracer {
    fn run(mut self) -> io::Result<u8> {
        loop {
            let stop = match ptrace::wait() {
                Ok(Some(stop)) => stop,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("hermes: ptrace fallback: waitpid: {e}");
                    break;
                }
            };
            let _resumed: Resumed = match stop {
                Stop::Exited { tid, code } => {
                    self.gone(tid, code as u8);
                    continue;
                }
                Stop::Killed { tid, signal } => {
                    self.gone(tid, 128u8.wrapping_add(signal as u8));
                    continue;
                }
                Stop::Seccomp(st) => self.on_seccomp(st),
                Stop::SyscallExit(st) => self.on_syscall_exit(st),
                Stop::SignalDelivery(st, signal) => self.resume(st, signal),
                Stop::Group(st) => st.listen(),
                Stop::Trap(st) => self.resume(st, 0),
                Stop::Event(st, event) => self.on_event(st, event),
            };
        }
        match (self.launch_failed, self.status) {
            (Some(errno), _) => Err(io::Error::from_raw_os_error(errno)),
            (None, Some(status)) => Ok(status),
            (None, None) => Err(io::Error::other("the target vanished without an exit status")),
        }
    }

    fn gone(&mut self, tid: Tid, code: u8) {
        self.threads.remove(&tid);
        self.images.remove(&tid);
        if tid != self.target {
            return;
        }
        self.status = Some(code);
        if let Some(pipe) = self.exec_errors.take() {
            let mut errno = [0u8; 4];
            // SAFETY: reading 4 bytes into a live local from our pipe; the writer is gone.
            let n = unsafe { libc::read(pipe.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
            if n == 4 {
                self.launch_failed = Some(i32::from_ne_bytes(errno));
            }
        }
    }

    /// Restart a stop that needs nothing from us: with PTRACE_SYSCALL while the
    /// thread owes us a syscall-exit-stop, else PTRACE_CONT.
    fn resume(&mut self, st: Stopped, signal: i32) -> Resumed {
        let how = match self.threads.get(&st.tid()) {
            Some(Thread { in_flight: Some(_), .. }) => Restart::Syscall,
            _ => Restart::Cont,
        };
        st.restart(how, signal)
    }

    fn on_event(&mut self, st: Stopped, event: Event) -> Resumed {
        match event {
            Event::Fork(child) | Event::Vfork(child) | Event::Clone(child) => {
                self.threads.entry(child).or_default();
                // A fresh id: whatever was known under it belonged to a dead process.
                self.images.remove(&child);
            }
            Event::Exec { former } => {
                let tid = st.tid();
                if former != tid {
                    // A non-leader thread exec'd and took over the leader's id.
                    if let Some(thread) = self.threads.remove(&former) {
                        self.threads.insert(tid, thread);
                    }
                }
                if tid == self.target {
                    self.exec_errors = None;
                }
                // A new program image (after exec the leader's tid is the pid).
                self.images.remove(&tid);
            }
            Event::Other(_) => {}
        }
        self.resume(st, 0)
    }

    fn image(&mut self, pid: Tid) -> u32 {
        if let Some(&image) = self.images.get(&pid) {
            return image;
        }
        self.last_image += 1;
        self.images.insert(pid, self.last_image);
        self.last_image
    }

    fn tgid(&mut self, tid: Tid) -> Tid {
        let thread = self.threads.entry(tid).or_default();
        *thread.tgid.get_or_insert_with(|| tgid_of(tid).unwrap_or(tid))
    }

    fn on_seccomp(&mut self, st: Stopped) -> Resumed {
        let tid = st.tid();
        // A stale in-flight call (its exit never came) is forgotten.
        self.threads.entry(tid).or_default().in_flight = None;
        let Ok(regs) = st.regs() else { return st.cont(0) };
        let Some(sys) = seccomp::lookup(regs.orig_rax) else { return st.cont(0) };
        if sys.op == Op::Exec && tid == self.target && self.exec_errors.is_some() {
            return st.cont(0); // the launcher's own exec of the target
        }
        if !self.client.watches(sys.op) {
            return st.cont(0);
        }
        let request = match decode::decode(&st, sys, &regs) {
            Ok(request) => request,
            Err(errno) => return skip(st, regs, -i64::from(errno)),
        };
        let Some(args) = request.wire() else { return st.cont(0) };
        let pid = self.tgid(tid);
        let image = self.image(pid);
        // Context the policy asked for: the registers at the stop, a send's payload.
        let mut reg_bytes = [0u8; wire::REGS_LEN * 8];
        let mut ctx = wire::Context::default();
        if self.client.wants_registers() {
            ctx.regs = Some(wire::Words::new(&reg_list(&regs), &mut reg_bytes));
        }
        let payload = match (self.client.wants_payload(), &request) {
            (0, _) => None,
            (want, Request::SendTo { len, .. }) => {
                let mut buf = vec![0u8; (*len as usize).min(want)];
                mem::read(&st, decode::arg(&regs, 1), &mut buf).ok().map(|()| buf)
            }
            (want, Request::SendMsg { hdr, .. }) => decode::msg_payload(&st, hdr, want).ok(),
            _ => None,
        };
        ctx.payload = payload.as_deref().map(serde_bytes::Bytes::new);
        let (seq, verdict) = self.client.ask(sys.name, (pid, tid, image), args, ctx);
        let report = self.client.wants_results().then_some(seq);
        let target = Target::of(sys.shape);
        match verdict {
            Verdict::Allow => self.let_run(st, sys.op, report, Vec::new()),
            Verdict::Deny(errno) => skip(st, regs, -i64::from(errno)),
            Verdict::Emulate(ret) => skip(st, regs, ret),
            Verdict::Kill => {
                // SAFETY: kill with a pid we trace; SIGKILL cannot be caught.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                skip(st, regs, -i64::from(libc::EPERM))
            }
            Verdict::Redirect(path) => match target {
                Target::Path(i) => self.redirect(st, regs, sys.op, report, &[(i, NewArg::Blob(&path))]),
                _ => skip(st, regs, -i64::from(libc::EPERM)),
            },
            Verdict::RedirectAddr(addr) => match (target, &request) {
                (Target::Addr { addr: at, len }, _) => {
                    let changes = [(at, NewArg::Blob(&addr)), (len, NewArg::Value(addr.len() as u64))];
                    self.redirect(st, regs, sys.op, report, &changes)
                }
                (Target::MsgHdr, Request::SendMsg { hdr, .. }) => self.redirect_msghdr(st, regs, report, *hdr, &addr),
                _ => skip(st, regs, -i64::from(libc::EPERM)),
            },
            Verdict::Rewrite { flags, mode, data } => {
                self.rewrite(st, regs, (sys, &request), report, (flags, mode, data))
            }
        }
    }

    /// Run the call with some arguments replaced: open flags and mode in their
    /// registers (openat2: in a copy of its `open_how`), a sendto's buffer.
    fn rewrite(
        &mut self,
        st: Stopped,
        regs: Regs,
        (sys, request): (&seccomp::Syscall, &Request),
        report: Option<u32>,
        (flags, mode, data): (Option<i32>, Option<u32>, Option<Vec<u8>>),
    ) -> Resumed {
        let mut changes: Vec<(usize, NewArg)> = Vec::new();
        let how;
        match sys.shape {
            Shape::Open | Shape::OpenAt => {
                let base = if sys.shape == Shape::Open { 1 } else { 2 };
                if let Some(f) = flags {
                    changes.push((base, NewArg::Value(f as u32 as u64)));
                }
                if let Some(m) = mode {
                    changes.push((base + 1, NewArg::Value(u64::from(m))));
                }
            }
            Shape::OpenAt2 => {
                let Request::Open { flags: old_flags, mode: old_mode, .. } = *request else {
                    return skip(st, regs, -i64::from(libc::EPERM));
                };
                // struct open_how { u64 flags; u64 mode; u64 resolve; }: keep resolve.
                let mut blob = [0u8; 24];
                if mem::read(&st, decode::arg(&regs, 2), &mut blob).is_err() {
                    return skip(st, regs, -i64::from(libc::EFAULT));
                }
                blob[..8].copy_from_slice(&(flags.unwrap_or(old_flags) as u32 as u64).to_ne_bytes());
                blob[8..16].copy_from_slice(&u64::from(mode.unwrap_or(old_mode)).to_ne_bytes());
                how = blob;
                changes.push((2, NewArg::Blob(&how)));
                changes.push((3, NewArg::Value(24)));
            }
            Shape::SendTo => {}
            // creat has no flags to change; sendmsg's payload is scattered.
            _ => return skip(st, regs, -i64::from(libc::EPERM)),
        }
        if let Some(data) = &data {
            if sys.shape != Shape::SendTo {
                return skip(st, regs, -i64::from(libc::EPERM));
            }
            changes.push((1, NewArg::Blob(data)));
            changes.push((2, NewArg::Value(data.len() as u64)));
        } else if sys.shape == Shape::SendTo && (flags.is_some() || mode.is_some()) {
            return skip(st, regs, -i64::from(libc::EPERM));
        }
        self.redirect(st, regs, sys.op, report, &changes)
    }

    /// Let the call run; watch for its exit when the broker wants its result or
    /// registers must be put back.
    fn let_run(&mut self, st: Stopped, op: Op, report: Option<u32>, restore: Vec<(usize, u64)>) -> Resumed {
        if report.is_none() && restore.is_empty() {
            return st.cont(0);
        }
        let thread = self.threads.entry(st.tid()).or_default();
        thread.in_flight = Some(InFlight { op, report, started: Instant::now(), restore });
        st.restart(Restart::Syscall, 0)
    }

    /// Point argument registers at new values, writing blobs below the stack.
    fn redirect(
        &mut self,
        st: Stopped,
        mut regs: Regs,
        op: Op,
        report: Option<u32>,
        changes: &[(usize, NewArg)],
    ) -> Resumed {
        let orig = regs;
        let mut restore = Vec::new();
        let mut below = mem::scratch_top(&regs);
        for &(i, ref new) in changes {
            let value = match *new {
                NewArg::Value(value) => value,
                NewArg::Blob(data) => match mem::write_scratch(&st, below, data) {
                    Ok(addr) => {
                        below = addr; // the next blob goes below this one
                        addr
                    }
                    Err(errno) => return self.redirect_failed(st, orig, errno),
                },
            };
            restore.push((i, decode::arg(&orig, i)));
            decode::set_arg(&mut regs, i, value);
        }
        if let Err(errno) = st.set_regs(&regs) {
            return self.redirect_failed(st, orig, errno);
        }
        self.let_run(st, op, report, restore)
    }

    /// sendmsg: a copy of the program's msghdr whose name is the new address.
    fn redirect_msghdr(
        &mut self,
        st: Stopped,
        regs: Regs,
        report: Option<u32>,
        mut hdr: [u8; decode::MSGHDR_SIZE],
        addr: &[u8],
    ) -> Resumed {
        let name_at = match mem::write_scratch(&st, mem::scratch_top(&regs), addr) {
            Ok(at) => at,
            Err(errno) => return self.redirect_failed(st, regs, errno),
        };
        hdr[decode::MSGHDR_NAME..decode::MSGHDR_NAME + 8].copy_from_slice(&name_at.to_ne_bytes());
        hdr[decode::MSGHDR_NAMELEN..decode::MSGHDR_NAMELEN + 4].copy_from_slice(&(addr.len() as u32).to_ne_bytes());
        let hdr_at = match mem::write_scratch(&st, name_at, &hdr) {
            Ok(at) => at,
            Err(errno) => return self.redirect_failed(st, regs, errno),
        };
        self.redirect(st, regs, Op::SendMsg, report, &[(1, NewArg::Value(hdr_at))])
    }

    fn redirect_failed(&mut self, st: Stopped, regs: Regs, errno: i32) -> Resumed {
        eprintln!(
            "hermes: ptrace fallback: cannot redirect a call of thread {} ({}); denied with EPERM",
            st.tid(),
            io::Error::from_raw_os_error(errno)
        );
        skip(st, regs, -i64::from(libc::EPERM))
    }

    fn on_syscall_exit(&mut self, st: Stopped) -> Resumed {
        let Some(flight) = self.threads.get_mut(&st.tid()).and_then(|t| t.in_flight.take()) else {
            return st.cont(0);
        };
        let Ok(mut regs) = st.regs() else { return st.cont(0) };
        let ret = regs.rax as i64;
        // After a successful exec the registers are the new program's.
        let exec_done = flight.op == Op::Exec && ret == 0;
        if !flight.restore.is_empty() && !exec_done {
            for &(i, value) in &flight.restore {
                decode::set_arg(&mut regs, i, value);
            }
            if st.set_regs(&regs).is_err() {
                return st.cont(0);
            }
        }
        if let Some(seq) = flight.report.filter(|_| !is_restart(ret)) {
            let (ret, errno) = if (-4095..0).contains(&ret) { (-1, -ret as i32) } else { (ret, 0) };
            self.client.done(seq, ret, errno, flight.started.elapsed());
        }
        st.cont(0)
    }
}

/// The registers in [`wire::REGS`] order.
fn reg_list(r: &Regs) -> [u64; wire::REGS_LEN] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
        r.rip, r.eflags, r.orig_rax,
    ]
}

/// A new value for an argument register.
enum NewArg<'a> {
    Value(u64),
    /// Bytes to write into the tracee; the register gets their address.
    Blob(&'a [u8]),
}

/// Do not run the call: it returns `ret` (a negative errno for a failure).
fn skip(st: Stopped, mut regs: Regs, ret: i64) -> Resumed {
    regs.orig_rax = u64::MAX; // syscall -1: the kernel skips it
    regs.rax = ret as u64;
    match st.set_regs(&regs) {
        Ok(()) | Err(libc::ESRCH) => {}
        Err(e) => {
            // The call would run unmediated: fail closed.
            eprintln!(
                "hermes: ptrace fallback: cannot skip a call of thread {} ({}); killing it",
                st.tid(),
                io::Error::from_raw_os_error(e)
            );
            // SAFETY: kill with a thread id we trace.
            unsafe { libc::syscall(libc::SYS_tgkill, tgid_of(st.tid()).unwrap_or(st.tid()), st.tid(), libc::SIGKILL) };
        }
    }
    st.cont(0)
}
