//! ptrace(2) and waitpid(2), typed. Every stop the tracer can see is a [`Stop`] named
//! as the man page names it, decoded from the wait status in one function
//! ([`wait`]). A stopped thread is a [`Stopped`] guard: reading or writing its
//! registers needs one, and every restart consumes it and yields the [`Resumed`]
//! receipt the loop's handlers must return, so a stop cannot be left stopped or
//! restarted twice.

use std::io;

/// A thread id (the kernel's `pid_t` of one task).
pub type Tid = libc::pid_t;
/// The registers of a stopped x86_64 thread.
pub type Regs = libc::user_regs_struct;

/// Options set with PTRACE_SEIZE: stop on the filter's SECCOMP_RET_TRACE, follow
/// every new process and thread, report exec, mark syscall-stops with 0x80, and kill
/// the tracees if the tracer dies.
pub const OPTIONS: libc::c_int = libc::PTRACE_O_TRACESECCOMP
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_EXITKILL;

/// What one `waitpid(-1, __WALL)` reported.
#[derive(Debug)]
pub enum Stop {
    /// The thread exited (`WIFEXITED`) with this status. Nothing to restart.
    Exited { tid: Tid, code: i32 },
    /// The thread was killed by a signal (`WIFSIGNALED`). Nothing to restart.
    Killed { tid: Tid, signal: i32 },
    /// `PTRACE_EVENT_SECCOMP`: the filter returned SECCOMP_RET_TRACE; the syscall has
    /// not run yet.
    Seccomp(Stopped),
    /// syscall-stop (`SIGTRAP | 0x80`). The tracer only restarts with PTRACE_SYSCALL
    /// after letting a mediated call run, so this is that call's syscall-exit-stop.
    SyscallExit(Stopped),
    /// signal-delivery-stop: the signal is about to be delivered; restarting with it
    /// delivers it, restarting with 0 suppresses it.
    SignalDelivery(Stopped, i32),
    /// group-stop (`PTRACE_EVENT_STOP` with a stopping signal): the process is
    /// stopped; PTRACE_LISTEN keeps it so until SIGCONT.
    Group(Stopped),
    /// `PTRACE_EVENT_STOP` with SIGTRAP: a new tracee's first stop, or the end of a
    /// group-stop that was listened to (SIGCONT arrived).
    Trap(Stopped),
    /// A `PTRACE_EVENT_*` stop for fork, vfork, clone or exec.
    Event(Stopped, Event),
}

/// The `PTRACE_EVENT_*` stops the options ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `PTRACE_EVENT_FORK`, with the new process.
    Fork(Tid),
    /// `PTRACE_EVENT_VFORK`, with the new process.
    Vfork(Tid),
    /// `PTRACE_EVENT_CLONE`, with the new thread (or process).
    Clone(Tid),
    /// `PTRACE_EVENT_EXEC`: exec succeeded. `former` is the thread id the execing
    /// thread had; a non-leader thread that execs takes over the leader's id.
    Exec { former: Tid },
    /// An event the options did not ask for, by number.
    Other(i32),
}

/// A thread in a ptrace-stop: the right to look at it and to restart it, once.
#[derive(Debug)]
#[must_use = "a stopped tracee stays stopped until it is restarted"]
pub struct Stopped {
    tid: Tid,
}

/// Receipt of a restart. Only [`Stopped`]'s restart methods make one, so a handler
/// that must return it cannot forget to restart its stop.
#[must_use]
pub struct Resumed(());

/// How to let a stopped thread go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// PTRACE_CONT: run until the next event.
    Cont,
    /// PTRACE_SYSCALL: also stop at the next syscall-stop.
    Syscall,
}

/// The errno of the last failed call.
fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// `ptrace(request, tid, addr, data)`.
///
/// # Safety
/// `addr` and `data` must be what `request` expects: for requests that read or write
/// through them, pointers to live memory of the right size.
unsafe fn ptrace(request: libc::c_uint, tid: Tid, addr: usize, data: usize) -> Result<libc::c_long, i32> {
    // SAFETY: forwarded to the caller (see above). errno is cleared first because
    // PTRACE_PEEKDATA returns the word read, which may be -1.
    unsafe {
        *libc::__errno_location() = 0;
        let rc = libc::ptrace(request, tid, addr, data);
        if rc == -1 && *libc::__errno_location() != 0 {
            return Err(*libc::__errno_location());
        }
        Ok(rc)
    }
}

/// Attach to `tid` (our stopped-on-a-pipe child) with [`OPTIONS`], without stopping it.
pub fn seize(tid: Tid) -> io::Result<()> {
    // SAFETY: PTRACE_SEIZE takes no pointers; data is the option bits.
    unsafe { ptrace(libc::PTRACE_SEIZE, tid, 0, OPTIONS as usize) }.map(drop).map_err(io::Error::from_raw_os_error)
}

