//! Real tools under HERMES (cat, python3, curl, sh), and the policies shipped in
//! policies/ each exercised through a real run.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_tests::{c_program, hermes, launch, root, EchoServer, Outcome, Scratch, UdpSink};

/// The result part of the `STEP = …` line `calls` printed for `step`.
fn step<'a>(run: &'a Outcome, step: &str) -> &'a str {
    let prefix = format!("{step} = ");
    run.stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or("<no output line>")
}

/// `name` found on PATH, as a shell would.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
fn dead_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1").local_addr().expect("addr").port()
}

/// The source of a policy shipped in policies/.
fn shipped(name: &str) -> String {
    let path = root().join("policies").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn cat_of_a_denied_file_fails_and_of_a_redirected_file_prints_the_target() {
    let dir = Scratch::new();
    let secret = dir.write("secret", "secret content\n").display().to_string();
    dir.write("from", "original content\n");
    let to = dir.write("to", "redirected content\n").display().to_string();
    let src = format!(
        r#"
function on_open(ev)
  if ev.path == {secret:?} then return hermes.deny("EACCES") end
  if ev.path == {from:?} then return hermes.redirect({to:?}) end
end
"#,
        from = dir.join("from").display().to_string(),
    );
    let run = launch(&src, "cat", &[&secret]).run();
    run.check(run.code == 1, "cat fails");
    run.check(run.stderr.contains("Permission denied") && run.stdout.is_empty(), "with Permission denied");
    // A relative name: the rule is on the resolved path.
    let run = launch(&src, "cat", &["from"]).current_dir(dir.path()).run();
    run.check(run.code == 0 && run.stdout == "redirected content\n", "cat prints the redirect target");
    run.check(
        run.calls("open").iter().any(|r| r["args"]["raw_path"] == "from" && r["redirect"] == to.as_str()),
        "traced",
    );
}

#[test]
fn python_connect_is_redirected_and_denied() {
    let Some(python) = which("python3") else {
        eprintln!("SKIP python_connect_is_redirected_and_denied: no python3 on PATH");
        return;
    };
    let server = EchoServer::start();
    let refused = EchoServer::start();
    let dead = dead_tcp_port();
    let src = format!(
        r#"
function on_connect(ev)
  if ev.family == "inet" and ev.port == {dead} then return hermes.redirect{{port = {port}}} end
  if ev.family == "inet" and ev.port == {refused} then return hermes.deny("ECONNREFUSED") end
end
"#,
        port = server.port,
        refused = refused.port,
    );
    let script = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {dead}), timeout=5)
s.sendall(b"from-python\n")
print(s.makefile().readline().strip())
try:
    socket.create_connection(("127.0.0.1", {refused}), timeout=5)
    print("connected anyway")
except ConnectionRefusedError as e:
    print("refused", e.errno)
"#,
        refused = refused.port,
    );
    let run = launch(&src, &python, &["-c", &script]).timeout(Duration::from_secs(30)).run();
    run.check(run.code == 0, "python exits 0");
    run.check(run.stdout.lines().any(|l| l == "echo: from-python"), "the redirected connect reached the echo server");
    run.check(run.stdout.lines().any(|l| l == format!("refused {}", libc::ECONNREFUSED)), "ConnectionRefusedError");
    run.check(server.wait_for(1) == ["from-python"], "the server got python's line");
    run.check(refused.received.lock().expect("received").is_empty(), "the denied server got nothing");
    let connects = run.calls("connect");
    run.check(connects.iter().any(|r| r["args"]["port"] == dead && r["decision"] == "redirect"), "redirect traced");
    run.check(connects.iter().any(|r| r["args"]["port"] == refused.port && r["decision"] == "deny"), "denial traced");
}

/// A one-page HTTP server on 127.0.0.1; returns its port and the request lines it got.
fn http_responder() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&requests);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_owned();
            log.lock().expect("log").push(first);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello-from-test");
        }
    });
    (port, requests)
}

