//! The queue side of one shard: the queues it owns (their state machines,
//! ids and log) and, for its own clients, the credits they hold on queues
//! anywhere. Mesh messages arrive in [`handle`] and [`answer`]; timers and
//! dead-letter checks run in [`run`], one task per shard.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::errors;
use super::msg::{QueueAsk, QueueMsg, QueueReply};
use super::state::{AckError, Action, Consumer, Message, MsgId, Queue};
use super::wal::{Record, Wal};
use crate::config::Config;
use crate::metadata::ClientIdx;
use crate::query::Query;
use crate::shard::{ConnRef, Dispatch, Reply, Shard, ShardMsg};

/// The shard that owns queue `name`. A fixed-key hash: every shard computes
/// the same owner.
pub fn owner(name: &str, shards: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    ("queue", name).hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// A client's queue state on its own shard.
#[derive(Debug, Default)]
struct ClientQueues {
    /// The connection these credits belong to (slots are reused).
    conn: u64,
    /// Credits per queue; a queue with none left stays listed so that the
    /// owner hears when the client goes (it may still hold messages).
    credits: HashMap<Arc<str>, u32>,
    /// The snapshot last sent to owners; rebuilt after a metadata update.
    snapshot: Option<Arc<Consumer>>,
}

/// One queue's figures ([`ShardQueues::rows`]), for the API and metrics.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub name: String,
    pub depth: usize,
    pub in_flight: usize,
    pub dead_letter: usize,
    pub waiting: usize,
    pub stats: super::state::Stats,
}

/// A message waiting for a dead-letter check: (queue, id, target).
type Check = (Arc<str>, MsgId, Arc<Query>);

pub struct ShardQueues {
    shard: usize,
    ack_timeout: Duration,
    dlq_time: Duration,
    max_len: usize,
    owned: RefCell<HashMap<Arc<str>, Queue>>,
    next_id: Cell<u64>,
    /// Messages waiting for a "does anyone connected match?" answer.
    checks: RefCell<Vec<Check>>,
    woken: Cell<bool>,
    waker: Cell<Option<Waker>>,
    clients: RefCell<HashMap<ClientIdx, ClientQueues>>,
    pub(super) wal: RefCell<Option<Wal>>,
}

impl ShardQueues {
    pub fn new(shard: usize, config: &Config) -> ShardQueues {
        // Ids grow with the clock so they stay unique across restarts even
        // once every segment holding older ids is deleted; the low 8 bits
        // name the shard (at most 256).
        let base = (crate::shard::now_ms().max(0) as u64) << 12;
        ShardQueues {
            shard,
            ack_timeout: config.ack_timeout,
            dlq_time: config.dlq_time,
            max_len: config.max_queue_length,
            owned: RefCell::default(),
            next_id: Cell::new(base),
            checks: RefCell::default(),
            woken: Cell::new(false),
            waker: Cell::new(None),
            clients: RefCell::default(),
            wal: RefCell::new(None),
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

    fn notify(&self) {
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
        let Some(c) = clients.get(&idx).filter(|c| c.conn == conn) else {
            return Vec::new();
        };
        let mut names: Vec<String> = c
            .credits
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(q, _)| q.to_string())
            .collect();
        names.sort();
        names
    }

    /// The figures of every queue this shard owns.
    pub fn rows(&self) -> Vec<QueueRow> {
        self.owned
            .borrow()
            .iter()
            .map(|(name, q)| QueueRow {
                name: name.to_string(),
                depth: q.depth(),
                in_flight: q.in_flight(),
                dead_letter: q.dead_letters(),
                waiting: q.credits(),
                stats: q.stats(),
            })
            .collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.owned
            .borrow()
            .values()
            .filter_map(Queue::next_deadline)
            .min()
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
        conn: me,
        app: entry.app_id.clone(),
        restricted: entry.restricted,
        metadata: Arc::new(entry.metadata.clone()),
    });
    if let Some(c) = c {
        c.snapshot = Some(s.clone());
    }
    Some(s)
}

