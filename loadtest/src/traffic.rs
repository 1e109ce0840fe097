//! What an identified connection does until the run stops: heartbeat at the
//! server's interval, read every packet, and, for a sender, keep its window
//! of outstanding messages full until the plan's deadline.
//!
//! Receivers and senders run the same loop; a sender is a receiver with a
//! [`Sending`] state. Flow control is by counts: a sender may have at most
//! `window × fanout` deliveries outstanding, and every receiver that gets one
//! of its messages credits it back through the sender's [`SenderSlot`]. A
//! lost delivery therefore shrinks the window instead of stalling it, and
//! shows up as a loss in the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::clock;
use crate::dialect::{Encoder, Pick};
use crate::nats;
use crate::session::{Inbox, Session, Ws};
use crate::stop::Stop;
use crate::tally::Tally;
use crate::wire::{self, Inbound, Stamp};

/// What a scenario sends: each scenario module provides one. It chooses
/// whom each message is for; the [`Encoder`] writes it for the target.
pub trait Workload: Send + Sync {
    /// Whom the next message of sender `sender` is for.
    fn pick(&self, sender: u32, rng: &mut fastrand::Rng) -> Pick;
    /// Deliveries each message of `sender` should produce (0: it sends nothing).
    fn fanout(&self, sender: u32) -> u64;
}

/// Published to every sender at once when traffic starts.
pub struct Plan {
    pub workload: Box<dyn Workload>,
    pub encoder: Encoder,
    /// When sending started ([`clock::now_ns`]); the open-loop schedule counts from it.
    pub started_ns: u64,
    pub deadline: Instant,
    /// Closed loop: messages a sender may have outstanding.
    pub window: u64,
    /// Open loop: messages per second per sender.
    pub rate: Option<f64>,
}

/// The most messages one sender writes before it yields to read (an open-loop
/// sender far behind its schedule catches up in slices).
const MAX_BATCH: u64 = 1024;

/// The most frames a connection reads in a row without looking at its
/// timers and signals.
const DRAIN: usize = 64;

/// Where receivers credit deliveries back to one sender.
#[derive(Default)]
pub struct SenderSlot {
    resolved: AtomicU64,
    wake: Notify,
}

