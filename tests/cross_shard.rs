//! What one targeted SEND costs in messages between shards (issue 14,
//! point 4): a deterministic count, read from
//! `singyeong_cross_shard_messages_total`, at 1, 2, 4 and 8 shards.
//!
//! Today every SEND asks every other shard to pick (one `pick` out and one
//! `reply_pick` back per other shard) and hands the packet to the chosen
//! client's shard (`send_one`) when that is not the sender's. This test
//! pins that figure so that the routing directory, which is to make it a
//! constant, shows its effect as a change here.

mod common;

use common::*;
use std::collections::BTreeMap;

const SENDS: u64 = 40;

/// Cross-shard messages sent so far, by kind, summed over shards.
fn cross_shard(server: &Server) -> BTreeMap<String, u64> {
    let text = server.http("GET", "/metrics", &[], None).text();
    let mut kinds = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("singyeong_cross_shard_messages_total{") else {
            continue;
        };
        let kind = rest
            .split("kind=\"")
            .nth(1)
            .and_then(|k| k.split('"').next());
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(kind), Some(value)) = (kind, value) {
            *kinds.entry(kind.to_string()).or_default() += value as u64;
        }
    }
    kinds
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Checks what `SENDS` SENDs to one recipient cost at `shards` shards, for
/// a unique indexed id and for a range, wherever sender and recipient sit.
fn per_send(shards: usize) {
    let server = Server::start(&["--shards", &shards.to_string()]);
    let mut observer = Client::ready(&server, Json, "o", "observer");
    let mut members = spread(&server, &mut observer, "r", 2, &[Json], json!({}));
    let mut sender = members.pop().unwrap();
    let mut recipient = members.pop().unwrap();
    recipient
        .client
        .set_metadata(json!({"user_id": {"type": "integer", "value": 123}}));
    let targets = [
        // A unique indexed id.
        json!({"application": "r", "ops": [{"path": "/user_id", "op": "$eq", "to": {"value": 123}}]}),
        // A range: cannot be narrowed by an index.
        json!({"application": "r", "ops": [{"path": "/user_id", "op": "$gt", "to": {"value": 100}}]}),
    ];
    for target in targets {
        sender.client.sync();
        let before = cross_shard(&server);
        for i in 0..SENDS {
            sender.client.send_to(target.clone(), json!(i), json!("p"));
        }
        sender.client.sync();
        for _ in 0..SENDS {
            recipient.client.expect_dispatch("SEND");
        }
        let got = delta(&before, &cross_shard(&server));
        // The scrape itself asks every other shard once, and the sync is a
        // heartbeat (no message between shards).
        let others = shards as u64 - 1;
        let mut want = BTreeMap::new();
        if others > 0 {
            want.insert("pick".to_string(), SENDS * others);
            want.insert("reply_pick".to_string(), SENDS * others);
            want.insert("metrics".to_string(), others);
            want.insert("reply_metrics".to_string(), others);
        }
        if sender.shard != recipient.shard {
            want.insert("send_one".to_string(), SENDS);
        }
        assert_eq!(got, want, "{shards} shards, target {target}");
    }
}

#[test]
fn one_shard() {
    per_send(1);
}

#[test]
fn two_shards() {
    per_send(2);
}

#[test]
fn four_shards() {
    per_send(4);
}

#[test]
fn eight_shards() {
    per_send(8);
}
