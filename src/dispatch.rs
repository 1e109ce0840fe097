//! Where each message from the mesh goes: every [`ShardMsg`] is handed to
//! the part of the server that owns it: routing answers picks,
//! broadcasts and node lists (`routing::answer`) and directory questions
//! (`routing::locate`) and finishes SENDs (`routing::router`), the queue
//! side of the shard takes queue messages (`queue::owner`), the name
//! registry, the connection registry and the exchange of the shard itself
//! take theirs.
//!
//! It sits above `shard`, `routing` and `queue`, so that the shard, the
//! lower layer, calls into neither: the shard's loop (`server`) calls
//! [`handle`], and the shard is built with [`answer`] for the requests it
//! answers itself (see `shard::Above`).

use std::rc::Rc;

use crate::metrics::{Gauges, Snapshot};
use crate::queue;
use crate::routing::{self, router};
use crate::shard::{Reply, Shard, ShardMsg};

/// Handles one message from the mesh.
pub fn handle(shard: &Rc<Shard>, msg: ShardMsg) {
    match msg {
        ShardMsg::Reply { req, from, reply } => shard.take_reply(req, from, reply),
        ShardMsg::Deliver { target, packet } => {
            shard.deliver(target, &packet);
        }
        ShardMsg::SendOne { target, job } => router::deliver_one(shard, target, job),
        ShardMsg::PickSend { query, job, retry } => router::pick_send(shard, query, job, retry),
        ShardMsg::Invalid { to, error, extra } => shard.invalid_to(to, error, extra),
        ShardMsg::Release { app, client, owner } => shard.record_release(app, client, owner),
        ShardMsg::ClientEvent { packet } => shard.notify_subscribers(&packet),
        ShardMsg::Shutdown => shard.shutdown(),
        ShardMsg::Queue(msg) => queue::owner::handle(shard, msg),
        ShardMsg::ClusterView(view) => {
            crate::node::claims::view_changed(shard, view);
            queue::cluster::view_changed(shard);
        }
        ShardMsg::ClusterRelease {
            app,
            client,
            holder,
        } => shard.record_cluster_release(app, client, holder),
        ShardMsg::CloseConn { conn, error } => shard.close_with_error(conn, &error),
        ShardMsg::SendAway { count } => crate::node::balance::send_away(shard, count),
        ShardMsg::RemoteApps { node, apps } => shard.cluster.set_remote_apps(node, apps),
        ShardMsg::NodeValues { from, counts } => {
            routing::homes::take_node_values(shard, from, counts)
        }
        request => {
            let reply_to = match &request {
                ShardMsg::Pick { reply_to, .. }
                | ShardMsg::Broadcast { reply_to, .. }
                | ShardMsg::Nodes { reply_to, .. }
                | ShardMsg::Metrics { reply_to }
                | ShardMsg::Claim { reply_to, .. }
                | ShardMsg::QueueAsk { reply_to, .. }
                | ShardMsg::Locate { reply_to, .. }
                | ShardMsg::Links { reply_to }
                | ShardMsg::DeliverAsk { reply_to, .. }
                | ShardMsg::AppCounts { reply_to }
                | ShardMsg::ClusterClaim { reply_to, .. }
                | ShardMsg::HoldsName { reply_to, .. }
                | ShardMsg::NodeHolders { reply_to, .. } => *reply_to,
                _ => unreachable!("only requests reach here"),
            };
            shard.reply(reply_to, request);
        }
    }
}

/// Answers a request locally; `None` for a message that is not a request.
pub fn answer(shard: &Shard, msg: ShardMsg) -> Option<Reply> {
    Some(match msg {
        ShardMsg::Pick {
            query,
            avg,
            describe,
            ..
        } => {
            let (pick, named) = shard.pick_local(&query, avg, describe);
            Reply::Pick(pick, named)
        }
        ShardMsg::Broadcast { query, packet, .. } => {
            Reply::Delivered(shard.broadcast_local(&query, &packet))
        }
        ShardMsg::Nodes { query, cap, .. } => Reply::Nodes(shard.nodes_local(&query, cap)),
        ShardMsg::Metrics { .. } => Reply::Metrics(Box::new(metrics(shard))),
        ShardMsg::Claim {
            app, client, owner, ..
        } => Reply::Claimed(shard.record_claim(app, client, owner)),
        ShardMsg::ClusterClaim {
            app,
            client,
            holder,
            stale,
            ..
        } => Reply::ClusterClaim(shard.record_cluster_claim(app, client, holder, stale)),
        ShardMsg::HoldsName { app, client, .. } => Reply::Claimed(shard.holds_name(app, client)),
        ShardMsg::QueueAsk { ask, .. } => Reply::Queue(queue::owner::answer(shard, ask)),
        ShardMsg::AppCounts { .. } => Reply::AppCounts(
            shard
                .store
                .borrow()
                .app_counts()
                .map(|(app, n)| (app.clone(), n))
                .collect(),
        ),
        ShardMsg::DeliverAsk { target, packet, .. } => {
            Reply::Delivered(u64::from(shard.deliver(target, &packet)))
        }
        ShardMsg::Links { .. } => Reply::Links(
            shard
                .cluster
                .links()
                .map_or_else(Vec::new, |links| links.links()),
        ),
        ShardMsg::NodeHolders {
            keys, restricted, ..
        } => Reply::Holders(routing::homes::table_holders(shard, &keys, restricted)),
        ShardMsg::Locate { keys, reply_to } => {
            Reply::Located(routing::locate::answer_locate(shard, &keys, reply_to.shard))
        }
        _ => return None,
    })
}

/// This shard's metrics: its counters, with the gauges read now.
fn metrics(shard: &Shard) -> Snapshot {
    let (queues, queue_bytes) = shard.queues.held();
    routing::locate::catch_up(shard);
    let directory = shard.directory.as_ref().map_or((0, 0, 0), |d| d.sizes());
    let mut snapshot = shard.metrics.snapshot(
        shard.id,
        Gauges {
            connections: shard.open_connections() as u64,
            clients: shard.clients().len() as u64,
            mesh_depth: shard.mesh_depth() as u64,
            queues: queues as u64,
            queue_bytes: queue_bytes as u64,
            directory_apps: directory.0 as u64,
            directory_values: directory.1 as u64,
            directory_remembered: directory.2 as u64,
            homed_values: shard.cluster.values.borrow().table.len() as u64,
        },
        shard.queues.rows(),
    );
    snapshot.cluster = shard.cluster.stats();
    snapshot.links = shard
        .cluster
        .links()
        .map(|links| (links.stats(), links.links().len() as u64));
    snapshot.traffic = shard
        .cluster
        .links()
        .map_or_else(Vec::new, |links| links.traffic());
    snapshot
}
