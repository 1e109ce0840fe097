//! One connection's SENDs are routed concurrently (issue 14, point 1): a
//! burst from one sender reaches each recipient complete and in the order
//! sent, whatever shard each recipient sits on; a `no_route` still names the
//! packet it answers; a heartbeat's ack still follows every earlier
//! outcome; `--max-in-flight` bounds the overlap.

mod common;

use common::*;
use std::collections::BTreeSet;

/// SENDs in the burst.
const BURST: usize = 3000;
/// Recipients the burst is spread over.
const RECIPIENTS: usize = 6;

/// The sum of a counter family's samples; the family must be there.
fn scrape_counter(server: &Server, family: &str) -> f64 {
    let text = server.http("GET", "/metrics", &[], None).text();
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert!(!samples.is_empty(), "no {family} in /metrics");
    samples.iter().sum()
}

fn to_recipient(n: usize) -> Value {
    json!({"application": "r", "ops": [{"path": "/n", "op": "$eq", "to": {"value": n}}]})
}

/// The same recipient through an `$avg` selector, which takes two rounds
/// of asking every shard: a SEND so targeted is overtaken by the next one
/// unless hand-overs keep the order they were read in.
fn to_recipient_slowly(n: usize) -> Value {
    let mut target = to_recipient(n);
    target["selector"] = json!({"$avg": "n"});
    target
}

/// Recipients `r-*` spread over the shards, each with metadata `n` = its
/// place in the returned list.
fn recipients(server: &Server) -> Vec<Member> {
    let mut observer = Client::ready(server, Json, "o", "observer");
    let mut members = spread(server, &mut observer, "r", RECIPIENTS, &[Json], json!({}));
    for (n, m) in members.iter_mut().enumerate() {
        m.client
            .set_metadata(json!({"n": {"type": "integer", "value": n}}));
    }
    members
}

/// Writes every packet of `packets` without reading in between.
fn burst(sender: &mut Client, packets: impl Iterator<Item = Value>) {
    for p in packets {
        sender.send_packet(&p);
    }
}

fn send_packet(target: Value, nonce: Value, payload: Value) -> Value {
    json!({"op": 4, "t": "SEND", "d": {"target": target, "nonce": nonce, "payload": payload}})
}

fn a_burst_arrives_complete_and_in_order(shards: usize) {
    let server = Server::start(&["--shards", &shards.to_string()]);
    let mut members = recipients(&server);
    let mut sender = Client::ready(&server, Json, "s", "sender");
    let k = members.len();
    let target = |i: usize| match (i / k).is_multiple_of(2) {
        true => to_recipient(i % k),
        false => to_recipient_slowly(i % k),
    };
    burst(
        &mut sender,
        (0..BURST).map(|i| send_packet(target(i), json!(i), json!({"seq": i}))),
    );
    sender.sync();
    for (n, m) in members.iter_mut().enumerate() {
        let want: Vec<u64> = (0..BURST)
            .filter(|i| i % k == n)
            .map(|i| i as u64)
            .collect();
        let got: Vec<u64> = want
            .iter()
            .map(|_| {
                m.client.expect_dispatch("SEND")["payload"]["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            got, want,
            "{} (shard {}) got them out of order",
            m.id, m.shard
        );
        m.client.expect_quiet();
    }
    // With other shards to ask, the burst overlapped: SENDs started while
    // earlier ones were still being routed.
    let overlapped = scrape_counter(&server, "singyeong_routing_overlapped_total");
    if shards > 1 {
        assert!(overlapped > 0.0, "no SEND was pipelined");
    }
}

#[test]
fn a_burst_arrives_complete_and_in_order_on_one_shard() {
    a_burst_arrives_complete_and_in_order(1);
}

#[test]
fn a_burst_arrives_complete_and_in_order_across_three_shards() {
    a_burst_arrives_complete_and_in_order(3);
}

#[test]
fn no_route_answers_name_their_packets_and_precede_the_heartbeat_ack() {
    let server = Server::start(&["--shards", "3"]);
    let _members = recipients(&server);
    let mut sender = Client::ready(&server, Json, "s", "sender");
    // Every other SEND targets a recipient that does not exist.
    let target = |i: usize| to_recipient(if i.is_multiple_of(2) { 0 } else { 1000 + i });
    burst(
        &mut sender,
        (0..400).map(|i| send_packet(target(i), json!(i), json!("p"))),
    );
    sender.send(OP_HEARTBEAT, json!({"client_id": "sender"}), None);
    let mut answered = BTreeSet::new();
    loop {
        let p = sender.recv();
        if p["op"] == json!(OP_HEARTBEAT_ACK) {
            break;
        }
        assert_eq!(p["op"], json!(OP_INVALID), "{p}");
        assert_eq!(p["d"]["error"], json!("no_route"), "{p}");
        let d = &p["d"]["extra_info"]["d"];
        let i = d["nonce"].as_u64().unwrap() as usize;
        assert_eq!(d["target"], target(i), "{p}");
        assert!(answered.insert(i), "answered twice: {i}");
    }
    let odd: BTreeSet<usize> = (0..400usize).filter(|i| !i.is_multiple_of(2)).collect();
    assert_eq!(
        answered, odd,
        "every no_route arrives before the heartbeat ack"
    );
}

#[test]
fn max_in_flight_one_routes_one_at_a_time() {
    let server = Server::start(&["--shards", "3", "--max-in-flight", "1"]);
    let mut members = recipients(&server);
    let mut sender = Client::ready(&server, Json, "s", "sender");
    let k = members.len();
    burst(
        &mut sender,
        (0..300).map(|i| send_packet(to_recipient(i % k), json!(i), json!({"seq": i}))),
    );
    sender.sync();
    for m in &mut members {
        for _ in 0..300 / k {
            m.client.expect_dispatch("SEND");
        }
    }
    assert_eq!(
        scrape_counter(&server, "singyeong_routing_overlapped_total"),
        0.0
    );
}
