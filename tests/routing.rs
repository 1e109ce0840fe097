//! Routing (contract §5 and §6): SEND, BROADCAST and QUERY_NODES, each on one
//! shard and across three, with every query feature that changes who gets a
//! message: droppable, optional, key, selectors, restricted, application.
//!
//! Every scenario is a function of the shard count; `both!` turns it into a
//! `shards_1::name` and a `shards_3::name` test. With three shards the
//! population is spread until it sits on all three (see `common::spread`).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod shards_1 { $( #[test] fn $name() { super::$name(1) } )* }
        mod shards_3 { $( #[test] fn $name() { super::$name(3) } )* }
    };
}

both!(
    send_reaches_exactly_one_matching_client,
    broadcast_reaches_every_matching_client_once,
    no_match_is_no_route_with_the_packet,
    droppable_without_match_is_silent,
    optional_falls_back_to_the_whole_application,
    the_sender_may_be_among_the_matches,
    a_key_always_reaches_the_same_client,
    a_key_keeps_its_client_when_others_leave_the_match,
    sends_without_key_spread_over_all_matches,
    selectors_pick_min_max_and_closest_to_average,
    query_nodes_applies_the_selector,
    restricted_clients_match_only_when_asked,
    null_application_means_every_application,
    both_query_dialects_route,
    malformed_queries_are_invalid_and_harmless,
    query_nodes_lists_exactly_the_matches,
    nonces_and_payloads_of_every_kind_arrive_unchanged,
    a_broadcast_reaches_hundreds_of_clients_exactly_once,
    held_broadcasts_and_sends_arrive_complete_and_in_order,
);

