//! The seccomp-bpf filter of the ptrace fallback, and the table it is generated from.
//!
//! [`MEDIATED`] lists every syscall the fallback mediates, with the wire operation it
//! belongs to and how its arguments sit in registers. The filter sends exactly those
//! to the tracer (`SECCOMP_RET_TRACE`); the tracer decodes them from the same entries.
//! Around them the filter closes the doors a program could use to walk past it:
//! another architecture's entry (`int 0x80` from 64-bit code) kills the process, x32
//! syscall numbers fail with ENOSYS, io_uring (whose operations never pass through
//! seccomp) fails with EPERM, and so does a seccomp filter of the program's own that
//! asks for a user-notification listener: SECCOMP_RET_USER_NOTIF outranks our
//! SECCOMP_RET_TRACE, and a listener that answers "continue" would run the call
//! without the tracer ever seeing it. A clone with CLONE_UNTRACED (a child the tracer
//! would not follow, nor take down with it) fails with EPERM; clone3, whose flags
//! seccomp cannot read, fails with ENOSYS, and libc falls back to clone.

use hermes_wire::Op;

/// How a mediated syscall's arguments are laid out (x86_64: rdi, rsi, rdx, r10, r8, r9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `open(path, flags, mode)`
    Open,
    /// `openat(dirfd, path, flags, mode)`
    OpenAt,
    /// `openat2(dirfd, path, struct open_how *how, size)`
    OpenAt2,
    /// `creat(path, mode)`
    Creat,
    /// `connect(fd, addr, addrlen)`
    Connect,
    /// `sendto(fd, buf, len, flags, addr, addrlen)`
    SendTo,
    /// `sendmsg(fd, struct msghdr *msg, flags)`
    SendMsg,
    /// `execve(path, argv, envp)`
    Execve,
    /// `execveat(dirfd, path, argv, envp, flags)`
    Execveat,
}

/// One mediated syscall.
#[derive(Debug)]
pub struct Syscall {
    pub nr: i64,
    /// The name the policy sees in `ev.call`.
    pub name: &'static str,
    pub op: Op,
    pub shape: Shape,
}

const fn sys(nr: i64, name: &'static str, op: Op, shape: Shape) -> Syscall {
    Syscall { nr, name, op, shape }
}

/// Every syscall the filter stops for: one line each.
pub const MEDIATED: &[Syscall] = &[
    sys(libc::SYS_open, "open", Op::Open, Shape::Open),
    sys(libc::SYS_openat, "openat", Op::Open, Shape::OpenAt),
    sys(libc::SYS_openat2, "openat2", Op::Open, Shape::OpenAt2),
    sys(libc::SYS_creat, "creat", Op::Open, Shape::Creat),
    sys(libc::SYS_connect, "connect", Op::Connect, Shape::Connect),
    sys(libc::SYS_sendto, "sendto", Op::SendTo, Shape::SendTo),
    sys(libc::SYS_sendmsg, "sendmsg", Op::SendMsg, Shape::SendMsg),
    sys(libc::SYS_execve, "execve", Op::Exec, Shape::Execve),
    sys(libc::SYS_execveat, "execveat", Op::Exec, Shape::Execveat),
];

/// The table entry for syscall number `nr` (as found in `orig_rax`).
pub fn lookup(nr: u64) -> Option<&'static Syscall> {
    MEDIATED.iter().find(|s| s.nr as u64 == nr)
}

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Syscall numbers of the x32 ABI have this bit set.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (x86_64 is little-endian).
const fn data_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

/// Syscalls that fail with EPERM under the filter unless the policy lets io_uring
/// through: io_uring runs opens and connects without syscalls seccomp could see (a
/// ring fd inherited from outside is as much a door as a new one).
const REFUSED: [i64; 3] = [libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register];
/// `args[5]`, after nr, arch, instruction_pointer and args[0..5].
const DATA_ARGS5: u32 = 16 + 5 * 8;

/// Why a filter cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The program exceeds the kernel's limit of BPF_MAXINSNS instructions.
    #[error("seccomp filter has {0} instructions; the kernel takes at most 4096")]
    TooLong(usize),
    /// A conditional jump does not fit the 8-bit offset of classic BPF.
    #[error("seccomp filter jump of {0} instructions does not fit in 8 bits")]
    JumpTooFar(usize),
}

/// What the policy decided about the doors the filter closes (`hermes.io_uring`,
/// `hermes.foreign_arch`).
pub use hermes_wire::Doors;

/// A compiled filter, ready to install (also in a fork child: installing allocates
/// nothing).
pub struct Filter {
    prog: Vec<libc::sock_filter>,
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: usize, jf: usize) -> Result<libc::sock_filter, FilterError> {
    let off = |n: usize| u8::try_from(n).map_err(|_| FilterError::JumpTooFar(n));
    Ok(libc::sock_filter { code: code as u16, jt: off(jt)?, jf: off(jf)?, k })
}

