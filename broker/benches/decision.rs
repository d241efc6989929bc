//! What the Lua policy costs per decision: [`Policy::decide`] on one open event, the
//! broker's work between reading a Call and writing the Reply (path resolution and the
//! wire excluded: the event is built once, the way broker/src/policy.rs's tests build
//! it).
//!
//! Policies, each deciding an open of `/usr/share/zoneinfo/Europe/Rome`:
//! - `allow_handler`: `on_open` returns `hermes.allow()`;
//! - `allow_default`: the built-in policy (`on_call` returns `hermes.allow()`);
//! - `table_lookup`: `on_open` looks the path up in a table of 64 allowed paths;
//! - `string_match`: `on_open` tries a few `string.match` patterns (a firewall-style
//!   rule list) before allowing.
//!
//! And `decide_exec/allow_handler`: `on_exec` returns `hermes.allow()` for an exec of
//! `/bin/true` with 40 environment variables (a login shell's), which the event table
//! carries as `ev.envp`.
//!
//! `cargo bench -p hermes-broker --bench decision` (add `-- --quick` for a faster run).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use hermes_broker::event::{Event, ProcInfo};
use hermes_broker::policy::{Verdict, ALLOW_ALL_SOURCE};
use hermes_broker::Policy;
use hermes_wire::{Args, Layer};

#[path = "../../bench/criterion.rs"]
mod settings;

const PATH: &[u8] = b"/usr/share/zoneinfo/Europe/Rome";

const ALLOW_HANDLER: &str = "function on_open(ev) return hermes.allow() end\n";

const TABLE_LOOKUP: &str = r#"
local allowed = {}
for i = 1, 63 do allowed["/usr/share/doc/file" .. i] = true end
allowed["/usr/share/zoneinfo/Europe/Rome"] = true
function on_open(ev)
  if allowed[ev.path] then return hermes.allow() end
  return hermes.deny("EACCES")
end
"#;

const STRING_MATCH: &str = r#"
function on_open(ev)
  local p = ev.path
  if p:match("^/etc/shadow") or p:match("^/root/") then return hermes.deny("EACCES") end
  if p:match("%.ssh/") or p:match("%.gnupg/") then return hermes.deny("EACCES") end
  if p:match("^/home/[^/]+/%.config/") then return hermes.redirect("/tmp/config") end
  if p:match("^/usr/") or p:match("^/lib") then return hermes.allow() end
  return hermes.deny("EPERM")
end
"#;

fn open_event(path: &[u8]) -> Event {
    let args: Args<Vec<&[u8]>> = Args::Open { dirfd: libc::AT_FDCWD, path, flags: libc::O_RDONLY, mode: 0 };
    Event::new(
        "openat",
        std::process::id() as i32,
        std::process::id() as i32,
        Layer::Preload,
        ProcInfo::default(),
        &args,
    )
}

fn exec_event(envp: &[Vec<u8>]) -> Event {
    let argv: Vec<&[u8]> = vec![b"/bin/true"];
    let envp: Vec<&[u8]> = envp.iter().map(Vec::as_slice).collect();
    let args = Args::Exec { dirfd: libc::AT_FDCWD, path: b"/bin/true", search_path: false, flags: 0, argv, envp };
    let pid = std::process::id() as i32;
    Event::new("execve", pid, pid, Layer::Preload, ProcInfo::default(), &args)
}

fn bench_decide(c: &mut Criterion) {
    let ev = open_event(PATH);
    let mut group = c.benchmark_group("decide_open");
    for (name, src) in [
        ("allow_handler", ALLOW_HANDLER),
        ("allow_default", ALLOW_ALL_SOURCE),
        ("table_lookup", TABLE_LOOKUP),
        ("string_match", STRING_MATCH),
    ] {
        let policy =
            Policy::from_source(&format!("{name}.lua"), src.as_bytes(), Path::new("/"), Duration::from_secs(1))
                .expect("policy loads");
        assert_eq!(policy.decide(&ev).verdict, Verdict::Allow, "{name} allows the open");
        group.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(|| policy.decide(black_box(&ev))));
    }
    group.finish();

    let envp: Vec<Vec<u8>> = (0..40).map(|i| format!("VARIABLE_{i}=/home/user/some/value/{i}").into_bytes()).collect();
    let ev = exec_event(&envp);
    let src = "function on_exec(ev) return hermes.allow() end\n";
    let policy =
        Policy::from_source("exec.lua", src.as_bytes(), Path::new("/"), Duration::from_secs(1)).expect("loads");
    assert_eq!(policy.decide(&ev).verdict, Verdict::Allow, "the exec is allowed");
    c.benchmark_group("decide_exec").bench_function("allow_handler", |b| b.iter(|| policy.decide(black_box(&ev))));
}

fn main() {
    let mut c = settings::criterion(30);
    bench_decide(&mut c);
    c.final_summary();
}