fn start(shards: usize, extra: &[&str]) -> Server {
    let s = shards.to_string();
    let mut args = vec!["--shards", s.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Half of the workers (even indices) get role "a", the others role "b".
fn assign_roles(workers: &mut [Member]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    for (i, w) in workers.iter_mut().enumerate() {
        let role = if i % 2 == 0 { "a" } else { "b" };
        w.client
            .set_metadata(json!({"role": meta("string", json!(role))}));
        if i % 2 == 0 {
            a.insert(w.id.clone())
        } else {
            b.insert(w.id.clone())
        };
    }
    (a, b)
}

/// Reads until `total` packets arrived across `members`, then checks that
/// nothing more comes; returns the packets per member id.
fn deliveries(members: &mut [Member], total: usize) -> BTreeMap<String, Vec<Value>> {
    let got = {
        let mut refs: Vec<&mut Client> = members.iter_mut().map(|m| &mut m.client).collect();
        let got = collect(&mut refs, total);
        expect_all_quiet(&mut refs, std::time::Duration::from_millis(150));
        got
    };
    members
        .iter()
        .zip(got)
        .map(|(m, packets)| (m.id.clone(), packets))
        .collect()
}

fn payload() -> Value {
    json!({"text": "신경", "n": -7, "f": 1.25, "big": 1u64 << 40, "list": [-1, 2, 300, null, "x"], "nested": {"ok": true, "empty": {}}})
}

/// One identified sender (app "senders") in each encoding.
fn one_sender_per_encoding(server: &Server) -> Vec<Client> {
    ALL_ENCODINGS
        .iter()
        .map(|&e| Client::ready(server, e, "senders", &format!("s-{}", e.name())))
        .collect()
}

fn send_reaches_exactly_one_matching_client(shards: usize) {
    let server = start(shards, &[]);
    let mut senders = one_sender_per_encoding(&server);
    let mut workers = spread(
        &server,
        &mut senders[0],
        "workers",
        4,
        &ALL_ENCODINGS,
        json!({}),
    );
    let (role_a, _) = assign_roles(&mut workers);
    for (i, s) in senders.iter_mut().enumerate() {
        for j in 0..4 {
            let nonce = json!(format!("n{i}-{j}"));
            s.send_to(
                query_ops("workers", json!([op("/role", "$eq", json!("a"))])),
                nonce.clone(),
                payload(),
            );
            let got = deliveries(&mut workers, 1);
            let (who, packets) = got.iter().find(|(_, p)| !p.is_empty()).unwrap();
            assert!(role_a.contains(who), "{who} does not match role a");
            let p = &packets[0];
            assert_eq!(p["op"], json!(OP_DISPATCH));
            assert_eq!(p["t"], json!("SEND"));
            assert_eq!(
                p["d"],
                json!({"nonce": nonce, "payload": payload()}),
                "from {:?}",
                s.enc
            );
        }
        s.expect_quiet();
    }
}

fn broadcast_reaches_every_matching_client_once(shards: usize) {
    let server = start(shards, &[]);
    let mut senders = one_sender_per_encoding(&server);
    let mut workers = spread(
        &server,
        &mut senders[0],
        "workers",
        5,
        &ALL_ENCODINGS,
        json!({}),
    );
    let (role_a, _) = assign_roles(&mut workers);
    for (i, s) in senders.iter_mut().enumerate() {
        let nonce = json!(i);
        s.broadcast(
            query_ops("workers", json!([op("/role", "$eq", json!("a"))])),
            nonce.clone(),
            payload(),
        );
        let got = deliveries(&mut workers, role_a.len());
        for (who, packets) in &got {
            if role_a.contains(who) {
                assert_eq!(packets.len(), 1, "{who} gets the broadcast exactly once");
                assert_eq!(packets[0]["t"], json!("BROADCAST"));
                assert_eq!(
                    packets[0]["d"],
                    json!({"nonce": nonce, "payload": payload()})
                );
            } else {
                assert!(packets.is_empty(), "{who} does not match: {packets:?}");
            }
        }
        s.expect_quiet();
    }
}

fn no_match_is_no_route_with_the_packet(shards: usize) {
    let server = start(shards, &[]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut workers = spread(&server, &mut obs, "workers", 3, &ALL_ENCODINGS, json!({}));
    for enc in ALL_ENCODINGS {
        let mut s = Client::ready(&server, enc, "senders", &format!("s-{}", enc.name()));
        let targets = [
            query_ops("workers", json!([op("/missing", "$eq", json!(1))])),
            query("no-such-app"),
            with(
                query_ops("workers", json!([op("/missing", "$eq", json!(1))])),
                "droppable",
                json!(false),
            ),
        ];
        for target in targets {
            for t in ["SEND", "BROADCAST"] {
                let sent = s.dispatch(
                    t,
                    json!({"target": target, "nonce": "abc", "payload": {"k": [1, -2]}}),
                );
                let extra = s.expect_invalid(texts::NO_ROUTE);
                assert_eq!(
                    extra, sent,
                    "{enc:?} {t}: extra_info is the packet as received"
                );
            }
        }
        s.heartbeat();
    }
    let mut refs: Vec<&mut Client> = workers.iter_mut().map(|m| &mut m.client).collect();
    expect_all_quiet(&mut refs, QUIET);
}

fn droppable_without_match_is_silent(shards: usize) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Msgpack, "senders", "s");
    let mut workers = spread(&server, &mut s, "workers", 3, &ALL_ENCODINGS, json!({}));
    let miss = with(
        query_ops("workers", json!([op("/missing", "$eq", json!(1))])),
        "droppable",
        json!(true),
    );
    s.send_to(miss.clone(), json!(1), json!("x"));
    s.broadcast(miss.clone(), json!(2), json!("x"));
    s.broadcast(
        with(query("nobody"), "droppable", json!(true)),
        json!(3),
        json!("x"),
    );
    s.heartbeat(); // the ack is the very next packet: nothing came before it
    s.expect_quiet();
    let mut refs: Vec<&mut Client> = workers.iter_mut().map(|m| &mut m.client).collect();
    expect_all_quiet(&mut refs, QUIET);
    // Droppable with a match is delivered as usual.
    let hit = with(query("workers"), "droppable", json!(true));
    s.send_to(hit.clone(), json!(4), json!("y"));
    let got = deliveries(&mut workers, 1);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 1);
    let n = workers.len();
    s.broadcast(hit, json!(5), json!("z"));
    let got = deliveries(&mut workers, n);
    assert!(
        got.values()
            .all(|p| p.len() == 1 && p[0]["d"] == json!({"nonce": 5, "payload": "z"}))
    );
}

