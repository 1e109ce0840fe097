//! The Prometheus text rendering of every shard's snapshot, plus the
//! process's own memory and CPU.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use super::{LATENCY_BUCKETS, Snapshot};
use crate::queue::owner::QueueRow;

/// Labelled values of one metric, encoded as one family.
#[derive(Debug)]
struct Labeled<M> {
    rows: Vec<(Vec<(String, String)>, M)>,
}

impl<M: EncodeMetric> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.rows {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.rows
            .first()
            .map_or(MetricType::Unknown, |(_, m)| m.metric_type())
    }
}

/// A histogram read from counters (per-bucket counts, not cumulative).
#[derive(Debug)]
struct HistogramValues {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for HistogramValues {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramValues {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn shard_label(s: &Snapshot) -> Vec<(String, String)> {
    vec![("shard".into(), s.shard.to_string())]
}

fn per_shard<M>(snapshots: &[Snapshot], f: impl Fn(&Snapshot) -> M) -> Labeled<M> {
    Labeled {
        rows: snapshots.iter().map(|s| (shard_label(s), f(s))).collect(),
    }
}

fn op_label(i: usize) -> String {
    if i < 9 { i.to_string() } else { "other".into() }
}

/// Registers one counter family labelled by shard and opcode.
fn by_op(
    registry: &mut Registry,
    snapshots: &[Snapshot],
    name: &str,
    help: &str,
    counts: fn(&Snapshot) -> &Vec<u64>,
) {
    let rows = snapshots
        .iter()
        .flat_map(|s| {
            counts(s).iter().enumerate().map(move |(op, &n)| {
                let labels = vec![
                    ("shard".to_string(), s.shard.to_string()),
                    ("op".to_string(), op_label(op)),
                ];
                (labels, ConstCounter::new(n))
            })
        })
        .collect();
    registry.register(name, help, Labeled { rows });
}

/// A metric family read from each queue's row: name, help, value.
type Family<T> = (&'static str, &'static str, fn(&QueueRow) -> T);

/// Per-queue gauges and counters, labelled by queue (a queue lives on one
/// shard, whose label it also carries).
fn queue_families(registry: &mut Registry, snapshots: &[Snapshot]) {
    let rows = || {
        snapshots.iter().flat_map(|s| {
            s.queues.iter().map(move |q| {
                let labels = vec![
                    ("shard".to_string(), s.shard.to_string()),
                    ("queue".to_string(), q.name.clone()),
                ];
                (labels, q)
            })
        })
    };
    let gauges: [Family<usize>; 4] = [
        ("queue_depth", "Messages waiting in a queue", |q| q.depth),
        (
            "queue_in_flight",
            "Messages delivered and not yet acked",
            |q| q.in_flight,
        ),
        (
            "queue_dead_letter",
            "Messages on a queue's dead-letter list",
            |q| q.dead_letter,
        ),
        ("queue_waiting", "Outstanding QUEUE_REQUEST credits", |q| {
            q.waiting
        }),
    ];
    for (name, help, value) in gauges {
        let rows = rows()
            .map(|(l, q)| (l, ConstGauge::new(value(q) as i64)))
            .collect();
        registry.register(name, help, Labeled { rows });
    }
    let counters: [Family<u64>; 5] = [
        ("queue_enqueued", "Messages queued", |q| q.stats.enqueued),
        ("queue_delivered", "Queue deliveries", |q| q.stats.delivered),
        ("queue_acked", "Queue messages acked", |q| q.stats.acked),
        (
            "queue_redelivered",
            "Queue deliveries that came back",
            |q| q.stats.redelivered,
        ),
        (
            "queue_dead_lettered",
            "Times a message was dead-lettered",
            |q| q.stats.dead_lettered,
        ),
    ];
    for (name, help, value) in counters {
        let rows = rows()
            .map(|(l, q)| (l, ConstCounter::new(value(q))))
            .collect();
        registry.register(name, help, Labeled { rows });
    }
}

/// Renders every shard's snapshot (and the process's RSS and CPU time).
pub fn render(snapshots: &[Snapshot]) -> String {
    let mut registry = Registry::with_prefix("singyeong");
    registry.register(
        "connections",
        "Open websocket connections",
        per_shard(snapshots, |s| ConstGauge::new(s.gauges.connections as i64)),
    );
    registry.register(
        "clients",
        "Identified clients",
        per_shard(snapshots, |s| ConstGauge::new(s.gauges.clients as i64)),
    );
    registry.register(
        "mesh_depth",
        "Messages waiting in a shard's cross-shard inbox",
        per_shard(snapshots, |s| ConstGauge::new(s.gauges.mesh_depth as i64)),
    );
    by_op(
        &mut registry,
        snapshots,
        "packets_in",
        "Packets received from clients, by opcode",
        |s| &s.packets_in,
    );
    by_op(
        &mut registry,
        snapshots,
        "packets_out",
        "Packets sent to clients, by opcode",
        |s| &s.packets_out,
    );
    let mut counter = |name: &str, help: &str, value: fn(&Snapshot) -> u64| {
        registry.register(
            name,
            help,
            per_shard(snapshots, |s| ConstCounter::new(value(s))),
        );
    };
    counter("sends", "SEND packets routed", |s| s.sends);
    counter("broadcasts", "BROADCAST packets routed", |s| s.broadcasts);
    counter(
        "broadcast_deliveries",
        "Clients reached by BROADCASTs",
        |s| s.broadcast_deliveries,
    );
    counter(
        "no_route",
        "SENDs and BROADCASTs that matched no client",
        |s| s.no_route,
    );
    counter(
        "outbound_drops",
        "Outbound frames dropped for closing or slow connections",
        |s| s.outbound_drops,
    );
    counter(
        "slow_consumer_disconnects",
        "Connections closed because their outbound queue passed its limit",
        |s| s.slow_consumers,
    );
    counter(
        "socket_writes",
        "Writes of data frames to websocket sockets (frames queued for one connection go out in one write: packets_out over this is the coalescing)",
        |s| s.socket_writes,
    );
    counter(
        "send_repicks",
        "SEND or proxy choices made again because the chosen client had gone before the packet reached it",
        |s| s.repicks,
    );
    registry.register(
        "encode_errors",
        "Packets and HTTP bodies the server could not encode (each recipient got an error instead)",
        ConstCounter::new(super::encode_errors()),
    );
    queue_families(&mut registry, snapshots);
    registry.register_with_unit(
        "routing_latency",
        "Time to route a SEND or BROADCAST, from decoding to handing it to the recipients' shards",
        Unit::Seconds,
        per_shard(snapshots, |s| HistogramValues {
            sum: s.routing_sum,
            count: s.routing_buckets.iter().sum(),
            buckets: LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(s.routing_buckets.iter().copied())
                .collect(),
        }),
    );

    let mut process = Registry::with_prefix("process");
    if let Some(rss) = resident_bytes() {
        process.register_with_unit(
            "resident_memory",
            "Resident memory of the server process",
            Unit::Bytes,
            ConstGauge::new(rss as i64),
        );
    }
    if let Some(cpu) = cpu_seconds() {
        process.register_with_unit(
            "cpu",
            "CPU time (user + system) used by the server process",
            Unit::Seconds,
            ConstCounter::new(cpu),
        );
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &process);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Gauges, ShardMetrics};
    use std::time::Duration;

