//! One shard: the state one executor owns, and the lowest layer of the
//! runtime: routing, queues and the gateway are built on it, and it
//! imports none of their logic.
//!
//! # Layout
//!
//! - this file: the [`Shard`] itself, what it holds.
//! - [`exchange`]: the API through which work crosses cores
//!   ([`Shard::on_shard`], [`Shard::ask`], [`Shard::scatter`]).
//! - [`mesh`]: the inboxes beneath it, one per shard.
//! - [`message`]: what crosses ([`ShardMsg`], [`Reply`]).
//! - [`registry`]: this shard's connections and identified clients.
//! - [`names`]: the (app, client id) registry, partitioned across shards.
//! - [`lifecycle`]: the heartbeat reaper and shutdown.
//! - [`conn`]: one connection as the shard sees it; [`flush`]: the
//!   connections with frames for the flusher; [`encoded`]: a dispatch
//!   encoded once per encoding.
//!
//! What each message means is decided above this layer, in
//! `crate::dispatch`.

pub mod conn;
pub mod encoded;
pub mod exchange;
pub mod flush;
pub mod lifecycle;
pub mod mesh;
pub mod message;
pub mod names;
pub mod registry;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::metadata::ClientStore;
use crate::metrics::ShardMetrics;
pub use conn::{ConnHandle, Flushing, now_ms};
pub use exchange::Answer;
pub use mesh::Mesh;
pub use message::{
    ConnId, ConnRef, Dispatch, NodeList, NodesCap, Picked, Reply, ReplyTo, ShardMsg,
};
pub use names::ClaimOutcome;
pub use registry::NewClient;

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    mesh: Mesh<ShardMsg>,
    above: Above,
    /// Metadata of the clients identified on this shard. A client is here
    /// exactly when [`registry`] has its connection.
    pub store: RefCell<ClientStore>,
    registry: registry::Registry,
    names: names::Names,
    /// Shards to wake for messages queued to them (see
    /// [`Shard::wake_loop`]).
    wakes: exchange::Wakes,
    /// Requests waiting for answers from other shards, by number.
    pending: RefCell<HashMap<u64, Rc<exchange::Gather>>>,
    next_req: Cell<u64>,
    pub rng: RefCell<fastrand::Rng>,
    shutting_down: Cell<bool>,
    pub metrics: Rc<ShardMetrics>,
    /// Connections with frames for the shard's flusher to write.
    pub flush: Rc<flush::FlushList>,
    /// The queues this shard owns and its clients' credits (src/queue).
    /// Held here, though the shard never looks inside, because the queue
    /// code is written against `&Shard`: it needs the shard's clients,
    /// metrics and mesh as much as its own state, and a per-shard context
    /// composed above would make every queue function take two handles.
    /// The shard's only tie to `queue` is this field's type; it is built
    /// by the caller.
    pub queues: crate::queue::ShardQueues,
    /// This shard's end of the routing directory; none with one shard.
    /// Like `queues`, held here for the routing code, which reads it
    /// through `&Shard`; built by the caller.
    pub directory: Option<crate::routing::locate::DirectoryLink>,
    /// What this node knows of the cluster (and, on shard 0, the gossip
    /// that learns it). Held here like `queues`, for the code above.
    pub cluster: crate::cluster::ShardCluster,
}

/// What the layers above the shard do when the shard needs them: the
/// shard calls into no routing or queue code itself, so it is handed these
/// when it is built (by `server`).
pub struct Above {
    /// Answers a request this shard asks itself (see [`exchange`]):
    /// `crate::dispatch::answer`.
    pub answer: Answer,
    /// Told after the registry adds or removes a client, in the same step,
    /// so that what the store noted changing reaches the routing directory
    /// before anything about the client goes out:
    /// `crate::routing::locate::publish`.
    pub store_changed: fn(&Shard),
    /// Wakes another shard's inboxes that the layers above fill (the
    /// routing directory's lane), with its mesh inbox (see
    /// [`Shard::flush_wakes`]): `crate::routing::locate::wake`.
    pub wake_lane: fn(&Shard, usize),
    /// Told of each CLIENT_CONNECTED / CLIENT_DISCONNECTED of this shard's
    /// clients, after this node's subscribers were: the other nodes'
    /// subscribers hear of it too (`crate::routing::remote::announce`).
    pub client_event: fn(&Shard, &Dispatch),
}

impl Shard {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        mesh: Mesh<ShardMsg>,
        queues: crate::queue::ShardQueues,
        directory: Option<crate::routing::locate::DirectoryLink>,
        above: Above,
    ) -> Shard {
        let mut store = ClientStore::new();
        // The directory is told what the store's mutations touch.
        if directory.is_some() {
            store.note_changes();
        }
        Shard {
            id,
            config,
            mesh,
            above,
            store: RefCell::new(store),
            registry: registry::Registry::default(),
            names: names::Names::default(),
            wakes: exchange::Wakes::default(),
            pending: RefCell::default(),
            next_req: Cell::new(0),
            rng: RefCell::new(fastrand::Rng::new()),
            shutting_down: Cell::new(false),
            metrics: Rc::default(),
            flush: Rc::default(),
            queues,
            directory,
            cluster: Default::default(),
        }
    }

    pub fn shards(&self) -> usize {
        self.mesh.shards()
    }
}
