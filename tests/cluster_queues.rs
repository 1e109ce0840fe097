//! Queues in a cluster, over real processes on loopback: producers and
//! consumers on any node reach the queue's one owner node, dead-letter
//! checks count clients on every node, and no confirmed message is lost
//! when the owner is killed, other nodes take the queue over meanwhile,
//! and the owner comes back with its log.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{ANY, DataDir, down, gossip_of, node, wait_linked, wait_until};
use common::{Client, Encoding, Server, meta, op, query_ops};
use serde_json::{Value, json};

fn colored(color: &str) -> Value {
    query_ops("app", json!([op("/color", "$eq", json!(color))]))
}

fn with_color(color: &str) -> Value {
    json!({"metadata": {"color": meta("string", json!(color))}})
}

/// QUEUE and its confirm; returns the message id.
fn push(c: &mut Client, queue: &str, target: Value, payload: Value) -> String {
    c.dispatch(
        "QUEUE",
        json!({"queue": queue, "target": target, "nonce": payload.clone(), "payload": payload}),
    );
    let d = c.expect_dispatch("QUEUE_CONFIRM");
    assert_eq!(d["queue"], json!(queue), "{d}");
    d["id"].as_str().expect("an id").to_string()
}

/// The next packet must be a QUEUE delivery; returns (id, user payload).
fn delivered(c: &mut Client, queue: &str) -> (String, Value) {
    let d = c.expect_dispatch("QUEUE");
    assert_eq!(d["payload"]["queue"], json!(queue), "{d}");
    let id = d["payload"]["id"].as_str().expect("an id").to_string();
    (id, d["payload"]["payload"].clone())
}

fn ack(c: &mut Client, queue: &str, id: &str) {
    c.dispatch("QUEUE_ACK", json!({"queue": queue, "id": id}));
}

/// Waits until every pair of `nodes` (all up, named `names`) is linked.
fn wait_all_linked(nodes: &[Option<Server>], names: &[&str]) {
    let all: Vec<(&Server, &str)> = nodes
        .iter()
        .zip(names)
        .map(|(s, n)| (s.as_ref().expect("up"), *n))
        .collect();
    wait_linked(&all);
}

/// The queue's row on `server` (`None`: that node holds nothing of it).
fn row(server: &Server, queue: &str) -> Option<Value> {
    let r = server.http("GET", "/api/v1/queues", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queue"] == json!(queue))
        .cloned()
}

#[test]
fn producers_and_consumers_on_every_node_share_one_queue() {
    let timers = [
        "--no-durable",
        "--ack-timeout",
        "60000",
        "--dlq-time",
        "60000",
    ];
    let a = node("a", ANY, &[], &[&["--shards", "2"], &timers[..]].concat());
    let ga = gossip_of(&a);
    let b = node("b", ANY, &[ga], &timers);
    let c = node("c", ANY, &[ga], &timers);
    let (gb, gc) = (gossip_of(&b), gossip_of(&c));
    wait_linked(&[(&a, "a"), (&b, "b"), (&c, "c")]);

    let mut red = Client::ready_with(&b, Encoding::Json, "app", "red", with_color("red"));
    let mut blue = Client::ready_with(&c, Encoding::Msgpack, "app", "blue", with_color("blue"));
    let mut producer = Client::ready(&a, Encoding::Json, "app", "producer");
    for consumer in [&mut red, &mut blue] {
        consumer.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}));
        consumer.sync();
    }
    // Each message reaches the one consumer its target names, whichever
    // node owns the queue.
    push(&mut producer, "jobs", colored("blue"), json!("for blue"));
    push(&mut producer, "jobs", colored("red"), json!("for red"));
    let (blue_id, payload) = delivered(&mut blue, "jobs");
    assert_eq!(payload, json!("for blue"));
    let (red_id, payload) = delivered(&mut red, "jobs");
    assert_eq!(payload, json!("for red"));
    // Acks reach the owner: a second ack of the same id is unknown there.
    ack(&mut blue, "jobs", &blue_id);
    ack(&mut red, "jobs", &red_id);
    blue.sync();
    ack(&mut blue, "jobs", &blue_id);
    let extra = blue.expect_invalid("unknown queue message");
    assert_eq!(extra["id"], json!(blue_id), "{extra}");

    let owners: Vec<&Server> = [&a, &b, &c]
        .into_iter()
        .filter(|s| row(s, "jobs").is_some())
        .collect();
    assert_eq!(owners.len(), 1, "one node holds the queue");
    let owner = owners[0];
    wait_until("two acks at the owner", Duration::from_secs(5), || {
        row(owner, "jobs").is_some_and(|r| r["acked"] == json!(2))
    });

    // Blue is connected (on its node) without a credit: a message for blue
    // waits for it. Nobody anywhere is green: that message is dead-lettered.
    push(&mut producer, "jobs", colored("blue"), json!("later"));
    push(&mut producer, "jobs", colored("green"), json!("nobody"));
    wait_until("the dead-letter check", Duration::from_secs(5), || {
        row(owner, "jobs").is_some_and(|r| r["dead_letter"] == json!(1))
    });
    let r = row(owner, "jobs").expect("the row");
    assert_eq!(r["depth"], json!(1), "{r}");
    blue.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}));
    let (_, payload) = delivered(&mut blue, "jobs");
    assert_eq!(payload, json!("later"));
    red.expect_nothing(Duration::from_millis(100));

    // The traffic with each other node is counted by its address.
    let metrics = a.http("GET", "/metrics", &[], None).text();
    for peer in [gb, gc] {
        for direction in ["received", "sent"] {
            let series = format!(
                "singyeong_cluster_peer_frames_total{{peer=\"{peer}\",direction=\"{direction}\"}} "
            );
            let n: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {series} in /metrics"));
            assert!(n > 0, "{series}");
        }
    }
}

