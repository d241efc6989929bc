//! The hook table. One line per hooked symbol: its C signature, the operation it
//! belongs to, and a body that hands the call to its family (`path_call`, `sock_call`,
//! `exec_call`, `spawn_call`) with a closure that runs the original.
//!
//! Each symbol is exported (symbol interposition: the program's calls through its PLT
//! land here), and the `Inline` entries also patch libc's own code with a jump here,
//! so calls libc makes internally are caught too. Either way the original runs
//! through `Real`: libc's function, or its trampoline when patched. The reentrancy
//! guard keeps a call from being mediated twice when one hooked function calls
//! another (fopen → `__open`).

#![allow(clippy::missing_safety_doc)]

use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use hermes_wire::{Args, Op, SockAddr, SOCKADDR_MAX};
use libc::{
    mode_t, msghdr, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t, size_t, sockaddr, socklen_t, ssize_t, FILE,
};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use hermes_trampolines::Recipe;

use crate::config::{count_list, with_hermes_env};
use crate::mediate::{ReplyBuf, Session, Token, Verdict};
use crate::{barred_exec, fds, sys};

/// Where the original of a hooked symbol lives. `target` is libc's code, found once
/// with `dlsym(RTLD_NEXT)`; `original` is what the hook calls: the target itself, or
/// the trampoline when the target's prologue is patched inline.
pub struct Real {
    name: &'static str,
    target: AtomicUsize,
    original: AtomicUsize,
    /// The target's code jumps to our hook (an inline patch is in place).
    inline: core::sync::atomic::AtomicBool,
}

impl Real {
    pub const fn new(name: &'static str) -> Self {
        Real {
            name,
            target: AtomicUsize::new(0),
            original: AtomicUsize::new(0),
            inline: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Look the target up now (constructor) so hooks never call dlsym later.
    pub fn resolve(&self) -> usize {
        let found = self.target.load(Relaxed);
        if found != 0 {
            return found;
        }
        // SAFETY: `name` is a NUL-terminated literal (built by the `hooks!` macro).
        let found = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) } as usize;
        self.target.store(found, Relaxed);
        let _ = self.original.compare_exchange(0, found, Relaxed, Relaxed);
        found
    }

    /// Call the original through `trampoline` from now on.
    fn patched(&self, trampoline: usize) {
        self.original.store(trampoline, Relaxed);
    }

    /// Whether the target's own code jumps to our hook.
    pub fn is_inline(&self) -> bool {
        self.inline.load(Relaxed)
    }

    /// Whether the original is called through something else than the target (its
    /// trampoline, or strict mode's cookie call).
    pub fn is_patched(&self) -> bool {
        let target = self.target.load(Relaxed);
        target != 0 && self.original.load(Relaxed) != target
    }

    pub fn addr(&self) -> usize {
        match self.original.load(Relaxed) {
            0 => match self.resolve() {
                0 => {
                    sys::warn(&[b"hermes-preload: no original for ", self.name.as_bytes(), b"\n"]);
                    sys::kill_self()
                }
                addr => addr,
            },
            addr => addr,
        }
    }
}

/// How a hook catches its calls.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Patch {
    /// Patch libc's code, so libc's own callers (fopen → `__open`, system →
    /// posix_spawn → `__execve`) are caught too; symbol interposition is the fallback
    /// when the patch is refused.
    Inline,
    /// Symbol interposition only: calls through the program's PLT.
    Symbol,
}

/// One entry of the hook table.
pub struct Hook {
    pub name: &'static str,
    pub patch: Patch,
    pub real: &'static Real,
    /// The address of our exported hook function (the detour).
    pub detour: fn() -> usize,
}

