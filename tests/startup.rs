//! Starting on a port another server already holds fails clearly instead of
//! silently sharing it (the shards' listeners use SO_REUSEPORT).

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
