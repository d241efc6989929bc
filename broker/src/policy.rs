//! The Lua policy: loaded once, checked before use, asked once per mediated call.
//!
//! A policy defines `on_call(ev)`, per-operation handlers (`on_open`, `on_connect`,
//! `on_sendto`, `on_sendmsg`, `on_exec`) or the legacy `on_syscall(name, args)`. The
//! handlers it defines are its subscription list: the preload sends nothing else.
//! Handlers answer with a decision built by the `hermes` table (`hermes.deny("EACCES")`)
//! or nil for "no opinion". A Lua error, a handler that runs past its time limit, or a
//! value that is not a decision denies the call with EPERM: the policy fails closed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_wire::Op;
use mlua::{Function, HookTriggers, IntoLua, Lua, MultiValue, Table, UserData, Value, VmState};

use std::collections::HashMap;

use crate::errno;
use crate::event::{ApiArg, Event, EventArgs, NetAddr};
use crate::state::{FdInfo, ProcessInfo, State};

/// Errors loading a policy. Messages name the file and line, as Lua reports them.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Lua refused to compile the file.
    #[error("{0}")]
    Syntax(String),
    /// The file's top-level code raised an error or ran past the time limit.
    #[error("{0}")]
    Runtime(String),
    /// The file compiled but defines no handler, so it could never decide anything.
    #[error(
        "{path}: defines no entry point (on_call, on_syscall, on_open, on_connect, on_sendto, on_sendmsg or on_exec)"
    )]
    NoEntryPoint { path: String },
    /// An entry point name is bound to something that is not a function.
    #[error("{path}: `{name}` must be a function, not {}", with_article(found))]
    NotAFunction { path: String, name: &'static str, found: String },
}

/// What the policy decided, before it is applied to a particular call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(i32),
    Redirect(Vec<u8>),
    /// Redirect a socket call; fields left `None` keep the original's.
    RedirectAddr {
        ip: Option<IpAddr>,
        port: Option<u16>,
        unix: Option<Vec<u8>>,
    },
    Emulate(i64),
    Kill,
    /// Run the call with arguments replaced; fields left `None` keep the program's.
    Rewrite {
        flags: Option<i32>,
        mode: Option<u32>,
        data: Option<Vec<u8>>,
    },
}

impl Verdict {
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::Redirect(_) | Verdict::RedirectAddr { .. } => "redirect",
            Verdict::Emulate(_) => "emulate",
            Verdict::Kill => "kill",
            Verdict::Rewrite { .. } => "rewrite",
        }
    }

    /// Whether the real call runs under this verdict.
    pub fn runs(&self) -> bool {
        !matches!(self, Verdict::Deny(_) | Verdict::Emulate(_) | Verdict::Kill)
    }
}

/// The answer for one event, with what the trace needs to explain it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The handler that decided (`"on_open"`, …), `"default"` when none did, or
    /// `"error"` when the policy failed.
    pub handler: &'static str,
    pub logs: Vec<String>,
    /// Why the call failed closed, if it did.
    pub error: Option<String>,
    /// The policy marked the decision cacheable (`hermes.allow{cache=true}`).
    pub cache: bool,
    /// A fault `hermes.fault{…}` injected.
    pub injected: bool,
}

impl Outcome {
    /// A decision made without the policy (`handler`: why).
    pub fn fixed(verdict: Verdict, handler: &'static str, error: Option<String>) -> Self {
        Outcome { verdict, handler, logs: Vec::new(), error, cache: false, injected: false }
    }
}

/// A decision value inside Lua: what `hermes.deny(…)` and friends return.
#[derive(Clone, Debug)]
struct LuaDecision {
    verdict: Verdict,
    cache: bool,
    injected: bool,
}

impl LuaDecision {
    fn new(verdict: Verdict) -> Self {
        LuaDecision { verdict, cache: false, injected: false }
    }
}

impl UserData for LuaDecision {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| Ok(format!("hermes.{:?}", this.verdict)));
    }
}

/// What a policy asked to see beyond the arguments (`hermes.want{…}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// The calling thread's symbolised backtrace (`ev.backtrace`).
    pub backtrace: bool,
    /// The first bytes of a send's payload (`ev.data`); 0: none.
    pub payload: u64,
    /// The ptrace layer's registers (`ev.regs`).
    pub registers: bool,
    /// The process's memory map (`ev.maps`).
    pub maps: bool,
    /// The results of allowed calls, for `hermes.fd` and `hermes.process`.
    pub state: bool,
}

const NO_DEADLINE: u64 = u64::MAX;

/// A loaded policy.
pub struct Policy {
    lua: Lua,
    /// The file as the user named it, for messages.
    display: String,
    hash: String,
    mask: u64,
    handlers: Handlers,
    timeout: Duration,
    /// Nanoseconds since `epoch` after which the running handler is aborted.
    deadline: Arc<AtomicU64>,
    epoch: Instant,
    api: Arc<ApiState>,
    hooks: Vec<ApiHook>,
    doors: Doors,
    /// Operations whose handler is the constant `hermes.allow()`: recorded, not asked.
    observe: u64,
    wants: Wants,
}

/// Settings for the seccomp filter of the ptrace layer, from the policy's top level:
/// `hermes.io_uring = "allow"` (default "deny": io_uring's operations bypass
/// seccomp, so the filter refuses it) and `hermes.foreign_arch = "enosys"` (default
/// "kill": a syscall through another architecture's entry, `int 0x80`).
pub use hermes_wire::Doors;

fn read_doors(lua: &Lua, path: &str) -> Result<Doors, PolicyError> {
    let hermes: Table = lua.globals().get("hermes").map_err(|e| PolicyError::Runtime(lua_message(&e)))?;
    let setting = |key: &str, default: &str, other: &str| -> Result<bool, PolicyError> {
        match hermes.get::<Option<String>>(key) {
            Ok(None) => Ok(false),
            Ok(Some(v)) if v == default => Ok(false),
            Ok(Some(v)) if v == other => Ok(true),
            Ok(Some(v)) => Err(PolicyError::Runtime(format!(
                "{path}: hermes.{key} must be \"{default}\" or \"{other}\", not \"{v}\""
            ))),
            Err(_) => Err(PolicyError::Runtime(format!("{path}: hermes.{key} must be a string"))),
        }
    };
    Ok(Doors {
        io_uring: setting("io_uring", "deny", "allow")?,
        foreign_enosys: setting("foreign_arch", "kill", "enosys")?,
    })
}

/// A library function the policy asked to hook (`hermes.hook`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiHook {
    /// `LIB:SYMBOL`.
    pub symbol: String,
    /// The wire's argument kinds (see `hermes_wire::Args::Api`), one byte per argument.
    pub kinds: String,
    /// Send the calling thread's backtrace with each call.
    pub backtrace: bool,
}

