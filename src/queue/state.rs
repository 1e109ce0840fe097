//! One queue as a deterministic state machine: messages and credits go in
//! together with the current time, deliveries and questions come out. No
//! I/O, no clock; the shard layer ([`super::owner`]) performs the actions.
//!
//! Every message is in exactly one of four places: `pending` (waiting for a
//! matching consumer, in id order, which is enqueue order), `inflight`
//! (delivered, not yet acked, with a deadline), `dead` (no connected client
//! matches its target; back to `pending` after `dlq_time`), or gone (acked).
//!
//! The invariant that makes matching cheap: after every operation, no
//! pending message matches any waiting credit. So a new message only has to
//! be compared with the waiting credits, a new credit only with the pending
//! messages, and nothing else needs rescanning.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::msg::Who;
use crate::metadata::Metadata;
use crate::query::Query;
use crate::shard::Dispatch;

/// A message id, unique for the life of the data directory.
pub type MsgId = u64;

/// An enqueued message: immutable once created, shared by every delivery.
#[derive(Debug)]
pub struct Message {
    pub id: MsgId,
    pub target: Arc<Query>,
    /// The QUEUE dispatch its consumer receives, built once.
    pub packet: Arc<Dispatch>,
    /// What it counts against the byte limits: [`footprint`].
    pub bytes: usize,
}

/// What a held message costs beyond its JSON: the message, dispatch and
/// query allocations, its entries in the queue's maps, its id. An estimate
/// (the JSON values themselves take more memory than their text), so the
/// byte limits are in the same unit as message sizes users think in.
pub const MESSAGE_OVERHEAD: usize = 256;

/// The bytes one message counts against `--max-queue-bytes` and
/// `--max-total-queue-bytes`: its dispatch `d` as JSON (nonce, payload,
/// queue name and id), its target as JSON, and [`MESSAGE_OVERHEAD`].
/// Computed the same way when queued and when recovered from the log.
pub fn footprint(d: &serde_json::Value, target: &serde_json::Value) -> usize {
    crate::metadata::json_len(d) + crate::metadata::json_len(target) + MESSAGE_OVERHEAD
}

/// What the owner knows of a consumer: enough to evaluate targets. The
/// consumer's shard sends a fresh one when the client's metadata changes.
#[derive(Debug)]
pub struct Consumer {
    pub conn: Who,
    pub app: Arc<str>,
    pub restricted: bool,
    pub metadata: Arc<Metadata>,
}

/// Something the caller must do.
#[derive(Debug)]
pub enum Action {
    /// Send `msg` to the consumer `to` (it used one credit).
    Deliver { to: Who, msg: Arc<Message> },
    /// Find out whether any connected client matches the target of message
    /// `id`, then call [`Queue::checked`] with the counts.
    Check { id: MsgId, target: Arc<Query> },
    /// The delivery of `id` to `from` timed out and was taken back: tell
    /// the consumer's shard it no longer holds it. Always comes before a
    /// [`Action::Deliver`] of the same message in the same batch.
    Revoke { from: Who, id: MsgId },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum AckError {
    /// No message with this id is delivered and unacked.
    Unknown,
    /// The message is delivered to another client.
    NotYours,
}

/// Per-queue counters (`GET /api/v1/queues`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub enqueued: u64,
    pub delivered: u64,
    pub acked: u64,
    /// Deliveries that came back (ack timeout or consumer gone).
    pub redelivered: u64,
    /// Times a message went to the dead-letter list.
    pub dead_lettered: u64,
}

#[derive(Debug)]
struct Pending {
    msg: Arc<Message>,
    /// An `optional` target that no connected client matches strictly:
    /// matched without its ops (contract §5 `optional`).
    relaxed: bool,
}

#[derive(Debug)]
struct InFlight {
    msg: Arc<Message>,
    relaxed: bool,
    consumer: Who,
    deadline: Instant,
}

#[derive(Debug)]
struct Dead {
    msg: Arc<Message>,
}

