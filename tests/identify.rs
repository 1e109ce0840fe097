//! Identify (contract §3): every field, every error, duplicates, auth and the
//! restricted-client rules.

mod common;

use common::*;

/// The `<client>` object of `id` in `app`, seen by `observer`.
fn node(observer: &mut Client, app: &str, id: &str) -> Value {
    let nodes = observer.query_nodes(json!({"application": app, "restricted": true}));
    node_of(&nodes, id).clone()
}

#[test]
fn identify_succeeds_in_every_encoding() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::connect(&server, enc);
        let d = c.identify("app", &format!("c-{}", enc.name()), json!({}));
        assert_eq!(
            d,
            json!({"client_id": format!("c-{}", enc.name()), "restricted": false}),
            "{enc:?}"
        );
        c.heartbeat();
    }
}

#[test]
fn etf_maps_with_atom_keys_are_read_as_strings() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server, Etf);
    let packet = json!({"op": 1, "d": {"client_id": "atoms", "application_id": "app",
        "metadata": {"k": {"type": "integer", "value": 7}}}});
    c.send_message(tungstenite::Message::binary(etf_encode(&packet, true)));
    let ready = c.expect_op(OP_READY);
    assert_eq!(
        ready["d"],
        json!({"client_id": "atoms", "restricted": false})
    );
    c.id = Some("atoms".into());
    let hb = json!({"op": 5, "d": {"client_id": "atoms"}});
    c.send_message(tungstenite::Message::binary(etf_encode(&hb, true)));
    assert_eq!(
        c.expect_op(OP_HEARTBEAT_ACK)["d"],
        json!({"client_id": "atoms"})
    );
    let n = node(&mut c, "app", "atoms");
    assert_eq!(n["metadata"]["k"], json!(7));
}

#[test]
fn identify_with_explicit_null_t_is_accepted() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::connect(&server, enc);
        let id = format!("nt-{}", enc.name());
        c.send_packet(
            &json!({"op": 1, "t": null, "d": {"client_id": id, "application_id": "app"}}),
        );
        assert_eq!(
            c.expect_op(OP_READY)["d"],
            json!({"client_id": id, "restricted": false})
        );
    }
}

#[test]
fn identify_fields_become_reserved_metadata() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let id = format!("full-{}", enc.name());
        let before = now_ms();
        let mut c = Client::ready_with(
            &server,
            enc,
            "app",
            &id,
            json!({
                "ip": "10.1.2.3:8080",
                "namespace": "ns-1",
                "receive_client_updates": true,
                "metadata": {"port": {"type": "integer", "value": 8080},
                             "tags": {"type": "list", "value": ["a", "b"]}},
            }),
        );
        let after = now_ms();
        let mut obs = Client::ready(&server, Json, "observer", &format!("obs-{}", enc.name()));
        // c asked for client updates: it hears about the observer.
        c.expect_client_update(
            "CLIENT_CONNECTED",
            "observer",
            &format!("obs-{}", enc.name()),
        );
        let n = node(&mut obs, "app", &id);
        assert_eq!(n["app_id"], json!("app"));
        assert_eq!(n["client_id"], json!(id));
        assert_eq!(n["queues"], json!([]));
        assert!(
            n["socket_ip"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1")),
            "socket_ip is the peer address: {n}"
        );
        let m = &n["metadata"];
        assert_eq!(m["ip"], json!("10.1.2.3:8080"), "{n}");
        assert_eq!(m["namespace"], json!("ns-1"), "{n}");
        assert_eq!(m["receive_client_updates"], json!(true), "{n}");
        assert_eq!(m["restricted"], json!(false), "{n}");
        assert_eq!(m["encoding"], json!(enc.name()), "{n}");
        assert_eq!(m["port"], json!(8080), "{n}");
        assert_eq!(m["tags"], json!(["a", "b"]), "{n}");
        let hb = m["last_heartbeat_time"]
            .as_i64()
            .unwrap_or_else(|| panic!("{n}"));
        assert!(
            hb >= before - 1000 && hb <= after + 1000,
            "last_heartbeat_time {hb}: {n}"
        );
        let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            vec![
                "encoding",
                "ip",
                "last_heartbeat_time",
                "namespace",
                "port",
                "receive_client_updates",
                "restricted",
                "tags"
            ],
            "exactly the reserved keys plus the client's own: {n}"
        );
    }
}

