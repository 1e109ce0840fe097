//! One shard: the state one executor owns (its connections, their metadata
//! partition, its part of the name registry) and the small API through which
//! work crosses to other shards: [`Shard::on_shard`] to send one message,
//! [`Shard::scatter`] to ask every shard and gather their replies.

pub mod conn;
pub mod flush;
pub mod mesh;
pub mod message;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use indexmap::IndexSet;
use serde_json::{Value, json};

use crate::config::Config;
use crate::metadata::{ClientIdx, ClientStore};
use crate::metrics::{Gauges, ShardMetrics};
use crate::protocol::{self, Encoding, op};
use crate::query::Query;
use crate::routing::{Pick, local_pick, matching};
pub use conn::{ConnHandle, Flushing, now_ms};
pub use mesh::Mesh;
pub use message::{
    ConnId, ConnRef, Dispatch, NodeList, NodesCap, Picked, Reply, ReplyTo, ShardMsg,
};

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    mesh: Mesh<ShardMsg>,
    /// Metadata of the clients identified on this shard.
    pub store: RefCell<ClientStore>,
    /// Every open websocket connection of this shard, by connection id.
    conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    /// Identified connections by their client slot in `store`. A client is
    /// in `store` exactly when it is here: both change together, in one
    /// step without an await, so every client a pick can choose has a
    /// connection to deliver to.
    clients: RefCell<HashMap<ClientIdx, Rc<ConnHandle>>>,
    /// Clients that asked for CLIENT_CONNECTED / CLIENT_DISCONNECTED.
    subscribers: RefCell<IndexSet<ClientIdx>>,
    /// The part of the (app, client id) registry hashed to this shard.
    names: RefCell<HashMap<ClientName, ConnId>>,
    pending: RefCell<HashMap<u64, Rc<Gather>>>,
    next_req: Cell<u64>,
    next_conn: Cell<u64>,
    pub rng: RefCell<fastrand::Rng>,
    shutting_down: Cell<bool>,
    pub metrics: Rc<ShardMetrics>,
    /// Connections with frames for the shard's flusher to write.
    pub flush: Rc<flush::FlushList>,
    /// The queues this shard owns and its clients' credits (src/queue).
    pub queues: crate::queue::ShardQueues,
    /// This shard's end of the routing directory; none with one shard.
    pub directory: Option<crate::routing::locate::DirectoryLink>,
}

/// (application id, client id): unique among connected clients.
type ClientName = (Box<str>, Box<str>);

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

/// Replies collected for one scattered request.
struct Gather {
    expected: usize,
    replies: RefCell<Vec<(usize, Reply)>>,
    waker: Cell<Option<Waker>>,
}

