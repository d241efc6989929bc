//! `hermes launch`: start the broker, start the target with the preload, reap the
//! whole process tree, pass the target's exit status through.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use hermes_broker::policy::ApiHook;
use hermes_wire::program::{self, Barred};

use crate::seccomp::Doors;
use crate::LaunchArgs;

const PRELOAD_NAME: &str = "libhermes_preload.so";

/// A failure before the target runs: a message and the exit code that goes with it.
struct Refusal(u8, String);

pub fn run(args: &LaunchArgs) -> ExitCode {
    match launch(args) {
        Ok(code) => code,
        Err(Refusal(code, msg)) => {
            eprintln!("hermes: {msg}");
            ExitCode::from(code)
        }
    }
}

fn launch(args: &LaunchArgs) -> Result<ExitCode, Refusal> {
    let (prog, prog_args) = args.command.split_first().ok_or_else(|| Refusal(2, "no program given".into()))?;
    let exe = find_program(prog)?;
    // A static binary never runs the dynamic loader, and the loader ignores LD_PRELOAD
    // in a program that runs privileged (set-uid, set-gid, file capabilities): the
    // preload cannot enter either, and the seccomp+ptrace fallback mediates them instead.
    let barred = preload_barred(&exe)?;
    if let Some(privileged) = barred.filter(|b| b.privileged()) {
        eprintln!(
            "hermes: {} is {}: the dynamic loader ignores LD_PRELOAD for it, so the ptrace fallback mediates it \
             (traced, it keeps those privileges only when hermes runs as root, as under strace)",
            exe.display(),
            privileged.what()
        );
    }
    // --strict adds the fallback to a dynamic program, beside the preload.
    let traced = barred.is_some() || args.strict;
    let preload = if barred.is_some() { None } else { Some(find_preload(args.preload.as_deref())?) };
    let cli_hooks = cli_hooks(&args.hook, args.backtrace)?;
    // The preload marks the syscalls it already mediated with this cookie, which the
    // filter lets through; everything else it makes stops in the tracer.
    let cookie = (traced && preload.is_some()).then(random_cookie);
    let socket = format!("hermes-{}-{}", std::process::id(), nanos());
    // The first process's recipes, unless inline hooks are off or recipes were given.
    let make_recipes = preload.is_some()
        && std::env::var_os("HERMES_INLINE").is_none_or(|v| v != "0")
        && std::env::var_os("HERMES_RECIPES").is_none();
    let recipes = move || make_recipes.then(crate::recipes::for_system_libc).flatten();

    let mut cmd = Command::new(&exe);
    cmd.arg0(prog).args(prog_args).env("HERMES_SOCK", &socket);
    if let Some(preload) = &preload {
        let mut ld_preload = preload.as_os_str().to_owned();
        if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            ld_preload.push(":");
            ld_preload.push(existing);
        }
        cmd.env("LD_PRELOAD", ld_preload).env("HERMES_PRELOAD_LIB", preload);
    }
    if let Some(cookie) = cookie {
        cmd.env("HERMES_COOKIE", format!("{cookie:016x}"));
    }
    // A dynamic program may exec a static one: the preload then execs
    // `hermes exec-traced` in its place, which needs to find this binary.
    if let Ok(me) = std::env::current_exe() {
        cmd.env("HERMES_BIN", me);
    }
    let cannot_run = |e: std::io::Error| {
        let code = if e.kind() == std::io::ErrorKind::PermissionDenied { 126 } else { 127 };
        Refusal(code, format!("cannot run {}: {e}", exe.display()))
    };

    if !traced {
        return launch_preloaded(args, cmd, &socket, cli_hooks, recipes, cannot_run);
    }
    let (broker, recipes) = BrokerProc::start(args, &socket, recipes);
    let mut broker = broker?;
    become_reaper();
    let late = broker.late_env(cli_hooks, recipes);
    if let (Some(barred), true) = (barred, late.iter().any(|(name, _)| *name == "HERMES_API")) {
        broker.stop();
        let why = format!("--hook needs the preload, which cannot enter {}: {}", exe.display(), barred.what());
        return Err(Refusal(2, why));
    }
    cmd.envs(late);
    let doors = Doors::parse(&broker.doors);
    let ran = crate::tracer::run(&cmd, prog, &socket, cookie, doors);
    finish(broker, ran.map_err(cannot_run))
}

