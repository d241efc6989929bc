//! The broker process. `hermes launch` starts `hermes broker …`, which forks at once so
//! that the broker is not the launcher's child (the launcher reaps every process of the
//! target's tree, and must not wait for the broker). The broker loads the policy, binds
//! the socket, and reports on stdout: `ready MASK HOOKS DOORS BOARD` (BOARD: where
//! processes map the board, see `hermes_wire::board`; HOOKS: the policy's `hermes.hook`
//! list as `LIB:SYMBOL=KINDS;…`, or `-`; DOORS: its seccomp settings, or `-`) or
//! `error MESSAGE`. It serves until its stdin (the launcher's lifeline) closes, drains the
//! connections, and exits; stdout closes last, which tells the launcher the trace is
//! complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hermes_broker::server::Handle;
use hermes_broker::{policy, Broker, Policy, Sink};

#[derive(clap::Args)]
pub struct BrokerArgs {
    #[arg(long)]
    socket: String,
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    trace: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    verbose: u8,
    #[arg(long, default_value_t = 100)]
    timeout_ms: u64,
    #[arg(long)]
    shadow: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Reload::Enforce)]
    reload: Reload,
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// The launcher's pid: its descendants are served whatever user they run as.
    #[arg(long)]
    session: Option<i32>,
}

impl BrokerArgs {
    /// The arguments `hermes launch` gives the broker it starts.
    pub fn new(socket: &str, launch: &crate::LaunchArgs) -> Self {
        BrokerArgs {
            socket: socket.to_owned(),
            policy: launch.policy.clone(),
            trace: launch.trace.clone(),
            verbose: launch.verbose,
            timeout_ms: launch.timeout().as_millis() as u64,
            shadow: launch.shadow.clone(),
            reload: launch.reload,
            spin_us: launch.spin_us,
            session: Some(std::process::id() as i32),
        }
    }
}

/// What happens when the policy file changes during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reload {
    /// Enforce the new policy at once.
    Enforce,
    /// Evaluate the new policy as a shadow beside the one in force (which stays).
    Shadow,
    /// Ignore changes.
    Off,
}

pub fn run(args: &BrokerArgs) -> ExitCode {
    ExitCode::from(serve(args))
}

/// [`run`], returning the exit status: what a forked broker exits with.
pub fn serve(args: &BrokerArgs) -> u8 {
    // Fork before loading anything: the process that exits (and that `launch` waits
    // for) is then a small copy, quick to make and to tear down, and the broker's own
    // memory is never copied.
    // SAFETY: no thread has been started yet (the server threads start later), so the
    // child is a complete copy of a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => {
            println!("error fork: {}", std::io::Error::last_os_error());
            return 2;
        }
        0 => {}
        _ => return 0,
    }
    // SAFETY: setsid has no memory effects. A session of its own keeps the terminal's
    // ^C (meant for the target) away from the broker.
    unsafe { libc::setsid() };
    let (broker, loaded) = match start(args) {
        Ok(b) => b,
        Err(msg) => {
            println!("error {}", msg.replace('\n', " "));
            return 2;
        }
    };
    // One CPU: whoever polls keeps the side it waits for off the CPU.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    broker.set_spin(if cpus > 1 { Duration::from_micros(args.spin_us) } else { Duration::ZERO });
    let mask = broker.mask();
    let hooks = match policy::ApiHook::env_list(broker.hooks()) {
        list if list.is_empty() => "-".to_owned(),
        list => list,
    };
    let doors = broker.doors();
    let board = broker.board_path();
    // Before `ready`: a program may see the board from then on (it starts meanwhile),
    // and must find the broker's life tied to it.
    if let Err(e) = broker.watch_over_board() {
        eprintln!("hermes: broker: cannot tie the board to the broker's life ({e}): if the broker dies, calls the preload does not send it (observed, cached) go on");
    }
    // Ready before the threads start: the socket is listening (a target that connects now
    // waits in its backlog), and the target starts meanwhile.
    let mut out = std::io::stdout().lock();
    if writeln!(out, "ready {mask} {hooks} {doors} {board}").and_then(|()| out.flush()).is_err() {
        return 2;
    }
    let handle = match broker.spawn() {
        Ok(h) => h,
        Err(e) => {
            // The launcher finds our stdout closed: mediated calls fail closed (EPERM).
            eprintln!("hermes: cannot start the broker threads: {e}");
            return 2;
        }
    };
    let handle = Arc::new(handle);
    if let Err(e) = watch(args, &handle, loaded) {
        eprintln!("hermes: cannot watch the policy for changes (hot reload is off): {e}");
    }
    drop(out);
    // Serve until the launcher goes away.
    let mut sink = [0u8; 64];
    while !matches!(std::io::stdin().read(&mut sink), Ok(0) | Err(_)) {}
    let left = handle.drain(Duration::from_secs(2));
    if left > 0 {
        eprintln!("hermes: broker: {left} connection(s) still open at exit");
    }
    if handle.shadow_counts().is_some() && !handle.finish_shadow(Duration::from_secs(2)) {
        eprintln!("hermes: the shadow policy was still evaluating calls at exit; its count is short");
    }
    if let Some((differed, dropped)) = handle.shadow_counts() {
        let dropped = if dropped > 0 {
            format!(" ({dropped} calls not evaluated: the shadow fell behind)")
        } else {
            String::new()
        };
        eprintln!("hermes: shadow policy differed from the enforced one on {differed} call(s){dropped}");
    }
    release_std_streams();
    0
}

