//! Work queues over real sockets (contract §6 QUEUE events, §7 queues).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("singyeong-queue-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ACK_MS: u64 = 500;
const DLQ_MS: u64 = 500;

/// An in-memory server with short timers, plus `extra` flags.
fn server(extra: &[&str]) -> Server {
    let ack = ACK_MS.to_string();
    let dlq = DLQ_MS.to_string();
    let mut args = vec!["--no-durable"];
    if !extra.contains(&"--ack-timeout") {
        args.extend(["--ack-timeout", &ack]);
    }
    if !extra.contains(&"--dlq-time") {
        args.extend(["--dlq-time", &dlq]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn to_app(app: &str) -> Value {
    json!({"application": app})
}

fn colored(app: &str, color: &str) -> Value {
    query_ops(app, json!([op("/color", "$eq", json!(color))]))
}

fn with_color(color: &str) -> Value {
    json!({"metadata": {"color": meta("string", json!(color))}})
}

/// QUEUE and its confirm; returns the message id.
fn push(c: &mut Client, queue: &str, target: Value, nonce: Value, payload: Value) -> String {
    c.dispatch(
        "QUEUE",
        json!({"queue": queue, "target": target, "nonce": nonce, "payload": payload}),
    );
    let d = c.expect_dispatch("QUEUE_CONFIRM");
    assert_eq!(d["queue"], json!(queue), "{d}");
    assert_eq!(d["nonce"], nonce, "{d}");
    d["id"].as_str().expect("id is a string").to_string()
}

fn request(c: &mut Client, queue: &str) {
    c.dispatch("QUEUE_REQUEST", json!({"queue": queue}));
}

fn ack(c: &mut Client, queue: &str, id: &str) {
    c.dispatch("QUEUE_ACK", json!({"queue": queue, "id": id}));
}

/// The next packet must be a QUEUE delivery; returns (id, user payload).
fn delivered(c: &mut Client, queue: &str) -> (String, Value) {
    let d = c.expect_dispatch("QUEUE");
    let p = &d["payload"];
    assert_eq!(p["queue"], json!(queue), "{d}");
    (
        p["id"].as_str().expect("id").to_string(),
        p["payload"].clone(),
    )
}

fn queue_stats(server: &Server, queue: &str) -> Value {
    let r = server.http("GET", "/api/v1/queues", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == json!(queue))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls the queue's stats until `f` holds (bounded by STEP).
fn wait_stats(server: &Server, queue: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let s = queue_stats(server, queue);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stats never matched: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn queue_is_confirmed_delivered_on_request_and_acked() {
    let s = server(&[]);
    let mut producer = Client::ready(&s, Encoding::Json, "app", "producer");
    let mut consumer = Client::ready(&s, Encoding::Msgpack, "app", "consumer");
    let id = push(
        &mut producer,
        "jobs",
        to_app("app"),
        json!("n1"),
        json!({"work": 1}),
    );
    request(&mut consumer, "jobs");
    let d = consumer.expect_dispatch("QUEUE");
    assert_eq!(
        d,
        json!({"nonce": "n1", "payload": {"queue": "jobs", "id": id, "payload": {"work": 1}}})
    );
    ack(&mut consumer, "jobs", &id);
    consumer.sync();
    // Acked for good: no redelivery after the ack timeout.
    request(&mut consumer, "jobs");
    consumer.expect_nothing(Duration::from_millis(ACK_MS * 2));
    let st = queue_stats(&s, "jobs");
    assert_eq!(st["depth"], json!(0), "{st}");
    assert_eq!(st["in_flight"], json!(0), "{st}");
    assert_eq!(st["acked"], json!(1), "{st}");
    producer.expect_quiet();
}

#[test]
fn a_request_is_one_credit_and_longest_waiting_is_served_first() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut a = Client::ready(&s, Encoding::Json, "app", "a");
    let mut b = Client::ready(&s, Encoding::Json, "app", "b");
    request(&mut a, "q");
    a.sync();
    request(&mut b, "q");
    b.sync();
    let m1 = push(&mut p, "q", to_app("app"), json!(1), json!(1));
    assert_eq!(delivered(&mut a, "q").0, m1);
    ack(&mut a, "q", &m1);
    let m2 = push(&mut p, "q", to_app("app"), json!(2), json!(2));
    assert_eq!(delivered(&mut b, "q").0, m2);
    ack(&mut b, "q", &m2);
    // Both credits are used up: the third waits.
    let m3 = push(&mut p, "q", to_app("app"), json!(3), json!(3));
    a.expect_quiet();
    b.expect_quiet();
    request(&mut b, "q");
    assert_eq!(delivered(&mut b, "q").0, m3);
    ack(&mut b, "q", &m3);
    a.sync();
    b.sync();
    a.expect_quiet();
}

#[test]
fn fifo_order_per_matching_consumer() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Etf, "app", "c");
    let ids: Vec<String> = (0..20)
        .map(|i| push(&mut p, "fifo", to_app("app"), json!(i), json!(i)))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        request(&mut c, "fifo");
        let (got, payload) = delivered(&mut c, "fifo");
        assert_eq!(&got, id);
        assert_eq!(payload, json!(i));
        ack(&mut c, "fifo", &got);
    }
    // Many credits at once: the rest still arrive in order.
    let ids: Vec<String> = (0..10)
        .map(|i| push(&mut p, "fifo", to_app("app"), json!(i), json!(i)))
        .collect();
    for _ in 0..10 {
        request(&mut c, "fifo");
    }
    for id in &ids {
        assert_eq!(&delivered(&mut c, "fifo").0, id);
    }
}

#[test]
fn unmatched_message_stays_queued_without_blocking_the_next() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    // Connected but not waiting: the green message is not dead-lettered.
    let mut green = Client::ready_with(&s, Encoding::Json, "app", "green", with_color("green"));
    let mut red = Client::ready_with(&s, Encoding::Json, "app", "red", with_color("red"));
    let g = push(
        &mut p,
        "hol",
        colored("app", "green"),
        json!("g"),
        json!("g"),
    );
    let r = push(&mut p, "hol", colored("app", "red"), json!("r"), json!("r"));
    request(&mut red, "hol");
    assert_eq!(delivered(&mut red, "hol").0, r);
    request(&mut green, "hol");
    assert_eq!(delivered(&mut green, "hol").0, g);
    red.expect_quiet();
}

#[test]
fn metadata_update_lets_a_waiting_consumer_match() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready_with(&s, Encoding::Json, "app", "c", with_color("red"));
    // Someone blue is connected, so the blue message stays queued.
    let _blue = Client::ready_with(&s, Encoding::Json, "app", "blue", with_color("blue"));
    request(&mut c, "upd");
    let id = push(&mut p, "upd", colored("app", "blue"), json!(1), json!(1));
    c.expect_quiet();
    c.update_metadata(json!({"color": meta("string", json!("blue"))}));
    assert_eq!(delivered(&mut c, "upd").0, id);
}