#[test]
fn no_confirmed_message_is_lost_when_the_queue_owner_dies_and_comes_back() {
    let dirs = [DataDir::new("a"), DataDir::new("b"), DataDir::new("c")];
    let names = ["a", "b", "c"];
    // Each node picks its port on its first start; a restart takes the
    // same address again.
    let gossip = std::cell::RefCell::new([ANY; 3]);
    let start = |i: usize| {
        let known = *gossip.borrow();
        let peers: Vec<_> = (0..3)
            .filter(|&j| j != i && known[j] != ANY)
            .map(|j| known[j])
            .collect();
        let server = node(
            names[i],
            known[i],
            &peers,
            &[
                "--data-dir",
                dirs[i].path(),
                "--cluster-down-after",
                "2000",
                "--ack-timeout",
                "60000",
            ],
        );
        gossip.borrow_mut()[i] = gossip_of(&server);
        server
    };
    let mut nodes: Vec<Option<Server>> = (0..3).map(|i| Some(start(i))).collect();
    wait_all_linked(&nodes, &names);
    // Which node owns the queue: the one that shows it after a message.
    let mut probe = Client::ready(
        nodes[0].as_ref().expect("up"),
        Encoding::Json,
        "app",
        "probe",
    );
    push(&mut probe, "jobs", json!({"application": "app"}), json!(0));
    probe.close();
    let owner = (0..3)
        .find(|&i| row(nodes[i].as_ref().expect("up"), "jobs").is_some())
        .expect("an owner");
    let (p, k) = match owner {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let mut producer = Client::ready(nodes[p].as_ref().expect("up"), Encoding::Json, "app", "p");
    let mut consumer = Client::ready(nodes[k].as_ref().expect("up"), Encoding::Json, "app", "k");
    // Connected throughout, asking for nothing until the end.
    let mut green = Client::ready_with(
        nodes[k].as_ref().expect("up"),
        Encoding::Json,
        "app",
        "green",
        with_color("green"),
    );
    let target = json!({"application": "app"});
    for i in 1..=5 {
        push(&mut producer, "jobs", target.clone(), json!(i));
    }

    // The owner dies with six confirmed messages in its log.
    nodes[owner].as_mut().expect("up").kill();
    nodes[owner] = None;
    for i in [p, k] {
        let s = nodes[i].as_ref().expect("up");
        wait_until("the owner seen down", Duration::from_secs(10), || {
            down(s, names[owner])
        });
    }
    // Meanwhile another node takes the queue: new messages are confirmed,
    // and a consumer is served from them.
    for i in 6..=8 {
        push(&mut producer, "jobs", target.clone(), json!(i));
    }
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        consumer.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}));
        let (id, payload) = delivered(&mut consumer, "jobs");
        ack(&mut consumer, "jobs", &id);
        got.insert(payload.as_i64().expect("a number"));
    }
    // Credits waiting at the interim owner follow the queue back.
    for _ in 0..3 {
        consumer.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}));
    }
    consumer.sync();
    // Messages for green wait at the interim owner (green is connected).
    for i in 9..=10 {
        push(&mut producer, "jobs", colored("green"), json!(i));
    }
    let interim = [p, k]
        .into_iter()
        .find(|&i| {
            row(nodes[i].as_ref().expect("up"), "jobs").is_some_and(|r| r["depth"] == json!(2))
        })
        .expect("the interim owner holds green's two messages");

    // The owner comes back with its log: the interim node hands over what
    // it still holds, and every message is delivered.
    nodes[owner] = Some(start(owner));
    wait_all_linked(&nodes, &names);
    for _ in 0..4 {
        consumer.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}));
    }
    for _ in 0..7 {
        let (id, payload) = delivered(&mut consumer, "jobs");
        ack(&mut consumer, "jobs", &id);
        assert!(
            got.insert(payload.as_i64().expect("a number")),
            "{payload} twice"
        );
    }
    assert_eq!(got, (0..=8).collect::<BTreeSet<i64>>());
    consumer.expect_nothing(Duration::from_millis(200));
    // Green's messages were handed over to the owner, which serves them
    // (an offer lost with a link replaced as the owner came back is made
    // again after a few seconds).
    for _ in 0..2 {
        green.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}));
    }
    for _ in 0..2 {
        let p = green.recv_within(Duration::from_secs(15));
        assert_eq!(p["t"], json!("QUEUE"), "{p}");
        let payload = &p["d"]["payload"];
        let id = payload["id"].as_str().expect("an id").to_string();
        let payload = payload["payload"].clone();
        ack(&mut green, "jobs", &id);
        assert!(got.insert(payload.as_i64().expect("a number")));
    }
    assert!(got.contains(&9) && got.contains(&10));
    let total = |s: &Server, name: &str| -> u64 {
        s.http("GET", "/metrics", &[], None)
            .text()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let handed = total(
        nodes[interim].as_ref().expect("up"),
        "singyeong_queue_handed_over_total",
    );
    let taken = total(
        nodes[owner].as_ref().expect("up"),
        "singyeong_queue_taken_over_total",
    );
    assert!(
        handed >= 2 && taken >= 2,
        "handed over {handed}, taken over {taken}"
    );
    // Nothing is left anywhere.
    for s in nodes.iter().flatten() {
        wait_until("every copy gone", Duration::from_secs(10), || {
            row(s, "jobs").is_none_or(|r| r["depth"] == json!(0) && r["in_flight"] == json!(0))
        });
    }
}
