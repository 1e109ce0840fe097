//! Writing queued frames to a connection's socket, shared by the
//! connection's own task and the shard's flusher.
//!
//! Data frames are framed here rather than by tungstenite: the payload is
//! already encoded (and, for text, known to be UTF-8, so it is not
//! validated again per recipient), and every frame queued for the
//! connection goes out in one write instead of one each. tungstenite still
//! writes what it owns (pongs, the close frame), but only from the
//! connection's task, which flushes it before the next batch so frames never
//! interleave.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, future};
use glommio::net::TcpStream;

use crate::shard::flush::FlushList;
use crate::shard::{ConnHandle, Flushing};

/// Largest batch of queued frames coalesced into one write.
const BATCH: usize = 64 * 1024;

thread_local! {
    /// The shard's buffer for coalescing frames (one per executor thread,
    /// so an idle connection carries no write buffer at all).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(BATCH));
}

/// What one write step did.
pub(super) enum Step {
    /// Something was written in full; there may be more.
    Wrote,
    /// Nothing to write.
    Empty,
    /// The socket is full; what it did not take is the connection's tail.
    Blocked,
    /// The socket is broken.
    Broken,
}

/// Writes the unwritten end of the connection's last write, if it has one.
/// Nothing else may be written before it: it is the middle of a frame.
pub(super) fn write_tail(conn: &ConnHandle, io: &mut impl Write) -> Step {
    let Some(mut tail) = conn.take_tail() else {
        return Step::Empty;
    };
    match io.write(&tail) {
        Ok(n) if n == tail.len() => Step::Wrote,
        Ok(n) => {
            let _ = tail.split_to(n);
            conn.set_tail(tail);
            Step::Blocked
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            conn.set_tail(tail);
            Step::Blocked
        }
        Err(_) => Step::Broken,
    }
}

/// Frames up to [`BATCH`] bytes of queued packets and writes them at once.
/// The caller has written the tail first.
pub(super) fn write_batch(conn: &ConnHandle, io: &mut impl Write) -> Step {
    let Some(first) = conn.pop() else {
        return Step::Empty;
    };
    let binary = conn.encoding.is_binary();
    SCRATCH.with_borrow_mut(|batch| {
        batch.clear();
        push_frame(batch, binary, &first);
        while batch.len() < BATCH {
            let Some(frame) = conn.pop() else { break };
            push_frame(batch, binary, &frame);
        }
        let step = match io.write(batch) {
            Ok(n) if n < batch.len() => {
                conn.wrote();
                conn.set_tail(Bytes::copy_from_slice(&batch[n..]));
                Step::Blocked
            }
            Ok(_) => {
                conn.wrote();
                Step::Wrote
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.set_tail(Bytes::copy_from_slice(batch));
                Step::Blocked
            }
            Err(_) => Step::Broken,
        };
        // A huge frame grew the shared buffer: give that memory back.
        if batch.capacity() > 4 * BATCH {
            *batch = Vec::with_capacity(BATCH);
        }
        step
    })
}