#[test]
fn optional_fields_have_defaults() {
    let server = Server::start(&[]);
    let mut c = Client::ready(&server, Msgpack, "app", "bare");
    let n = node(&mut c, "app", "bare");
    let m = &n["metadata"];
    assert!(
        m["ip"].as_str().is_some_and(|s| s.starts_with("127.0.0.1")),
        "ip defaults to the peer address: {n}"
    );
    assert_eq!(m["namespace"], Value::Null, "{n}");
    assert_eq!(m["receive_client_updates"], json!(false), "{n}");
    assert_eq!(m["restricted"], json!(false), "{n}");
    assert_eq!(m["encoding"], json!("msgpack"), "{n}");
    // Without receive_client_updates, no client updates arrive.
    let _other = Client::ready(&server, Json, "app", "other");
    c.expect_quiet();
}

#[test]
fn ip_accepts_host_host_port_and_urls() {
    let server = Server::start(&[]);
    let mut obs = Client::ready(&server, Json, "observer", "obs");
    for (i, ip) in [
        "example.internal",
        "10.0.0.1:4000",
        "http://svc:8080",
        "https://svc.example/base",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("ip{i}");
        let _c = Client::ready_with(&server, Json, "app", &id, json!({"ip": ip}));
        assert_eq!(node(&mut obs, "app", &id)["metadata"]["ip"], json!(ip));
    }
}

fn bad_ids() -> Vec<(&'static str, Option<Value>)> {
    vec![
        ("missing", None),
        ("empty", Some(json!(""))),
        ("inner space", Some(json!("a b"))),
        ("leading space", Some(json!(" a"))),
        ("tab", Some(json!("a\tb"))),
        ("newline", Some(json!("a\n"))),
        ("integer", Some(json!(123))),
        ("null", Some(Value::Null)),
        ("list", Some(json!(["a"]))),
        ("object", Some(json!({"a": 1}))),
    ]
}

#[test]
fn bad_client_id_is_an_error_and_closes() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        for (what, v) in bad_ids() {
            let mut c = Client::connect(&server, enc);
            let mut d = json!({"application_id": "app"});
            if let Some(v) = v {
                d["client_id"] = v;
            }
            c.send(OP_IDENTIFY, d, None);
            let p = c.expect_op(OP_ERROR);
            assert_eq!(
                p["d"]["error"],
                json!(texts::INVALID_CLIENT_ID),
                "{enc:?} {what}"
            );
            c.expect_closed();
        }
    }
}

#[test]
fn bad_application_id_is_an_error_and_closes() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        for (what, v) in bad_ids() {
            let mut c = Client::connect(&server, enc);
            let mut d = json!({"client_id": "c1"});
            if let Some(v) = v {
                d["application_id"] = v;
            }
            c.send(OP_IDENTIFY, d, None);
            let p = c.expect_op(OP_ERROR);
            assert_eq!(
                p["d"]["error"],
                json!(texts::INVALID_APPLICATION_ID),
                "{enc:?} {what}"
            );
            c.expect_closed();
        }
    }
    // Nothing half-registered: the good id is free.
    let _c = Client::ready(&server, Json, "app", "c1");
}