impl ApiHook {
    /// Parse `LIB:SYMBOL`, as `--hook` and `hermes.hook` take it.
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            Some((lib, sym)) if !lib.is_empty() && !sym.is_empty() && !spec.contains([';', '=', ' ']) => {
                Ok(ApiHook { symbol: spec.to_owned(), kinds: String::new(), backtrace: false })
            }
            _ => Err(format!("'{spec}' is not LIB:SYMBOL (e.g. libz.so.1:deflate)")),
        }
    }

    /// The preload's `HERMES_API` list: `LIB:SYMBOL=KINDS[+bt];…`.
    pub fn env_list(hooks: &[ApiHook]) -> String {
        let entry = |h: &ApiHook| format!("{}={}{}", h.symbol, h.kinds, if h.backtrace { "+bt" } else { "" });
        hooks.iter().map(entry).collect::<Vec<_>>().join(";")
    }

    /// Read back an [`ApiHook::env_list`].
    pub fn from_env_list(list: &str) -> Vec<ApiHook> {
        hermes_wire::api_list::entries(list)
            .map(|e| ApiHook { symbol: e.spec.to_owned(), kinds: e.kinds.to_owned(), backtrace: e.backtrace })
            .collect()
    }
}

/// Translate a signature (`{"cstr", "int", "buf:2"}`, 1-based) to wire kinds.
fn api_kinds(sig: &[String]) -> Result<String, String> {
    if sig.len() > hermes_wire::API_ARGS {
        return Err(format!("at most {} arguments can be decoded", hermes_wire::API_ARGS));
    }
    sig.iter()
        .map(|k| match k.as_str() {
            "int" => Ok('i'),
            "ptr" => Ok('p'),
            "cstr" => Ok('s'),
            other => match other.strip_prefix("buf:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if (1..=sig.len()).contains(&n) && sig[n - 1] == "int" => Ok((b'0' + (n - 1) as u8) as char),
                _ => Err(format!(
                    "unknown argument kind '{other}' (int, ptr, cstr, or buf:N where argument N is an int length)"
                )),
            },
        })
        .collect()
}

/// A handler: a function, or a constant decision (`on_open = hermes.allow()`).
enum Entry {
    Function(Function),
    Constant(LuaDecision),
}

#[derive(Default)]
struct Handlers {
    per_op: [Option<Entry>; Op::ALL.len()],
    on_call: Option<Entry>,
    on_syscall: Option<Entry>,
}

/// Built-in policy used when `hermes launch` is given none: see everything, allow it.
pub const ALLOW_ALL_SOURCE: &str = "function on_call(ev) return hermes.allow() end\n";

impl Policy {
    /// Load and check the policy at `path`. `timeout` bounds each handler call.
    pub fn load(path: &Path, timeout: Duration) -> Result<Self, PolicyError> {
        let display = path.display().to_string();
        let source = std::fs::read(path).map_err(|source| PolicyError::Read { path: display.clone(), source })?;
        let dir = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_source(&display, &source, &dir, timeout)
    }

    /// Load a policy from memory; `name` is used in messages as the file name would be.
    pub fn from_source(name: &str, source: &[u8], dir: &Path, timeout: Duration) -> Result<Self, PolicyError> {
        let lua = Lua::new();
        let deadline = Arc::new(AtomicU64::new(NO_DEADLINE));
        let epoch = Instant::now();
        let api = Arc::new(ApiState::default());
        install_api(&lua, dir, &api).map_err(|e| PolicyError::Runtime(first_line(&e)))?;
        install_time_limit(&lua, &deadline, epoch);

        let chunk = lua.load(source).set_name(format!("@{name}"));
        let function = chunk.into_function().map_err(|e| PolicyError::Syntax(lua_message(&e)))?;
        // Top-level code gets a generous limit of its own: it runs once.
        arm(&deadline, epoch, timeout.max(Duration::from_secs(2)));
        let ran = function.call::<()>(());
        deadline.store(NO_DEADLINE, Ordering::Relaxed);
        ran.map_err(|e| PolicyError::Runtime(lua_message(&e)))?;

        let hooks = std::mem::take(&mut *locked(&api.hooks));
        let wants = *locked(&api.wants);
        let doors = read_doors(&lua, name)?;
        let handlers = Handlers::find(&lua, name)?;
        let mask = handlers.mask();
        let observe = handlers.observe();
        if mask == 0 {
            return Err(PolicyError::NoEntryPoint { path: name.to_owned() });
        }
        Ok(Policy {
            lua,
            display: name.to_owned(),
            hash: source_hash(source),
            mask,
            handlers,
            timeout,
            deadline,
            epoch,
            api,
            hooks,
            doors,
            observe,
            wants,
        })
    }

    /// Operations the policy only records (handler `hermes.allow()`, not a function):
    /// clients run them at once and report them one-way.
    pub fn observe(&self) -> u64 {
        self.observe
    }

    /// The handler that decides `op` when it is observed: its own, or `on_call`.
    pub fn observer(&self, op: Op) -> &'static str {
        match self.handlers.per_op[op as usize] {
            Some(_) => op.handler(),
            None => "on_call",
        }
    }

    /// What the policy asked to see beyond the arguments.
    pub fn wants(&self) -> Wants {
        self.wants
    }

    /// Give `hermes.fd` and `hermes.process` the broker's record to answer from.
    pub fn attach_state(&self, state: Arc<State>) {
        *locked(&self.api.state) = Some(state);
    }

    /// What the policy decided about the doors the seccomp filter closes.
    pub fn doors(&self) -> Doors {
        self.doors
    }

    /// The library functions the policy hooks (`hermes.hook`), with their signatures.
    pub fn hooks(&self) -> &[ApiHook] {
        &self.hooks
    }

    /// The operations the policy subscribes to ([`Op::bit`]s).
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// Content hash of the policy source, recorded with every decision.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn name(&self) -> &str {
        &self.display
    }

    /// The time limit of one handler call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ask the policy about one call. Never fails: errors become a fail-closed deny.
    pub fn decide(&self, ev: &Event) -> Outcome {
        let mut handler = "default";
        let result = self.run_handlers(ev, &mut handler);
        let logs = std::mem::take(&mut *locked(&self.api.logs));
        let checked = result.and_then(|d| {
            let d = d.unwrap_or_else(|| LuaDecision::new(Verdict::Allow));
            check_applicable(ev, &d.verdict).map(|()| d)
        });
        match checked {
            Ok(d) => Outcome { verdict: d.verdict, handler, logs, error: None, cache: d.cache, injected: d.injected },
            Err(error) => Outcome {
                logs,
                ..Outcome::fixed(
                    Verdict::Deny(libc::EPERM),
                    handler,
                    Some(format!("{}: {handler}: {error}", self.display)),
                )
            },
        }
    }

    fn run_handlers(&self, ev: &Event, handler: &mut &'static str) -> Result<Option<LuaDecision>, String> {
        let h = &self.handlers;
        let candidates = [
            (ev.op.handler(), h.per_op[ev.op as usize].as_ref()),
            ("on_call", h.on_call.as_ref()),
            ("on_syscall", h.on_syscall.as_ref()),
        ];
        let mut table = None;
        for (name, entry) in candidates {
            let Some(entry) = entry else { continue };
            *handler = name;
            let function = match entry {
                Entry::Function(f) => f,
                Entry::Constant(d) => return Ok(Some(d.clone())),
            };
            let table = match &table {
                Some(t) => t,
                None => table.insert(event_table(&self.lua, ev).map_err(|e| lua_message(&e))?),
            };
            arm(&self.deadline, self.epoch, self.timeout);
            let returned = if name == "on_syscall" {
                function.call::<Value>((ev.func.as_str(), table))
            } else {
                function.call::<Value>(table)
            };
            self.deadline.store(NO_DEADLINE, Ordering::Relaxed);
            if let Some(verdict) = to_verdict(returned.map_err(|e| lua_message(&e))?)? {
                return Ok(Some(verdict));
            }
        }
        *handler = "default";
        Ok(None)
    }
}

