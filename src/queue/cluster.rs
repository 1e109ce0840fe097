//! Queues in a cluster: each queue has one owner node, the home of its name
//! among the live members (`ClusterView::home`, rendezvous hashing), and
//! its owner shard there (`owner::owner`). A client's QUEUE,
//! QUEUE_REQUEST, QUEUE_REQUEST_CANCEL and QUEUE_ACK go from the client's
//! shard over that shard's link to the owner node, which passes them to its
//! owner shard; deliveries, confirms and errors come back the same way. So
//! the owner matches the waiting clients of every node, and a client's
//! messages to one owner keep their order (one link, then one mesh lane).
//!
//! # When the owner changes
//!
//! Membership decides ownership, so it changes when a node joins, leaves,
//! dies or comes back. What happens then (README, "Queues in a cluster"):
//!
//! - A client's shard remembers which node holds each of its credits and
//!   which node delivered each message it holds. When that node is gone
//!   from the view, the credits are asked of the new owner and the
//!   deliveries forgotten (their owner delivers them again when it comes
//!   back: they are in its log). An ack goes to the node that delivered.
//! - A node holding a queue it no longer owns (the owner came back, or a
//!   node joined) gives the waiting credits back to their clients, which
//!   ask the owner, and offers its pending and dead-lettered messages to
//!   the owner one by one ([`QueueFrame::Handoff`]). The owner queues each
//!   anew (a new id) and answers [`QueueFrame::Moved`] once it is durable;
//!   only then is the copy here dropped (and its ack logged). Messages in
//!   flight stay until acked or taken back, then go the same way. A
//!   message is therefore always in some node's log: none is lost. An
//!   offer not answered is made again; the owner remembers the messages it
//!   took lately, so a repeated offer is stored once (only an owner that
//!   restarted in between could store one twice: at least once, as the
//!   contract says).
//! - A request that reaches a node that does not own the queue (views
//!   differ for a moment) is served there as if it did; the next round of
//!   handing over moves it on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::errors;
use super::msg::{Origin, QueueMsg, Who};
use super::owner::owner;
use super::state::{Consumer, Message, MsgId};
use crate::cluster::NodeKey;
use crate::cluster::frame::{
    Frame, QueueFrame, Request, Response, WireConn, WireConsumer, json_bytes, parse_json,
};
use crate::cluster::link::PeerShard;
use crate::metadata::Metadata;
use crate::query::Query;
use crate::routing::remote::parse_query;
use crate::shard::{ConnRef, Dispatch, Shard, ShardMsg};

/// How often a node looks for queues it holds but no longer owns (and at
/// once when the cluster changes).
pub const MOVE_EVERY: Duration = Duration::from_secs(1);
/// Messages of one queue offered to its owner per round.
pub const HANDOFF_BATCH: usize = 256;
/// An offered message the owner has not taken by then is offered again
/// (the owner remembers what it took, so an offer made twice is stored
/// once).
pub const HANDOFF_RETRY: Duration = Duration::from_secs(2);
/// Frames kept per node while this shard's link to it is not up.
const OUTBOX_MAX: usize = 4096;
/// How often kept frames are tried again.
pub const OUTBOX_EVERY: Duration = Duration::from_millis(20);

/// The node that owns `queue`: `None` for this one (always, with
/// clustering off).
pub fn owner_node(shard: &Shard, queue: &str) -> Option<NodeKey> {
    shard.cluster.links()?;
    let mut key = Vec::with_capacity(6 + queue.len());
    key.extend_from_slice(b"queue\0");
    key.extend_from_slice(queue.as_bytes());
    shard.cluster.view().home(&key).map(|id| (id.addr, id.boot))
}

/// The cluster changed: this shard's clients settle their credits, and the
/// queue task looks for queues to hand over at once.
pub fn view_changed(shard: &Shard) {
    if shard.cluster.links().is_none() {
        return;
    }
    super::owner::settle_clients(shard);
    shard.queues.next_move.set(std::time::Instant::now());
    shard.queues.notify();
}

/// Sends `frame` to `node`, or keeps it until this shard's link to the
/// node is up (a link of the pair of nodes may come up after another
/// brought the request this answers), in order behind any kept before.
/// Kept frames go when the node is down, or past [`OUTBOX_MAX`]; what they
/// said is then settled as for a lost node (the ack timeout takes a
/// delivery back).
fn send_or_keep(shard: &Shard, node: NodeKey, frame: QueueFrame) {
    let mut outbox = shard.queues.outbox.borrow_mut();
    if !outbox.contains_key(&node) && send(shard, node, frame.clone()) {
        return;
    }
    let kept = outbox.entry(node).or_default();
    if kept.len() < OUTBOX_MAX {
        kept.push_back(frame);
    } else {
        tracing::warn!(node = %node.0, "queue frames to a node without a link dropped");
    }
    if kept.len() == 1 {
        shard.queues.notify();
    }
}