/// The shard's flusher: writes the queued frames of every connection put on
/// the flush list. It runs in a task queue of its own, so the readers'
/// work goes first (see [`crate::shard::flush`]).
///
/// Broadcast frames go out in rounds. A round starts at once when the last
/// one is long over; otherwise no sooner than twice as long after the last
/// round began as that round took to write (and never more than
/// `max_linger` after it began). Connections that have only broadcast
/// frames queued meanwhile are held and written together when the next
/// round starts; anything that is not a broadcast ends a hold.
///
/// Why: writing each broadcast to each recipient as it comes costs one
/// `send` per recipient per broadcast, and on loopback one small `send`
/// costs far more than framing it. A server that is never more than half
/// busy writing broadcast rounds sees no hold at all; one that is, holds
/// each round about as long as the last one took, and its recipients get
/// several broadcasts per write, so it keeps up with more (the clients
/// read fewer, larger segments too). The hold grows with the fan-out (a
/// round to 10 clients takes microseconds, to 10,000 milliseconds) and is
/// capped by `max_linger`.
/// `before_write` runs before each round of writes (the shard's deferred
/// wakes, see `Shard::flush_wakes`).
pub async fn flush_loop(list: Rc<FlushList>, max_linger: Duration, before_write: impl Fn()) {
    let mut listed = Vec::new();
    let mut held: Vec<Rc<ConnHandle>> = Vec::new();
    let mut rounds = Rounds::new(max_linger, Instant::now());
    loop {
        if held.is_empty() {
            list.take(&mut listed).await;
        } else {
            let wait = rounds.next().saturating_duration_since(Instant::now());
            future::or(list.take(&mut listed), glommio::timer::sleep(wait)).await;
        }
        before_write();
        let new_round = rounds.begin(Instant::now());
        let mut broadcasts = false;
        if new_round {
            broadcasts = !held.is_empty();
            for conn in held.drain(..) {
                // Skipped if it went back on the list meanwhile (something
                // urgent was queued): that entry writes it.
                if conn.flushing() == Flushing::Lingering {
                    conn.set_flushing(Flushing::Idle);
                    flush(&conn);
                    glommio::yield_if_needed().await;
                }
            }
        }
        for conn in listed.drain(..) {
            if !conn.is_urgent() && !new_round {
                conn.set_flushing(Flushing::Lingering);
                held.push(conn);
                continue;
            }
            broadcasts |= !conn.is_urgent();
            conn.set_flushing(Flushing::Idle);
            flush(&conn);
            glommio::yield_if_needed().await;
        }
        if new_round {
            rounds.end(Instant::now(), broadcasts);
        }
    }
}

/// When rounds of broadcast writes may start: at once after a quiet
/// spell, else no sooner than twice as long after the last round began as
/// it took, and at most `max_linger` after it began.
struct Rounds {
    max_linger: Duration,
    start: Instant,
    next: Instant,
}

impl Rounds {
    fn new(max_linger: Duration, now: Instant) -> Rounds {
        Rounds {
            max_linger,
            start: now,
            next: now,
        }
    }

    /// When the next round may start.
    fn next(&self) -> Instant {
        self.next
    }

    /// Starts a round if one may start at `now`.
    fn begin(&mut self, now: Instant) -> bool {
        let starts = now >= self.next;
        if starts {
            self.start = now;
        }
        starts
    }

    /// The round begun last is written, at `now`; `broadcasts` says
    /// whether it wrote any (one that did not holds nothing back).
    fn end(&mut self, now: Instant, broadcasts: bool) {
        self.next = match broadcasts {
            true => {
                self.start + (2 * now.saturating_duration_since(self.start)).min(self.max_linger)
            }
            false => self.start,
        };
    }
}

/// Writes one connection's queue, unless its task has taken writing back.
fn flush(conn: &ConnHandle) {
    if !conn.is_direct() {
        return;
    }
    let Ok(mut stream) = conn.stream.try_borrow_mut() else {
        // Its task is being polled (it cannot be, between two polls on
        // one thread, but if it were, the task writes on its own).
        conn.hand_back();
        return;
    };
    let Some(stream) = stream.as_mut() else {
        return;
    };
    // glommio registers this waker when the socket is full; the connection's
    // task, handed the tail, registers its own when it next writes.
    let mut cx = Context::from_waker(Waker::noop());
    let mut io = Io::new(stream, &mut cx);
    loop {
        match write_batch(conn, &mut io) {
            Step::Wrote => continue,
            Step::Empty => return,
            Step::Blocked | Step::Broken => break,
        }
    }
    conn.hand_back();
}

/// Appends one unmasked, unfragmented server frame (RFC 6455 §5.2).
fn push_frame(out: &mut Vec<u8>, binary: bool, payload: &[u8]) {
    let opcode = if binary { 0x2 } else { 0x1 };
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The socket as a blocking-looking `std::io` stream for one poll: an
/// operation the socket cannot do now returns `WouldBlock` and leaves the
/// context's waker registered with glommio's reactor.
pub(super) struct Io<'s, 'c, 'w> {
    stream: &'s mut TcpStream,
    cx: &'c mut Context<'w>,
    /// Refuse writes (as if the socket were full) without touching it.
    pub hold_writes: bool,
    /// Where reads keep what the socket gave beyond what tungstenite asked
    /// for; `None` for a writer that never reads.
    ahead: Option<&'s mut Bytes>,
}