impl Handlers {
    fn find(lua: &Lua, path: &str) -> Result<Self, PolicyError> {
        let globals = lua.globals();
        let get = |name: &'static str| -> Result<Option<Entry>, PolicyError> {
            match globals.get::<Value>(name) {
                Ok(Value::Nil) => Ok(None),
                Ok(Value::Function(f)) => Ok(Some(Entry::Function(f))),
                // Only an unconditional allow can run without asking: the client
                // skips the round trip and reports the call afterwards.
                Ok(Value::UserData(ud)) if name != "on_syscall" => match ud.borrow::<LuaDecision>() {
                    Ok(d) if d.verdict == Verdict::Allow => Ok(Some(Entry::Constant(d.clone()))),
                    _ => Err(PolicyError::NotAFunction {
                        path: path.to_owned(),
                        name,
                        found: "decision other than hermes.allow()".to_owned(),
                    }),
                },
                Ok(other) => {
                    Err(PolicyError::NotAFunction { path: path.to_owned(), name, found: other.type_name().to_owned() })
                }
                Err(e) => Err(PolicyError::Runtime(lua_message(&e))),
            }
        };
        let mut handlers = Handlers { on_call: get("on_call")?, on_syscall: get("on_syscall")?, ..Default::default() };
        for op in Op::ALL {
            handlers.per_op[op as usize] = get(op.handler())?;
        }
        Ok(handlers)
    }

    fn mask(&self) -> u64 {
        if self.on_call.is_some() || self.on_syscall.is_some() {
            return Op::ALL.iter().fold(0, |m, op| m | op.bit());
        }
        Op::ALL.iter().filter(|op| self.per_op[**op as usize].is_some()).fold(0, |m, op| m | op.bit())
    }

    /// Operations decided by a constant allow before any function could see them, of
    /// those a client can run first and report after (an exec too: one that works does
    /// not return, and is traced without a result; a library hook's stubs wait for a
    /// decision).
    fn observe(&self) -> u64 {
        let constant = |e: Option<&Entry>| matches!(e, Some(Entry::Constant(_)));
        [Op::Open, Op::Connect, Op::SendTo, Op::SendMsg, Op::Exec]
            .iter()
            .filter(|op| match self.per_op[**op as usize].as_ref() {
                Some(e) => constant(Some(e)),
                None => constant(self.on_call.as_ref()),
            })
            .fold(0, |m, op| m | op.bit())
    }
}

fn arm(deadline: &AtomicU64, epoch: Instant, timeout: Duration) {
    let at = epoch.elapsed().saturating_add(timeout).as_nanos();
    deadline.store(u64::try_from(at).unwrap_or(NO_DEADLINE - 1), Ordering::Relaxed);
}

fn install_time_limit(lua: &Lua, deadline: &Arc<AtomicU64>, epoch: Instant) {
    let deadline = Arc::clone(deadline);
    lua.set_hook(HookTriggers::new().every_nth_instruction(1000), move |_, _| {
        let limit = deadline.load(Ordering::Relaxed);
        if limit != NO_DEADLINE && epoch.elapsed().as_nanos() > u128::from(limit) {
            return Err(mlua::Error::runtime("policy time limit exceeded"));
        }
        Ok(VmState::Continue)
    });
}

/// Open flags a policy can test `ev.flags` against.
const OPEN_FLAGS: &[(&str, i32)] = &[
    ("O_RDONLY", libc::O_RDONLY),
    ("O_WRONLY", libc::O_WRONLY),
    ("O_RDWR", libc::O_RDWR),
    ("O_ACCMODE", libc::O_ACCMODE),
    ("O_CREAT", libc::O_CREAT),
    ("O_EXCL", libc::O_EXCL),
    ("O_TRUNC", libc::O_TRUNC),
    ("O_APPEND", libc::O_APPEND),
    ("O_NOFOLLOW", libc::O_NOFOLLOW),
    ("O_DIRECTORY", libc::O_DIRECTORY),
    ("O_CLOEXEC", libc::O_CLOEXEC),
    ("O_TMPFILE", libc::O_TMPFILE),
];