/// Sends what [`send_or_keep`] kept, in order, while the links take it;
/// forgets what was kept for nodes that are gone.
pub fn flush_kept(shard: &Shard) {
    let mut outbox = shard.queues.outbox.borrow_mut();
    if outbox.is_empty() {
        return;
    }
    let view = shard.cluster.view();
    outbox.retain(|node, kept| {
        if view.live_member(*node).is_none() {
            return false;
        }
        while let Some(frame) = kept.front() {
            if !send(shard, *node, frame.clone()) {
                break;
            }
            kept.pop_front();
        }
        !kept.is_empty()
    });
}

/// Sends `frame` to `node` over this shard's link to it; false when there
/// is no such link up.
fn send(shard: &Shard, node: NodeKey, frame: QueueFrame) -> bool {
    let Some(endpoint) = shard.cluster.links() else {
        return false;
    };
    let view = shard.cluster.view();
    let Some(member) = view.live_member(node).filter(|m| !m.id.links.is_empty()) else {
        return false;
    };
    let peer = PeerShard::of(&member.id, shard.id);
    match endpoint.send_frame(&peer, &Frame::Queue(frame)) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(node = %node.0, error = ?e, "queue frame not sent");
            false
        }
    }
}

fn wire(conn: ConnRef) -> WireConn {
    WireConn {
        shard: conn.shard as u16,
        client: conn.client,
        conn: conn.conn,
    }
}

fn wire_consumer(c: &Consumer) -> WireConsumer {
    WireConsumer {
        conn: wire(c.conn.conn),
        app: c.app.to_string(),
        restricted: c.restricted,
        metadata: json_bytes(&c.metadata.to_typed_json()),
    }
}

/// An owner-bound message to the owner on `node`. False when it cannot be
/// sent now.
pub fn to_owner_node(shard: &Shard, node: NodeKey, msg: QueueMsg) -> bool {
    let frame = match msg {
        QueueMsg::Push {
            from: Origin::Client(who),
            queue,
            target_json,
            nonce,
            payload,
            ..
        } => QueueFrame::Push {
            from: wire(who.conn),
            queue: queue.to_string(),
            target: json_bytes(&target_json),
            nonce: json_bytes(&nonce),
            payload: json_bytes(&payload),
        },
        QueueMsg::Request { queue, consumer } => QueueFrame::Request {
            queue: queue.to_string(),
            consumer: wire_consumer(&consumer),
        },
        QueueMsg::Cancel { queue, conn } => QueueFrame::Cancel {
            queue: queue.to_string(),
            conn: wire(conn.conn),
        },
        QueueMsg::Ack { queue, conn, id } => QueueFrame::Ack {
            queue: queue.to_string(),
            conn: wire(conn.conn),
            id,
        },
        QueueMsg::Update { queues, consumer } => QueueFrame::Update {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            consumer: wire_consumer(&consumer),
        },
        QueueMsg::Gone { queues, conn } => QueueFrame::Gone {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            conn: wire(conn.conn),
        },
        other => {
            debug_assert!(false, "not for an owner: {other:?}");
            return false;
        }
    };
    send(shard, node, frame)
}

/// A client-bound message to a client on `node`. One that cannot be sent
/// is dropped: the owner takes an unacked delivery back after the ack
/// timeout, as for a client that went silent.
pub fn to_client_node(shard: &Shard, node: NodeKey, msg: QueueMsg) {
    let frame = match msg {
        QueueMsg::Deliver {
            to,
            queue,
            id,
            packet,
            ..
        } => QueueFrame::Deliver {
            to: wire(to),
            queue: queue.to_string(),
            id,
            d: json_bytes(&packet.d),
        },
        QueueMsg::Revoked { to, queue, id } => QueueFrame::Revoked {
            to: wire(to),
            queue: queue.to_string(),
            id,
        },
        QueueMsg::Cancelled { to, queue } => QueueFrame::Cancelled {
            to: wire(to),
            queue: queue.to_string(),
        },
        QueueMsg::Refused {
            to,
            queue,
            error,
            extra,
        } => QueueFrame::Refused {
            to: wire(to),
            queue: queue.to_string(),
            error: error.to_string(),
            extra: json_bytes(&extra),
        },
        QueueMsg::Rehome { to, queue, credits } => QueueFrame::Rehome {
            to: wire(to),
            queue: queue.to_string(),
            credits,
        },
        other => {
            debug_assert!(false, "not for a client: {other:?}");
            return;
        }
    };
    send_or_keep(shard, node, frame);
}