impl SenderSlot {
    fn resolve(&self, deliveries: u64) {
        self.resolved.fetch_add(deliveries, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// The churn scenario's shared state: which receivers are connected, and a
/// way to tell one to disconnect.
pub struct Churn {
    /// Indexed by receiver id: false while it is disconnected or reconnecting.
    pub up: Arc<Vec<AtomicBool>>,
    kicks: Vec<Notify>,
    /// Disconnects the churner asked for.
    pub kicked: AtomicU64,
    /// Kicked receivers that got to ready again.
    pub reconnected: AtomicU64,
    /// Kicked receivers whose reconnect failed (they stay away).
    pub failed: AtomicU64,
    /// Deliveries read while a kicked receiver was closing.
    pub delivered_while_closing: AtomicU64,
    /// Reconnect (close start to ready again), microseconds.
    pub reconnect_latency: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Churn {
    pub fn new(receivers: u32) -> Churn {
        Churn {
            up: Arc::new((0..receivers).map(|_| AtomicBool::new(false)).collect()),
            kicks: (0..receivers).map(|_| Notify::new()).collect(),
            kicked: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            delivered_while_closing: AtomicU64::new(0),
            reconnect_latency: std::sync::Mutex::new(crate::tally::histogram()),
        }
    }

    /// Marks receiver `id` down and tells it to disconnect; false when it
    /// already was down.
    pub fn kick(&self, id: u64) -> bool {
        let Some(up) = self.up.get(id as usize) else {
            return false;
        };
        if !up.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.kicked.fetch_add(1, Ordering::Relaxed);
        self.kicks[id as usize].notify_one();
        true
    }

    pub fn set_up(&self, id: u64) {
        if let Some(up) = self.up.get(id as usize) {
            up.store(true, Ordering::Release);
        }
    }
}

/// State all connection tasks share.
pub struct Shared {
    pub tally: Tally,
    pub slots: Vec<SenderSlot>,
    pub go: watch::Receiver<Option<Arc<Plan>>>,
    /// Senders that have stopped sending (deadline reached or connection lost).
    pub senders_done: AtomicU32,
    /// `--groups`: a receiver's group is `id % groups`.
    pub groups: u64,
    pub churn: Option<Churn>,
}

impl Shared {
    pub fn new(
        stripes: usize,
        senders: u32,
        groups: u32,
        churn: Option<Churn>,
        go: watch::Receiver<Option<Arc<Plan>>>,
    ) -> Shared {
        Shared {
            tally: Tally::new(stripes),
            slots: (0..senders).map(|_| SenderSlot::default()).collect(),
            go,
            senders_done: AtomicU32::new(0),
            groups: u64::from(groups.max(1)),
            churn,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Receiver `id` (its metadata `id`) of application index `app`.
    Receiver {
        id: u64,
        app: u32,
    },
    Sender {
        index: u32,
    },
}

/// How many more messages a sender may send now: the most `k` with
/// `(sent + k) × fanout ≤ resolved + window × fanout`.
pub fn may_send(sent: u64, resolved: u64, fanout: u64, window: u64) -> u64 {
    if fanout == 0 {
        return 0;
    }
    ((resolved + window * fanout) / fanout).saturating_sub(sent)
}

/// Open loop: how many messages are due `elapsed_ns` into the schedule at
/// `rate` per second (message k is due at k / rate), of which `sent` went.
pub fn due(elapsed_ns: u64, rate: f64, sent: u64) -> u64 {
    let due = (elapsed_ns as f64 * rate / 1e9).floor() as u64 + 1;
    due.saturating_sub(sent)
}

/// Open loop: when message `k` is due, in ns from the start.
pub fn scheduled_ns(k: u64, rate: f64) -> u64 {
    (k as f64 * 1e9 / rate) as u64
}

struct Sending {
    index: u32,
    plan: Option<Arc<Plan>>,
    fanout: u64,
    sent: u64,
    finished: bool,
    rng: fastrand::Rng,
}

impl Sending {
    fn new(index: u32) -> Sending {
        Sending {
            index,
            plan: None,
            fanout: 0,
            sent: 0,
            finished: false,
            rng: fastrand::Rng::new(),
        }
    }

    fn waiting(&self) -> bool {
        self.plan.is_none() && !self.finished
    }

    fn active(&self) -> Option<&Plan> {
        self.plan.as_deref().filter(|_| !self.finished)
    }

    fn start(&mut self, plan: Arc<Plan>, shared: &Shared) {
        self.fanout = plan.workload.fanout(self.index);
        self.plan = Some(plan);
        if self.fanout == 0 {
            self.finish(shared);
        }
    }

    fn finish(&mut self, shared: &Shared) {
        if !self.finished {
            self.finished = true;
            shared.senders_done.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Open loop: when the next message is due; closed loop: never (the
    /// window's wake-up says when).
    fn next_due(&self) -> Option<Instant> {
        let plan = self.active()?;
        let rate = plan.rate?;
        let at_ns = plan.started_ns + scheduled_ns(self.sent, rate);
        let now_ns = clock::now_ns();
        Some(Instant::now() + Duration::from_nanos(at_ns.saturating_sub(now_ns)))
    }

    /// Sends what the window (closed loop) or the schedule (open loop)
    /// allows, in one flush.
    async fn pump(&mut self, ws: &mut Ws, shared: &Shared) -> Result<(), String> {
        let Some(plan) = self.active() else {
            return Ok(());
        };
        if Instant::now() >= plan.deadline {
            self.finish(shared);
            return Ok(());
        }
        let plan = self.plan.clone().expect("active");
        let now_ns = clock::now_ns();
        let n = match plan.rate {
            Some(rate) => due(now_ns.saturating_sub(plan.started_ns), rate, self.sent),
            None => {
                let slot = &shared.slots[self.index as usize];
                may_send(
                    self.sent,
                    slot.resolved.load(Ordering::Acquire),
                    self.fanout,
                    plan.window,
                )
            }
        }
        .min(MAX_BATCH);
        if n == 0 {
            return Ok(());
        }
        for k in 0..n {
            // Open loop stamps the scheduled time, so time spent behind
            // schedule (in this tool or waiting on the server) is latency.
            let t = match plan.rate {
                Some(rate) => {
                    let at = plan.started_ns + scheduled_ns(self.sent + k, rate);
                    shared
                        .tally
                        .record_lag(self.index as usize, now_ns.saturating_sub(at) / 1000);
                    at
                }
                None => clock::now_ns(),
            };
            let pick = plan.workload.pick(self.index, &mut self.rng);
            ws.feed(plan.encoder.frame(pick, self.index, t))
                .await
                .map_err(|e| format!("websocket send: {e}"))?;
        }
        ws.flush()
            .await
            .map_err(|e| format!("websocket send: {e}"))?;
        self.sent += n;
        shared.tally.sent.fetch_add(n, Ordering::Relaxed);
        shared
            .tally
            .expected
            .fetch_add(n * self.fanout, Ordering::Relaxed);
        Ok(())
    }
}

/// Why the loop ended.
enum End {
    /// The run asked: close politely.
    Asked,
    /// The churner asked: close politely, then reconnect.
    Kicked,
    /// The server or the network ended it: count it.
    Lost(String),
}

/// How a connection's [`drive`] ended, for the caller that may reconnect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by the run, or lost: the connection task is over.
    Done,
    /// Disconnected by the churner: reconnect.
    Kicked,
}

/// The first heartbeat comes at a random point of the first interval so that
/// ten thousand connections opened within a second do not beat in unison.
pub(crate) fn heartbeat_timer(interval: Duration) -> tokio::time::Interval {
    let first = interval.mul_f64(0.25 + 0.75 * fastrand::f64());
    let mut timer = tokio::time::interval_at(Instant::now() + first, interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Runs one identified connection until `stop`, a churn kick, or until the
/// server ends it.
pub async fn drive(
    session: Session,
    role: Role,
    stripe: usize,
    shared: &Arc<Shared>,
    stop: &mut Stop,
) -> Exit {
    let Session {
        mut ws,
        keepalive,
        mut inbox,
    } = session;
    let mut beat = keepalive.as_ref().map(|k| heartbeat_timer(k.interval));
    let mut go = shared.go.clone();
    let mut sending = match role {
        Role::Sender { index } => Some(Sending::new(index)),
        Role::Receiver { .. } => None,
    };
    let kick = match (role, &shared.churn) {
        (Role::Receiver { id, .. }, Some(churn)) => churn.kicks.get(id as usize),
        _ => None,
    };
    let mut reader = Reader {
        role,
        stripe,
        shared,
        pong_due: false,
    };
    let end = loop {
        if let Some(s) = sending.as_mut() {
            if s.waiting() {
                let plan = go.borrow_and_update().clone();
                if let Some(plan) = plan {
                    s.start(plan, shared);
                }
            }
            if let Err(e) = s.pump(&mut ws, shared).await {
                break End::Lost(e);
            }
        }
        if reader.pong_due {
            reader.pong_due = false;
            if let Err(e) = ws
                .send(Message::binary(nats::PONG.as_bytes().to_vec()))
                .await
            {
                break End::Lost(format!("PONG send: {e}"));
            }
        }
        let waiting = sending.as_ref().is_some_and(Sending::waiting);
        let active = sending.as_ref().and_then(Sending::active);
        let open_loop = active.is_some_and(|p| p.rate.is_some());
        let wake_at = active.map(|p| {
            sending
                .as_ref()
                .and_then(Sending::next_due)
                .map_or(p.deadline, |d| d.min(p.deadline))
        });
        let wake = sending
            .as_ref()
            .filter(|_| active.is_some() && !open_loop)
            .map(|s| &shared.slots[s.index as usize].wake);
        tokio::select! {
            biased;
            _ = stop.wait() => break End::Asked,
            _ = notified(kick) => break End::Kicked,
            msg = ws.next() => {
                // Read whatever else has already arrived before going round
                // the select again: building and dropping its futures costs
                // more than handling a frame.
                let mut end = reader.message(msg, &mut inbox, sending.as_ref());
                for _ in 0..DRAIN {
                    if end.is_some() {
                        break;
                    }
                    let Some(msg) = ws.next().now_or_never() else { break };
                    end = reader.message(msg, &mut inbox, sending.as_ref());
                }
                if let Some(end) = end {
                    break end;
                }
            }
            _ = tick(beat.as_mut()) => {
                let packet = keepalive.as_ref().expect("timer only with keepalive").packet.clone();
                if let Err(e) = ws.send(Message::Text(packet)).await {
                    break End::Lost(format!("heartbeat send: {e}"));
                }
            }
            _ = go.changed(), if waiting => {}
            _ = notified(wake) => {}
            _ = sleep_until(wake_at) => {}
        }
    };
    if let Some(s) = sending.as_mut() {
        s.finish(shared);
    }
    match end {
        End::Asked | End::Kicked => {
            // Bounded: a server that never answers the close still lets the
            // run end. Deliveries that arrive before the server's close frame
            // still count (churn: they reached the client before it left).
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = ws.close(None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    let before = shared.tally.delivered.load(Ordering::Relaxed);
                    match msg {
                        Message::Text(t) => {
                            reader.frame(t.as_bytes(), &mut inbox, None);
                        }
                        Message::Binary(b) => {
                            reader.frame(&b, &mut inbox, None);
                        }
                        _ => {}
                    }
                    if let Some(churn) = &shared.churn {
                        let after = shared.tally.delivered.load(Ordering::Relaxed);
                        churn
                            .delivered_while_closing
                            .fetch_add(after.saturating_sub(before), Ordering::Relaxed);
                    }
                }
            })
            .await;
            if matches!(end, End::Kicked) {
                return Exit::Kicked;
            }
        }
        End::Lost(why) => {
            shared.tally.disconnects.fetch_add(1, Ordering::Relaxed);
            shared.tally.record_error(why);
        }
    }
    Exit::Done
}

/// Reads inbound frames of one connection and counts what they carry.
struct Reader<'a> {
    role: Role,
    stripe: usize,
    shared: &'a Shared,
    /// A NATS PING was read: answer it.
    pong_due: bool,
}

impl Reader<'_> {
    /// Handles one frame; returns `Some` when the server is ending the connection.
    /// Handles what the websocket gave: a frame, a close, an error or its end.
    fn message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        inbox: &mut Inbox,
        sending: Option<&Sending>,
    ) -> Option<End> {
        match msg {
            Some(Ok(Message::Text(text))) => self.frame(text.as_bytes(), inbox, sending),
            Some(Ok(Message::Binary(data))) => self.frame(&data, inbox, sending),
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or_else(
                    || "no close frame".to_string(),
                    |f| format!("code {} {:?}", f.code, f.reason.as_str()),
                );
                Some(End::Lost(format!("closed by the server ({why})")))
            }
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(End::Lost(format!("websocket: {e}"))),
            None => Some(End::Lost("connection closed".into())),
        }
    }

    fn frame(&mut self, data: &[u8], inbox: &mut Inbox, sending: Option<&Sending>) -> Option<End> {
        match inbox {
            Inbox::Singyeong => match std::str::from_utf8(data) {
                Ok(text) => self.packet(text, sending),
                Err(_) => {
                    self.shared
                        .tally
                        .record_error("binary frame from the server".into());
                    None
                }
            },
            Inbox::Nats(parser) => {
                let mut end = None;
                let fed = parser.feed(data, |event| match event {
                    nats::Event::Msg { payload } => {
                        match serde_json::from_slice::<Stamp>(payload) {
                            Ok(stamp) => self.delivery(stamp),
                            Err(_) => {
                                self.shared
                                    .tally
                                    .undecodable
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    nats::Event::Ping => self.pong_due = true,
                    nats::Event::Err(text) => {
                        // Every -ERR but a permissions violation closes the connection.
                        end = Some(End::Lost(format!("NATS -ERR {text:?}")));
                    }
                    nats::Event::Info | nats::Event::Pong | nats::Event::Ok => {}
                });
                if let Err(e) = fed {
                    return Some(End::Lost(format!("NATS stream: {e}")));
                }
                end
            }
        }
    }

    /// Counts one delivery: latency, and whether it reached a client it was for.
    fn delivery(&self, stamp: Stamp) {
        let (tally, shared) = (&self.shared.tally, self.shared);
        let latency_us = clock::now_ns().saturating_sub(stamp.t) / 1000;
        tally.record_latency(self.stripe, latency_us);
        tally.delivered.fetch_add(1, Ordering::Relaxed);
        let right = match self.role {
            Role::Receiver { id, app } => stamp.is_for(id, app, id % shared.groups),
            Role::Sender { .. } => false,
        };
        if !right {
            tally.misrouted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = shared.slots.get(stamp.s as usize) {
            slot.resolve(1);
        }
    }

    /// Handles one singyeong packet.
    fn packet(&self, text: &str, sending: Option<&Sending>) -> Option<End> {
        // Nearly every packet is a delivery: read it in one pass.
        if let Some(stamp) = wire::delivery(text) {
            self.delivery(stamp);
            return None;
        }
        let (tally, shared) = (&self.shared.tally, self.shared);
        let packet = match Inbound::parse(text) {
            Ok(p) => p,
            Err(e) => {
                tally.record_error(format!("undecodable packet: {e}"));
                return None;
            }
        };
        match packet.op {
            wire::OP_DISPATCH if matches!(packet.t.as_deref(), Some("SEND" | "BROADCAST")) => {
                match packet.stamp() {
                    Some(stamp) => self.delivery(stamp),
                    None => {
                        tally.undecodable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            wire::OP_HEARTBEAT_ACK | wire::OP_DISPATCH => {}
            wire::OP_INVALID => {
                let error = packet.error_text();
                // A message the server refused will never be delivered: give its
                // deliveries back to the window (it still counts as lost).
                if let Some(s) = sending.filter(|s| s.active().is_some())
                    && error == "no_route"
                {
                    shared.slots[s.index as usize].resolve(s.fanout);
                }
                tally.record_error(format!("op 3: {error}"));
            }
            wire::OP_ERROR | wire::OP_GOODBYE => {
                return Some(End::Lost(format!(
                    "op {}: {}",
                    packet.op,
                    packet.error_text()
                )));
            }
            op => tally.record_error(format!("unexpected op {op}")),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_deliveries() {
        // Targeted: fanout 1, window 4.
        assert_eq!(may_send(0, 0, 1, 4), 4);
        assert_eq!(may_send(4, 0, 1, 4), 0);
        assert_eq!(may_send(4, 1, 1, 4), 1);
        // Broadcast to 1000, window 2: a message is paid back only by all its deliveries.
        assert_eq!(may_send(2, 999, 1000, 2), 0);
        assert_eq!(may_send(2, 1000, 1000, 2), 1);
        // Deliveries of later messages count too, so one loss shrinks, not stalls.
        assert_eq!(may_send(10, 7999, 1000, 2), 0);
        assert_eq!(may_send(10, 8999, 1000, 2), 0);
        assert_eq!(may_send(10, 9000, 1000, 2), 1);
        assert_eq!(may_send(0, 0, 0, 2), 0);
    }

    #[test]
    fn open_loop_schedule() {
        // 1000/s: message k is due at k ms; at t=0 one is due.
        assert_eq!(due(0, 1000.0, 0), 1);
        assert_eq!(due(0, 1000.0, 1), 0);
        assert_eq!(due(999_999, 1000.0, 1), 0);
        assert_eq!(due(1_000_000, 1000.0, 1), 1);
        // A stall of 10 ms leaves 10 due at once, each keeping its own time.
        assert_eq!(due(10_500_000, 1000.0, 1), 10);
        assert_eq!(scheduled_ns(5, 1000.0), 5_000_000);
        assert_eq!(scheduled_ns(3, 2.0), 1_500_000_000);
    }

    #[test]
    fn churn_kicks_only_receivers_that_are_up() {
        let c = Churn::new(3);
        assert!(!c.kick(1), "not up yet");
        c.set_up(1);
        assert!(c.kick(1));
        assert!(!c.kick(1), "already down");
        assert!(!c.kick(7), "no such receiver");
        assert_eq!(c.kicked.load(Ordering::Relaxed), 1);
    }
}
