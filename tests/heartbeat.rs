//! Heartbeats (contract §2, §8): the ack, `last_heartbeat_time`, and reaping
//! of a client that stops heartbeating, on the server's own timer.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn heartbeat_ack_names_the_client_in_every_encoding() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let id = format!("hb-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        for _ in 0..3 {
            c.send(OP_HEARTBEAT, json!({"client_id": id}), None);
            let p = c.expect_op(OP_HEARTBEAT_ACK);
            assert_eq!(p["d"], json!({"client_id": id}), "{enc:?}");
            assert_eq!(p["t"], Value::Null);
        }
    }
}

#[test]
fn a_heartbeat_updates_last_heartbeat_time() {
    let server = Server::start(&["--shards", "3"]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut c = Client::ready(&server, Etf, "app", "c");
    let read = |obs: &mut Client| {
        let nodes = obs.query_nodes(query("app"));
        node_of(&nodes, "c")["metadata"]["last_heartbeat_time"]
            .as_i64()
            .expect("last_heartbeat_time is an integer")
    };
    let first = read(&mut obs);
    // Make sure the clock moves on by a measurable amount.
    std::thread::sleep(Duration::from_millis(30));
    let before = now_ms();
    c.heartbeat();
    let after = now_ms();
    let second = read(&mut obs);
    assert!(
        second > first,
        "last_heartbeat_time moved: {first} -> {second}"
    );
    assert!(
        second >= before - 1 && second <= after + 1,
        "last_heartbeat_time {second} is the time of the heartbeat [{before}, {after}]"
    );
}

#[test]
fn a_silent_client_is_reaped() {
    let interval = 300u64;
    let server = Server::start(&["--heartbeat-interval", "300"]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::connect(&server, enc);
        assert_eq!(c.hello["d"], json!({"heartbeat_interval": interval}));
        c.identify("app", &format!("silent-{}", enc.name()), json!({}));
        let start = Instant::now();
        let p = c.recv_within(Duration::from_millis(interval * 3 / 2 + 1500));
        let elapsed = start.elapsed();
        assert_eq!(p["op"], json!(OP_ERROR), "{enc:?}: {p}");
        assert_eq!(p["d"]["error"], json!(texts::HEARTBEAT_TOO_LONG), "{enc:?}");
        c.expect_closed();
        assert!(
            elapsed >= Duration::from_millis(interval),
            "{enc:?}: reaped after {elapsed:?}, before even one interval"
        );
        assert!(
            elapsed <= Duration::from_millis(interval * 3 / 2 + 750),
            "{enc:?}: reaped only after {elapsed:?} (1.5 x {interval} ms + slack)"
        );
    }
}

#[test]
fn a_busy_client_that_does_not_heartbeat_is_reaped_all_the_same() {
    let interval = 300u64;
    let server = Server::start(&["--heartbeat-interval", "300"]);
    let mut c = Client::ready(&server, Json, "app", "busy");
    let start = Instant::now();
    let deadline = start + Duration::from_millis(interval * 3 / 2 + 1500);
    let mut n = 0;
    let error = loop {
        assert!(Instant::now() < deadline, "busy client was never reaped");
        // Packets other than heartbeats, all the time: they do not count.
        n += 1;
        let update =
            json!({"op": 4, "t": "UPDATE_METADATA", "d": {"n": {"type": "integer", "value": n}}});
        let listing = json!({"op": 4, "t": "QUERY_NODES", "d": query("app")});
        // A failed write means the server is closing: read what it sent.
        let _ = c.try_send_message(Json.encode(&update));
        let _ = c.try_send_message(Json.encode(&listing));
        match c.next_event(Duration::from_millis(40)) {
            Event::Packet(p) if p["op"] == json!(OP_ERROR) => break p,
            Event::Packet(p) => {
                assert_eq!(p["t"], json!("QUERY_NODES"), "{p}");
                continue;
            }
            Event::Timeout => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    let elapsed = start.elapsed();
    assert_eq!(error["d"]["error"], json!(texts::HEARTBEAT_TOO_LONG));
    assert!(
        elapsed <= Duration::from_millis(interval * 3 / 2 + 750),
        "reaped only after {elapsed:?}"
    );
    // Whatever replies were still in flight, the connection then closes.
    loop {
        match c.next_event(Duration::from_secs(2)) {
            Event::Packet(p) if p["t"] == json!("QUERY_NODES") => continue,
            Event::Closed(_, _) => break,
            other => panic!("expected close after the heartbeat error, got {other:?}"),
        }
    }
}

#[test]
fn a_client_heartbeating_every_interval_survives() {
    // Clients heartbeat every `heartbeat_interval`; the server allows 1.5x.
    // 800 ms leaves 400 ms of slack for a loaded machine to schedule us.
    let interval = 800u64;
    let server = Server::start(&["--heartbeat-interval", "800"]);
    let mut clients: Vec<Client> = ALL_ENCODINGS
        .iter()
        .map(|&e| Client::ready(&server, e, "app", &format!("alive-{}", e.name())))
        .collect();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_millis(interval * 4) {
        next += Duration::from_millis(interval);
        for c in clients.iter_mut() {
            c.heartbeat();
        }
        let now = Instant::now();
        if next > now {
            for c in clients.iter_mut() {
                // Nothing but silence between heartbeats: no error, no close.
                c.expect_nothing((next - now) / 3);
            }
        }
    }
    let ids = clients[0].query_ids(query("app"));
    assert_eq!(
        ids.len(),
        3,
        "all heartbeating clients still registered: {ids:?}"
    );
}

#[test]
fn a_reaped_client_is_gone_and_its_id_is_free() {
    let server = Server::start(&["--heartbeat-interval", "300", "--shards", "3"]);
    let mut silent = Client::ready(&server, Msgpack, "app", "silent");
    silent.expect_op(OP_ERROR);
    silent.expect_closed();
    let mut again = Client::ready(&server, Json, "app", "silent");
    again.heartbeat();
    let ids = again.query_ids(query("app"));
    assert_eq!(ids, set(&["silent"]));
}
