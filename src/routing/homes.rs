//! Indexed values homed over the nodes of a cluster, at run time: each
//! node tells each value's home node how many of its clients hold it, and
//! a SEND on an indexed value asks that home which nodes to ask (see
//! [`crate::cluster::values`] for the rules, and `routing::remote` for the
//! SEND).
//!
//! Within a node, a key's entries live on fixed shards: the node's count
//! of a key is known on the key's local home shard (the routing
//! directory's, [`super::directory::home_of`]; the only shard when there
//! is one), which publishes it; on the home node, the key's table is on
//! [`table_shard`]. A frame of counts arrives on whichever shard the link
//! lands on and is handed to the table shards; so is a lookup.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::ClusterView;
use crate::cluster::frame::{Frame, Request, Response};
use crate::cluster::link::PeerShard;
use crate::cluster::values::{self, Dest, Holders, Key, NodeRef, encode_key, table_shard};
use crate::metadata::{Count, Touched, probe_value_keys};
use crate::query::Query;
use crate::shard::{Reply, Shard, ShardMsg};

/// How often each shard sends the counts that changed: changes in
/// between cost one frame per home node. A count that is that much behind
/// only narrows a SEND less well for that long (it asks the other nodes
/// before answering `no_route`).
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// How long after the nodes that keys are homed over changed a home calls
/// its answers settled: time for the news to reach every node by gossip
/// and for each to send the counts whose home moved. Before that, an asker
/// treats the answer as a hint and asks as if there were no homes.
const SETTLE: Duration = Duration::from_secs(3);

/// How long a count sent as zero is kept to be sent again over a link
/// that comes up again: past the links' idle timeout (10 s), by which a
/// lost link, and whatever it lost, has been noticed. In publish periods
/// (a slow shard's periods are longer, which only keeps them longer).
const ZERO_LINGER: u64 = 15_000 / PUBLISH_EVERY.as_millis() as u64;

/// About how many bytes of keys one frame of counts carries.
const FRAME_BYTES: usize = 256 << 10;

/// One shard's part: the store changed. With one shard (no routing
/// directory), this shard is every key's local home: the value keys it
/// touched wait for the next publish.
pub fn note_store(shard: &Shard) {
    if shard.cluster.links().is_none() {
        return;
    }
    let touched = shard.store.borrow_mut().take_touched();
    let mut state = shard.cluster.values.borrow_mut();
    state
        .touched
        .extend(touched.into_iter().filter_map(|t| match t {
            Touched::Value(key) => Some(key),
            Touched::App(_) => None,
        }));
}

/// On every shard of a cluster node: every [`PUBLISH_EVERY`], sends the
/// counts of this shard's keys that changed (or whose home moved, or that
/// went over a link that came up again) to their homes.
pub async fn publish_loop(shard: Rc<Shard>) {
    let mut linked: HashSet<PeerShard> = HashSet::new();
    loop {
        glommio::timer::sleep(PUBLISH_EVERY).await;
        let Some(endpoint) = shard.cluster.links() else {
            continue;
        };
        let view = shard.cluster.view();
        let Some(this) = view.this.as_ref() else {
            continue;
        };
        let me: NodeRef = (this.addr, this.boot);
        let totals = node_totals(&shard);
        let peers = endpoint.peers();
        let mut local: Vec<(Key, Count)> = Vec::new();
        {
            let mut state = shard.cluster.values.borrow_mut();
            state.outbox.advance(ZERO_LINGER);
            for (key, count) in totals {
                state.outbox.set(key, count);
            }
            for peer in &peers {
                if !linked.contains(peer) {
                    state.outbox.relinked((peer.addr, peer.boot));
                }
            }
            if state.outbox.is_due() {
                state.outbox.flush(
                    |key| values::home(&view, key),
                    |dest, batch| match dest {
                        None => {
                            local.extend(batch);
                            true
                        }
                        Some(node) => send_counts(&shard, &endpoint, &view, node, batch),
                    },
                );
            }
        }
        linked = peers.into_iter().collect();
        hand_to_tables(&shard, me, local);
    }
}