/// A dynamic program under the preload alone: it is started together with the broker,
/// so that its exec and dynamic loading (most of a small program's start-up) overlap
/// the broker's. Its preload waits, in its constructor, for what only the ready broker
/// knows ([`BrokerProc::late_env`]), which comes down a pipe (`HERMES_READY_FD`).
fn launch_preloaded(
    args: &LaunchArgs,
    mut cmd: Command,
    socket: &str,
    cli_hooks: Vec<ApiHook>,
    recipes: impl FnOnce() -> Option<String>,
    cannot_run: impl Fn(std::io::Error) -> Refusal,
) -> Result<ExitCode, Refusal> {
    let (handoff_r, handoff_w) =
        handoff_pipe().map_err(|e| Refusal(2, format!("cannot start the program: pipe: {e}")))?;
    cmd.env(hermes_wire::handoff::ENV_READY_FD, handoff_r.as_raw_fd().to_string());
    let (broker, (spawned, recipes)) = BrokerProc::start(args, socket, || {
        let spawned = cmd.spawn();
        drop(handoff_r);
        (spawned, recipes())
    });
    let (broker, target) = match (broker, spawned) {
        (Ok(mut broker), Err(e)) => {
            broker.stop();
            return Err(cannot_run(e));
        }
        (Err(refusal), Ok(mut target)) => {
            // Still in its constructor, waiting for the handoff: nothing of it has run.
            let _ = target.kill();
            let _ = target.wait();
            return Err(refusal);
        }
        (Err(refusal), Err(_)) => return Err(refusal),
        (Ok(broker), Ok(target)) => (broker, target),
    };
    become_reaper();
    let late = broker.late_env(cli_hooks, recipes);
    let mut handoff: Vec<u8> = Vec::new();
    hermes_wire::handoff::write(late.iter().map(|(name, value)| (*name, value.as_str())), |part| {
        handoff.extend_from_slice(part)
    });
    // A target the preload never entered (its loader ignored LD_PRELOAD) reads nothing:
    // the pipe must hold it all, or this write would wait for it forever.
    if handoff.len() > PIPE_HOLDS {
        // SAFETY: fcntl on a descriptor we own; on failure the write below may block.
        unsafe { libc::fcntl(handoff_w.as_raw_fd(), libc::F_SETPIPE_SZ, handoff.len() as libc::c_int) };
    }
    let mut handoff_w = File::from(handoff_w);
    let _ = std::io::Write::write_all(&mut handoff_w, &handoff);
    drop(handoff_w);
    finish(broker, Ok(reap_tree(target)))
}

/// What a pipe holds by default (16 pages).
const PIPE_HOLDS: usize = 65536;

/// A pipe whose read end the target inherits (not close-on-exec); the launcher's end is.
fn handoff_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (r, w) = crate::tracer::pipe()?;
    // SAFETY: fcntl on a descriptor we own, clearing its close-on-exec flag.
    if unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((r, w))
}

/// Orphans of the target's tree are re-parented to us, so every process of the run is
/// reaped (and mediated) before the broker is told to stop.
fn become_reaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// The run is over (or the target could not start): stop the broker, which finishes
/// the trace, and pass the target's status through.
fn finish(mut broker: BrokerProc, ran: Result<u8, Refusal>) -> Result<ExitCode, Refusal> {
    let status = match ran {
        Ok(status) => status,
        Err(refusal) => {
            broker.stop();
            return Err(refusal);
        }
    };
    if broker.died_early() {
        eprintln!("hermes: the broker exited while the target ran; mediated calls after that were denied (EPERM)");
    }
    broker.stop();
    Ok(ExitCode::from(status))
}