#[test]
fn ack_of_unknown_or_someone_elses_message_is_invalid() {
    let s = server(&["--ack-timeout", "60000"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut a = Client::ready(&s, Encoding::Json, "app", "a");
    let mut b = Client::ready(&s, Encoding::Json, "app", "b");
    ack(&mut a, "q", "12345");
    let extra = a.expect_invalid("unknown queue message");
    assert_eq!(extra["id"], json!("12345"), "{extra}");
    let id = push(&mut p, "q", to_app("app"), json!(1), json!(1));
    request(&mut a, "q");
    delivered(&mut a, "q");
    ack(&mut b, "q", &id);
    b.expect_invalid("queue message delivered to another client");
    ack(&mut a, "q", "not a number");
    a.expect_invalid("unknown queue message");
    ack(&mut a, "q", &id);
    a.sync();
    ack(&mut a, "q", &id);
    a.expect_invalid("unknown queue message");
    // Malformed packets.
    a.dispatch("QUEUE_REQUEST", json!({}));
    a.expect_invalid("invalid dispatch payload");
    a.dispatch("QUEUE", json!({"queue": "q", "nonce": 1, "payload": 1}));
    a.expect_invalid("invalid dispatch payload");
    a.dispatch(
        "QUEUE",
        json!({"queue": "q", "target": {"ops": [{"path": "x", "op": "$eq", "to": {"value": 1}}]}}),
    );
    a.expect_invalid_prefix(texts::INVALID_QUERY_PREFIX);
    a.dispatch("QUEUE_ACK", json!({"queue": "q"}));
    a.expect_invalid("invalid dispatch payload");
}

#[test]
fn unacked_message_is_redelivered_after_ack_timeout() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut a = Client::ready(&s, Encoding::Json, "app", "a");
    let id = push(&mut p, "rt", to_app("app"), json!(1), json!("x"));
    request(&mut a, "rt");
    let t0 = Instant::now();
    assert_eq!(delivered(&mut a, "rt").0, id);
    request(&mut a, "rt");
    // Same client, second credit: the message comes back after the timeout.
    assert_eq!(delivered(&mut a, "rt").0, id);
    assert!(
        t0.elapsed() >= Duration::from_millis(ACK_MS - 50),
        "redelivered after {:?}",
        t0.elapsed()
    );
    // The first delivery's ack no longer counts twice; this one does.
    ack(&mut a, "rt", &id);
    a.sync();
    let st = wait_stats(&s, "rt", |st| st["acked"] == json!(1));
    assert_eq!(st["redelivered"], json!(1), "{st}");
    assert_eq!(st["in_flight"], json!(0), "{st}");
}

#[test]
fn disconnect_redelivers_at_once_and_drops_credits() {
    let s = server(&["--ack-timeout", "60000"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut a = Client::ready(&s, Encoding::Json, "app", "a");
    let mut b = Client::ready(&s, Encoding::Json, "app", "b");
    let id = push(&mut p, "dc", to_app("app"), json!(1), json!(1));
    request(&mut a, "dc");
    request(&mut a, "dc");
    assert_eq!(delivered(&mut a, "dc").0, id);
    a.sync();
    request(&mut b, "dc");
    b.expect_quiet();
    a.close();
    // Long before the 60 s ack timeout.
    assert_eq!(delivered(&mut b, "dc").0, id);
    // a's second credit vanished with it: a new message waits for b.
    let next = push(&mut p, "dc", to_app("app"), json!(2), json!(2));
    let st = wait_stats(&s, "dc", |st| st["depth"] == json!(1));
    assert_eq!(st["waiting"], json!(0), "{st}");
    request(&mut b, "dc");
    assert_eq!(delivered(&mut b, "dc").0, next);
}

#[test]
fn message_matching_no_connected_client_is_dead_lettered_then_returns() {
    let s = server(&["--dlq-time", "800"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let id = push(&mut p, "dl", to_app("nobody"), json!(1), json!(1));
    let st = wait_stats(&s, "dl", |st| st["dead_letter"] == json!(1));
    assert_eq!(st["depth"], json!(0), "{st}");
    let t0 = Instant::now();
    let mut c = Client::ready(&s, Encoding::Json, "nobody", "c");
    request(&mut c, "dl");
    assert_eq!(delivered(&mut c, "dl").0, id);
    assert!(
        t0.elapsed() < Duration::from_millis(800 + 1000),
        "returned after {:?}",
        t0.elapsed()
    );
    let st = queue_stats(&s, "dl");
    assert_eq!(st["dead_lettered"], json!(1), "{st}");
}

#[test]
fn cancel_withdraws_credits_and_client_object_lists_waiting_queues() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    request(&mut c, "one");
    request(&mut c, "two");
    c.sync();
    let nodes = p
        .query_nodes(json!({"application": "app", "ops": [op("/encoding", "$eq", json!("json"))]}));
    let n = node_of(&nodes, "c");
    assert_eq!(n["queues"], json!(["one", "two"]), "{n}");
    c.dispatch("QUEUE_REQUEST_CANCEL", json!({"queue": "one"}));
    c.sync();
    let nodes = p.query_nodes(query("app"));
    assert_eq!(node_of(&nodes, "c")["queues"], json!(["two"]));
    push(&mut p, "one", to_app("app"), json!(1), json!(1));
    c.expect_quiet();
    push(&mut p, "two", to_app("app"), json!(2), json!(2));
    delivered(&mut c, "two");
    let nodes = p.query_nodes(query("app"));
    assert_eq!(node_of(&nodes, "c")["queues"], json!([]));
}

#[test]
fn limits_reject_without_losing_what_is_queued() {
    let s = server(&["--max-queue-length", "2", "--max-queue-message-size", "100"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let a = push(&mut p, "lim", to_app("app"), json!(1), json!(1));
    let b = push(&mut p, "lim", to_app("app"), json!(2), json!(2));
    p.dispatch(
        "QUEUE",
        json!({"queue": "lim", "target": to_app("app"), "nonce": 3, "payload": 3}),
    );
    let extra = p.expect_invalid("queue full");
    assert_eq!(extra["max_queue_length"], json!(2), "{extra}");
    p.dispatch(
        "QUEUE",
        json!({"queue": "other", "target": to_app("app"), "nonce": 4, "payload": "x".repeat(200)}),
    );
    let extra = p.expect_invalid("queue message too large");
    assert_eq!(extra["max_queue_message_size"], json!(100), "{extra}");
    for id in [a, b] {
        request(&mut c, "lim");
        let (got, _) = delivered(&mut c, "lim");
        assert_eq!(got, id);
        ack(&mut c, "lim", &got);
    }
    c.sync();
    // Room again.
    push(&mut p, "lim", to_app("app"), json!(5), json!(5));
    // Credits are bounded the same way.
    request(&mut c, "empty");
    request(&mut c, "empty");
    request(&mut c, "empty");
    let extra = c.expect_invalid("too many queue requests");
    assert_eq!(extra["max_queue_length"], json!(2), "{extra}");
}

#[test]
fn queues_api_needs_auth() {
    let s = Server::start(&["--no-durable", "--auth", "pw"]);
    let r = s.http("GET", "/api/v1/queues", &[], None);
    assert_eq!(r.status, 401);
    let r = s.http("GET", "/api/v1/queues", &[("Authorization", "pw")], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"queues": [], "log": []}));
}

#[test]
fn owner_shard_differs_from_producer_and_consumer_shards() {
    let s = server(&["--shards", "3", "--ack-timeout", "60000"]);
    let mut observer = Client::ready(&s, Encoding::Json, "obs", "obs");
    let members = spread(&s, &mut observer, "w", 3, &[Encoding::Json], json!({}));
    let mut by_shard: Vec<Member> = Vec::new();
    for m in members {
        if !by_shard.iter().any(|x| x.shard == m.shard) {
            by_shard.push(m);
        }
    }
    assert!(by_shard.len() >= 3, "clients on 3 shards");
    let mut producer = by_shard.remove(0);
    let mut consumer = by_shard.remove(0);
    let mut other = by_shard.remove(0);
    // Find a queue owned by neither the producer's nor the consumer's shard.
    let name = (0..200)
        .map(|i| format!("x{i}"))
        .find(|name| {
            push(
                &mut producer.client,
                name,
                to_app("none"),
                json!(0),
                json!(0),
            );
            let st = wait_stats(&s, name, |st| !st.is_null());
            let owner = st["shard"].as_u64().unwrap();
            owner != producer.shard && owner != consumer.shard
        })
        .expect("some queue name hashes to the third shard");
    let name = name.as_str();
    let ids: Vec<String> = (0..10)
        .map(|i| push(&mut producer.client, name, to_app("w"), json!(i), json!(i)))
        .collect();
    // The name's first message (to app "none") is dead-lettered meanwhile.
    for id in &ids {
        request(&mut consumer.client, name);
        let (got, _) = delivered(&mut consumer.client, name);
        assert_eq!(&got, id);
        ack(&mut consumer.client, name, &got);
    }
    // Redelivery on disconnect across shards.
    let id = push(
        &mut producer.client,
        name,
        to_app("w"),
        json!("d"),
        json!("d"),
    );
    request(&mut consumer.client, name);
    assert_eq!(delivered(&mut consumer.client, name).0, id);
    request(&mut other.client, name);
    other.client.sync();
    consumer.client.close();
    assert_eq!(delivered(&mut other.client, name).0, id);
    ack(&mut other.client, name, &id);
    wait_stats(&s, name, |st| st["acked"] == json!(11));
    // Acking from the wrong shard/client.
    ack(&mut producer.client, name, &id);
    producer.client.expect_invalid("unknown queue message");
}

#[test]
fn at_least_once_while_consumers_disconnect_mid_stream() {
    let s = server(&["--shards", "2", "--ack-timeout", "60000"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let total = 60;
    let ids: BTreeSet<String> = (0..total)
        .map(|i| push(&mut p, "alo", to_app("app"), json!(i), json!(i)))
        .collect();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    // Flaky consumers: take five, ack two, vanish.
    for round in 0..10 {
        let mut c = Client::ready(&s, Encoding::Json, "app", &format!("flaky{round}"));
        for _ in 0..5 {
            request(&mut c, "alo");
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(delivered(&mut c, "alo").0);
        }
        for id in got.iter().take(2) {
            ack(&mut c, "alo", id);
            acked.insert(id.clone());
        }
        c.sync();
        if round % 2 == 0 {
            c.close();
        } else {
            c.drop_tcp();
        }
    }
    let mut steady = Client::ready(&s, Encoding::Json, "app", "steady");
    while acked.len() < ids.len() {
        request(&mut steady, "alo");
        let (id, _) = delivered(&mut steady, "alo");
        ack(&mut steady, "alo", &id);
        acked.insert(id);
    }
    assert_eq!(acked, ids);
    steady.sync();
    let st = queue_stats(&s, "alo");
    assert_eq!(st["depth"], json!(0), "{st}");
    assert_eq!(st["in_flight"], json!(0), "{st}");
}

// ---------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------

fn durable(dir: &TempDir, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", dir.path(), "--ack-timeout", "60000"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Requests until every id of `want` arrived (duplicates allowed).
fn drain_all(c: &mut Client, queue: &str, want: &BTreeSet<String>) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + STEP * 4;
    while !want.is_subset(&got) {
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            want.difference(&got).collect::<Vec<_>>()
        );
        request(c, queue);
        let (id, _) = delivered(c, queue);
        ack(c, queue, &id);
        got.insert(id);
    }
    got
}

#[test]
fn confirmed_messages_survive_sigkill() {
    let dir = TempDir::new("crash");
    let mut s = durable(&dir, &["--shards", "2"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    // Stream without waiting; count confirms as they come.
    let total = 400;
    for i in 0..total {
        p.dispatch(
            "QUEUE",
            json!({"queue": "crash", "target": to_app("app"), "nonce": i, "payload": {"n": i}}),
        );
    }
    let mut confirmed = BTreeSet::new();
    while confirmed.len() < total / 3 {
        let d = p.expect_dispatch("QUEUE_CONFIRM");
        confirmed.insert(d["id"].as_str().unwrap().to_string());
    }
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    // Confirms already on the wire before the kill count too.
    while let Event::Packet(pk) = p.next_event(Duration::from_millis(200)) {
        if pk["t"] == json!("QUEUE_CONFIRM") {
            confirmed.insert(pk["d"]["id"].as_str().unwrap().to_string());
        }
    }
    drop(p);
    let s = durable(&dir, &["--shards", "3"]);
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let got = drain_all(&mut c, "crash", &confirmed);
    assert!(got.is_superset(&confirmed));
    // Drain what else was recovered (written but not yet confirmed).
    loop {
        request(&mut c, "crash");
        match c.next_event(QUIET) {
            Event::Packet(p) if p["t"] == json!("QUEUE") => {
                let id = p["d"]["payload"]["id"].as_str().unwrap().to_string();
                ack(&mut c, "crash", &id);
            }
            Event::Timeout => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every ack applied and on disk, then kill again: acked stays acked.
    wait_stats(&s, "crash", |st| {
        st["depth"] == json!(0) && st["in_flight"] == json!(0)
    });
    let deadline = Instant::now() + STEP;
    loop {
        let st = s.http("GET", "/api/v1/queues", &[], None).json();
        let logs = st["log"].as_array().unwrap().clone();
        if logs.iter().all(|l| l["written"] == l["records"]) {
            break;
        }
        assert!(Instant::now() < deadline, "log never caught up: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    drop(s);
    let s = durable(&dir, &[]);
    let st = queue_stats(&s, "crash");
    assert!(
        st.is_null() || st["depth"] == json!(0),
        "acked messages came back: {st}"
    );
}

/// The log files of a data directory.
fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// The segment header and write alignment of the log format (see
/// src/queue/wal/segment.rs): block 0 is the header, each write starts on
/// a block boundary.
const LOG_BLOCK: usize = 4096;
/// `[len u32][crc u32][seq u64]` before each record's body.
const FRAME_HEADER: usize = 16;

/// Offsets of each record's frame in a log segment. Segments of earlier
/// versions (no header, `[len u32][crc u32]` frames from offset 0) are
/// read too, so that the tests below can run against them.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let legacy = !bytes.starts_with(b"SYWAL\0v2");
    let (mut pos, header) = if legacy {
        (0, 8)
    } else {
        (LOG_BLOCK, FRAME_HEADER)
    };
    let mut out = Vec::new();
    while pos + header <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            if legacy {
                break;
            }
            // Padding to the end of the block: the next write starts there.
            pos = (pos / LOG_BLOCK + 1) * LOG_BLOCK;
            continue;
        }
        if pos + header + len > bytes.len() {
            break;
        }
        out.push(pos);
        pos += header + len;
    }
    out
}

#[test]
fn torn_or_corrupt_log_tail_recovers_to_the_last_good_record() {
    for damage in ["truncate", "corrupt", "garbage"] {
        let dir = TempDir::new(damage);
        let mut s = durable(&dir, &["--shards", "1"]);
        let mut p = Client::ready(&s, Encoding::Json, "app", "p");
        let ids: Vec<String> = (0..3)
            .map(|i| push(&mut p, "torn", to_app("app"), json!(i), json!(i)))
            .collect();
        s.signal("KILL");
        s.wait_exit(STEP).expect("killed");
        let files = logs(&dir.0);
        assert_eq!(files.len(), 1, "{files:?}");
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let offsets = record_offsets(&bytes);
        assert_eq!(offsets.len(), 3, "three enqueue records");
        let last = offsets[2];
        let survivors = match damage {
            "truncate" => {
                bytes.truncate(last + 11);
                2
            }
            "corrupt" => {
                bytes[last + FRAME_HEADER + 4] ^= 0xff;
                2
            }
            _ => {
                let end = offsets[2]
                    + FRAME_HEADER
                    + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
                bytes.truncate(end);
                bytes.extend_from_slice(&[0xa5; 100]);
                3
            }
        };
        std::fs::write(&files[0], &bytes).unwrap();
        let s = durable(&dir, &["--shards", "1"]);
        let mut c = Client::ready(&s, Encoding::Json, "app", "c");
        let want: BTreeSet<String> = ids[..survivors].iter().cloned().collect();
        for id in &ids[..survivors] {
            request(&mut c, "torn");
            let (got, _) = delivered(&mut c, "torn");
            assert_eq!(&got, id, "{damage}");
        }
        let _ = want;
        request(&mut c, "torn");
        c.expect_quiet();
        // Still writable after recovery.
        let mut p = Client::ready(&s, Encoding::Json, "app", "p2");
        let id = push(&mut p, "torn", to_app("app"), json!(9), json!(9));
        assert_eq!(delivered(&mut c, "torn").0, id, "{damage}");
    }
}

#[test]
fn data_dir_is_created_lazily_and_locked() {
    let dir = TempDir::new("lock");
    let s = durable(&dir, &[]);
    assert!(!dir.0.exists(), "no queue used yet, no directory");
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    push(&mut p, "l", to_app("app"), json!(1), json!(1));
    assert!(dir.0.join("LOCK").exists());
    // A second server on the same directory refuses to start.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_singyeong"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            dir.path(),
        ])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second server started on a locked data directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("locked"), "{err}");
}

#[test]
fn log_segments_rotate_and_acked_segments_are_deleted() {
    let dir = TempDir::new("segments");
    let s = durable(&dir, &["--shards", "1", "--queue-segment-bytes", "4096"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let payload = json!("y".repeat(500));
    let ids: Vec<String> = (0..40)
        .map(|i| push(&mut p, "seg", to_app("app"), json!(i), payload.clone()))
        .collect();
    let before = logs(&dir.0).len();
    assert!(before >= 4, "rotated into {before} segments");
    for id in &ids {
        request(&mut c, "seg");
        let (got, _) = delivered(&mut c, "seg");
        assert_eq!(&got, id);
        ack(&mut c, "seg", &got);
    }
    c.sync();
    // One more write lets the writer notice and delete what is all acked.
    let last = push(&mut p, "seg", to_app("app"), json!("last"), json!(1));
    let deadline = Instant::now() + STEP;
    while logs(&dir.0).len() > 2 {
        assert!(
            Instant::now() < deadline,
            "acked segments not deleted: {:?}",
            logs(&dir.0)
        );
        std::thread::sleep(Duration::from_millis(20));
        push(&mut p, "seg-nudge", to_app("nobody"), json!(0), json!(0));
    }
    drop(c);
    drop(s);
    // Only the unacked message comes back.
    let s = durable(&dir, &["--shards", "1"]);
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    request(&mut c, "seg");
    assert_eq!(delivered(&mut c, "seg").0, last);
    c.expect_quiet();
}

#[test]
fn optional_target_falls_back_to_any_client_of_the_app() {
    let s = server(&[]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready_with(&s, Encoding::Json, "app", "c", with_color("red"));
    let target = with(colored("app", "purple"), "optional", json!(true));
    let id = push(&mut p, "opt", target, json!(1), json!(1));
    request(&mut c, "opt");
    assert_eq!(delivered(&mut c, "opt").0, id);
    let st = queue_stats(&s, "opt");
    assert_eq!(st["dead_lettered"], json!(0), "{st}");
}

#[test]
fn every_fsync_policy_confirms_and_survives_sigkill() {
    for policy in ["group", "each", "none"] {
        let dir = TempDir::new(policy);
        let mut s = durable(&dir, &["--fsync", policy]);
        let mut p = Client::ready(&s, Encoding::Msgpack, "app", "p");
        let ids: Vec<String> = (0..5)
            .map(|i| push(&mut p, "pol", to_app("app"), json!(i), json!({"i": i})))
            .collect();
        s.signal("KILL");
        s.wait_exit(STEP).expect("killed");
        let s = durable(&dir, &["--fsync", policy]);
        let mut c = Client::ready(&s, Encoding::Etf, "app", "c");
        for (i, id) in ids.iter().enumerate() {
            request(&mut c, "pol");
            let (got, payload) = delivered(&mut c, "pol");
            assert_eq!(&got, id, "{policy}");
            assert_eq!(payload, json!({"i": i}), "{policy}");
        }
    }
}

// ---------------------------------------------------------------------------
// Idle queues and log failures
// ---------------------------------------------------------------------------

/// The names of the queues `GET /api/v1/queues` lists.
fn queue_names(server: &Server) -> BTreeSet<String> {
    let r = server.http("GET", "/api/v1/queues", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap().to_string())
        .collect()
}

/// Polls until no listed queue name starts with `prefix` (bounded).
fn wait_forgotten(server: &Server, prefix: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<String> = queue_names(server)
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "never forgotten: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_queues_are_forgotten_and_busy_ones_kept() {
    // Idle period: the longer of the ack timeout and the dead-letter time.
    let s = server(&["--shards", "2"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    // A reply queue per request, as an RPC client would use them.
    for i in 0..40 {
        let name = format!("reply-{i}");
        request(&mut c, &name);
        let id = push(&mut p, &name, to_app("app"), json!(i), json!(i));
        assert_eq!(delivered(&mut c, &name).0, id);
        ack(&mut c, &name, &id);
    }
    c.sync();
    // Drained queues stay listed for the idle period, with their counters.
    let st = queue_stats(&s, "reply-39");
    assert_eq!(st["acked"], json!(1), "{st}");
    // Queues that are not idle: a waiting credit, a message nobody
    // connected matches (dead-lettered, back, dead-lettered again), a
    // message delivered and never acked (redelivered on timeout).
    request(&mut c, "waiting");
    push(&mut p, "held", to_app("nobody"), json!(0), json!(0));
    let mut slow = Client::ready(&s, Encoding::Json, "slow", "slow");
    request(&mut slow, "unacked");
    push(&mut p, "unacked", to_app("slow"), json!(0), json!(0));
    delivered(&mut slow, "unacked");
    c.sync();
    wait_forgotten(
        &s,
        "reply-",
        Duration::from_millis(ACK_MS.max(DLQ_MS)) + STEP,
    );
    let metrics = s.http("GET", "/metrics", &[], None).text();
    assert!(!metrics.contains("queue=\"reply-"), "{metrics}");
    // Several idle periods later the busy ones are still there.
    std::thread::sleep(Duration::from_millis(3 * ACK_MS.max(DLQ_MS)));
    let names = queue_names(&s);
    for busy in ["waiting", "held", "unacked"] {
        assert!(names.contains(busy), "{busy} forgotten: {names:?}");
    }
    assert!(metrics_has_queue(&s, "held"));
    // The waiting credit still works.
    let id = push(&mut p, "waiting", to_app("app"), json!(1), json!(1));
    assert_eq!(delivered(&mut c, "waiting").0, id);
    ack(&mut c, "waiting", &id);
    request(&mut c, "waiting");
    // A forgotten name is simply a new queue.
    request(&mut c, "reply-0");
    let id = push(&mut p, "reply-0", to_app("app"), json!(2), json!(2));
    assert_eq!(delivered(&mut c, "reply-0").0, id);
    let st = queue_stats(&s, "reply-0");
    assert_eq!(st["enqueued"], json!(1), "counters start afresh: {st}");
    ack(&mut c, "reply-0", &id);
    // Once the waiting credit is withdrawn, nothing holds it either.
    c.dispatch("QUEUE_REQUEST_CANCEL", json!({"queue": "waiting"}));
    c.sync();
    wait_forgotten(
        &s,
        "waiting",
        Duration::from_millis(ACK_MS.max(DLQ_MS)) + STEP,
    );
    wait_forgotten(
        &s,
        "reply-",
        Duration::from_millis(ACK_MS.max(DLQ_MS)) + STEP,
    );
    assert!(queue_names(&s).contains("held"));
}

fn metrics_has_queue(server: &Server, queue: &str) -> bool {
    server
        .http("GET", "/metrics", &[], None)
        .text()
        .contains(&format!("queue=\"{queue}\""))
}

#[test]
fn a_forgotten_queue_does_not_come_back_after_a_restart() {
    let dir = TempDir::new("forget");
    let args = [
        "--data-dir",
        dir.path(),
        "--shards",
        "2",
        "--ack-timeout",
        "300",
        "--dlq-time",
        "300",
    ];
    let mut s = Server::start(&args);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    for i in 0..5 {
        let id = push(&mut p, "done", to_app("app"), json!(i), json!(i));
        request(&mut c, "done");
        assert_eq!(delivered(&mut c, "done").0, id);
        ack(&mut c, "done", &id);
    }
    let kept = push(&mut p, "kept", to_app("app"), json!("k"), json!("k"));
    c.sync();
    wait_forgotten(&s, "done", STEP);
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    drop((p, c));
    let s = Server::start(&args);
    let names = queue_names(&s);
    assert!(!names.contains("done"), "{names:?}");
    assert!(names.contains("kept"), "{names:?}");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    request(&mut c, "done");
    c.expect_quiet();
    request(&mut c, "kept");
    assert_eq!(delivered(&mut c, "kept").0, kept);
}

/// What the server answered one QUEUE with.
enum Outcome {
    Confirmed(String),
    /// `queue storage failed` with an id: queued, not confirmed.
    FailedQueued(String),
    /// `queue storage failed` without an id: not queued.
    Refused,
}

fn try_push(c: &mut Client, queue: &str, nonce: u64, payload: &Value) -> Outcome {
    c.dispatch(
        "QUEUE",
        json!({"queue": queue, "target": to_app("app"), "nonce": nonce, "payload": payload}),
    );
    let pk = c.recv_within(STEP);
    if pk["op"] == json!(3) {
        assert_eq!(pk["d"]["error"], json!("queue storage failed"), "{pk}");
        let extra = &pk["d"]["extra_info"];
        assert_eq!(extra["queue"], json!(queue), "{pk}");
        assert_eq!(extra["nonce"], json!(nonce), "{pk}");
        assert!(extra["error"].is_string(), "the cause is given: {pk}");
        return match extra["id"].as_str() {
            Some(id) => Outcome::FailedQueued(id.to_string()),
            None => Outcome::Refused,
        };
    }
    assert_eq!(pk["t"], json!("QUEUE_CONFIRM"), "{pk}");
    assert_eq!(pk["d"]["nonce"], json!(nonce), "{pk}");
    Outcome::Confirmed(pk["d"]["id"].as_str().unwrap().to_string())
}

fn log_stats(server: &Server) -> Value {
    let st = server.http("GET", "/api/v1/queues", &[], None).json();
    st["log"][0].clone()
}

#[test]
fn a_log_that_cannot_be_written_refuses_queue_then_recovers() {
    let dir = TempDir::new("walfail");
    let moved = PathBuf::from(format!("{}-moved", dir.path()));
    let _ = std::fs::remove_dir_all(&moved);
    let args = ["--shards", "1", "--queue-segment-bytes", "4096"];
    let mut s = durable(&dir, &args);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let payload = json!("z".repeat(500));
    // Nonce -> id of what must survive, and of what may.
    let mut confirmed = std::collections::BTreeMap::new();
    let mut queued = std::collections::BTreeMap::new();
    let mut nonce = 0u64;
    let Outcome::Confirmed(id) = try_push(&mut p, "wf", nonce, &payload) else {
        panic!("the first QUEUE is confirmed");
    };
    confirmed.insert(nonce, id);
    // The directory goes away: the open segment still takes writes, the
    // next one cannot be created.
    std::fs::rename(&dir.0, &moved).unwrap();
    let mut refused = 0;
    while refused == 0 {
        nonce += 1;
        assert!(nonce < 100, "the log never failed: {}", log_stats(&s));
        match try_push(&mut p, "wf", nonce, &payload) {
            Outcome::Confirmed(id) => {
                confirmed.insert(nonce, id);
            }
            Outcome::FailedQueued(id) => {
                queued.insert(nonce, id);
            }
            Outcome::Refused => refused += 1,
        }
    }
    assert!(!queued.is_empty(), "the failed write's QUEUE was answered");
    let log = log_stats(&s);
    assert_eq!(log["failed"], json!(true), "{log}");
    assert!(log["write_errors"].as_u64().unwrap() >= 2, "{log}");
    // Still refused while it cannot be written.
    nonce += 1;
    assert!(matches!(
        try_push(&mut p, "wf", nonce, &payload),
        Outcome::Refused
    ));
    // Back: the writer's next retry (every second) succeeds.
    std::fs::rename(&moved, &dir.0).unwrap();
    let deadline = Instant::now() + STEP * 2;
    loop {
        nonce += 1;
        match try_push(&mut p, "wf", nonce, &payload) {
            Outcome::Confirmed(id) => {
                confirmed.insert(nonce, id);
                break;
            }
            Outcome::Refused => {}
            Outcome::FailedQueued(id) => panic!("{id} failed after the log was back"),
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {}",
            log_stats(&s)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(log_stats(&s)["failed"], json!(false));
    for _ in 0..10 {
        nonce += 1;
        let Outcome::Confirmed(id) = try_push(&mut p, "wf", nonce, &payload) else {
            panic!("refused after recovery");
        };
        confirmed.insert(nonce, id);
    }
    // Everything confirmed, and everything queued before the failure, is
    // on disk; nothing refused is.
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    drop(p);
    let s = durable(&dir, &args);
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let mut got = std::collections::BTreeMap::new();
    loop {
        request(&mut c, "wf");
        match c.next_event(QUIET) {
            Event::Packet(pk) if pk["t"] == json!("QUEUE") => {
                let id = pk["d"]["payload"]["id"].as_str().unwrap().to_string();
                got.insert(pk["d"]["nonce"].as_u64().unwrap(), id.clone());
                ack(&mut c, "wf", &id);
            }
            Event::Timeout => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut want = confirmed.clone();
    want.extend(queued);
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&moved);
}

// ---------------------------------------------------------------------------
// Limits on what clients make the server hold (issue 13)
// ---------------------------------------------------------------------------

/// A producer sends a name of 70,000 bytes: every queue dispatch naming it
/// is invalid, nothing is queued or logged, the connection stays open, and
/// the messages other producers queued before and after all survive a
/// `kill -9` (the log once could not parse such a record and dropped
/// everything after it).
#[test]
fn a_queue_name_past_the_limit_is_invalid_and_loses_nothing() {
    let dir = TempDir::new("longname");
    let mut s = durable(&dir, &["--shards", "1"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut other = Client::ready(&s, Encoding::Msgpack, "app", "other");
    let mut want = BTreeSet::new();
    for i in 0..10 {
        want.insert(push(&mut other, "a", to_app("app"), json!(i), json!(i)));
    }
    let long = "q".repeat(70_000);
    let dispatches = |name: &str| {
        [
            (
                "QUEUE",
                json!({"queue": name, "target": to_app("app"), "nonce": 1, "payload": 1}),
            ),
            ("QUEUE_REQUEST", json!({"queue": name})),
            ("QUEUE_REQUEST_CANCEL", json!({"queue": name})),
            ("QUEUE_ACK", json!({"queue": name, "id": "1"})),
        ]
    };
    for (t, d) in dispatches(&long) {
        p.dispatch(t, d);
        let extra = p.expect_invalid("queue name too long");
        assert_eq!(
            extra,
            json!({"length": 70_000, "max_queue_name_length": 255}),
            "{t}"
        );
    }
    for (t, d) in dispatches("") {
        p.dispatch(t, d);
        p.expect_invalid("invalid dispatch payload");
    }
    // The limit is in bytes: 255 bytes of two-byte characters pass, 256 not.
    let edge = format!("{}x", "é".repeat(127));
    assert_eq!(edge.len(), 255);
    let edge_id = push(&mut p, &edge, to_app("app"), json!("e"), json!("e"));
    let over = "é".repeat(128);
    for (t, d) in dispatches(&over) {
        p.dispatch(t, d);
        let extra = p.expect_invalid("queue name too long");
        assert_eq!(extra["length"], json!(256), "{t}");
    }
    for i in 10..20 {
        want.insert(push(&mut other, "a", to_app("app"), json!(i), json!(i)));
    }
    assert_eq!(
        metric_sum(
            &s,
            "singyeong_limit_refusals_total",
            "limit=\"queue_name_length\""
        ),
        8.0
    );
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    drop((p, other));

    let s = durable(&dir, &["--shards", "1"]);
    assert_eq!(
        queue_names(&s),
        BTreeSet::from(["a".to_string(), edge.clone()])
    );
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    assert_eq!(drain_all(&mut c, "a", &want), want);
    request(&mut c, &edge);
    assert_eq!(delivered(&mut c, &edge).0, edge_id);
}

/// `--max-queues` counts live queues server-wide, whichever shard owns
/// them; a waiting credit keeps a queue alive, so QUEUE_REQUEST counts
/// like QUEUE. Past it both are invalid and create nothing; once queues
/// are forgotten there is room again.
#[test]
fn queues_past_the_server_limit_are_refused_and_create_nothing() {
    let s = server(&["--shards", "3", "--max-queues", "3"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    request(&mut c, "w1");
    request(&mut c, "w2");
    let m1 = push(&mut p, "m1", to_app("nobody"), json!(0), json!(0));
    c.sync();
    // Names hash to every shard; each is one too many.
    for i in 0..6 {
        let name = format!("more-{i}");
        p.dispatch(
            "QUEUE",
            json!({"queue": name, "target": to_app("app"), "nonce": i, "payload": i}),
        );
        let extra = p.expect_invalid("too many queues");
        assert_eq!(
            extra,
            json!({"queue": name, "nonce": i, "max_queues": 3}),
            "{extra}"
        );
        request(&mut c, &name);
        let extra = c.expect_invalid("too many queues");
        assert_eq!(extra, json!({"queue": name, "max_queues": 3}), "{extra}");
    }
    let names = queue_names(&s);
    assert_eq!(
        names,
        ["m1", "w1", "w2"].map(String::from).into(),
        "nothing was created"
    );
    // The refused credits were taken back: only the real ones are listed.
    let nodes = p.query_nodes(query("app"));
    assert_eq!(node_of(&nodes, "c")["queues"], json!(["w1", "w2"]));
    assert_eq!(
        metric_sum(&s, "singyeong_limit_refusals_total", "limit=\"queues\""),
        12.0
    );
    assert_eq!(metric_sum(&s, "singyeong_queues", ""), 3.0);
    // Existing queues keep working.
    let id = push(&mut p, "w1", to_app("app"), json!("w"), json!("w"));
    assert_eq!(delivered(&mut c, "w1").0, id);
    ack(&mut c, "w1", &id);
    // Empty the rest: cancel the credit, drop the unroutable message's
    // queue by consuming it.
    c.dispatch("QUEUE_REQUEST_CANCEL", json!({"queue": "w2"}));
    let mut m = Client::ready(&s, Encoding::Json, "nobody", "m");
    request(&mut m, "m1");
    assert_eq!(delivered(&mut m, "m1").0, m1);
    ack(&mut m, "m1", &m1);
    m.sync();
    c.sync();
    wait_forgotten(&s, "w", Duration::from_millis(ACK_MS.max(DLQ_MS)) + STEP);
    wait_forgotten(&s, "m1", STEP);
    for i in 0..3 {
        push(
            &mut p,
            &format!("fresh-{i}"),
            to_app("app"),
            json!(i),
            json!(i),
        );
    }
    p.dispatch(
        "QUEUE",
        json!({"queue": "fresh-3", "target": to_app("app"), "nonce": 3, "payload": 3}),
    );
    p.expect_invalid("too many queues");
}

/// `--max-queue-bytes` counts each message's whole footprint (payload,
/// nonce, target, queue name and an overhead), not only its payload: a
/// queue of tiny payloads with large nonces or targets fills up too. Past
/// it QUEUE is invalid, not confirmed and not queued; an ack makes room.
#[test]
fn queue_bytes_count_the_whole_message_and_refuse_past_the_limit() {
    let s = server(&["--max-queue-bytes", "4096"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    // Large nonces, payload 1: about 1.8 KB each.
    let nonce = |i: u64| json!(format!("{i}{}", "n".repeat(1500)));
    let first = push(&mut p, "big-nonce", to_app("app"), nonce(1), json!(1));
    push(&mut p, "big-nonce", to_app("app"), nonce(2), json!(1));
    p.dispatch(
        "QUEUE",
        json!({"queue": "big-nonce", "target": to_app("app"), "nonce": nonce(3), "payload": 1}),
    );
    let extra = p.expect_invalid("queue full");
    assert_eq!(extra["max_queue_bytes"], json!(4096), "{extra}");
    assert_eq!(extra["nonce"], nonce(3));
    let held = extra["queue_bytes"].as_u64().unwrap();
    let size = extra["message_bytes"].as_u64().unwrap();
    assert!(
        size > 1500 && held >= 2 * 1500 && held + size > 4096,
        "{extra}"
    );
    let st = queue_stats(&s, "big-nonce");
    assert_eq!(
        st["depth"],
        json!(2),
        "the refused message is not queued: {st}"
    );
    assert_eq!(
        metric_sum(&s, "singyeong_queue_bytes", "queue=\"big-nonce\""),
        held as f64
    );
    // Acking one makes room for another.
    request(&mut c, "big-nonce");
    let (id, _) = delivered(&mut c, "big-nonce");
    assert_eq!(id, first);
    ack(&mut c, "big-nonce", &id);
    c.sync();
    push(&mut p, "big-nonce", to_app("app"), nonce(4), json!(1));

    // A large target counts the same way (2.6 KB of `$in` values).
    let list: Vec<String> = (0..200).map(|i| format!("value-{i:04}")).collect();
    let target = query_ops("app", json!([op("/k", "$in", json!(list))]));
    push(&mut p, "big-target", target.clone(), json!(1), json!(1));
    p.dispatch(
        "QUEUE",
        json!({"queue": "big-target", "target": target, "nonce": 2, "payload": 1}),
    );
    let extra = p.expect_invalid("queue full");
    assert_eq!(extra["max_queue_bytes"], json!(4096), "{extra}");
    // So does one message larger than the whole limit, on an empty queue.
    p.dispatch(
        "QUEUE",
        json!({"queue": "huge", "target": to_app("app"), "nonce": 1, "payload": "x".repeat(5000)}),
    );
    p.expect_invalid("queue full");
    assert!(queue_stats(&s, "huge").is_null(), "no queue made for it");
    assert_eq!(
        metric_sum(
            &s,
            "singyeong_limit_refusals_total",
            "limit=\"queue_bytes\""
        ),
        3.0
    );
}

/// `--max-total-queue-bytes` bounds every queue together, whichever shard
/// owns each; past it QUEUE is invalid and not queued, and an ack on any
/// queue makes room on every other.
#[test]
fn the_server_wide_queue_bytes_are_bounded() {
    let s = server(&["--shards", "3", "--max-total-queue-bytes", "8192"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let payload = json!("p".repeat(1500));
    let mut confirmed = Vec::new();
    let refused = loop {
        let queue = format!("q{}", confirmed.len());
        let n = confirmed.len();
        p.dispatch(
            "QUEUE",
            json!({"queue": queue, "target": to_app("app"), "nonce": n, "payload": payload}),
        );
        let pk = p.recv_within(STEP);
        if pk["op"] == json!(OP_INVALID) {
            break pk;
        }
        assert_eq!(pk["t"], json!("QUEUE_CONFIRM"), "{pk}");
        confirmed.push((queue, pk["d"]["id"].as_str().unwrap().to_string()));
        assert!(confirmed.len() < 10, "never refused");
    };
    // About 1.8 KB each: four fit in 8 KiB, never five.
    assert_eq!(confirmed.len(), 4, "{refused}");
    assert_eq!(refused["d"]["error"], json!("server queue memory full"));
    let extra = &refused["d"]["extra_info"];
    assert_eq!(extra["max_total_queue_bytes"], json!(8192), "{extra}");
    assert_eq!(extra["queue"], json!("q4"), "{extra}");
    assert!(queue_stats(&s, "q4").is_null(), "not queued: no queue made");
    let held = metric_sum(&s, "singyeong_queued_bytes", "");
    assert!(held > 4.0 * 1500.0 && held <= 8192.0, "{held}");
    assert_eq!(
        metric_sum(
            &s,
            "singyeong_limit_refusals_total",
            "limit=\"total_queue_bytes\""
        ),
        1.0
    );
    // An ack on one queue frees room for another.
    let (queue, id) = &confirmed[0];
    request(&mut c, queue);
    assert_eq!(&delivered(&mut c, queue).0, id);
    ack(&mut c, queue, id);
    c.sync();
    push(&mut p, "q4", to_app("app"), json!(4), payload.clone());
    // Everything confirmed is still there.
    for (queue, id) in &confirmed[1..] {
        request(&mut c, queue);
        assert_eq!(&delivered(&mut c, queue).0, id);
    }
}

/// Credits are bounded per queue (`--max-queue-length`) and, on every
/// queue together, per connection (`--max-queue-requests`): otherwise one
/// client could line up credits on each of `--max-queues` queues.
#[test]
fn a_connections_credits_on_every_queue_together_are_bounded() {
    let s = server(&["--shards", "2", "--max-queue-requests", "3"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    request(&mut c, "r1");
    request(&mut c, "r1");
    request(&mut c, "r2");
    request(&mut c, "r3");
    let extra = c.expect_invalid("too many queue requests");
    assert_eq!(extra, json!({"queue": "r3", "max_queue_requests": 3}));
    // Another connection has its own.
    let mut d = Client::ready(&s, Encoding::Json, "other", "d");
    for q in ["r3", "r4", "r5"] {
        request(&mut d, q);
    }
    d.sync();
    let nodes = p.query_nodes(query("app"));
    assert_eq!(node_of(&nodes, "c")["queues"], json!(["r1", "r2"]));
    // A delivery uses a credit: room for one more.
    let id = push(&mut p, "r2", to_app("app"), json!(1), json!(1));
    assert_eq!(delivered(&mut c, "r2").0, id);
    request(&mut c, "r3");
    c.sync();
    // A cancel gives its queue's credits back.
    c.dispatch("QUEUE_REQUEST_CANCEL", json!({"queue": "r1"}));
    request(&mut c, "r4");
    request(&mut c, "r5");
    c.sync();
    request(&mut c, "r6");
    c.expect_invalid("too many queue requests");
    assert_eq!(
        metric_sum(
            &s,
            "singyeong_limit_refusals_total",
            "limit=\"queue_requests\""
        ),
        2.0
    );
}

// ---------------------------------------------------------------------------
// Issue 13: the log never costs a confirmed message
// ---------------------------------------------------------------------------

/// Every message of `queue` the server holds, acked as they come: their
/// payloads.
fn drain_payloads(c: &mut Client, queue: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        request(c, queue);
        match c.next_event(QUIET) {
            Event::Packet(pk) if pk["t"] == json!("QUEUE") => {
                let p = &pk["d"]["payload"];
                got.push(p["payload"].clone());
                ack(c, queue, p["id"].as_str().unwrap());
            }
            Event::Timeout => return got,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_queue_name_the_log_cannot_hold_costs_no_other_message() {
    // Issue 13, point 1, as reported: 10 messages, one to a queue whose
    // name is 70,000 bytes, 10 more, kill -9, restart. Every confirmed
    // message comes back; the long one is refused (not confirmed).
    let dir = TempDir::new("longname");
    let mut s = durable(&dir, &["--shards", "1"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    for i in 0..10 {
        push(&mut p, "a", to_app("app"), json!(i), json!(i));
    }
    let long = "n".repeat(70_000);
    p.dispatch(
        "QUEUE",
        json!({"queue": long, "target": to_app("app"), "nonce": "long", "payload": 1}),
    );
    let (error, _) = p.expect_invalid_prefix("");
    assert!(!error.is_empty());
    for i in 10..20 {
        push(&mut p, "a", to_app("app"), json!(i), json!(i));
    }
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    drop(p);
    let s = durable(&dir, &["--shards", "1"]);
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let got = drain_payloads(&mut c, "a");
    assert_eq!(got, (0..20).map(|i| json!(i)).collect::<Vec<_>>());
    assert!(
        std::fs::read_dir(&dir.0).unwrap().all(|e| !e
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".corrupt")),
        "nothing corrupt was written"
    );
}

#[test]
fn a_corrupt_record_in_the_middle_of_the_log_costs_only_itself_and_is_reported() {
    let dir = TempDir::new("midcorrupt");
    let mut s = durable(&dir, &["--shards", "1"]);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    // One write per message (each waits for its confirm).
    for i in 0..8 {
        push(&mut p, "m", to_app("app"), json!(i), json!(i));
    }
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    drop(p);
    let files = logs(&dir.0);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 8);
    // A bad byte in the body of message 3 (a bad sector, a bit flip).
    bytes[offsets[3] + FRAME_HEADER + 2] ^= 0x40;
    std::fs::write(&files[0], &bytes).unwrap();

    let s = durable(&dir, &["--shards", "1"]);
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let got = drain_payloads(&mut c, "m");
    let want: Vec<Value> = [0, 1, 2, 4, 5, 6, 7].map(|i| json!(i)).to_vec();
    assert_eq!(got, want, "only the damaged record is lost");
    // The original is kept aside for an operator, and counted.
    let mut aside = files[0].clone().into_os_string();
    aside.push(".corrupt");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes);
    assert_eq!(log_stats(&s)["corrupt_segments"], json!(1));
    let metrics = s.http("GET", "/metrics", &[], None).text();
    assert!(
        metrics.contains("singyeong_queue_log_corrupt_segments_total{shard=\"0\"} 1"),
        "{metrics}"
    );
    assert!(
        s.log_tail().contains("offset"),
        "logged with the offset: {}",
        s.log_tail()
    );
}

/// Waits until every record appended to the log is written.
fn wait_log_written(s: &Server) {
    let deadline = Instant::now() + STEP;
    loop {
        let st = s.http("GET", "/api/v1/queues", &[], None).json();
        let logs = st["log"].as_array().unwrap().clone();
        if logs.iter().all(|l| l["written"] == l["records"]) {
            return;
        }
        assert!(Instant::now() < deadline, "log never caught up: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The total size of the log segments in a data directory, and how many.
fn log_usage(dir: &Path) -> (usize, u64) {
    let files = logs(dir);
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    (files.len(), bytes)
}

#[test]
fn one_unacked_message_does_not_pin_the_disk() {
    // Issue 13, point 5: with one message never acked, a long run of
    // acked ones used to keep every segment written since.
    let dir = TempDir::new("pinned");
    let args = ["--shards", "1", "--queue-segment-bytes", "16384"];
    let mut s = durable(&dir, &args);
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let stuck = push(
        &mut p,
        "stuck",
        to_app("app"),
        json!("s"),
        json!("never acked"),
    );
    let payload = json!("w".repeat(300));
    let mut peak = (0, 0);
    for i in 0..400 {
        let id = push(&mut p, "work", to_app("app"), json!(i), payload.clone());
        request(&mut c, "work");
        assert_eq!(delivered(&mut c, "work").0, id);
        ack(&mut c, "work", &id);
        if i % 20 == 0 {
            let (n, bytes) = log_usage(&dir.0);
            peak = (peak.0.max(n), peak.1.max(bytes));
        }
    }
    let log = log_stats(&s);
    // 400 syncs of at least a block each went through many segments...
    assert!(log["bytes"].as_u64().unwrap() > 20 * 16384 / 4, "{log}");
    // ...and the disk held a few at a time.
    assert!(peak.0 <= 5, "segments: {peak:?}, {log}");
    assert!(peak.1 <= 5 * (16384 + 4096), "bytes: {peak:?}, {log}");
    assert!(log["carried"].as_u64().unwrap() >= 1, "{log}");

    // kill -9 once every ack is on disk: the unacked message is still
    // there, no acked one is back.
    c.sync();
    wait_log_written(&s);
    s.signal("KILL");
    s.wait_exit(STEP).expect("killed");
    drop((p, c));
    let s = durable(&dir, &args);
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    assert_eq!(
        drain_payloads(&mut c, "work"),
        Vec::<Value>::new(),
        "acked messages came back"
    );
    request(&mut c, "stuck");
    assert_eq!(delivered(&mut c, "stuck").0, stuck);
}

/// Whether every thread of `pid` is traced.
fn all_traced(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok())
        .all(|task| {
            std::fs::read_to_string(task.path().join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                })
            })
        })
}

#[test]
fn the_log_makes_no_blocking_file_calls_on_a_shard_thread() {
    // Issue 13, point 9: a slow disk must not stall every connection of a
    // shard. The file-system calls of the running log that io_uring does
    // not offer (the data directory's creation and lock, the directory
    // sync after a segment is created or deleted) run on a helper thread;
    // segments are created, written, synced and removed through io_uring,
    // which strace does not see as calls of their own. strace (installed
    // by .ci/run) records every blocking call of that kind, and the thread
    // that made it, while segments are created, synced and deleted.
    let dir = TempDir::new("blocking");
    let s = durable(&dir, &["--shards", "1", "--queue-segment-bytes", "16384"]);
    let pid = s.pid();
    let trace = dir.0.with_extension("strace");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", trace.to_str().unwrap()])
        .args([
            "-e",
            "trace=flock,fsync,fdatasync,unlink,unlinkat,mkdir,mkdirat,io_uring_enter",
        ])
        .args(["-p", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace is needed by this test (.ci/run installs it)");
    let deadline = Instant::now() + STEP;
    while !all_traced(pid) {
        assert!(Instant::now() < deadline, "strace did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut p = Client::ready(&s, Encoding::Json, "app", "p");
    let mut c = Client::ready(&s, Encoding::Json, "app", "c");
    let payload = json!("w".repeat(300));
    for i in 0..100 {
        let id = push(&mut p, "work", to_app("app"), json!(i), payload.clone());
        request(&mut c, "work");
        assert_eq!(delivered(&mut c, "work").0, id);
        ack(&mut c, "work", &id);
    }
    c.sync();
    wait_log_written(&s);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    strace.wait().unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    // Each line: `<tid> <call>(<arguments>) = <result>` (or a part of one).
    let calls: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let (tid, rest) = l.split_once(' ')?;
            Some((tid, rest.trim_start().split('(').next()?))
        })
        .filter(|(_, call)| !call.starts_with('<') && !call.starts_with("---"))
        .collect();
    // A shard's thread is one that drives an io_uring (glommio gives its
    // helper threads the shard thread's name, so names do not tell).
    let shard_threads: BTreeSet<&str> = calls
        .iter()
        .filter(|(_, call)| *call == "io_uring_enter")
        .map(|(tid, _)| *tid)
        .collect();
    assert!(!shard_threads.is_empty(), "no shard thread traced: {text}");
    let blocking: Vec<_> = calls
        .iter()
        .filter(|(_, call)| *call != "io_uring_enter")
        .collect();
    // The run did make such calls (the directory was created, locked and
    // synced as segments came and went), so the check below has teeth.
    assert!(
        blocking.iter().any(|(_, call)| *call == "fsync"),
        "no directory sync traced: {text}"
    );
    let on_shards: Vec<_> = blocking
        .iter()
        .filter(|(tid, _)| shard_threads.contains(tid))
        .collect();
    assert!(
        on_shards.is_empty(),
        "blocking calls on a shard thread: {on_shards:?}"
    );
}
