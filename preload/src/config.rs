//! Configuration read once, in the constructor, from the environment the launcher set;
//! and the HERMES environment re-injected into exec'd children.

use core::ffi::{c_char, c_void, CStr};
use core::mem::MaybeUninit;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use hermes_wire::handoff::ENV_READY_FD;

use crate::{mediate, sys};

/// The board's path, for the constructor to map once the strict-mode cookie is known.
pub fn board_path() -> Option<Vec<u8>> {
    env(ENV_BOARD)
}

/// The launcher's variables: broker socket name, initial subscription mask, and the
/// preload's own path.
pub const ENV_SOCK: &str = "HERMES_SOCK";
pub const ENV_MASK: &str = "HERMES_MASK";
pub const ENV_LIB: &str = "HERMES_PRELOAD_LIB";
/// The `hermes` binary, which runs a static program a target execs (`exec-traced`).
pub const ENV_BIN: &str = "HERMES_BIN";
/// Variables every exec'd child gets again, when the launcher set them.
/// (`HERMES_RECIPES` is not among them: each process hands on its own, `set_recipes`.)
const PROPAGATED: &[&str] = &[
    ENV_SOCK,
    ENV_MASK,
    ENV_LIB,
    ENV_BIN,
    ENV_BOARD,
    "HERMES_API",
    "HERMES_INLINE",
    "HERMES_COOKIE",
    "HERMES_DOORS",
    ENV_DEBUG_HOOKS,
];
/// Where the broker's board is (`/proc/PID/fd/N`).
pub const ENV_BOARD: &str = "HERMES_BOARD";
/// `HERMES_INLINE=0` keeps libc unpatched (symbol interposition only).
pub const ENV_INLINE: &str = "HERMES_INLINE";
/// The inline hooks' plans as recipes (`hermes_trampolines::Recipe`), from the process that
/// exec'd this one: hooking the same libc again then decodes nothing.
pub const ENV_RECIPES: &str = "HERMES_RECIPES";

pub struct Config {
    socket: Vec<u8>,
    lib: Vec<u8>,
    /// `NAME=value` strings added to every exec'd child's environment.
    inject: Vec<CString>,
    /// `hermes` itself, as a C string, when known.
    bin: Option<CString>,
    /// This process is the `hermes` binary (exec-traced): stay out of its way.
    inert: bool,
    ld_preload: CString,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
/// `HERMES_RECIPES=…` for exec'd children: this process's own hooks, known after they are made.
static RECIPES: OnceLock<CString> = OnceLock::new();
static mut THREAD_KEY: libc::pthread_key_t = 0;

/// The configuration, once the constructor has read it. An exec from another
/// library's constructor, before ours, finds none.
pub fn try_get() -> Option<&'static Config> {
    CONFIG.get()
}

pub fn get() -> &'static Config {
    // Only reachable once READY is set, which happens after `init` stored the config.
    CONFIG.get().unwrap_or_else(|| fatal(b"configuration used before the constructor ran"))
}

impl Config {
    pub fn socket(&self) -> &[u8] {
        &self.socket
    }

    pub fn bin(&self) -> Option<&CString> {
        self.bin.as_ref()
    }

    pub fn inert(&self) -> bool {
        self.inert
    }
}

/// The recipes this process was given.
pub fn recipes() -> Vec<u8> {
    env(ENV_RECIPES).unwrap_or_default()
}

/// Hand `recipes` (this process's hooks) to every exec'd child.
pub fn set_recipes(recipes: &str) {
    if let Ok(kv) = CString::new([ENV_RECIPES, "=", recipes].concat()) {
        let _ = RECIPES.set(kv);
    }
}

/// `HERMES_DEBUG_HOOKS=1`: each process reports on stderr how its inline hooks were made.
const ENV_DEBUG_HOOKS: &str = "HERMES_DEBUG_HOOKS";

pub fn debug_hooks() -> bool {
    env(ENV_DEBUG_HOOKS).is_some_and(|v| v == b"1")
}

/// Whether to patch libc inline (the default).
pub fn inline_hooks() -> bool {
    env(ENV_INLINE).is_none_or(|v| v != b"0")
}

/// The path this process was exec'd by (`AT_EXECFN`).
fn exec_path() -> Option<Vec<u8>> {
    // SAFETY: getauxval only reads the auxiliary vector; AT_EXECFN, when present, is the
    // address of a NUL-terminated string the kernel put on the initial stack, which lives
    // as long as the process.
    let at = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const c_char;
    // SAFETY: see above.
    (!at.is_null()).then(|| unsafe { CStr::from_ptr(at) }.to_bytes().to_vec())
}

fn env(name: &str) -> Option<Vec<u8>> {
    std::env::var_os(name).map(|v| v.into_encoded_bytes())
}

