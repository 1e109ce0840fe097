//! The part of one websocket connection that the rest of its shard can
//! reach: its socket, its bounded outbound queue, its heartbeat clock, and a
//! way to close it. The queue is drained onto the socket either by the
//! shard's flusher (see [`super::flush`]) or, while the connection has
//! something of its own to finish writing, by its own task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use glommio::net::TcpStream;
use serde_json::Value;

use crate::metadata::ClientIdx;
use crate::metrics::ShardMetrics;
use crate::protocol::{self, Encoding, op};

use super::flush::FlushList;

/// The close code of every close the server starts: the contract says
/// 1000 wherever it does not state another, and it states none. The packet
/// sent before the close says why.
pub const CLOSE_CODE: u16 = 1000;

struct Outbound {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The unwritten end of the last write, when the socket took only part
    /// of it: it goes out before anything else. Only a backlogged
    /// connection holds anything here.
    tail: Option<Bytes>,
    /// Set once the connection must close after what is queued is written;
    /// nothing more is accepted after that.
    closing: bool,
}

/// A connection as seen from its shard.
pub struct ConnHandle {
    /// Unique among this shard's connections for the life of the process, so a
    /// delivery aimed at a connection that has gone cannot reach a newer one
    /// that reused its slot.
    pub id: u64,
    pub encoding: Encoding,
    /// The socket's peer address (`socket_ip` of the client object).
    pub peer: IpAddr,
    metrics: Rc<ShardMetrics>,
    max_outbound_bytes: usize,
    out: RefCell<Outbound>,
    /// The socket, from the websocket upgrade until the connection ends.
    /// Borrowed by the connection's task while it is polled and by the
    /// flusher while it writes; both run on the shard's thread, one at a
    /// time.
    pub stream: RefCell<Option<TcpStream>>,
    /// Set by the connection's task when it has nothing of its own to
    /// write (no tail, nothing buffered in tungstenite, not closing): the
    /// flusher may then write queued frames without it.
    direct: Cell<bool>,
    /// Where the connection is in the flusher's hands.
    flushing: Cell<Flushing>,
    /// A frame other than a broadcast is queued: it goes out at once.
    urgent: Cell<bool>,
    flush: Rc<FlushList>,
    waker: Cell<Option<Waker>>,
    last_heartbeat: Cell<Instant>,
    client: Cell<Option<ClientIdx>>,
    /// When a close was requested; a connection that cannot flush its last
    /// packet within [`CLOSE_GRACE`] is dropped without it.
    closing_since: Cell<Option<Instant>>,
    aborted: Cell<bool>,
}

/// Where a connection is in the flusher's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushing {
    /// Not waiting for the flusher.
    Idle,
    /// On the flush list.
    Listed,
    /// Held back by the flusher until its round of broadcast writes.
    Lingering,
}

