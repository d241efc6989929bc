//! The broker process. `hermes launch` starts `hermes broker …`; it loads the policy,
//! binds the socket, then forks so that it is not the launcher's child (the launcher
//! reaps every process of the target's tree, and must not wait for the broker), and
//! reports on stdout: `ready MASK HOOKS DOORS` (HOOKS: the policy's `hermes.hook` list
//! as `LIB:SYMBOL=KINDS;…`, or `-`; DOORS: its seccomp settings, or `-`) or
//! `error MESSAGE`. It serves until its stdin (the
//! launcher's lifeline) closes, drains the connections, and exits; stdout closes last,
//! which tells the launcher the trace is complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
}

pub fn run(args: &BrokerArgs) -> ExitCode {
    let broker = match start(args) {
        Ok(b) => b,
        Err(msg) => {
            println!("error {}", msg.replace('\n', " "));
            return ExitCode::from(2);
        }
    };
    // SAFETY: no thread has been started yet (the accept thread starts after this),
    // so the child is a complete copy of a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => {
            println!("error fork: {}", std::io::Error::last_os_error());
            return ExitCode::from(2);
        }
        0 => {}
        _ => return ExitCode::SUCCESS,
    }
    // SAFETY: setsid has no memory effects. A session of its own keeps the terminal's
    // ^C (meant for the target) away from the broker.
    unsafe { libc::setsid() };
    let mask = broker.mask();
    let hooks = match policy::ApiHook::env_list(broker.hooks()) {
        list if list.is_empty() => "-".to_owned(),
        list => list,
    };
    let doors = broker.doors();
    let handle = match broker.spawn() {
        Ok(h) => h,
        Err(e) => {
            println!("error cannot start the broker thread: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "ready {mask} {hooks} {doors}").and_then(|()| out.flush()).is_err() {
        return ExitCode::from(2);
    }
    // Serve until the launcher goes away.
    let mut sink = [0u8; 64];
    while !matches!(std::io::stdin().read(&mut sink), Ok(0) | Err(_)) {}
    let left = handle.drain(Duration::from_secs(2));
    if left > 0 {
        eprintln!("hermes: broker: {left} connection(s) still open at exit");
    }
    ExitCode::SUCCESS
}

fn start(args: &BrokerArgs) -> Result<Broker, String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let policy = match &args.policy {
        Some(path) => Policy::load(path, timeout),
        None => {
            Policy::from_source("<built-in allow-all>", policy::ALLOW_ALL_SOURCE.as_bytes(), Path::new("."), timeout)
        }
    }
    .map_err(|e| e.to_string())?;
    let trace = match &args.trace {
        Some(path) => {
            Some(std::fs::File::create(path).map_err(|e| format!("cannot create trace {}: {e}", path.display()))?)
        }
        None => None,
    };
    Broker::bind(args.socket.as_bytes(), policy, Sink::new(trace, args.verbose))
        .map_err(|e| format!("cannot bind the broker socket: {e}"))
}