#[test]
fn duplicate_is_rejected_and_the_existing_connection_is_untouched() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let id = format!("dup-{}", enc.name());
        let mut first = Client::ready_with(
            &server,
            enc,
            "app",
            &id,
            json!({"metadata": {"gen": {"type": "integer", "value": 1}}}),
        );
        for enc2 in ALL_ENCODINGS {
            let mut second = Client::connect(&server, enc2);
            second.send_identify(
                "app",
                &id,
                json!({"metadata": {"gen": {"type": "integer", "value": 2}}}),
            );
            second.expect_error_close(&texts::duplicate(&id, "app"));
        }
        // The first connection still works, and still is the one registered.
        first.heartbeat();
        let mut sender = Client::ready(&server, Json, "senders", &format!("s-{}", enc.name()));
        let nodes = sender.query_nodes(query("app"));
        let mine: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["client_id"] == json!(id))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "exactly one registration for {id}: {nodes:?}"
        );
        assert_eq!(
            mine[0]["metadata"]["gen"],
            json!(1),
            "the first client's metadata"
        );
        let target = query_ops(
            "app",
            json!([
                op("/gen", "$eq", json!(1)),
                op("/encoding", "$eq", json!(enc.name()))
            ]),
        );
        sender.send_to(target, json!("n1"), json!({"hello": enc.name()}));
        first.expect_message("SEND", &json!("n1"), &json!({"hello": enc.name()}));
    }
}

#[test]
fn same_client_id_in_another_app_and_other_ids_in_the_same_app_are_fine() {
    let server = Server::start(&[]);
    let _a = Client::ready(&server, Json, "app-a", "same");
    let _b = Client::ready(&server, Json, "app-b", "same");
    let _c = Client::ready(&server, Json, "app-a", "other");
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    assert_eq!(obs.query_ids(query("app-a")), set(&["same", "other"]));
    assert_eq!(obs.query_ids(query("app-b")), set(&["same"]));
}

#[test]
fn duplicates_are_detected_across_shards() {
    let server = Server::start(&["--shards", "3"]);
    let mut first = Client::ready(&server, Json, "app", "only-one");
    // Each attempt lands on a random shard; with 9 attempts over 3 shards the
    // other shards are all but certainly among them.
    for i in 0..9 {
        let mut c = Client::connect(&server, ALL_ENCODINGS[i % 3]);
        c.send_identify("app", "only-one", json!({}));
        c.expect_error_close(&texts::duplicate("only-one", "app"));
    }
    first.heartbeat();
    assert_eq!(first.query_ids(query("app")), set(&["only-one"]));
}

#[test]
fn racing_duplicates_exactly_one_wins() {
    let server = Server::start(&["--shards", "3"]);
    for round in 0..12 {
        let id = format!("race-{round}");
        let mut a = Client::connect(&server, Json);
        let mut b = Client::connect(&server, Msgpack);
        a.send_identify("app", &id, json!({}));
        b.send_identify("app", &id, json!({}));
        let pa = a.recv();
        let pb = b.recv();
        let ops = (pa["op"].as_u64().unwrap(), pb["op"].as_u64().unwrap());
        let (winner, loser, lp) = match ops {
            (OP_READY, OP_ERROR) => (a, b, pb),
            (OP_ERROR, OP_READY) => (b, a, pa),
            _ => panic!("round {round}: exactly one of the two must win: {pa} / {pb}"),
        };
        assert_eq!(lp["d"]["error"], json!(texts::duplicate(&id, "app")));
        let mut loser = loser;
        loser.expect_closed();
        let mut winner = winner;
        winner.heartbeat();
        let nodes = winner.query_nodes(query("app"));
        assert_eq!(
            nodes.iter().filter(|n| n["client_id"] == json!(id)).count(),
            1,
            "round {round}: {nodes:?}"
        );
    }
}

