//! `--strict`: the seccomp filter sends every mediated syscall to the ptrace tracer,
//! except those carrying the run's cookie in their sixth argument register. The
//! syscalls this preload already mediated are made here, with the cookie, so they
//! are not stopped a second time; everything else (raw `syscall` instructions,
//! `dlsym(RTLD_NEXT)` tricks, libc paths the hooks miss) still reaches the tracer.
//! sendto takes all six registers, so it is made as the equivalent sendmsg.
//!
//! The cookie is in the environment: a program that reads it can forge it. Strict
//! mode is complete for programs that do not attack HERMES; ptrace-only mode is for
//! hostile code.

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use libc::{mode_t, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::sys;

/// The launcher's cookie (`HERMES_COOKIE`, hex); 0 when not in strict mode.
pub static COOKIE: AtomicU64 = AtomicU64::new(0);
pub const ENV_COOKIE: &str = "HERMES_COOKIE";

pub fn init() {
    let cookie = std::env::var(ENV_COOKIE).ok().and_then(|c| u64::from_str_radix(&c, 16).ok()).unwrap_or(0);
    COOKIE.store(cookie, Relaxed);
}

/// The cookie-carrying replacement for the original of hook `name`, in strict mode.
pub fn replacement(name: &str) -> Option<usize> {
    if COOKIE.load(Relaxed) == 0 {
        return None;
    }
    Some(match name {
        "open" | "__open_nocancel" => open as *const () as usize,
        "openat" => openat as *const () as usize,
        "connect" => connect as *const () as usize,
        "sendto" => sendto as *const () as usize,
        "sendmsg" => sendmsg as *const () as usize,
        "execve" => execve as *const () as usize,
        "execveat" => execveat as *const () as usize,
        // glibc makes these two as raw syscalls of their own, not through a patched
        // function: they need cookie versions as well.
        "creat" | "creat64" => creat as *const () as usize,
        "fexecve" => fexecve as *const () as usize,
        _ => return None,
    })
}

/// Make syscall `nr` with the cookie in r9; C convention for the result.
fn call(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    // SAFETY: each caller passes the arguments of its own C function unchanged, which
    // the C caller vouched for; r9 is unused by these syscalls.
    let r = unsafe { sys::syscall6(nr, a, b, c, d, e, COOKIE.load(Relaxed) as usize) };
    if (-4095..0).contains(&r) {
        sys::set_errno(-r as i32);
        -1
    } else {
        r
    }
}

extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    call(libc::SYS_open, path as usize, flags as usize, mode as usize, 0, 0) as c_int
}

extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    call(libc::SYS_openat, dirfd as usize, path as usize, flags as usize, mode as usize, 0) as c_int
}

extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    call(libc::SYS_connect, fd as usize, addr as usize, len as usize, 0, 0) as c_int
}

extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    call(libc::SYS_sendmsg, fd as usize, msg as usize, flags as usize, 0, 0)
}

extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    let mut iov = libc::iovec { iov_base: buf as *mut c_void, iov_len: n };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: msghdr = unsafe { core::mem::zeroed() };
    msg.msg_name = addr as *mut c_void;
    msg.msg_namelen = if addr.is_null() { 0 } else { len };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    sendmsg(fd, &msg, flags)
}

extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    call(libc::SYS_execve, path as usize, argv as usize, envp as usize, 0, 0) as c_int
}

extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    call(libc::SYS_execveat, dirfd as usize, path as usize, argv as usize, envp as usize, flags as usize) as c_int
}

extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    open(path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode)
}

extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    execveat(fd, c"".as_ptr(), argv, envp, libc::AT_EMPTY_PATH)
}
