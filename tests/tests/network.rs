//! connect, sendto and sendmsg allowed, denied and redirected, through a real
//! `hermes launch` of a C program that makes the calls against real sockets on the
//! loopback interface.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use hermes_tests::{c_program, launch, EchoServer, Outcome, UdpSink};

/// The result part of the `STEP = …` line `calls` printed for `step`.
fn step<'a>(run: &'a Outcome, step: &str) -> &'a str {
    let prefix = format!("{step} = ");
    run.stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or("<no output line>")
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
fn dead_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1").local_addr().expect("addr").port()
}

/// A UDP port on 127.0.0.1 that nothing receives on.
fn dead_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("bind udp").local_addr().expect("addr").port()
}

#[test]
fn connect_is_allowed_denied_and_redirected() {
    let allowed = EchoServer::start();
    let denied = EchoServer::start();
    let dead = dead_tcp_port();
    let dead2 = dead_tcp_port();
    let src = format!(
        r#"
function on_connect(ev)
  hermes.log(ev.family .. " " .. ev.addr .. " " .. ev.port)
  if ev.port == {denied} then return hermes.deny("ECONNREFUSED") end
  if ev.addr == "127.0.0.1" and ev.port == {dead} then return hermes.redirect{{port = {allowed}}} end
  if ev.addr == "127.0.0.2" and ev.port == {dead2} then
    return hermes.redirect{{addr = "127.0.0.1", port = {allowed}}}
  end
end
"#,
        denied = denied.port,
        allowed = allowed.port,
    );
    let steps = [
        format!("connect:127.0.0.1:{}", allowed.port),
        format!("connect:127.0.0.1:{}", denied.port),
        format!("connect:127.0.0.1:{dead}"),
        format!("connect:127.0.0.2:{dead2}"),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, c_program("calls"), &args).run();
    run.check(run.code == 0, "calls exits 0");
    run.check(step(&run, &steps[0]) == "OK echo: hello", "allowed connect reaches the server");
    run.check(step(&run, &steps[1]) == "ERR ECONNREFUSED", "denied connect fails with ECONNREFUSED");
    run.check(step(&run, &steps[2]) == "OK echo: hello", "connect to a dead port is redirected to the server");
    run.check(step(&run, &steps[3]) == "OK echo: hello", "connect redirected to another address and port");

    let got = allowed.wait_for(3);
    run.check(got == ["hello", "hello", "hello"], &format!("the allowed server got three hellos: {got:?}"));
    std::thread::sleep(Duration::from_millis(100));
    let got = denied.received.lock().expect("received").clone();
    run.check(got.is_empty(), &format!("the denied server got nothing: {got:?}"));

    // The trace has ev.family, ev.addr and ev.port as the program passed them, and the
    // policy saw the same values (its log line).
    let connects = run.calls("connect");
    run.check(connects.len() == 4, "four connects traced");
    let expect = [
        ("127.0.0.1", allowed.port, "allow"),
        ("127.0.0.1", denied.port, "deny"),
        ("127.0.0.1", dead, "redirect"),
        ("127.0.0.2", dead2, "redirect"),
    ];
    for (rec, (addr, port, decision)) in connects.iter().zip(expect) {
        let args = &rec["args"];
        run.check(
            args["family"] == "inet" && args["addr"] == addr && args["port"] == port && rec["decision"] == decision,
            &format!("connect to {addr}:{port} traced as {decision}"),
        );
        let log = format!("inet {addr} {port}");
        run.check(rec["logs"][0] == log.as_str(), &format!("the policy saw {log}"));
    }
    let to = format!("127.0.0.1:{}", allowed.port);
    run.check(connects[1]["errno"] == "ECONNREFUSED", "denial errno traced");
    run.check(connects[2]["redirect"] == to.as_str() && connects[3]["redirect"] == to.as_str(), "redirect target");
    run.check(connects[2]["result"] == 0 && connects[3]["result"] == 0, "the redirected connects succeeded");
}

