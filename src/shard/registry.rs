//! The connection registry: every open websocket connection of this shard,
//! which of them are identified clients (and so reachable by routing), and
//! which asked for CLIENT_CONNECTED / CLIENT_DISCONNECTED. Also what reaches
//! one local connection by its [`ConnRef`]: a dispatch, an invalid.
//!
//! The invariant the rest of the server leans on: a client is in
//! `Shard::store` exactly when it is in `clients`. Both change together,
//! in one step without an await, and only here ([`Shard::join_client`],
//! [`Shard::unroute`]), so every client a pick can choose has a connection
//! to deliver to.

use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use indexmap::IndexSet;
use serde_json::{Value, json};

use super::encoded::{EncodedOnce, encode_dispatch};
use super::{ConnHandle, ConnRef, Dispatch, Shard, ShardMsg};
use crate::metadata::ClientIdx;
use crate::protocol::{Encoding, op};

/// Identified connections by their client slot in `Shard::store`.
pub type Clients = HashMap<ClientIdx, Rc<ConnHandle>>;

#[derive(Default)]
pub(super) struct Registry {
    /// Every open websocket connection of this shard, by connection id.
    pub(super) conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    /// Identified connections by their client slot in `store`. A client is
    /// in `store` exactly when it is here (see the module comment).
    clients: RefCell<Clients>,
    /// Clients that asked for CLIENT_CONNECTED / CLIENT_DISCONNECTED.
    subscribers: RefCell<IndexSet<ClientIdx>>,
    next_conn: Cell<u64>,
}

/// A client about to join its shard: who it said it is, with its checked
/// metadata.
pub struct NewClient {
    pub app_id: String,
    pub client_id: String,
    pub restricted: bool,
    pub metadata: crate::metadata::Metadata,
    /// It asked for CLIENT_CONNECTED / CLIENT_DISCONNECTED.
    pub subscribe: bool,
}

impl Shard {
    /// Registers a new websocket connection.
    pub fn open_conn(&self, encoding: Encoding, peer: std::net::IpAddr) -> Rc<ConnHandle> {
        let id = self.registry.next_conn.get();
        self.registry.next_conn.set(id + 1);
        let conn = Rc::new(ConnHandle::new(
            id,
            encoding,
            peer,
            self.metrics.clone(),
            self.flush.clone(),
            self.config.max_outbound_bytes,
            std::time::Instant::now(),
        ));
        self.registry.conns.borrow_mut().insert(id, conn.clone());
        conn
    }

    /// Adds an identified client to the store and makes it reachable by
    /// routing, in one step: no pick can see it before its connection can
    /// receive.
    pub fn join_client(&self, conn: &Rc<ConnHandle>, client: NewClient) -> ClientIdx {
        let idx = self.store.borrow_mut().insert(
            &client.app_id,
            &client.client_id,
            client.restricted,
            client.metadata,
        );
        conn.set_client(Some(idx));
        self.registry.clients.borrow_mut().insert(idx, conn.clone());
        if client.subscribe {
            self.registry.subscribers.borrow_mut().insert(idx);
        }
        (self.above.store_changed)(self);
        idx
    }

    /// Takes a client out of routing (its connection is closing or closed):
    /// its metadata and index entries go, and its connection no longer
    /// names the slot, which a newer client may reuse.
    pub fn unroute(&self, idx: ClientIdx) {
        let Some(conn) = self.registry.clients.borrow_mut().remove(&idx) else {
            return;
        };
        conn.set_client(None);
        self.registry.subscribers.borrow_mut().swap_remove(&idx);
        self.store.borrow_mut().remove(idx);
        (self.above.store_changed)(self);
    }

    /// Forgets a connection, and its client if it still has one.
    pub fn close_conn(&self, conn: &ConnHandle) {
        self.registry.conns.borrow_mut().remove(&conn.id);
        if let Some(idx) = conn.client() {
            self.unroute(idx);
        }
    }

    pub fn open_connections(&self) -> usize {
        self.registry.conns.borrow().len()
    }

    /// The identified clients' connections, to read: only this file adds
    /// or removes one, so the invariant with `store` holds.
    pub fn clients(&self) -> Ref<'_, Clients> {
        self.registry.clients.borrow()
    }

    /// Delivers to one local client, if it is still the connection meant
    /// and can still receive. A client found closing is taken out of
    /// routing, so the caller's next pick does not choose it again.
    pub fn deliver(&self, target: ConnRef, packet: &Dispatch) -> bool {
        let conn = match self.clients().get(&target.client) {
            Some(conn) if conn.id == target.conn => conn.clone(),
            _ => return false,
        };
        if conn.is_closing() {
            self.unroute(target.client);
            return false;
        }
        conn.push(op::DISPATCH, encode_dispatch(conn.encoding, packet));
        true
    }

    /// Sends invalid (op 3) to one local client, if it is still the
    /// connection meant.
    pub fn invalid_to(&self, target: ConnRef, error: &str, extra: Value) {
        if let Some(conn) = self.clients().get(&target.client)
            && conn.id == target.conn
        {
            conn.invalid(error, extra);
        }
    }

    /// Sends CLIENT_CONNECTED / CLIENT_DISCONNECTED to every shard.
    pub fn announce(&self, t: &'static str, app: &str, client: &str) {
        let packet = Arc::new(Dispatch {
            t,
            d: json!({"nonce": null, "payload": {"app": app, "client_id": client}}),
        });
        for shard in 0..self.shards() {
            self.on_shard(
                shard,
                ShardMsg::ClientEvent {
                    packet: packet.clone(),
                },
            );
        }
        (self.above.client_event)(self, &packet);
    }

    /// Passes a CLIENT_CONNECTED / CLIENT_DISCONNECTED on to this shard's
    /// subscribers ([`ShardMsg::ClientEvent`]).
    pub fn notify_subscribers(&self, packet: &Dispatch) {
        let clients = self.clients();
        let mut frames = EncodedOnce::new(packet);
        for idx in self.registry.subscribers.borrow().iter() {
            if let Some(conn) = clients.get(idx) {
                conn.push(op::DISPATCH, frames.get(conn.encoding));
            }
        }
    }
}
