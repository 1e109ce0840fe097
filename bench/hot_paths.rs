//! Microbenchmarks of the pure hot paths, named after what they guard:
//! query evaluation, the routing decision of a targeted SEND at growing
//! partition sizes (the indexes must keep it flat), codecs, and a metadata
//! update with index maintenance.
//!
//! Run: `cargo bench --bench hot_paths`; PERF.md quotes the medians.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

use singyeong::metadata::{ClientStore, MetaValue, Metadata, parse_update};
use singyeong::protocol::{self, Encoding, op};
use singyeong::query::Query;
use singyeong::routing::local_pick;

fn metadata(i: u64) -> Metadata {
    let update = json!({
        "id": {"type": "integer", "value": i},
        "group": {"type": "integer", "value": i % 100},
        "version": {"type": "version", "value": format!("1.{}.0", i % 7)},
        "tags": {"type": "list", "value": [i % 10, i % 13, i % 17]},
        "latency": {"type": "float", "value": (i % 1000) as f64 / 10.0},
    });
    let mut md = Metadata::new();
    for (key, value) in parse_update(&update).expect("valid metadata") {
        md.insert(&key, value);
    }
    md
}

fn store_of(n: u64) -> ClientStore {
    let mut store = ClientStore::new();
    for i in 0..n {
        store.insert("backend", &format!("client-{i}"), false, metadata(i));
    }
    store
}

fn query(v: Value) -> Query {
    Query::parse(&v).expect("valid query")
}

fn query_evaluation(c: &mut Criterion) {
    let md = metadata(42);
    let mut group = c.benchmark_group("query_eval");
    let single = query(json!({"ops": [{"path": "/id", "op": "$eq", "to": {"value": 42}}]}));
    group.bench_function("single_eq", |b| {
        b.iter(|| black_box(&single).matches(black_box(&md)))
    });
    let nested = query(json!({"ops": [{"op": "$or", "with": [
        {"op": "$and", "with": [
            {"path": "/version", "op": "$gte", "to": {"value": "1.2.0", "type": "version"}},
            {"path": "/tags", "op": "$contains", "to": {"value": 3}},
        ]},
        {"op": "$nor", "with": [
            {"path": "/latency", "op": "$lt", "to": {"value": 50.0}},
            {"path": "/group", "op": "$in", "to": {"value": [1, 2, 3, 42]}},
        ]},
    ]}]}));
    group.bench_function("nested_logical", |b| {
        b.iter(|| black_box(&nested).matches(black_box(&md)))
    });
    group.bench_function("parse_nested", |b| {
        let raw = json!({"application": "backend", "ops": [{"op": "$or", "with": [
            {"path": "/a", "op": "$eq", "to": {"value": 1}},
            {"b": {"$gt": 2}},
        ]}]});
        b.iter(|| Query::parse(black_box(&raw)))
    });
    group.finish();
}

fn routing_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("targeted_send_pick");
    for n in [100u64, 10_000, 1_000_000] {
        let store = store_of(n);
        let mut rng = fastrand::Rng::with_seed(7);
        let queries: Vec<Query> = (0..64)
            .map(|i| {
                query(json!({"application": "backend",
                    "ops": [{"path": "/id", "op": "$eq", "to": {"value": (i * 7919) % n}}]}))
            })
            .collect();
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                next = (next + 1) % queries.len();
                local_pick(&store, &queries[next], None, &mut rng)
            })
        });
    }
    group.finish();

    let store = store_of(10_000);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut group = c.benchmark_group("pick_10k");
    let group_query = query(json!({"application": "backend",
        "ops": [{"path": "/group", "op": "$eq", "to": {"value": 5}}]}));
    group.bench_function("group_of_100", |b| {
        b.iter(|| local_pick(&store, &group_query, None, &mut rng))
    });
    let selector = query(json!({"application": "backend",
        "ops": [{"path": "/group", "op": "$eq", "to": {"value": 5}}],
        "selector": {"$min": "latency"}}));
    group.bench_function("group_of_100_min_selector", |b| {
        b.iter(|| local_pick(&store, &selector, None, &mut rng))
    });
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let d = json!({"nonce": "abc-123", "payload": {
        "user": 123456789, "text": "hello world, a typical small chat payload",
        "tags": ["a", "b", "c"], "score": 0.75, "ok": true}});
    let mut group = c.benchmark_group("codec");
    for enc in [Encoding::Json, Encoding::Msgpack, Encoding::Etf] {
        group.bench_function(format!("encode_{}", enc.name()), |b| {
            b.iter(|| protocol::encode(enc, op::DISPATCH, Some("SEND"), black_box(&d), 0))
        });
        let inbound = protocol::encode(enc, op::DISPATCH, Some("SEND"), &d, 0);
        group.bench_function(format!("decode_{}", enc.name()), |b| {
            b.iter(|| protocol::decode(enc, black_box(&inbound)))
        });
    }
    group.finish();
}

fn metadata_update(c: &mut Criterion) {
    let mut store = store_of(10_000);
    let idx = store.insert("backend", "updater", false, metadata(5));
    let mut i = 0u64;
    c.bench_function("metadata_update_merge_indexed", |b| {
        b.iter(|| {
            i += 1;
            let values = vec![
                ("group".to_string(), MetaValue::plain(json!(i % 100))),
                (
                    "tags".to_string(),
                    MetaValue::plain(json!([i % 10, i % 13])),
                ),
            ];
            store.merge(idx, values);
        })
    });
}

criterion_group!(
    benches,
    query_evaluation,
    routing_decision,
    codecs,
    metadata_update
);
criterion_main!(benches);