#[test]
fn client_id_is_free_again_once_its_connection_is_gone() {
    let server = Server::start(&["--shards", "3"]);
    let mut watcher = Client::ready_with(
        &server,
        Json,
        "watch",
        "watcher",
        json!({"receive_client_updates": true}),
    );
    for (i, enc) in ALL_ENCODINGS.into_iter().enumerate() {
        let c = Client::ready(&server, enc, "app", "reused");
        watcher.expect_client_update("CLIENT_CONNECTED", "app", "reused");
        if i % 2 == 0 {
            c.close();
        } else {
            c.drop_tcp();
        }
        watcher.expect_client_update("CLIENT_DISCONNECTED", "app", "reused");
    }
    let mut again = Client::ready(&server, Json, "app", "reused");
    again.heartbeat();
}

#[test]
fn without_a_server_password_every_client_is_unrestricted() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, Json);
    assert_eq!(
        a.identify("app", "a", json!({"auth": "anything"}))["restricted"],
        json!(false)
    );
    let mut b = Client::connect(&server, Etf);
    assert_eq!(
        b.identify("app", "b", json!({}))["restricted"],
        json!(false)
    );
}

fn check_password_rules(server: &Server, password: &str) {
    let cases: Vec<(&str, Option<String>, bool)> = vec![
        ("right", Some(password.to_string()), false),
        ("missing", None, true),
        ("wrong", Some("nope".into()), true),
        ("empty", Some(String::new()), true),
        (
            "prefix",
            Some(password[..password.len() - 1].to_string()),
            true,
        ),
        ("longer", Some(format!("{password}!")), true),
    ];
    for (i, (what, auth, restricted)) in cases.into_iter().enumerate() {
        for enc in [Json, Msgpack] {
            let mut c = Client::connect(server, enc);
            let extra = match &auth {
                Some(a) => json!({"auth": a}),
                None => json!({}),
            };
            let id = format!("auth{i}-{}", enc.name());
            let d = c.identify("app", &id, extra);
            assert_eq!(
                d,
                json!({"client_id": id, "restricted": restricted}),
                "{what} {enc:?}"
            );
        }
    }
}

#[test]
fn a_password_from_the_flag_decides_restricted() {
    let server = Server::start(&["--auth", "s3cret-pw"]);
    check_password_rules(&server, "s3cret-pw");
}

#[test]
fn a_password_from_the_auth_env_var_decides_restricted() {
    let server = Server::start_with_env(&[], &[("AUTH", "env-pw")]);
    check_password_rules(&server, "env-pw");
}

#[test]
fn restricted_clients_may_not_use_etf() {
    let server = Server::start(&["--auth", "pw"]);
    for extra in [json!({}), json!({"auth": "wrong"})] {
        let mut c = Client::connect(&server, Etf);
        c.send_identify("app", "etf-r", extra);
        c.expect_error_close(texts::RESTRICTED_ETF);
    }
    let mut ok = Client::connect(&server, Etf);
    assert_eq!(
        ok.identify("app", "etf-r", json!({"auth": "pw"})),
        json!({"client_id": "etf-r", "restricted": false})
    );
    ok.heartbeat();
}

