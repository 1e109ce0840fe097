//! Bad input after identify (contract §2, §6): undecodable frames, frames of
//! the wrong kind, non-packets, unknown ops and events, ill-formed dispatches.
//! Each is answered with invalid (op 3) and the connection stays usable.
//! (Errors before identify are in identify.rs, size limits in limits.rs.)

mod common;

use common::*;
use tungstenite::Message;

/// After each rejected frame, the connection still works.
fn still_works(c: &mut Client) {
    c.heartbeat();
}

#[test]
fn undecodable_frames_are_invalid_and_keep_the_connection() {
    let server = Server::start(&[]);
    let cases: [(Encoding, Vec<Message>); 3] = [
        (
            Json,
            vec![
                Message::text("not json{"),
                Message::text(""),
                Message::text("{\"op\": 5, \"d\": {"),
            ],
        ),
        (
            Msgpack,
            vec![
                Message::binary(vec![0xc1]),
                Message::binary(vec![0x82, 0xa2, b'o']),
                Message::binary(Vec::new()),
            ],
        ),
        (
            Etf,
            vec![
                Message::binary(vec![131, 255]),
                Message::binary(vec![1, 2, 3]),
                Message::binary(vec![131, 116, 0, 0, 0, 5]),
                Message::binary(Vec::new()),
            ],
        ),
    ];
    for (enc, frames) in cases {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for f in frames {
            let shown = format!("{f:?}");
            c.send_message(f);
            let p = c.expect_op(OP_INVALID);
            assert_eq!(
                p["d"]["error"],
                json!(texts::CANNOT_DECODE),
                "{enc:?} {shown}"
            );
            still_works(&mut c);
        }
    }
}

#[test]
fn a_frame_of_the_wrong_kind_is_a_decode_error() {
    let server = Server::start(&[]);
    let hb = |id: &str| json!({"op": 5, "d": {"client_id": id}});
    // JSON sent as a binary frame on a json connection.
    let mut c = Client::ready(&server, Json, "app", "j");
    c.send_message(Message::binary(hb("j").to_string().into_bytes()));
    c.expect_invalid(texts::CANNOT_DECODE);
    still_works(&mut c);
    // Text frames on msgpack and etf connections, whatever they hold.
    for enc in [Msgpack, Etf] {
        let id = format!("c-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        c.send_message(Message::text(hb(&id).to_string()));
        c.expect_invalid(texts::CANNOT_DECODE);
        still_works(&mut c);
    }
    // A msgpack frame on an etf connection and vice versa.
    let mut m = Client::ready(&server, Msgpack, "app", "m2");
    m.send_message(Message::binary(etf_encode(&hb("m2"), false)));
    m.expect_invalid(texts::CANNOT_DECODE);
    still_works(&mut m);
    let mut e = Client::ready(&server, Etf, "app", "e2");
    e.send_message(Message::binary(rmp_serde::to_vec_named(&hb("e2")).unwrap()));
    e.expect_invalid(texts::CANNOT_DECODE);
    still_works(&mut e);
}

#[test]
fn packets_that_are_not_objects_cannot_be_decoded() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for v in [
            json!([1, 2]),
            json!("op"),
            json!(42),
            json!(null),
            json!(true),
        ] {
            c.send_packet(&v);
            let p = c.expect_op(OP_INVALID);
            assert_eq!(p["d"]["error"], json!(texts::CANNOT_DECODE), "{enc:?} {v}");
            still_works(&mut c);
        }
    }
}

#[test]
fn unknown_opcodes_are_invalid_op() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for op in [9i64, 42, 255, 1000] {
            c.send_packet(&json!({"op": op, "d": {}}));
            c.expect_invalid(texts::INVALID_OP);
            still_works(&mut c);
        }
        // Not a usable opcode at all: rejected as an op or as undecodable.
        for bad in [
            json!({"op": -1, "d": {}}),
            json!({"op": "4", "d": {}}),
            json!({"op": 4.5, "d": {}}),
            json!({"d": {}}),
        ] {
            c.send_packet(&bad);
            let p = c.expect_op(OP_INVALID);
            let e = p["d"]["error"].clone();
            assert!(
                e == json!(texts::INVALID_OP) || e == json!(texts::CANNOT_DECODE),
                "{enc:?} {bad}: {p}"
            );
            still_works(&mut c);
        }
    }
}

#[test]
fn server_to_client_opcodes_from_a_client_are_invalid() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for op in [
            OP_HELLO,
            OP_READY,
            OP_INVALID,
            OP_HEARTBEAT_ACK,
            OP_GOODBYE,
            OP_ERROR,
        ] {
            c.send_packet(&json!({"op": op, "d": {"error": "x", "reason": "y", "client_id": "z"}}));
            let p = c.expect_op(OP_INVALID);
            assert!(p["d"]["error"].is_string(), "{enc:?} op {op}: {p}");
            still_works(&mut c);
        }
    }
}

