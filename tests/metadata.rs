//! Metadata (contract §4): typed values, validation, reserved keys, merge vs
//! replace, all-or-nothing updates, and that an update is visible at once.

mod common;

use common::*;

/// The plain metadata of `id` (any app, restricted included) seen by `obs`.
fn metadata_of(obs: &mut Client, id: &str) -> serde_json::Map<String, Value> {
    let nodes = obs.query_nodes(json!({"application": null, "restricted": true}));
    node_of(&nodes, id)["metadata"].as_object().unwrap().clone()
}

const RESERVED: [&str; 6] = [
    "last_heartbeat_time",
    "restricted",
    "encoding",
    "ip",
    "namespace",
    "receive_client_updates",
];

fn user_keys(m: &serde_json::Map<String, Value>) -> Vec<String> {
    m.keys()
        .filter(|k| !RESERVED.contains(&k.as_str()))
        .cloned()
        .collect()
}

#[test]
fn every_type_accepts_fitting_values() {
    let server = Server::start(&[]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    for enc in ALL_ENCODINGS {
        let id = format!("typed-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        c.set_metadata(json!({
            "s": meta("string", json!("hello 신경")),
            "s_empty": meta("string", json!("")),
            "i": meta("integer", json!(-42)),
            "i_big": meta("integer", json!(9_007_199_254_740_993i64)),
            "f": meta("float", json!(2.5)),
            "f_int": meta("float", json!(3)),
            "b": meta("boolean", json!(false)),
            "v": meta("version", json!("2.1.0")),
            "v_pre": meta("version", json!("1.0.0-rc.1+build.5")),
            "l": meta("list", json!([1, "two", null, [3], {"x": -1}, -1, 300, 2.5])),
            "l_empty": meta("list", json!([])),
            "m": meta("map", json!({"nested": {"deep": [true, false]}, "n": -5})),
            "m_empty": meta("map", json!({})),
        }));
        let m = metadata_of(&mut obs, &id);
        assert_eq!(m["s"], json!("hello 신경"), "{enc:?}");
        assert_eq!(m["s_empty"], json!(""), "{enc:?}");
        assert_eq!(m["i"], json!(-42), "{enc:?}");
        assert_eq!(m["i_big"], json!(9_007_199_254_740_993i64), "{enc:?}");
        assert_eq!(m["f"], json!(2.5), "{enc:?}");
        assert_eq!(m["f_int"].as_f64(), Some(3.0), "{enc:?}: {}", m["f_int"]);
        assert_eq!(m["b"], json!(false), "{enc:?}");
        assert_eq!(m["v"], json!("2.1.0"), "{enc:?}");
        assert_eq!(m["v_pre"], json!("1.0.0-rc.1+build.5"), "{enc:?}");
        assert_eq!(
            m["l"],
            json!([1, "two", null, [3], {"x": -1}, -1, 300, 2.5]),
            "{enc:?}"
        );
        assert_eq!(m["l_empty"], json!([]), "{enc:?}");
        assert_eq!(
            m["m"],
            json!({"nested": {"deep": [true, false]}, "n": -5}),
            "{enc:?}"
        );
        assert_eq!(m["m_empty"], json!({}), "{enc:?}");
    }
}

/// (key, typed value) pairs that must each be rejected.
fn invalid_entries() -> Vec<(&'static str, Value)> {
    vec![
        ("s_int", meta("string", json!(1))),
        ("s_null", meta("string", Value::Null)),
        ("s_list", meta("string", json!(["a"]))),
        ("i_float", meta("integer", json!(1.5))),
        ("i_str", meta("integer", json!("1"))),
        ("i_bool", meta("integer", json!(true))),
        ("f_str", meta("float", json!("1.5"))),
        ("f_bool", meta("float", json!(true))),
        ("b_int", meta("boolean", json!(1))),
        ("b_str", meta("boolean", json!("true"))),
        ("v_word", meta("version", json!("not-a-version"))),
        ("v_int", meta("version", json!(2))),
        ("v_four", meta("version", json!("1.2.3.4"))),
        ("l_map", meta("list", json!({"a": 1}))),
        ("l_str", meta("list", json!("[]"))),
        ("m_list", meta("map", json!([1]))),
        ("m_str", meta("map", json!("{}"))),
        ("unknown_type", meta("date", json!("2020-01-01"))),
        ("type_not_string", json!({"type": 5, "value": 1})),
        ("no_type", json!({"value": 1})),
        ("no_value", json!({"type": "string"})),
        ("not_an_object", json!("raw")),
    ]
}