/// `hermes exec-traced --arg0 A -- PROG ARGS…`: run a static program that a mediated
/// dynamic program exec'd, under the ptrace fallback, asking the run's broker (found in
/// the inherited environment). This process took the exec'ing process's place, so its
/// exit status is the program's.
pub fn exec_traced(arg0: &OsStr, command: &[OsString]) -> ExitCode {
    let Some((prog, args)) = command.split_first() else { return ExitCode::from(2) };
    let Some(socket) = std::env::var_os("HERMES_SOCK").and_then(|s| s.into_string().ok()) else {
        eprintln!("hermes exec-traced: HERMES_SOCK is not set (this command is run by the preload)");
        return ExitCode::from(126);
    };
    let mut cmd = Command::new(prog);
    cmd.args(args);
    // Dynamic programs further down this tree load the preload: its own, already
    // mediated, syscalls must carry a cookie this filter lets through.
    let cookie = random_cookie();
    cmd.env("HERMES_COOKIE", format!("{cookie:016x}"));
    let doors = Doors::parse(&std::env::var("HERMES_DOORS").unwrap_or_default());
    match crate::tracer::run(&cmd, arg0, &socket, Some(cookie), doors) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("hermes exec-traced: cannot run {}: {e}", Path::new(prog).display());
            ExitCode::from(if e.kind() == std::io::ErrorKind::PermissionDenied { 126 } else { 127 })
        }
    }
}

/// The target's pid, for the signal forwarder.
static TARGET: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = TARGET.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our child's.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forward SIGTERM and SIGHUP to the target `pid`; ignore SIGINT and SIGQUIT, which
/// the terminal also delivers to the target directly.
pub(crate) fn forward_signals(pid: i32) {
    TARGET.store(pid, Ordering::Relaxed);
    // SAFETY: installing async-signal-safe handlers / ignoring terminal signals.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, forward as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
        for sig in [libc::SIGINT, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

/// Wait for the target and every orphan it leaves to us; return the target's status
/// as an exit code (128+N for signal N).
fn reap_tree(target: Child) -> u8 {
    let pid = target.id() as i32;
    forward_signals(pid);
    let mut code = 1;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a live local.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => break, // ECHILD: the tree is gone
            }
        }
        if reaped == pid {
            code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else {
                128u8.wrapping_add(libc::WTERMSIG(status) as u8)
            };
        }
    }
    std::mem::forget(target); // already reaped above
    code
}

struct BrokerProc {
    lifeline: Option<File>,
    out: BufReader<File>,
    mask: u64,
    /// The policy's `hermes.hook` list (`LIB:SYMBOL=KINDS;…`).
    hooks: String,
    /// The policy's seccomp settings (`io_uring=allow,…` or `-`).
    doors: String,
    /// Where the run's processes map the board (`hermes_wire::board`).
    board: String,
}

impl BrokerProc {
    /// Fork the broker (no exec: it is this binary, and loading it again costs a
    /// millisecond), run `meanwhile` while it starts, and wait for its `ready` line.
    /// `meanwhile` runs whether or not the broker starts.
    fn start<T>(args: &LaunchArgs, socket: &str, meanwhile: impl FnOnce() -> T) -> (Result<Self, Refusal>, T) {
        let broker_args = crate::broker_proc::BrokerArgs::new(socket, args);
        let cannot = |e: std::io::Error| Refusal(2, format!("cannot start the broker: {e}"));
        let pipes = crate::tracer::pipe().and_then(|stdin| Ok((stdin, crate::tracer::pipe()?)));
        let ((stdin_r, stdin_w), (stdout_r, stdout_w)) = match pipes {
            Ok(p) => p,
            Err(e) => return (Err(cannot(e)), meanwhile()),
        };
        // SAFETY: the launcher has started no thread yet, so the child is a complete copy
        // of a single-threaded process, free to allocate.
        match unsafe { libc::fork() } {
            -1 => (Err(cannot(std::io::Error::last_os_error())), meanwhile()),
            0 => {
                // SAFETY: dup2 onto 0 and 1 (the launcher's own are not the broker's
                // business); then every other descriptor the launcher had is closed, our
                // ends of the pipes included, so the lifeline's EOF reaches the broker.
                unsafe {
                    libc::dup2(stdin_r.as_raw_fd(), 0);
                    libc::dup2(stdout_w.as_raw_fd(), 1);
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    libc::prctl(libc::PR_SET_NAME, c"hermes-broker".as_ptr());
                }
                std::mem::forget((stdin_r, stdin_w, stdout_r, stdout_w)); // closed above
                std::process::exit(i32::from(crate::broker_proc::serve(&broker_args)));
            }
            pid => {
                drop((stdin_r, stdout_w));
                let done = meanwhile();
                let ready = Self::ready(File::from(stdin_w), BufReader::new(File::from(stdout_r)));
                // The child forked the real broker and exited at once; reaped here, after
                // the broker's answer, so its teardown is not waited for first. It must be
                // gone before we become a subreaper: the broker, orphaned later, would be
                // handed to us, and the tree's reaper would wait for it forever.
                let mut status = 0;
                // SAFETY: waits for our own child; the status goes into a live local.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                (ready, done)
            }
        }
    }