#[derive(Debug)]
pub struct Queue {
    ack_timeout: Duration,
    dlq_time: Duration,
    pending: BTreeMap<MsgId, Pending>,
    /// One entry per credit, oldest request first.
    waiting: VecDeque<Who>,
    /// The snapshot of every consumer with at least one waiting credit.
    consumers: HashMap<Who, Arc<Consumer>>,
    inflight: HashMap<MsgId, InFlight>,
    timeouts: BTreeSet<(Instant, MsgId)>,
    dead: BTreeMap<MsgId, Dead>,
    returns: BTreeSet<(Instant, MsgId)>,
    /// The footprint of every message held (pending, in flight, dead).
    bytes: usize,
    stats: Stats,
}

/// Does `target` accept this consumer? `relaxed` drops the ops.
pub fn accepts(target: &Query, consumer: &Consumer, relaxed: bool) -> bool {
    if target
        .application
        .as_deref()
        .is_some_and(|app| app != &*consumer.app)
    {
        return false;
    }
    if consumer.restricted && !target.restricted {
        return false;
    }
    relaxed || target.matches(&consumer.metadata)
}

impl Queue {
    pub fn new(ack_timeout: Duration, dlq_time: Duration) -> Queue {
        Queue {
            ack_timeout,
            dlq_time,
            pending: BTreeMap::new(),
            waiting: VecDeque::new(),
            consumers: HashMap::new(),
            inflight: HashMap::new(),
            timeouts: BTreeSet::new(),
            dead: BTreeMap::new(),
            returns: BTreeSet::new(),
            bytes: 0,
            stats: Stats::default(),
        }
    }

    /// Messages held: pending, in flight and dead-lettered (what the length
    /// limit counts).
    pub fn len(&self) -> usize {
        self.pending.len() + self.inflight.len() + self.dead.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held: the sum of [`Message::bytes`] of every message held
    /// (what `--max-queue-bytes` counts).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn depth(&self) -> usize {
        self.pending.len()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Waiting credits.
    pub fn credits(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing held (pending, in flight or dead-lettered) and nobody
    /// waiting (so no timer is set either): forgetting the queue loses
    /// nothing but its counters.
    pub fn is_idle(&self) -> bool {
        self.is_empty() && self.waiting.is_empty()
    }

    /// Appends a new message (QUEUE).
    pub fn push(&mut self, msg: Arc<Message>, now: Instant, out: &mut Vec<Action>) {
        self.stats.enqueued += 1;
        self.bytes += msg.bytes;
        self.make_pending(msg, false, now, out);
    }

    /// Puts back a message recovered from the log, without counting it as
    /// enqueued again.
    /// No dead-letter check: right after a restart its consumers may not
    /// have reconnected yet.
    pub fn restore(&mut self, msg: Arc<Message>, now: Instant, out: &mut Vec<Action>) {
        let start = out.len();
        self.bytes += msg.bytes;
        self.make_pending(msg, false, now, out);
        if let Some(Action::Check { .. }) = out.get(start) {
            out.truncate(start);
        }
    }

    /// One more credit for `consumer` (QUEUE_REQUEST).
    pub fn request(&mut self, consumer: Arc<Consumer>, now: Instant, out: &mut Vec<Action>) {
        let conn = consumer.conn;
        // A newer snapshot may let its older credits match too.
        if self
            .consumers
            .get(&conn)
            .is_some_and(|c| !Arc::ptr_eq(c, &consumer))
        {
            self.update(consumer.clone(), now, out);
        }
        self.consumers.insert(conn, consumer);
        if !self.serve_credit(conn, now, out) {
            self.waiting.push_back(conn);
        } else if !self.waiting.contains(&conn) {
            self.consumers.remove(&conn);
        }
    }

    /// Withdraws every waiting credit of `conn` (QUEUE_REQUEST_CANCEL).
    /// Messages already delivered to it stay in flight.
    pub fn cancel(&mut self, conn: Who) {
        self.waiting.retain(|c| *c != conn);
        self.consumers.remove(&conn);
    }

    /// The consumer's metadata changed: its waiting credits may now match
    /// pending messages.
    pub fn update(&mut self, consumer: Arc<Consumer>, now: Instant, out: &mut Vec<Action>) {
        let conn = consumer.conn;
        if !self.consumers.contains_key(&conn) {
            return;
        }
        self.consumers.insert(conn, consumer);
        // Serve its credits in their places in line: a credit that finds a
        // message leaves the line, the others keep their position.
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i] == conn && self.serve_credit(conn, now, out) {
                self.waiting.remove(i);
            } else {
                i += 1;
            }
        }
        if !self.waiting.contains(&conn) {
            self.consumers.remove(&conn);
        }
    }

