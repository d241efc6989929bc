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

use hermes_wire::program;

use crate::{config, mediate, strict, sys};

const MAX_STACK_ARGS: usize = 256;

/// execve `path`, or `hermes exec-traced` for it when the preload cannot enter it.
pub fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    real: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    let Some(cfg) = config::try_get() else { return real(path, argv, envp) };
    // Under --strict the tracer already follows the exec; inert: we are hermes.
    let applies = mediate::READY.load(Relaxed) && strict::COOKIE.load(Relaxed) == 0 && !cfg.inert();
    if !applies || path.is_null() {
        return real(path, argv, envp);
    }
    // SAFETY: a non-null path handed to exec is a NUL-terminated string.
    let path_str = unsafe { CStr::from_ptr(path) };
    let Some(barred) = program::barred(&Raw, path_str) else { return real(path, argv, envp) };
    let refuse = |why: &[u8]| {
        sys::warn(&[b"hermes-preload: ", path_str.to_bytes(), b": ", barred.what().as_bytes(), why]);
        sys::set_errno(libc::EACCES);
        -1
    };
    if !barred.traceable() {
        return refuse(b": HERMES mediates x86-64 programs only; exec refused\n");
    }
    let Some(bin) = cfg.bin() else {
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
            path_str.to_bytes(),
            b" is ",
            barred.what().as_bytes(),
            b": the ptrace fallback mediates it, where it runs without those privileges (no_new_privs)\n",
        ]);
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
        // x86-64's `struct statfs`: eleven words (f_type … f_frsize, then f_flags) and four spare.
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
        // SAFETY: PR_GET_NO_NEW_PRIVS reads no memory.
        let no_new_privs = unsafe { sys::syscall3(libc::SYS_prctl, libc::PR_GET_NO_NEW_PRIVS as usize, 0, 0) } == 1;
        program::Caller { uid, euid, gid, egid, no_new_privs }
    }
}