/// What the `hermes` table's functions share with the policy that owns them.
#[derive(Default)]
struct ApiState {
    logs: Mutex<Vec<String>>,
    hooks: Mutex<Vec<ApiHook>>,
    wants: Mutex<Wants>,
    /// Per `hermes.fault` call site (`file:line`) and settings: calls seen, RNG state.
    faults: Mutex<HashMap<String, FaultState>>,
    /// The broker's record of descriptors and processes, when it keeps one.
    state: Mutex<Option<Arc<State>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `hermes` table: decision constructors, `log`, `want`, `fault`, state queries,
/// constants.
fn install_api(lua: &Lua, dir: &Path, api: &Arc<ApiState>) -> mlua::Result<()> {
    let hermes = lua.create_table()?;
    let decision = |lua: &Lua, d: LuaDecision| lua.create_userdata(d);

    hermes.set(
        "allow",
        lua.create_function(move |lua, opts: Option<Table>| {
            decision(lua, LuaDecision { cache: cache_opt(opts.as_ref())?, ..LuaDecision::new(Verdict::Allow) })
        })?,
    )?;
    hermes.set("kill", lua.create_function(move |lua, ()| decision(lua, LuaDecision::new(Verdict::Kill)))?)?;
    hermes.set(
        "deny",
        lua.create_function(move |lua, (e, opts): (Value, Option<Table>)| {
            let cache = cache_opt(opts.as_ref())?;
            decision(lua, LuaDecision { cache, ..LuaDecision::new(Verdict::Deny(errno_arg(e)?)) })
        })?,
    )?;
    hermes.set(
        "emulate",
        lua.create_function(move |lua, (ret, opts): (i64, Option<Table>)| {
            let cache = cache_opt(opts.as_ref())?;
            decision(lua, LuaDecision { cache, ..LuaDecision::new(Verdict::Emulate(ret)) })
        })?,
    )?;
    hermes.set(
        "redirect",
        lua.create_function(move |lua, to: Value| decision(lua, LuaDecision::new(redirect_arg(to)?)))?,
    )?;
    hermes
        .set("rewrite", lua.create_function(move |lua, t: Table| decision(lua, LuaDecision::new(rewrite_arg(&t)?)))?)?;
    let faults = Arc::clone(api);
    hermes.set(
        "fault",
        lua.create_function(move |lua, t: Table| {
            let site = lua
                .inspect_stack(1)
                .map(|d| format!("{}:{}", d.source().short_src.unwrap_or_default(), d.curr_line()))
                .unwrap_or_default();
            let mut faults = locked(&faults.faults);
            decision(lua, fault(&t, &site, &mut faults)?)
        })?,
    )?;

    let logs = Arc::clone(api);
    hermes.set(
        "log",
        lua.create_function(move |_, args: MultiValue| {
            let text: Vec<String> = args.iter().map(|v| v.to_string().unwrap_or_else(|_| "?".into())).collect();
            let text = text.join(" ");
            eprintln!("hermes: policy: {text}");
            locked(&logs.logs).push(text);
            Ok(())
        })?,
    )?;

    let hooks = Arc::clone(api);
    hermes.set(
        "hook",
        lua.create_function(move |_, (spec, sig, opts): (String, Option<Vec<String>>, Option<Table>)| {
            let mut hook = ApiHook::parse(&spec).map_err(mlua::Error::runtime)?;
            hook.kinds = api_kinds(&sig.unwrap_or_default()).map_err(mlua::Error::runtime)?;
            hook.backtrace = match &opts {
                Some(o) => o.get::<Option<bool>>("backtrace")?.unwrap_or(false),
                None => false,
            };
            let mut hooks = locked(&hooks.hooks);
            hooks.retain(|h| h.symbol != hook.symbol);
            hooks.push(hook);
            Ok(())
        })?,
    )?;

    let wants = Arc::clone(api);
    hermes.set(
        "want",
        lua.create_function(move |_, what: Value| {
            let mut wants = locked(&wants.wants);
            want(&mut wants, what)
        })?,
    )?;

    let state = Arc::clone(api);
    hermes.set(
        "fd",
        lua.create_function(move |lua, (pid, fd): (i32, i32)| {
            let Some(state) = locked(&state.state).clone() else { return Ok(Value::Nil) };
            match state.fd(pid, fd) {
                Some(info) => fd_table(lua, &info).map(Value::Table),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    let state = Arc::clone(api);
    hermes.set(
        "process",
        lua.create_function(move |lua, pid: i32| {
            let Some(state) = locked(&state.state).clone() else { return Ok(Value::Nil) };
            match state.process(pid) {
                Some(p) => process_table(lua, &p).map(Value::Table),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    hermes.set("now", lua.create_function(|_, ()| Ok(crate::event::monotonic_ns() as i64))?)?;

    let errnos = lua.create_table()?;
    for &(name, value) in errno::ERRNOS {
        errnos.set(name, value)?;
    }
    hermes.set("errno", errnos)?;
    for &(name, value) in OPEN_FLAGS {
        hermes.set(name, value)?;
    }
    hermes.set("policy_dir", lua.create_string(dir.as_os_str().as_encoded_bytes())?)?;
    lua.globals().set("hermes", hermes)
}

/// `{cache = true}` on a decision.
fn cache_opt(opts: Option<&Table>) -> mlua::Result<bool> {
    match opts {
        Some(o) => Ok(o.get::<Option<bool>>("cache")?.unwrap_or(false)),
        None => Ok(false),
    }
}

/// `hermes.want{"backtrace", "registers", "maps", "state", payload = N}`.
fn want(wants: &mut Wants, what: Value) -> mlua::Result<()> {
    let mut one = |name: &str| -> mlua::Result<()> {
        match name {
            "backtrace" => wants.backtrace = true,
            "registers" | "regs" => wants.registers = true,
            "maps" => wants.maps = true,
            "state" => wants.state = true,
            "payload" | "data" => wants.payload = wants.payload.max(DEFAULT_PAYLOAD),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "hermes.want: unknown context '{other}' (backtrace, registers, maps, state, payload)"
                )))
            }
        }
        Ok(())
    };
    match what {
        Value::String(s) => one(&s.to_str()?),
        Value::Table(t) => {
            for item in t.clone().sequence_values::<String>() {
                one(&item?)?;
            }
            if let Some(n) = t.get::<Option<i64>>("payload")? {
                let max = hermes_wire::board::PAYLOAD_MAX as i64;
                if !(0..=max).contains(&n) {
                    return Err(mlua::Error::runtime(format!("hermes.want: payload must be 0..{max} bytes, not {n}")));
                }
                wants.payload = n as u64;
            }
            Ok(())
        }
        other => Err(mlua::Error::runtime(format!(
            "hermes.want expects a name or a list of names, got {}",
            with_article(other.type_name())
        ))),
    }
}

/// Payload bytes `hermes.want{"payload"}` asks for.
const DEFAULT_PAYLOAD: u64 = 4096;

/// What one `hermes.fault` call site has seen.
#[derive(Default)]
struct FaultState {
    calls: u64,
    rng: u64,
}

/// `hermes.fault{errno = "EIO", probability = 0.1, seed = 42}` or `{errno = "ENOSPC",
/// nth = 3}`: a denial injected on a schedule, else an allow. The schedule belongs to
/// the call site, so the same policy over the same calls faults the same ones.
fn fault(t: &Table, site: &str, faults: &mut HashMap<String, FaultState>) -> mlua::Result<LuaDecision> {
    let errno = errno_arg(t.get::<Value>("errno")?)?;
    let probability = t.get::<Option<f64>>("probability")?;
    let nth = t.get::<Option<i64>>("nth")?;
    let seed = t.get::<Option<i64>>("seed")?.unwrap_or(0) as u64;
    let key = format!("{site}:{errno}:{probability:?}:{nth:?}:{seed}");
    let state = faults.entry(key).or_insert_with(|| FaultState { calls: 0, rng: seed });
    state.calls += 1;
    let fire = match (probability, nth) {
        (Some(p), None) if (0.0..=1.0).contains(&p) => {
            // splitmix64: one step per call, reproducible from the seed.
            state.rng = state.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64) < p
        }
        (None, Some(n)) if n >= 1 => state.calls == n as u64,
        _ => {
            return Err(mlua::Error::runtime(
                "hermes.fault needs probability (0..1, with an optional seed) or nth (>= 1), not both",
            ))
        }
    };
    Ok(match fire {
        true => LuaDecision { injected: true, ..LuaDecision::new(Verdict::Deny(errno)) },
        false => LuaDecision::new(Verdict::Allow),
    })
}

/// `hermes.rewrite{flags = …, mode = …, data = …}`.
fn rewrite_arg(t: &Table) -> mlua::Result<Verdict> {
    let flags = t.get::<Option<i32>>("flags")?;
    let mode = t.get::<Option<u32>>("mode")?;
    let data = t.get::<Option<mlua::String>>("data")?.map(|s| s.as_bytes().to_vec());
    if data.as_ref().is_some_and(|d| d.len() > hermes_wire::REWRITE_DATA_MAX) {
        return Err(mlua::Error::runtime(format!(
            "hermes.rewrite: data is limited to {} bytes",
            hermes_wire::REWRITE_DATA_MAX
        )));
    }
    if flags.is_none() && mode.is_none() && data.is_none() {
        return Err(mlua::Error::runtime("hermes.rewrite{} needs flags, mode or data"));
    }
    Ok(Verdict::Rewrite { flags, mode, data })
}

fn fd_table(lua: &Lua, info: &FdInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    match info {
        FdInfo::File(path) => {
            t.set("type", "file")?;
            t.set("path", lua.create_string(path)?)?;
        }
        FdInfo::Socket(peer) => {
            t.set("type", "socket")?;
            if let Some(addr) = peer {
                t.set("family", addr.family())?;
                if let Some(a) = addr.addr_bytes() {
                    t.set("addr", lua.create_string(&a)?)?;
                }
                t.set("port", addr.port())?;
            }
        }
        FdInfo::Other(what) => {
            t.set("type", "other")?;
            t.set("path", lua.create_string(what)?)?;
        }
    }
    Ok(t)
}

fn process_table(lua: &Lua, p: &ProcessInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("pid", p.pid)?;
    t.set("ppid", p.ppid)?;
    t.set("exe", lua.create_string(&p.exe)?)?;
    let argv = lua.create_table()?;
    for (i, a) in p.argv.iter().enumerate() {
        argv.set(i + 1, lua.create_string(a)?)?;
    }
    t.set("argv", argv)?;
    t.set("children", lua.create_sequence_from(p.children.iter().copied())?)?;
    t.set("start_time", p.start_time)?;
    t.set("alive", p.alive)?;
    Ok(t)
}

fn errno_arg(e: Value) -> mlua::Result<i32> {
    match e {
        Value::Nil => Ok(libc::EPERM),
        Value::Integer(n) if n > 0 && n < 4096 => Ok(n as i32),
        Value::String(ref s) => {
            let name = s.to_str()?;
            errno::by_name(&name).ok_or_else(|| mlua::Error::runtime(format!("unknown errno name '{}'", &*name)))
        }
        other => Err(mlua::Error::runtime(format!(
            "hermes.deny expects an errno name or number, got {}",
            other.to_string().unwrap_or_else(|_| other.type_name().into())
        ))),
    }
}

fn redirect_arg(to: Value) -> mlua::Result<Verdict> {
    match to {
        Value::String(s) => {
            let path = s.as_bytes().to_vec();
            if path.is_empty() || path.contains(&0) || path.len() >= hermes_wire::MAX_PATH {
                return Err(mlua::Error::runtime("hermes.redirect: path must be 1..4095 bytes without NUL"));
            }
            Ok(Verdict::Redirect(path))
        }
        Value::Table(t) => {
            let ip = match t.get::<Option<String>>("addr")? {
                Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                    mlua::Error::runtime(format!("hermes.redirect: '{a}' is not an IPv4 or IPv6 address"))
                })?),
                None => None,
            };
            let port = match t.get::<Option<i64>>("port")? {
                Some(p) => {
                    Some(u16::try_from(p).map_err(|_| mlua::Error::runtime(format!("hermes.redirect: bad port {p}")))?)
                }
                None => None,
            };
            let unix = t.get::<Option<mlua::String>>("path")?.map(|s| s.as_bytes().to_vec());
            if ip.is_none() && port.is_none() && unix.is_none() {
                return Err(mlua::Error::runtime("hermes.redirect{} needs addr, port or path"));
            }
            Ok(Verdict::RedirectAddr { ip, port, unix })
        }
        other => Err(mlua::Error::runtime(format!(
            "hermes.redirect expects a path or a table {{addr=, port=}}, got {}",
            other.type_name()
        ))),
    }
}

/// Turn a handler's return value into a decision; `None` means "no opinion".
fn to_verdict(v: Value) -> Result<Option<LuaDecision>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::UserData(ref ud) => match ud.borrow::<LuaDecision>() {
            Ok(d) => Ok(Some(d.clone())),
            Err(_) => Err("returned a userdata that is not a hermes decision".into()),
        },
        Value::String(ref s) => match s.to_string_lossy().to_ascii_uppercase().as_str() {
            "ALLOW" => Ok(Some(LuaDecision::new(Verdict::Allow))),
            "BLOCK" | "DENY" => Ok(Some(LuaDecision::new(Verdict::Deny(libc::EPERM)))),
            other => Err(format!("returned unknown decision \"{other}\" (expected \"ALLOW\" or \"BLOCK\")")),
        },
        other => Err(format!(
            "returned {} (expected a hermes decision such as hermes.allow(), or nil)",
            with_article(other.type_name())
        )),
    }
}

