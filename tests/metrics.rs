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

/// Queues one message to `queue` and waits for its confirm.
fn enqueue(p: &mut Client, queue: &str, nonce: usize) {
    p.dispatch(
        "QUEUE",
        json!({"queue": queue, "target": query("workers"), "nonce": nonce, "payload": nonce}),
    );
    p.expect_dispatch("QUEUE_CONFIRM");
}

/// One parsed sample: family, sample name, labels (a JSON object).
type Parsed = (String, String, Value);

/// What prometheus_client's Prometheus text parser and its OpenMetrics
/// parser (tests/python/parse_metrics.py) read in a scrape: for each parser,
/// the samples as (family, sample name, labels).
fn parse_with_python(text: &str) -> Vec<(String, Vec<Parsed>)> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::python::venv_python())
        .arg(common::python::scripts_dir().join("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run parse_metrics.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\nscrape:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    ["text", "openmetrics"]
        .iter()
        .map(|parser| {
            let samples = parsed[parser]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s[0].as_str().unwrap().to_string(),
                        s[1].as_str().unwrap().to_string(),
                        s[2].clone(),
                    )
                })
                .collect();
            (parser.to_string(), samples)
        })
        .collect()
}

#[test]
fn hostile_queue_names_cannot_forge_series() {
    let hostile = [
        "evil\"} 1\nfake_metric{a=\"",
        "back\\slash\\\" and \\n spelled out",
        "line\nbreak\n# TYPE fake_total counter\nfake_total 1",
        "신경 큐 ☃ {} = , \t tab",
    ];
    let server = Server::start(&["--no-durable", "--shards", "2"]);
    let mut p = Client::ready(&server, Json, "producers", "p");
    enqueue(&mut p, "plain", 0);
    let baseline = parse_with_python(&scrape(&server, None));
    for (i, name) in hostile.iter().enumerate() {
        enqueue(&mut p, name, i + 1);
    }
    let text = scrape(&server, None);
    assert!(
        !text.lines().any(|l| l.starts_with("fake")),
        "a forged line in:\n{text}"
    );
    let parsed = parse_with_python(&text);
    for ((parser, before), (_, after)) in baseline.iter().zip(&parsed) {
        let families = |samples: &[Parsed]| {
            samples
                .iter()
                .map(|(family, _, _)| family.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(families(before), families(after), "{parser} parser");
        // The per-queue families: those whose samples carry a queue label.
        let per_queue = |(_, _, labels): &&Parsed| labels.get("queue").is_some();
        let queue_samples: Vec<_> = after.iter().filter(per_queue).collect();
        let queue_families =
            families(&before.iter().filter(per_queue).cloned().collect::<Vec<_>>()).len();
        assert_eq!(queue_families, 10, "{parser} parser: {before:?}");
        for (family, name, labels) in &queue_samples {
            let keys: Vec<&String> = labels.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["queue", "shard"], "{parser}: {name} {labels}");
            let queue = labels["queue"].as_str().unwrap();
            assert!(
                queue == "plain" || hostile.contains(&queue),
                "{parser}: {family} has queue label {queue:?}"
            );
        }
        // Every queue has exactly one sample per family, its name intact.
        for name in hostile.iter().chain(["plain"].iter()) {
            let own = queue_samples
                .iter()
                .filter(|(_, _, labels)| labels["queue"] == *name)
                .count();
            assert_eq!(own, queue_families, "{parser}: samples of {name:?}");
        }
    }
}

#[test]
fn queues_past_the_cap_are_summed_into_one_series() {
    let server = Server::start(&["--no-durable", "--shards", "1", "--metrics-max-queues", "3"]);
    let mut p = Client::ready(&server, Json, "producers", "p");
    for i in 0..3 {
        enqueue(&mut p, "busy", i);
    }
    for i in 0..6 {
        enqueue(&mut p, &format!("q{i}"), i);
    }
    // A client's queue named like the aggregate is summed into it.
    enqueue(&mut p, "_other", 0);
    let text = scrape(&server, None);
    let depth_rows = text
        .lines()
        .filter(|l| l.starts_with("singyeong_queue_depth{"))
        .count();
    assert_eq!(depth_rows, 4, "3 queues and _other in:\n{text}");
    // The busiest queue keeps its series, then the first by name.
    for (queue, messages) in [("busy", 3.0), ("q0", 1.0), ("q1", 1.0), ("_other", 5.0)] {
        assert_eq!(
            for_queue(&text, "singyeong_queue_depth", queue)
                + for_queue(&text, "singyeong_queue_dead_letter", queue),
            messages,
            "{queue} in:\n{text}"
        );
        assert_eq!(
            for_queue(&text, "singyeong_queue_enqueued_total", queue),
            messages
        );
    }
    assert_eq!(sample(&text, "singyeong_queues_folded"), 5.0);
    // What the cap leaves is still a scrape both parsers accept.
    parse_with_python(&text);
}
