//! Harness for the end-to-end tests: builds `hermes` and the preload, compiles the C
//! test programs with gcc, runs real programs under a real `hermes launch` with a
//! timeout, and reads back the JSON Lines trace.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `target/debug` (or wherever cargo put this test binary's profile directory).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Build the `hermes` binary and the preload once per test process. Tests run after
/// cargo released its lock, so a nested build is a quick no-op when they are fresh.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // Two invocations: a `--bin` filter applies to every `-p` of one invocation, and
        // would leave out the preload's cdylib and the `hermes` binary (stale or missing).
        let builds: [&[&str]; 2] =
            [&["-p", "hermes-launcher", "-p", "hermes-preload"], &["-p", "hermes-tests", "--bin", "rust_target"]];
        for args in builds {
            let mut cmd = Command::new(&cargo);
            cmd.current_dir(root()).args(["build", "--quiet"]).args(args);
            if profile_dir().file_name() == Some(OsStr::new("release")) {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build {} failed", args.join(" "));
        }
    });
}

/// The Rust test target (tests/src/bin/rust_target.rs).
pub fn rust_target() -> PathBuf {
    ensure_built();
    profile_dir().join("rust_target")
}

pub fn hermes_bin() -> PathBuf {
    ensure_built();
    profile_dir().join("hermes")
}

/// Compile `tests/c/NAME.c` (once per change to it or to a header it includes from
/// tests/c) and return the binary's path.
/// Extra gcc flags (e.g. `-pthread`) come from a `// gcc: …` first line in the file.
pub fn c_program(name: &str) -> PathBuf {
    c_program_with(name, &[])
}

/// [`c_program`] with more gcc flags than the file's own (`-static`: the same program
/// under the seccomp + ptrace fallback). Each set of flags is its own cached binary.
pub fn c_program_with(name: &str, extra: &[&str]) -> PathBuf {
    let src = root().join("tests/c").join(format!("{name}.c"));
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let mut flags: Vec<&str> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// gcc:"))
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    flags.extend_from_slice(extra);
    let out_dir = profile_dir().join("test-programs");
    std::fs::create_dir_all(&out_dir).expect("mkdir test-programs");
    // The headers it includes from tests/c are part of what it is built from.
    let headers: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("#include \"")?.strip_suffix('"'))
        .map(|h| std::fs::read_to_string(src.with_file_name(h)).unwrap_or_else(|e| panic!("read {h}: {e}")))
        .collect();
    let hash = hermes_wire::fnv1a64(format!("{text}\0{headers}\0{}", extra.join(" ")).as_bytes());
    let bin = out_dir.join(format!("{name}-{hash:016x}"));
    if !bin.exists() {
        // Parallel test processes may compile the same program: build aside, rename.
        let tmp = out_dir.join(format!("{name}.{}.{hash:016x}.tmp", std::process::id()));
        let out = Command::new("gcc")
            .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .args(&flags)
            .output()
            .expect("run gcc");
        assert!(out.status.success(), "gcc {name}.c {flags:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        std::fs::rename(&tmp, &bin).expect("rename compiled program");
    }
    bin
}

