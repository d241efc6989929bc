//! A mediated dynamic program that execs a statically linked one: the preload cannot
//! follow it there (no dynamic loader runs), so the exec is turned into
//! `hermes exec-traced --arg0 ARGV0 -- PATH ARGS…`, which runs the program under the
//! seccomp+ptrace fallback, asking the same broker. It replaces the exec'ing process,
//! so the parent waits on the same pid and sees the program's own exit status.
//!
//! Runs in vfork and posix_spawn children: raw syscalls and the stack only.

use core::ffi::{c_char, c_int};
use core::sync::atomic::Ordering::Relaxed;

use crate::{config, mediate, strict, sys};

const MAX_STACK_ARGS: usize = 256;

/// execve `path`, or `hermes exec-traced` for it when it is a static ELF.
pub fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    real: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    let Some(cfg) = config::try_get() else { return real(path, argv, envp) };
    // Under --strict the tracer already follows the exec; inert: we are hermes.
    let applies = mediate::READY.load(Relaxed) && strict::COOKIE.load(Relaxed) == 0 && !cfg.inert();
    let Some(bin) = cfg.bin().filter(|_| applies && is_static_elf(path)) else { return real(path, argv, envp) };
    let count = config::count_list(argv);
    let fixed = 5;
    if count + fixed + 1 > MAX_STACK_ARGS {
        return real(path, argv, envp); // absurdly long argv: run it (unmediated) rather than fail
    }
    let mut args = [core::ptr::null::<c_char>(); MAX_STACK_ARGS];
    // SAFETY: i < count entries of a NULL-terminated list (exec requires argv to be one).
    let arg = |i: usize| unsafe { *argv.add(i) };
    args[0] = bin.as_ptr();
    args[1] = c"exec-traced".as_ptr();
    args[2] = c"--arg0".as_ptr();
    args[3] = if count > 0 { arg(0) } else { path };
    args[4] = c"--".as_ptr();
    args[5] = path;
    for i in 1..count {
        args[fixed + i] = arg(i);
    }
    real(bin.as_ptr(), args.as_ptr(), envp)
}

/// Whether `path` is an ELF file without a PT_INTERP program header.
fn is_static_elf(path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: a NUL-terminated path from the exec call; the result is only a number.
    let fd = unsafe { sys::syscall3(libc::SYS_open, path as usize, (libc::O_RDONLY | libc::O_CLOEXEC) as usize, 0) };
    if fd < 0 {
        return false;
    }
    let fd = fd as i32;
    let result = static_elf_fd(fd);
    sys::close(fd);
    result
}

fn static_elf_fd(fd: i32) -> bool {
    hermes_wire::elf::is_static(|at, buf| usize::try_from(sys::pread(fd, buf, at)).unwrap_or(0))
}
