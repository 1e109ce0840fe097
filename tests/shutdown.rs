//! Graceful shutdown (the server's CLI contract): on SIGTERM or SIGINT every
//! client gets goodbye (op 7, reason "shutdown") and a close, and the process
//! exits 0 within a few seconds.

mod common;

use common::*;
use std::time::Duration;

fn goodbye_then_close(c: &mut Client) {
    let p = c.expect_op(OP_GOODBYE);
    assert_eq!(p["d"], json!({"reason": "shutdown"}), "{}", c.label());
    assert_eq!(p["t"], Value::Null);
    c.expect_closed();
}

fn check_shutdown(signal: &str) {
    let mut server = Server::start(&["--shards", "3"]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut members = spread(&server, &mut obs, "app", 6, &ALL_ENCODINGS, json!({}));
    assert!(shard_set(&members).len() >= 3);
    server.signal(signal);
    goodbye_then_close(&mut obs);
    for m in members.iter_mut() {
        goodbye_then_close(&mut m.client);
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIG{signal}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{signal}: {status}"
    );
    assert!(
        server.extra_stdout_lines().is_empty(),
        "the listening line is the only stdout output"
    );
}

#[test]
fn sigterm_says_goodbye_to_every_client_and_exits_0() {
    check_shutdown("TERM");
}

#[test]
fn sigint_says_goodbye_to_every_client_and_exits_0() {
    check_shutdown("INT");
}

#[test]
fn an_idle_server_exits_0_on_sigterm() {
    let mut server = Server::start(&[]);
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn clients_in_the_middle_of_traffic_still_get_goodbye() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut a = Client::ready(&server, Msgpack, "app", "a");
    let mut b = Client::ready(&server, Etf, "app", "b");
    for i in 0..200 {
        a.broadcast(query("app"), json!(i), json!("busy"));
    }
    server.terminate();
    for c in [&mut a, &mut b] {
        // Whatever broadcasts were already on their way come first.
        loop {
            let p = c.recv();
            if p["op"] == json!(OP_DISPATCH) {
                assert_eq!(p["t"], json!("BROADCAST"));
                continue;
            }
            assert_eq!(p["op"], json!(OP_GOODBYE), "{p}");
            assert_eq!(p["d"], json!({"reason": "shutdown"}));
            break;
        }
        c.expect_closed();
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn connections_not_yet_identified_get_goodbye_too() {
    let mut server = Server::start(&["--shards", "3"]);
    let mut waiting: Vec<Client> = (0..6)
        .map(|i| Client::connect(&server, ALL_ENCODINGS[i % 3]))
        .collect();
    // One round trip through a fresh client proves the server has accepted
    // all of them before the signal.
    let mut last = Client::ready(&server, Json, "app", "last");
    last.heartbeat();
    server.terminate();
    for c in waiting.iter_mut().chain(std::iter::once(&mut last)) {
        goodbye_then_close(c);
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_client_that_never_reads_does_not_hold_up_shutdown() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut sender = Client::ready(&server, Json, "src", "sender");
    let _stuck = Client::ready(&server, Json, "sink", "stuck");
    // ~6 MiB towards a client that never reads: its socket buffers fill and
    // the rest waits in the server's outbound queue (under the 8 MiB bound).
    let chunk = "y".repeat(64 * 1024);
    for i in 0..96 {
        sender.broadcast(query("sink"), json!(i), json!(chunk));
    }
    sender.heartbeat();
    server.terminate();
    goodbye_then_close(&mut sender);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("a client that never reads must not keep the server from exiting");
    assert_eq!(status.code(), Some(0), "{status}");
}
