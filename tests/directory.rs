//! The routing directory is exact where a client can tell: whatever a
//! client was told (READY, a heartbeat ack after an update) has reached the
//! directory of every shard before anyone can act on it. A SEND never
//! misses a client that is there, and never finds one that has moved on.

mod common;

use common::*;

const SHARDS: &str = "3";

/// A client reachable at once, from every shard, by each way of narrowing:
/// its unique id (the value's home), its application (a copy of the app
/// counts: a new application every round, so its first client is news),
/// a range (the app's holders), BROADCAST and QUERY_NODES.
#[test]
fn a_client_is_reachable_from_every_shard_as_soon_as_it_is_ready() {
    let server = Server::start(&["--shards", SHARDS]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut senders = spread(&server, &mut obs, "senders", 3, &[Json], json!({}));
    for round in 0..12 {
        let app = format!("fresh-{round}");
        let mut fresh = Client::ready_with(
            &server,
            Json,
            &app,
            "c",
            json!({"metadata": {"user_id": meta("integer", json!(1000 + round))}}),
        );
        let targets = [
            query_ops(&app, json!([op("/user_id", "$eq", json!(1000 + round))])),
            query(&app),
            query_ops(&app, json!([op("/user_id", "$gte", json!(1000))])),
        ];
        for sender in senders.iter_mut() {
            for (i, target) in targets.iter().enumerate() {
                let nonce = json!(format!("{round}-{}-{i}", sender.id));
                sender
                    .client
                    .send_to(target.clone(), nonce.clone(), json!("s"));
                fresh.expect_message("SEND", &nonce, &json!("s"));
                sender
                    .client
                    .broadcast(target.clone(), nonce.clone(), json!("b"));
                fresh.expect_message("BROADCAST", &nonce, &json!("b"));
                assert_eq!(sender.client.query_ids(target.clone()), set(&["c"]));
            }
        }
        fresh.close();
    }
}

/// After an update, the old value finds nobody and the new one finds the
/// client, from a sender on another shard, every time.
#[test]
fn an_updated_value_leaves_its_old_home_at_once() {
    let server = Server::start(&["--shards", SHARDS]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut members = spread(&server, &mut obs, "app", 2, &[Json], json!({}));
    let owner = members.pop().unwrap();
    let (mut owner, owner_shard) = (owner.client, owner.shard);
    let sender = members
        .iter_mut()
        .find(|m| m.shard != owner_shard)
        .expect("spread places clients on two shards");
    for value in 0..40 {
        owner.set_metadata(json!({"user_id": meta("integer", json!(value))}));
        let new = query_ops("app", json!([op("/user_id", "$eq", json!(value))]));
        sender.client.send_to(new, json!(value), json!("new"));
        owner.expect_message("SEND", &json!(value), &json!("new"));
        if value > 0 {
            let old = query_ops("app", json!([op("/user_id", "$eq", json!(value - 1))]));
            sender.client.send_to(old, json!(value), json!("old"));
            sender.client.expect_invalid(texts::NO_ROUTE);
        }
    }
    owner.expect_quiet();
}

/// A sender's shard remembers where an id was; when the id moves to a
/// client on another shard, the next SEND finds it there, whether or not
/// the home has yet told the sender's shard to forget (a SEND sent where
/// the id was is chosen again there), and never reaches the old client.
#[test]
fn a_remembered_id_that_moved_is_still_found() {
    let server = Server::start(&["--shards", SHARDS]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut members = spread(&server, &mut obs, "app", 3, &[Json], json!({}));
    let mut by_shard: Vec<Member> = Vec::new();
    for m in members.drain(..) {
        if by_shard.iter().all(|b| b.shard != m.shard) {
            by_shard.push(m);
        }
    }
    let [sender, a, b] = &mut by_shard[..3] else {
        unreachable!("spread places clients on three shards")
    };
    for value in 0..40 {
        let (from, to) = if value % 2 == 0 {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        let id = query_ops("app", json!([op("/user_id", "$eq", json!(value))]));
        from.client
            .set_metadata(json!({"user_id": meta("integer", json!(value))}));
        sender
            .client
            .send_to(id.clone(), json!(value), json!("here"));
        from.client
            .expect_message("SEND", &json!(value), &json!("here"));
        // The id moves: the old holder drops it, the new one takes it.
        from.client
            .set_metadata(json!({"user_id": meta("integer", json!(-1))}));
        to.client
            .set_metadata(json!({"user_id": meta("integer", json!(value))}));
        sender.client.send_to(id, json!(value), json!("moved"));
        to.client
            .expect_message("SEND", &json!(value), &json!("moved"));
    }
    a.client.expect_quiet();
    b.client.expect_quiet();
}

/// Restricted clients are counted apart: a query that does not ask for
/// them finds no holder, one that does reaches them.
#[test]
fn restricted_clients_are_found_only_by_queries_that_ask() {
    let server = Server::start(&["--shards", SHARDS, "--auth", "secret"]);
    let auth = json!({"auth": "secret"});
    let mut obs = Client::ready_with(&server, Json, "obs", "obs", auth.clone());
    let mut senders = spread(&server, &mut obs, "senders", 3, &[Json], auth);
    // Without the password: restricted.
    let mut restricted = Client::ready(&server, Json, "r-app", "r");
    for sender in senders.iter_mut() {
        sender.client.send_to(query("r-app"), json!(1), json!("p"));
        sender.client.expect_invalid(texts::NO_ROUTE);
        let asking = with(query("r-app"), "restricted", json!(true));
        sender.client.send_to(asking, json!(2), json!("p"));
        restricted.expect_message("SEND", &json!(2), &json!("p"));
    }
}

/// An application held by one other shard: a query no index narrows goes
/// there alone, and when nothing there matches, that shard answers the
/// sender `no_route` itself, with the packet as sent; one that matches is
/// delivered.
#[test]
fn the_lone_holder_answers_no_route_for_the_sender() {
    let server = Server::start(&["--shards", SHARDS]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut senders = spread(&server, &mut obs, "senders", 3, &[Json], json!({}));
    let mut solo = Client::ready_with(
        &server,
        Json,
        "solo",
        "only",
        json!({"metadata": {"n": meta("integer", json!(1))}}),
    );
    let solo_shard = obs.query_nodes(query("solo"))[0]["shard"].as_u64();
    let sender = senders
        .iter_mut()
        .find(|m| Some(m.shard) != solo_shard)
        .expect("spread places senders on three shards");
    for round in 0..5 {
        let miss = query_ops("solo", json!([op("/n", "$gt", json!(100))]));
        let sent = sender
            .client
            .send_to(miss, json!(round), json!({"k": round}));
        assert_eq!(sender.client.expect_invalid(texts::NO_ROUTE), sent);
        let hit = query_ops("solo", json!([op("/n", "$lt", json!(100))]));
        sender.client.send_to(hit, json!(round), json!("hit"));
        solo.expect_message("SEND", &json!(round), &json!("hit"));
    }
    solo.expect_quiet();
    // Answered where it missed, not chosen again shard after shard.
    assert_eq!(repicks(&server), 0);
}

/// `singyeong_send_repicks_total`, summed over shards (a family missing
/// from the scrape fails, rather than reading as none).
fn repicks(server: &Server) -> u64 {
    let values = metric_samples(server, "singyeong_send_repicks_total", "");
    assert!(!values.is_empty(), "no send_repicks series");
    values.iter().sum::<f64>() as u64
}
