//! The queue side of one shard: the queues it owns (their state machines,
//! ids and log) and, for its own clients, the credits they hold on queues
//! anywhere. Mesh messages arrive in [`handle`] and [`answer`]; timers,
//! dead-letter checks and forgetting idle queues run in [`run`], one task
//! per shard.
//!
//! # Idle queues
//!
//! A queue is created by its first QUEUE or QUEUE_REQUEST and forgotten
//! (state, `GET /api/v1/queues` row, `/metrics` series) once it has been
//! idle, with nothing pending, in flight or dead-lettered and nobody
//! waiting, for the longer of `--ack-timeout` and `--dlq-time`, and every
//! log record about it is written. The idle period keeps a drained
//! queue's counters visible for a while (a queue emptied between two
//! scrapes still shows what it did) and spares a queue that empties and
//! fills again at once from being dropped and rebuilt per message; the
//! log condition makes sure that what a restart would recover of a
//! forgotten queue is nothing (its acks are on disk). Messages sent to a
//! forgotten name simply create the queue afresh (counters from zero).
//!
//! # Limits
//!
//! What clients make the owner hold is bounded: messages per queue
//! (`--max-queue-length`), bytes per queue (`--max-queue-bytes`), bytes
//! and live queues per server (`--max-total-queue-bytes`, `--max-queues`,
//! counted in the shared [`Budget`]). A QUEUE past any of them is refused
//! before anything is logged, queued or created. A QUEUE_REQUEST creates
//! its queue too (its waiting credit keeps the queue alive), so it counts
//! against `--max-queues` the same way; refused, its credit is taken back
//! on the client's shard. Recovery restores every confirmed message
//! whatever the limits say.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::budget::Budget;
use super::client::{AskAgain, ClientQueues};
use super::cluster;
use super::errors;
use super::msg::{Confirm, Origin, QueueAsk, QueueMsg, QueueReply, Who};
use super::state::{AckError, Action, Consumer, Message, MsgId, Queue, footprint};
use super::wal::{AppendError, Record, Wal};
use crate::cluster::NodeKey;
use crate::cluster::frame::QueueFrame;
use crate::config::Config;
use crate::metadata::ClientIdx;
use crate::metrics::Limit;
use crate::query::Query;
use crate::shard::{ConnRef, Dispatch, Reply, Shard, ShardMsg};

/// The shard that owns queue `name`. A fixed-key hash: every shard computes
/// the same owner.
pub fn owner(name: &str, shards: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    ("queue", name).hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// How often idle queues are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A queue this shard owns.
#[derive(Debug)]
struct Owned {
    queue: Queue,
    /// When it last changed.
    touched: Instant,
    /// The number of the last log record about it (0: none); it is not
    /// forgotten before that record is durable.
    last_record: u64,
}

/// One queue's figures ([`ShardQueues::rows`]), for the API and metrics.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub name: String,
    pub depth: usize,
    pub in_flight: usize,
    pub dead_letter: usize,
    pub waiting: usize,
    /// Bytes held (`--max-queue-bytes`).
    pub bytes: usize,
    pub stats: super::state::Stats,
}

/// A message waiting for a dead-letter check: (queue, id, target).
type Check = (Arc<str>, MsgId, Arc<Query>);

pub struct ShardQueues {
    shard: usize,
    ack_timeout: Duration,
    dlq_time: Duration,
    max_len: usize,
    max_bytes: usize,
    /// Live queues and bytes held, server-wide (shared by every shard).
    budget: Arc<Budget>,
    /// How long a queue stays idle before it is forgotten.
    idle_time: Duration,
    owned: RefCell<HashMap<Arc<str>, Owned>>,
    /// Queues that were idle after their last change: the candidates for
    /// forgetting (each is checked again before it goes).
    idle: RefCell<HashSet<Arc<str>>>,
    next_sweep: Cell<Instant>,
    next_id: Cell<u64>,
    /// Messages waiting for a "does anyone connected match?" answer.
    checks: RefCell<Vec<Check>>,
    woken: Cell<bool>,
    waker: Cell<Option<Waker>>,
    clients: RefCell<HashMap<ClientIdx, ClientQueues>>,
    pub(super) wal: RefCell<Option<Wal>>,
    /// Messages of queues another node owns, handed over to it and not yet
    /// taken (see `cluster`): when each was sent.
    pub(super) handing: RefCell<HashMap<(Arc<str>, MsgId), Instant>>,
    /// When to look for queues another node owns next.
    pub(super) next_move: Cell<Instant>,
    /// Frames for other nodes kept until this shard's link to them is up
    /// (see `cluster`).
    pub(super) outbox: RefCell<HashMap<NodeKey, VecDeque<QueueFrame>>>,
    /// Messages taken over from other nodes lately, by (node, queue, their
    /// id there): the number of the log record that stores each here, so
    /// that a message offered again (its `Moved` lost or late) is not
    /// queued twice. Bounded to [`TAKEN_KEPT`], oldest out first.
    taken: RefCell<(HashMap<Taken, u64>, VecDeque<Taken>)>,
}

/// A message taken over: the node it came from, its queue, its id there.
type Taken = (NodeKey, Arc<str>, MsgId);

/// Messages taken over that are remembered (see `ShardQueues::taken`).
const TAKEN_KEPT: usize = 1 << 16;