fn to_owner(shard: &Shard, queue: &str, msg: QueueMsg) {
    shard.on_shard(owner(queue, shard.shards()), ShardMsg::Queue(msg));
}

/// QUEUE: checks the size limit here, the length limit on the owner.
pub fn client_push(
    shard: &Shard,
    me: ConnRef,
    queue: Arc<str>,
    target: Query,
    target_json: Value,
    nonce: Value,
    payload: Value,
) -> Result<(), (String, Value)> {
    let size = serde_json::to_vec(&payload).map_or(0, |v| v.len());
    let max = shard.config.max_queue_message_size;
    if size > max {
        return Err((
            errors::MESSAGE_TOO_LARGE.into(),
            json!({"queue": &*queue, "size": size, "max_queue_message_size": max}),
        ));
    }
    to_owner(
        shard,
        &queue.clone(),
        QueueMsg::Push {
            from: me,
            queue,
            target: Arc::new(target),
            target_json,
            nonce,
            payload,
        },
    );
    Ok(())
}

/// QUEUE_REQUEST: one more credit. Credits per queue are bounded like the
/// queue itself, so a client cannot grow the owner's line without limit.
pub fn client_request(shard: &Shard, me: ConnRef, queue: Arc<str>) -> Result<(), (String, Value)> {
    {
        let mut clients = shard.queues.clients.borrow_mut();
        let c = clients.entry(me.client).or_default();
        if c.conn != me.conn {
            *c = ClientQueues {
                conn: me.conn,
                ..ClientQueues::default()
            };
        }
        let credits = c.credits.entry(queue.clone()).or_default();
        if *credits as usize >= shard.queues.max_len {
            return Err((
                errors::TOO_MANY_CREDITS.into(),
                json!({"queue": &*queue, "max_queue_length": shard.queues.max_len}),
            ));
        }
        *credits += 1;
    }
    if let Some(consumer) = snapshot(shard, me) {
        to_owner(shard, &queue.clone(), QueueMsg::Request { queue, consumer });
    }
    Ok(())
}

/// QUEUE_REQUEST_CANCEL: every credit on that queue.
pub fn client_cancel(shard: &Shard, me: ConnRef, queue: Arc<str>) {
    if let Some(c) = shard.queues.clients.borrow_mut().get_mut(&me.client)
        && c.conn == me.conn
        && let Some(n) = c.credits.get_mut(&queue)
    {
        *n = 0;
    }
    to_owner(shard, &queue.clone(), QueueMsg::Cancel { queue, conn: me });
}

pub fn client_ack(shard: &Shard, me: ConnRef, queue: Arc<str>, id: MsgId) {
    to_owner(
        shard,
        &queue.clone(),
        QueueMsg::Ack {
            queue,
            conn: me,
            id,
        },
    );
}

/// After a metadata update: owners holding credits of this client get the
/// new snapshot, so the update counts for messages queued from now on.
pub fn client_updated(shard: &Shard, me: ConnRef) {
    let queues: Vec<Arc<str>> = {
        let mut clients = shard.queues.clients.borrow_mut();
        let Some(c) = clients.get_mut(&me.client).filter(|c| c.conn == me.conn) else {
            return;
        };
        c.snapshot = None;
        c.credits
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(q, _)| q.clone())
            .collect()
    };
    if queues.is_empty() {
        return;
    }
    let Some(consumer) = snapshot(shard, me) else {
        return;
    };
    for (to, queues) in by_owner(shard, queues) {
        shard.on_shard(
            to,
            ShardMsg::Queue(QueueMsg::Update {
                queues,
                consumer: consumer.clone(),
            }),
        );
    }
}

