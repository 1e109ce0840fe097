//! The answering half of routing: what one shard replies when
//! [`super::router`] asks it about its own clients: its [`Pick`] for a
//! SEND, its deliveries for a BROADCAST, its `<client>` objects for
//! QUERY_NODES. Methods of [`Shard`] defined here, beside the asking half:
//! the shard module itself knows nothing of them.

use serde_json::{Value, json};

use super::pick::{Pick, local_pick, matching};
use crate::metadata::{ClientIdx, ClientStore};
use crate::protocol::op;
use crate::query::Query;
use crate::shard::encoded::EncodedOnce;
use crate::shard::{Dispatch, NodeList, NodesCap, Picked, Shard};

impl Shard {
    /// This shard's pick for `query`, with the connection (and, if asked,
    /// the description) of each client it names. A named client whose
    /// connection is closing cannot receive any more: it is taken out of
    /// routing and the shard picks again among the rest (each pass removes
    /// one client, so this ends).
    pub(crate) fn pick_local(
        &self,
        query: &Query,
        avg: Option<f64>,
        describe: bool,
    ) -> (Pick, Vec<Picked>) {
        loop {
            let store = self.store.borrow();
            let pick = local_pick(&store, query, avg, &mut self.rng.borrow_mut());
            let clients = self.clients();
            let chosen = [
                pick.random,
                pick.keyed.map(|k| k.1),
                pick.selected.map(|s| s.1),
            ];
            let closing = chosen
                .into_iter()
                .flatten()
                .find(|idx| clients.get(idx).is_some_and(|c| c.is_closing()));
            if let Some(idx) = closing {
                drop((store, clients));
                self.unroute(idx);
                continue;
            }
            let named = chosen
                .into_iter()
                .flatten()
                .filter_map(|idx| {
                    let conn = clients.get(&idx)?.id;
                    let node = describe.then(|| self.describe_slot(&store, idx)).flatten();
                    Some(Picked { idx, conn, node })
                })
                .collect();
            return (pick, named);
        }
    }

    /// Delivers `packet` to every local match of `query`, encoding it once
    /// per encoding in use.
    pub(crate) fn broadcast_local(&self, query: &Query, packet: &Dispatch) -> u64 {
        let store = self.store.borrow();
        let clients = self.clients();
        let mut frames = EncodedOnce::new(packet);
        let mut count = 0;
        // A closing connection accepts nothing more: it is not reached.
        let reachable = matching(&store, query)
            .filter_map(|idx| clients.get(&idx))
            .filter(|conn| !conn.is_closing());
        for conn in reachable {
            conn.push_broadcast(op::DISPATCH, frames.get(conn.encoding));
            count += 1;
        }
        count
    }

    /// The `<client>` objects of local matches until `cap` is reached
    /// (described no further: one more at most is built and dropped), and
    /// the count of every match.
    pub(crate) fn nodes_local(&self, query: &Query, cap: NodesCap) -> NodeList {
        let store = self.store.borrow();
        let clients = self.clients();
        let mut list = NodeList::default();
        let mut bytes = 0;
        let mut full = false;
        for idx in matching(&store, query) {
            // Not attached yet, or its connection is closing: on its way
            // out, so not listed.
            if clients.get(&idx).is_none_or(|c| c.is_closing()) {
                continue;
            }
            list.matched += 1;
            if full || list.nodes.len() >= cap.count {
                full = true;
                continue;
            }
            let Some(node) = self.describe_slot(&store, idx) else {
                continue;
            };
            let size = crate::metadata::json_len(&node);
            if bytes + size > cap.bytes {
                full = true;
                continue;
            }
            bytes += size;
            list.nodes.push((node, size));
        }
        list
    }

    /// The `<client>` object of the local client in slot `idx`.
    fn describe_slot(&self, store: &ClientStore, idx: ClientIdx) -> Option<Value> {
        let entry = store.get(idx)?;
        let clients = self.clients();
        let conn = clients.get(&idx)?;
        Some(json!({
            "app_id": &*entry.app_id,
            "client_id": &*entry.client_id,
            "metadata": entry.metadata.to_plain_json(),
            "socket_ip": conn.peer.to_string(),
            "queues": self.queues.waiting_on(idx, conn.id),
            "node": &self.config.node_name,
            "shard": self.id,
        }))
    }
}
