//! Metrics: per-shard counters kept in plain cells (no atomics, no locks:
//! each shard counts only its own work), gathered into [`Snapshot`]s by a
//! scatter when `/metrics` is scraped, and rendered in the Prometheus text
//! format with `prometheus-client`'s encoder.

mod render;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::queue::owner::QueueRow;

pub use render::render;

/// Upper bounds of the routing latency histogram, in seconds: 1 µs to ~1 s,
/// doubling (routing is in-memory; anything near the top is a stall).
pub const LATENCY_BUCKETS: [f64; 21] = {
    let mut b = [0.0; 21];
    let mut i = 0;
    let mut v = 1e-6;
    while i < 21 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// Packets and bodies that could not be encoded, process-wide: encoders
/// are pure code without a shard at hand, and this should never move, so
/// one shared atomic costs nothing.
static ENCODE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// One packet or body that could not be encoded (see `protocol::encode`).
pub fn encode_error() {
    ENCODE_ERRORS.fetch_add(1, Ordering::Relaxed);
}

pub fn encode_errors() -> u64 {
    ENCODE_ERRORS.load(Ordering::Relaxed)
}

/// Opcodes 0..=8 get their own counter; anything else is counted as "other".
const OPS: usize = 10;

/// A limit on what clients make the server hold; each refusal (or, for
/// query answers, each cut answer) is counted under its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-queue-name-length`
    QueueNameLength,
    /// `--max-queues`
    Queues,
    /// `--max-queue-length`
    QueueLength,
    /// `--max-queue-bytes`
    QueueBytes,
    /// `--max-total-queue-bytes`
    TotalQueueBytes,
    /// `--max-queue-message-size`
    QueueMessageSize,
    /// `--max-query-results` (and the answer's byte budget): answers cut.
    QueryResults,
    /// `--max-queue-requests` per connection, and `--max-queue-length`
    /// credits per queue: QUEUE_REQUESTs refused.
    QueueRequests,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::QueueNameLength,
        Limit::Queues,
        Limit::QueueLength,
        Limit::QueueBytes,
        Limit::TotalQueueBytes,
        Limit::QueueMessageSize,
        Limit::QueryResults,
        Limit::QueueRequests,
    ];

    /// The `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::QueueNameLength => "queue_name_length",
            Limit::Queues => "queues",
            Limit::QueueLength => "queue_length",
            Limit::QueueBytes => "queue_bytes",
            Limit::TotalQueueBytes => "total_queue_bytes",
            Limit::QueueMessageSize => "queue_message_size",
            Limit::QueryResults => "query_results",
            Limit::QueueRequests => "queue_requests",
        }
    }
}

/// How a SEND's lookup of its indexed values' home nodes came out (see
/// `routing::homes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueLookup {
    /// The homes named the nodes holding the values.
    Holders,
    /// Settled homes said no node holds them.
    Nobody,
    /// A home was not settled (it became one a moment ago, or another
    /// node thinks it is the home) or did not answer in time.
    Unsettled,
}

impl ValueLookup {
    pub const ALL: [ValueLookup; 3] = [
        ValueLookup::Holders,
        ValueLookup::Nobody,
        ValueLookup::Unsettled,
    ];

    /// The `answer` label.
    pub fn label(self) -> &'static str {
        match self {
            ValueLookup::Holders => "holders",
            ValueLookup::Nobody => "nobody",
            ValueLookup::Unsettled => "unsettled",
        }
    }
}

/// One shard's counters.
#[derive(Default)]
pub struct ShardMetrics {
    packets_in: [Cell<u64>; OPS],
    packets_out: [Cell<u64>; OPS],
    sends: Cell<u64>,
    broadcasts: Cell<u64>,
    broadcast_deliveries: Cell<u64>,
    no_route: Cell<u64>,
    routing_buckets: [Cell<u64>; LATENCY_BUCKETS.len() + 1],
    routing_sum: Cell<f64>,
    outbound_drops: Cell<u64>,
    slow_consumers: Cell<u64>,
    socket_writes: Cell<u64>,
    http_timeouts: Cell<u64>,
    limit_refusals: [Cell<u64>; Limit::ALL.len()],
    queue_log_corrupt_segments: Cell<u64>,
    queue_log_encode_errors: Cell<u64>,
    queue_log_carried: Cell<u64>,
    repicks: Cell<u64>,
    queue_handed_over: Cell<u64>,
    queue_taken_over: Cell<u64>,
    routing_overlapped: Cell<u64>,
    /// The cluster's duties of a node (`crate::node`).
    node: NodeCounters,
    value_lookups: [Cell<u64>; ValueLookup::ALL.len()],
    /// Messages sent to other shards, by [`crate::shard::ShardMsg::kind`].
    cross_shard: Cells<{ crate::shard::ShardMsg::KINDS.len() }>,
}