/// The connection ended: owners redeliver what it held and drop its
/// credits.
pub fn client_gone(shard: &Shard, me: ConnRef) {
    let queues: Vec<Arc<str>> = {
        let mut clients = shard.queues.clients.borrow_mut();
        match clients.get(&me.client) {
            Some(c) if c.conn == me.conn => {}
            _ => return,
        }
        let c = clients.remove(&me.client).expect("just seen");
        c.credits.into_keys().collect()
    };
    for (to, queues) in by_owner(shard, queues) {
        shard.on_shard(to, ShardMsg::Queue(QueueMsg::Gone { queues, conn: me }));
    }
}

fn by_owner(shard: &Shard, queues: Vec<Arc<str>>) -> HashMap<usize, Vec<Arc<str>>> {
    let mut out: HashMap<usize, Vec<Arc<str>>> = HashMap::new();
    for q in queues {
        out.entry(owner(&q, shard.shards())).or_default().push(q);
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
            with_queue(shard, &queue, |q, out| q.request(consumer, now, out));
        }
        QueueMsg::Cancel { queue, conn } => {
            if let Some(q) = shard.queues.owned.borrow_mut().get_mut(&queue) {
                q.cancel(conn);
            }
        }
        QueueMsg::Ack { queue, conn, id } => {
            let result = shard
                .queues
                .owned
                .borrow_mut()
                .get_mut(&queue)
                .map_or(Err(AckError::Unknown), |q| q.ack(conn, id));
            match result {
                Ok(_) => log(shard, Record::Ack { id }),
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
                with_queue(shard, &queue, |q, out| q.update(c, now, out));
            }
        }
        QueueMsg::Gone { queues, conn } => {
            for queue in queues {
                with_queue(shard, &queue, |q, out| q.gone(conn, now, out));
            }
        }
        QueueMsg::Deliver { to, queue, packet } => {
            if let Some(c) = shard.queues.clients.borrow_mut().get_mut(&to.client)
                && c.conn == to.conn
                && let Some(n) = c.credits.get_mut(&queue)
            {
                *n = n.saturating_sub(1);
            }
            shard.deliver(to, &packet);
        }
        QueueMsg::Invalid { to, error, extra } => shard.invalid_to(to, error, extra),
    }
}