impl ShardQueues {
    pub fn new(shard: usize, config: &Config, budget: Arc<Budget>) -> ShardQueues {
        // Ids grow with the clock so they stay unique across restarts even
        // once every segment holding older ids is deleted; the low 8 bits
        // name the shard (at most 256).
        let base = (crate::shard::now_ms().max(0) as u64) << 12;
        ShardQueues {
            shard,
            ack_timeout: config.ack_timeout,
            dlq_time: config.dlq_time,
            max_len: config.max_queue_length,
            max_bytes: config.max_queue_bytes,
            budget,
            idle_time: config.ack_timeout.max(config.dlq_time),
            owned: RefCell::default(),
            idle: RefCell::default(),
            next_sweep: Cell::new(Instant::now()),
            next_id: Cell::new(base),
            checks: RefCell::default(),
            woken: Cell::new(false),
            waker: Cell::new(None),
            clients: RefCell::default(),
            wal: RefCell::new(None),
            handing: RefCell::default(),
            next_move: Cell::new(Instant::now()),
            outbox: RefCell::default(),
            taken: RefCell::default(),
        }
    }

    fn new_id(&self) -> MsgId {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        (n << 8) | self.shard as u64
    }

    /// Makes sure new ids are above every recovered one.
    pub(super) fn seen_id(&self, id: MsgId) {
        let n = (id >> 8) + 1;
        if n > self.next_id.get() {
            self.next_id.set(n);
        }
    }