/// Wait for the next stop or death of any child or tracee. `None` when none is left
/// (ECHILD).
pub fn wait() -> io::Result<Option<Stop>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a live local.
        let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        if tid >= 0 {
            return Ok(Some(decode(tid, status)));
        }
        match last_errno() {
            libc::EINTR => continue,
            libc::ECHILD => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Stopping signals: a PTRACE_EVENT_STOP with one of these is a group-stop.
fn is_stopping(sig: i32) -> bool {
    matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// The one place a wait status becomes a [`Stop`] (ptrace(2), "Stopped states").
fn decode(tid: Tid, status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited { tid, code: libc::WEXITSTATUS(status) };
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed { tid, signal: libc::WTERMSIG(status) };
    }
    let stopped = Stopped { tid };
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xffff;
    match event {
        0 if sig == libc::SIGTRAP | 0x80 => Stop::SyscallExit(stopped),
        0 => Stop::SignalDelivery(stopped, sig),
        libc::PTRACE_EVENT_SECCOMP => Stop::Seccomp(stopped),
        libc::PTRACE_EVENT_STOP if is_stopping(sig) => Stop::Group(stopped),
        libc::PTRACE_EVENT_STOP => Stop::Trap(stopped),
        _ => {
            // A tracee that vanished before we ask reads as id 0; its exit follows.
            let msg = stopped.event_msg().unwrap_or(0) as Tid;
            let event = match event {
                libc::PTRACE_EVENT_FORK => Event::Fork(msg),
                libc::PTRACE_EVENT_VFORK => Event::Vfork(msg),
                libc::PTRACE_EVENT_CLONE => Event::Clone(msg),
                libc::PTRACE_EVENT_EXEC => Event::Exec { former: if msg > 0 { msg } else { tid } },
                other => Event::Other(other),
            };
            Stop::Event(stopped, event)
        }
    }
}

impl Stopped {
    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// PTRACE_GETEVENTMSG: the new tracee of a fork/clone event, the former id at exec.
    fn event_msg(&self) -> Result<u64, i32> {
        let mut msg: libc::c_ulong = 0;
        // SAFETY: data points to a live c_ulong, which the kernel fills.
        unsafe { ptrace(libc::PTRACE_GETEVENTMSG, self.tid, 0, &mut msg as *mut libc::c_ulong as usize) }?;
        Ok(msg)
    }

    /// PTRACE_GETREGS. ESRCH means the thread is gone (killed meanwhile).
    pub fn regs(&self) -> Result<Regs, i32> {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut regs: Regs = unsafe { std::mem::zeroed() };
        // SAFETY: data points to a live user_regs_struct, which the kernel fills.
        unsafe { ptrace(libc::PTRACE_GETREGS, self.tid, 0, &mut regs as *mut Regs as usize) }?;
        Ok(regs)
    }

    /// PTRACE_SETREGS.
    pub fn set_regs(&self, regs: &Regs) -> Result<(), i32> {
        // SAFETY: data points to a live user_regs_struct, which the kernel reads.
        unsafe { ptrace(libc::PTRACE_SETREGS, self.tid, 0, regs as *const Regs as usize) }.map(drop)
    }

    /// PTRACE_PEEKDATA: one word of the tracee's memory.
    pub fn peek(&self, addr: u64) -> Result<u64, i32> {
        // SAFETY: PEEKDATA returns the word; addr is an address in the tracee, which
        // the kernel checks.
        unsafe { ptrace(libc::PTRACE_PEEKDATA, self.tid, addr as usize, 0) }.map(|w| w as u64)
    }

    /// PTRACE_POKEDATA: write one word of the tracee's memory.
    pub fn poke(&self, addr: u64, word: u64) -> Result<(), i32> {
        // SAFETY: POKEDATA takes the word by value; addr is checked by the kernel.
        unsafe { ptrace(libc::PTRACE_POKEDATA, self.tid, addr as usize, word as usize) }.map(drop)
    }

    /// Let the thread go on, delivering `signal` (0 for none).
    pub fn restart(self, how: Restart, signal: i32) -> Resumed {
        let request = match how {
            Restart::Cont => libc::PTRACE_CONT,
            Restart::Syscall => libc::PTRACE_SYSCALL,
        };
        self.request(request, signal)
    }

    /// PTRACE_CONT.
    pub fn cont(self, signal: i32) -> Resumed {
        self.restart(Restart::Cont, signal)
    }

    /// PTRACE_LISTEN: end a group-stop's ptrace-stop but keep the thread stopped until
    /// SIGCONT (which is then reported as a [`Stop::Trap`]).
    pub fn listen(self) -> Resumed {
        self.request(libc::PTRACE_LISTEN, 0)
    }

    fn request(self, request: libc::c_uint, signal: i32) -> Resumed {
        // SAFETY: the restart requests take no pointers; data is a signal number.
        match unsafe { ptrace(request, self.tid, 0, signal as usize) } {
            // ESRCH: the thread died meanwhile (SIGKILL); its exit is reported by wait.
            Ok(_) | Err(libc::ESRCH) => {}
            Err(e) => {
                eprintln!("hermes: ptrace restart of thread {} failed: {}", self.tid, io::Error::from_raw_os_error(e))
            }
        }
        Resumed(())
    }
}