    /// The consumer disconnected: its credits vanish and what it had in
    /// flight is redelivered at once.
    pub fn gone(&mut self, conn: Who, now: Instant, out: &mut Vec<Action>) {
        self.cancel(conn);
        let mine: Vec<MsgId> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.consumer == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in mine {
            self.redeliver(id, false, now, out);
        }
    }

    /// This node no longer owns the queue (see `super::cluster`): every
    /// waiting credit is withdrawn, and returned as (consumer, credits) so
    /// that their clients can ask the owner instead. Messages in flight
    /// stay until acked or taken back.
    pub fn withdraw_credits(&mut self) -> Vec<(Who, u32)> {
        let mut credits: Vec<(Who, u32)> = Vec::new();
        for conn in self.waiting.drain(..) {
            match credits.iter_mut().find(|(c, _)| *c == conn) {
                Some((_, n)) => *n += 1,
                None => credits.push((conn, 1)),
            }
        }
        self.consumers.clear();
        credits
    }

    /// The messages another node may take over: pending and dead-lettered
    /// ones (not those in flight), oldest first, at most `max`.
    pub fn movable(&self, max: usize) -> Vec<Arc<Message>> {
        let mut out: Vec<Arc<Message>> = self
            .pending
            .values()
            .map(|p| p.msg.clone())
            .chain(self.dead.values().map(|d| d.msg.clone()))
            .collect();
        out.sort_by_key(|m| m.id);
        out.truncate(max);
        out
    }

    /// Removes a message another node has taken over, if it is still
    /// pending or dead-lettered here (one delivered meanwhile stays, to be
    /// acked or taken back as usual).
    pub fn moved(&mut self, id: MsgId) -> Option<Arc<Message>> {
        let msg = match self.pending.remove(&id) {
            Some(p) => p.msg,
            None => self.dead.remove(&id)?.msg,
        };
        self.returns.retain(|&(_, i)| i != id);
        self.bytes -= msg.bytes;
        Some(msg)
    }

    /// QUEUE_ACK from `conn`.
    pub fn ack(&mut self, conn: Who, id: MsgId) -> Result<Arc<Message>, AckError> {
        match self.inflight.get(&id) {
            None => Err(AckError::Unknown),
            Some(f) if f.consumer != conn => Err(AckError::NotYours),
            Some(_) => {
                let f = self.inflight.remove(&id).expect("just seen");
                self.timeouts.remove(&(f.deadline, id));
                self.stats.acked += 1;
                self.bytes -= f.msg.bytes;
                Ok(f.msg)
            }
        }
    }

    /// The answer to [`Action::Check`]: how many connected clients match the
    /// target strictly, and how many without its ops.
    pub fn checked(
        &mut self,
        id: MsgId,
        strict: u64,
        relaxed: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.pending.get(&id) else {
            return; // delivered meanwhile
        };
        if strict > 0 || p.relaxed {
            return;
        }
        if p.msg.target.optional && relaxed > 0 {
            let p = self.pending.remove(&id).expect("just seen");
            self.make_pending(p.msg, true, now, out);
            return;
        }
        let p = self.pending.remove(&id).expect("just seen");
        let until = now + self.dlq_time;
        self.stats.dead_lettered += 1;
        self.returns.insert((until, id));
        self.dead.insert(id, Dead { msg: p.msg });
    }

