//! Transport (contract §1) and the first packet (§2): the websocket upgrade,
//! the three encodings, hello, pings and close.

mod common;

use common::*;
use tungstenite::Message;

const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

#[test]
fn no_encoding_parameter_means_json() {
    let server = Server::start(&[]);
    // Json's decoder insists on text frames: a binary hello would fail here.
    let mut c = Client::connect_url(&server, "/gateway/websocket", Json);
    let hello = c.expect_op(OP_HELLO);
    assert_eq!(hello["d"], json!({"heartbeat_interval": 45000}));
    assert_eq!(hello["t"], Value::Null);
    // And it keeps speaking JSON after identify.
    assert_eq!(
        c.identify("app", "c1", json!({})),
        json!({"client_id": "c1", "restricted": false})
    );
    c.heartbeat();
}

#[test]
fn hello_is_the_first_packet_in_every_encoding() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let before = now_ms();
        let mut c = Client::connect_raw(&server, enc);
        let hello = c.recv();
        let after = now_ms();
        assert_eq!(
            hello["op"],
            json!(OP_HELLO),
            "{enc:?}: first packet {hello}"
        );
        assert_eq!(hello["d"], json!({"heartbeat_interval": 45000}), "{enc:?}");
        assert_eq!(hello["t"], Value::Null, "{enc:?}");
        let ts = hello["ts"].as_i64().unwrap();
        assert!(
            ts >= before - 1000 && ts <= after + 1000,
            "{enc:?}: hello ts {ts} not within [{before}, {after}]"
        );
        assert_eq!(
            hello.as_object().unwrap().len(),
            4,
            "{enc:?}: hello has exactly op, d, t, ts: {hello}"
        );
    }
}

#[test]
fn hello_reports_the_configured_heartbeat_interval() {
    let server = Server::start(&["--heartbeat-interval", "1234"]);
    for enc in ALL_ENCODINGS {
        let c = Client::connect(&server, enc);
        assert_eq!(c.hello["d"], json!({"heartbeat_interval": 1234}), "{enc:?}");
    }
}

#[test]
fn unknown_encoding_is_refused_with_400_naming_the_valid_ones() {
    let server = Server::start(&[]);
    for bad in ["xml", "JSONX", "", "msgpackk"] {
        let resp = server.http(
            "GET",
            &format!("/gateway/websocket?encoding={bad}"),
            &UPGRADE_HEADERS,
            None,
        );
        assert_eq!(resp.status, 400, "encoding={bad:?}: {}", resp.text());
        assert!(
            resp.header("Sec-WebSocket-Accept").is_none(),
            "no upgrade for {bad:?}"
        );
        let body = resp.json();
        let text = body.to_string();
        for valid in ["json", "msgpack", "etf"] {
            assert!(
                text.contains(&format!("\"{valid}\"")),
                "400 body for {bad:?} does not name {valid:?}: {text}"
            );
        }
    }
    // The server still upgrades good requests afterwards.
    let c = Client::connect(&server, Msgpack);
    assert_eq!(c.hello["op"], json!(OP_HELLO));
}

#[test]
fn client_ping_gets_pong_with_the_same_payload() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::connect(&server, enc);
        c.send_message(Message::Ping(b"before-identify".to_vec().into()));
        match c.next_event(STEP) {
            Event::Pong(p) => assert_eq!(p, b"before-identify", "{enc:?}"),
            other => panic!("{enc:?}: expected a pong, got {other:?}"),
        }
        c.identify("app", &format!("pinger-{}", enc.name()), json!({}));
        c.send_message(Message::Ping(b"after".to_vec().into()));
        match c.next_event(STEP) {
            Event::Pong(p) => assert_eq!(p, b"after", "{enc:?}"),
            other => panic!("{enc:?}: expected a pong, got {other:?}"),
        }
        // A ping is not a packet: the connection goes on normally.
        c.heartbeat();
    }
}

#[test]
fn client_close_gets_a_close_reply() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        // Before identify.
        let c = Client::connect(&server, enc);
        c.close();
        // After identify.
        let c = Client::ready(&server, enc, "app", &format!("closer-{}", enc.name()));
        c.close();
    }
    // The server is still serving.
    let mut c = Client::ready(&server, Json, "app", "after");
    c.heartbeat();
}

#[test]
fn many_connections_each_get_their_own_hello() {
    let server = Server::start(&["--shards", "3"]);
    let mut clients: Vec<Client> = (0..12)
        .map(|i| Client::connect(&server, ALL_ENCODINGS[i % 3]))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.hello["d"], json!({"heartbeat_interval": 45000}));
        c.identify("many", &format!("m{i}"), json!({}));
    }
    let ids = clients[0].query_ids(query("many"));
    assert_eq!(ids.len(), 12);
}