fn optional_falls_back_to_the_whole_application(shards: usize) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Etf, "senders", "s");
    let mut workers = spread(&server, &mut s, "workers", 3, &ALL_ENCODINGS, json!({}));
    for w in workers.iter_mut() {
        w.client
            .set_metadata(json!({"load": meta("integer", json!(1))}));
    }
    let mut outsider = Client::ready(&server, Json, "elsewhere", "outsider");
    let all: BTreeSet<String> = workers.iter().map(|m| m.id.clone()).collect();

    let miss = |extra: &[(&str, Value)]| {
        let mut q = query_ops("workers", json!([op("/load", "$gt", json!(100))]));
        q["optional"] = json!(true);
        for (k, v) in extra {
            q[*k] = v.clone();
        }
        q
    };
    // QUERY_NODES: ops and selector dropped, application kept.
    assert_eq!(s.query_ids(miss(&[])), all);
    assert_eq!(
        s.query_ids(miss(&[("selector", json!({"$max": "load"}))])),
        all
    );
    // SEND: one of the application's clients.
    s.send_to(miss(&[]), json!("o"), json!(1));
    let got = deliveries(&mut workers, 1);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 1);
    // BROADCAST: all of them.
    s.broadcast(miss(&[]), json!("o"), json!(2));
    let got = deliveries(&mut workers, all.len());
    assert!(got.values().all(|p| p.len() == 1));
    outsider.expect_quiet();
    // When the ops match, optional changes nothing.
    workers[0]
        .client
        .set_metadata(json!({"load": meta("integer", json!(500))}));
    assert_eq!(s.query_ids(miss(&[])), set(&[&workers[0].id]));
    // Optional does not widen the application.
    let mut q = query_ops("nobody", json!([op("/load", "$gt", json!(100))]));
    q["optional"] = json!(true);
    let sent = s.send_to(q, Value::Null, json!(3));
    assert_eq!(s.expect_invalid(texts::NO_ROUTE), sent);
}

fn the_sender_may_be_among_the_matches(shards: usize) {
    let server = start(shards, &[]);
    for enc in ALL_ENCODINGS {
        let app = format!("solo-{}", enc.name());
        let mut me = Client::ready(&server, enc, &app, "me");
        me.send_to(query(&app), json!("self"), json!({"to": "me"}));
        me.expect_message("SEND", &json!("self"), &json!({"to": "me"}));
        let mut other = Client::ready(&server, Json, &app, "other");
        me.broadcast(query(&app), json!("both"), json!(1));
        me.expect_message("BROADCAST", &json!("both"), &json!(1));
        other.expect_message("BROADCAST", &json!("both"), &json!(1));
        let ids = me.query_ids(query(&app));
        assert_eq!(ids, set(&["me", "other"]));
    }
}

fn a_key_always_reaches_the_same_client(shards: usize) {
    let server = start(shards, &[]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut workers = spread(&server, &mut obs, "workers", 4, &ALL_ENCODINGS, json!({}));
    let mut senders = spread(&server, &mut obs, "senders", 2, &ALL_ENCODINGS, json!({}));
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    for k in 0..12 {
        let key = format!("user-{k}");
        let target = with(query("workers"), "key", json!(key));
        let rounds = 3;
        for _ in 0..rounds {
            for s in senders.iter_mut() {
                s.client.send_to(target.clone(), json!(key), json!(k));
            }
        }
        let got = deliveries(&mut workers, rounds * senders.len());
        let receivers: Vec<&String> = got
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            receivers.len(),
            1,
            "key {key} reached {receivers:?} (senders on shards {:?})",
            shard_set(&senders)
        );
        chosen.insert(receivers[0].clone());
    }
    assert!(
        chosen.len() >= 2,
        "12 keys over {} clients all chose {chosen:?}",
        workers.len()
    );
}

