//! Starting on a port another server already holds fails clearly instead of
//! silently sharing it (the shards' listeners use SO_REUSEPORT); starting on
//! a port that only the closed connections of a stopped server still hold
//! (TIME_WAIT) works at once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    let first = Server::start(&[]);
    let port = first.addr().port().to_string();
    let mut second = Command::new(env!("CARGO_BIN_EXE_singyeong"))
        .args(["--bind", "127.0.0.1", "--port", &port, "--shards", "1"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second server");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second server kept running on a taken port");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = second.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(stderr.contains("already in use"), "{stderr}");
    // The first server is untouched.
    let mut c = Client::ready(&first, Json, "app", "still-here");
    c.heartbeat();
}

/// Whether a socket whose local port is `port` sits in TIME_WAIT (the
/// kernel's connection tables; state 06).
fn time_wait_on(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields
                    .get(1)
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                local_port == Some(port) && fields.get(3) == Some(&"06")
            })
    })
}

#[test]
fn a_restart_on_the_same_port_after_sigterm_starts_at_once() {
    let mut first = Server::start(&["--shards", "2"]);
    let port = first.addr().port();
    let mut clients: Vec<Client> = (0..4)
        .map(|i| Client::ready(&first, Json, "app", &format!("c{i}")))
        .collect();
    // An HTTP request with `Connection: close`: the server closes first.
    assert_eq!(first.http("GET", "/api/version", &[], None).status, 200);
    first.terminate();
    for c in &mut clients {
        c.expect_op(OP_GOODBYE);
        c.expect_closed();
    }
    let status = first
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    // The server closed those connections first, so once the clients close
    // their side, the server's side waits out TIME_WAIT on the port: what
    // used to block a restart for a minute.
    drop(clients);
    let deadline = Instant::now() + STEP;
    while !time_wait_on(port) {
        assert!(
            Instant::now() < deadline,
            "no TIME_WAIT socket on port {port}: the test would prove nothing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = Server::start_on_port(port, &["--shards", "2"]);
    assert_eq!(second.addr().port(), port);
    let mut c = Client::ready(&second, Json, "app", "after-restart");
    c.heartbeat();
}