impl Filter {
    /// The fallback's filter, generated from [`MEDIATED`]. With a `cookie` (strict
    /// mode), a mediated syscall whose sixth argument register holds it is allowed:
    /// the preload makes the calls it already mediated that way.
    pub fn new(cookie: Option<u64>, doors: Doors) -> Result<Self, FilterError> {
        Self::build(MEDIATED.iter().map(|s| s.nr as u32), cookie, doors)
    }

    fn build(
        trace: impl ExactSizeIterator<Item = u32>,
        cookie: Option<u64>,
        doors: Doors,
    ) -> Result<Self, FilterError> {
        use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
        let ret = |action: u32| stmt(BPF_RET | BPF_K, action);
        let n = trace.len();
        let mut prog = vec![
            // Another architecture's syscall table (int 0x80 is i386): its numbers
            // mean other calls, so nothing below would hold. Kill the process, or
            // (if the policy says so) fail the call.
            stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH),
            jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0)?,
            ret(if doors.foreign_enosys {
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            } else {
                libc::SECCOMP_RET_KILL_PROCESS
            }),
            stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
            // x32 numbers alias the x86_64 calls under other numbers.
            jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1)?,
            ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ];
        for nr in REFUSED.into_iter().filter(|_| !doors.io_uring) {
            prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1)?);
            prog.push(ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
        }
        prog.extend([
            // seccomp(SECCOMP_SET_MODE_FILTER, flags with NEW_LISTENER, …): a listener
            // could answer our traced calls with "continue", unseen. (The kernel reads
            // flags as an unsigned int: the low word is all of it.)
            jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_seccomp as u32, 0, 3)?,
            stmt(BPF_LD | BPF_W | BPF_ABS, data_arg_low(1)),
            jump(BPF_JMP | BPF_JSET | BPF_K, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32, 0, 1)?,
            ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
            // clone(flags with CLONE_UNTRACED, …): a child outside the tracer's reach.
            jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone as u32, 0, 3)?,
            stmt(BPF_LD | BPF_W | BPF_ABS, data_arg_low(0)),
            jump(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_UNTRACED as u32, 0, 1)?,
            ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
            // clone3 keeps its flags in memory: "not implemented" makes libc use clone.
            jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 0, 1)?,
            ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ]);
        for (i, nr) in trace.enumerate() {
            // Past the remaining comparisons and the ALLOW, onto the TRACE.
            prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, n - i, 0)?);
        }
        prog.push(ret(libc::SECCOMP_RET_ALLOW));
        if let Some(cookie) = cookie {
            // args[5] is 64 bits; classic BPF compares its two halves.
            let (lo, hi) = (cookie as u32, (cookie >> 32) as u32);
            prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARGS5));
            prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, lo, 0, 3)?);
            prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARGS5 + 4));
            prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, hi, 0, 1)?);
            prog.push(ret(libc::SECCOMP_RET_ALLOW));
        }
        prog.push(ret(libc::SECCOMP_RET_TRACE));
        if prog.len() > libc::BPF_MAXINSNS as usize {
            return Err(FilterError::TooLong(prog.len()));
        }
        Ok(Filter { prog })
    }

    /// Install the filter on the calling thread (the caller has set no_new_privs or
    /// holds CAP_SYS_ADMIN). Async-signal-safe: fit for a fork child. Returns the errno.
    pub fn install(&self) -> Result<(), i32> {
        let fprog = libc::sock_fprog { len: self.prog.len() as u16, filter: self.prog.as_ptr().cast_mut() };
        let fprog_ptr: *const libc::sock_fprog = &fprog;
        // SAFETY: `fprog` points at `self.prog`, which outlives the call; the kernel
        // copies the program and does not keep the pointer.
        let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, fprog_ptr) };
        if rc == 0 {
            return Ok(());
        }
        let err = errno();
        if err != libc::ENOSYS {
            return Err(err);
        }
        // Kernels before 3.17 only have the prctl.
        // SAFETY: as above.
        let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, fprog_ptr) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_unique_and_a_known_op() {
        for (i, a) in MEDIATED.iter().enumerate() {
            assert!(MEDIATED[i + 1..].iter().all(|b| b.nr != a.nr && b.name != a.name), "{a:?} twice");
            assert_eq!(lookup(a.nr as u64).map(|s| s.name), Some(a.name));
        }
        assert!(lookup(libc::SYS_getpid as u64).is_none());
        // Library calls (Op::Api) are not syscalls.
        for op in Op::ALL.into_iter().filter(|op| *op != Op::Api) {
            assert!(MEDIATED.iter().any(|s| s.op == op), "{op:?} has no syscall");
        }
    }

    #[test]
    fn the_kernel_limit_is_checked() {
        assert!(matches!(
            Filter::build(0..5000u32, None, Doors::default()),
            Err(FilterError::TooLong(_) | FilterError::JumpTooFar(_))
        ));
        assert!(Filter::build(0..200u32, Some(7), Doors::default()).is_ok());
    }

    /// Run `f` in a fork child under the filter with no tracer; return its wait status.
    fn under_filter(f: fn() -> i32) -> i32 {
        under_filter_with(None, f)
    }

    fn under_filter_with(cookie: Option<u64>, f: fn() -> i32) -> i32 {
        let filter = Filter::new(cookie, Doors::default()).expect("filter");
        // SAFETY: the child only makes async-signal-safe calls (prctl, the filter's
        // syscall, raw syscalls) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let code = if filter.install().is_ok() { f() } else { 99 };
            // SAFETY: leaving the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child into a live local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// The errno of a raw syscall that just returned `rc` (0 when it succeeded).
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            errno()
        } else {
            0
        }
    }

    /// The filter routes mediated syscalls to a tracer: with none attached, the kernel
    /// fails them with ENOSYS while other syscalls run.
    #[test]
    fn without_a_tracer_mediated_calls_fail_with_enosys() {
        let status = under_filter(|| {
            // SAFETY: raw syscalls with a valid C string; the results are only compared.
            let open = errno_of(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0) });
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            match (open, pid > 0) {
                (libc::ENOSYS, true) => 0,
                _ => 1,
            }
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }

    const COOKIE: u64 = 0x1234_5678_9abc_def0;

    /// Strict mode: only a syscall carrying the whole cookie in r9 passes untraced.
    #[test]
    fn the_cookie_exempts_a_call_and_only_the_exact_cookie_does() {
        let status = under_filter_with(Some(COOKIE), || {
            let open = |r9: u64| {
                // SAFETY: a raw openat of "/" with an extra (ignored) sixth argument.
                let rc = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0, 0, 0, r9) };
                errno_of(rc)
            };
            let results = [open(COOKIE), open(0), open(COOKIE & 0xffff_ffff), open(COOKIE ^ (1 << 40))];
            match results {
                [0, libc::ENOSYS, libc::ENOSYS, libc::ENOSYS] => 0,
                _ => 1,
            }
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }

    #[test]
    fn io_uring_gets_eperm_and_x32_numbers_enosys() {
        let status = under_filter(|| {
            // SAFETY: invalid arguments on purpose; the filter answers before the kernel reads them.
            let uring = REFUSED.map(|nr| errno_of(unsafe { libc::syscall(nr, -1, 0, 0, 0, 0, 0) }));
            let x32 = errno_of(unsafe { libc::syscall((X32_SYSCALL_BIT as i64) | libc::SYS_getpid) });
            match (uring, x32) {
                ([libc::EPERM, libc::EPERM, libc::EPERM], libc::ENOSYS) => 0,
                _ => 1,
            }
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }

    /// A filter of the program's own may stack on ours, but not with a listener: its
    /// SECCOMP_RET_USER_NOTIF would outrank our SECCOMP_RET_TRACE.
    #[test]
    fn a_user_notification_listener_is_refused_and_plain_filters_are_not() {
        let status = under_filter(|| {
            let allow = [stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW)];
            let fprog = libc::sock_fprog { len: 1, filter: allow.as_ptr().cast_mut() };
            let install = |flags: libc::c_ulong| {
                // SAFETY: a one-instruction filter that allows everything, read by the kernel.
                let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &fprog) };
                if rc > 0 {
                    // SAFETY: closing the listener fd the kernel just gave us.
                    unsafe { libc::close(rc as i32) };
                }
                errno_of(rc)
            };
            let flags = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
            match [install(flags), install(flags | (1 << 32)), install(0)] {
                [libc::EPERM, libc::EPERM, 0] => 0,
                _ => 1,
            }
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }

    /// Every child stays traced: clone with CLONE_UNTRACED is refused, clone3 is "not
    /// implemented" (libc falls back to clone), a plain fork-like clone works.
    #[test]
    fn untraced_children_are_refused() {
        let status = under_filter(|| {
            let clone = |flags: libc::c_ulong| {
                // SAFETY: a fork-like clone (no new stack, no shared memory); the child
                // leaves at once with _exit, the parent reaps it.
                let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
                if rc == 0 {
                    // SAFETY: the child leaves without touching the parent's state.
                    unsafe { libc::_exit(0) };
                }
                if rc > 0 {
                    // SAFETY: reaping our own child.
                    unsafe { libc::waitpid(rc as i32, std::ptr::null_mut(), 0) };
                }
                errno_of(rc)
            };
            let sigchld = libc::SIGCHLD as libc::c_ulong;
            // SAFETY: clone3 with no arguments; the filter answers before the kernel reads them.
            let clone3 = errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) });
            match [clone(sigchld | libc::CLONE_UNTRACED as libc::c_ulong), clone3, clone(sigchld)] {
                [libc::EPERM, libc::ENOSYS, 0] => 0,
                _ => 1,
            }
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }

    #[test]
    fn the_i386_entry_kills_the_process() {
        let status = under_filter(|| {
            // SAFETY: getpid (20) through the 32-bit entry; no memory is touched.
            unsafe { std::arch::asm!("int 0x80", inlateout("eax") 20 => _, options(nostack)) };
            0
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS, "status {status:#x}");
    }
}