#[test]
fn each_ill_fitting_value_is_rejected_with_a_message_for_its_key() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let id = format!("bad-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        for (key, value) in invalid_entries() {
            c.update_metadata(json!({ key: value }));
            let extra = c.expect_invalid(texts::INVALID_METADATA);
            let obj = extra
                .as_object()
                .unwrap_or_else(|| panic!("{enc:?} {key}: extra_info not an object: {extra}"));
            assert_eq!(
                obj.keys().collect::<Vec<_>>(),
                vec![key],
                "{enc:?}: {extra}"
            );
            assert!(
                obj[key].as_str().is_some_and(|s| !s.is_empty()),
                "{enc:?} {key}: message: {extra}"
            );
        }
        // None of it was applied and the connection is fine.
        let m = metadata_of(&mut c, &id);
        assert!(user_keys(&m).is_empty(), "{enc:?}: {m:?}");
    }
}

#[test]
fn an_update_with_one_bad_key_applies_nothing() {
    let server = Server::start(&[]);
    let mut c = Client::ready_with(
        &server,
        Msgpack,
        "app",
        "c",
        json!({"metadata": {"a": meta("integer", json!(1))}}),
    );
    let mut update = serde_json::Map::new();
    update.insert("a".into(), meta("integer", json!(2)));
    update.insert("fresh".into(), meta("string", json!("x")));
    for (k, v) in invalid_entries() {
        update.insert(k.into(), v);
    }
    c.update_metadata(Value::Object(update));
    let extra = c.expect_invalid(texts::INVALID_METADATA);
    let mut bad: Vec<&str> = invalid_entries().iter().map(|(k, _)| *k).collect();
    bad.sort();
    let got: Vec<&str> = extra
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        got, bad,
        "one message per bad key, none for good ones: {extra}"
    );
    let m = metadata_of(&mut c, "c");
    assert_eq!(m["a"], json!(1), "{m:?}");
    assert!(!m.contains_key("fresh"), "{m:?}");
}

#[test]
fn reserved_keys_are_rejected_in_updates() {
    let server = Server::start(&[]);
    let mut c = Client::ready_with(&server, Json, "app", "c", json!({"namespace": "ns"}));
    let before = metadata_of(&mut c, "c");
    let attempts = [
        ("last_heartbeat_time", meta("integer", json!(1))),
        ("restricted", meta("boolean", json!(true))),
        ("encoding", meta("string", json!("etf"))),
        ("ip", meta("string", json!("6.6.6.6"))),
        ("namespace", meta("string", json!("other"))),
        ("receive_client_updates", meta("boolean", json!(true))),
    ];
    for (key, value) in attempts {
        c.update_metadata(json!({ key: value, "ok": meta("integer", json!(1)) }));
        let extra = c.expect_invalid(texts::INVALID_METADATA);
        assert_eq!(
            extra
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec![key.to_string()]),
            "{key}: {extra}"
        );
    }
    let after = metadata_of(&mut c, "c");
    for k in [
        "restricted",
        "encoding",
        "ip",
        "namespace",
        "receive_client_updates",
    ] {
        assert_eq!(after[k], before[k], "{k} unchanged");
    }
    assert!(
        !after.contains_key("ok"),
        "nothing of a rejected update applied"
    );
}