/// Refuse decisions that make no sense for the call (a path redirect on connect, …).
fn check_applicable(ev: &Event, verdict: &Verdict) -> Result<(), String> {
    let op = ev.op;
    let ok = match verdict {
        Verdict::Redirect(_) => matches!(op, Op::Open | Op::Exec),
        Verdict::RedirectAddr { .. } => match &ev.args {
            EventArgs::Connect { .. } | EventArgs::Send { addr: Some(_), .. } => true,
            EventArgs::Send { addr: None, .. } => {
                return Err(format!("cannot redirect {} on a connected socket (no address)", ev.func))
            }
            _ => false,
        },
        Verdict::Emulate(_) => {
            !matches!(ev.func.as_str(), "fopen" | "fopen64" | "freopen" | "freopen64" | "posix_spawn" | "posix_spawnp")
        }
        Verdict::Rewrite { flags, mode, data } => {
            let open_args = flags.is_some() || mode.is_some();
            (!open_args || op == Op::Open) && (data.is_none() || matches!(op, Op::SendTo | Op::SendMsg))
        }
        Verdict::Allow | Verdict::Deny(_) | Verdict::Kill => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("decision {verdict:?} does not apply to {}", ev.func))
    }
}

/// Where an address redirect sends the call: the event's own address with the
/// verdict's fields applied (what the broker replies, and the trace records). `None`
/// for any other verdict.
pub fn redirect_target(ev: &Event, verdict: &Verdict) -> Option<NetAddr> {
    let Verdict::RedirectAddr { ip, port, unix } = verdict else { return None };
    let orig = match &ev.args {
        EventArgs::Connect { addr, .. } | EventArgs::Send { addr: Some(addr), .. } => addr.clone(),
        _ => NetAddr::Other(0),
    };
    Some(redirect_addr(&orig, *ip, *port, unix.as_deref()))
}

