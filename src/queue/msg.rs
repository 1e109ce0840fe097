//! What the queues send between shards. Grouped under two mesh variants,
//! [`crate::shard::ShardMsg::Queue`] (no answer) and
//! [`crate::shard::ShardMsg::QueueAsk`] (answered with
//! [`crate::shard::Reply::Queue`]).

use std::sync::Arc;

use serde_json::Value;

use super::state::{Consumer, MsgId};
use crate::cluster::NodeKey;
use crate::query::Query;
use crate::shard::{ConnRef, Dispatch};

/// A client of a queue anywhere in the cluster: a connection of this node
/// (`node: None`) or of another node (its gossip address and run, so that
/// nothing meant for a node that has restarted reaches its new clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Who {
    pub node: Option<NodeKey>,
    pub conn: ConnRef,
}

impl Who {
    pub fn here(conn: ConnRef) -> Who {
        Who { node: None, conn }
    }
}

#[derive(Debug)]
pub enum QueueMsg {
    /// To the owner: QUEUE from `from`.
    Push {
        from: Origin,
        queue: Arc<str>,
        target: Arc<Query>,
        /// The target as the client sent it, for the log.
        target_json: Value,
        nonce: Value,
        payload: Value,
    },
    /// To the owner: one credit (QUEUE_REQUEST).
    Request {
        queue: Arc<str>,
        consumer: Arc<Consumer>,
    },
    /// To the owner: QUEUE_REQUEST_CANCEL.
    Cancel { queue: Arc<str>, conn: Who },
    /// To the owner: QUEUE_ACK.
    Ack {
        queue: Arc<str>,
        conn: Who,
        id: MsgId,
    },
    /// To the owner: a consumer's metadata changed.
    Update {
        queues: Vec<Arc<str>>,
        consumer: Arc<Consumer>,
    },
    /// To the owner: a consumer disconnected.
    Gone { queues: Vec<Arc<str>>, conn: Who },
    /// To the shard holding a queue this node no longer owns: node `by`
    /// (the owner) has taken message `id` over, durably.
    Moved {
        queue: Arc<str>,
        id: MsgId,
        by: NodeKey,
    },
    /// To the consumer's shard: deliver message `id`, using a credit.
    /// `from`: the node that delivered it (`None`: this one), where its
    /// ack goes.
    Deliver {
        to: ConnRef,
        queue: Arc<str>,
        id: MsgId,
        packet: Arc<Dispatch>,
        from: Option<NodeKey>,
    },
    /// To the consumer's shard: the delivery of `id` timed out and the
    /// owner took it back (sent before any redelivery to the same client).
    Revoked {
        to: ConnRef,
        queue: Arc<str>,
        id: MsgId,
    },
    /// To the client's shard: its QUEUE_REQUEST_CANCEL was applied; every
    /// delivery made before it was sent ahead of this.
    Cancelled { to: ConnRef, queue: Arc<str> },
    /// To the consumer's shard: its QUEUE_REQUEST was refused (it would
    /// have created a queue past `--max-queues`): the credit is taken back,
    /// and the client gets invalid (op 3).
    Refused {
        to: ConnRef,
        queue: Arc<str>,
        error: &'static str,
        extra: Value,
    },
    /// To the consumer's shard: the node that held its `credits` waiting
    /// credits on `queue` no longer owns the queue and dropped them; they
    /// are asked of the owner again.
    Rehome {
        to: ConnRef,
        queue: Arc<str>,
        credits: u32,
    },
}

#[derive(Debug)]
pub enum QueueAsk {
    /// For each target: whether a local client matches it strictly (1 or 0),
    /// and whether one matches without its ops.
    Count(Vec<Arc<Query>>),
    /// Every queue this shard owns, as `GET /api/v1/queues` shows it.
    Stats,
}

#[derive(Debug)]
pub enum QueueReply {
    Counts(Vec<(u64, u64)>),
    /// The shard's queues, and its log's counters (null when not durable).
    Stats(Vec<Value>, Value),
}

/// Where a QUEUE comes from: a client, or a node handing over a message
/// of a queue it no longer owns (its id there; see `super::cluster`).
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Client(Who),
    Handoff { node: NodeKey, id: MsgId },
}

/// What the queue log sends once a record is durable (or, if it cannot be
/// written, the refusal of).
#[derive(Debug)]
pub enum Confirm {
    /// QUEUE_CONFIRM to the producer.
    Client(Who, Arc<Dispatch>),
    /// A message another node handed over is held here now: that node
    /// drops its copy (its message `id` of `queue`).
    Moved {
        node: NodeKey,
        queue: Arc<str>,
        id: MsgId,
    },
}