pub fn invalid_to_node(shard: &Shard, node: NodeKey, to: ConnRef, error: &str, extra: Value) {
    let frame = QueueFrame::Invalid {
        to: wire(to),
        error: error.to_string(),
        extra: json_bytes(&extra),
    };
    send_or_keep(shard, node, frame);
}

pub fn confirm_to_node(shard: &Shard, node: NodeKey, to: ConnRef, packet: &Dispatch) {
    let frame = QueueFrame::Confirm {
        to: wire(to),
        d: json_bytes(&packet.d),
    };
    send_or_keep(shard, node, frame);
}

pub fn moved_to_node(shard: &Shard, node: NodeKey, queue: Arc<str>, id: MsgId) {
    let frame = QueueFrame::Moved {
        queue: queue.to_string(),
        id,
    };
    send_or_keep(shard, node, frame);
}

/// Offers message `msg` of `queue` to its owner `node`.
pub fn hand_off(shard: &Shard, node: NodeKey, queue: &str, msg: &Message) -> bool {
    let frame = QueueFrame::Handoff {
        queue: queue.to_string(),
        id: msg.id,
        target: json_bytes(&msg.target.to_json()),
        d: json_bytes(&msg.packet.d),
    };
    send(shard, node, frame)
}

/// For each target: matches on every other live node (one answer per node
/// that answered in time; none without clustering).
pub async fn counts_elsewhere(shard: &Shard, targets: &[Arc<Query>]) -> Vec<Vec<(u64, u64)>> {
    if shard.cluster.links().is_none() {
        return Vec::new();
    }
    let request = Request::QueueCounts {
        targets: targets.iter().map(|t| json_bytes(&t.to_json())).collect(),
    };
    crate::routing::remote::ask_all(shard, request)
        .await
        .into_iter()
        .filter_map(|answer| match answer {
            Ok(Response::Counts(counts)) if counts.len() == targets.len() => Some(counts),
            _ => None,
        })
        .collect()
}

/// Answers [`Request::QueueCounts`] from this node's clients.
pub async fn answer_counts(shard: &Shard, targets: &[Vec<u8>]) -> Response {
    let mut parsed = Vec::with_capacity(targets.len());
    for t in targets {
        match parse_query(t) {
            Ok(q) => parsed.push(Arc::new(q)),
            Err(e) => return Response::Refused(e),
        }
    }
    Response::Counts(super::owner::local_counts(shard, &parsed).await)
}

/// A queue frame from node `peer`: passed to the shard it is for, the
/// queue's owner shard or the client's. A frame that does not make sense
/// here (a shard this node does not have, JSON that does not parse) is
/// logged and dropped: the link itself is sound.
pub fn take(shard: &Shard, peer: PeerShard, frame: QueueFrame) {
    let node = (peer.addr, peer.boot);
    if let Err(e) = take_frame(shard, node, frame) {
        tracing::warn!(node = %peer.addr, error = %e, "queue frame dropped");
    }
}