/// Apply an address redirect to the original address.
pub fn redirect_addr(orig: &NetAddr, ip: Option<IpAddr>, port: Option<u16>, unix: Option<&[u8]>) -> NetAddr {
    if let Some(path) = unix {
        let path = match path.strip_prefix(b"@") {
            Some(name) => [b"\0".as_slice(), name].concat(),
            None => path.to_vec(),
        };
        return NetAddr::Unix(path);
    }
    let (orig_ip, orig_port) = match orig {
        NetAddr::Ip { ip, port, .. } => (Some(*ip), *port),
        _ => (None, 0),
    };
    NetAddr::Ip {
        ip: ip.or(orig_ip).unwrap_or(IpAddr::from([127, 0, 0, 1])),
        port: port.unwrap_or(orig_port),
        flowinfo: 0,
        scope_id: 0,
    }
}

/// The `ev` table handed to handlers.
fn event_table(lua: &Lua, ev: &Event) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 16)?;
    t.raw_set("name", ev.func.as_str())?;
    t.raw_set("op", ev.op.name())?;
    t.raw_set("pid", ev.pid)?;
    t.raw_set("tid", ev.tid)?;
    t.raw_set("ppid", ev.proc.ppid)?;
    set_bytes(lua, &t, "exe", &ev.proc.exe)?;
    t.raw_set("layer", ev.layer.name())?;
    t.raw_set("time_ns", ev.mono_ns as i64)?;
    if !ev.ctx.backtrace.is_empty() {
        t.raw_set("backtrace", lua.create_sequence_from(ev.ctx.backtrace.iter().map(String::as_str))?)?;
    }
    if let Some(data) = &ev.ctx.payload {
        set_bytes(lua, &t, "data", data)?;
    }
    if let Some(regs) = &ev.ctx.regs {
        let r = lua.create_table()?;
        for (name, value) in hermes_wire::REGS.iter().zip(regs) {
            r.set(*name, *value as i64)?;
        }
        t.raw_set("regs", r)?;
    }
    if let Some(maps) = &ev.ctx.maps {
        t.raw_set("maps", maps.as_str())?;
    }
    let set_addr = |addr: &NetAddr| -> mlua::Result<()> {
        t.raw_set("family", addr.family())?;
        if let Some(a) = addr.addr_bytes() {
            set_bytes(lua, &t, "addr", &a)?;
        }
        t.raw_set("port", addr.port())
    };
    match &ev.args {
        EventArgs::Open { dirfd, path, raw_path, flags, mode } => {
            set_bytes(lua, &t, "path", path)?;
            set_bytes(lua, &t, "raw_path", raw_path)?;
            t.raw_set("dirfd", *dirfd)?;
            t.raw_set("flags", *flags)?;
            t.raw_set("mode", *mode)?;
            t.raw_set("write", Event::writes(*flags))?;
        }
        EventArgs::Connect { fd, addr } => {
            t.raw_set("fd", *fd)?;
            set_addr(addr)?;
        }
        EventArgs::Send { fd, len, flags, addr } => {
            t.raw_set("fd", *fd)?;
            t.raw_set("len", *len)?;
            t.raw_set("flags", *flags)?;
            if let Some(addr) = addr {
                set_addr(addr)?;
            }
        }
        EventArgs::Exec { path, raw_path, argv, envp } => {
            set_bytes(lua, &t, "path", path)?;
            set_bytes(lua, &t, "raw_path", raw_path)?;
            t.raw_set("argv", byte_list(lua, argv.iter().map(Vec::as_slice))?)?;
            lazy_envp(lua, &t, envp)?;
        }
        EventArgs::Api { lib, symbol, raw, args, backtrace } => {
            if !backtrace.is_empty() {
                t.raw_set("backtrace", lua.create_sequence_from(backtrace.iter().map(String::as_str))?)?;
            }
            t.raw_set("lib", lib.as_str())?;
            t.raw_set("symbol", symbol.as_str())?;
            t.raw_set("raw", lua.create_sequence_from(raw.iter().map(|r| *r as i64))?)?;
            let decoded = lua.create_table()?;
            for (i, a) in args.iter().enumerate() {
                match a {
                    ApiArg::Int(v) => decoded.set(i + 1, *v)?,
                    ApiArg::Ptr(p) => decoded.set(i + 1, *p as i64)?,
                    ApiArg::Bytes(b) => set_bytes(lua, &decoded, i + 1, b)?,
                }
            }
            t.raw_set("args", decoded)?;
        }
    }
    Ok(t)
}

/// A Lua array of byte strings.
fn byte_list<'a>(lua: &Lua, items: impl ExactSizeIterator<Item = &'a [u8]>) -> mlua::Result<Table> {
    let list = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, item) in items.enumerate() {
        set_bytes(lua, &list, i + 1, item)?;
    }
    Ok(list)
}