#[test]
fn restricted_clients_may_only_heartbeat_and_update_metadata() {
    let server = Server::start(&["--auth", "pw"]);
    let mut admin = Client::ready_with(&server, Json, "admin", "admin", json!({"auth": "pw"}));
    for enc in [Json, Msgpack] {
        let id = format!("r-{}", enc.name());
        let mut r = Client::connect(&server, enc);
        let d = r.identify(
            "app",
            &id,
            json!({"ip": "10.9.9.9", "receive_client_updates": true, "namespace": "ns"}),
        );
        assert_eq!(d, json!({"client_id": id, "restricted": true}));
        r.heartbeat();
        let dispatches = [
            (
                "SEND",
                json!({"target": query("app"), "nonce": null, "payload": 1}),
            ),
            (
                "BROADCAST",
                json!({"target": query("app"), "nonce": null, "payload": 1}),
            ),
            ("QUERY_NODES", query("app")),
            (
                "QUEUE",
                json!({"queue": "q", "target": query("app"), "nonce": null, "payload": 1}),
            ),
            ("QUEUE_REQUEST", json!({"queue": "q"})),
            ("QUEUE_REQUEST_CANCEL", json!({"queue": "q"})),
            ("QUEUE_ACK", json!({"queue": "q", "id": "x"})),
        ];
        for (t, d) in dispatches {
            r.dispatch(t, d);
            r.expect_invalid(&texts::restricted_dispatch(t));
        }
        // Still connected, and metadata updates are allowed (no reply).
        r.update_metadata(json!({"role": meta("string", json!("worker"))}));
        r.heartbeat();
        let n = node(&mut admin, "app", &id);
        let m = &n["metadata"];
        assert_eq!(m["role"], json!("worker"), "{n}");
        assert_eq!(m["restricted"], json!(true), "{n}");
        assert_eq!(
            m["ip"],
            Value::Null,
            "a restricted client's ip is null: {n}"
        );
        assert_eq!(
            m["receive_client_updates"],
            json!(false),
            "forced false: {n}"
        );
        assert_eq!(m["namespace"], json!("ns"), "{n}");
        // receive_client_updates was forced off: no CLIENT_CONNECTED.
        let _x = Client::ready_with(
            &server,
            Json,
            "app",
            &format!("x-{}", enc.name()),
            json!({"auth": "pw"}),
        );
        r.expect_quiet();
    }
}

#[test]
fn invalid_initial_metadata_is_an_error_and_closes() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::connect(&server, enc);
        c.send_identify(
            "app",
            "bad-meta",
            json!({"metadata": {
                "good": meta("string", json!("ok")),
                "bad": meta("integer", json!("x")),
                "worse": meta("date", json!("2020-01-01")),
                "encoding": meta("string", json!("json")),
            }}),
        );
        let extra = c.expect_error_close(texts::INITIAL_METADATA_INVALID);
        let obj = extra
            .as_object()
            .unwrap_or_else(|| panic!("{enc:?}: extra_info is not an object: {extra}"));
        let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            vec!["bad", "encoding", "worse"],
            "{enc:?}: one message per bad key: {extra}"
        );
        for (k, v) in obj {
            assert!(
                v.as_str().is_some_and(|s| !s.is_empty()),
                "{enc:?}: message for {k}: {v}"
            );
        }
    }
    // The rejected client was never registered.
    let mut c = Client::ready(&server, Json, "app", "bad-meta");
    assert_eq!(c.query_ids(query("app")), set(&["bad-meta"]));
}

#[test]
fn identify_again_after_ready_is_invalid_and_keeps_the_connection() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let id = format!("twice-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        c.send(
            OP_IDENTIFY,
            json!({"client_id": "someone-else", "application_id": "app2"}),
            None,
        );
        c.expect_invalid(texts::ALREADY_IDENTIFIED);
        c.heartbeat();
        let nodes = c.query_nodes(json!({"application": null}));
        let ids = ids(&nodes);
        assert!(
            ids.contains(&id) && !ids.contains("someone-else"),
            "{ids:?}"
        );
    }
}

#[test]
fn anything_but_identify_before_identify_is_an_error_and_closes() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let mut c = Client::connect(&server, enc);
        c.send(OP_HEARTBEAT, json!({"client_id": "x"}), None);
        c.expect_error_close(texts::NOT_IDENTIFIED);

        let mut c = Client::connect(&server, enc);
        c.send(
            OP_DISPATCH,
            json!({"target": query("app"), "nonce": null, "payload": 1}),
            Some("SEND"),
        );
        c.expect_error_close(texts::NOT_IDENTIFIED);

        let mut c = Client::connect(&server, enc);
        c.send(
            OP_DISPATCH,
            json!({"x": meta("integer", json!(1))}),
            Some("UPDATE_METADATA"),
        );
        c.expect_error_close(texts::NOT_IDENTIFIED);
    }
}