    pub(super) fn notify(&self) {
        self.woken.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.woken.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// The queues `idx` (connection `conn`) holds credits on, for its
    /// `<client>` object.
    pub fn waiting_on(&self, idx: ClientIdx, conn: u64) -> Vec<String> {
        let clients = self.clients.borrow();
        clients
            .get(&idx)
            .filter(|c| c.conn == conn)
            .map_or_else(Vec::new, ClientQueues::waiting_on)
    }

    /// Whether the queue log has failed (see `wal`): QUEUE is refused.
    pub(super) fn log_failed(&self) -> bool {
        self.wal.borrow().as_ref().is_some_and(Wal::is_failed)
    }

    /// The figures of every queue this shard owns.
    pub fn rows(&self) -> Vec<QueueRow> {
        self.owned
            .borrow()
            .iter()
            .map(|(name, o)| (name, &o.queue))
            .map(|(name, q)| QueueRow {
                name: name.to_string(),
                depth: q.depth(),
                in_flight: q.in_flight(),
                dead_letter: q.dead_letters(),
                waiting: q.credits(),
                bytes: q.bytes(),
                stats: q.stats(),
            })
            .collect()
    }

    /// How many queues this shard owns and the bytes they hold (gauges).
    pub fn held(&self) -> (usize, usize) {
        let owned = self.owned.borrow();
        (owned.len(), owned.values().map(|o| o.queue.bytes()).sum())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.owned
            .borrow()
            .values()
            .filter_map(|o| o.queue.next_deadline())
            .min()
    }

    /// Forgets the queues idle for `idle_time` whose log records are all
    /// durable (`durable_through`: `None` without a log).
    fn forget_idle(&self, now: Instant, durable_through: Option<u64>) {
        let mut owned = self.owned.borrow_mut();
        self.idle.borrow_mut().retain(|name| {
            let Some(o) = owned.get(name) else {
                return false;
            };
            if !o.queue.is_idle() {
                return false; // busy again; listed anew when idle
            }
            let quiet = now.saturating_duration_since(o.touched) >= self.idle_time;
            let written = durable_through.is_none_or(|d| d >= o.last_record);
            if quiet && written {
                owned.remove(name);
                self.budget.remove_queue();
                return false;
            }
            true
        });
    }
}

// ---------------------------------------------------------------------------
// Client side: called by the session of a client on this shard.
// ---------------------------------------------------------------------------

/// The snapshot of a local client that owners match targets against.
fn snapshot(shard: &Shard, me: ConnRef) -> Option<Arc<Consumer>> {
    let mut clients = shard.queues.clients.borrow_mut();
    let c = clients.get_mut(&me.client).filter(|c| c.conn == me.conn);
    if let Some(s) = c.as_ref().and_then(|c| c.snapshot.clone()) {
        return Some(s);
    }
    let store = shard.store.borrow();
    let entry = store.get(me.client)?;
    let s = Arc::new(Consumer {
        conn: Who::here(me),
        app: entry.app_id.clone(),
        restricted: entry.restricted,
        metadata: Arc::new(entry.metadata.clone()),
    });
    if let Some(c) = c {
        c.snapshot = Some(s.clone());
    }
    Some(s)
}

/// Sends an owner-bound message to `queue`'s owner on node `node` (`None`:
/// this one). False when that node cannot be reached now.
fn to_node(shard: &Shard, node: Option<NodeKey>, queue: &str, msg: QueueMsg) -> bool {
    match node {
        None => {
            shard.on_shard(owner(queue, shard.shards()), ShardMsg::Queue(msg));
            true
        }
        Some(node) => cluster::to_owner_node(shard, node, msg),
    }
}

/// Sends a client-bound queue message (its `to` is `who.conn`) to the
/// client's shard, on this node or another.
fn to_client(shard: &Shard, who: Who, msg: QueueMsg) {
    match who.node {
        None => shard.on_shard(who.conn.shard, ShardMsg::Queue(msg)),
        Some(node) => cluster::to_client_node(shard, node, msg),
    }
}

/// QUEUE: checks the payload size limit here; the owner checks the others
/// (length, bytes per queue and per server, number of queues).
pub fn client_push(
    shard: &Shard,
    me: ConnRef,
    queue: Arc<str>,
    target: Query,
    target_json: Value,
    nonce: Value,
    payload: Value,
) -> Result<(), (String, Value)> {
    let size = crate::metadata::json_len(&payload);
    let max = shard.config.max_queue_message_size;
    if size > max {
        shard.metrics.limit_refused(Limit::QueueMessageSize);
        return Err((
            errors::MESSAGE_TOO_LARGE.into(),
            json!({"queue": &*queue, "size": size, "max_queue_message_size": max}),
        ));
    }
    let at = cluster::owner_node(shard, &queue);
    let extra = json!({"queue": &*queue, "nonce": nonce.clone()});
    let push = QueueMsg::Push {
        from: Origin::Client(Who::here(me)),
        queue: queue.clone(),
        target: Arc::new(target),
        target_json,
        nonce,
        payload,
    };
    match to_node(shard, at, &queue, push) {
        true => Ok(()),
        false => Err((errors::OWNER_UNREACHABLE.into(), extra)),
    }
}

/// QUEUE_REQUEST: one more credit. Credits per queue are bounded like the
/// queue itself, and a connection's credits on every queue together by
/// `--max-queue-requests`, so a client cannot grow owners' lines without
/// limit.
pub fn client_request(shard: &Shard, me: ConnRef, queue: Arc<str>) -> Result<(), (String, Value)> {
    let at = cluster::owner_node(shard, &queue);
    {
        let max_total = shard.config.max_queue_requests;
        let mut clients = shard.queues.clients.borrow_mut();
        let c = clients
            .entry(me.client)
            .or_insert_with(|| ClientQueues::new(me.conn));
        if c.conn != me.conn {
            *c = ClientQueues::new(me.conn);
        }
        if c.credits() >= max_total {
            shard.metrics.limit_refused(Limit::QueueRequests);
            return Err((
                errors::TOO_MANY_CREDITS.into(),
                json!({"queue": &*queue, "max_queue_requests": max_total}),
            ));
        }
        if !c.request(&queue, shard.queues.max_len, at) {
            shard.metrics.limit_refused(Limit::QueueRequests);
            return Err((
                errors::TOO_MANY_CREDITS.into(),
                json!({"queue": &*queue, "max_queue_length": shard.queues.max_len}),
            ));
        }
    }
    if let Some(consumer) = snapshot(shard, me) {
        let request = QueueMsg::Request {
            queue: queue.clone(),
            consumer,
        };
        if !to_node(shard, at, &queue, request) {
            with_client(shard, me, |c| c.refused(&queue));
            return Err((errors::OWNER_UNREACHABLE.into(), json!({"queue": &*queue})));
        }
    }
    Ok(())
}

/// The node that held `credits` of `me`'s credits on `queue` no longer
/// owns it: they are asked of the owner now.
fn rehome(shard: &Shard, me: ConnRef, queue: Arc<str>, credits: u32) {
    let at = cluster::owner_node(shard, &queue);
    let again = with_client(shard, me, |c| c.rehome(&queue, credits, at)).unwrap_or(0);
    ask_again(shard, me, &queue, at, again);
}

/// Sends `n` credits of `me` on `queue` to its owner `at` again.
fn ask_again(shard: &Shard, me: ConnRef, queue: &Arc<str>, at: Option<NodeKey>, n: u32) {
    if n == 0 {
        return;
    }
    let Some(consumer) = snapshot(shard, me) else {
        return;
    };
    for i in 0..n {
        let request = QueueMsg::Request {
            queue: queue.clone(),
            consumer: consumer.clone(),
        };
        if !to_node(shard, at, queue, request) {
            // Unreachable now (its link is not up yet, say): sent again at
            // the next settling.
            with_client(shard, me, |c| c.unsent(queue, n - i));
            tracing::debug!(queue = %queue, "queue owner unreachable; credits kept");
            return;
        }
    }
}

/// After the view of the cluster changed, and once a
/// [`cluster::MOVE_EVERY`]: every client of this shard whose credits sat
/// with a node that has gone, or could not be sent, asks the queue's owner
/// now.
pub fn settle_clients(shard: &Shard) {
    let view = shard.cluster.view();
    let alive = |node: NodeKey| view.live_member(node).is_some();
    let owner_of = |queue: &str| cluster::owner_node(shard, queue);
    let again: Vec<(ConnRef, Vec<AskAgain>)> = {
        let mut clients = shard.queues.clients.borrow_mut();
        clients
            .iter_mut()
            .map(|(&client, c)| {
                let me = ConnRef {
                    shard: shard.id,
                    client,
                    conn: c.conn,
                };
                (me, c.settle(alive, owner_of))
            })
            .filter(|(_, again)| !again.is_empty())
            .collect()
    };
    for (me, queues) in again {
        for (queue, at, n) in queues {
            ask_again(shard, me, &queue, at, n);
        }
    }
}

/// The client's queue bookkeeping, if `me` is still its connection.
fn with_client<R>(shard: &Shard, me: ConnRef, f: impl FnOnce(&mut ClientQueues) -> R) -> Option<R> {
    let mut clients = shard.queues.clients.borrow_mut();
    let c = clients.get_mut(&me.client).filter(|c| c.conn == me.conn)?;
    Some(f(c))
}

/// QUEUE_REQUEST_CANCEL: every credit on that queue. Without credits or
/// messages there, the owner holds nothing of this client to withdraw.
pub fn client_cancel(shard: &Shard, me: ConnRef, queue: Arc<str>) {
    if let Some(at) = with_client(shard, me, |c| c.cancel(&queue)).flatten() {
        let cancel = QueueMsg::Cancel {
            queue: queue.clone(),
            conn: Who::here(me),
        };
        to_node(shard, at, &queue, cancel);
    }
}

/// QUEUE_ACK: to the node that delivered the message (an id this client
/// does not hold goes to the owner, which answers that it is unknown).
pub fn client_ack(shard: &Shard, me: ConnRef, queue: Arc<str>, id: MsgId) {
    let at = with_client(shard, me, |c| c.acked(&queue, id))
        .flatten()
        .unwrap_or_else(|| cluster::owner_node(shard, &queue));
    let ack = QueueMsg::Ack {
        queue: queue.clone(),
        conn: Who::here(me),
        id,
    };
    to_node(shard, at, &queue, ack);
}

/// After a metadata update: owners holding credits of this client get the
/// new snapshot, so the update counts for messages queued from now on.
pub fn client_updated(shard: &Shard, me: ConnRef) {
    let Some(queues) = with_client(shard, me, |c| {
        c.snapshot = None;
        c.requesting()
    }) else {
        return;
    };
    if queues.is_empty() {
        return;
    }
    let Some(consumer) = snapshot(shard, me) else {
        return;
    };
    for ((node, _), queues) in by_owner(shard, queues) {
        let update = QueueMsg::Update {
            queues: queues.clone(),
            consumer: consumer.clone(),
        };
        to_node(shard, node, &queues[0], update);
    }
}

/// The connection ended: owners redeliver what it held and drop its
/// credits.
pub fn client_gone(shard: &Shard, me: ConnRef) {
    let queues: Vec<(Arc<str>, Option<NodeKey>)> = {
        let mut clients = shard.queues.clients.borrow_mut();
        match clients.get(&me.client) {
            Some(c) if c.conn == me.conn => {}
            _ => return,
        }
        let c = clients.remove(&me.client).expect("just seen");
        c.tracked()
    };
    for ((node, _), queues) in by_owner(shard, queues) {
        let gone = QueueMsg::Gone {
            queues: queues.clone(),
            conn: Who::here(me),
        };
        to_node(shard, node, &queues[0], gone);
    }
}

/// Queues grouped by where their messages go: (node, shard there), the
/// shard known only for this node (another node routes to its own).
fn by_owner(
    shard: &Shard,
    queues: Vec<(Arc<str>, Option<NodeKey>)>,
) -> HashMap<(Option<NodeKey>, usize), Vec<Arc<str>>> {
    let mut out: HashMap<_, Vec<Arc<str>>> = HashMap::new();
    for (q, node) in queues {
        let there = match node {
            None => owner(&q, shard.shards()),
            Some(_) => 0,
        };
        out.entry((node, there)).or_default().push(q);
    }
    out
}

// ---------------------------------------------------------------------------
// Owner side and delivery: mesh messages.
// ---------------------------------------------------------------------------

pub fn handle(shard: &Shard, msg: QueueMsg) {
    let now = Instant::now();
    match msg {
        QueueMsg::Push {
            from,
            queue,
            target,
            target_json,
            nonce,
            payload,
        } => push(shard, from, queue, target, target_json, nonce, payload, now),
        QueueMsg::Request { queue, consumer } => {
            if ensure_queue(shard, &queue, now, true) {
                with_existing(shard, &queue, now, |q, out| q.request(consumer, now, out));
            } else {
                shard.metrics.limit_refused(Limit::Queues);
                let who = consumer.conn;
                let extra =
                    json!({"queue": &*queue, "max_queues": shard.queues.budget.max_queues()});
                let refused = QueueMsg::Refused {
                    to: who.conn,
                    queue,
                    error: errors::TOO_MANY_QUEUES,
                    extra,
                };
                to_client(shard, who, refused);
            }
        }
        QueueMsg::Cancel { queue, conn } => {
            with_existing(shard, &queue, now, |q, _| q.cancel(conn));
            let cancelled = QueueMsg::Cancelled {
                to: conn.conn,
                queue,
            };
            to_client(shard, conn, cancelled);
        }
        QueueMsg::Ack { queue, conn, id } => {
            let result = with_existing(shard, &queue, now, |q, _| q.ack(conn, id))
                .unwrap_or(Err(AckError::Unknown));
            match result {
                Ok(msg) => {
                    shard.queues.budget.release(msg.bytes);
                    let n = log(shard, Record::Ack { id });
                    if let Some(o) = shard.queues.owned.borrow_mut().get_mut(&queue) {
                        o.last_record = o.last_record.max(n);
                    }
                }
                Err(e) => {
                    let error = match e {
                        AckError::Unknown => errors::UNKNOWN_MESSAGE,
                        AckError::NotYours => errors::NOT_YOUR_MESSAGE,
                    };
                    invalid(
                        shard,
                        conn,
                        error,
                        json!({"queue": &*queue, "id": id.to_string()}),
                    );
                }
            }
        }
        QueueMsg::Update { queues, consumer } => {
            for queue in queues {
                let c = consumer.clone();
                with_existing(shard, &queue, now, |q, out| q.update(c, now, out));
            }
        }
        QueueMsg::Gone { queues, conn } => {
            for queue in queues {
                with_existing(shard, &queue, now, |q, out| q.gone(conn, now, out));
            }
        }
        QueueMsg::Moved { queue, id, by } => moved(shard, queue, id, by, now),
        QueueMsg::Deliver {
            to,
            queue,
            id,
            packet,
            from,
        } => {
            if with_client(shard, to, |c| c.delivered(&queue, id, from)).is_some() {
                shard.deliver(to, &packet);
            }
        }
        QueueMsg::Rehome { to, queue, credits } => rehome(shard, to, queue, credits),
        QueueMsg::Revoked { to, queue, id } => {
            with_client(shard, to, |c| c.revoked(&queue, id));
        }
        QueueMsg::Cancelled { to, queue } => {
            with_client(shard, to, |c| c.cancelled(&queue));
        }
        QueueMsg::Refused {
            to,
            queue,
            error,
            extra,
        } => {
            with_client(shard, to, |c| c.refused(&queue));
            shard.invalid_to(to, error, extra);
        }
    }
}

pub fn answer(shard: &Shard, ask: QueueAsk) -> QueueReply {
    match ask {
        QueueAsk::Count(targets) => QueueReply::Counts(
            targets
                .iter()
                .map(|t| {
                    let strict = any_local(shard, t);
                    let relaxed = !strict
                        && t.optional
                        && any_local(
                            shard,
                            &Query {
                                ops: Vec::new(),
                                selector: None,
                                optional: false,
                                ..(**t).clone()
                            },
                        );
                    (u64::from(strict), u64::from(relaxed))
                })
                .collect(),
        ),
        QueueAsk::Stats => QueueReply::Stats(
            shard
                .queues
                .rows()
                .into_iter()
                .map(|q| {
                    json!({
                        "queue": q.name,
                        "shard": shard.id,
                        "depth": q.depth,
                        "in_flight": q.in_flight,
                        "dead_letter": q.dead_letter,
                        "waiting": q.waiting,
                        "enqueued": q.stats.enqueued,
                        "delivered": q.stats.delivered,
                        "acked": q.stats.acked,
                        "redelivered": q.stats.redelivered,
                        "dead_lettered": q.stats.dead_lettered,
                    })
                })
                .collect(),
            shard
                .queues
                .wal
                .borrow()
                .as_ref()
                .map_or(Value::Null, |w| w.stats(shard.id)),
        ),
    }
}

impl Origin {
    /// A QUEUE refused: the client hears why; a node handing over is not
    /// told (it offers the message again later).
    fn refused(self, shard: &Shard, error: &'static str, extra: Value) {
        match self {
            Origin::Client(who) => invalid(shard, who, error, extra),
            Origin::Handoff { id, .. } => {
                tracing::warn!(shard = shard.id, id, error, extra = %extra,
                    "a queue message handed over is refused here for now");
            }
        }
    }