fn sends_without_key_spread_over_all_matches(shards: usize) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Json, "senders", "s");
    let mut workers = spread(&server, &mut s, "workers", 4, &ALL_ENCODINGS, json!({}));
    let k = workers.len();
    let n = 60 * k;
    for i in 0..n {
        s.send_to(query("workers"), json!(i), Value::Null);
    }
    let got = deliveries(&mut workers, n);
    let mut nonces = BTreeSet::new();
    for (who, packets) in &got {
        // Expected 60 each; fewer than 15 is vanishingly unlikely if uniform.
        assert!(
            packets.len() >= 15,
            "{who} got only {} of {n} sends over {k} clients",
            packets.len()
        );
        for p in packets {
            assert!(
                nonces.insert(p["d"]["nonce"].as_u64().unwrap()),
                "a send delivered twice: {p}"
            );
        }
    }
    assert_eq!(nonces.len(), n);
}

/// Workers with loads 10, 20, 30, 100.5 (average 40.125, closest 30), one
/// with the string "5" and the rest without a load: the last two are ignored
/// by selectors. Returns the (selector, ops, selected id) cases.
/// (selector, ops, the id it must select).
type SelectorCase = (Value, Value, String);

fn selector_world(shards: usize) -> (Server, Client, Vec<Member>, Vec<SelectorCase>) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Json, "senders", "s");
    let mut workers = spread(&server, &mut s, "workers", 6, &ALL_ENCODINGS, json!({}));
    for (i, w) in workers.iter_mut().enumerate() {
        match i {
            0 => w
                .client
                .set_metadata(json!({"load": meta("integer", json!(10))})),
            1 => w
                .client
                .set_metadata(json!({"load": meta("integer", json!(20))})),
            2 => w
                .client
                .set_metadata(json!({"load": meta("integer", json!(30))})),
            3 => w
                .client
                .set_metadata(json!({"load": meta("float", json!(100.5))})),
            4 => w
                .client
                .set_metadata(json!({"load": meta("string", json!("5"))})),
            _ => w
                .client
                .set_metadata(json!({"other": meta("integer", json!(1))})),
        }
    }
    let id = |i: usize| workers[i].id.clone();
    let cases = vec![
        (json!({"$min": "load"}), json!([]), id(0)),
        (json!({"$max": "load"}), json!([]), id(3)),
        (json!({"$avg": "load"}), json!([]), id(2)),
        // Selection happens after filtering.
        (
            json!({"$max": "load"}),
            json!([op("/load", "$lt", json!(50))]),
            id(2),
        ),
        (
            json!({"$min": "load"}),
            json!([op("/load", "$gt", json!(15))]),
            id(1),
        ),
        // (20 + 30 + 100.5) / 3 = 50.17: closest is 30.
        (
            json!({"$avg": "load"}),
            json!([op("/load", "$gt", json!(15))]),
            id(2),
        ),
    ];
    (server, s, workers, cases)
}

fn selectors_pick_min_max_and_closest_to_average(shards: usize) {
    let (_server, mut s, mut workers, cases) = selector_world(shards);
    for (i, (sel, ops, want)) in cases.iter().enumerate() {
        let mut q = query_ops("workers", ops.clone());
        q["selector"] = sel.clone();
        s.send_to(q.clone(), json!(i), json!("sel"));
        s.broadcast(q.clone(), json!(i), json!("sel"));
        let got = deliveries(&mut workers, 2);
        for (who, packets) in &got {
            if who == want {
                let ts: BTreeSet<&str> = packets.iter().map(|p| p["t"].as_str().unwrap()).collect();
                assert_eq!(
                    ts,
                    ["BROADCAST", "SEND"].into_iter().collect(),
                    "{sel} {ops}: {packets:?}"
                );
            } else {
                assert!(
                    packets.is_empty(),
                    "{sel} {ops}: {who} was not selected: {packets:?}"
                );
            }
        }
    }
}