/// Tell the launcher the run is complete (every trace line written) by closing our end of
/// its pipe now rather than at exit: the process's teardown can take milliseconds (closing
/// the inotify descriptor waits for an RCU grace period) that nobody needs to wait for.
/// Our stderr, the launcher's, is let go too: whoever reads it through a pipe (`2>&1 |`,
/// `$(…)`, a test harness) would wait for that teardown as well (5 ms, measured).
fn release_std_streams() {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else { return };
    // SAFETY: dup2 onto descriptors 1 and 2, which Rust's stdout and stderr keep writing
    // to (into /dev/null from now on); `null` stays open until after the calls.
    unsafe {
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 2);
    }
}

/// Start the hot-reload thread: the policy file (and the shadow's) are watched; a
/// change is compiled and swapped in, or reported with the old policy kept.
fn watch(args: &BrokerArgs, handle: &Arc<Handle>, loaded: Loaded) -> std::io::Result<()> {
    let mut files = Vec::new();
    let mut roles = Vec::new();
    // What is loaded now: a save that changes nothing keeps the generation (and so every
    // cached decision in the targets). Taken from the loaded sources, so that a change made
    // while the broker started is a change.
    let mut last_hash = Vec::new();
    if let (Some(policy), false) = (&args.policy, args.reload == Reload::Off) {
        files.push(policy.clone());
        roles.push(args.reload);
        last_hash.push(loaded.policy);
    }
    if let Some(shadow) = &args.shadow {
        files.push(shadow.clone());
        roles.push(Reload::Shadow);
        last_hash.push(loaded.shadow);
    }
    if files.is_empty() {
        return Ok(());
    }
    let mut watcher = crate::watch::Watcher::new(&files)?;
    let handle = Arc::clone(handle);
    let timeout = Duration::from_millis(args.timeout_ms);
    std::thread::Builder::new().name("hermes-reload".into()).spawn(move || {
        // A load that failed while the file may still be being written: retried once
        // things are quiet, reported only if it still fails.
        let mut unsettled: Option<usize> = None;
        loop {
            let wait = unsettled.as_ref().map(|_| RETRY_AFTER);
            let changes = match watcher.next(wait) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hermes: policy watch failed, hot reload is off: {e}");
                    return;
                }
            };
            let mut changes: Vec<(usize, bool)> = changes.into_iter().map(|(i, c)| (i, c.complete)).collect();
            if changes.is_empty() {
                if let Some(i) = unsettled.take() {
                    changes.push((i, true));
                }
            }
            for (i, complete) in changes {
                let path = &files[i];
                match Policy::load(path, timeout) {
                    Ok(policy) if last_hash[i].as_deref() == Some(policy.hash()) => {}
                    Ok(policy) => {
                        last_hash[i] = Some(policy.hash().to_owned());
                        unsettled = None;
                        let hash = policy.hash().to_owned();
                        match roles[i] {
                            Reload::Enforce => {
                                let generation = handle.reload(policy);
                                eprintln!(
                                    "hermes: policy reloaded: {} ({hash}, generation {generation})",
                                    path.display()
                                );
                            }
                            Reload::Shadow | Reload::Off => {
                                handle.set_shadow(policy);
                                eprintln!("hermes: shadow policy loaded: {} ({hash})", path.display());
                            }
                        }
                    }
                    Err(_) if !complete && unsettled.is_none() => unsettled = Some(i),
                    Err(e) => {
                        unsettled = None;
                        eprintln!("hermes: policy reload failed, the previous policy stays in force: {e}");
                        handle.reload_failed(&path.display().to_string(), &e.to_string());
                    }
                }
            }
        }
    })?;
    Ok(())
}

/// How long a failed load of a file that may still be being written waits for more.
const RETRY_AFTER: Duration = Duration::from_millis(300);

/// The hashes of the sources the broker started with.
struct Loaded {
    policy: Option<String>,
    shadow: Option<String>,
}

fn start(args: &BrokerArgs) -> Result<(Broker, Loaded), String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let policy = match &args.policy {
        Some(path) => Policy::load(path, timeout),
        None => {
            Policy::from_source("<built-in allow-all>", policy::ALLOW_ALL_SOURCE.as_bytes(), Path::new("."), timeout)
        }
    }
    .map_err(|e| e.to_string())?;
    let mut loaded = Loaded { policy: Some(policy.hash().to_owned()), shadow: None };
    let trace = match &args.trace {
        Some(path) => {
            Some(std::fs::File::create(path).map_err(|e| format!("cannot create trace {}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut broker = Broker::bind(args.socket.as_bytes(), policy, Sink::new(trace, args.verbose))
        .map_err(|e| format!("cannot bind the broker socket: {e}"))?;
    if let Some(launcher) = args.session {
        broker.admit_descendants_of(launcher);
    }
    if let Some(shadow) = &args.shadow {
        let shadow = Policy::load(shadow, timeout).map_err(|e| format!("shadow policy: {e}"))?;
        loaded.shadow = Some(shadow.hash().to_owned());
        broker.set_shadow(shadow);
    }
    Ok((broker, loaded))
}