/// The most one read takes from a socket. tungstenite asks for at most its
/// (small, per-connection) buffer's free space; reading through a
/// per-shard buffer instead lets a burst of frames from a busy sender cost
/// one `recv`, not one per KiB, while an idle connection keeps no buffer.
const READ_AHEAD: usize = 64 * 1024;

thread_local! {
    static READ_SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_AHEAD]);
}

impl<'s, 'c, 'w> Io<'s, 'c, 'w> {
    /// For writing only.
    pub fn new(stream: &'s mut TcpStream, cx: &'c mut Context<'w>) -> Self {
        Io {
            stream,
            cx,
            hold_writes: false,
            ahead: None,
        }
    }

    /// For reading too, keeping read-ahead bytes in `ahead` between polls.
    pub fn reading(
        stream: &'s mut TcpStream,
        cx: &'c mut Context<'w>,
        ahead: &'s mut Bytes,
    ) -> Self {
        Io {
            stream,
            cx,
            hold_writes: false,
            ahead: Some(ahead),
        }
    }

    pub fn waker(&self) -> &Waker {
        self.cx.waker()
    }

    fn poll_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.stream).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Read for Io<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(ahead) = self.ahead.take() else {
            return self.poll_read(buf);
        };
        let result = if !ahead.is_empty() {
            let n = buf.len().min(ahead.len());
            buf[..n].copy_from_slice(&ahead.split_to(n));
            Ok(n)
        } else if buf.len() >= READ_AHEAD {
            self.poll_read(buf)
        } else {
            READ_SCRATCH.with_borrow_mut(|scratch| {
                let got = self.poll_read(scratch)?;
                let n = buf.len().min(got);
                buf[..n].copy_from_slice(&scratch[..n]);
                if got > n {
                    *ahead = Bytes::copy_from_slice(&scratch[n..got]);
                }
                Ok(n)
            })
        };
        self.ahead = Some(ahead);
        result
    }
}

impl Write for Io<'_, '_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.hold_writes {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match Pin::new(&mut *self.stream).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.stream).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Rounds, push_frame};
    use std::time::{Duration, Instant};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rounds_start_at_once_after_a_quiet_spell() {
        let t0 = Instant::now();
        let mut r = Rounds::new(10 * MS, t0);
        assert!(r.begin(t0));
        r.end(t0 + MS, true);
        // Long after the last round: at once.
        assert!(r.begin(t0 + 50 * MS));
    }

    #[test]
    fn a_busy_round_holds_the_next_for_as_long_as_it_took() {
        let t0 = Instant::now();
        let mut r = Rounds::new(10 * MS, t0);
        assert!(r.begin(t0));
        r.end(t0 + 3 * MS, true);
        assert_eq!(r.next(), t0 + 6 * MS);
        assert!(!r.begin(t0 + 4 * MS));
        assert!(r.begin(t0 + 6 * MS));
    }

    #[test]
    fn holds_are_capped_and_zero_disables_them() {
        let t0 = Instant::now();
        let mut r = Rounds::new(10 * MS, t0);
        assert!(r.begin(t0));
        r.end(t0 + 30 * MS, true);
        assert_eq!(r.next(), t0 + 10 * MS);
        let mut off = Rounds::new(Duration::ZERO, t0);
        assert!(off.begin(t0));
        off.end(t0 + 30 * MS, true);
        assert!(off.begin(t0 + MS));
    }

    #[test]
    fn a_round_without_broadcasts_holds_nothing_back() {
        let t0 = Instant::now();
        let mut r = Rounds::new(10 * MS, t0);
        assert!(r.begin(t0));
        r.end(t0 + 3 * MS, false);
        assert!(r.begin(t0 + 3 * MS));
    }

    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn frames_parse_back_with_every_length_form() {
        for (len, binary) in [
            (0, false),
            (125, true),
            (126, false),
            (65_535, true),
            (65_536, false),
        ] {
            let payload = vec![b'x'; len];
            let mut out = Vec::new();
            push_frame(&mut out, binary, &payload);
            let mut cursor = std::io::Cursor::new(&out[..]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert_eq!(header.mask, None);
            let expected = if binary { Data::Binary } else { Data::Text };
            assert_eq!(header.opcode, OpCode::Data(expected));
            assert_eq!(length, len as u64);
            assert_eq!(out.len() - cursor.position() as usize, len);
        }
    }
}