fn query_nodes_applies_the_selector(shards: usize) {
    let (_server, mut s, _workers, cases) = selector_world(shards);
    for (sel, ops, want) in &cases {
        let mut q = query_ops("workers", ops.clone());
        q["selector"] = sel.clone();
        assert_eq!(s.query_ids(q), set(&[want]), "QUERY_NODES {sel} {ops}");
    }
}

fn restricted_clients_match_only_when_asked(shards: usize) {
    let server = start(shards, &["--auth", "pw"]);
    let auth = json!({"auth": "pw"});
    let mut s = Client::ready_with(&server, Json, "senders", "s", auth.clone());
    let mut free = Client::ready_with(&server, Msgpack, "mixed", "free", auth.clone());
    let mut locked = Client::ready(&server, Json, "mixed", "locked");
    let mut lonely = Client::ready(&server, Msgpack, "locked-only", "lonely");

    assert_eq!(s.query_ids(query("mixed")), set(&["free"]));
    assert_eq!(
        s.query_ids(with(query("mixed"), "restricted", json!(true))),
        set(&["free", "locked"])
    );
    for i in 0..8 {
        s.send_to(query("mixed"), json!(i), json!("only free"));
        free.expect_message("SEND", &json!(i), &json!("only free"));
    }
    locked.expect_quiet();
    s.broadcast(query("mixed"), json!("b"), json!(1));
    free.expect_message("BROADCAST", &json!("b"), &json!(1));
    locked.expect_quiet();
    s.broadcast(
        with(query("mixed"), "restricted", json!(true)),
        json!("b2"),
        json!(2),
    );
    free.expect_message("BROADCAST", &json!("b2"), &json!(2));
    locked.expect_message("BROADCAST", &json!("b2"), &json!(2));
    // An app of restricted clients only: no route unless asked.
    let sent = s.send_to(query("locked-only"), json!("x"), json!(3));
    assert_eq!(s.expect_invalid(texts::NO_ROUTE), sent);
    s.send_to(
        with(query("locked-only"), "restricted", json!(true)),
        json!("x"),
        json!(3),
    );
    lonely.expect_message("SEND", &json!("x"), &json!(3));
    // Optional's fallback keeps the restricted rule.
    let mut q = query_ops("locked-only", json!([op("/nope", "$eq", json!(1))]));
    q["optional"] = json!(true);
    let sent = s.send_to(q, json!("y"), json!(4));
    assert_eq!(s.expect_invalid(texts::NO_ROUTE), sent);
    lonely.expect_quiet();
}

fn null_application_means_every_application(shards: usize) {
    let server = start(shards, &[]);
    let mut a = Client::ready(&server, Json, "app-a", "a");
    let mut b = Client::ready(&server, Msgpack, "app-b", "b");
    let mut c = Client::ready(&server, Etf, "app-c", "c");
    let everyone = set(&["a", "b", "c"]);
    assert_eq!(a.query_ids(json!({"application": null})), everyone);
    assert_eq!(a.query_ids(json!({})), everyone);
    assert_eq!(
        a.query_ids(json!({"ops": [op("/encoding", "$ne", json!("json"))]})),
        set(&["b", "c"])
    );
    a.broadcast(json!({"application": null}), json!(1), json!("all"));
    for cl in [&mut a, &mut b, &mut c] {
        cl.expect_message("BROADCAST", &json!(1), &json!("all"));
    }
    a.send_to(
        json!({"ops": [op("/encoding", "$eq", json!("etf"))]}),
        json!(2),
        json!("etf only"),
    );
    c.expect_message("SEND", &json!(2), &json!("etf only"));
    a.expect_quiet();
    b.expect_quiet();
}

