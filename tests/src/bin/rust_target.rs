//! A Rust program as a HERMES target: std's File, TcpStream, UdpSocket and Command go
//! through libc's open64, connect, sendto and posix_spawn/execvp.
//!
//! rust_target open PATH | write PATH | connect PORT | udp PORT | spawn PROG [ARGS…]
//! prints `OK …` or `ERR <io::Error>` and exits 0.

use std::io::{BufRead, BufReader, Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (op, rest) = args.split_first().expect("usage: rust_target OP ARGS");
    let result: std::io::Result<String> = match op.as_str() {
        "open" => std::fs::File::open(&rest[0]).and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s).map(|_| s.trim_end().to_owned())
        }),
        "write" => std::fs::write(&rest[0], b"from rust\n").map(|()| "written".into()),
        "connect" => std::net::TcpStream::connect(("127.0.0.1", rest[0].parse::<u16>().expect("port"))).and_then(|s| {
            (&s).write_all(b"hello\n")?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line)?;
            Ok(line.trim_end().to_owned())
        }),
        "udp" => std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.send_to(b"ping", ("127.0.0.1", rest[0].parse::<u16>().expect("port"))))
            .map(|n| n.to_string()),
        "spawn" => std::process::Command::new(&rest[0])
            .args(&rest[1..])
            .status()
            .map(|s| format!("exit={}", s.code().unwrap_or(-1))),
        other => panic!("unknown op {other}"),
    };
    match result {
        Ok(detail) => println!("OK {detail}"),
        Err(e) => println!("ERR {e}"),
    }
}