#[test]
fn curl_to_a_dead_port_is_redirected_to_a_live_server() {
    let Some(curl) = which("curl") else {
        eprintln!("SKIP curl_to_a_dead_port_is_redirected_to_a_live_server: no curl on PATH");
        return;
    };
    let (port, requests) = http_responder();
    let dead = dead_tcp_port();
    let src =
        format!("function on_connect(ev) if ev.port == {dead} then return hermes.redirect{{port = {port}}} end end\n");
    let url = format!("http://127.0.0.1:{dead}/page");
    let run = launch(&src, &curl, &["-s", "--max-time", "5", &url]).timeout(Duration::from_secs(20)).run();
    run.check(run.code == 0, "curl exits 0");
    run.check(run.stdout == "hello-from-test", "curl printed the live server's page");
    let got = requests.lock().expect("requests").clone();
    run.check(got == ["GET /page HTTP/1.1"], &format!("the live server got curl's request: {got:?}"));
    let connects = run.calls("connect");
    let to = format!("127.0.0.1:{port}");
    run.check(connects.iter().any(|r| r["args"]["port"] == dead && r["redirect"] == to.as_str()), "redirect traced");
}

#[test]
fn shipped_firewall_allows_loopback_and_blocks_the_rest() {
    let server = EchoServer::start();
    let allowed = UdpSink::start();
    let blocked = UdpSink::start();
    // 0.0.0.0 is not a loopback address to the policy, yet the kernel delivers it to
    // the local listeners: without the firewall these calls would reach them, on any
    // network, and with it they must not.
    let steps = [
        format!("connect:127.0.0.1:{}", server.port),
        format!("connect:0.0.0.0:{}", server.port),
        format!("sendto:0.0.0.0:{}", blocked.port),
        format!("sendmsg:0.0.0.0:{}", blocked.port),
        format!("sendto:127.0.0.1:{}", allowed.port),
        format!("sendmsg:127.0.0.1:{}", allowed.port),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&shipped("firewall.lua"), c_program("calls"), &args).run();
    run.check(run.code == 0, "calls exits 0");
    let want = ["OK echo: hello", "ERR ECONNREFUSED", "ERR ENETUNREACH", "ERR ENETUNREACH", "OK 4", "OK 4"];
    for (s, want) in steps.iter().zip(want) {
        run.check(step(&run, s) == want, &format!("{s}: want {want}, got {:?}", step(&run, s)));
    }
    run.check(allowed.recv().as_deref() == Some(b"ping".as_slice()), "loopback sendto arrived");
    run.check(allowed.recv().as_deref() == Some(b"ping".as_slice()), "loopback sendmsg arrived");
    run.check(blocked.quiet_for(Duration::from_millis(300)), "nothing sent to 0.0.0.0 arrived");
    std::thread::sleep(Duration::from_millis(100));
    run.check(server.wait_for(1) == ["hello"], "the server saw only the loopback connect");
    run.check(run.trace.iter().filter(|r| r["decision"] == "deny").count() == 3, "three denials traced");
}

#[test]
fn shipped_readonly_home_allows_writes_only_under_the_writable_dir() {
    let dir = Scratch::new();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.join("out")).expect("mkdir out");
    std::fs::create_dir(dir.join("outx")).expect("mkdir outx");
    dir.write("existing", "existing content\n");
    let steps = [
        format!("write:{d}/out/new"),
        format!("creat:{d}/out/created"),
        format!("write:{d}/outside"),
        format!("write:{d}/outx/new"), // "/outx" is not under "/out"
        format!("write:{d}/existing"),
        format!("open:{d}/existing"),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&shipped("readonly_home.lua"), c_program("calls"), &args)
        .env("HERMES_WRITABLE_DIR", dir.join("out"))
        .run();
    run.check(run.code == 0, "calls exits 0");
    let want = ["OK", "OK", "ERR EACCES", "ERR EACCES", "ERR EACCES", "OK existing content"];
    for (s, want) in steps.iter().zip(want) {
        run.check(step(&run, s) == want, &format!("{s}: want {want}, got {:?}", step(&run, s)));
    }
    run.check(dir.join("out/new").exists() && dir.join("out/created").exists(), "writes under out/ happened");
    run.check(!dir.join("outside").exists() && !dir.join("outx/new").exists(), "denied files were not created");
    let logs: Vec<&str> = run.trace.iter().filter_map(|r| r["logs"][0].as_str()).collect();
    run.check(logs.contains(&format!("write denied: {d}/outside").as_str()), "the denial is logged");
}