#[test]
fn merge_mode_is_the_default() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let id = format!("merge-{}", enc.name());
        let mut c = Client::ready_with(
            &server,
            enc,
            "app",
            &id,
            json!({"metadata": {"a": meta("integer", json!(1)), "b": meta("integer", json!(1))}}),
        );
        c.update_metadata(json!({"b": meta("integer", json!(2)), "c": meta("string", json!("3"))}));
        let m = metadata_of(&mut c, &id);
        assert_eq!(user_keys(&m), vec!["a", "b", "c"], "{enc:?}: {m:?}");
        assert_eq!(
            (&m["a"], &m["b"], &m["c"]),
            (&json!(1), &json!(2), &json!("3")),
            "{enc:?}"
        );
        // A later update may change a key's type.
        c.update_metadata(json!({"a": meta("string", json!("now a string"))}));
        let ids = c.query_ids(query_ops(
            "app",
            json!([op("/a", "$eq", json!("now a string"))]),
        ));
        assert_eq!(ids, set(&[&id]), "{enc:?}");
        let ids = c.query_ids(query_ops("app", json!([op("/a", "$eq", json!(1))])));
        assert!(ids.is_empty(), "{enc:?}: {ids:?}");
        for k in RESERVED {
            assert!(m.contains_key(k), "{enc:?}: reserved {k} present: {m:?}");
        }
        c.close();
    }
}

fn check_replace_mode(server: &Server) {
    let mut c = Client::ready_with(
        server,
        Json,
        "app",
        "r",
        json!({"namespace": "ns", "metadata": {"a": meta("integer", json!(1)), "b": meta("integer", json!(1))}}),
    );
    let reserved_before: Vec<(String, Value)> = {
        let m = metadata_of(&mut c, "r");
        RESERVED
            .iter()
            .filter(|k| **k != "last_heartbeat_time")
            .map(|k| (k.to_string(), m[*k].clone()))
            .collect()
    };
    c.update_metadata(json!({"c": meta("integer", json!(3))}));
    let m = metadata_of(&mut c, "r");
    assert_eq!(
        user_keys(&m),
        vec!["c"],
        "replace keeps only the update: {m:?}"
    );
    for (k, v) in &reserved_before {
        assert_eq!(&m[k], v, "reserved {k} kept in replace mode");
    }
    assert!(m["last_heartbeat_time"].is_i64(), "{m:?}");
    c.update_metadata(json!({"d": meta("boolean", json!(true)), "e": meta("list", json!([1]))}));
    let m = metadata_of(&mut c, "r");
    assert_eq!(user_keys(&m), vec!["d", "e"], "{m:?}");
    // An invalid update in replace mode leaves everything as it was.
    c.update_metadata(json!({"x": meta("integer", json!("no"))}));
    c.expect_invalid(texts::INVALID_METADATA);
    let m = metadata_of(&mut c, "r");
    assert_eq!(user_keys(&m), vec!["d", "e"], "{m:?}");
}

#[test]
fn replace_mode_keeps_only_reserved_keys_plus_the_update() {
    let server = Server::start(&["--metadata-update-mode", "replace"]);
    check_replace_mode(&server);
}

#[test]
fn replace_mode_from_the_env_var() {
    let server = Server::start_with_env(&[], &[("METADATA_UPDATE_MODE", "replace")]);
    check_replace_mode(&server);
}

