//! A mediated program that execs one the preload cannot enter
//! ([`hermes_wire::program::barred`]): a statically linked program (no dynamic loader
//! runs), or one that runs with privileges its caller lacks (set-uid, set-gid, file
//! capabilities: the loader's secure mode ignores LD_PRELOAD). The exec is turned into
//! `hermes exec-traced --arg0 ARGV0 -- PATH ARGS…`, which runs the program under the
//! seccomp+ptrace fallback, asking the same broker. It replaces the exec'ing process, so
//! the parent waits on the same pid and sees the program's own exit status. A 32-bit or
//! non-x86-64 program, which nothing in HERMES can mediate, is refused (EACCES).
//!
//! Runs in vfork and posix_spawn children: raw syscalls and the stack only.

use core::ffi::{c_char, c_int, CStr};
use core::sync::atomic::Ordering::Relaxed;

use hermes_wire::program::{self, Barred};

use crate::{config, mediate, strict, sys};

const MAX_STACK_ARGS: usize = 256;

/// execve `path`, or `hermes exec-traced` for it when the preload cannot enter it.
pub fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    real: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    // SAFETY: a non-null path handed to exec is a NUL-terminated string.
    let named = (!path.is_null()).then(|| unsafe { CStr::from_ptr(path) });
    match named.and_then(|named| Some((named, judge(named)?))) {
        Some((named, (bin, judged))) => reroute(bin, judged, named, argv, envp, real).unwrap_or_else(|()| refused()),
        None => real(path, argv, envp),
    }
}

/// An exec or a spawn whose own execve, inside libc, is not judged: libc's execve is
/// not patched (`HERMES_INLINE=0`), and posix_spawn and the PATH-searching execs call it
/// internally. So the program is judged here, as named or (`search`) along PATH as libc
/// looks for it: a barred one is rerouted as [`execve`] does, by `run` (the real spawn
/// or exec) with `hermes` as its program; a refused one is passed over for the next
/// along PATH, as libc passes over a candidate whose exec fails with EACCES (and as it
/// does when the inline hook refuses one). `Err`: refused, and said why (EACCES).
pub fn before_libc(
    file: *const c_char,
    search: bool,
    argv: *const *const c_char,
    envp: *const *const c_char,
    run: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> Result<c_int, ()> {
    if file.is_null() || applies().is_none() {
        return Ok(run(file, argv, envp));
    }
    // SAFETY: a non-null file handed to exec is a NUL-terminated string.
    let named = unsafe { CStr::from_ptr(file) };
    let name = named.to_bytes();
    if !search || name.is_empty() || name.contains(&b'/') {
        return match judge(named) {
            Some((bin, judged)) => reroute(bin, judged, named, argv, envp, run),
            None => Ok(run(file, argv, envp)),
        };
    }
    let mut buf = [0u8; 4096 + 256];
    let mut passed_over = false;
    for dir in path_var().split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let Some(path) = sys::concat_c(&mut buf, &[dir, b"/", name]) else { continue };
        if !sys::is_executable_file(path) {
            continue;
        }
        let Some((bin, judged)) = judge(path) else {
            // Let libc find it, unless it would find one refused first.
            return Ok(run(if passed_over { path.as_ptr() } else { file }, argv, envp));
        };
        if !judged.traceable() {
            say_refused(path, judged, FOREIGN);
            passed_over = true;
            continue;
        }
        return reroute(bin, judged, path, argv, envp, run);
    }
    if passed_over {
        Err(())
    } else {
        Ok(run(file, argv, envp))
    }
}

/// This process's `PATH` (glibc's default for execvp when unset), read from `environ`
/// without libc's locks.
fn path_var() -> &'static [u8] {
    config::env_value(sys::environ(), b"PATH=").unwrap_or(b"/bin:/usr/bin")
}

/// Why a program nothing in HERMES can enter is refused.
const FOREIGN: &[u8] = b": HERMES mediates x86-64 programs only; exec refused\n";

fn say_refused(path: &CStr, barred: Barred, why: &[u8]) {
    sys::warn(&[b"hermes-preload: ", path.to_bytes(), b": ", barred.what().as_bytes(), why]);
}