/// This node's counts of the keys whose local home is this shard that
/// may have changed since the last call.
fn node_totals(shard: &Shard) -> Vec<(Key, Count)> {
    match &shard.directory {
        Some(link) => {
            super::locate::catch_up(shard);
            link.take_node_totals()
                .into_iter()
                .map(|(key, count)| (encode_key(&key), count))
                .collect()
        }
        None => {
            let mut keys = std::mem::take(&mut shard.cluster.values.borrow_mut().touched);
            keys.sort_unstable();
            keys.dedup();
            let store = shard.store.borrow();
            keys.into_iter()
                .map(|key| (encode_key(&key), store.value_count(&key)))
                .collect()
        }
    }
}

/// Sends `batch` to its home `node` over this shard's link, in frames of
/// about [`FRAME_BYTES`]; false when a frame could not go (the batch
/// stays due; the frames that went are harmless to send again).
fn send_counts(
    shard: &Shard,
    endpoint: &crate::cluster::link::Endpoint,
    view: &ClusterView,
    node: NodeRef,
    batch: Vec<(Key, Count)>,
) -> bool {
    let Some(peer) = peer_shard(shard, view, node) else {
        return false;
    };
    let mut counts = Vec::new();
    let mut bytes = 0;
    let mut sent = true;
    let mut batch = batch.into_iter().peekable();
    while let Some((key, count)) = batch.next() {
        bytes += key.len() + 8;
        counts.push((key.into_vec(), count.open, count.restricted));
        if bytes >= FRAME_BYTES || batch.peek().is_none() {
            let frame = Frame::Values {
                counts: std::mem::take(&mut counts),
            };
            sent &= endpoint.send_frame(&peer, &frame).is_ok();
            bytes = 0;
        }
    }
    sent
}

/// The shard of live node `node` this shard links to.
fn peer_shard(shard: &Shard, view: &ClusterView, node: NodeRef) -> Option<PeerShard> {
    let member = view.live_member(node).filter(|m| !m.id.links.is_empty())?;
    Some(PeerShard::of(&member.id, shard.id))
}

/// Node `from`'s counts of keys homed on this node, to the shards that
/// keep their tables.
fn hand_to_tables(shard: &Shard, from: NodeRef, counts: Vec<(Key, Count)>) {
    if counts.is_empty() {
        return;
    }
    let mut by_shard: Vec<Vec<(Key, Count)>> = vec![Vec::new(); shard.shards()];
    for (key, count) in counts {
        by_shard[table_shard(&key, shard.shards())].push((key, count));
    }
    for (to, counts) in by_shard.into_iter().enumerate() {
        if counts.is_empty() {
            continue;
        }
        if to == shard.id {
            take_node_values(shard, from, counts);
        } else {
            shard.on_shard(to, ShardMsg::NodeValues { from, counts });
        }
    }
}

/// Another node's [`Frame::Values`], received over this shard's link.
pub fn take_frame(shard: &Shard, peer: &PeerShard, counts: Vec<(Vec<u8>, u32, u32)>) {
    let counts = counts
        .into_iter()
        .map(|(key, open, restricted)| (key.into_boxed_slice(), Count { open, restricted }))
        .collect();
    hand_to_tables(shard, (peer.addr, peer.boot), counts);
}

/// On the shard keeping their table: node `from`'s counts, unless that
/// run is known gone (its entries were dropped, and must stay so).
pub fn take_node_values(shard: &Shard, from: NodeRef, counts: Vec<(Key, Count)>) {
    if values::gone(&shard.cluster.view(), from) {
        return;
    }
    shard.cluster.values.borrow_mut().table.apply(from, counts);
}

/// On the shard keeping their table: the live nodes holding `keys`, and
/// whether this node is settled as their home.
pub fn table_holders(shard: &Shard, keys: &[Key], restricted: bool) -> Holders {
    let view = shard.cluster.view();
    let state = shard.cluster.values.borrow();
    let settled = state.homes_since.is_some_and(|t| t.elapsed() >= SETTLE)
        && keys.iter().all(|k| values::home(&view, k).is_none());
    let mut nodes = state.table.holders(keys, restricted);
    nodes.retain(|(node, _)| values::live(&view, *node));
    Holders { nodes, settled }
}