fn both_query_dialects_route(shards: usize) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Etf, "senders", "s");
    let mut workers = spread(&server, &mut s, "workers", 3, &ALL_ENCODINGS, json!({}));
    for (i, w) in workers.iter_mut().enumerate() {
        w.client.set_metadata(
            json!({"n": meta("integer", json!(i)), "tag": meta("string", json!(format!("t{i}")))}),
        );
    }
    let target_id = workers[1].id.clone();
    let forms = [
        json!([{"n": {"$eq": 1}}]),
        json!([{"tag": {"$eq": "t1"}}, op("/n", "$gte", json!(1)), {"n": {"$lt": 2}}]),
        json!([{"n": {"$in": [1, 99]}}]),
    ];
    for ops in forms {
        let q = query_ops("workers", ops.clone());
        assert_eq!(s.query_ids(q.clone()), set(&[&target_id]), "{ops}");
        s.send_to(q, json!("d"), ops.clone());
        let got = deliveries(&mut workers, 1);
        assert_eq!(got[&target_id].len(), 1, "{ops}: {got:?}");
        assert_eq!(got[&target_id][0]["d"]["payload"], ops);
    }
}

fn malformed_queries_are_invalid_and_harmless(shards: usize) {
    let server = start(shards, &[]);
    let mut worker = Client::ready(&server, Json, "workers", "w");
    let bad_ops = [
        json!([{"path": "/a", "op": "$foo", "to": {"value": 1}}]),
        json!([{"path": "a", "op": "$eq", "to": {"value": 1}}]),
        json!([{"op": "$and", "with": {"path": "/a"}}]),
        json!([{"op": "$or", "with": 5}]),
        json!([{"op": "$and", "with": [{"path": "/a", "op": "$nope", "to": {"value": 1}}]}]),
        json!([{"path": "/a", "op": "$eq"}]),
        json!([{"path": "/a", "op": "$eq", "to": {}}]),
        json!([{"a": {"$bogus": 1}}]),
        json!([5]),
        json!(5),
    ];
    let mut targets: Vec<Value> = bad_ops
        .iter()
        .map(|ops| query_ops("workers", ops.clone()))
        .collect();
    targets.push(with(query("workers"), "selector", json!({"$median": "a"})));
    targets.push(with(query("workers"), "selector", json!({"$min": 5})));
    targets.push(with(query("workers"), "application", json!(5)));
    for enc in ALL_ENCODINGS {
        let mut s = Client::ready(&server, enc, "senders", &format!("s-{}", enc.name()));
        for target in &targets {
            s.dispatch("QUERY_NODES", target.clone());
            s.expect_invalid_prefix(texts::INVALID_QUERY_PREFIX);
            s.send_to(target.clone(), Value::Null, json!(1));
            s.expect_invalid_prefix(texts::INVALID_QUERY_PREFIX);
            s.broadcast(target.clone(), Value::Null, json!(1));
            s.expect_invalid_prefix(texts::INVALID_QUERY_PREFIX);
        }
        // Still connected, still routing.
        s.heartbeat();
        s.send_to(query("workers"), json!("ok"), json!(enc.name()));
        worker.expect_message("SEND", &json!("ok"), &json!(enc.name()));
    }
    worker.expect_quiet();
}

