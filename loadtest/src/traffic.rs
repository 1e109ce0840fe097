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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::clock;
use crate::session::{Session, Ws};
use crate::stop::Stop;
use crate::tally::Tally;
use crate::wire::{self, Inbound};

/// What a scenario sends: each scenario module provides one.
pub trait Workload: Send + Sync {
    /// Encodes the next message of sender `sender`, stamped `now_ns`, into `out`.
    fn write(&self, sender: u32, rng: &mut fastrand::Rng, now_ns: u64, out: &mut String);
    /// Deliveries each message of `sender` should produce (0: it sends nothing).
    fn fanout(&self, sender: u32) -> u64;
    /// A good first capacity for one encoded message.
    fn message_capacity(&self) -> usize;
}

/// Published to every sender at once when traffic starts.
pub struct Plan {
    pub workload: Box<dyn Workload>,
    pub deadline: Instant,
    pub window: u64,
}

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

/// State all connection tasks share.
pub struct Shared {
    pub tally: Tally,
    pub slots: Vec<SenderSlot>,
    pub go: watch::Receiver<Option<Arc<Plan>>>,
    /// Senders that have stopped sending (deadline reached or connection lost).
    pub senders_done: AtomicU32,
}

impl Shared {
    pub fn new(stripes: usize, senders: u32, go: watch::Receiver<Option<Arc<Plan>>>) -> Shared {
        Shared {
            tally: Tally::new(stripes),
            slots: (0..senders).map(|_| SenderSlot::default()).collect(),
            go,
            senders_done: AtomicU32::new(0),
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

    /// Sends as many messages as the window allows, in one flush.
    async fn pump(&mut self, ws: &mut Ws, shared: &Shared) -> Result<(), String> {
        let Some(plan) = self.active() else {
            return Ok(());
        };
        if Instant::now() >= plan.deadline {
            self.finish(shared);
            return Ok(());
        }
        let plan = self.plan.clone().expect("active");
        let slot = &shared.slots[self.index as usize];
        let n = may_send(
            self.sent,
            slot.resolved.load(Ordering::Acquire),
            self.fanout,
            plan.window,
        );
        if n == 0 {
            return Ok(());
        }
        for _ in 0..n {
            let mut out = String::with_capacity(plan.workload.message_capacity());
            plan.workload
                .write(self.index, &mut self.rng, clock::now_ns(), &mut out);
            ws.feed(Message::text(out))
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
    /// The server or the network ended it: count it.
    Lost(String),
}

/// The first heartbeat comes at a random point of the first interval so that
/// ten thousand connections opened within a second do not beat in unison.
fn heartbeat_timer(interval: Duration) -> tokio::time::Interval {
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one identified connection until `stop` or until the server ends it.
pub async fn drive(
    session: Session,
    role: Role,
    stripe: usize,
    shared: Arc<Shared>,
    mut stop: Stop,
) {
    let Session {
        mut ws,
        heartbeat_interval,
        heartbeat,
    } = session;
    let mut beat = heartbeat_timer(heartbeat_interval);
    let mut go = shared.go.clone();
    let mut sending = match role {
        Role::Sender { index } => Some(Sending::new(index)),
        Role::Receiver { .. } => None,
    };
    let end = loop {
        if let Some(s) = sending.as_mut() {
            if s.waiting() {
                let plan = go.borrow_and_update().clone();
                if let Some(plan) = plan {
                    s.start(plan, &shared);
                }
            }
            if let Err(e) = s.pump(&mut ws, &shared).await {
                break End::Lost(e);
            }
        }
        let waiting = sending.as_ref().is_some_and(Sending::waiting);
        let active = sending.as_ref().and_then(Sending::active);
        let deadline = active.map(|p| p.deadline);
        let wake = sending
            .as_ref()
            .filter(|_| active.is_some())
            .map(|s| &shared.slots[s.index as usize].wake);
        tokio::select! {
            biased;
            _ = stop.wait() => break End::Asked,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some(end) = on_packet(&text, role, stripe, &shared, sending.as_ref()) {
                        break end;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map_or_else(|| "no close frame".to_string(), |f| format!("code {} {:?}", f.code, f.reason.as_str()));
                    break End::Lost(format!("closed by the server ({why})"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Lost(format!("websocket: {e}")),
                None => break End::Lost("connection closed".into()),
            },
            _ = beat.tick() => {
                if let Err(e) = ws.send(Message::Text(heartbeat.clone())).await {
                    break End::Lost(format!("heartbeat send: {e}"));
                }
            }
            _ = go.changed(), if waiting => {}
            _ = notified(wake) => {}
            _ = sleep_until(deadline) => {}
        }
    };
    if let Some(s) = sending.as_mut() {
        s.finish(&shared);
    }
    match end {
        End::Asked => {
            // Bounded: a server that never answers the close still lets the run end.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        End::Lost(why) => {
            shared.tally.disconnects.fetch_add(1, Ordering::Relaxed);
            shared.tally.record_error(why);
        }
    }
}

/// Handles one packet; returns `Some` when the server is ending the connection.
fn on_packet(
    text: &str,
    role: Role,
    stripe: usize,
    shared: &Shared,
    sending: Option<&Sending>,
) -> Option<End> {
    let tally = &shared.tally;
    let packet = match Inbound::parse(text) {
        Ok(p) => p,
        Err(e) => {
            tally.record_error(format!("undecodable packet: {e}"));
            return None;
        }
    };
    match packet.op {
        wire::OP_DISPATCH if matches!(packet.t.as_deref(), Some("SEND" | "BROADCAST")) => {
            let Some(stamp) = packet.stamp() else {
                tally.undecodable.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let latency_us = clock::now_ns().saturating_sub(stamp.t) / 1000;
            tally.record_latency(stripe, latency_us);
            tally.delivered.fetch_add(1, Ordering::Relaxed);
            let right = match role {
                Role::Receiver { id, app } => {
                    stamp.a == app && (stamp.r < 0 || stamp.r as u64 == id)
                }
                Role::Sender { .. } => false,
            };
            if !right {
                tally.misrouted.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(slot) = shared.slots.get(stamp.s as usize) {
                slot.resolve(1);
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
}