/// On a home node: the holders of `keys`, from the shards that keep their
/// tables.
pub async fn node_holders(shard: &Shard, keys: Vec<Key>, restricted: bool) -> Holders {
    let mut by_shard: Vec<Vec<Key>> = vec![Vec::new(); shard.shards()];
    for key in keys {
        by_shard[table_shard(&key, shard.shards())].push(key);
    }
    let mut found = Holders {
        nodes: Vec::new(),
        settled: true,
    };
    for (to, keys) in by_shard.into_iter().enumerate() {
        if keys.is_empty() {
            continue;
        }
        let part = if to == shard.id {
            table_holders(shard, &keys, restricted)
        } else {
            let reply = shard
                .ask(to, |reply_to| ShardMsg::NodeHolders {
                    reply_to,
                    keys: keys.clone(),
                    restricted,
                })
                .await;
            match reply {
                Reply::Holders(part) => part,
                _ => Holders::default(),
            }
        };
        found.merge(part);
    }
    found
}

/// Answers another node's [`Request::Holders`].
pub async fn answer(shard: &Shard, keys: Vec<Vec<u8>>, restricted: bool) -> Response {
    let keys = keys.into_iter().map(Vec::into_boxed_slice).collect();
    let found = node_holders(shard, keys, restricted).await;
    Response::Holders {
        nodes: found
            .nodes
            .into_iter()
            .map(|((addr, boot), n)| (addr.to_string(), boot, n))
            .collect(),
        settled: found.settled,
    }
}

/// Which nodes hold matches of `query`, by its indexed values' homes:
/// `None` when the query has no indexed equality or membership to narrow
/// by. Homes that are other nodes are asked over this shard's links (one
/// that does not answer in time leaves the answer unsettled); this node,
/// when a home, answers from its own tables.
pub async fn lookup(shard: &Shard, query: &Query) -> Option<Holders> {
    let app = query.application.as_deref()?;
    let plan = query.index_plan()?;
    let keys = probe_value_keys(&Arc::from(app), &plan.probe);
    if keys.is_empty() {
        return None;
    }
    let view = shard.cluster.view();
    let mut by_home: Vec<(Dest, Vec<Key>)> = Vec::new();
    for key in keys {
        let key = encode_key(&key);
        let home = values::home(&view, &key);
        match by_home.iter_mut().find(|(h, _)| *h == home) {
            Some((_, keys)) => keys.push(key),
            None => by_home.push((home, vec![key])),
        }
    }
    // Other homes are asked all at once, while this node looks at its own.
    let mut asks = Vec::new();
    let mut here = Vec::new();
    for (home, keys) in by_home {
        match home {
            None => here = keys,
            Some(node) => asks.push(ask_home(shard, &view, node, keys, query.restricted)),
        }
    }
    let mut found = match here.is_empty() {
        true => Holders {
            nodes: Vec::new(),
            settled: true,
        },
        false => node_holders(shard, here, query.restricted).await,
    };
    for ask in asks {
        found.merge(ask.await.unwrap_or_default());
    }
    shard
        .metrics
        .value_lookup(match (found.settled, found.nodes.is_empty()) {
            (false, _) => crate::metrics::ValueLookup::Unsettled,
            (true, true) => crate::metrics::ValueLookup::Nobody,
            (true, false) => crate::metrics::ValueLookup::Holders,
        });
    Some(found)
}

/// Asks home `node` who holds `keys`: sent at once, answered when
/// awaited (a home that is not linked, or does not answer in time, leaves
/// the answer unsettled).
fn ask_home(
    shard: &Shard,
    view: &ClusterView,
    node: NodeRef,
    keys: Vec<Key>,
    restricted: bool,
) -> glommio::task::JoinHandle<Holders> {
    let endpoint = shard.cluster.links();
    let peer = peer_shard(shard, view, node);
    let deadline = shard.config.cluster_request_timeout;
    let request = Request::Holders {
        keys: keys.into_iter().map(Vec::from).collect(),
        restricted,
    };
    glommio::spawn_local(async move {
        let (Some(endpoint), Some(peer)) = (endpoint, peer) else {
            return Holders::default();
        };
        match endpoint.request(&peer, request, deadline).await {
            Ok(Response::Holders { nodes, settled }) => Holders {
                nodes: nodes
                    .into_iter()
                    .filter_map(|(addr, boot, n)| Some(((addr.parse().ok()?, boot), n)))
                    .collect(),
                settled,
            },
            _ => Holders::default(),
        }
    })
    .detach()
}