fn query_nodes_lists_exactly_the_matches(shards: usize) {
    let server = start(shards, &[]);
    for enc in ALL_ENCODINGS {
        let mut s = Client::ready(&server, enc, &format!("senders-{}", enc.name()), "s");
        let app = format!("w-{}", enc.name());
        let workers = spread(
            &server,
            &mut s,
            &app,
            3,
            &ALL_ENCODINGS,
            json!({"metadata": {"k": {"type": "integer", "value": 1}}}),
        );
        let all: BTreeSet<String> = workers.iter().map(|m| m.id.clone()).collect();
        let nodes = s.query_nodes(query(&app));
        assert_eq!(ids(&nodes), all, "{enc:?}");
        assert_eq!(nodes.len(), all.len(), "{enc:?}: no client listed twice");
        for n in &nodes {
            assert_eq!(n["app_id"], json!(app));
            assert_eq!(n["metadata"]["k"], json!(1));
            assert_eq!(n["queues"], json!([]));
            if shards == 1 {
                assert_eq!(n["shard"], json!(0), "{n}");
            }
        }
        // No match is an empty list, not an error.
        let d = {
            s.dispatch(
                "QUERY_NODES",
                query_ops(&app, json!([op("/k", "$eq", json!(2))])),
            );
            s.expect_dispatch("QUERY_NODES")
        };
        assert_eq!(d, json!({"nodes": []}), "{enc:?}");
        let d = {
            s.dispatch("QUERY_NODES", query("nobody"));
            s.expect_dispatch("QUERY_NODES")
        };
        assert_eq!(d, json!({"nodes": []}), "{enc:?}");
    }
}

fn nonces_and_payloads_of_every_kind_arrive_unchanged(shards: usize) {
    let server = start(shards, &[]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut workers = spread(&server, &mut obs, "workers", 3, &ALL_ENCODINGS, json!({}));
    let values = [
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(255),
        json!(256),
        json!(-2147483649i64),
        json!(1u64 << 53),
        json!(-0.5),
        json!(""),
        json!("신경 ✓"),
        json!([]),
        json!({}),
        json!([1, -1, 255, 256, [[]], {"k": null}]),
        json!({"a": {"b": {"c": [true, false, null]}}, "": "empty key"}),
    ];
    // Every value is both a payload and (shifted by three) a nonce; the
    // values are distinct, so a payload tells which broadcast a packet is.
    let nonce_of = |i: usize| values[(i + 3) % values.len()].clone();
    for enc in ALL_ENCODINGS {
        let mut s = Client::ready(&server, enc, "senders", &format!("s-{}", enc.name()));
        for (i, v) in values.iter().enumerate() {
            s.broadcast(query("workers"), nonce_of(i), v.clone());
        }
        let n = workers.len() * values.len();
        let got = deliveries(&mut workers, n);
        for (who, packets) in got {
            let mut seen = BTreeSet::new();
            for p in packets {
                let i = values
                    .iter()
                    .position(|v| *v == p["d"]["payload"])
                    .unwrap_or_else(|| panic!("from {enc:?} to {who}: payload altered: {p}"));
                assert!(seen.insert(i), "from {enc:?} to {who}: twice: {p}");
                assert_eq!(
                    p["d"],
                    json!({"nonce": nonce_of(i), "payload": values[i]}),
                    "from {enc:?} to {who}"
                );
            }
            assert_eq!(seen.len(), values.len(), "from {enc:?} to {who}");
        }
    }
}

fn a_broadcast_reaches_hundreds_of_clients_exactly_once(shards: usize) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Msgpack, "senders", "s");
    let mut many: Vec<Client> = (0..240)
        .map(|i| Client::ready(&server, ALL_ENCODINGS[i % 3], "many", &format!("m{i}")))
        .collect();
    assert_eq!(s.query_ids(query("many")).len(), 240);
    for round in 0..3 {
        s.broadcast(query("many"), json!(round), json!({"round": round}));
    }
    for c in many.iter_mut() {
        for round in 0..3 {
            let d = c.expect_dispatch("BROADCAST");
            assert_eq!(d["nonce"], json!(round), "{}", c.label());
        }
    }
    let mut refs: Vec<&mut Client> = many.iter_mut().collect();
    expect_all_quiet(&mut refs, QUIET);
}