    #[test]
    fn renders_every_family_with_shard_labels() {
        let m = ShardMetrics::default();
        m.packet_in(4);
        m.routed_send(true, Duration::from_micros(5));
        let snapshots = vec![
            m.snapshot(
                0,
                Gauges {
                    connections: 3,
                    clients: 2,
                    mesh_depth: 0,
                },
                Vec::new(),
            ),
            ShardMetrics::default().snapshot(1, Gauges::default(), vec![queue_row()]),
        ];
        let text = render(&snapshots);
        assert!(
            text.contains("singyeong_connections{shard=\"0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("singyeong_packets_in_total{shard=\"0\",op=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("singyeong_sends_total{shard=\"1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE singyeong_routing_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("singyeong_routing_latency_seconds_count{shard=\"0\"} 1"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains("singyeong_queue_depth{shard=\"1\",queue=\"jobs\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("singyeong_queue_acked_total{shard=\"1\",queue=\"jobs\"} 7"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    fn queue_row() -> QueueRow {
        QueueRow {
            name: "jobs".into(),
            depth: 3,
            in_flight: 1,
            dead_letter: 0,
            waiting: 2,
            stats: crate::queue::state::Stats {
                enqueued: 11,
                delivered: 8,
                acked: 7,
                redelivered: 1,
                dead_lettered: 0,
            },
        }
    }
}