/// One of `sendto`/`sendmsg` (the `calls` step of the same name) allowed, denied and
/// redirected, each to its own UDP socket.
fn udp_matrix(op: &str) {
    let allowed = UdpSink::start();
    let denied = UdpSink::start();
    let target = UdpSink::start();
    let dead = dead_udp_port();
    let src = format!(
        r#"
function on_{op}(ev)
  if ev.port == {denied} then return hermes.deny("ENETUNREACH") end
  if ev.family == "inet" and ev.addr == "127.0.0.1" and ev.port == {dead} then
    return hermes.redirect{{port = {target}}}
  end
end
"#,
        denied = denied.port,
        target = target.port,
    );
    let steps = [
        format!("{op}:127.0.0.1:{}", allowed.port),
        format!("{op}:127.0.0.1:{}", denied.port),
        format!("{op}:127.0.0.1:{dead}"),
    ];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, c_program("calls"), &args).run();
    run.check(run.code == 0, "calls exits 0");
    run.check(step(&run, &steps[0]) == "OK 4", &format!("allowed {op} sends 4 bytes"));
    run.check(step(&run, &steps[1]) == "ERR ENETUNREACH", &format!("denied {op} fails with ENETUNREACH"));
    run.check(step(&run, &steps[2]) == "OK 4", &format!("redirected {op} sends 4 bytes"));
    run.check(allowed.recv().as_deref() == Some(b"ping".as_slice()), "the allowed sink got ping");
    run.check(target.recv().as_deref() == Some(b"ping".as_slice()), "the redirect target got ping");
    run.check(denied.quiet_for(Duration::from_millis(300)), "the denied sink got nothing");

    let recs = run.calls(op);
    run.check(recs.len() == 3, &format!("three {op} calls traced"));
    for (rec, (port, decision)) in recs.iter().zip([(allowed.port, "allow"), (denied.port, "deny"), (dead, "redirect")])
    {
        let a = &rec["args"];
        run.check(
            a["family"] == "inet" && a["addr"] == "127.0.0.1" && a["port"] == port && a["len"] == 4,
            &format!("{op} to port {port}: family, addr, port and len traced"),
        );
        run.check(rec["decision"] == decision, &format!("{op} to port {port} traced as {decision}"));
    }
    run.check(recs[1]["errno"] == "ENETUNREACH", "denial errno traced");
    let to = format!("127.0.0.1:{}", target.port);
    run.check(recs[2]["redirect"] == to.as_str() && recs[2]["result"] == 4, "redirect target and result traced");
}

#[test]
fn sendto_is_allowed_denied_and_redirected() {
    udp_matrix("sendto");
}

#[test]
fn sendmsg_is_allowed_denied_and_redirected() {
    udp_matrix("sendmsg");
}

/// A TCP listener on [::1] answering each connection's first line with `echo6: …`;
/// `None` when ::1 cannot be bound here.
fn v6_echo() -> Option<u16> {
    let listener = TcpListener::bind("[::1]:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() {
                let _ = (&stream).write_all(format!("echo6: {}\n", line.trim_end()).as_bytes());
            }
        }
    });
    Some(port)
}

#[test]
fn ipv6_connect_is_redirected() {
    let Some(v6_port) = v6_echo() else {
        eprintln!("SKIP ipv6_connect_is_redirected: cannot bind [::1] on this machine");
        return;
    };
    let v4 = EchoServer::start();
    let dead = TcpListener::bind("[::1]:0").expect("bind [::1]").local_addr().expect("addr").port();
    let dead2 = TcpListener::bind("[::1]:0").expect("bind [::1]").local_addr().expect("addr").port();
    let src = format!(
        r#"
function on_connect(ev)
  if ev.family ~= "inet6" or ev.addr ~= "::1" then return end
  if ev.port == {dead} then return hermes.redirect{{port = {v6_port}}} end
  if ev.port == {dead2} then return hermes.redirect{{addr = "::ffff:127.0.0.1", port = {v4}}} end
end
"#,
        v4 = v4.port,
    );
    let steps = [format!("connect6:::1:{dead}"), format!("connect6:::1:{dead2}")];
    let args: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = launch(&src, c_program("calls"), &args).run();
    run.check(run.code == 0, "calls exits 0");
    run.check(step(&run, &steps[0]) == "OK echo6: hello", "[::1] connect redirected to the [::1] listener");
    run.check(step(&run, &steps[1]) == "OK echo: hello", "[::1] connect redirected to a v4-mapped address");
    run.check(v4.wait_for(1) == ["hello"], "the IPv4 server got the redirected hello");

    let connects = run.calls("connect");
    run.check(connects.len() == 2, "two connects traced");
    let a = &connects[0]["args"];
    run.check(a["family"] == "inet6" && a["addr"] == "::1" && a["port"] == dead, "inet6 family, addr and port traced");
    let to = format!("[::1]:{v6_port}");
    run.check(connects[0]["decision"] == "redirect" && connects[0]["redirect"] == to.as_str(), "v6 redirect traced");
    let to = format!("[::ffff:127.0.0.1]:{}", v4.port);
    run.check(connects[1]["redirect"] == to.as_str(), "v4-mapped redirect traced");
}