/// A refused exec's result: EACCES.
pub fn refused() -> c_int {
    sys::set_errno(libc::EACCES);
    -1
}

/// execveat (and fexecve, which is execveat of a descriptor with AT_EMPTY_PATH), rerouted
/// like [`execve`]: the program is judged, and handed on, as `/proc/self/fd/N[/PATH]`
/// when a descriptor names it; that descriptor then stays open across the exec, which
/// `hermes exec-traced` needs to reach the program.
pub fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
    real: impl FnOnce() -> c_int,
    execve: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    if path.is_null() {
        return real();
    }
    // SAFETY: a non-null path handed to exec is a NUL-terminated string.
    let given = unsafe { CStr::from_ptr(path) };
    let through_fd = dirfd != libc::AT_FDCWD && given.to_bytes().first() != Some(&b'/');
    let mut buf = [0u8; 4096 + 32];
    let named = if !through_fd {
        given
    } else if given.is_empty() && flags & libc::AT_EMPTY_PATH == 0 {
        return real();
    } else {
        match fd_path(&mut buf, dirfd, given.to_bytes()) {
            Some(named) => named,
            None => return real(),
        }
    };
    let Some((bin, judged)) = judge(named) else { return real() };
    // The exec would have closed a close-on-exec descriptor: the traced program needs it
    // open. Should the exec fail, the caller gets its descriptor back as it was.
    let fd_flags = |cmd: c_int, arg: usize| {
        // SAFETY: F_GETFD / F_SETFD with integer arguments on the caller's descriptor.
        unsafe { sys::syscall3(libc::SYS_fcntl, dirfd as usize, cmd as usize, arg) }
    };
    let kept = (through_fd && judged.traceable()).then(|| fd_flags(libc::F_GETFD, 0)).filter(|&f| f > 0);
    if kept.is_some() {
        fd_flags(libc::F_SETFD, 0);
    }
    let failed = reroute(bin, judged, named, argv, envp, execve).unwrap_or_else(|()| refused());
    if let Some(flags) = kept {
        let errno = sys::errno();
        fd_flags(libc::F_SETFD, flags as usize);
        sys::set_errno(errno);
    }
    failed
}

/// `/proc/self/fd/FD[/NAME]` in `buf`; `None` when it does not fit, or `fd` is negative.
fn fd_path<'a>(buf: &'a mut [u8], fd: c_int, name: &[u8]) -> Option<&'a CStr> {
    let prefix = b"/proc/self/fd/";
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(fd).ok()?;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let slash: &[u8] = if name.is_empty() { b"" } else { b"/" };
    sys::concat_c(buf, &[prefix, &digits[at..], slash, name])
}

/// The configuration, when execs are to be judged here at all: not under --strict (the
/// tracer already follows the exec), nor in `hermes` itself (inert).
fn applies() -> Option<&'static config::Config> {
    let cfg = config::try_get()?;
    (mediate::READY.load(Relaxed) && strict::COOKIE.load(Relaxed) == 0 && !cfg.inert()).then_some(cfg)
}

/// The hermes binary and the reason when an exec of `path` must not go ahead as it is.
fn judge(path: &CStr) -> Option<(Option<&'static CStr>, Barred)> {
    let cfg = applies()?;
    let barred = program::barred(&Raw, path)?;
    Some((cfg.bin().map(|b| b.as_c_str()), barred))
}