    /// Expires ack deadlines and dead-letter times up to `now`.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(&(at, id)) = self.timeouts.first() {
            if at > now {
                break;
            }
            self.redeliver(id, true, now, out);
        }
        while let Some(&(at, id)) = self.returns.first() {
            if at > now {
                break;
            }
            self.returns.pop_first();
            if let Some(d) = self.dead.remove(&id) {
                self.make_pending(d.msg, false, now, out);
            }
        }
    }

    /// The earliest time [`Queue::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let a = self.timeouts.first().map(|t| t.0);
        let b = self.returns.first().map(|t| t.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every message held, with where it is: for recovery tests and the
    /// invariant checks of the property tests.
    pub fn ids(&self) -> (Vec<MsgId>, Vec<MsgId>, Vec<MsgId>) {
        (
            self.pending.keys().copied().collect(),
            self.inflight.keys().copied().collect(),
            self.dead.keys().copied().collect(),
        )
    }

    /// Panics unless the matching invariant holds: every waiting credit has
    /// a snapshot, and no pending message matches any waiting credit.
    #[cfg(test)]
    pub fn check_invariant(&self) {
        for conn in &self.waiting {
            let c = self
                .consumers
                .get(conn)
                .expect("waiting credit without snapshot");
            for p in self.pending.values() {
                assert!(
                    !accepts(&p.msg.target, c, p.relaxed),
                    "pending message {} matches waiting {conn:?}",
                    p.msg.id
                );
            }
        }
        assert!(self.consumers.keys().all(|c| self.waiting.contains(c)));
    }

    /// The consumers with waiting credits, oldest first (with repeats).
    pub fn waiting(&self) -> impl Iterator<Item = Who> + '_ {
        self.waiting.iter().copied()
    }

    /// Takes an in-flight message back and puts it in line again; `revoke`
    /// tells its consumer (which is still connected) first.
    fn redeliver(&mut self, id: MsgId, revoke: bool, now: Instant, out: &mut Vec<Action>) {
        let Some(f) = self.inflight.remove(&id) else {
            return;
        };
        self.timeouts.remove(&(f.deadline, id));
        self.stats.redelivered += 1;
        if revoke {
            out.push(Action::Revoke {
                from: f.consumer,
                id,
            });
        }
        self.make_pending(f.msg, f.relaxed, now, out);
    }

    /// Puts `msg` in line (in its id's place) and hands it to the
    /// longest-waiting matching credit, if any; otherwise asks whether
    /// anyone connected could ever take it.
    fn make_pending(
        &mut self,
        msg: Arc<Message>,
        relaxed: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let found = self.waiting.iter().position(|conn| {
            self.consumers
                .get(conn)
                .is_some_and(|c| accepts(&msg.target, c, relaxed))
        });
        match found {
            Some(i) => {
                let conn = self.waiting.remove(i).expect("position is in range");
                if !self.waiting.contains(&conn) {
                    self.consumers.remove(&conn);
                }
                self.deliver(msg, relaxed, conn, now, out);
            }
            None => {
                let id = msg.id;
                if !relaxed {
                    out.push(Action::Check {
                        id,
                        target: msg.target.clone(),
                    });
                }
                self.pending.insert(id, Pending { msg, relaxed });
            }
        }
    }

    /// Uses one credit of `conn` on the oldest pending message it matches.
    fn serve_credit(&mut self, conn: Who, now: Instant, out: &mut Vec<Action>) -> bool {
        let Some(consumer) = self.consumers.get(&conn) else {
            return false;
        };
        let found = self
            .pending
            .iter()
            .find(|(_, p)| accepts(&p.msg.target, consumer, p.relaxed))
            .map(|(id, _)| *id);
        let Some(id) = found else {
            return false;
        };
        let p = self.pending.remove(&id).expect("just found");
        self.deliver(p.msg, p.relaxed, conn, now, out);
        true
    }

    fn deliver(
        &mut self,
        msg: Arc<Message>,
        relaxed: bool,
        conn: Who,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let deadline = now + self.ack_timeout;
        self.timeouts.insert((deadline, msg.id));
        self.stats.delivered += 1;
        out.push(Action::Deliver {
            to: conn,
            msg: msg.clone(),
        });
        self.inflight.insert(
            msg.id,
            InFlight {
                msg,
                relaxed,
                consumer: conn,
                deadline,
            },
        );
    }
}