macro_rules! hooks {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty, $patch:ident, |$real:ident| $body:expr; )*) => {
        $(
            #[allow(non_snake_case, non_camel_case_types, dead_code)]
            pub mod $name {
                use super::*;
                pub static REAL: Real = Real::new(concat!(stringify!($name), "\0"));
                pub type Original = unsafe extern "C" fn($($ty),*) -> $ret;
                pub fn detour() -> usize {
                    super::$name as Original as usize
                }
                pub fn get() -> Original {
                    // SAFETY: REAL holds the address dlsym returned for this very symbol,
                    // whose C type is the signature declared in the table.
                    unsafe { core::mem::transmute::<usize, Original>(REAL.addr()) }
                }
            }

            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: the original is called with the arguments our caller gave
                // us (or a redirect built by the family function).
                let $real = |$($arg: $ty),*| unsafe { $name::get()($($arg),*) };
                $body
            }
        )*

        /// Every hooked symbol.
        pub static HOOKS: &[Hook] = &[$(
            Hook { name: stringify!($name), patch: Patch::$patch, real: &$name::REAL, detour: $name::detour }
        ),*];
    };
}

const AT_FDCWD: c_int = libc::AT_FDCWD;
const CREAT: c_int = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;

hooks! {
    open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int, Inline,
        |real| path_call("open", AT_FDCWD, path, flags, mode, real);
    open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int, Symbol,
        |real| path_call("open64", AT_FDCWD, path, flags, mode, real);
    openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int, Inline,
        |real| path_call("openat", dirfd, path, flags, mode, |p, f, m| real(dirfd, p, f, m));
    openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int, Symbol,
        |real| path_call("openat64", dirfd, path, flags, mode, |p, f, m| real(dirfd, p, f, m));
    __open_nocancel(path: *const c_char, flags: c_int, mode: mode_t) -> c_int, Inline,
        |real| path_call("__open_nocancel", AT_FDCWD, path, flags, mode, real);
    __open_2(path: *const c_char, flags: c_int) -> c_int, Symbol,
        |real| fortified("__open_2", AT_FDCWD, path, flags, real);
    __open64_2(path: *const c_char, flags: c_int) -> c_int, Symbol,
        |real| fortified("__open64_2", AT_FDCWD, path, flags, real);
    __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int, Symbol,
        |real| fortified("__openat_2", dirfd, path, flags, |p, f| real(dirfd, p, f));
    __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int, Symbol,
        |real| fortified("__openat64_2", dirfd, path, flags, |p, f| real(dirfd, p, f));
    creat(path: *const c_char, mode: mode_t) -> c_int, Symbol,
        |real| path_call("creat", AT_FDCWD, path, CREAT, mode, |p, f, m| creat_as(f, m, |m| real(p, m), p));
    creat64(path: *const c_char, mode: mode_t) -> c_int, Symbol,
        |real| path_call("creat64", AT_FDCWD, path, CREAT, mode, |p, f, m| creat_as(f, m, |m| real(p, m), p));
    fopen(path: *const c_char, mode: *const c_char) -> *mut FILE, Symbol,
        |real| path_call("fopen", AT_FDCWD, path, fopen_flags(mode), 0o666, |p, f, _| real(p, fopen_mode(mode, f, &mut [0; 8])));
    fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE, Symbol,
        |real| path_call("fopen64", AT_FDCWD, path, fopen_flags(mode), 0o666, |p, f, _| real(p, fopen_mode(mode, f, &mut [0; 8])));
    freopen(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE, Symbol,
        |real| path_call("freopen", AT_FDCWD, path, fopen_flags(mode), 0o666, |p, f, _| real(p, fopen_mode(mode, f, &mut [0; 8]), stream));
    freopen64(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE, Symbol,
        |real| path_call("freopen64", AT_FDCWD, path, fopen_flags(mode), 0o666, |p, f, _| real(p, fopen_mode(mode, f, &mut [0; 8]), stream));

    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int, Inline,
        |real| sock_call("connect", fd, addr, len, |addr| Args::Connect { fd, addr }, |a, l| real(fd, a, l));
    sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t, Inline,
        |real| send_call("sendto", (buf, n), addr, len, |addr| Args::SendTo { fd, len: n as u64, flags, addr }, |b, n, a, l| real(fd, b, n, flags, a, l));
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t, Inline,
        |real| sendmsg_call(fd, msg, flags, |m| real(fd, m, flags));

    execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int, Inline,
        |real| exec_call("execve", AT_FDCWD, path, false, 0, argv, envp, |p, env| barred_exec::execve(p, argv, env, real));
    execv(path: *const c_char, argv: *const *const c_char) -> c_int, Symbol,
        |_real| exec_call("execv", AT_FDCWD, path, false, 0, argv, sys::environ(), |p, env| barred_exec::execve(p, argv, env, real_execve));
    execvp(file: *const c_char, argv: *const *const c_char) -> c_int, Symbol,
        |_real| exec_call("execvp", AT_FDCWD, file, true, 0, argv, sys::environ(), |p, env| searched_exec(p, argv, env, |p, a, e| unsafe { execvpe::get()(p, a, e) }));
    execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int, Symbol,
        |real| exec_call("execvpe", AT_FDCWD, file, true, 0, argv, envp, |p, env| searched_exec(p, argv, env, real));
    execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int, Inline,
        |real| exec_call("execveat", dirfd, path, false, flags, argv, envp, |p, env| barred_exec::execveat(dirfd, p, argv, env, flags, || real(dirfd, p, argv, env, flags), real_execve));
    fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int, Symbol,
        |real| exec_call("fexecve", fd, c"".as_ptr(), false, libc::AT_EMPTY_PATH, argv, envp, |p, env| {
            if unsafe { *p } == 0 {
                barred_exec::execveat(fd, p, argv, env, libc::AT_EMPTY_PATH, || real(fd, argv, env), real_execve)
            } else {
                barred_exec::execve(p, argv, env, real_execve)
            }
        });
    posix_spawn(pid: *mut pid_t, path: *const c_char, actions: *const posix_spawn_file_actions_t, attr: *const posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int, Symbol,
        |real| spawn_call("posix_spawn", path, false, argv.cast(), envp.cast(), |p, a, env| real(pid, p, actions, attr, a.cast(), env.cast()));
    posix_spawnp(pid: *mut pid_t, file: *const c_char, actions: *const posix_spawn_file_actions_t, attr: *const posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int, Symbol,
        |real| spawn_call("posix_spawnp", file, true, argv.cast(), envp.cast(), |p, a, env| real(pid, p, actions, attr, a.cast(), env.cast()));

    close(fd: c_int) -> c_int, Symbol,
        |real| { fds::program_takes(fd as u32, fd as u32); real(fd) };
    dup2(old: c_int, new: c_int) -> c_int, Symbol,
        |real| { if old != new { fds::program_takes(new as u32, new as u32) }; real(old, new) };
    dup3(old: c_int, new: c_int, flags: c_int) -> c_int, Symbol,
        |real| { fds::program_takes(new as u32, new as u32); real(old, new, flags) };
    close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int, Symbol,
        |real| { if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 { fds::program_takes(first, last) }; real(first, last, flags) };
    closefrom(low: c_int) -> (), Symbol,
        |real| { fds::program_takes(low.max(0) as u32, u32::MAX); real(low) };
}

/// Resolve every original and (with `inline`) patch the `Inline` entries, in the
/// constructor, while the process is single-threaded and dlsym is safe to call. A
/// refused patch is reported and that entry stays on symbol interposition.
pub fn install(inline: bool) -> Installed {
    let start = sys::monotonic_ns();
    for hook in HOOKS {
        hook.real.resolve();
    }
    let resolved = sys::monotonic_ns();
    let (patched, copied) = if inline { patch_all() } else { (0, 0) };
    // In strict mode the syscalls we mediate are made with the run's cookie, so the
    // seccomp filter lets them through instead of stopping them a second time.
    for hook in HOOKS {
        if let Some(cookie_call) = crate::strict::replacement(hook.name) {
            hook.real.patched(cookie_call);
        }
    }
    // Entries whose target is patched code call the trampoline, not the patch.
    for hook in HOOKS {
        let target = hook.real.resolve();
        if let Some(patched) = HOOKS.iter().find(|h| h.real.is_patched() && h.real.resolve() == target) {
            hook.real.patched(patched.real.addr());
        }
    }
    Installed { patched, copied, resolve_ns: resolved - start, patch_ns: sys::monotonic_ns() - resolved }
}

/// What [`install`] did, for `HERMES_DEBUG_HOOKS`.
pub struct Installed {
    /// Inline hooks made, and how many of them were copied from recipes.
    pub patched: usize,
    pub copied: usize,
    /// Time spent looking up the originals (dlsym), and patching.
    pub resolve_ns: u64,
    pub patch_ns: u64,
}

/// Patch every `Inline` entry. The recipes of the process that exec'd us (the same libc,
/// usually) let its hooks be made without decoding; ours go to the processes we exec.
/// Returns how many were patched, and how many of those copied from recipes.
fn patch_all() -> (usize, usize) {
    // The launcher makes recipes for exactly these (hermes_wire::INLINE_HOOKED): the two
    // lists must agree, or a run's first process would decode what it was meant to copy.
    let inline: Vec<&Hook> = HOOKS.iter().filter(|h| h.patch == Patch::Inline).collect();
    debug_assert!(
        inline.iter().map(|h| h.name).eq(hermes_wire::INLINE_HOOKED),
        "the Inline entries of the hook table differ from hermes_wire::INLINE_HOOKED"
    );
    let text = String::from_utf8(crate::config::recipes()).unwrap_or_default();
    let given = Recipe::parse_list(&text);
    let mut made = Vec::new();
    let (mut patched, mut copied) = (0, 0);
    // All the hooks as one batch: we run in the constructor, single-threaded, so
    // nothing else changes the address space or runs the code meanwhile.
    let targets: Vec<u64> = inline.iter().map(|h| h.real.resolve() as u64).collect();
    hermes_trampolines::batch_at(&targets, || {
        for hook in inline {
            let target = hook.real.resolve();
            // Aliases (open and open64 are one function in glibc) are patched once.
            if target == 0 || HOOKS.iter().any(|h| h.real.is_patched() && h.real.resolve() == target) {
                continue;
            }
            match patch(hook, target, &given) {
                Ok(inline) => {
                    patched += 1;
                    copied += usize::from(inline.from_recipe());
                    made.push(inline);
                }
                Err(e) => {
                    let msg = format!("hermes-preload: {}: {e}; using symbol interposition for it\n", hook.name);
                    sys::warn(&[msg.as_bytes()]);
                }
            }
        }
    });
    // Every hook made from the recipes we were given: hand those on as they came (the
    // same libc in the children, usually), without writing them out again.
    if copied == patched && patched > 0 {
        crate::config::set_recipes(&text);
    } else {
        let made: Vec<String> = made.iter().filter_map(|h| h.recipe().map(ToString::to_string)).collect();
        crate::config::set_recipes(&made.join(","));
    }
    (patched, copied)
}

/// Patch `target`, from one of `recipes` when one was made from its bytes. The handle
/// returned tells how, and has the hook's own recipe for the processes this one execs.
fn patch(
    hook: &Hook,
    target: usize,
    recipes: &[Recipe],
) -> Result<hermes_trampolines::Hook, hermes_trampolines::HookError> {
    let detour = (hook.detour)() as *const u8;
    // SAFETY: `target` is the address dlsym gave for this libc function, whose C
    // signature is the detour's (both come from the same table line).
    let mut inline = unsafe { hermes_trampolines::Hook::with_recipes(target as *const u8, detour, recipes) }?;
    // The trampoline must be in place before the first call can reach the detour.
    hook.real.patched(inline.original() as usize);
    // SAFETY: as above; the process is single-threaded (constructor).
    if let Err(e) = unsafe { inline.enable() } {
        hook.real.patched(target);
        return Err(e);
    }
    hook.real.inline.store(true, Relaxed);
    // Dropping the handle leaves the function patched for the life of the process.
    Ok(inline)
}

/// How a C function reports failure and an emulated result.
pub trait CResult: Copy {
    fn fail(errno: i32) -> Self;
    fn emulated(value: i64) -> Self;
    fn as_i64(self) -> i64;
}

impl CResult for c_int {
    fn fail(errno: i32) -> Self {
        sys::set_errno(errno);
        -1
    }
    fn emulated(value: i64) -> Self {
        value as c_int
    }
    fn as_i64(self) -> i64 {
        self.into()
    }
}

impl CResult for ssize_t {
    fn fail(errno: i32) -> Self {
        sys::set_errno(errno);
        -1
    }
    fn emulated(value: i64) -> Self {
        value as ssize_t
    }
    fn as_i64(self) -> i64 {
        self as i64
    }
}

impl CResult for *mut FILE {
    fn fail(errno: i32) -> Self {
        sys::set_errno(errno);
        core::ptr::null_mut()
    }
    /// The broker refuses to emulate pointer results; fail closed if one arrives.
    fn emulated(_: i64) -> Self {
        Self::fail(libc::EPERM)
    }
    fn as_i64(self) -> i64 {
        if self.is_null() {
            -1
        } else {
            0
        }
    }
}

/// posix_spawn returns an error number instead of setting errno.
#[derive(Clone, Copy)]
struct SpawnResult(c_int);

impl CResult for SpawnResult {
    fn fail(errno: i32) -> Self {
        SpawnResult(errno)
    }
    fn emulated(_: i64) -> Self {
        SpawnResult(libc::EPERM)
    }
    fn as_i64(self) -> i64 {
        if self.0 == 0 {
            0
        } else {
            -1
        }
    }
}

fn cstr<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: non-null pointers passed as paths are NUL-terminated C strings.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Run the real call and report its result.
fn run<R: CResult>(session: Session, f: impl FnOnce() -> R) -> R {
    let r = f();
    session.done(r.as_i64());
    r
}

/// Apply a decision under which the real call does not run.
fn refuse<R: CResult>(session: Session, verdict: Verdict) -> R {
    session.release();
    match verdict {
        Verdict::Deny(e) => R::fail(e),
        Verdict::Emulate(v) => R::emulated(v),
        Verdict::Kill => sys::kill_self(),
        // A redirect or rewrite of the wrong kind: the broker should not send it; fail
        // closed.
        Verdict::Allow | Verdict::Redirect(_) | Verdict::RedirectAddr(_) | Verdict::Rewrite { .. } => {
            R::fail(libc::EPERM)
        }
    }
}

/// The open family, fopen included.
fn path_call<R: CResult>(
    func: &str,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
    real: impl FnOnce(*const c_char, c_int, mode_t) -> R,
) -> R {
    // The subscription test comes first: an unwatched call costs a flag test.
    let Some(token) = Token::begin(Op::Open) else { return real(path, flags, mode) };
    let Some(raw) = cstr(path) else { return real(path, flags, mode) };
    // The mode argument is only read (and only passed) with O_CREAT or O_TMPFILE.
    let mode = if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE { mode } else { 0 };
    let mut reply = ReplyBuf::new();
    let (verdict, session) = token.ask(func, Args::Open::<()> { dirfd, path: raw, flags, mode }, &mut reply);
    match verdict {
        Verdict::Allow => run(session, || real(path, flags, mode)),
        Verdict::Redirect(to) => run(session, || real(to.as_ptr().cast(), flags, mode)),
        Verdict::Rewrite { flags: f, mode: m, data: None } => {
            run(session, || real(path, f.unwrap_or(flags), m.unwrap_or(mode)))
        }
        other => refuse(session, other),
    }
}

/// The fortified opens (`__openat_2` and kin, what `open` compiles to under
/// _FORTIFY_SOURCE when the flags are not constant) only check that no mode is needed
/// and call `openat`, whose patched prologue would mediate the call a second time
/// (a nested call: let through, but after a gettid to tell it from a vfork child's).
/// Mediated once here, the call goes to the original `openat` itself. Flags that need
/// a mode go to the real function unmediated: it aborts the program, as it must.
fn fortified(
    func: &str,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    real: impl FnOnce(*const c_char, c_int) -> c_int,
) -> c_int {
    if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE {
        return real(path, flags);
    }
    // SAFETY: openat's original (its trampoline when patched), with the program's
    // directory and flags and the path the policy chose; a mode is passed only when
    // a rewrite asked for flags that read it.
    path_call(func, dirfd, path, flags, 0, |p, f, m| unsafe { openat::get()(dirfd, p, f, m) })
}

/// creat with rewritten flags is an open with them (creat has no flags argument).
fn creat_as(flags: c_int, mode: mode_t, creat: impl FnOnce(mode_t) -> c_int, path: *const c_char) -> c_int {
    if flags == CREAT {
        creat(mode)
    } else {
        // SAFETY: the program's path, with the flags the policy chose; the call is made
        // under our guard, so it goes straight to libc's open.
        unsafe { libc::open(path, flags, mode) }
    }
}

/// The fopen mode string for `flags`: the program's own when the policy left the
/// flags alone, else one written into `buf` (rewritten flags).
fn fopen_mode(mode: *const c_char, flags: c_int, buf: &mut [u8; 8]) -> *const c_char {
    if flags == fopen_flags(mode) {
        return mode;
    }
    let base: &[u8] = match (flags & libc::O_ACCMODE, flags & (libc::O_TRUNC | libc::O_APPEND)) {
        (libc::O_RDONLY, _) => b"r",
        (libc::O_WRONLY, libc::O_APPEND) => b"a",
        (libc::O_WRONLY, _) => b"w",
        (_, libc::O_APPEND) => b"a+",
        (_, libc::O_TRUNC) => b"w+",
        _ => b"r+",
    };
    buf[..base.len()].copy_from_slice(base);
    let mut n = base.len();
    for (flag, c) in [(libc::O_EXCL, b'x'), (libc::O_CLOEXEC, b'e')] {
        if flags & flag != 0 {
            buf[n] = c;
            n += 1;
        }
    }
    buf[n] = 0;
    buf.as_ptr().cast()
}

/// Translate an fopen mode string to open(2) flags, as glibc does.
fn fopen_flags(mode: *const c_char) -> c_int {
    let Some(mode) = cstr(mode) else { return 0 };
    let mut flags = match mode.first() {
        Some(b'w') => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        Some(b'a') => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        _ => libc::O_RDONLY,
    };
    for &c in mode.iter().skip(1) {
        match c {
            b'+' => flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR,
            b'x' => flags |= libc::O_EXCL,
            b'e' => flags |= libc::O_CLOEXEC,
            b',' => break, // ",ccs=" and beyond
            _ => {}
        }
    }
    flags
}

fn sockaddr_bytes<'a>(addr: *const sockaddr, len: socklen_t) -> Option<&'a [u8]> {
    // SAFETY: the caller promises `len` readable bytes at `addr`, as the kernel would.
    (!addr.is_null() && len > 0).then(|| unsafe { core::slice::from_raw_parts(addr.cast::<u8>(), len as usize) })
}

/// connect: the address is required.
fn sock_call<'a, R: CResult>(
    func: &str,
    _fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    args: impl FnOnce(SockAddr<'a>) -> Args<'a, ()>,
    real: impl FnOnce(*const sockaddr, socklen_t) -> R,
) -> R {
    let Some(token) = Token::begin(Op::Connect) else { return real(addr, len) };
    let Some(parsed) = sockaddr_bytes(addr, len).and_then(SockAddr::from_raw) else { return real(addr, len) };
    let mut reply = ReplyBuf::new();
    let (verdict, session) = token.ask(func, args(parsed), &mut reply);
    apply_addr(verdict, session, addr, len, real)
}

/// sendto: the address is optional (connected sockets); the payload goes to a policy
/// that asked for it, and may come back rewritten.
fn send_call<'a, R: CResult>(
    func: &str,
    (buf, n): (*const c_void, size_t),
    addr: *const sockaddr,
    len: socklen_t,
    args: impl FnOnce(Option<SockAddr<'a>>) -> Args<'a, ()>,
    real: impl FnOnce(*const c_void, size_t, *const sockaddr, socklen_t) -> R,
) -> R {
    let Some(token) = Token::begin(Op::SendTo) else { return real(buf, n, addr, len) };
    let parsed = sockaddr_bytes(addr, len).and_then(SockAddr::from_raw);
    let mut reply = ReplyBuf::new();
    let payload = payload_of(buf, n);
    let (verdict, session) = token.ask_with(func, args(parsed), payload, &mut reply);
    match verdict {
        Verdict::Rewrite { flags: None, mode: None, data: Some(data) } => {
            run(session, || real(data.as_ptr().cast(), data.len(), addr, len))
        }
        other => apply_addr(other, session, addr, len, |a, l| real(buf, n, a, l)),
    }
}

/// The bytes of a send, when the policy wants to see payloads.
fn payload_of<'a>(buf: *const c_void, n: size_t) -> Option<&'a [u8]> {
    let want = crate::board::word(crate::board::PAYLOAD) as usize;
    // SAFETY: the program passed `n` readable bytes at `buf`, as send(2) requires;
    // we read at most that many.
    (want > 0 && !buf.is_null() && n > 0).then(|| unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), n.min(want)) })
}

fn apply_addr<R: CResult>(
    verdict: Verdict,
    session: Session,
    addr: *const sockaddr,
    len: socklen_t,
    real: impl FnOnce(*const sockaddr, socklen_t) -> R,
) -> R {
    match verdict {
        Verdict::Allow => run(session, || real(addr, len)),
        Verdict::RedirectAddr(to) => {
            let mut raw = [0u8; SOCKADDR_MAX];
            match to.to_raw(&mut raw) {
                Some(n) => run(session, || real(raw.as_ptr().cast(), n as socklen_t)),
                None => refuse(session, Verdict::Deny(libc::EAFNOSUPPORT)),
            }
        }
        other => refuse(session, other),
    }
}

fn sendmsg_call(fd: c_int, msg: *const msghdr, flags: c_int, real: impl FnOnce(*const msghdr) -> ssize_t) -> ssize_t {
    if msg.is_null() {
        return real(msg);
    }
    let Some(token) = Token::begin(Op::SendMsg) else { return real(msg) };
    // SAFETY: a non-null msghdr from the caller, as sendmsg(2) requires.
    let m = unsafe { &*msg };
    let iov: &[libc::iovec] = if m.msg_iov.is_null() {
        &[]
    } else {
        // SAFETY: msg_iov points to msg_iovlen iovecs, as sendmsg(2) requires.
        unsafe { core::slice::from_raw_parts(m.msg_iov, m.msg_iovlen) }
    };
    let len = iov.iter().map(|v| v.iov_len as u64).sum();
    let parsed = sockaddr_bytes(m.msg_name.cast(), m.msg_namelen).and_then(SockAddr::from_raw);
    let mut reply = ReplyBuf::new();
    // The payload, gathered from the iovecs (up to a stack buffer's worth), when the
    // policy wants to see it.
    let mut gathered: Option<[u8; 4096]> = None;
    let want = (crate::board::word(crate::board::PAYLOAD) as usize).min(4096);
    let mut have = 0;
    if want > 0 {
        let buf = gathered.insert([0; 4096]);
        for v in iov.iter().filter(|v| !v.iov_base.is_null()) {
            let take = v.iov_len.min(want - have);
            // SAFETY: each iovec describes `iov_len` readable bytes, as sendmsg(2) requires.
            buf[have..have + take]
                .copy_from_slice(unsafe { core::slice::from_raw_parts(v.iov_base.cast::<u8>(), take) });
            have += take;
        }
    }
    let payload = gathered.as_ref().filter(|_| have > 0).map(|g| &g[..have]);
    let args = Args::SendMsg::<()> { fd, len, flags, addr: parsed };
    let (verdict, session) = token.ask_with("sendmsg", args, payload, &mut reply);
    match verdict {
        Verdict::Allow => run(session, || real(msg)),
        Verdict::Rewrite { flags: None, mode: None, data: Some(data) } => {
            let mut one = libc::iovec { iov_base: data.as_ptr() as *mut c_void, iov_len: data.len() };
            let mut copy = *m;
            copy.msg_iov = &mut one;
            copy.msg_iovlen = 1;
            run(session, || real(&copy))
        }
        Verdict::RedirectAddr(to) => {
            let mut raw = [0u8; SOCKADDR_MAX];
            match to.to_raw(&mut raw) {
                Some(n) => {
                    let mut copy = *m;
                    copy.msg_name = raw.as_mut_ptr().cast();
                    copy.msg_namelen = n as socklen_t;
                    run(session, || real(&copy))
                }
                None => refuse(session, Verdict::Deny(libc::EAFNOSUPPORT)),
            }
        }
        other => refuse(session, other),
    }
}

/// A C `char **` list (NULL-terminated), serialised in place without copying.
pub struct CStrList(*const *const c_char);

impl Serialize for CStrList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = count_list(self.0);
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            // SAFETY: i < n, the count of non-null entries; entries are C strings.
            let item = unsafe { CStr::from_ptr(*self.0.add(i)) };
            seq.serialize_element(serde_bytes::Bytes::new(item.to_bytes()))?;
        }
        seq.end()
    }
}