    fn ready(lifeline: File, mut out: BufReader<File>) -> Result<Self, Refusal> {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let line = line.trim_end();
        if let Some(ready) = line.strip_prefix("ready ") {
            let mut fields = ready.split(' ');
            let mask = fields.next().and_then(|m| m.parse().ok());
            let mask = mask.ok_or_else(|| Refusal(2, format!("broker said {line:?}")))?;
            let hooks = fields.next().filter(|h| *h != "-").unwrap_or_default().to_owned();
            let doors = fields.next().unwrap_or("-").to_owned();
            let board = fields.next().unwrap_or_default().to_owned();
            Ok(BrokerProc { lifeline: Some(lifeline), out, mask, hooks, doors, board })
        } else if let Some(msg) = line.strip_prefix("error ") {
            Err(Refusal(2, msg.to_owned()))
        } else {
            Err(Refusal(2, "the broker failed to start".into()))
        }
    }

    /// The target's environment that only the ready broker knows: what the policy
    /// subscribes to, where the board is, the API hooks (`--hook` and the policy's
    /// `hermes.hook`), its seccomp settings, and the first process's recipes.
    fn late_env(&self, cli_hooks: Vec<ApiHook>, recipes: Option<String>) -> Vec<(&'static str, String)> {
        let mut env = vec![("HERMES_MASK", self.mask.to_string())];
        if !self.board.is_empty() {
            env.push(("HERMES_BOARD", self.board.clone()));
        }
        let api = api_hooks(cli_hooks, &self.hooks);
        if !api.is_empty() {
            env.push(("HERMES_API", api));
        }
        if let Some(recipes) = recipes {
            env.push(("HERMES_RECIPES", recipes));
        }
        // For the fallback here and for `hermes exec-traced` further down the tree.
        env.push(("HERMES_DOORS", self.doors.clone()));
        env
    }

    /// Whether the broker's stdout already closed (it exited before being told to).
    fn died_early(&mut self) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.out.get_ref());
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd; zero timeout.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        ready > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0
    }

    /// Close the lifeline and wait (bounded) for the broker to finish the trace.
    fn stop(&mut self) {
        drop(self.lifeline.take());
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.out.get_ref());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 256];
        while std::time::Instant::now() < deadline {
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 && matches!(self.out.read(&mut buf), Ok(0) | Err(_)) {
                return;
            }
        }
        eprintln!("hermes: the broker did not finish within 5 s; the trace may be incomplete");
    }
}

/// The `--hook` specs, checked before anything starts.
fn cli_hooks(cli: &[String], backtrace: bool) -> Result<Vec<ApiHook>, Refusal> {
    cli.iter()
        .map(|spec| {
            let mut hook = ApiHook::parse(spec).map_err(|e| Refusal(2, format!("--hook: {e}")))?;
            hook.backtrace = backtrace;
            Ok(hook)
        })
        .collect()
}

/// The preload's `HERMES_API` list: `--hook` specs, with the signatures the policy
/// declared (`hermes.hook`) for them and for its own hooks.
fn api_hooks(mut hooks: Vec<ApiHook>, from_policy: &str) -> String {
    for mut declared in ApiHook::from_env_list(from_policy) {
        if let Some(at) = hooks.iter().position(|h| h.symbol == declared.symbol) {
            declared.backtrace |= hooks.remove(at).backtrace;
        }
        hooks.push(declared);
    }
    ApiHook::env_list(&hooks)
}

