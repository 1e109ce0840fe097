//! The Prometheus text rendering of every shard's snapshot, plus the
//! process's own memory and CPU.

use std::fmt::Write;

use prometheus_client::encoding::{
    EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use super::{LATENCY_BUCKETS, Limit, Snapshot};
use crate::queue::owner::QueueRow;

/// Labelled values of one metric, encoded as one family. Label values are
/// escaped when encoded (see [`Escaped`]), so a family may carry any text a
/// client chose (a queue name) without a way to forge other series.
#[derive(Debug)]
struct Labeled<M> {
    rows: Vec<(Vec<(String, String)>, M)>,
}

impl<M: EncodeMetric> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.rows {
            let labels: Vec<(&str, Escaped)> = labels
                .iter()
                .map(|(key, value)| (key.as_str(), Escaped(value)))
                .collect();
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.rows
            .first()
            .map_or(MetricType::Unknown, |(_, m)| m.metric_type())
    }
}

/// A label value written as the text exposition formats (Prometheus 0.0.4
/// and OpenMetrics 1.0) require: backslash, double quote and line feed
/// escaped. `prometheus-client` writes label values verbatim, and some come
/// from clients: unescaped, a queue named `a"} 1\nfake{b="` would close the
/// label set and start a series of the client's choosing.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        escape_label_value(self.0, encoder)
    }
}

fn escape_label_value(value: &str, out: &mut impl Write) -> std::fmt::Result {
    let mut rest = value;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..i])?;
        out.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[i + 1..];
    }
    out.write_str(rest)
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

/// Registers one counter family labelled by shard and by `label`, whose
/// value for the i-th count is `label_of(i)`.
fn by_label(
    registry: &mut Registry,
    snapshots: &[Snapshot],
    (name, help): (&str, &str),
    label: &str,
    label_of: impl Fn(usize) -> String,
    counts: fn(&Snapshot) -> &Vec<u64>,
) {
    let rows = snapshots
        .iter()
        .flat_map(|s| {
            counts(s).iter().enumerate().map(|(i, &n)| {
                let labels = vec![
                    ("shard".to_string(), s.shard.to_string()),
                    (label.to_string(), label_of(i)),
                ];
                (labels, ConstCounter::new(n))
            })
        })
        .collect();
    registry.register(name, help, Labeled { rows });
}

/// A metric family read from each queue's row: name, help, value.
type Family<T> = (&'static str, &'static str, fn(&QueueRow) -> T);

/// The `queue` label of the series that sums the queues past the cap. A
/// queue a client named so is summed there too, so no two series share a
/// label set.
pub const OTHER_QUEUES: &str = "_other";

/// One per-queue series: its labels and the queues it sums (one, or every
/// folded queue of a shard).
type QueueSeries<'a> = (Vec<(String, String)>, Vec<&'a QueueRow>);

/// Chooses which queues get series of their own: at most `max_queues`, the
/// ones that enqueued the most (ties by name), so that a client creating
/// many fresh queues cannot push busy ones out; the rest are summed, per
/// shard, into a `queue="_other"` series. Queue names come from clients:
/// without the cap, each new name would be a new series in every family, and
/// a Prometheus server scraping this one would store them all. Returns the
/// series and how many queues were folded.
fn queue_series(snapshots: &[Snapshot], max_queues: usize) -> (Vec<QueueSeries<'_>>, usize) {
    let mut all: Vec<(usize, &QueueRow)> = snapshots
        .iter()
        .flat_map(|s| s.queues.iter().map(move |q| (s.shard, q)))
        .collect();
    all.sort_by(|(_, a), (_, b)| {
        (a.name == OTHER_QUEUES)
            .cmp(&(b.name == OTHER_QUEUES))
            .then(b.stats.enqueued.cmp(&a.stats.enqueued))
            .then(a.name.cmp(&b.name))
    });
    let labels = |shard: usize, queue: &str| {
        vec![
            ("shard".to_string(), shard.to_string()),
            ("queue".to_string(), queue.to_string()),
        ]
    };
    let mut series = Vec::new();
    let mut folded: Vec<(usize, Vec<&QueueRow>)> = Vec::new();
    let mut folded_count = 0;
    for (i, (shard, q)) in all.into_iter().enumerate() {
        if i < max_queues && q.name != OTHER_QUEUES {
            series.push((labels(shard, &q.name), vec![q]));
            continue;
        }
        folded_count += 1;
        match folded.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, rows)) => rows.push(q),
            None => folded.push((shard, vec![q])),
        }
    }
    folded.sort_by_key(|(shard, _)| *shard);
    series.extend(
        folded
            .into_iter()
            .map(|(shard, rows)| (labels(shard, OTHER_QUEUES), rows)),
    );
    (series, folded_count)
}

