//! `hermes replay` and `hermes report`: commands that read a trace and run nothing.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hermes_broker::replay::{self, Line, ReplayOptions, TraceReader};
use hermes_broker::report::{ChromeTrace, Report};

pub const REPLAY_HELP: &str = "\
Each call record of TRACE (written by `hermes launch --trace`) is rebuilt as the event
the policy saw during the run (the paths as they were resolved then, addresses,
argv/envp, pid, exe, layer) and handed to the policy's handlers on this thread.
Nothing is executed and /proc is not read: a trace recorded on one machine can be
replayed on any other. Records of other types (a `type` other than \"call\") are
skipped; unknown fields are ignored.

Output: one line per call, `LINE: [pid N] call(args) = decision (handler)`. A line
starting with `!` is a call whose decision differs (kind, errno, redirect target or
emulated value; the handler's name does not count), and shows both:
`recorded deny EACCES (on_open), replayed allow (default)`. A policy error is shown as
the live broker handles it: the call is denied with EPERM and the error is printed.
The last line counts events, differences, skipped records and unreadable lines.
A line of TRACE that cannot be read (not JSON, a required field missing, a last line
cut short) is reported on stderr as `hermes: TRACE:LINE: why`; the rest is replayed.

Exit status:
  0  every decision is the same as recorded
  1  some decision differs
  2  usage error, unreadable TRACE file, or a policy that does not load (file:line named)
  3  no decision differs, but some lines of TRACE could not be read

Examples:
  # Record a run once, then check that a new policy decides the same way
  hermes launch --policy old.lua --trace run.jsonl -- ./app
  hermes replay run.jsonl --policy new.lua --diff-only

  # In CI: fail when a policy change alters any decision on the recorded runs
  for t in traces/*.jsonl; do hermes replay \"$t\" --policy policy.lua -q || exit 1; done";

pub const REPORT_HELP: &str = "\
Sections: calls by name; decisions by kind; denials grouped by call, errno and
handler; policy errors; the most frequent paths (open, exec) and peers (connect,
sendto, sendmsg); percentiles (p50/p90/p99/max) of the broker's decision time
(latency_us) and of the real call (duration_us); calls per process.

--chrome OUT.json writes the trace in the Chrome trace-event format, which
https://ui.perfetto.dev and chrome://tracing open: each call is a complete (\"X\")
event on its process and thread, starting at its decision and lasting duration_us
(latency_us when the call did not run), with its arguments and decision; processes
are named by their executable. With `--chrome -` the export goes to stdout and the
summary is not printed.

A line of TRACE that cannot be read is reported on stderr as `hermes: TRACE:LINE: why`
and the rest is summarised.

Exit status: 0; 3 when some lines could not be read; 2 usage error or unreadable TRACE.

Examples:
  hermes report run.jsonl
  hermes report run.jsonl --json | jq .denied
  hermes report run.jsonl --chrome run.trace.json   # then open it in ui.perfetto.dev";

#[derive(Args)]
pub struct ReplayArgs {
    /// The JSON Lines trace of a run (`hermes launch --trace`); `-` reads stdin
    #[arg(value_name = "TRACE.jsonl")]
    trace: PathBuf,
    /// The policy to ask (Lua 5.4)
    #[arg(short, long, value_name = "P.lua")]
    policy: PathBuf,
    /// Time limit for one policy handler call; past it the call is denied (EPERM)
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    policy_timeout: u64,
    /// Print only the calls whose decision differs (and the summary line)
    #[arg(short, long, visible_alias = "diff-only")]
    quiet: bool,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The JSON Lines trace of a run (`hermes launch --trace`); `-` reads stdin
    #[arg(value_name = "TRACE.jsonl")]
    trace: PathBuf,
    /// Also write the trace as Chrome/Perfetto trace-event JSON to OUT (`-`: stdout)
    #[arg(long, value_name = "OUT.json")]
    chrome: Option<PathBuf>,
    /// Print the summary as one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Entries in each ranked list (paths, peers, denials, processes)
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The trace and the name messages call it by.
fn open_trace(path: &Path) -> Result<(Box<dyn BufRead>, String), ExitCode> {
    if is_stdio(path) {
        return Ok((Box::new(io::stdin().lock()), "<stdin>".to_owned()));
    }
    match File::open(path) {
        Ok(f) => Ok((Box::new(BufReader::new(f)), path.display().to_string())),
        Err(e) => {
            eprintln!("hermes: cannot read trace {}: {e}", path.display());
            Err(ExitCode::from(2))
        }
    }
}

/// A failed write to stdout: quiet when the reader went away (`| head`).
fn output_error(e: &io::Error) -> ExitCode {
    if e.kind() != io::ErrorKind::BrokenPipe {
        eprintln!("hermes: cannot write output: {e}");
    }
    ExitCode::from(2)
}

pub fn replay(args: &ReplayArgs) -> ExitCode {
    let policy = match hermes_broker::Policy::load(&args.policy, Duration::from_millis(args.policy_timeout)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hermes: {e}");
            return ExitCode::from(2);
        }
    };
    let (input, name) = match open_trace(&args.trace) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let opts = ReplayOptions { diff_only: args.quiet };
    let stats = replay::replay(input, &name, &policy, opts, &mut out, &mut io::stderr());
    match stats.and_then(|s| out.flush().map(|()| s)) {
        Ok(stats) => ExitCode::from(stats.exit_code()),
        Err(e) => output_error(&e),
    }
}

pub fn report(args: &ReportArgs) -> ExitCode {
    let (input, name) = match open_trace(&args.trace) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut chrome = match args.chrome.as_deref() {
        None => None,
        Some(path) => {
            let out: Box<dyn Write> = if is_stdio(path) {
                Box::new(io::stdout().lock())
            } else {
                match File::create(path) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        eprintln!("hermes: cannot write {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                }
            };
            match ChromeTrace::new(BufWriter::new(out)) {
                Ok(c) => Some(c),
                Err(e) => return output_error(&e),
            }
        }
    };
    let mut report = Report::default();
    for (line, item) in TraceReader::new(input) {
        match item {
            Ok(Line::Call(rec)) => {
                report.add(&rec);
                if let Some(Err(e)) = chrome.as_mut().map(|c| c.add(&rec)) {
                    return output_error(&e);
                }
            }
            Ok(Line::Other(_)) => report.skipped += 1,
            Err(e) => {
                report.unreadable += 1;
                eprintln!("hermes: {name}:{line}: {e}");
            }
        }
    }
    if let Some(chrome) = chrome {
        let untimed = chrome.untimed;
        if let Err(e) = chrome.finish() {
            return output_error(&e);
        }
        if untimed > 0 {
            eprintln!("hermes: {untimed} calls without a usable `time` left out of the Chrome trace");
        }
    }
    if !args.chrome.as_deref().is_some_and(is_stdio) {
        let text = if args.json {
            let mut j = report.to_json(args.top);
            j["trace"] = name.as_str().into();
            format!("{j}\n")
        } else {
            report.render(&name, args.top)
        };
        if let Err(e) = io::stdout().lock().write_all(text.as_bytes()) {
            return output_error(&e);
        }
    }
    ExitCode::from(if report.unreadable > 0 { 3 } else { 0 })
}