/// `t.envp`, made the first time a handler reads it. An exec carries the whole
/// environment (40-odd strings), which handlers seldom read, and building its table
/// was most of an exec's decision; until it is read, `envp` is not among `t`'s raw
/// fields (`pairs`, `rawget`). Its strings are kept joined, each NUL-terminated (an
/// environment string has no NUL of its own).
fn lazy_envp(lua: &Lua, t: &Table, envp: &[Vec<u8>]) -> mlua::Result<()> {
    let mut joined = Vec::with_capacity(envp.iter().map(|e| e.len() + 1).sum());
    for e in envp {
        joined.extend_from_slice(e);
        joined.push(0);
    }
    let index = lua.create_function(move |lua, (t, key): (Table, Value)| {
        if !matches!(&key, Value::String(k) if *k.as_bytes() == *b"envp") {
            return Ok(Value::Nil);
        }
        // Each string ends with its NUL: the last piece is the empty one after it.
        let strings: Vec<&[u8]> = joined.split(|&b| b == 0).collect();
        let list = byte_list(lua, strings[..strings.len() - 1].iter().copied())?;
        t.raw_set("envp", &list)?;
        Ok(Value::Table(list))
    })?;
    let meta = lua.create_table_with_capacity(0, 1)?;
    meta.raw_set("__index", index)?;
    t.set_metatable(Some(meta));
    Ok(())
}

/// `t[key] = bytes`, a Lua string. UTF-8 bytes (nearly every path, argument and
/// environment string) go onto Lua's stack as a `&str`; `create_string` would hold each in
/// a registry slot until dropped, which an exec's 40 environment strings paid for.
fn set_bytes(lua: &Lua, t: &Table, key: impl IntoLua, bytes: &[u8]) -> mlua::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(s) => t.raw_set(key, s),
        Err(_) => t.raw_set(key, lua.create_string(bytes)?),
    }
}

/// Lua's own message, without mlua's wrapping and the traceback.
fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => first_line_of(m),
        // An error raised by a `hermes.*` function: name the policy line that called it.
        mlua::Error::CallbackError { cause, traceback } => {
            let place = traceback
                .lines()
                .map(str::trim)
                .find(|l| !l.starts_with("[C]") && l.contains(": in "))
                .and_then(|l| l.split(": in ").next());
            match place {
                Some(place) => format!("{place}: {}", lua_message(cause)),
                None => lua_message(cause),
            }
        }
        other => first_line(other),
    }
}

fn first_line(e: &dyn std::fmt::Display) -> String {
    first_line_of(&e.to_string())
}