/// Per-queue gauges and counters, labelled by queue (a queue lives on one
/// shard, whose label it also carries), capped at `max_queues` series per
/// family (see [`queue_series`]).
fn queue_families(registry: &mut Registry, snapshots: &[Snapshot], max_queues: usize) {
    let (series, folded) = queue_series(snapshots, max_queues);
    registry.register(
        "queues_folded",
        "Queues past --metrics-max-queues, whose figures are summed into the series labelled queue _other",
        ConstGauge::new(folded as i64),
    );
    let gauges: [Family<usize>; 5] = [
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
        (
            "queue_bytes",
            "Bytes a queue holds: each message's payload, nonce, target and queue name plus a fixed overhead (bounded by --max-queue-bytes)",
            |q| q.bytes,
        ),
    ];
    for (name, help, value) in gauges {
        let rows = series
            .iter()
            .map(|(l, qs)| {
                let sum: usize = qs.iter().map(|q| value(q)).sum();
                (l.clone(), ConstGauge::new(sum as i64))
            })
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
        let rows = series
            .iter()
            .map(|(l, qs)| {
                let sum: u64 = qs.iter().map(|q| value(q)).sum();
                (l.clone(), ConstCounter::new(sum))
            })
            .collect();
        registry.register(name, help, Labeled { rows });
    }
}

/// What the server-wide limits (src/config.rs) see: live queues, the bytes
/// they hold, and refusals per limit.
fn limit_families(registry: &mut Registry, snapshots: &[Snapshot]) {
    registry.register(
        "queues",
        "Live queues a shard owns (bounded by --max-queues, server-wide)",
        per_shard(snapshots, |s| ConstGauge::new(s.gauges.queues as i64)),
    );
    registry.register(
        "queued_bytes",
        "Bytes a shard's queues hold: each message's payload, nonce, target and queue name plus a fixed overhead (bounded by --max-total-queue-bytes, server-wide)",
        per_shard(snapshots, |s| ConstGauge::new(s.gauges.queue_bytes as i64)),
    );
    by_label(
        registry,
        snapshots,
        (
            "limit_refusals",
            "Requests refused because of a configured limit, by limit (query_results: answers cut short)",
        ),
        "limit",
        |i| Limit::ALL[i].label().to_string(),
        |s| &s.limit_refusals,
    );
}