/// The original execve (its trampoline, when patched inline): where the other members
/// of the exec family end up.
fn real_execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: execve's own C signature, with the exec call's arguments.
    unsafe { execve::get()(path, argv, envp) }
}

/// The exec family. The environment is re-injected whether or not the policy
/// watches exec, so children stay mediated.
#[allow(clippy::too_many_arguments)]
fn exec_call(
    func: &str,
    dirfd: c_int,
    path: *const c_char,
    search_path: bool,
    flags: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
    real: impl FnOnce(*const c_char, *const *const c_char) -> c_int,
) -> c_int {
    let exec = |p: *const c_char| with_hermes_env(envp, |env| real(p, env));
    let Some(token) = Token::begin(Op::Exec) else { return exec(path) };
    let Some(raw) = cstr(path) else { return exec(path) };
    let mut reply = ReplyBuf::new();
    let args = Args::Exec { dirfd, path: raw, search_path, flags, argv: CStrList(argv), envp: CStrList(envp) };
    let (verdict, session) = token.ask(func, args, &mut reply);
    match verdict {
        Verdict::Allow => run(session, || exec(path)),
        Verdict::Redirect(to) => run(session, || exec(to.as_ptr().cast())),
        other => refuse(session, other),
    }
}

/// execvp and execvpe: libc searches PATH and calls its own execve, which judges the
/// program when it is patched inline; when it is not, the program is judged here.
fn searched_exec(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    real: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    if execve::REAL.is_inline() {
        return real(file, argv, envp);
    }
    barred_exec::before_libc(file, true, argv, envp, real).unwrap_or_else(|()| barred_exec::refused())
}

