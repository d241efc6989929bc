//! A Rust program's std::fs, std::net and std::process under the same decisions as C.

use hermes_tests::{launch, rust_target, EchoServer, Scratch, UdpSink};

#[test]
fn rust_std_calls_are_allowed_denied_and_redirected() {
    let dir = Scratch::new();
    dir.write("plain", "plain\n");
    dir.write("secret", "secret\n");
    dir.write("to", "redirected\n");
    let server = EchoServer::start();
    let sink = UdpSink::start();
    let d = dir.path().display().to_string();
    let policy = format!(
        r#"
local dir = "{d}"
function on_open(ev)
  if ev.path == dir .. "/secret" or ev.path == dir .. "/denied-write" then return hermes.deny("EACCES") end
  if ev.path == dir .. "/from" then return hermes.redirect(dir .. "/to") end
end
function on_connect(ev)
  if ev.port == 1 then return hermes.redirect{{port = {port}}} end
  if ev.port == 2 then return hermes.deny("ECONNREFUSED") end
end
function on_sendto(ev)
  if ev.port == 3 then return hermes.redirect{{port = {udp}}} end
  if ev.port == 4 then return hermes.deny("ENETUNREACH") end
end
function on_exec(ev)
  if ev.path:match("/false$") then return hermes.deny("EACCES") end
end
"#,
        port = server.port,
        udp = sink.port
    );
    let cases: &[(&[&str], &str)] = &[
        (&["open", &format!("{d}/plain")], "OK plain"),
        (&["open", &format!("{d}/secret")], "ERR Permission denied"),
        (&["open", &format!("{d}/from")], "OK redirected"),
        (&["write", &format!("{d}/new")], "OK written"),
        (&["write", &format!("{d}/denied-write")], "ERR Permission denied"),
        (&["connect", &server.port.to_string()], "OK echo: hello"),
        (&["connect", "1"], "OK echo: hello"),
        (&["connect", "2"], "ERR Connection refused"),
        (&["udp", "3"], "OK 4"),
        (&["udp", "4"], "ERR Network is unreachable"),
        (&["spawn", "true"], "OK exit=0"),
        (&["spawn", "false"], "ERR Permission denied"),
    ];
    for (args, want) in cases {
        let run = launch(&policy, rust_target(), args).run();
        run.check(run.stdout.trim_end().starts_with(want), &format!("rust_target {args:?}: want {want:?}"));
    }
    assert_eq!(sink.recv().as_deref(), Some(&b"ping"[..]), "the redirected datagram arrived");
    assert!(sink.quiet_for(std::time::Duration::from_millis(200)), "the denied datagram did not");
    assert_eq!(std::fs::read_to_string(dir.join("new")).unwrap(), "from rust\n");
    assert!(!dir.join("denied-write").exists());
}