/// Broadcasts that follow each other closely are held and written in
/// rounds (see `--broadcast-linger`), while a SEND is written at once,
/// taking the held broadcasts queued before it along: every client still gets every
/// broadcast once and in order, and the SEND's target gets the SENDs
/// between them exactly where they were sent.
fn held_broadcasts_and_sends_arrive_complete_and_in_order(shards: usize) {
    let server = start(shards, &["--broadcast-linger", "200000"]);
    let mut s = Client::ready(&server, Json, "senders", "s");
    let special = json!({"metadata": {"special": {"type": "boolean", "value": true}}});
    let mut target = Client::ready_with(&server, Msgpack, "fans", "special", special);
    let mut fans: Vec<Client> = (0..120)
        .map(|i| Client::ready(&server, ALL_ENCODINGS[i % 3], "fans", &format!("f{i}")))
        .collect();
    assert_eq!(s.query_ids(query("fans")).len(), 121);
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        s.broadcast(query("fans"), json!(format!("b{round}")), json!(round));
        s.send_to(
            query_ops("fans", json!([op("/special", "$eq", json!(true))])),
            json!(format!("s{round}")),
            json!(round),
        );
        // Paced by a round trip, the next broadcast comes while the
        // flusher is still in the round that wrote this one: it is held.
        s.sync();
    }
    for round in 0..ROUNDS {
        assert_eq!(
            target.expect_dispatch("BROADCAST")["nonce"],
            json!(format!("b{round}"))
        );
        assert_eq!(
            target.expect_dispatch("SEND")["nonce"],
            json!(format!("s{round}"))
        );
    }
    for c in fans.iter_mut() {
        for round in 0..ROUNDS {
            let d = c.expect_dispatch("BROADCAST");
            assert_eq!(d["nonce"], json!(format!("b{round}")), "{}", c.label());
        }
    }
    let mut refs: Vec<&mut Client> = fans.iter_mut().chain([&mut target]).collect();
    expect_all_quiet(&mut refs, QUIET);
}

/// Rendezvous hashing: taking one client out of the matching set moves only
/// the keys it owned; putting it back restores every key's owner.
fn a_key_keeps_its_client_when_others_leave_the_match(shards: usize) {
    let server = start(shards, &[]);
    let mut s = Client::ready(&server, Json, "senders", "s");
    let mut workers = spread(
        &server,
        &mut s,
        "workers",
        5,
        &ALL_ENCODINGS,
        json!({"metadata": {"on": {"type": "boolean", "value": true}}}),
    );
    let target = |key: &str| {
        with(
            query_ops("workers", json!([op("/on", "$eq", json!(true))])),
            "key",
            json!(key),
        )
    };
    let keys: Vec<String> = (0..24).map(|k| format!("k{k}")).collect();
    let owners = |s: &mut Client, workers: &mut [Member]| -> BTreeMap<String, String> {
        for k in &keys {
            s.send_to(target(k), json!(k), Value::Null);
        }
        let got = deliveries(workers, keys.len());
        let mut map = BTreeMap::new();
        for (who, packets) in got {
            for p in packets {
                map.insert(p["d"]["nonce"].as_str().unwrap().to_string(), who.clone());
            }
        }
        map
    };
    let before = owners(&mut s, &mut workers);
    // Take out the owner of k0.
    let gone = before["k0"].clone();
    let gi = workers.iter().position(|w| w.id == gone).unwrap();
    workers[gi]
        .client
        .set_metadata(json!({"on": meta("boolean", json!(false))}));
    let during = owners(&mut s, &mut workers);
    for k in &keys {
        if before[k] == gone {
            assert_ne!(during[k], gone, "{k} still reaches the excluded client");
        } else {
            assert_eq!(during[k], before[k], "{k} moved although its client stayed");
        }
    }
    workers[gi]
        .client
        .set_metadata(json!({"on": meta("boolean", json!(true))}));
    let after = owners(&mut s, &mut workers);
    assert_eq!(
        after, before,
        "with the same matching set, every key is back with its client"
    );
}