/// Counters by index: `Default` for any length (the standard library's
/// stops at 32).
struct Cells<const N: usize>([Cell<u64>; N]);

impl<const N: usize> Default for Cells<N> {
    fn default() -> Self {
        Cells(std::array::from_fn(|_| Cell::new(0)))
    }
}

/// What a node did for the cluster: load balancing and the names it
/// claimed across it.
#[derive(Default)]
struct NodeCounters {
    balance_goodbyes: Cell<u64>,
    claims_unconfirmed: Cell<u64>,
    claims_refused: Cell<u64>,
    duplicates_closed: Cell<u64>,
}

/// [`NodeCounters`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Clients sent goodbye (reason `load balancing`).
    pub balance_goodbyes: u64,
    /// Identifies accepted without the name's home node answering.
    pub claims_unconfirmed: u64,
    /// Identifies refused because another node holds the name.
    pub claims_refused: u64,
    /// Clients closed because, once the cluster changed, another node was
    /// found holding their name.
    pub duplicates_closed: u64,
}

fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get() + by);
}

impl ShardMetrics {
    pub fn packet_in(&self, op: u8) {
        bump(&self.packets_in[usize::from(op).min(OPS - 1)], 1);
    }

    pub fn packet_out(&self, op: u8) {
        bump(&self.packets_out[usize::from(op).min(OPS - 1)], 1);
    }

    /// One SEND routed (delivered or not) and how long choosing took.
    pub fn routed_send(&self, delivered: bool, took: Duration) {
        bump(&self.sends, 1);
        if !delivered {
            bump(&self.no_route, 1);
        }
        self.observe_routing(took);
    }

    /// A SEND or BROADCAST that started while another of its connection's
    /// was still being routed (the pipeline saved it a wait).
    pub fn routing_overlapped(&self) {
        bump(&self.routing_overlapped, 1);
    }

    /// One message sent to another shard, of kind `kind`.
    pub fn cross_shard(&self, kind: usize) {
        bump(&self.cross_shard.0[kind], 1);
    }

    /// A SEND that found no client after all: its chosen client had gone,
    /// and the choice made again (on that client's shard) found none.
    pub fn unrouted(&self) {
        bump(&self.no_route, 1);
    }

    /// One BROADCAST and the number of clients it reached.
    pub fn routed_broadcast(&self, deliveries: u64, took: Duration) {
        bump(&self.broadcasts, 1);
        bump(&self.broadcast_deliveries, deliveries);
        if deliveries == 0 {
            bump(&self.no_route, 1);
        }
        self.observe_routing(took);
    }