fn first_line_of(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// "an integer", "a table": Lua type names with their article.
fn with_article(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {word}")
}

/// The hash a policy with this source reports ([`Policy::hash`]).
pub fn source_hash(source: &[u8]) -> String {
    format!("fnv1a64:{:016x}", hermes_wire::fnv1a64(source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProcInfo;
    use hermes_wire::{Args, Layer, SockAddr};

    fn policy(src: &str) -> Result<Policy, PolicyError> {
        Policy::from_source("test.lua", src.as_bytes(), Path::new("/policies"), Duration::from_millis(50))
    }

    fn open_event(path: &[u8], flags: i32) -> Event {
        let args: Args<Vec<&[u8]>> = Args::Open { dirfd: libc::AT_FDCWD, path, flags, mode: 0 };
        Event::new("openat", 1, 1, Layer::Preload, ProcInfo::default(), &args)
    }

    fn connect_event(ip: [u8; 4], port: u16) -> Event {
        let args: Args<Vec<&[u8]>> = Args::Connect { fd: 3, addr: SockAddr::Inet { ip, port } };
        Event::new("connect", 1, 1, Layer::Preload, ProcInfo::default(), &args)
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = policy("function on_call(ev)\n  return hermes.allow(\nend\n").err().expect("must fail");
        let msg = err.to_string();
        assert!(matches!(err, PolicyError::Syntax(_)), "{msg}");
        assert!(msg.starts_with("test.lua:3:"), "{msg}");
    }

    #[test]
    fn top_level_errors_and_missing_entry_points_are_refused() {
        let msg = policy("local x = nil\nx.y = 1\n").err().expect("must fail").to_string();
        assert!(msg.contains("test.lua:2:"), "{msg}");
        let err = policy("x = 1\n").err().expect("must fail");
        assert!(matches!(err, PolicyError::NoEntryPoint { .. }), "{err}");
        let err = policy("on_open = 5\n").err().expect("must fail");
        assert!(err.to_string().contains("`on_open` must be a function, not an integer"), "{err}");
        let err = policy("while true do end\nfunction on_call() end").err().expect("must fail");
        assert!(err.to_string().contains("time limit"), "{err}");
    }

    #[test]
    fn handlers_are_the_subscription_list() {
        assert_eq!(policy("function on_open() end").unwrap().mask(), Op::Open.bit());
        let p = policy("function on_connect() end function on_exec() end").unwrap();
        assert_eq!(p.mask(), Op::Connect.bit() | Op::Exec.bit());
        assert_eq!(policy("function on_syscall() end").unwrap().mask(), 0b111111);
        assert_eq!(policy("function on_call() end").unwrap().mask(), 0b111111);
    }

    #[test]
    fn per_op_handler_then_on_call_then_default() {
        let p = policy(
            r#"
            function on_open(ev) if ev.path == "/a" then return hermes.deny("EACCES") end end
            function on_call(ev) if ev.path == "/b" then return hermes.redirect("/c") end end
            "#,
        )
        .unwrap();
        let o = p.decide(&open_event(b"/a", 0));
        assert_eq!((o.verdict, o.handler), (Verdict::Deny(libc::EACCES), "on_open"));
        let o = p.decide(&open_event(b"/b", 0));
        assert_eq!((o.verdict, o.handler), (Verdict::Redirect(b"/c".to_vec()), "on_call"));
        let o = p.decide(&open_event(b"/z", 0));
        assert_eq!((o.verdict, o.handler), (Verdict::Allow, "default"));
    }

    #[test]
    fn legacy_on_syscall_strings() {
        let p =
            policy(r#"function on_syscall(name, args) if name == "openat" then return "BLOCK" end return "ALLOW" end"#)
                .unwrap();
        assert_eq!(p.decide(&open_event(b"/x", 0)).verdict, Verdict::Deny(libc::EPERM));
        assert_eq!(p.decide(&connect_event([1, 2, 3, 4], 80)).verdict, Verdict::Allow);
    }

    #[test]
    fn errors_and_bad_values_fail_closed_with_a_reason() {
        let p = policy(
            r#"
            function on_open(ev)
              if ev.path == "/err" then error("boom") end
              if ev.path == "/loop" then while true do end end
              if ev.path == "/errno" then return hermes.deny("EBOGUS") end
              if ev.path == "/maybe" then return "MAYBE" end
              if ev.path == "/num" then return 42 end
              if ev.path == "/fopen" then return hermes.redirect{port = 1} end
            end
            "#,
        )
        .unwrap();
        for (path, needle) in [
            ("/err", "test.lua:3: boom"),
            ("/loop", "time limit"),
            ("/errno", "unknown errno name 'EBOGUS'"),
            ("/maybe", "\"MAYBE\""),
            ("/num", "returned an integer"),
            ("/fopen", "does not apply to openat"),
        ] {
            let o = p.decide(&open_event(path.as_bytes(), 0));
            assert_eq!(o.verdict, Verdict::Deny(libc::EPERM), "{path}");
            let error = o.error.unwrap_or_default();
            assert!(error.contains(needle), "{path}: {error}");
        }
        // The policy still works after all that.
        assert_eq!(p.decide(&open_event(b"/fine", 0)).verdict, Verdict::Allow);
    }

    #[test]
    fn events_carry_decoded_fields_and_helpers_work() {
        let p = policy(
            r#"
            function on_open(ev)
              hermes.log("saw", ev.path, ev.write)
              if ev.write and ev.flags & hermes.O_CREAT ~= 0 then return hermes.deny(hermes.errno.EROFS) end
            end
            function on_connect(ev)
              if ev.family == "inet" and ev.addr == "10.0.0.1" and ev.port == 80 then
                return hermes.redirect{addr = "127.0.0.1"}
              end
            end
            "#,
        )
        .unwrap();
        let o = p.decide(&open_event(b"/new", libc::O_WRONLY | libc::O_CREAT));
        assert_eq!(o.verdict, Verdict::Deny(libc::EROFS));
        assert_eq!(o.logs, vec!["saw /new true".to_owned()]);
        let o = p.decide(&connect_event([10, 0, 0, 1], 80));
        let Verdict::RedirectAddr { ip, port, unix } = o.verdict else { panic!("{:?}", o.verdict) };
        let to = redirect_addr(
            &NetAddr::from_wire(&SockAddr::Inet { ip: [10, 0, 0, 1], port: 80 }),
            ip,
            port,
            unix.as_deref(),
        );
        assert_eq!(to.display(), "127.0.0.1:80");
    }

    #[test]
    fn strings_reach_lua_byte_for_byte_whether_utf8_or_not() {
        let p = policy(
            r#"
            function on_exec(ev)
              local env = table.concat(ev.envp, "|")
              if ev.raw_path == "/bin/\xff" and #ev.argv == 2 and ev.argv[2] == "é" and env == "A=1|B=\xfe|C=" then
                return hermes.deny(hermes.errno.EACCES)
              end
            end
            "#,
        )
        .unwrap();
        let argv: Vec<&[u8]> = vec![b"/bin/\xff", "é".as_bytes()];
        let envp: Vec<&[u8]> = vec![b"A=1", b"B=\xfe", b"C="];
        let args = Args::Exec { dirfd: libc::AT_FDCWD, path: b"/bin/\xff", search_path: false, flags: 0, argv, envp };
        let ev = Event::new("execve", 1, 1, Layer::Preload, ProcInfo::default(), &args);
        assert_eq!(p.decide(&ev).verdict, Verdict::Deny(libc::EACCES));
    }

    #[test]
    fn an_execs_environment_is_built_when_read_and_kept() {
        let p = policy(
            r#"
            kept = nil
            function on_exec(ev)
              if rawget(ev, "envp") ~= nil or ev.nothing ~= nil then return hermes.deny(1) end
              local first = ev.envp
              if ev.envp ~= first or rawget(ev, "envp") ~= first then return hermes.deny(2) end
              if kept ~= nil and #kept.envp ~= 3 then return hermes.deny(4) end
              kept = kept or ev
              if #first ~= 3 or first[3] ~= "C=" then return hermes.deny(3) end
              return hermes.deny(hermes.errno.EACCES)
            end
            "#,
        )
        .unwrap();
        let envp: Vec<&[u8]> = vec![b"A=1", b"", b"C="];
        let args =
            Args::Exec { dirfd: libc::AT_FDCWD, path: b"/bin/true", search_path: false, flags: 0, argv: vec![], envp };
        let ev = Event::new("execve", 1, 1, Layer::Preload, ProcInfo::default(), &args);
        assert_eq!(p.decide(&ev).verdict, Verdict::Deny(libc::EACCES));
        // A later event's table, the first one's kept by the policy: each has its own.
        let envp: Vec<&[u8]> = vec![b"X=1"];
        let args =
            Args::Exec { dirfd: libc::AT_FDCWD, path: b"/bin/true", search_path: false, flags: 0, argv: vec![], envp };
        let ev = Event::new("execve", 1, 1, Layer::Preload, ProcInfo::default(), &args);
        assert_eq!(p.decide(&ev).verdict, Verdict::Deny(3));
    }

    #[test]
    fn hooks_declare_signatures() {
        let p = policy(
            r#"
            hermes.hook("libc.so.6:write", {"int", "buf:3", "int"})
            hermes.hook("libz.so.1:deflate", nil, {backtrace = true})
            function on_api(ev) end
            "#,
        )
        .unwrap();
        let list = ApiHook::env_list(p.hooks());
        assert_eq!(list, "libc.so.6:write=i2i;libz.so.1:deflate=+bt");
        assert_eq!(ApiHook::from_env_list(&list), p.hooks());
        assert_eq!(p.mask(), Op::Api.bit());
        for (bad, needle) in [
            (r#"hermes.hook("nocolon")"#, "not LIB:SYMBOL"),
            (r#"hermes.hook("l:s", {"float"})"#, "unknown argument kind 'float'"),
            (r#"hermes.hook("l:s", {"buf:1"})"#, "unknown argument kind 'buf:1'"),
        ] {
            let err = policy(&format!(
                "{bad}
function on_api() end"
            ))
            .err()
            .expect("must fail")
            .to_string();
            assert!(err.contains(needle) && err.contains("test.lua:1"), "{err}");
        }
    }

    #[test]
    fn the_filter_doors_are_policy_settings() {
        let p = policy("hermes.io_uring = 'allow'\nhermes.foreign_arch = 'enosys'\nfunction on_open() end").unwrap();
        assert_eq!(p.doors().to_string(), "io_uring=allow,foreign_arch=enosys");
        assert_eq!(policy("function on_open() end").unwrap().doors().to_string(), "-");
        let err = policy("hermes.io_uring = 'sometimes'\nfunction on_open() end").err().expect("must fail").to_string();
        assert!(err.contains("hermes.io_uring must be \"deny\" or \"allow\""), "{err}");
    }

    #[test]
    fn content_hash_is_stable_and_policy_dir_is_exposed() {
        let src = "function on_call(ev) if ev.path == hermes.policy_dir .. '/x' then return hermes.kill() end end";
        let a = policy(src).unwrap();
        assert_eq!(a.hash(), policy(src).unwrap().hash());
        assert_ne!(a.hash(), policy("function on_call() end").unwrap().hash());
        assert_eq!(a.decide(&open_event(b"/policies/x", 0)).verdict, Verdict::Kill);
    }
}