/// posix_spawn(p): decided in the parent; the child's exec is libc-internal, and so is
/// the judgement of its program ([`barred_exec::before_libc`]).
fn spawn_call(
    func: &str,
    path: *const c_char,
    search_path: bool,
    argv: *const *const c_char,
    envp: *const *const c_char,
    real: impl FnOnce(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    // With execve patched, the exec inside the spawned child is mediated and judged there.
    let inline = execve::REAL.is_inline();
    let spawn = |p: *const c_char| {
        SpawnResult(with_hermes_env(envp, |env| match inline {
            true => real(p, argv, env),
            false => barred_exec::before_libc(p, search_path, argv, env, real).unwrap_or(libc::EACCES),
        }))
    };
    if inline {
        return spawn(path).0;
    }
    let Some(token) = Token::begin(Op::Exec) else { return spawn(path).0 };
    let Some(raw) = cstr(path) else { return spawn(path).0 };
    let mut reply = ReplyBuf::new();
    let args =
        Args::Exec { dirfd: AT_FDCWD, path: raw, search_path, flags: 0, argv: CStrList(argv), envp: CStrList(envp) };
    let (verdict, session) = token.ask(func, args, &mut reply);
    let result = match verdict {
        Verdict::Allow => run(session, || spawn(path)),
        Verdict::Redirect(to) => run(session, || spawn(to.as_ptr().cast())),
        other => refuse(session, other),
    };
    result.0
}