    fn observe_routing(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.routing_buckets[bucket], 1);
        self.routing_sum.set(self.routing_sum.get() + secs);
    }

    /// Frames thrown away for a connection that was closing or too slow.
    pub fn outbound_dropped(&self, frames: u64) {
        bump(&self.outbound_drops, frames);
    }

    pub fn slow_consumer(&self) {
        bump(&self.slow_consumers, 1);
    }

    /// One write of coalesced data frames to a websocket's socket.
    pub fn socket_write(&self) {
        bump(&self.socket_writes, 1);
    }

    /// An HTTP request whose head or body missed its deadline (408).
    pub fn http_timeout(&self) {
        bump(&self.http_timeouts, 1);
    }

    /// One refusal (or cut answer) because of `limit`.
    pub fn limit_refused(&self, limit: Limit) {
        bump(&self.limit_refusals[limit as usize], 1);
    }

    /// Queue log segments found corrupt at start (and set aside).
    pub fn queue_log_corrupt_segments(&self, n: u64) {
        bump(&self.queue_log_corrupt_segments, n);
    }

    /// A QUEUE refused because the log cannot represent its message.
    pub fn queue_log_encode_error(&self) {
        bump(&self.queue_log_encode_errors, 1);
    }

    /// Unacked messages carried forward to free an old log segment.
    pub fn queue_log_carried(&self, n: u64) {
        bump(&self.queue_log_carried, n);
    }

    /// A queue message this node held for another node's queue was
    /// taken by its owner (and dropped here).
    pub fn queue_handed_over(&self) {
        bump(&self.queue_handed_over, 1);
    }

    /// A queue message another node handed over was stored here.
    pub fn queue_taken_over(&self) {
        bump(&self.queue_taken_over, 1);
    }

    /// A SEND (or proxy) choice made again because the client chosen had
    /// gone before the packet reached it.
    pub fn repick(&self) {
        bump(&self.repicks, 1);
    }

    /// Clients sent away by load balancing.
    pub fn balance_goodbyes(&self, n: u64) {
        bump(&self.node.balance_goodbyes, n);
    }

    /// An identify accepted though the name's home node did not answer.
    pub fn claim_unconfirmed(&self) {
        bump(&self.node.claims_unconfirmed, 1);
    }

    /// An identify refused: another node holds the name.
    pub fn claim_refused(&self) {
        bump(&self.node.claims_refused, 1);
    }

    /// A client closed as a duplicate found once the cluster changed.
    pub fn duplicate_closed(&self) {
        bump(&self.node.duplicates_closed, 1);
    }

    /// A SEND asked its values' home nodes who holds them.
    pub fn value_lookup(&self, answer: ValueLookup) {
        bump(&self.value_lookups[answer as usize], 1);
    }

    /// A copy of every counter, with the gauges the shard reads at the time.
    pub fn snapshot(&self, shard: usize, gauges: Gauges, queues: Vec<QueueRow>) -> Snapshot {
        let read = |cells: &[Cell<u64>]| cells.iter().map(Cell::get).collect();
        Snapshot {
            shard,
            gauges,
            packets_in: read(&self.packets_in),
            packets_out: read(&self.packets_out),
            sends: self.sends.get(),
            broadcasts: self.broadcasts.get(),
            broadcast_deliveries: self.broadcast_deliveries.get(),
            no_route: self.no_route.get(),
            routing_buckets: read(&self.routing_buckets),
            routing_sum: self.routing_sum.get(),
            outbound_drops: self.outbound_drops.get(),
            slow_consumers: self.slow_consumers.get(),
            socket_writes: self.socket_writes.get(),
            http_timeouts: self.http_timeouts.get(),
            limit_refusals: read(&self.limit_refusals),
            queue_log_corrupt_segments: self.queue_log_corrupt_segments.get(),
            queue_log_encode_errors: self.queue_log_encode_errors.get(),
            queue_log_carried: self.queue_log_carried.get(),
            repicks: self.repicks.get(),
            queue_handed_over: self.queue_handed_over.get(),
            queue_taken_over: self.queue_taken_over.get(),
            routing_overlapped: self.routing_overlapped.get(),
            node: NodeStats {
                balance_goodbyes: self.node.balance_goodbyes.get(),
                claims_unconfirmed: self.node.claims_unconfirmed.get(),
                claims_refused: self.node.claims_refused.get(),
                duplicates_closed: self.node.duplicates_closed.get(),
            },
            value_lookups: read(&self.value_lookups),
            cross_shard: read(&self.cross_shard.0),
            queues,
            cluster: None,
            links: None,
            traffic: Vec::new(),
        }
    }
}

/// Values a shard reads from its state when scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Open websocket connections (identified or not).
    pub connections: u64,
    /// Identified clients.
    pub clients: u64,
    /// Messages waiting in the shard's mesh inbox.
    pub mesh_depth: u64,
    /// Queues this shard owns.
    pub queues: u64,
    /// Bytes its queues hold (see `queue::state::footprint`).
    pub queue_bytes: u64,
    /// Routing directory entries this shard keeps: other shards'
    /// application counts, and the value buckets homed here.
    pub directory_apps: u64,
    pub directory_values: u64,
    /// Other homes' answers about value buckets this shard remembers.
    pub directory_remembered: u64,
    /// In a cluster: value keys homed on this node whose holders this
    /// shard keeps.
    pub homed_values: u64,
}

