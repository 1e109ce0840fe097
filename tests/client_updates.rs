//! CLIENT_CONNECTED / CLIENT_DISCONNECTED (contract §6): exact payload, only
//! for clients that asked with `receive_client_updates`, from every shard,
//! for every way a connection can end.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn subscriber(server: &Server, enc: Encoding, id: &str) -> Client {
    Client::ready_with(
        server,
        enc,
        "watchers",
        id,
        json!({"receive_client_updates": true}),
    )
}

/// The next packet that is not a client update about the "watchers" app (the
/// subscribers themselves: whether one hears of itself, and when it hears of
/// an earlier subscriber leaving, is not what these tests are about).
fn next_about_others(s: &mut Client) -> Value {
    loop {
        let p = s.recv();
        if p["d"]["payload"]["app"] == json!("watchers") {
            continue;
        }
        return p;
    }
}

#[test]
fn connect_and_disconnect_are_announced_with_the_exact_payload() {
    for enc in ALL_ENCODINGS {
        let server = Server::start(&[]);
        let mut s = subscriber(&server, enc, &format!("sub-{}", enc.name()));
        for (i, xenc) in ALL_ENCODINGS.into_iter().enumerate() {
            let xid = format!("x{i}-{}", enc.name());
            let x = Client::ready(&server, xenc, "other-app", &xid);
            let p = next_about_others(&mut s);
            assert_eq!(
                p,
                json!({"op": 4, "t": "CLIENT_CONNECTED", "ts": p["ts"],
                       "d": {"nonce": null, "payload": {"app": "other-app", "client_id": xid}}}),
                "{enc:?}"
            );
            x.close();
            let p = next_about_others(&mut s);
            assert_eq!(
                p,
                json!({"op": 4, "t": "CLIENT_DISCONNECTED", "ts": p["ts"],
                       "d": {"nonce": null, "payload": {"app": "other-app", "client_id": xid}}}),
                "{enc:?}"
            );
            s.expect_quiet();
        }
    }
}

#[test]
fn only_subscribers_hear_updates() {
    let server = Server::start(&[]);
    let mut yes = subscriber(&server, Msgpack, "yes");
    let mut absent = Client::ready(&server, Json, "watchers", "absent");
    let mut no = Client::ready_with(
        &server,
        Etf,
        "watchers",
        "no",
        json!({"receive_client_updates": false}),
    );
    // The two non-subscribers connecting are announced to the subscriber.
    yes.expect_client_update("CLIENT_CONNECTED", "watchers", "absent");
    yes.expect_client_update("CLIENT_CONNECTED", "watchers", "no");
    let x = Client::ready(&server, Json, "app", "x");
    yes.expect_client_update("CLIENT_CONNECTED", "app", "x");
    x.drop_tcp();
    yes.expect_client_update("CLIENT_DISCONNECTED", "app", "x");
    absent.expect_quiet();
    no.expect_quiet();
    absent.heartbeat();
    no.heartbeat();
}

