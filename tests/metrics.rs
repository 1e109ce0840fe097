//! `GET /metrics`: Prometheus text, behind auth like the rest of the API,
//! with counters that move with traffic.

mod common;

use common::*;

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Sum of one family's samples over every shard.
fn total(text: &str, name: &str, extra: &str, shards: usize) -> f64 {
    (0..shards)
        .map(|s| {
            let labels = if extra.is_empty() {
                format!("{{shard=\"{s}\"}}")
            } else {
                format!("{{shard=\"{s}\",{extra}}}")
            };
            sample(text, &format!("{name}{labels}"))
        })
        .sum()
}

fn scrape(server: &Server, auth: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    let r = server.http("GET", "/metrics", &headers, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("openmetrics-text")),
        "{:?}",
        r.header("content-type")
    );
    r.text()
}

#[test]
fn counters_move_with_traffic_on_every_shard() {
    let shards = 3;
    let server = Server::start(&["--shards", "3"]);
    let before = scrape(&server, None);
    assert_eq!(total(&before, "singyeong_connections", "", shards), 0.0);
    assert_eq!(total(&before, "singyeong_sends_total", "", shards), 0.0);
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0);

    let mut a = Client::ready(&server, Json, "app", "a");
    let mut b = Client::ready(&server, Msgpack, "app", "b");
    for i in 0..5 {
        a.send_to(
            query_ops("app", json!([op("/client_id", "$eq", json!("x"))])),
            json!(i),
            json!(i),
        );
    }
    // Five SENDs that match nothing (client_id is not metadata): no_route.
    for _ in 0..5 {
        a.expect_invalid("no_route");
    }
    a.broadcast(query("app"), json!(null), json!("all"));
    a.expect_dispatch("BROADCAST");
    b.expect_dispatch("BROADCAST");
    a.sync();

    let after = scrape(&server, None);
    assert_eq!(total(&after, "singyeong_connections", "", shards), 2.0);
    assert_eq!(total(&after, "singyeong_clients", "", shards), 2.0);
    assert_eq!(total(&after, "singyeong_sends_total", "", shards), 5.0);
    assert_eq!(total(&after, "singyeong_no_route_total", "", shards), 5.0);
    assert_eq!(total(&after, "singyeong_broadcasts_total", "", shards), 1.0);
    assert_eq!(
        total(&after, "singyeong_broadcast_deliveries_total", "", shards),
        2.0
    );
    assert_eq!(
        total(&after, "singyeong_packets_in_total", "op=\"1\"", shards),
        2.0
    );
    assert_eq!(
        total(&after, "singyeong_packets_in_total", "op=\"4\"", shards),
        6.0
    );
    assert_eq!(
        total(&after, "singyeong_packets_out_total", "op=\"2\"", shards),
        2.0
    );
    assert_eq!(
        total(
            &after,
            "singyeong_routing_latency_seconds_count",
            "",
            shards
        ),
        6.0
    );
    // Every packet went out in some write, and no write was empty.
    let packets_out: f64 = (0..=8)
        .map(|op| {
            total(
                &after,
                "singyeong_packets_out_total",
                &format!("op=\"{op}\""),
                shards,
            )
        })
        .sum();
    let writes = total(&after, "singyeong_socket_writes_total", "", shards);
    assert!(
        writes > 0.0 && writes <= packets_out,
        "{writes} writes for {packets_out} packets"
    );
    assert!(after.ends_with("# EOF\n"));
}

#[test]
fn metrics_need_the_password_when_one_is_set() {
    let server = Server::start(&["--auth", "sekrit"]);
    let r = server.http("GET", "/metrics", &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"status": "error", "error": "not authorized"})
    );
    let text = scrape(&server, Some("sekrit"));
    assert!(
        text.contains("singyeong_connections{shard=\"0\"} 0"),
        "{text}"
    );
}

#[test]
fn queues_appear_with_their_depth_and_counters() {
    let server = Server::start(&["--no-durable"]);
    let mut p = Client::ready(&server, Json, "producers", "p");
    for i in 0..3 {
        p.dispatch(
            "QUEUE",
            json!({"queue": "jobs", "target": query("workers"), "nonce": i, "payload": i}),
        );
        p.expect_dispatch("QUEUE_CONFIRM");
    }
    let text = scrape(&server, None);
    // The queue lives on whichever shard its name hashes to. With no worker
    // connected, its messages are waiting or dead-lettered.
    assert_eq!(
        for_queue(&text, "singyeong_queue_depth", "jobs")
            + for_queue(&text, "singyeong_queue_dead_letter", "jobs"),
        3.0,
        "{text}"
    );
    assert_eq!(
        for_queue(&text, "singyeong_queue_enqueued_total", "jobs"),
        3.0
    );
}

/// The sample of `family` labelled with `queue`, on whatever shard owns it.
fn for_queue(text: &str, family: &str, queue: &str) -> f64 {
    let label = format!("queue=\"{queue}\"}}");
    let found: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "one {family} row for {queue} in:\n{text}");
    found[0]
}