/// Find the program as execvp would; 127/126 errors as a shell gives them.
fn find_program(prog: &OsStr) -> Result<PathBuf, Refusal> {
    let check = |p: PathBuf| -> Option<PathBuf> {
        let meta = std::fs::metadata(&p).ok()?;
        (meta.is_file()).then_some(p)
    };
    let found = if prog.as_bytes().contains(&b'/') {
        check(PathBuf::from(prog))
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        std::env::split_paths(&path).find_map(|dir| check(dir.join(prog)))
    };
    let exe = found.ok_or_else(|| Refusal(127, format!("{}: command not found", prog.to_string_lossy())))?;
    let mode = std::fs::metadata(&exe).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode & 0o111 == 0 {
        return Err(Refusal(126, format!("{}: permission denied (not executable)", exe.display())));
    }
    Ok(exe)
}

/// Whether (and why) the preload cannot enter the program at `path`; refused when no
/// part of HERMES can mediate it (a 32-bit or non-x86-64 program: the preload is not its
/// kind of library, and the ptrace fallback's filter kills another architecture's system
/// calls). A script is judged by its interpreter.
fn preload_barred(path: &Path) -> Result<Option<Barred>, Refusal> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return Ok(None) };
    match program::barred(&Here, &c_path) {
        Some(barred) if !barred.traceable() => {
            Err(Refusal(126, format!("{}: {}: HERMES mediates x86-64 programs only", path.display(), barred.what())))
        }
        barred => Ok(barred),
    }
}

/// The file system and this process, as [`program::barred`] reads them.
struct Here;

impl program::System for Here {
    type File = File;

    fn open(&self, path: &std::ffi::CStr) -> Option<File> {
        File::open(OsStr::from_bytes(path.to_bytes())).ok()
    }

    fn read_at(&self, file: &File, at: u64, buf: &mut [u8]) -> usize {
        std::os::unix::fs::FileExt::read_at(file, buf, at).unwrap_or(0)
    }

    fn owner(&self, file: &File) -> Option<program::Owner> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        Some(program::Owner { mode: meta.mode(), uid: meta.uid(), gid: meta.gid() })
    }

    fn on_nosuid_mount(&self, file: &File) -> bool {
        let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a live descriptor and room for one statvfs, which the kernel fills on success.
        let ok = unsafe { libc::fstatvfs(file.as_raw_fd(), vfs.as_mut_ptr()) } == 0;
        // SAFETY: initialised by the successful call above.
        ok && unsafe { vfs.assume_init() }.f_flag & libc::ST_NOSUID != 0
    }

    fn capability_attr(&self, file: &File, buf: &mut [u8]) -> usize {
        // SAFETY: a live descriptor, a NUL-terminated name and a buffer of `buf.len()` bytes.
        let len = unsafe {
            libc::fgetxattr(file.as_raw_fd(), c"security.capability".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        usize::try_from(len).unwrap_or(0)
    }

    fn caller(&self) -> program::Caller {
        // SAFETY: these calls have no preconditions and cannot fail.
        let (uid, euid, gid, egid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid(), libc::getegid()) };
        program::Caller { uid, euid, gid, egid }
    }

    fn no_new_privs(&self) -> bool {
        // SAFETY: PR_GET_NO_NEW_PRIVS reads no memory.
        unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 }
    }
}

fn find_preload(given: Option<&Path>) -> Result<PathBuf, Refusal> {
    let candidate = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let me = std::env::current_exe().map_err(|e| Refusal(2, format!("cannot find the hermes binary: {e}")))?;
            me.with_file_name(PRELOAD_NAME)
        }
    };
    let abs = std::fs::canonicalize(&candidate).map_err(|_| {
        Refusal(
            2,
            format!(
                "cannot find {} (build it with `cargo build -p hermes-preload`, or pass --preload)",
                candidate.display()
            ),
        )
    })?;
    if abs.as_os_str().as_bytes().iter().any(|&b| b == b':' || b == b' ') {
        return Err(Refusal(2, format!("{}: LD_PRELOAD paths cannot contain ':' or spaces", abs.display())));
    }
    Ok(PathBuf::from(OsString::from_vec(abs.into_os_string().into_vec())))
}

/// A fresh 64-bit cookie from the kernel's random pool (never 0, which means "off").
fn random_cookie() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom fills the live 8-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let cookie = u64::from_ne_bytes(bytes);
    if n == 8 && cookie != 0 {
        cookie
    } else {
        (nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