#[test]
fn reserved_keys_are_queryable() {
    let server = Server::start(&["--auth", "pw", "--shards", "3"]);
    let a = json!({"auth": "pw"});
    let _j = Client::ready_with(
        &server,
        Json,
        "app",
        "j",
        with(a.clone(), "namespace", json!("ns1")),
    );
    let _m = Client::ready_with(
        &server,
        Msgpack,
        "app",
        "m",
        with(a.clone(), "ip", json!("10.0.0.7")),
    );
    let _e = Client::ready_with(
        &server,
        Etf,
        "app",
        "e",
        with(a.clone(), "receive_client_updates", json!(true)),
    );
    let _r = Client::ready_with(
        &server,
        Json,
        "app",
        "r",
        json!({"auth": "wrong", "namespace": "ns1"}),
    );
    let mut obs = Client::ready_with(&server, Json, "obs", "obs", a.clone());
    let q = |ops: Value| json!({"application": "app", "restricted": true, "ops": ops});
    let cases = [
        (op("/encoding", "$eq", json!("etf")), set(&["e"])),
        (op("/encoding", "$eq", json!("json")), set(&["j", "r"])),
        (
            op("/encoding", "$in", json!(["msgpack", "etf"])),
            set(&["m", "e"]),
        ),
        (op("/namespace", "$eq", json!("ns1")), set(&["j", "r"])),
        (op("/ip", "$eq", json!("10.0.0.7")), set(&["m"])),
        (
            op("/receive_client_updates", "$eq", json!(true)),
            set(&["e"]),
        ),
        (op("/restricted", "$eq", json!(true)), set(&["r"])),
        (
            op("/restricted", "$eq", json!(false)),
            set(&["j", "m", "e"]),
        ),
        (
            op("/last_heartbeat_time", "$gt", json!(now_ms() - 60_000)),
            set(&["j", "m", "e", "r"]),
        ),
    ];
    for (o, want) in cases {
        assert_eq!(obs.query_ids(q(json!([o.clone()]))), want, "{o}");
    }
    // The legacy dialect reaches reserved keys too.
    assert_eq!(
        obs.query_ids(q(json!([{"encoding": {"$eq": "msgpack"}}]))),
        set(&["m"])
    );
}

#[test]
fn an_update_is_visible_to_the_very_next_query_on_the_same_connection() {
    let server = Server::start(&["--shards", "3"]);
    for enc in ALL_ENCODINGS {
        let id = format!("seq-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        for generation in 0..20 {
            // No sync in between: the server reads the two packets in order.
            c.update_metadata(json!({"gen": meta("integer", json!(generation))}));
            let q = query_ops("app", json!([op("/gen", "$eq", json!(generation))]));
            assert_eq!(c.query_ids(q), set(&[&id]), "{enc:?} gen {generation}");
        }
    }
}

#[test]
fn an_update_is_visible_to_other_clients_on_other_shards_once_read() {
    let server = Server::start(&["--shards", "3"]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut members = spread(&server, &mut obs, "app", 3, &ALL_ENCODINGS, json!({}));
    let n = members.len();
    for round in 0..24 {
        let owner = round % n;
        // A sender on a different shard than the owner, if there is one.
        let sender = (0..n)
            .find(|&i| members[i].shard != members[owner].shard)
            .expect("spread guarantees two shards");
        members[owner]
            .client
            .update_metadata(json!({"gen": meta("integer", json!(round))}));
        members[owner].client.sync();
        let target = query_ops("app", json!([op("/gen", "$eq", json!(round))]));
        members[sender]
            .client
            .send_to(target.clone(), json!(round), json!("fresh"));
        members[owner]
            .client
            .expect_message("SEND", &json!(round), &json!("fresh"));
        let owner_id = members[owner].id.clone();
        assert_eq!(
            members[sender].client.query_ids(target),
            set(&[&owner_id]),
            "round {round}"
        );
    }
}

#[test]
fn metadata_does_not_survive_a_reconnect() {
    let server = Server::start(&[]);
    let mut watcher = Client::ready_with(
        &server,
        Json,
        "watch",
        "w",
        json!({"receive_client_updates": true}),
    );
    let mut c = Client::ready_with(
        &server,
        Etf,
        "app",
        "c",
        json!({"metadata": {"a": meta("integer", json!(1))}}),
    );
    c.set_metadata(json!({"b": meta("integer", json!(2))}));
    c.close();
    watcher.expect_client_update("CLIENT_DISCONNECTED", "app", "c");
    let mut c = Client::ready(&server, Etf, "app", "c");
    let m = metadata_of(&mut c, "c");
    assert!(user_keys(&m).is_empty(), "{m:?}");
}