fn take_frame(shard: &Shard, node: NodeKey, frame: QueueFrame) -> Result<(), String> {
    let shards = shard.shards();
    let local = |w: WireConn| -> Result<ConnRef, String> {
        let s = w.shard as usize;
        if s >= shards {
            return Err(format!("no shard {s} here"));
        }
        Ok(ConnRef {
            shard: s,
            client: w.client,
            conn: w.conn,
        })
    };
    // The owner's messages keep the other node's numbering of the client.
    let remote = |w: WireConn| Who {
        node: Some(node),
        conn: ConnRef {
            shard: w.shard as usize,
            client: w.client,
            conn: w.conn,
        },
    };
    let consumer = |c: WireConsumer| -> Result<Arc<Consumer>, String> {
        let metadata = Metadata::from_typed_json(&parse_json(&c.metadata)?)?;
        Ok(Arc::new(Consumer {
            conn: remote(c.conn),
            app: c.app.into(),
            restricted: c.restricted,
            metadata: Arc::new(metadata),
        }))
    };
    let to_owner = |queue: &str, msg: QueueMsg| {
        shard.on_shard(owner(queue, shards), ShardMsg::Queue(msg));
    };
    let to_client = |to: ConnRef, msg: QueueMsg| shard.on_shard(to.shard, ShardMsg::Queue(msg));
    match frame {
        QueueFrame::Push {
            from,
            queue,
            target,
            nonce,
            payload,
        } => {
            let target_json = parse_json(&target)?;
            let query = Query::parse(&target_json).map_err(|e| format!("bad target: {e}"))?;
            let msg = QueueMsg::Push {
                from: Origin::Client(remote(from)),
                queue: queue.as_str().into(),
                target: Arc::new(query),
                target_json,
                nonce: parse_json(&nonce)?,
                payload: parse_json(&payload)?,
            };
            to_owner(&queue, msg);
        }
        QueueFrame::Handoff {
            queue,
            id,
            target,
            d,
        } => {
            let target_json = parse_json(&target)?;
            let query = Query::parse(&target_json).map_err(|e| format!("bad target: {e}"))?;
            let mut d = parse_json(&d)?;
            let msg = QueueMsg::Push {
                from: Origin::Handoff { node, id },
                queue: queue.as_str().into(),
                target: Arc::new(query),
                target_json,
                nonce: d["nonce"].take(),
                payload: d["payload"]["payload"].take(),
            };
            to_owner(&queue, msg);
        }
        QueueFrame::Moved { queue, id } => {
            let msg = QueueMsg::Moved {
                queue: queue.as_str().into(),
                id,
                by: node,
            };
            to_owner(&queue, msg);
        }
        QueueFrame::Request { queue, consumer: c } => {
            let msg = QueueMsg::Request {
                queue: queue.as_str().into(),
                consumer: consumer(c)?,
            };
            to_owner(&queue, msg);
        }
        QueueFrame::Cancel { queue, conn } => {
            let msg = QueueMsg::Cancel {
                queue: queue.as_str().into(),
                conn: remote(conn),
            };
            to_owner(&queue, msg);
        }
        QueueFrame::Ack { queue, conn, id } => {
            let msg = QueueMsg::Ack {
                queue: queue.as_str().into(),
                conn: remote(conn),
                id,
            };
            to_owner(&queue, msg);
        }
        QueueFrame::Update {
            queues,
            consumer: c,
        } => {
            let c = consumer(c)?;
            for (to, queues) in by_owner_shard(queues, shards) {
                let msg = QueueMsg::Update {
                    queues,
                    consumer: c.clone(),
                };
                shard.on_shard(to, ShardMsg::Queue(msg));
            }
        }
        QueueFrame::Gone { queues, conn } => {
            for (to, queues) in by_owner_shard(queues, shards) {
                let msg = QueueMsg::Gone {
                    queues,
                    conn: remote(conn),
                };
                shard.on_shard(to, ShardMsg::Queue(msg));
            }
        }
        QueueFrame::Deliver { to, queue, id, d } => {
            let to = local(to)?;
            let msg = QueueMsg::Deliver {
                to,
                queue: queue.into(),
                id,
                packet: Arc::new(Dispatch {
                    t: "QUEUE",
                    d: parse_json(&d)?,
                }),
                from: Some(node),
            };
            to_client(to, msg);
        }
        QueueFrame::Confirm { to, d } => {
            let target = local(to)?;
            let packet = Arc::new(Dispatch {
                t: "QUEUE_CONFIRM",
                d: parse_json(&d)?,
            });
            shard.on_shard(target.shard, ShardMsg::Deliver { target, packet });
        }
        QueueFrame::Invalid { to, error, extra } => {
            let to = local(to)?;
            let error = errors::known(&error).ok_or_else(|| format!("unknown error {error:?}"))?;
            let extra = parse_json(&extra)?;
            shard.on_shard(to.shard, ShardMsg::Invalid { to, error, extra });
        }
        QueueFrame::Revoked { to, queue, id } => {
            let to = local(to)?;
            let queue = queue.into();
            to_client(to, QueueMsg::Revoked { to, queue, id });
        }
        QueueFrame::Cancelled { to, queue } => {
            let to = local(to)?;
            let queue = queue.into();
            to_client(to, QueueMsg::Cancelled { to, queue });
        }
        QueueFrame::Refused {
            to,
            queue,
            error,
            extra,
        } => {
            let to = local(to)?;
            let error = errors::known(&error).ok_or_else(|| format!("unknown error {error:?}"))?;
            let msg = QueueMsg::Refused {
                to,
                queue: queue.into(),
                error,
                extra: parse_json(&extra)?,
            };
            to_client(to, msg);
        }
        QueueFrame::Rehome { to, queue, credits } => {
            let to = local(to)?;
            let queue = queue.into();
            to_client(to, QueueMsg::Rehome { to, queue, credits });
        }
    }
    Ok(())
}

fn by_owner_shard(queues: Vec<String>, shards: usize) -> Vec<(usize, Vec<Arc<str>>)> {
    let mut out: Vec<(usize, Vec<Arc<str>>)> = Vec::new();
    for q in queues {
        let to = owner(&q, shards);
        let q: Arc<str> = q.into();
        match out.iter_mut().find(|(s, _)| *s == to) {
            Some((_, qs)) => qs.push(q),
            None => out.push((to, vec![q])),
        }
    }
    out
}
