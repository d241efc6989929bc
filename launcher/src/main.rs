//! `hermes`: run an unmodified program under a Lua policy.

mod broker_proc;
mod exports;
mod launch;
mod offline;
mod recipes;
mod seccomp;
mod tracer;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Trace every mediated call of a program (built-in allow-all policy)
  hermes launch -v -- curl -s http://127.0.0.1:8080/

  # Block outbound connections except to loopback, keep a JSON Lines trace
  hermes launch --policy policies/firewall.lua --trace run.jsonl -- ./client

  # Library-level tracing: every deflate() call, its arguments, result and duration
  hermes launch -v --hook libz.so.1:deflate -- python3 -c 'import zlib; zlib.compress(b\"a\"*100000)'

  # Strict mode: raw syscalls and libc paths the hooks miss are mediated too
  hermes launch --strict --policy policies/firewall.lua -- ./client

  # Validate a policy before deploying it
  hermes check policies/readonly_home.lua

  # Test a policy on a recorded run, with nothing running: show where it decides differently
  hermes replay run.jsonl --policy policies/firewall.lua --diff-only

  # Summarise a run (calls, denials, paths, peers, latency); export it for ui.perfetto.dev
  hermes report run.jsonl --chrome run.trace.json

Exit status: the target's own, or 128+N when it was killed by signal N.
HERMES errors: 127 program not found, 126 not executable, 2 bad policy or usage.
replay: 0 same decisions, 1 some differ, 2 bad policy or usage, 3 unreadable trace lines.";

#[derive(Parser)]
#[command(name = "hermes", version, about = "Run an unmodified program with a Lua policy between it and the system", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run PROG with every open, connect, sendto, sendmsg and exec decided by a policy
    #[command(after_help = EXAMPLES)]
    Launch(LaunchArgs),
    /// Compile and check a policy without running anything
    Check {
        /// The policy file (Lua 5.4)
        policy: PathBuf,
    },
    /// Run the calls of a recorded trace through a policy, with no program running,
    /// and show which decisions differ
    #[command(after_help = offline::REPLAY_HELP)]
    Replay(offline::ReplayArgs),
    /// Summarise a recorded trace; export it for Perfetto (--chrome)
    #[command(after_help = offline::REPORT_HELP)]
    Report(offline::ReportArgs),
    /// Internal: the broker process `launch` starts
    #[command(hide = true)]
    Broker(broker_proc::BrokerArgs),
    /// Internal: what the preload execs instead of a static program, so the run's
    /// broker keeps mediating it under the ptrace fallback
    #[command(hide = true)]
    ExecTraced {
        /// argv[0] for the program
        #[arg(long)]
        arg0: std::ffi::OsString,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Args)]
pub struct LaunchArgs {
    /// Lua policy; without one every call is allowed (and traced with -v/--trace)
    #[arg(short, long, value_name = "P.lua")]
    policy: Option<PathBuf>,
    /// Write one JSON object per mediated call to FILE (JSON Lines)
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Print mediated calls on stderr, strace-style: -v the calls a policy handler
    /// decided and every denial, -vv every call
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Time limit for one policy handler call; past it the call is denied (EPERM)
    /// (at most 3000: the target waits 5 s for a decision)
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3000))]
    policy_timeout: u64,
    /// Trace (and let the policy decide) every call of an exported library function,
    /// also in libraries loaded later with dlopen; repeatable. The policy sees
    /// `ev.op == "api"` (handler `on_api`) and may declare how to decode the arguments
    /// with `hermes.hook("LIB:SYMBOL", {"cstr", "int", "buf:2", …})`.
    #[arg(long, value_name = "LIB:SYMBOL")]
    hook: Vec<String>,
    /// With --hook: send each call's backtrace (return addresses as FILE+OFFSET)
    #[arg(long, requires = "hook")]
    backtrace: bool,
    /// Add the seccomp+ptrace fallback to a dynamic program too, so raw syscall
    /// instructions, dlsym(RTLD_NEXT) tricks and libc paths the hooks miss are mediated
    /// (calls the preload already mediated are not stopped twice). Static programs
    /// always run under the fallback.
    #[arg(long)]
    strict: bool,
    /// Evaluate a candidate policy beside the enforced one, without enforcing it:
    /// every call where the two disagree is recorded (`"type": "shadow"` lines in the
    /// trace, `-v` on stderr) and counted at exit. The file is watched like the policy.
    #[arg(long, value_name = "NEW.lua")]
    shadow: Option<PathBuf>,
    /// When the policy file changes during the run: `enforce` the new one at once
    /// (subscriptions and cached decisions follow), run it as a `shadow` beside the
    /// old one, or ignore it (`off`). A file that fails to load is reported
    /// (file:line) and the policy in force stays.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = broker_proc::Reload::Enforce)]
    reload: broker_proc::Reload,
    /// How long a thread waiting for a decision polls for it before it sleeps, and the
    /// broker for a busy thread's next call (each side stops polling where it keeps
    /// timing out). Waking a sleeping thread costs tens of microseconds on a virtual
    /// machine; polling costs CPU while it lasts. 0: never poll (as on one CPU)
    #[arg(long, value_name = "US", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    spin_us: u64,
    /// Path of libhermes_preload.so (default: next to the hermes binary)
    #[arg(long, value_name = "LIB", env = "HERMES_PRELOAD")]
    preload: Option<PathBuf>,
    /// The program to run and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROG [ARGS]...")]
    command: Vec<std::ffi::OsString>,
}

impl LaunchArgs {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.policy_timeout)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Launch(args) => launch::run(&args),
        Command::Check { policy } => check(&policy),
        Command::Replay(args) => offline::replay(&args),
        Command::Report(args) => offline::report(&args),
        Command::Broker(args) => broker_proc::run(&args),
        Command::ExecTraced { arg0, command } => launch::exec_traced(&arg0, &command),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match hermes_broker::Policy::load(path, Duration::from_millis(100)) {
        Ok(policy) => {
            let names = |mask: u64| -> Vec<&str> {
                hermes_wire::Op::ALL.iter().filter(|op| mask & op.bit() != 0).map(|op| op.name()).collect()
            };
            let observed = names(policy.observe());
            let observed = if observed.is_empty() {
                String::new()
            } else {
                format!(" (observed, not asked: {})", observed.join(", "))
            };
            println!(
                "{}: ok ({}); subscribes to: {}{observed}",
                path.display(),
                policy.hash(),
                names(policy.mask()).join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hermes: {e}");
            ExitCode::from(2)
        }
    }
}
