//! Work queues (contract §6–§7): routed, acknowledged, durable.
//!
//! # Layout
//!
//! - [`state`]: one queue as a pure state machine (pending, waiting credits,
//!   in flight, dead letters); `now` is passed in, actions come out.
//! - [`owner`]: the queue side of a shard: the queues it owns (by a hash of
//!   the name), the credits its own clients hold, the mesh handlers, and the
//!   task that runs timers and dead-letter checks and forgets idle queues.
//! - [`wal`]: the write-ahead log (direct I/O, checksummed records in
//!   block-aligned writes that never rewrite confirmed bytes, group commit,
//!   segments, compaction, recovery from write failures) and recovery at
//!   start (torn tails vs corruption).
//! - [`client`]: what a client's own shard remembers of its queues
//!   (credits, unacked deliveries), so that owners hear when it goes.
//! - [`budget`]: the server-wide counters behind `--max-queues` and
//!   `--max-total-queue-bytes`, shared by every shard.
//! - [`msg`]: what queues send between shards.
//! - [`cluster`]: queues across the nodes of a cluster: the owner node,
//!   the frames between nodes, handing queues over when the owner changes.
//! - [`errors`]: the wire text of queue errors.
//!
//! A queue lives on one shard. QUEUE, QUEUE_REQUEST, QUEUE_REQUEST_CANCEL
//! and QUEUE_ACK travel there over the mesh; a request carries a snapshot of
//! the consumer's metadata (refreshed when it changes), so the owner
//! evaluates targets against waiting consumers only. Deliveries go back
//! through the consumer's shard, confirms through the producer's.
//!
//! # Targets
//!
//! A message's target is a query (contract §5) evaluated against waiting
//! consumers: `application`, `restricted` and `ops` apply as for SEND.
//! `optional`: when no connected client matches the ops, the message is
//! matched without them (instead of being dead-lettered). `selector` and
//! `key` do not apply (the longest-waiting rule decides), and `droppable`
//! does not either: a queued message is never dropped.
//!
//! # Dead letters
//!
//! A message that no waiting credit takes at once is checked: one scatter
//! per batch asks every shard how many connected clients match each such
//! target. None: the message is dead-lettered for `dlq_time`, then checked
//! again. Messages recovered at start are not checked (their consumers may
//! not have reconnected yet).

pub mod budget;
pub mod client;
pub mod cluster;
pub mod errors;
pub mod msg;
pub mod owner;
pub mod state;
pub mod wal;

#[cfg(test)]
mod tests;

use std::rc::Rc;

pub use budget::Budget;
pub use msg::{QueueAsk, QueueMsg, QueueReply};
pub use owner::{ShardQueues, stats};
pub use wal::{Recovered, RecoveredMsg, RecoveredShard, WalError, recover};

use crate::shard::Shard;

/// Starts a shard's queue tasks: restores what recovery handed it, then runs
/// the log writer (when durable) and the timer task until the shard stops.
pub async fn run(shard: Rc<Shard>, recovered: RecoveredShard, boot: u64) {
    if shard.config.durable {
        *shard.queues.wal.borrow_mut() = Some(wal::Wal::new(
            shard.config.fsync,
            shard.config.queue_segment_bytes,
            &recovered,
        ));
        shard
            .metrics
            .queue_log_corrupt_segments(recovered.corrupt_segments);
        glommio::spawn_local(wal::write_loop(shard.clone(), boot)).detach();
    }
    for r in recovered.msgs {
        owner::restore(&shard, r.queue, r.msg);
    }
    owner::run(shard).await;
}