pub fn answer(shard: &Shard, ask: QueueAsk) -> QueueReply {
    match ask {
        QueueAsk::Count(targets) => QueueReply::Counts(
            targets
                .iter()
                .map(|t| {
                    let strict = shard.any_local(t);
                    let relaxed = !strict
                        && t.optional
                        && shard.any_local(&Query {
                            ops: Vec::new(),
                            selector: None,
                            optional: false,
                            ..(**t).clone()
                        });
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

#[allow(clippy::too_many_arguments)]
fn push(
    shard: &Shard,
    from: ConnRef,
    queue: Arc<str>,
    target: Arc<Query>,
    target_json: Value,
    nonce: Value,
    payload: Value,
    now: Instant,
) {
    let len = shard
        .queues
        .owned
        .borrow()
        .get(&queue)
        .map_or(0, Queue::len);
    if len >= shard.queues.max_len {
        invalid(
            shard,
            from,
            errors::QUEUE_FULL,
            json!({"queue": &*queue, "max_queue_length": shard.queues.max_len}),
        );
        return;
    }
    let id = shard.queues.new_id();
    let d = json!({
        "nonce": nonce.clone(),
        "payload": {"queue": &*queue, "id": id.to_string(), "payload": payload},
    });
    let confirm = Arc::new(Dispatch {
        t: "QUEUE_CONFIRM",
        d: json!({"queue": &*queue, "id": id.to_string(), "nonce": nonce}),
    });
    let msg = Arc::new(Message {
        id,
        target,
        packet: Arc::new(Dispatch { t: "QUEUE", d }),
    });
    let durable = shard.queues.wal.borrow().is_some();
    if durable {
        let record = Record::Enqueue {
            id,
            queue: queue.clone(),
            target: target_json,
            d: msg.packet.d.clone(),
        };
        let accepted = shard
            .queues
            .wal
            .borrow_mut()
            .as_mut()
            .map(|w| w.append(&record, Some((from, confirm.clone()))));
        if accepted != Some(true) {
            invalid(
                shard,
                from,
                errors::STORAGE_FAILED,
                json!({"queue": &*queue}),
            );
            return;
        }
    } else {
        shard.on_shard(
            from.shard,
            ShardMsg::Deliver {
                target: from,
                packet: confirm,
            },
        );
    }
    with_queue(shard, &queue, |q, out| q.push(msg, now, out));
}

/// Restores a message recovered from the log (at start, before clients).
pub(super) fn restore(shard: &Shard, queue: Arc<str>, msg: Arc<Message>) {
    shard.queues.seen_id(msg.id);
    let now = Instant::now();
    with_queue(shard, &queue, |q, out| q.restore(msg, now, out));
}

fn invalid(shard: &Shard, to: ConnRef, error: &'static str, extra: Value) {
    shard.on_shard(
        to.shard,
        ShardMsg::Queue(QueueMsg::Invalid { to, error, extra }),
    );
}

fn log(shard: &Shard, record: Record) {
    if let Some(w) = shard.queues.wal.borrow_mut().as_mut() {
        w.append(&record, None);
    }
}

/// Applies `f` to queue `name` (created on first use) and carries out what
/// it asks for.
fn with_queue(shard: &Shard, name: &Arc<str>, f: impl FnOnce(&mut Queue, &mut Vec<Action>)) {
    let mut out = Vec::new();
    {
        let mut owned = shard.queues.owned.borrow_mut();
        let q = owned
            .entry(name.clone())
            .or_insert_with(|| Queue::new(shard.queues.ack_timeout, shard.queues.dlq_time));
        f(q, &mut out);
    }
    perform(shard, name, out);
}

fn perform(shard: &Shard, queue: &Arc<str>, actions: Vec<Action>) {
    let mut deadlines = false;
    for action in actions {
        match action {
            Action::Deliver { to, msg } => {
                deadlines = true;
                log(shard, Record::Deliver { id: msg.id });
                shard.on_shard(
                    to.shard,
                    ShardMsg::Queue(QueueMsg::Deliver {
                        to,
                        queue: queue.clone(),
                        packet: msg.packet.clone(),
                    }),
                );
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
            .min(Duration::from_secs(1));
        if !wait.is_zero() {
            futures_lite::future::or(glommio::timer::sleep(wait), shard.queues.notified()).await;
        }
        let now = Instant::now();
        let due: Vec<Arc<str>> = shard
            .queues
            .owned
            .borrow()
            .iter()
            .filter(|(_, q)| q.next_deadline().is_some_and(|d| d <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            with_queue(&shard, &name, |q, out| q.tick(now, out));
        }
        let checks = std::mem::take(&mut *shard.queues.checks.borrow_mut());
        if !checks.is_empty() {
            glommio::spawn_local(check(shard.clone(), checks)).detach();
        }
        glommio::yield_if_needed().await;
    }
}

/// Dead-letters the messages whose target matches no connected client.
async fn check(shard: Rc<Shard>, checks: Vec<Check>) {
    let targets: Vec<Arc<Query>> = checks.iter().map(|c| c.2.clone()).collect();
    let replies = shard
        .scatter(|reply_to| ShardMsg::QueueAsk {
            reply_to,
            ask: QueueAsk::Count(targets.clone()),
        })
        .await;
    let mut sums = vec![(0u64, 0u64); checks.len()];
    for reply in replies {
        if let Reply::Queue(QueueReply::Counts(counts)) = reply {
            for (sum, (s, r)) in sums.iter_mut().zip(counts) {
                sum.0 += s;
                sum.1 += r;
            }
        }
    }
    let now = Instant::now();
    for ((queue, id, _), (strict, relaxed)) in checks.into_iter().zip(sums) {
        with_queue(&shard, &queue, |q, out| {
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
