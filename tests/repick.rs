//! A SEND never fails with `no_route` while a client that matches and can
//! receive is connected (issue 13, point 7).
//!
//! The window this guards: a client used to enter its shard's store (and so
//! every pick) before the registry on another shard confirmed its name, and
//! to be reachable only after; a pick in between chose a client with no
//! connection and the SEND failed with `no_route`. It opens on every identify
//! whose name is registered on another shard than the connection's, so with
//! two shards it opens on about half of them. Here clients that a selector or
//! a `key` prefers connect, identify and leave in a tight loop while a
//! sender SENDs to their application, where one steady client matches all
//! along: no SEND may fail.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long clients churn while the sender sends.
const CHURN: Duration = Duration::from_millis(1500);
/// SENDs written before each round trip that collects their outcomes.
const BATCH: usize = 25;

/// Sends to `target` while clients of app `w` (identified with `churn_extra`)
/// connect and leave, a steady client `steady` (identified with
/// `steady_extra`) matching throughout; returns (SENDs, no_route answers).
fn sends_while_clients_churn(target: Value, steady_extra: Value, churn_extra: Value) -> (u64, u64) {
    let server = Server::start(&["--shards", "2"]);
    let mut steady = Client::ready_with(&server, Encoding::Json, "w", "steady", steady_extra);
    let sender = Client::ready(&server, Encoding::Json, "s", "sender");
    let stop = Arc::new(AtomicBool::new(false));

    // The steady client reads what it gets so it never becomes a slow
    // consumer.
    let drain = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = steady.next_event(Duration::from_millis(20));
            }
            steady
        })
    };
    let send = {
        let stop = stop.clone();
        thread::spawn(move || send_until(sender, target, &stop))
    };

    let end = Instant::now() + CHURN;
    let mut n = 0;
    while Instant::now() < end {
        let c = Client::ready_with(
            &server,
            Encoding::Json,
            "w",
            &format!("c{n}"),
            churn_extra.clone(),
        );
        // Half leave abruptly, half with a close frame first (a churning
        // client may have been sent SENDs, so no reply is awaited).
        let mut c = c;
        if n % 2 == 1 {
            c.send_close();
        }
        c.drop_tcp();
        n += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let counts = send.join().expect("sender thread");
    let _steady = drain.join().expect("drain thread");
    assert!(
        n > 50,
        "only {n} clients churned: the test did not exercise anything"
    );
    counts
}

/// SENDs to `target` in batches until `stop`, each batch followed by a
/// heartbeat whose ack proves every outcome of the batch has arrived.
fn send_until(mut sender: Client, target: Value, stop: &AtomicBool) -> (u64, u64) {
    let (mut sent, mut no_route) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..BATCH {
            sender.send_to(target.clone(), json!(sent), json!("x"));
            sent += 1;
        }
        sender.send(OP_HEARTBEAT, json!({"client_id": "sender"}), None);
        loop {
            let p = sender.recv();
            match p["op"].as_u64() {
                Some(OP_HEARTBEAT_ACK) => break,
                Some(OP_INVALID) if p["d"]["error"] == json!(texts::NO_ROUTE) => no_route += 1,
                _ => panic!("sender: unexpected packet {p}"),
            }
        }
    }
    (sent, no_route)
}

fn load(n: i64) -> Value {
    json!({"metadata": {"load": meta("integer", json!(n))}})
}

#[test]
fn a_selector_never_picks_a_client_that_cannot_receive_yet() {
    // Every churning client has the lowest load: `$min` picks it whenever
    // it is in the store.
    let target = with(query("w"), "selector", json!({"$min": "load"}));
    let (sent, no_route) = sends_while_clients_churn(target, load(10), load(1));
    assert_eq!(
        no_route, 0,
        "{no_route} of {sent} SENDs failed with no_route while `steady` matched"
    );
}

#[test]
fn a_key_never_picks_a_client_that_cannot_receive_yet() {
    // About half the churning clients outscore `steady` for this key.
    let target = with(query("w"), "key", json!("k"));
    let (sent, no_route) = sends_while_clients_churn(target, json!({}), json!({}));
    assert_eq!(
        no_route, 0,
        "{no_route} of {sent} SENDs failed with no_route while `steady` matched"
    );
}

/// A client the server is closing (here: its heartbeat is overdue, and it
/// does not answer the close) stays connected for a grace period, but
/// nothing queued for it is written any more. A SEND that would have chosen
/// it goes to another match instead of being lost.
#[test]
fn a_send_never_goes_to_a_client_being_closed() {
    let server = Server::start(&["--shards", "1", "--heartbeat-interval", "400"]);
    let mut steady = Client::ready_with(&server, Encoding::Json, "w", "steady", load(10));
    let mut sender = Client::ready(&server, Encoding::Json, "s", "sender");
    let mut silent = Client::ready_with(&server, Encoding::Json, "w", "silent", load(1));
    // Keep the others alive until the server gives up on `silent`; read
    // only its error packet, so its close is never answered and the server
    // holds the connection open for its grace period.
    let deadline = Instant::now() + STEP;
    loop {
        steady.heartbeat();
        sender.heartbeat();
        match silent.next_event(Duration::from_millis(100)) {
            Event::Timeout => assert!(Instant::now() < deadline, "`silent` was never closed"),
            Event::Packet(p) if p["op"] == json!(OP_ERROR) => break,
            other => panic!("silent: unexpected {other:?}"),
        }
    }
    let target = with(query("w"), "selector", json!({"$min": "load"}));
    for n in 0..20 {
        sender.send_to(target.clone(), json!(n), json!("x"));
    }
    for n in 0..20 {
        steady.expect_message("SEND", &json!(n), &json!("x"));
    }
    sender.sync();
    // Nor is it listed as connected.
    assert_eq!(sender.query_ids(query("w")), set(&["steady"]));
    // Re-picks (none needed here: the shard skipped `silent` itself) and
    // encode failures are counted.
    let metrics = server.http("GET", "/metrics", &[], None).text();
    assert!(
        metrics.contains("singyeong_send_repicks_total{shard=\"0\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("singyeong_encode_errors_total 0"),
        "{metrics}"
    );
}
