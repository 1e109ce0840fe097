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
    repicks: Cell<u64>,
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

    /// A SEND (or proxy) choice made again because the client chosen had
    /// gone before the packet reached it.
    pub fn repick(&self) {
        bump(&self.repicks, 1);
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
            repicks: self.repicks.get(),
            queues,
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
    pub repicks: u64,
    /// The queues the shard owns.
    pub queues: Vec<QueueRow>,
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
}