#[test]
fn updates_reach_subscribers_on_every_shard() {
    let server = Server::start(&["--shards", "3"]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut subs = spread(
        &server,
        &mut obs,
        "watchers",
        3,
        &ALL_ENCODINGS,
        json!({"receive_client_updates": true}),
    );
    assert!(shard_set(&subs).len() >= 3);
    for round in 0..3 {
        // Six newcomers land on random shards.
        let xs: Vec<Client> = (0..6)
            .map(|i| {
                Client::ready(
                    &server,
                    ALL_ENCODINGS[i % 3],
                    "app",
                    &format!("x{round}-{i}"),
                )
            })
            .collect();
        let names: Vec<String> = (0..6).map(|i| format!("x{round}-{i}")).collect();
        for s in subs.iter_mut() {
            s.client
                .expect_client_updates("CLIENT_CONNECTED", "app", &names);
        }
        for (i, x) in xs.into_iter().enumerate() {
            if i % 2 == 0 { x.close() } else { x.drop_tcp() }
        }
        for s in subs.iter_mut() {
            s.client
                .expect_client_updates("CLIENT_DISCONNECTED", "app", &names);
        }
        let mut refs: Vec<&mut Client> = subs.iter_mut().map(|m| &mut m.client).collect();
        expect_all_quiet(&mut refs, QUIET);
    }
}

#[test]
fn rejected_identifies_are_not_announced() {
    let server = Server::start(&["--auth", "pw"]);
    let mut s = Client::ready_with(
        &server,
        Json,
        "watchers",
        "s",
        json!({"auth": "pw", "receive_client_updates": true}),
    );
    let mut x = Client::ready_with(&server, Json, "app", "x", json!({"auth": "pw"}));
    s.expect_client_update("CLIENT_CONNECTED", "app", "x");
    // A duplicate, a bad client_id, bad initial metadata, a restricted etf client.
    let mut dup = Client::connect(&server, Json);
    dup.send_identify("app", "x", json!({"auth": "pw"}));
    dup.expect_error_close(&texts::duplicate("x", "app"));
    let mut bad = Client::connect(&server, Json);
    bad.send_identify("app", "has space", json!({}));
    bad.expect_error_close(texts::INVALID_CLIENT_ID);
    let mut badmeta = Client::connect(&server, Json);
    badmeta.send_identify(
        "app",
        "y",
        json!({"metadata": {"k": {"type": "nope", "value": 1}}}),
    );
    badmeta.expect_error_close(texts::INITIAL_METADATA_INVALID);
    let mut etf = Client::connect(&server, Etf);
    etf.send_identify("app", "z", json!({}));
    etf.expect_error_close(texts::RESTRICTED_ETF);
    s.expect_quiet();
    // x is untouched and its later departure is announced once.
    x.heartbeat();
    x.close();
    s.expect_client_update("CLIENT_DISCONNECTED", "app", "x");
    s.expect_quiet();
}

#[test]
fn restricted_clients_are_announced_but_never_told() {
    let server = Server::start(&["--auth", "pw"]);
    let mut s = Client::ready_with(
        &server,
        Msgpack,
        "watchers",
        "s",
        json!({"auth": "pw", "receive_client_updates": true}),
    );
    let mut r = Client::ready_with(
        &server,
        Json,
        "app",
        "r",
        json!({"receive_client_updates": true}),
    );
    s.expect_client_update("CLIENT_CONNECTED", "app", "r");
    let y = Client::ready_with(&server, Json, "app", "y", json!({"auth": "pw"}));
    s.expect_client_update("CLIENT_CONNECTED", "app", "y");
    y.close();
    s.expect_client_update("CLIENT_DISCONNECTED", "app", "y");
    r.expect_quiet();
    r.close();
    s.expect_client_update("CLIENT_DISCONNECTED", "app", "r");
}

#[test]
fn a_reaped_client_is_announced_as_disconnected() {
    let server = Server::start(&["--heartbeat-interval", "300", "--shards", "3"]);
    let mut s = subscriber(&server, Json, "s");
    let mut x = Client::ready(&server, Msgpack, "app", "x");
    s.expect_client_update("CLIENT_CONNECTED", "app", "x");
    // s keeps heartbeating; x stays silent until the server reaps it.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut next_beat = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "x's reaping was never announced");
        if Instant::now() >= next_beat {
            let id = s.id().to_string();
            s.send(OP_HEARTBEAT, json!({"client_id": id}), None);
            next_beat += Duration::from_millis(150);
        }
        match s.next_event(Duration::from_millis(20)) {
            Event::Packet(p) if p["op"] == json!(OP_HEARTBEAT_ACK) => {}
            Event::Packet(p) if p["t"] == json!("CLIENT_DISCONNECTED") => {
                assert_eq!(
                    p["d"],
                    json!({"nonce": null, "payload": {"app": "app", "client_id": "x"}})
                );
                break;
            }
            Event::Timeout => {}
            other => panic!("subscriber got {other:?}"),
        }
    }
    x.expect_op(OP_ERROR);
}
