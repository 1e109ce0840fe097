//! What the queues send between shards. Grouped under two mesh variants,
//! [`crate::shard::ShardMsg::Queue`] (no answer) and
//! [`crate::shard::ShardMsg::QueueAsk`] (answered with
//! [`crate::shard::Reply::Queue`]).

use std::sync::Arc;

use serde_json::Value;

use super::state::{Consumer, MsgId};
use crate::query::Query;
use crate::shard::{ConnRef, Dispatch};

#[derive(Debug)]
pub enum QueueMsg {
    /// To the owner: QUEUE from `from`.
    Push {
        from: ConnRef,
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
    Cancel { queue: Arc<str>, conn: ConnRef },
    /// To the owner: QUEUE_ACK.
    Ack {
        queue: Arc<str>,
        conn: ConnRef,
        id: MsgId,
    },
    /// To the owner: a consumer's metadata changed.
    Update {
        queues: Vec<Arc<str>>,
        consumer: Arc<Consumer>,
    },
    /// To the owner: a consumer disconnected.
    Gone {
        queues: Vec<Arc<str>>,
        conn: ConnRef,
    },
    /// To the consumer's shard: deliver message `id`, using a credit.
    Deliver {
        to: ConnRef,
        queue: Arc<str>,
        id: MsgId,
        packet: Arc<Dispatch>,
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