#[test]
fn unknown_dispatch_events_are_invalid_dispatch_payload() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for t in ["NOPE", "send", "Broadcast", ""] {
            c.dispatch(
                t,
                json!({"target": query("app"), "nonce": null, "payload": 1}),
            );
            c.expect_invalid(texts::INVALID_DISPATCH_PAYLOAD);
            still_works(&mut c);
        }
        // A dispatch with no t at all.
        c.send_packet(
            &json!({"op": 4, "d": {"target": query("app"), "nonce": null, "payload": 1}}),
        );
        c.expect_invalid(texts::INVALID_DISPATCH_PAYLOAD);
        still_works(&mut c);
    }
}

#[test]
fn send_and_broadcast_with_missing_or_ill_typed_fields() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let app = format!("app-{}", enc.name());
        let mut c = Client::ready(&server, enc, &app, "c");
        for t in ["SEND", "BROADCAST"] {
            for d in [
                json!({"nonce": null, "payload": 1}),
                json!("target"),
                json!([query(&app)]),
                Value::Null,
            ] {
                c.dispatch(t, d.clone());
                let p = c.expect_op(OP_INVALID);
                assert_eq!(
                    p["d"]["error"],
                    json!(texts::INVALID_DISPATCH_PAYLOAD),
                    "{enc:?} {t} {d}"
                );
                let extra = &p["d"]["extra_info"];
                assert!(
                    extra.as_str().is_some_and(|s| !s.is_empty()),
                    "{enc:?} {t} {d}: detail {extra}"
                );
                still_works(&mut c);
            }
            // A target that is there but not a query object: an ill-typed
            // field or a malformed query, both readings are fair.
            for target in [Value::Null, json!(5), json!("app")] {
                c.dispatch(t, json!({"target": target, "nonce": null, "payload": 1}));
                let p = c.expect_op(OP_INVALID);
                let e = p["d"]["error"].as_str().unwrap_or_default().to_string();
                assert!(
                    e == texts::INVALID_DISPATCH_PAYLOAD
                        || e.starts_with(texts::INVALID_QUERY_PREFIX),
                    "{enc:?} {t} target {target}: {p}"
                );
                still_works(&mut c);
            }
        }
        // Nothing was delivered by any of it.
        c.expect_quiet();
    }
}

#[test]
fn update_metadata_that_is_not_a_map_is_invalid() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for d in [json!([1]), json!("x"), json!(5), Value::Null] {
            c.update_metadata(d.clone());
            let p = c.expect_op(OP_INVALID);
            let e = p["d"]["error"].clone();
            assert!(
                e == json!(texts::INVALID_METADATA) || e == json!(texts::INVALID_DISPATCH_PAYLOAD),
                "{enc:?} {d}: {p}"
            );
            still_works(&mut c);
        }
    }
}

#[test]
fn query_nodes_with_a_non_object_query_is_invalid() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::ready(&server, enc, "app", &format!("c-{}", enc.name()));
        for d in [json!([1]), json!("app"), json!(5)] {
            c.dispatch("QUERY_NODES", d.clone());
            let p = c.expect_op(OP_INVALID);
            let e = p["d"]["error"].as_str().unwrap_or_default().to_string();
            assert!(
                e.starts_with(texts::INVALID_QUERY_PREFIX) || e == texts::INVALID_DISPATCH_PAYLOAD,
                "{enc:?} {d}: {p}"
            );
            still_works(&mut c);
        }
    }
}

#[test]
fn a_flood_of_garbage_does_not_disturb_other_clients() {
    let server = Server::start(&["--shards", "3"]);
    let mut victim = Client::ready(&server, Json, "victims", "v");
    let mut noisy: Vec<Client> = ALL_ENCODINGS
        .iter()
        .map(|&e| Client::ready(&server, e, "noisy", &format!("n-{}", e.name())))
        .collect();
    for round in 0..50 {
        for n in noisy.iter_mut() {
            let f = match n.enc {
                Json => Message::text(format!("{{{round}")),
                _ => Message::binary(vec![0xc1, round as u8, 0xff]),
            };
            n.send_message(f);
        }
    }
    for n in noisy.iter_mut() {
        for _ in 0..50 {
            n.expect_invalid(texts::CANNOT_DECODE);
        }
        n.send_to(query("victims"), json!(n.enc.name()), json!("still here"));
    }
    for _ in 0..3 {
        let d = victim.expect_dispatch("SEND");
        assert_eq!(d["payload"], json!("still here"));
    }
    victim.heartbeat();
}
