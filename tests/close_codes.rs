//! Contract notation: "Close" means send the packet, then close the websocket
//! with code 1000 (none of the contract's closes states another code). Every
//! kind of server-initiated close is checked here, once; the other tests only
//! require that a close frame comes.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn error_closes_use_code_1000() {
    let server = Server::start(&["--auth", "pw", "--max-frame-size", "2048"]);
    let _first = Client::ready_with(&server, Json, "app", "taken", json!({"auth": "pw"}));
    type Trigger = Box<dyn Fn(&mut Client)>;
    let cases: Vec<(&str, Encoding, Trigger)> = vec![
        (
            texts::NOT_IDENTIFIED,
            Json,
            Box::new(|c| {
                c.send(OP_HEARTBEAT, json!({"client_id": "x"}), None);
            }),
        ),
        (
            texts::INVALID_CLIENT_ID,
            Msgpack,
            Box::new(|c| {
                c.send_identify("app", "a b", json!({}));
            }),
        ),
        (
            texts::INVALID_APPLICATION_ID,
            Json,
            Box::new(|c| {
                c.send_identify("", "x", json!({}));
            }),
        ),
        (
            "taken: already registered for app app",
            Json,
            Box::new(|c| {
                c.send_identify("app", "taken", json!({"auth": "pw"}));
            }),
        ),
        (
            texts::INITIAL_METADATA_INVALID,
            Json,
            Box::new(|c| {
                c.send_identify(
                    "app",
                    "m",
                    json!({"auth": "pw", "metadata": {"k": {"type": "x", "value": 1}}}),
                );
            }),
        ),
        (
            texts::RESTRICTED_ETF,
            Etf,
            Box::new(|c| {
                c.send_identify("app", "e", json!({}));
            }),
        ),
        (
            texts::FRAME_TOO_LARGE,
            Json,
            Box::new(|c| {
                c.send_message(tungstenite::Message::text("x".repeat(4096)));
            }),
        ),
    ];
    for (error, enc, trigger) in cases {
        let mut c = Client::connect(&server, enc);
        trigger(&mut c);
        let p = c.expect_op(OP_ERROR);
        assert_eq!(p["d"]["error"], json!(error));
        c.expect_closed_normally();
    }
}

#[test]
fn heartbeat_reaping_closes_with_code_1000() {
    let server = Server::start(&["--heartbeat-interval", "200"]);
    let mut c = Client::ready(&server, Json, "app", "silent");
    let p = c.recv_within(Duration::from_secs(2));
    assert_eq!(p["d"]["error"], json!(texts::HEARTBEAT_TOO_LONG));
    c.expect_closed_normally();
}

#[test]
fn shutdown_goodbye_closes_with_code_1000() {
    let mut server = Server::start(&[]);
    let mut c = Client::ready(&server, Msgpack, "app", "c");
    server.terminate();
    assert_eq!(c.expect_op(OP_GOODBYE)["d"], json!({"reason": "shutdown"}));
    c.expect_closed_normally();
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());
}