/// One shard's metrics at one moment; sent across the mesh on a scrape.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub shard: usize,
    pub gauges: Gauges,
    pub packets_in: Vec<u64>,
    pub packets_out: Vec<u64>,
    pub sends: u64,
    pub broadcasts: u64,
    pub broadcast_deliveries: u64,
    pub no_route: u64,
    pub routing_buckets: Vec<u64>,
    pub routing_sum: f64,
    pub outbound_drops: u64,
    pub slow_consumers: u64,
    pub socket_writes: u64,
    pub http_timeouts: u64,
    /// Refusals per limit, in [`Limit::ALL`] order.
    pub limit_refusals: Vec<u64>,
    pub queue_log_corrupt_segments: u64,
    pub queue_log_encode_errors: u64,
    pub queue_log_carried: u64,
    pub repicks: u64,
    pub queue_handed_over: u64,
    pub queue_taken_over: u64,
    pub routing_overlapped: u64,
    pub node: NodeStats,
    /// Lookups of values' home nodes, in [`ValueLookup::ALL`] order.
    pub value_lookups: Vec<u64>,
    /// Messages sent to other shards, in [`crate::shard::ShardMsg::KINDS`]
    /// order.
    pub cross_shard: Vec<u64>,
    /// The queues the shard owns.
    pub queues: Vec<QueueRow>,
    /// From the shard that runs the cluster's gossip.
    pub cluster: Option<crate::cluster::ClusterStats>,
    /// This shard's links to other nodes: counters, and how many are up.
    pub links: Option<(crate::cluster::link::LinkStats, u64)>,
    /// This shard's frames and bytes with each other node.
    pub traffic: Vec<(std::net::SocketAddr, crate::cluster::link::PeerTraffic)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_in_the_right_slots() {
        let m = ShardMetrics::default();
        m.packet_in(4);
        m.packet_in(200);
        m.packet_out(6);
        m.routed_send(false, Duration::from_micros(3));
        m.routed_broadcast(5, Duration::from_secs(10));
        let s = m.snapshot(2, Gauges::default(), Vec::new());
        assert_eq!(s.packets_in[4], 1);
        assert_eq!(s.packets_in[OPS - 1], 1);
        assert_eq!(s.packets_out[6], 1);
        assert_eq!(
            (s.sends, s.broadcasts, s.broadcast_deliveries, s.no_route),
            (1, 1, 5, 1)
        );
        // 3 µs falls in the 4 µs bucket; 10 s overflows into +Inf.
        assert_eq!(s.routing_buckets[2], 1);
        assert_eq!(s.routing_buckets[LATENCY_BUCKETS.len()], 1);
    }

    #[test]
    fn limit_refusals_are_counted_per_limit() {
        let m = ShardMetrics::default();
        m.limit_refused(Limit::Queues);
        m.limit_refused(Limit::Queues);
        m.limit_refused(Limit::QueryResults);
        let s = m.snapshot(0, Gauges::default(), Vec::new());
        for (limit, n) in Limit::ALL.iter().zip(&s.limit_refusals) {
            let want = match limit {
                Limit::Queues => 2,
                Limit::QueryResults => 1,
                _ => 0,
            };
            assert_eq!(*n, want, "{}", limit.label());
        }
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(*limit as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn queue_log_counters_are_rendered() {
        let m = ShardMetrics::default();
        m.queue_log_corrupt_segments(2);
        m.queue_log_encode_error();
        m.queue_log_carried(5);
        let text = render(&[m.snapshot(0, Gauges::default(), Vec::new())], 100);
        for line in [
            "singyeong_queue_log_corrupt_segments_total{shard=\"0\"} 2",
            "singyeong_queue_log_encode_errors_total{shard=\"0\"} 1",
            "singyeong_queue_log_carried_records_total{shard=\"0\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}