/// How long a closing connection may take to write its last packets.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl ConnHandle {
    pub fn new(
        id: u64,
        encoding: Encoding,
        peer: IpAddr,
        metrics: Rc<ShardMetrics>,
        flush: Rc<FlushList>,
        max_outbound_bytes: usize,
        now: Instant,
    ) -> ConnHandle {
        ConnHandle {
            id,
            encoding,
            peer,
            metrics,
            max_outbound_bytes,
            out: RefCell::new(Outbound {
                frames: VecDeque::new(),
                bytes: 0,
                tail: None,
                closing: false,
            }),
            stream: RefCell::new(None),
            direct: Cell::new(false),
            flushing: Cell::new(Flushing::Idle),
            urgent: Cell::new(false),
            flush,
            waker: Cell::new(None),
            last_heartbeat: Cell::new(now),
            client: Cell::new(None),
            closing_since: Cell::new(None),
            aborted: Cell::new(false),
        }
    }

    /// Queues one encoded frame, to be written at once. A connection whose
    /// queue would pass its bound is a slow consumer: its queue is dropped
    /// and it is closed with an error, so its memory stays bounded and
    /// nobody else waits for it.
    pub fn push(self: &Rc<Self>, op: u8, frame: Bytes) {
        self.enqueue(op, frame, true);
    }

    /// Queues one frame of a broadcast: while broadcasts keep coming it may
    /// wait up to the broadcast linger to go out with the next ones.
    pub fn push_broadcast(self: &Rc<Self>, op: u8, frame: Bytes) {
        self.enqueue(op, frame, false);
    }

    fn enqueue(self: &Rc<Self>, op: u8, frame: Bytes, urgent: bool) {
        let mut out = self.out.borrow_mut();
        if out.closing {
            self.metrics.outbound_dropped(1);
            return;
        }
        if out.bytes + frame.len() > self.max_outbound_bytes {
            drop(out);
            tracing::info!(conn = self.id, "closing slow consumer");
            self.metrics.slow_consumer();
            self.metrics.outbound_dropped(1);
            self.fail(protocol::errors::SLOW_CONSUMER, Value::Null);
            return;
        }
        self.metrics.packet_out(op);
        out.bytes += frame.len();
        out.frames.push_back(frame);
        drop(out);
        if urgent {
            self.urgent.set(true);
        }
        if !self.direct.get() {
            self.wake();
            return;
        }
        match self.flushing.get() {
            Flushing::Listed => {}
            Flushing::Lingering if !urgent => {}
            // Idle, or lingering with something that may not wait: (again)
            // on the list; the lingering entry is skipped when it comes up.
            Flushing::Idle | Flushing::Lingering => {
                self.flushing.set(Flushing::Listed);
                self.flush.schedule(self.clone());
            }
        }
    }

    /// Encodes and queues one packet.
    pub fn send_packet(self: &Rc<Self>, op: u8, t: Option<&str>, d: &Value) {
        self.push(op, protocol::encode(self.encoding, op, t, d, now_ms()));
    }

    /// Sends invalid (op 3); the connection stays open.
    pub fn invalid(self: &Rc<Self>, error: &str, extra_info: Value) {
        self.send_packet(
            op::INVALID,
            None,
            &protocol::payload::error(error, extra_info),
        );
    }

    /// Sends error (op 8) and closes: anything still queued is dropped so the
    /// error is the last thing the client reads.
    pub fn fail(&self, error: &str, extra_info: Value) {
        let packet = protocol::encode(
            self.encoding,
            op::ERROR,
            None,
            &protocol::payload::error(error, extra_info),
            now_ms(),
        );
        let mut out = self.out.borrow_mut();
        if out.closing {
            return;
        }
        self.metrics.outbound_dropped(out.frames.len() as u64);
        self.metrics.packet_out(op::ERROR);
        out.frames.clear();
        out.bytes = packet.len();
        out.frames.push_back(packet);
        out.closing = true;
        drop(out);
        self.direct.set(false);
        self.closing_since.set(Some(Instant::now()));
        self.wake();
    }

    /// Sends goodbye (op 7) and closes after what is already queued.
    pub fn goodbye(&self, reason: &str) {
        let packet = protocol::encode(
            self.encoding,
            op::GOODBYE,
            None,
            &protocol::payload::goodbye(reason),
            now_ms(),
        );
        let mut out = self.out.borrow_mut();
        if out.closing {
            return;
        }
        self.metrics.packet_out(op::GOODBYE);
        out.bytes += packet.len();
        out.frames.push_back(packet);
        out.closing = true;
        drop(out);
        self.direct.set(false);
        self.closing_since.set(Some(Instant::now()));
        self.wake();
    }

    /// Takes the next frame to write, if any.
    pub fn pop(&self) -> Option<Bytes> {
        let mut out = self.out.borrow_mut();
        let frame = out.frames.pop_front()?;
        out.bytes -= frame.len();
        Some(frame)
    }

    /// Takes the unwritten end of the last write, if any.
    pub fn take_tail(&self) -> Option<Bytes> {
        self.out.borrow_mut().tail.take()
    }

    /// Keeps the unwritten end of a write, to go out before anything else.
    pub fn set_tail(&self, tail: Bytes) {
        self.out.borrow_mut().tail = Some(tail);
    }

    pub fn has_tail(&self) -> bool {
        self.out.borrow().tail.is_some()
    }

    /// Whether anything waits to be written.
    pub fn has_output(&self) -> bool {
        let out = self.out.borrow();
        out.tail.is_some() || !out.frames.is_empty()
    }

    /// The connection's task says whether the flusher may write for it.
    pub fn set_direct(&self, direct: bool) {
        self.direct.set(direct);
    }

    /// Whether the flusher may write this connection's queued frames now.
    pub fn is_direct(&self) -> bool {
        self.direct.get()
    }

    /// Notes one write of data frames to the socket.
    pub fn wrote(&self) {
        self.metrics.socket_write();
        self.urgent.set(false);
    }

    pub fn flushing(&self) -> Flushing {
        self.flushing.get()
    }

    pub fn set_flushing(&self, state: Flushing) {
        self.flushing.set(state);
    }

    /// Something other than broadcast frames is queued.
    pub fn is_urgent(&self) -> bool {
        self.urgent.get()
    }

    /// Hands the connection back to its own task: something is left that
    /// only it can finish (a tail waiting for the socket, a broken socket).
    pub fn hand_back(&self) {
        self.direct.set(false);
        self.wake();
    }

    /// Set when the connection must close once its queue is written.
    pub fn is_closing(&self) -> bool {
        self.out.borrow().closing
    }

    /// Registers the waker of the connection's task, woken when a frame is
    /// queued or a close is requested.
    pub fn register(&self, waker: &Waker) {
        let current = self.waker.take();
        match current {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Drops the connection at once if it has been closing for longer than
    /// the grace period (its peer is not reading). Returns whether it did.
    pub fn abort_if_stuck(&self, now: Instant) -> bool {
        let stuck = self
            .closing_since
            .get()
            .is_some_and(|since| now.duration_since(since) > CLOSE_GRACE);
        if stuck && !self.aborted.replace(true) {
            self.wake();
        }
        stuck
    }

    /// Set once the connection must be dropped without further writes.
    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    pub fn heartbeat(&self, now: Instant) {
        self.last_heartbeat.set(now);
    }

    pub fn last_heartbeat(&self) -> Instant {
        self.last_heartbeat.get()
    }

    /// The client slot in the shard's store, once identified.
    pub fn client(&self) -> Option<ClientIdx> {
        self.client.get()
    }

    pub fn set_client(&self, idx: Option<ClientIdx>) {
        self.client.set(idx);
    }
}

/// Milliseconds since the Unix epoch, the `ts` of every packet.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