fn fatal(why: &[u8]) -> ! {
    sys::warn(&[b"hermes-preload: ", why, b"\n"]);
    sys::exit_now(126)
}

/// Bound on what the launcher may send (recipes and API hook lists are a few KiB).
const HANDOFF_MAX: usize = 1 << 20;

/// Wait for the launcher's handoff ([`ENV_READY_FD`]) and put what it sends into the
/// environment, where [`init`] and every exec'd child find it. Nothing comes (the launcher
/// died, or stopped the run because the broker could not start): nothing may run.
fn await_launcher() {
    use hermes_wire::handoff::{self, Refused};
    let Some(fd) = env(ENV_READY_FD) else { return };
    std::env::remove_var(ENV_READY_FD);
    let Some(fd) = std::str::from_utf8(&fd).ok().and_then(|f| f.parse::<i32>().ok()).filter(|&f| f > 2) else {
        fatal(b"HERMES_READY_FD is not a descriptor number")
    };
    let mut handoff = Vec::new();
    let mut chunk = [0u8; 4096];
    while handoff.len() <= HANDOFF_MAX {
        match sys::read_some(fd, &mut chunk) {
            Ok(n) => handoff.extend_from_slice(&chunk[..n]),
            Err(_) => break, // EOF (EPIPE) or a failed read: judged by what came
        }
    }
    sys::close(fd);
    let entries = match handoff::entries(&handoff) {
        Ok(entries) => entries,
        Err(Refused::Incomplete) => fatal(b"the launcher went away before the broker was ready"),
        Err(Refused::Malformed) => fatal(b"malformed handoff from the launcher"),
    };
    for (name, value) in entries {
        // Changing the environment is sound here: the constructor runs before main,
        // while the process is single-threaded.
        std::env::set_var(OsStr::from_bytes(name), OsStr::from_bytes(value));
    }
}

/// Read the configuration and prepare the environment to inject. Runs in the
/// constructor, while the process is single-threaded.
pub fn init() {
    await_launcher();
    let Some(socket) = env(ENV_SOCK) else {
        fatal(b"HERMES_SOCK is not set: this library is loaded by `hermes launch`, not by hand")
    };
    let lib = env(ENV_LIB).unwrap_or_default();
    let mask = env(ENV_MASK)
        .and_then(|m| std::str::from_utf8(&m).ok().and_then(|m| m.parse::<u64>().ok()))
        .unwrap_or(u64::MAX);
    crate::board::set_fallback(hermes_wire::board::MASK, mask);
    let kv = |k: &str, v: &[u8]| {
        CString::new([k.as_bytes(), b"=", v].concat()).unwrap_or_else(|_| fatal(b"NUL in HERMES environment"))
    };
    let inject: Vec<CString> = PROPAGATED.iter().filter_map(|k| env(k).map(|v| kv(k, &v))).collect();
    let ld_preload = kv("LD_PRELOAD", &lib);
    let bin = env(ENV_BIN);
    // The preload execs `hermes exec-traced` by exactly this path (no /proc/self/exe to read).
    let inert = bin.is_some() && exec_path() == bin;
    let bin = bin.and_then(|b| CString::new(b).ok());
    let _ = CONFIG.set(Config { socket, lib, inject, bin, inert, ld_preload });

    // SAFETY: registering process-wide handlers from the single-threaded constructor;
    // both callbacks are `extern "C"` functions that live as long as the library.
    unsafe {
        if libc::pthread_key_create(&raw mut THREAD_KEY, Some(thread_exit)) != 0 {
            fatal(b"pthread_key_create failed");
        }
        libc::pthread_atfork(Some(fork_prepare), None, Some(fork_child));
    }
}

extern "C" fn thread_exit(value: *mut c_void) {
    mediate::close_thread_conn(value as usize as i32 - 1);
}

extern "C" fn fork_prepare() {
    mediate::before_fork();
}

extern "C" fn fork_child() {
    mediate::after_fork_child();
}

/// Close `fd` when the calling thread exits.
pub fn on_thread_exit_close(fd: i32) {
    // SAFETY: THREAD_KEY was created in the constructor before READY was set, and is
    // never written again; storing an integer as the key's value.
    unsafe { libc::pthread_setspecific(THREAD_KEY, (fd as usize + 1) as *const c_void) };
}

const MAX_STACK_ENV: usize = 256;

/// Call `f` with `envp` plus the HERMES variables, so an exec'd child is mediated
/// even when the program cleared its environment. No allocation: safe in a vfork
/// child.
pub fn with_hermes_env<R>(envp: *const *const c_char, f: impl FnOnce(*const *const c_char) -> R) -> R {
    let Some(cfg) = try_get() else { return f(envp) };
    let count = count_list(envp);
    let own = env_value(envp, b"LD_PRELOAD=");
    match own {
        Some(value) if !contains_lib(value, &cfg.lib) => with_merged_preload(cfg, envp, count, value, f),
        _ => with_env(cfg, envp, count, None, f),
    }
}