/// Run `path` under `hermes exec-traced` (through `execve`, or a spawn), or say why
/// that cannot be (`Err`: the exec is refused).
fn reroute(
    bin: Option<&CStr>,
    barred: Barred,
    path: &CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
    execve: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> Result<c_int, ()> {
    let refuse = |why: &[u8]| {
        say_refused(path, barred, why);
        Err(())
    };
    if !barred.traceable() {
        return refuse(FOREIGN);
    }
    let Some(bin) = bin else {
        return refuse(b": the ptrace fallback would mediate it, but the hermes binary is unknown; exec refused\n");
    };
    let count = config::count_list(argv);
    let fixed = 5;
    if count + fixed + 1 > MAX_STACK_ARGS {
        return refuse(b": too many arguments to hand to the ptrace fallback; exec refused\n");
    }
    if barred.privileged() {
        sys::warn(&[
            b"hermes-preload: ",
            path.to_bytes(),
            b" is ",
            barred.what().as_bytes(),
            b": the ptrace fallback mediates it (traced, it keeps those privileges only when run by root)\n",
        ]);
    }
    let mut args = [core::ptr::null::<c_char>(); MAX_STACK_ARGS];
    // SAFETY: i < count entries of a NULL-terminated list (exec requires argv to be one).
    let arg = |i: usize| unsafe { *argv.add(i) };
    args[0] = bin.as_ptr();
    args[1] = c"exec-traced".as_ptr();
    args[2] = c"--arg0".as_ptr();
    args[3] = if count > 0 { arg(0) } else { path.as_ptr() };
    args[4] = c"--".as_ptr();
    args[5] = path.as_ptr();
    for i in 1..count {
        args[fixed + i] = arg(i);
    }
    Ok(execve(bin.as_ptr(), args.as_ptr(), envp))
}

/// The file system and this process through raw system calls, for
/// [`program::barred`]: nothing here allocates or takes a lock.
struct Raw;

/// A descriptor closed when dropped.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        sys::close(self.0);
    }
}

impl program::System for Raw {
    type File = Fd;

    fn open(&self, path: &CStr) -> Option<Fd> {
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as usize;
        // SAFETY: a NUL-terminated path; the result is only a number.
        let fd = unsafe { sys::syscall3(libc::SYS_open, path.as_ptr() as usize, flags, 0) };
        i32::try_from(fd).ok().filter(|&fd| fd >= 0).map(Fd)
    }

    fn read_at(&self, file: &Fd, at: u64, buf: &mut [u8]) -> usize {
        usize::try_from(sys::pread(file.0, buf, at)).unwrap_or(0)
    }

    fn owner(&self, file: &Fd) -> Option<program::Owner> {
        sys::fstat(file.0).map(|st| program::Owner { mode: st.st_mode, uid: st.st_uid, gid: st.st_gid })
    }

    fn on_nosuid_mount(&self, file: &Fd) -> bool {
        // x86-64's `struct statfs`: eleven words (f_type … f_frsize, then f_flags) and four
        // spare. (The libc crate's `statfs` has no `f_flags` field.)
        let mut fs = [0u64; 15];
        // SAFETY: fstatfs writes one `struct statfs` (120 bytes) into the live, writable `fs`.
        let r = unsafe { sys::syscall3(libc::SYS_fstatfs, file.0 as usize, fs.as_mut_ptr() as usize, 0) };
        r >= 0 && fs[10] & libc::ST_NOSUID != 0
    }

    fn capability_attr(&self, file: &Fd, buf: &mut [u8]) -> usize {
        let name = c"security.capability";
        // SAFETY: a NUL-terminated name and a writable buffer of `buf.len()` bytes.
        let len = unsafe {
            sys::syscall6(
                libc::SYS_fgetxattr,
                file.0 as usize,
                name.as_ptr() as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
                0,
            )
        };
        usize::try_from(len).unwrap_or(0)
    }

    fn caller(&self) -> program::Caller {
        let (mut uid, mut euid, mut suid, mut gid, mut egid, mut sgid) = (0u32, 0u32, 0u32, 0u32, 0u32, 0u32);
        let ids = |nr, r: &mut u32, e: &mut u32, s: &mut u32| {
            // SAFETY: getres[ug]id writes one id through each of the three live pointers.
            unsafe { sys::syscall3(nr, r as *mut u32 as usize, e as *mut u32 as usize, s as *mut u32 as usize) }
        };
        ids(libc::SYS_getresuid, &mut uid, &mut euid, &mut suid);
        ids(libc::SYS_getresgid, &mut gid, &mut egid, &mut sgid);
        program::Caller { uid, euid, gid, egid }
    }

    fn no_new_privs(&self) -> bool {
        // SAFETY: PR_GET_NO_NEW_PRIVS reads no memory.
        unsafe { sys::syscall3(libc::SYS_prctl, libc::PR_GET_NO_NEW_PRIVS as usize, 0, 0) == 1 }
    }
}