/// Renders every shard's snapshot (and the process's RSS and CPU time), with
/// per-queue series for at most `max_queues` queues.
pub fn render(snapshots: &[Snapshot], max_queues: usize) -> String {
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
    registry.register(
        "directory_apps",
        "Applications held on other shards, as this shard's routing directory knows them",
        per_shard(snapshots, |s| {
            ConstGauge::new(s.gauges.directory_apps as i64)
        }),
    );
    registry.register(
        "directory_values",
        "Indexed values (application, key, value) whose directory entry this shard keeps",
        per_shard(snapshots, |s| {
            ConstGauge::new(s.gauges.directory_values as i64)
        }),
    );
    registry.register(
        "directory_remembered",
        "Value buckets whose holders this shard remembers from their home's answer",
        per_shard(snapshots, |s| {
            ConstGauge::new(s.gauges.directory_remembered as i64)
        }),
    );
    by_label(
        &mut registry,
        snapshots,
        ("packets_in", "Packets received from clients, by opcode"),
        "op",
        op_label,
        |s| &s.packets_in,
    );
    by_label(
        &mut registry,
        snapshots,
        ("packets_out", "Packets sent to clients, by opcode"),
        "op",
        op_label,
        |s| &s.packets_out,
    );
    by_label(
        &mut registry,
        snapshots,
        (
            "cross_shard_messages",
            "Messages a shard sent to other shards, by kind (requests, and replies by what they answer)",
        ),
        "kind",
        |i| crate::shard::ShardMsg::KINDS[i].to_string(),
        |s| &s.cross_shard,
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
        "http_request_timeouts",
        "HTTP requests answered 408 because their head or body missed its deadline (--http-head-timeout, --http-body-timeout)",
        |s| s.http_timeouts,
    );
    counter(
        "queue_log_corrupt_segments",
        "Queue log segments found corrupt at start (kept as <name>.corrupt; counted on shard 0)",
        |s| s.queue_log_corrupt_segments,
    );
    counter(
        "queue_log_encode_errors",
        "QUEUEs refused because the queue log cannot represent the message",
        |s| s.queue_log_encode_errors,
    );
    counter(
        "queue_log_carried_records",
        "Unacked queue messages copied forward so that an old log segment could be deleted",
        |s| s.queue_log_carried,
    );
    counter(
        "queue_handed_over",
        "Queue messages this node held for a queue another node owns, taken by the owner and dropped here",
        |s| s.queue_handed_over,
    );
    counter(
        "queue_taken_over",
        "Queue messages handed over by a node that no longer owns their queue, stored here",
        |s| s.queue_taken_over,
    );
    counter(
        "send_repicks",
        "SEND or proxy choices made again because the chosen client had gone before the packet reached it",
        |s| s.repicks,
    );
    counter(
        "routing_overlapped",
        "SENDs and BROADCASTs that started while another of the same connection was still being routed (pipelined instead of waiting; bounded by --max-in-flight)",
        |s| s.routing_overlapped,
    );
    counter(
        "balance_goodbyes",
        "Clients sent goodbye (reason \"load balancing\") because this node held more than --balance-above times its share of the cluster's clients",
        |s| s.node.balance_goodbyes,
    );
    counter(
        "cluster_claims_refused",
        "Identifies refused because another node of the cluster holds the (application, client id)",
        |s| s.node.claims_refused,
    );
    counter(
        "cluster_claims_unconfirmed",
        "Identifies accepted without an answer from the name's home node (down, unreachable, or past --cluster-request-timeout): a duplicate on another node may go unnoticed",
        |s| s.node.claims_unconfirmed,
    );
    counter(
        "cluster_duplicates_closed",
        "Clients closed with the duplicate error because, once the cluster's members changed, their name's new home found another node holding it",
        |s| s.node.duplicates_closed,
    );
    registry.register(
        "encode_errors",
        "Packets and HTTP bodies the server could not encode (each recipient got an error instead)",
        ConstCounter::new(super::encode_errors()),
    );
    queue_families(&mut registry, snapshots, max_queues);
    limit_families(&mut registry, snapshots);
    if let Some(cluster) = snapshots.iter().find_map(|s| s.cluster) {
        cluster_families(&mut registry, &cluster);
    }
    if snapshots.iter().any(|s| s.links.is_some()) {
        link_families(&mut registry, snapshots);
    }
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

/// The node's membership and its gossip traffic (no shard label: one
/// shard runs the gossip for the node).
fn cluster_families(registry: &mut Registry, stats: &crate::cluster::ClusterStats) {
    use crate::cluster::{MemberState, RejectReason};
    fn one_label<M>(name: &str, rows: impl Iterator<Item = (&'static str, M)>) -> Labeled<M> {
        Labeled {
            rows: rows
                .map(|(value, m)| (vec![(name.to_string(), value.to_string())], m))
                .collect(),
        }
    }
    registry.register(
        "cluster_members",
        "Other nodes of the cluster this node knows, by state (down ones are kept a while)",
        one_label(
            "state",
            MemberState::ALL
                .iter()
                .zip(stats.members)
                .map(|(state, n)| (state.label(), ConstGauge::new(n as i64))),
        ),
    );
    let gossip = stats.gossip;
    registry.register(
        "cluster_gossip_packets_received",
        "Gossip packets received with a good signature",
        ConstCounter::new(gossip.received),
    );
    registry.register(
        "cluster_gossip_packets_sent",
        "Gossip packets sent",
        ConstCounter::new(gossip.sent),
    );
    registry.register(
        "cluster_gossip_send_errors",
        "Gossip packets the socket refused to send",
        ConstCounter::new(gossip.send_errors),
    );
    registry.register(
        "cluster_gossip_packets_rejected",
        "Gossip packets dropped: not gossip, truncated, bad signature (another secret), oversized, or unusable once opened",
        one_label(
            "reason",
            RejectReason::ALL
                .iter()
                .zip(gossip.rejected)
                .map(|(reason, n)| (reason.label(), ConstCounter::new(n))),
        ),
    );
}

/// Each shard's links to other nodes.
fn link_families(registry: &mut Registry, snapshots: &[Snapshot]) {
    registry.register(
        "cluster_homed_values",
        "Indexed values (application, key, value) homed on this node whose holding nodes this shard keeps",
        per_shard(snapshots, |s| {
            ConstGauge::new(s.gauges.homed_values as i64)
        }),
    );
    by_label(
        registry,
        snapshots,
        (
            "cluster_value_lookups",
            "SENDs on indexed values that asked the values' home nodes which nodes hold them, by answer: holders named, nobody (the SEND still asks the other nodes before no_route), unsettled (a new home, or no answer in time: the SEND asks as if there were no homes)",
        ),
        "answer",
        |i| super::ValueLookup::ALL[i].label().to_string(),
        |s| &s.value_lookups,
    );
    use crate::cluster::link::{LinkError, LinkStats};
    let stats = |s: &Snapshot| s.links.map(|(stats, _)| stats).unwrap_or_default();
    registry.register(
        "cluster_links",
        "Links to other nodes' shards that proved the cluster secret",
        per_shard(snapshots, |s| {
            ConstGauge::new(s.links.map_or(0, |(_, up)| up) as i64)
        }),
    );
    let by_direction = |value: fn(&LinkStats) -> (u64, u64)| Labeled {
        rows: snapshots
            .iter()
            .flat_map(|s| {
                let (received, sent) = value(&stats(s));
                [("received", received), ("sent", sent)].map(|(direction, n)| {
                    let mut labels = shard_label(s);
                    labels.push(("direction".into(), direction.into()));
                    (labels, ConstCounter::new(n))
                })
            })
            .collect(),
    };
    registry.register(
        "cluster_link_frames",
        "Frames on links to other nodes",
        by_direction(|s| (s.frames_in, s.frames_out)),
    );
    registry.register(
        "cluster_link_bytes",
        "Bytes of frames on links to other nodes",
        by_direction(|s| (s.bytes_in, s.bytes_out)),
    );
    // By peer node, summed over the shards.
    let mut traffic: std::collections::BTreeMap<std::net::SocketAddr, [u64; 4]> =
        Default::default();
    for (addr, t) in snapshots.iter().flat_map(|s| &s.traffic) {
        let sum = traffic.entry(*addr).or_default();
        for (into, n) in sum
            .iter_mut()
            .zip([t.frames_in, t.frames_out, t.bytes_in, t.bytes_out])
        {
            *into += n;
        }
    }
    let by_peer = |first: usize| Labeled {
        rows: traffic
            .iter()
            .flat_map(|(addr, sums)| {
                [("received", sums[first]), ("sent", sums[first + 1])].map(|(direction, n)| {
                    let labels = vec![
                        ("peer".into(), addr.to_string()),
                        ("direction".into(), direction.into()),
                    ];
                    (labels, ConstCounter::new(n))
                })
            })
            .collect(),
    };
    registry.register(
        "cluster_peer_frames",
        "Frames on links to each other node (by its gossip address), every shard together",
        by_peer(0),
    );
    registry.register(
        "cluster_peer_bytes",
        "Bytes of frames on links to each other node (by its gossip address), every shard together",
        by_peer(2),
    );
    registry.register(
        "cluster_requests",
        "Routing requests (SEND picks and deliveries, BROADCAST, QUERY_NODES, lookups of values' home nodes) sent to other nodes and received from them",
        by_direction(|s| (s.requests_in, s.requests_out)),
    );
    registry.register(
        "cluster_request_failures",
        "Routing requests to other nodes that got no answer: past --cluster-request-timeout (timeout), or over a link that was down, congested or lost (unreachable); that node counted as having no match",
        Labeled {
            rows: snapshots
                .iter()
                .flat_map(|s| {
                    let st = stats(s);
                    [("timeout", st.request_timeouts), ("unreachable", st.request_failures)].map(
                        |(reason, n)| {
                            let mut labels = shard_label(s);
                            labels.push(("reason".into(), reason.into()));
                            (labels, ConstCounter::new(n))
                        },
                    )
                })
                .collect(),
        },
    );
    registry.register(
        "cluster_link_errors",
        "Links closed or lost: a frame that did not decode (bad_frame), a first frame that was not a valid hello with the secret's proof (bad_hello), no hello in time (hello_timeout), the connection failing (lost)",
        Labeled {
            rows: snapshots
                .iter()
                .flat_map(|s| {
                    let errors = stats(s).errors;
                    LinkError::ALL.iter().zip(errors).map(move |(why, n)| {
                        let mut labels = shard_label(s);
                        labels.push(("reason".into(), why.label().into()));
                        (labels, ConstCounter::new(n))
                    })
                })
                .collect(),
        },
    );
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
                    ..Gauges::default()
                },
                Vec::new(),
            ),
            ShardMetrics::default().snapshot(1, Gauges::default(), vec![queue_row()]),
        ];
        let text = render(&snapshots, 100);
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
        assert!(
            text.contains("singyeong_queue_bytes{shard=\"1\",queue=\"jobs\"} 900"),
            "{text}"
        );
        assert!(
            text.contains("singyeong_limit_refusals_total{shard=\"0\",limit=\"queues\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("singyeong_queued_bytes{shard=\"1\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value("plain", &mut out).unwrap();
        escape_label_value(" a\\b\"c\nd\r\té", &mut out).unwrap();
        assert_eq!(out, "plain a\\\\b\\\"c\\nd\r\té");

        let mut row = queue_row();
        row.name = "evil\"} 1\nfake_metric{a=\"".into();
        let snapshot = ShardMetrics::default().snapshot(0, Gauges::default(), vec![row]);
        let text = render(&[snapshot], 100);
        assert!(
            !text.lines().any(|l| l.starts_with("fake_metric")),
            "{text}"
        );
        assert!(
            text.contains(
                "singyeong_queue_depth{shard=\"0\",queue=\"evil\\\"} 1\\nfake_metric{a=\\\"\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn queues_past_the_cap_are_summed_per_shard() {
        let named = |name: &str, enqueued: u64| {
            let mut q = queue_row();
            q.name = name.into();
            q.stats.enqueued = enqueued;
            q
        };
        let snapshots = vec![
            ShardMetrics::default().snapshot(
                0,
                Gauges::default(),
                vec![named("busy", 50), named("b", 1), named(OTHER_QUEUES, 99)],
            ),
            ShardMetrics::default().snapshot(
                1,
                Gauges::default(),
                vec![named("a", 1), named("c", 1), named("d", 0)],
            ),
        ];
        let text = render(&snapshots, 2);
        let depth: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("singyeong_queue_depth{"))
            .collect();
        // The busiest queue and the first by name among the ties keep their
        // series; a queue named "_other" never gets one of its own.
        assert_eq!(
            depth,
            [
                "singyeong_queue_depth{shard=\"0\",queue=\"busy\"} 3",
                "singyeong_queue_depth{shard=\"1\",queue=\"a\"} 3",
                "singyeong_queue_depth{shard=\"0\",queue=\"_other\"} 6",
                "singyeong_queue_depth{shard=\"1\",queue=\"_other\"} 6",
            ],
            "{text}"
        );
        assert!(
            text.contains("singyeong_queue_enqueued_total{shard=\"0\",queue=\"_other\"} 100"),
            "{text}"
        );
        assert!(text.contains("singyeong_queues_folded 4"), "{text}");

        let text = render(&snapshots, 0);
        assert!(text.contains("singyeong_queues_folded 6"), "{text}");
        assert!(!text.contains("queue=\"busy\""), "{text}");
    }

    fn queue_row() -> QueueRow {
        QueueRow {
            name: "jobs".into(),
            depth: 3,
            in_flight: 1,
            dead_letter: 0,
            waiting: 2,
            bytes: 900,
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