    /// What to send once the message is durable.
    fn confirm(self, queue: &Arc<str>, id: MsgId, nonce: &Value) -> Confirm {
        match self {
            Origin::Client(who) => Confirm::Client(
                who,
                Arc::new(Dispatch {
                    t: "QUEUE_CONFIRM",
                    d: json!({"queue": &**queue, "id": id.to_string(), "nonce": nonce}),
                }),
            ),
            Origin::Handoff { node, id } => Confirm::Moved {
                node,
                queue: queue.clone(),
                id,
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn push(
    shard: &Shard,
    from: Origin,
    queue: Arc<str>,
    target: Arc<Query>,
    target_json: Value,
    nonce: Value,
    payload: Value,
    now: Instant,
) {
    let queues = &shard.queues;
    if let Origin::Handoff { node, id } = from {
        let seen = queues
            .taken
            .borrow()
            .0
            .get(&(node, queue.clone(), id))
            .copied();
        if let Some(record) = seen {
            // Offered again: held here already. Once it is durable the
            // node may drop its copy (until then the pending confirm will
            // say so).
            let durable = queues
                .wal
                .borrow()
                .as_ref()
                .is_none_or(|w| w.durable_through() >= record);
            if durable {
                cluster::moved_to_node(shard, node, queue, id);
            }
            return;
        }
    }
    let refuse = |limit: Limit, error: &'static str, extra: Value| {
        shard.metrics.limit_refused(limit);
        from.refused(shard, error, extra);
    };
    let (len, held) = queues
        .owned
        .borrow()
        .get(&queue)
        .map_or((0, 0), |o| (o.queue.len(), o.queue.bytes()));
    if len >= queues.max_len {
        return refuse(
            Limit::QueueLength,
            errors::QUEUE_FULL,
            json!({"queue": &*queue, "max_queue_length": queues.max_len}),
        );
    }
    if queues.log_failed() {
        from.refused(
            shard,
            errors::STORAGE_FAILED,
            json!({"queue": &*queue, "nonce": nonce, "error": LOG_FAILED}),
        );
        return;
    }
    let id = queues.new_id();
    let d = json!({
        "nonce": nonce.clone(),
        "payload": {"queue": &*queue, "id": id.to_string(), "payload": payload},
    });
    // Every byte limit is checked, and the server-wide bytes reserved,
    // before anything is logged or queued: a refused QUEUE leaves nothing.
    let bytes = footprint(&d, &target_json);
    if held + bytes > queues.max_bytes {
        return refuse(
            Limit::QueueBytes,
            errors::QUEUE_FULL,
            json!({"queue": &*queue, "nonce": nonce, "queue_bytes": held,
                   "message_bytes": bytes, "max_queue_bytes": queues.max_bytes}),
        );
    }
    if !queues.budget.try_reserve(bytes) {
        return refuse(
            Limit::TotalQueueBytes,
            errors::SERVER_QUEUES_FULL,
            json!({"queue": &*queue, "nonce": nonce, "message_bytes": bytes,
                   "max_total_queue_bytes": queues.budget.max_bytes()}),
        );
    }
    if !ensure_queue(shard, &queue, now, true) {
        queues.budget.release(bytes);
        return refuse(
            Limit::Queues,
            errors::TOO_MANY_QUEUES,
            json!({"queue": &*queue, "nonce": nonce, "max_queues": queues.budget.max_queues()}),
        );
    }
    let confirm = from.confirm(&queue, id, &nonce);
    let msg = Arc::new(Message {
        id,
        target,
        packet: Arc::new(Dispatch { t: "QUEUE", d }),
        bytes,
    });
    let durable = queues.wal.borrow().is_some();
    let mut record_no = 0;
    if durable {
        let record = Record::Enqueue {
            id,
            queue: queue.clone(),
            target: target_json,
            d: msg.packet.d.clone(),
        };
        let appended = queues
            .wal
            .borrow_mut()
            .as_mut()
            .map(|w| w.append(&record, Some(confirm)));
        let n = match appended {
            Some(Ok(n)) => n,
            Some(Err(AppendError::Encode(e))) => {
                // Not queued, so no id; nothing else in the log is touched.
                queues.budget.release(bytes);
                shard.metrics.queue_log_encode_error();
                tracing::warn!(shard = shard.id, queue_bytes = queue.len(), error = %e,
                    "QUEUE refused: the queue log cannot represent the message");
                from.refused(
                    shard,
                    errors::NOT_STORABLE,
                    json!({"queue": &*queue, "nonce": nonce, "error": e.to_string()}),
                );
                return;
            }
            Some(Err(AppendError::Failed)) | None => {
                // Refused by the log (checked above, so not expected): not
                // queued, so no id. A queue made for it stays idle and is
                // forgotten like any other.
                queues.budget.release(bytes);
                from.refused(
                    shard,
                    errors::STORAGE_FAILED,
                    json!({"queue": &*queue, "nonce": nonce, "error": LOG_FAILED}),
                );
                return;
            }
        };
        record_no = n;
    } else {
        confirmed(shard, confirm);
    }
    with_existing(shard, &queue, now, |q, out| q.push(msg, now, out));
    if let Some(o) = queues.owned.borrow_mut().get_mut(&queue) {
        o.last_record = o.last_record.max(record_no);
    }
    if let Origin::Handoff { node, id } = from {
        let mut taken = queues.taken.borrow_mut();
        let key = (node, queue, id);
        taken.0.insert(key.clone(), record_no);
        taken.1.push_back(key);
        if taken.1.len() > TAKEN_KEPT
            && let Some(old) = taken.1.pop_front()
        {
            taken.0.remove(&old);
        }
    }
}

/// The `error` in `extra_info` of a QUEUE refused because the log is
/// failed.
const LOG_FAILED: &str = "the queue log cannot be written; new messages are refused until it can";

/// Restores a message recovered from the log (at start, before clients).
pub(super) fn restore(shard: &Shard, queue: Arc<str>, msg: Arc<Message>) {
    shard.queues.seen_id(msg.id);
    let now = Instant::now();
    // Confirmed before the restart: restored whatever the limits say.
    shard.queues.budget.reserve(msg.bytes);
    ensure_queue(shard, &queue, now, false);
    with_existing(shard, &queue, now, |q, out| q.restore(msg, now, out));
}

/// Whether any local client matches `query` (the dead-letter check).
/// Stops at the first match.
fn any_local(shard: &Shard, query: &Query) -> bool {
    crate::routing::matching(&shard.store.borrow(), query)
        .next()
        .is_some()
}

fn invalid(shard: &Shard, to: Who, error: &'static str, extra: Value) {
    match to.node {
        None => shard.on_shard(
            to.conn.shard,
            ShardMsg::Invalid {
                to: to.conn,
                error,
                extra,
            },
        ),
        Some(node) => cluster::invalid_to_node(shard, node, to.conn, error, extra),
    }
}

/// A QUEUE's record is durable (or, without a log, queued): the producer
/// hears QUEUE_CONFIRM, or the node that handed the message over drops
/// its copy.
pub fn confirmed(shard: &Shard, confirm: Confirm) {
    match confirm {
        Confirm::Client(who, packet) => match who.node {
            None => shard.on_shard(
                who.conn.shard,
                ShardMsg::Deliver {
                    target: who.conn,
                    packet,
                },
            ),
            Some(node) => cluster::confirm_to_node(shard, node, who.conn, &packet),
        },
        Confirm::Moved { node, queue, id } => {
            shard.metrics.queue_taken_over();
            cluster::moved_to_node(shard, node, queue, id);
        }
    }
}

/// A QUEUE's record will not be written (the log failed): the producer
/// hears why; a node handing the message over keeps it and offers it
/// again later.
pub fn not_confirmed(shard: &Shard, confirm: Confirm, error: &str) {
    if let Confirm::Client(who, packet) = confirm {
        let mut extra = packet.d.clone();
        if let Some(o) = extra.as_object_mut() {
            o.insert("error".into(), Value::String(error.into()));
        }
        invalid(shard, who, errors::STORAGE_FAILED, extra);
    }
}

/// Node `by` holds message `id` of `queue` (handed over by this shard)
/// durably now: the copy here goes, and its ack is logged so that a
/// restart does not bring it back.
fn moved(shard: &Shard, queue: Arc<str>, id: MsgId, by: NodeKey, now: Instant) {
    shard
        .queues
        .handing
        .borrow_mut()
        .remove(&(queue.clone(), id));
    if let Some(Some(msg)) = with_existing(shard, &queue, now, |q, _| q.moved(id)) {
        shard.queues.budget.release(msg.bytes);
        let n = log(shard, Record::Ack { id });
        if let Some(o) = shard.queues.owned.borrow_mut().get_mut(&queue) {
            o.last_record = o.last_record.max(n);
        }
        shard.metrics.queue_handed_over();
        tracing::debug!(queue = %queue, id, node = %by.0, "queue message handed over");
    }
}

/// Appends a record without a confirm (an ack: never refused); returns its
/// number (0 without a log).
fn log(shard: &Shard, record: Record) -> u64 {
    shard
        .queues
        .wal
        .borrow_mut()
        .as_mut()
        .and_then(|w| w.append(&record, None).ok())
        .unwrap_or(0)
}

/// Makes sure this shard has queue `name`; a new one counts against
/// `--max-queues`. With `enforce`, a queue that would pass the limit is
/// not made (false); without (recovery), it is made anyway.
fn ensure_queue(shard: &Shard, name: &Arc<str>, now: Instant, enforce: bool) -> bool {
    let queues = &shard.queues;
    let mut owned = queues.owned.borrow_mut();
    if owned.contains_key(name) {
        return true;
    }
    if !enforce {
        queues.budget.add_queue();
    } else if !queues.budget.try_add_queue() {
        return false;
    }
    owned.insert(
        name.clone(),
        Owned {
            queue: Queue::new(queues.ack_timeout, queues.dlq_time),
            touched: now,
            last_record: 0,
        },
    );
    // Empty until its caller fills it: listed as idle so that it is
    // forgotten, and its place in the budget freed, should nothing ever
    // be put in it (the forgetting sweep checks again before it goes).
    queues.idle.borrow_mut().insert(name.clone());
    true
}

/// Applies `f` to queue `name` if this shard has it (an idle queue may have
/// been forgotten: there is nothing to update, cancel or redeliver then),
/// carries out what it asks for, and notes whether the queue is idle now.
fn with_existing<R>(
    shard: &Shard,
    name: &Arc<str>,
    now: Instant,
    f: impl FnOnce(&mut Queue, &mut Vec<Action>) -> R,
) -> Option<R> {
    let mut out = Vec::new();
    let result = {
        let mut owned = shard.queues.owned.borrow_mut();
        let o = owned.get_mut(name)?;
        let result = f(&mut o.queue, &mut out);
        o.touched = now;
        if o.queue.is_idle() {
            shard.queues.idle.borrow_mut().insert(name.clone());
        }
        result
    };
    perform(shard, name, out);
    Some(result)
}

fn perform(shard: &Shard, queue: &Arc<str>, actions: Vec<Action>) {
    let mut deadlines = false;
    for action in actions {
        match action {
            Action::Deliver { to, msg } => {
                // Not logged: nothing recovery restores depends on it (see
                // `wal`, Records).
                deadlines = true;
                let deliver = QueueMsg::Deliver {
                    to: to.conn,
                    queue: queue.clone(),
                    id: msg.id,
                    packet: msg.packet.clone(),
                    from: None,
                };
                to_client(shard, to, deliver);
            }
            Action::Revoke { from, id } => {
                let revoked = QueueMsg::Revoked {
                    to: from.conn,
                    queue: queue.clone(),
                    id,
                };
                to_client(shard, from, revoked);
            }
            Action::Check { id, target } => {
                shard
                    .queues
                    .checks
                    .borrow_mut()
                    .push((queue.clone(), id, target));
                deadlines = true;
            }
        }
    }
    if deadlines {
        // A new deadline or a check: the timer task recomputes its sleep.
        shard.queues.notify();
    }
}

// ---------------------------------------------------------------------------
// The shard's queue task: timers and dead-letter checks.
// ---------------------------------------------------------------------------

/// Runs for the life of the shard: expires ack deadlines and dead-letter
/// times, and asks every shard whether unmatched messages match anyone.
pub async fn run(shard: Rc<Shard>) {
    loop {
        let now = Instant::now();
        let wait = shard
            .queues
            .next_deadline()
            .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
            .min(Duration::from_secs(1))
            .min(match shard.queues.outbox.borrow().is_empty() {
                true => Duration::MAX,
                false => cluster::OUTBOX_EVERY,
            });
        if !wait.is_zero() {
            futures_lite::future::or(glommio::timer::sleep(wait), shard.queues.notified()).await;
        }
        let now = Instant::now();
        let due: Vec<Arc<str>> = shard
            .queues
            .owned
            .borrow()
            .iter()
            .filter(|(_, o)| o.queue.next_deadline().is_some_and(|d| d <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            with_existing(&shard, &name, now, |q, out| q.tick(now, out));
        }
        if now >= shard.queues.next_sweep.get() {
            shard.queues.next_sweep.set(now + SWEEP_EVERY);
            let durable_through = shard.queues.wal.borrow().as_ref().map(Wal::durable_through);
            shard.queues.forget_idle(now, durable_through);
        }
        cluster::flush_kept(&shard);
        move_unowned(&shard, now);
        let checks = std::mem::take(&mut *shard.queues.checks.borrow_mut());
        if !checks.is_empty() {
            glommio::spawn_local(check(shard.clone(), checks)).detach();
        }
        glommio::yield_if_needed().await;
    }
}

/// For each target: how many shards of this node have a client matching
/// it strictly, and without its ops (see [`QueueAsk::Count`]).
pub async fn local_counts(shard: &Shard, targets: &[Arc<Query>]) -> Vec<(u64, u64)> {
    let replies = shard
        .scatter(|reply_to| ShardMsg::QueueAsk {
            reply_to,
            ask: QueueAsk::Count(targets.to_vec()),
        })
        .await;
    let counts = replies.into_iter().filter_map(|reply| match reply {
        Reply::Queue(QueueReply::Counts(counts)) => Some(counts),
        _ => None,
    });
    sum_counts(targets.len(), counts)
}

fn sum_counts(n: usize, counts: impl Iterator<Item = Vec<(u64, u64)>>) -> Vec<(u64, u64)> {
    let mut sums = vec![(0u64, 0u64); n];
    for counts in counts {
        for (sum, (s, r)) in sums.iter_mut().zip(counts) {
            sum.0 += s;
            sum.1 += r;
        }
    }
    sums
}

/// Hands over what this shard holds of queues another node owns now (see
/// `cluster`): waiting credits go back to their clients, which ask the
/// owner; pending and dead-lettered messages are offered to the owner,
/// each dropped here once the owner holds it durably. Runs once a
/// [`cluster::MOVE_EVERY`], and at once after the cluster changes.
fn move_unowned(shard: &Shard, now: Instant) {
    if shard.cluster.links().is_none() || now < shard.queues.next_move.get() {
        return;
    }
    shard.queues.next_move.set(now + cluster::MOVE_EVERY);
    settle_clients(shard);
    let unowned: Vec<(Arc<str>, NodeKey)> = shard
        .queues
        .owned
        .borrow()
        .keys()
        .filter_map(|q| cluster::owner_node(shard, q).map(|node| (q.clone(), node)))
        .collect();
    let mut offered = HashSet::new();
    for (queue, node) in unowned {
        let credits = with_existing(shard, &queue, now, |q, _| q.withdraw_credits());
        for (who, credits) in credits.unwrap_or_default() {
            let rehome = QueueMsg::Rehome {
                to: who.conn,
                queue: queue.clone(),
                credits,
            };
            to_client(shard, who, rehome);
        }
        let movable = shard
            .queues
            .owned
            .borrow()
            .get(&queue)
            .map_or_else(Vec::new, |o| o.queue.movable(cluster::HANDOFF_BATCH));
        let mut handing = shard.queues.handing.borrow_mut();
        for msg in movable {
            let key = (queue.clone(), msg.id);
            offered.insert(key.clone());
            if handing
                .get(&key)
                .is_some_and(|&at| now.saturating_duration_since(at) < cluster::HANDOFF_RETRY)
            {
                continue;
            }
            if cluster::hand_off(shard, node, &queue, &msg) {
                handing.insert(key, now);
            }
        }
    }
    // Offers of messages delivered or acked here meanwhile are forgotten.
    shard
        .queues
        .handing
        .borrow_mut()
        .retain(|key, _| offered.contains(key));
}

/// Dead-letters the messages whose target matches no connected client (in
/// a cluster, on any node).
async fn check(shard: Rc<Shard>, checks: Vec<Check>) {
    let targets: Vec<Arc<Query>> = checks.iter().map(|c| c.2.clone()).collect();
    let (here, there) = futures_lite::future::zip(
        local_counts(&shard, &targets),
        cluster::counts_elsewhere(&shard, &targets),
    )
    .await;
    let sums = sum_counts(targets.len(), std::iter::once(here).chain(there));
    let now = Instant::now();
    for ((queue, id, _), (strict, relaxed)) in checks.into_iter().zip(sums) {
        with_existing(&shard, &queue, now, |q, out| {
            q.checked(id, strict, relaxed, now, out)
        });
    }
}

/// `GET /api/v1/queues`: every queue of every shard, by name, and each
/// shard's log counters.
pub async fn stats(shard: &Shard) -> Value {
    let mut queues = Vec::new();
    let mut logs = Vec::new();
    for reply in shard
        .scatter(|reply_to| ShardMsg::QueueAsk {
            reply_to,
            ask: QueueAsk::Stats,
        })
        .await
    {
        if let Reply::Queue(QueueReply::Stats(q, log)) = reply {
            queues.extend(q);
            if !log.is_null() {
                logs.push(log);
            }
        }
    }
    queues.sort_by(|a, b| a["queue"].as_str().cmp(&b["queue"].as_str()));
    json!({"queues": queues, "log": logs})
}