/// A scratch directory, removed when dropped. Paths are canonical (no symlinks), so
/// they compare equal to the resolved `ev.path` the policy sees.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hermes-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir scratch");
        Scratch(std::fs::canonicalize(&dir).expect("canonicalize scratch"))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A 32-bit x86 ELF header, executable, at `name`: a program HERMES refuses (a
    /// header is all the refusal reads).
    pub fn i386_program(&self, name: &str) -> PathBuf {
        let mut elf32 = vec![0u8; 64];
        elf32[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
        elf32[16..20].copy_from_slice(&[2, 0, 3, 0]); // ET_EXEC, EM_386
        let path = self.join(name);
        std::fs::write(&path, &elf32).expect("write the header");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        path
    }

    /// Write `contents` to `name` in the scratch directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a `hermes` run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code of `hermes` (the target's, or 128+signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The `--trace` records, when the run had a trace.
    pub trace: Vec<Json>,
    pub elapsed: Duration,
}

impl Outcome {
    /// Trace records whose `call` or `op` is `name`.
    pub fn calls(&self, name: &str) -> Vec<&Json> {
        self.trace.iter().filter(|r| r["call"] == name || r["op"] == name).collect()
    }

    /// Panic with the whole run when `cond` is false.
    #[track_caller]
    pub fn check(&self, cond: bool, what: &str) {
        assert!(
            cond,
            "{what}\n--- exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- trace\n{:#?}",
            self.code, self.stdout, self.stderr, self.trace
        );
    }
}

/// A `hermes launch` invocation being built.
pub struct Launch {
    cmd: Command,
    trace: Option<PathBuf>,
    timeout: Duration,
    _scratch: Scratch,
}

/// Start building `hermes launch --policy <policy_src> --trace … -- prog args…`.
/// `policy_src` is Lua source, written to `policy.lua` in a scratch directory.
pub fn launch(policy_src: &str, prog: impl AsRef<OsStr>, args: &[&str]) -> Launch {
    let scratch = Scratch::new();
    let policy = scratch.write("policy.lua", policy_src);
    let trace = scratch.join("trace.jsonl");
    let mut cmd = Command::new(hermes_bin());
    cmd.arg("launch").arg("--policy").arg(&policy).arg("--trace").arg(&trace).arg("--").arg(prog).args(args);
    Launch { cmd, trace: Some(trace), timeout: Duration::from_secs(60), _scratch: scratch }
}

/// `hermes ARGS…` exactly as given (for `check`, usage errors, …).
pub fn hermes(args: &[&str]) -> Launch {
    let mut cmd = Command::new(hermes_bin());
    cmd.args(args);
    Launch { cmd, trace: None, timeout: Duration::from_secs(60), _scratch: Scratch::new() }
}

impl Launch {
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Extra `hermes launch` options go before `--`: rebuild the argument list.
    pub fn launch_option(mut self, opt: &str) -> Self {
        let args: Vec<_> = self.cmd.get_args().map(|a| a.to_owned()).collect();
        let prog = self.cmd.get_program().to_owned();
        let mut cmd = Command::new(prog);
        for (k, v) in self.cmd.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(d) = self.cmd.get_current_dir() {
            cmd.current_dir(d);
        }
        let dashdash = args.iter().position(|a| a == "--").unwrap_or(args.len());
        cmd.args(&args[..dashdash]).arg(opt).args(&args[dashdash..]);
        self.cmd = cmd;
        self
    }

    /// Run to completion (killing it after the timeout, which fails the test).
    pub fn run(self) -> Outcome {
        run_command(self.cmd, self.trace.as_deref(), self.timeout)
    }
}

/// Run `cmd` (a `hermes` command line, perhaps behind a wrapper such as setpriv) to
/// completion, killing it after `timeout`, which fails the test; read its trace from
/// `trace` if given.
pub fn run_command(mut cmd: Command, trace: Option<&Path>, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hermes");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait hermes") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hermes did not finish within {timeout:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    let trace = trace.map(read_trace).unwrap_or_default();
    Outcome { code: status.code().unwrap_or(-1), stdout, stderr, trace, elapsed }
}

/// Wait (up to 20 s) until a program of the test has written a whole line to `path`,
/// and return it without its newline; `what` names it if it never comes.
pub fn wait_for_line(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let said = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = said.strip_suffix('\n') {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "{what} never came");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The policy of the privileged-program tests: one open denied, one allowed.
pub const PRIVILEGED_POLICY: &str =
    "function on_open(ev) if ev.path == '/etc/group' then return hermes.deny('EACCES') end end\n";

/// Root makes a copy of the `calls` test program in `dir` that the loader would run in
/// secure mode for the caller: `arrange` sets its owner, mode or attributes.
pub fn privileged_calls(dir: &Scratch, arrange: impl FnOnce(&Path)) -> String {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes a privileged program: it needs root");
    let prog = dir.join("calls-privileged");
    std::fs::copy(c_program("calls"), &prog).expect("copy calls");
    // Runnable by nobody, from a directory nobody may enter.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod dir");
    arrange(&prog);
    prog.display().to_string()
}

/// An `arrange` for [`privileged_calls`]: set-uid to nobody.
pub fn set_uid_nobody(prog: &Path) {
    std::os::unix::fs::chown(prog, Some(65534), Some(65534)).expect("chown nobody");
    std::fs::set_permissions(prog, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).expect("chmod u+s");
}

/// Parse a JSON Lines trace; every line must be valid JSON.
pub fn read_trace(path: &Path) -> Vec<Json> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace line {}: {e}: {l}", i + 1)))
        .collect()
}

/// A TCP listener on 127.0.0.1 that answers each connection's first line with
/// `echo: <line>` and records what it received.
pub struct EchoServer {
    pub port: u16,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EchoServer {
    pub fn start() -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("addr").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_ok() {
                        let line = line.trim_end().to_owned();
                        let _ = (&stream).write_all(format!("echo: {line}\n").as_bytes());
                        log.lock().expect("log").push(line);
                    }
                });
            }
        });
        EchoServer { port, received }
    }
}

impl EchoServer {
    /// Wait (up to 2 s) until `n` lines were received; returns what was.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let got = self.received.lock().expect("received").clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A UDP socket on 127.0.0.1 that collects datagrams.
pub struct UdpSink {
    pub port: u16,
    socket: std::net::UdpSocket,
}

impl UdpSink {
    pub fn start() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        UdpSink { port: socket.local_addr().expect("addr").port(), socket }
    }

    /// The next datagram, or `None` after 5 s.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 65536];
        self.socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    /// Whether a datagram arrives within `wait`.
    pub fn quiet_for(&self, wait: Duration) -> bool {
        self.socket.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 16];
        let got = self.socket.recv(&mut buf).is_ok();
        self.socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        !got
    }
}
