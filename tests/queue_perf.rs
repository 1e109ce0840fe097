//! Queue throughput and confirm latency (PERF.md). Ignored by default; run
//! with
//!
//! ```text
//! [QUEUE_PERF_SHARDS=2] cargo test --release --test queue_perf -- --ignored --nocapture
//! ```
//!
//! One producer keeps up to `WINDOW` QUEUEs unconfirmed; one consumer holds
//! `CREDITS` credits, acks each delivery and asks again. Reported: messages
//! per second from the first QUEUE to the last ack, and confirm latency
//! percentiles; with a log, its fdatasync count.

mod common;

use std::time::{Duration, Instant};

use common::*;

const N: usize = 20_000;
const WINDOW: usize = 256;
const CREDITS: usize = 256;

fn run(label: &str, args: &[&str]) {
    let s = Server::start(args);
    let mut producer = Client::ready(&s, Encoding::Json, "perf", "producer");
    let mut consumer = Client::ready(&s, Encoding::Json, "perf", "consumer");
    let start = Instant::now();
    let consumer_thread = std::thread::spawn(move || {
        for _ in 0..CREDITS {
            consumer.dispatch("QUEUE_REQUEST", json!({"queue": "perf"}));
        }
        let mut acked = 0;
        while acked < N {
            let d = consumer.expect_dispatch("QUEUE");
            let id = d["payload"]["id"].clone();
            consumer.dispatch("QUEUE_ACK", json!({"queue": "perf", "id": id}));
            consumer.dispatch("QUEUE_REQUEST", json!({"queue": "perf"}));
            acked += 1;
        }
        consumer
    });
    let mut sent_at = Vec::with_capacity(N);
    let mut latencies = Vec::with_capacity(N);
    let payload = json!("x".repeat(100));
    while latencies.len() < N {
        while sent_at.len() < N && sent_at.len() - latencies.len() < WINDOW {
            let nonce = sent_at.len();
            sent_at.push(Instant::now());
            producer.dispatch(
                "QUEUE",
                json!({"queue": "perf", "target": {"application": "perf"}, "nonce": nonce, "payload": payload}),
            );
        }
        let d = producer.expect_dispatch("QUEUE_CONFIRM");
        let nonce = d["nonce"].as_u64().unwrap() as usize;
        latencies.push(sent_at[nonce].elapsed());
    }
    let confirmed = start.elapsed();
    let _consumer = consumer_thread.join().expect("consumer");
    let total = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let stats = s.http("GET", "/api/v1/queues", &[], None).json();
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap_or_default();
    let locked = status
        .lines()
        .find(|l| l.starts_with("VmLck"))
        .unwrap_or("VmLck: ?")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    let syncs: u64 = stats["log"].as_array().map_or(0, |l| {
        l.iter().map(|x| x["syncs"].as_u64().unwrap_or(0)).sum()
    });
    println!(
        "{label}: {N} msgs enqueue->deliver->ack in {:.2}s = {:.0} msg/s; confirms {:.0}/s; confirm latency p50 {:?} p99 {:?} max {:?}; fdatasyncs {syncs} ({:.1} confirms per sync); server VmLck {locked}",
        total.as_secs_f64(),
        N as f64 / total.as_secs_f64(),
        N as f64 / confirmed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1],
        if syncs > 0 {
            N as f64 / syncs as f64
        } else {
            0.0
        },
    );
    let _ = Duration::ZERO;
}

fn data_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("singyeong-perf-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `QUEUE_PERF_SHARDS` (default 1) sets `--shards`: with more, the queue's
/// owner, the producer and the consumer may sit on different shards.
#[test]
#[ignore]
fn queue_throughput() {
    let shards = std::env::var("QUEUE_PERF_SHARDS").unwrap_or_else(|_| "1".into());
    run(
        &format!("in-memory shards={shards}"),
        &["--no-durable", "--shards", &shards],
    );
    for policy in ["group", "each", "none"] {
        let dir = data_dir(policy);
        run(
            &format!("durable fsync={policy} shards={shards}"),
            &[
                "--data-dir",
                dir.to_str().unwrap(),
                "--fsync",
                policy,
                "--shards",
                &shards,
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