/// The program's own `LD_PRELOAD` with ours in front. Its buffer is kept out of
/// [`with_hermes_env`]'s frame: most execs merge nothing, and 4 KiB more stack under
/// every exec is one more page for a fork child about to exec to copy.
#[cold]
#[inline(never)]
fn with_merged_preload<R>(
    cfg: &Config,
    envp: *const *const c_char,
    count: usize,
    value: &[u8],
    f: impl FnOnce(*const *const c_char) -> R,
) -> R {
    let mut buf = [0u8; 4096];
    let merged = merge_preload(&mut buf, &cfg.lib, value);
    with_env(cfg, envp, count, merged, f)
}

/// `envp` without the HERMES variables, then ours; its `LD_PRELOAD` replaced by
/// `preload` when given, ours added when it has none. The slots are not zeroed: only
/// those filled are read.
fn with_env<R>(
    cfg: &Config,
    envp: *const *const c_char,
    count: usize,
    preload: Option<*const c_char>,
    f: impl FnOnce(*const *const c_char) -> R,
) -> R {
    let mut stack = [MaybeUninit::<*const c_char>::uninit(); MAX_STACK_ENV];
    let mut mapped;
    let inject = || cfg.inject.iter().chain(RECIPES.get());
    let room = count + inject().count() + 2;
    let slots: &mut [MaybeUninit<*const c_char>] = if room <= MAX_STACK_ENV {
        &mut stack
    } else {
        let bytes = room * core::mem::size_of::<*const c_char>();
        match sys::Mapping::new(bytes) {
            Some(m) => {
                mapped = m;
                let raw = mapped.bytes();
                // SAFETY: the mapping is page-aligned and `bytes` long; MaybeUninit
                // slots need no initialisation.
                unsafe { core::slice::from_raw_parts_mut(raw.as_mut_ptr().cast(), room) }
            }
            None => return f(envp),
        }
    };
    let mut n = 0;
    let mut push = |p: *const c_char| {
        slots[n].write(p);
        n += 1;
    };
    let mut saw_preload = false;
    for i in 0..count {
        let bytes = env_entry(envp, i);
        if inject().any(|kv| same_name(kv.to_bytes(), bytes)) {
            continue;
        }
        if bytes.starts_with(b"LD_PRELOAD=") {
            saw_preload = true;
            if let Some(merged) = preload {
                push(merged);
                continue;
            }
        }
        // SAFETY: i < count, the number of non-null entries of the NULL-terminated list.
        push(unsafe { *envp.add(i) });
    }
    if !saw_preload {
        push(cfg.ld_preload.as_ptr());
    }
    for kv in inject() {
        push(kv.as_ptr());
    }
    push(core::ptr::null());
    // The first `n` slots, the NULL among them, were written above.
    f(slots.as_ptr().cast())
}

/// Entry `i` of the environment list `envp`, which has more than `i`.
fn env_entry<'a>(envp: *const *const c_char, i: usize) -> &'a [u8] {
    // SAFETY: callers pass i < count_list(envp), so the entry is a live NUL-terminated
    // string (exec environments are), which outlives the exec call that uses it.
    unsafe { CStr::from_ptr(*envp.add(i)) }.to_bytes()
}

/// What follows `prefix` (`NAME=`) in the first entry of the environment list `envp`
/// that starts with it. No allocation: safe in a vfork child.
pub fn env_value<'a>(envp: *const *const c_char, prefix: &[u8]) -> Option<&'a [u8]> {
    (0..count_list(envp)).find_map(|i| env_entry(envp, i).strip_prefix(prefix))
}

/// Number of entries before the NULL of a C string list (0 for a null list).
pub fn count_list(list: *const *const c_char) -> usize {
    if list.is_null() {
        return 0;
    }
    let mut n = 0;
    // SAFETY: the caller passes a NULL-terminated list, as exec requires.
    while !unsafe { *list.add(n) }.is_null() {
        n += 1;
    }
    n
}

fn same_name(kv: &[u8], entry: &[u8]) -> bool {
    let name_len = kv.iter().position(|&b| b == b'=').map_or(kv.len(), |i| i + 1);
    entry.starts_with(&kv[..name_len])
}

fn contains_lib(value: &[u8], lib: &[u8]) -> bool {
    value.split(|&b| b == b':' || b == b' ').any(|item| item == lib)
}

/// Build `LD_PRELOAD=<lib>:<value>` in `buf`.
fn merge_preload(buf: &mut [u8], lib: &[u8], value: &[u8]) -> Option<*const c_char> {
    sys::concat_c(buf, &[b"LD_PRELOAD=", lib, b":", value]).map(CStr::as_ptr)
}