impl Shard {
    /// `queue_budget`: the server-wide queue counters, one for all shards.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        mesh: Mesh<ShardMsg>,
        directory_lane: Mesh<crate::routing::directory::DirMsg>,
        queue_budget: Arc<crate::queue::Budget>,
    ) -> Shard {
        let queues = crate::queue::ShardQueues::new(id, &config, queue_budget);
        let mut store = ClientStore::new();
        // One shard needs no directory: it is the only place to look.
        let directory = (mesh.shards() > 1).then(|| {
            store.note_changes();
            crate::routing::locate::DirectoryLink::new(id, directory_lane)
        });
        Shard {
            id,
            config,
            mesh,
            store: RefCell::new(store),
            conns: RefCell::default(),
            clients: RefCell::default(),
            subscribers: RefCell::default(),
            names: RefCell::default(),
            pending: RefCell::default(),
            next_req: Cell::new(0),
            next_conn: Cell::new(0),
            rng: RefCell::new(fastrand::Rng::new()),
            shutting_down: Cell::new(false),
            metrics: Rc::default(),
            flush: Rc::default(),
            queues,
            directory,
        }
    }

    pub fn shards(&self) -> usize {
        self.mesh.shards()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Sends one message to shard `to` (which may be this one). Every
    /// message between shards goes through here, so that what crosses
    /// cores is counted (`singyeong_cross_shard_messages_total`).
    pub fn on_shard(&self, to: usize, msg: ShardMsg) {
        if to != self.id {
            self.metrics.cross_shard(msg.kind());
        }
        self.mesh.send(to, msg);
    }

    /// Asks every shard the question `make` builds and waits for all answers,
    /// returned indexed by shard.
    pub async fn scatter(&self, make: impl Fn(ReplyTo) -> ShardMsg) -> Vec<Reply> {
        let all: Vec<usize> = (0..self.shards()).collect();
        self.ask_some(&all, make).await
    }

    /// Asks each of `shards` (ascending, distinct) and waits for all
    /// answers, returned in the same order.
    pub async fn ask_some(
        &self,
        shards: &[usize],
        make: impl Fn(ReplyTo) -> ShardMsg,
    ) -> Vec<Reply> {
        let mut replies = self.ask_shards(shards, make).await;
        replies.sort_by_key(|(shard, _)| *shard);
        replies.into_iter().map(|(_, r)| r).collect()
    }

    /// Asks one shard (which may be this one) and waits for its answer.
    pub async fn ask(&self, to: usize, make: impl Fn(ReplyTo) -> ShardMsg) -> Reply {
        let mut replies = self.ask_shards(&[to], make).await;
        replies.pop().expect("one shard asked, one answer").1
    }

    /// Sends the request to each of `shards` and gathers `(shard, reply)`.
    /// This shard answers directly, without a trip through its own inbox.
    async fn ask_shards(
        &self,
        shards: &[usize],
        make: impl Fn(ReplyTo) -> ShardMsg,
    ) -> Vec<(usize, Reply)> {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let reply_to = ReplyTo {
            shard: self.id,
            req,
        };
        let remote = shards.len() - usize::from(shards.contains(&self.id));
        let gather = Rc::new(Gather {
            expected: remote,
            replies: RefCell::new(Vec::with_capacity(shards.len())),
            waker: Cell::new(None),
        });
        if remote > 0 {
            self.pending.borrow_mut().insert(req, gather.clone());
            for &shard in shards.iter().filter(|&&s| s != self.id) {
                self.on_shard(shard, make(reply_to));
            }
        }
        let local = shards.contains(&self.id).then(|| {
            self.answer(make(reply_to))
                .expect("every request has an answer")
        });
        // Removes the pending entry even if the waiting task is dropped.
        let _guard = PendingGuard { shard: self, req };
        poll_fn(|cx| {
            if gather.replies.borrow().len() >= gather.expected {
                Poll::Ready(())
            } else {
                gather.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        let mut replies = std::mem::take(&mut *gather.replies.borrow_mut());
        replies.extend(local.map(|r| (self.id, r)));
        replies
    }

    /// Handles one message from the mesh.
    pub fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Reply { req, from, reply } => {
                if let Some(gather) = self.pending.borrow().get(&req) {
                    gather.replies.borrow_mut().push((from, reply));
                    if gather.replies.borrow().len() >= gather.expected
                        && let Some(w) = gather.waker.take()
                    {
                        w.wake();
                    }
                }
            }
            ShardMsg::Deliver { target, packet } => {
                self.deliver(target, &packet);
            }
            ShardMsg::SendOne { target, job } => {
                crate::routing::router::deliver_one(self, target, job)
            }
            ShardMsg::PickSend {
                query,
                job,
                counted,
            } => crate::routing::router::pick_send(self, query, job, counted),
            ShardMsg::Invalid { to, error, extra } => self.invalid_to(to, error, extra),
            ShardMsg::Release { app, client, owner } => {
                let mut names = self.names.borrow_mut();
                let key = (app, client);
                if names.get(&key) == Some(&owner) {
                    names.remove(&key);
                }
            }
            ShardMsg::ClientEvent { packet } => self.notify_subscribers(&packet),
            ShardMsg::Shutdown => self.shutdown(),
            ShardMsg::Queue(msg) => crate::queue::owner::handle(self, msg),
            request => {
                let reply_to = match &request {
                    ShardMsg::Pick { reply_to, .. }
                    | ShardMsg::Broadcast { reply_to, .. }
                    | ShardMsg::Nodes { reply_to, .. }
                    | ShardMsg::Metrics { reply_to }
                    | ShardMsg::Claim { reply_to, .. }
                    | ShardMsg::QueueAsk { reply_to, .. }
                    | ShardMsg::Locate { reply_to, .. } => *reply_to,
                    _ => unreachable!("only requests reach here"),
                };
                if let Some(reply) = self.answer(request) {
                    self.on_shard(
                        reply_to.shard,
                        ShardMsg::Reply {
                            req: reply_to.req,
                            from: self.id,
                            reply,
                        },
                    );
                }
            }
        }
    }

    /// Answers a request locally.
    fn answer(&self, msg: ShardMsg) -> Option<Reply> {
        Some(match msg {
            ShardMsg::Pick {
                query,
                avg,
                describe,
                ..
            } => {
                let (pick, named) = self.pick_local(&query, avg, describe);
                Reply::Pick(pick, named)
            }
            ShardMsg::Broadcast { query, packet, .. } => {
                Reply::Delivered(self.broadcast_local(&query, &packet))
            }
            ShardMsg::Nodes { query, cap, .. } => Reply::Nodes(self.nodes_local(&query, cap)),
            ShardMsg::Metrics { .. } => {
                let (queues, queue_bytes) = self.queues.held();
                Reply::Metrics(Box::new(self.metrics.snapshot(
                    self.id,
                    Gauges {
                        connections: self.conns.borrow().len() as u64,
                        clients: self.clients.borrow().len() as u64,
                        mesh_depth: self.mesh.depth(self.id) as u64,
                        queues: queues as u64,
                        queue_bytes: queue_bytes as u64,
                    },
                    self.queues.rows(),
                )))
            }
            ShardMsg::Claim {
                app, client, owner, ..
            } => {
                let mut names = self.names.borrow_mut();
                let key = (app, client);
                let free = !names.contains_key(&key);
                if free {
                    names.insert(key, owner);
                }
                Reply::Claimed(free)
            }
            ShardMsg::QueueAsk { ask, .. } => Reply::Queue(crate::queue::owner::answer(self, ask)),
            ShardMsg::Locate {
                keys, restricted, ..
            } => Reply::Located(crate::routing::locate::answer_locate(
                self, &keys, restricted,
            )),
            _ => return None,
        })
    }

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
            let clients = self.clients.borrow();
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

    /// Delivers to one local client, if it is still the connection meant
    /// and can still receive. A client found closing is taken out of
    /// routing, so the caller's next pick does not choose it again.
    pub fn deliver(&self, target: ConnRef, packet: &Dispatch) -> bool {
        let conn = match self.clients.borrow().get(&target.client) {
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

    /// Delivers `packet` to every local match of `query`, encoding it once
    /// per encoding in use.
    fn broadcast_local(&self, query: &Query, packet: &Dispatch) -> u64 {
        let store = self.store.borrow();
        let clients = self.clients.borrow();
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
    fn nodes_local(&self, query: &Query, cap: NodesCap) -> NodeList {
        let store = self.store.borrow();
        let clients = self.clients.borrow();
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

    fn describe_slot(&self, store: &ClientStore, idx: ClientIdx) -> Option<Value> {
        let entry = store.get(idx)?;
        let clients = self.clients.borrow();
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

    /// Whether any local client matches `query` (queues: dead-letter
    /// checks). Stops at the first match.
    pub fn any_local(&self, query: &Query) -> bool {
        matching(&self.store.borrow(), query).next().is_some()
    }

    /// Sends invalid (op 3) to one local client, if it is still the
    /// connection meant.
    pub fn invalid_to(&self, target: ConnRef, error: &str, extra: Value) {
        if let Some(conn) = self.clients.borrow().get(&target.client)
            && conn.id == target.conn
        {
            conn.invalid(error, extra);
        }
    }

    fn notify_subscribers(&self, packet: &Dispatch) {
        let clients = self.clients.borrow();
        let mut frames = EncodedOnce::new(packet);
        for idx in self.subscribers.borrow().iter() {
            if let Some(conn) = clients.get(idx) {
                conn.push(op::DISPATCH, frames.get(conn.encoding));
            }
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
    }

    /// The shard that owns the registry entry of (app, client).
    pub fn name_owner(&self, app: &str, client: &str) -> usize {
        // A fixed-key hash: every shard must compute the same owner.
        let mut h = std::hash::DefaultHasher::new();
        (app, client).hash(&mut h);
        (h.finish() % self.shards() as u64) as usize
    }

    /// Claims (app, client) for `owner`; false if another connection has it.
    pub async fn claim_name(&self, app: &str, client: &str, owner: ConnId) -> bool {
        let to = self.name_owner(app, client);
        let reply = self
            .ask(to, |reply_to| ShardMsg::Claim {
                reply_to,
                app: app.into(),
                client: client.into(),
                owner,
            })
            .await;
        matches!(reply, Reply::Claimed(true))
    }

    pub fn release_name(&self, app: &str, client: &str, owner: ConnId) {
        self.on_shard(
            self.name_owner(app, client),
            ShardMsg::Release {
                app: app.into(),
                client: client.into(),
                owner,
            },
        );
    }

    /// Registers a new websocket connection.
    pub fn open_conn(&self, encoding: Encoding, peer: std::net::IpAddr) -> Rc<ConnHandle> {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let conn = Rc::new(ConnHandle::new(
            id,
            encoding,
            peer,
            self.metrics.clone(),
            self.flush.clone(),
            self.config.max_outbound_bytes,
            std::time::Instant::now(),
        ));
        self.conns.borrow_mut().insert(id, conn.clone());
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
        self.clients.borrow_mut().insert(idx, conn.clone());
        if client.subscribe {
            self.subscribers.borrow_mut().insert(idx);
        }
        crate::routing::locate::publish(self);
        idx
    }

    /// Takes a client out of routing (its connection is closing or closed):
    /// its metadata and index entries go, and its connection no longer
    /// names the slot, which a newer client may reuse.
    fn unroute(&self, idx: ClientIdx) {
        let Some(conn) = self.clients.borrow_mut().remove(&idx) else {
            return;
        };
        conn.set_client(None);
        self.subscribers.borrow_mut().swap_remove(&idx);
        self.store.borrow_mut().remove(idx);
        crate::routing::locate::publish(self);
    }

    /// Forgets a connection, and its client if it still has one.
    pub fn close_conn(&self, conn: &ConnHandle) {
        self.conns.borrow_mut().remove(&conn.id);
        if let Some(idx) = conn.client() {
            self.unroute(idx);
        }
    }

    /// Closes every connection whose last heartbeat is older than the
    /// timeout (contract §8). Runs on the shard's reaper timer.
    pub fn reap(&self, now: std::time::Instant) {
        let timeout = self.config.heartbeat_timeout();
        for conn in self.conns.borrow().values() {
            if conn.abort_if_stuck(now) {
                continue;
            }
            if !conn.is_closing() && now.duration_since(conn.last_heartbeat()) > timeout {
                conn.fail(protocol::errors::HEARTBEAT_TOO_LONG, Value::Null);
            }
        }
    }

    fn shutdown(&self) {
        self.shutting_down.set(true);
        for conn in self.conns.borrow().values() {
            conn.goodbye(protocol::errors::SHUTDOWN);
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.borrow().len()
    }
}

struct PendingGuard<'a> {
    shard: &'a Shard,
    req: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shard.pending.borrow_mut().remove(&self.req);
    }
}

/// A dispatch packet encoded at most once per encoding.
struct EncodedOnce<'a> {
    packet: &'a Dispatch,
    frames: [Option<Bytes>; 3],
    ts: i64,
}

impl<'a> EncodedOnce<'a> {
    fn new(packet: &'a Dispatch) -> Self {
        EncodedOnce {
            packet,
            frames: [None, None, None],
            ts: now_ms(),
        }
    }

    fn get(&mut self, encoding: Encoding) -> Bytes {
        let slot = match encoding {
            Encoding::Json => &mut self.frames[0],
            Encoding::Msgpack => &mut self.frames[1],
            Encoding::Etf => &mut self.frames[2],
        };
        slot.get_or_insert_with(|| {
            protocol::encode(
                encoding,
                op::DISPATCH,
                Some(self.packet.t),
                &self.packet.d,
                self.ts,
            )
        })
        .clone()
    }
}

/// Encodes a dispatch for one recipient.
pub fn encode_dispatch(encoding: Encoding, packet: &Dispatch) -> Bytes {
    protocol::encode(encoding, op::DISPATCH, Some(packet.t), &packet.d, now_ms())
}