#[test]
fn shipped_redirect_moves_a_path_and_a_port() {
    let dir = Scratch::new();
    let from = dir.write("from", "original content\n").display().to_string();
    let to = dir.write("to", "redirected content\n").display().to_string();
    let server = EchoServer::start();
    let dead = dead_tcp_port();
    let mut steps = vec![format!("open:{from}"), format!("connect:127.0.0.1:{dead}")];
    // An inet6 socket is sent to ::ffff:127.0.0.1, when this machine has IPv6.
    let v6 = TcpListener::bind("[::1]:0").is_ok();
    if v6 {
        steps.push(format!("connect6:::1:{dead}"));
    } else {
        eprintln!("shipped_redirect_moves_a_path_and_a_port: no [::1] here, skipping its inet6 step");
    }
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&shipped("redirect.lua"), c_program("calls"), &args)
        .env("HERMES_REDIRECT_FROM", &from)
        .env("HERMES_REDIRECT_TO", &to)
        .env("HERMES_REDIRECT_PORT_FROM", dead.to_string())
        .env("HERMES_REDIRECT_PORT_TO", server.port.to_string())
        .run();
    run.check(run.code == 0, "calls exits 0");
    run.check(step(&run, &steps[0]) == "OK redirected content", "the path is redirected");
    run.check(step(&run, &steps[1]) == "OK echo: hello", "the port is redirected");
    if v6 {
        run.check(step(&run, &steps[2]) == "OK echo: hello", "the inet6 connect is redirected to ::ffff:127.0.0.1");
    }
    let logs: Vec<&str> = run.trace.iter().filter_map(|r| r["logs"][0].as_str()).collect();
    run.check(logs.contains(&format!("{from} -> {to}").as_str()), "the path redirect is logged");
    let port_log = format!("127.0.0.1:{dead} -> 127.0.0.1:{}", server.port);
    run.check(logs.contains(&port_log.as_str()), "the port redirect is logged");
}

#[test]
fn shipped_legacy_block_exec_blocks_every_exec() {
    let dir = Scratch::new();
    let file = dir.write("file", "file content\n").display().to_string();
    let steps = [format!("open:{file}"), "execve:/bin/true".to_owned(), "spawnp:true".to_owned()];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&shipped("legacy_block_exec.lua"), c_program("calls"), &args).run();
    run.check(run.code == 0, "calls exits 0");
    run.check(step(&run, &steps[0]) == "OK file content", "open allowed");
    run.check(step(&run, &steps[1]) == "ERR EPERM" && step(&run, &steps[2]) == "ERR EPERM", "execs blocked");

    // A shell cannot start commands.
    let run = launch(&shipped("legacy_block_exec.lua"), "sh", &["-c", "echo start; /bin/true && echo ran"]).run();
    run.check(run.stdout == "start\n", "the shell's builtin echo ran, /bin/true did not");
    run.check(run.code == 126 && run.stderr.contains("Operation not permitted"), "sh reports the blocked exec");
    run.check(run.calls("exec").iter().all(|r| r["decision"] == "deny" && r["handler"] == "on_syscall"), "traced");
}

#[test]
fn check_passes_on_every_shipped_policy() {
    let mut checked = 0;
    let dir = root().join("policies");
    for entry in std::fs::read_dir(&dir).expect("read policies/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("lua") {
            continue;
        }
        let run = hermes(&["check", &path.display().to_string()]).run();
        run.check(run.code == 0 && run.stdout.contains(": ok"), &format!("hermes check {}", path.display()));
        checked += 1;
    }
    assert!(checked >= 4, "found only {checked} policies in {}", dir.display());
}
