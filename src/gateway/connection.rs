//! One websocket connection's I/O: tungstenite's protocol state driven over
//! a glommio socket. This file owns framing and buffering and nothing else;
//! what a packet means is the session's business.
//!
//! tungstenite is sans-async: it reads from and writes to a `std::io`
//! stream. [`Io`] is that stream, built for the duration of one poll: a read
//! or write the socket cannot do now returns `WouldBlock` and leaves the
//! task's waker registered with glommio's reactor, so the connection task
//! sleeps until the socket or its outbound queue has work for it. One task
//! per connection both reads and writes; nothing is cancelled and no read is
//! pending in the kernel with a buffer attached while the client is idle.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use serde_json::Value;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use crate::gateway::session::Session;
use crate::protocol::errors;
use crate::shard::conn::CLOSE_CODE;
use crate::shard::{ConnHandle, Shard};

/// tungstenite's read buffer per connection. Its default (128 KiB) would
/// dominate the memory of an idle connection; frames larger than this grow
/// the buffer for as long as they need it.
const READ_BUFFER: usize = 1024;

/// What the connection task has to do next.
enum Event {
    /// A complete data message: its bytes and whether it was a text frame.
    Message(Bytes, bool),
    /// The connection is over (closed by either side, or broken).
    End,
}

/// Runs a websocket connection from the end of its upgrade to its close.
///
/// Not an `async fn`: its arguments go straight into [`Connection`] instead
/// of being kept in the future beside it, which matters because this future
/// is what an idle connection costs.
pub fn run(
    shard: Rc<Shard>,
    stream: TcpStream,
    leftover: Vec<u8>,
    session: Session,
) -> impl Future<Output = ()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(shard.config.max_frame_size))
        .max_frame_size(Some(shard.config.max_frame_size));
    Connection {
        ws: WebSocketContext::from_partially_read(leftover, Role::Server, Some(config)),
        stream,
        session,
        out: Outgoing::default(),
    }
    .serve()
}

struct Connection {
    ws: WebSocketContext,
    stream: TcpStream,
    session: Session,
    out: Outgoing,
}

/// Write-side state that must survive a full socket.
#[derive(Default)]
struct Outgoing {
    /// The unwritten end of the last batch, when the socket took only part
    /// of it. Only a backlogged connection holds anything here.
    pending: Option<Bytes>,
    close_sent: bool,
    /// tungstenite's reader failed (frame too large, protocol error): its
    /// state can't be read further, so no close handshake either.
    read_failed: bool,
}

impl Connection {
    async fn serve(mut self) {
        let conn = self.session.conn().clone();
        self.session.hello();
        loop {
            let event =
                poll_fn(|cx| poll_event(&mut self.ws, &mut self.stream, &conn, &mut self.out, cx))
                    .await;
            match event {
                // Boxed: handling a packet may await other shards, and that
                // future's size would otherwise be paid by every idle
                // connection rather than once per packet in flight.
                Event::Message(data, is_text) => {
                    Box::pin(self.session.handle_frame(&data, is_text)).await
                }
                Event::End => break,
            }
        }
        self.session.end();
    }
}

/// Writes what is queued, then reads; returns the first thing the task must
/// act on, or registers for wakeups and returns `Pending`.
fn poll_event(
    ws: &mut WebSocketContext,
    stream: &mut TcpStream,
    conn: &ConnHandle,
    out: &mut Outgoing,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    if conn.is_aborted() {
        return Poll::Ready(Event::End);
    }
    let mut io = Io {
        stream,
        cx,
        hold_writes: false,
    };
    loop {
        match write_queued(ws, &mut io, conn, out) {
            Flushed::Blocked | Flushed::Idle => {}
            Flushed::Done => return Poll::Ready(Event::End),
        }
        // tungstenite answers pings and closes from inside `read`; while
        // part of our batch is unwritten those replies must wait in its
        // buffer, or they would land in the middle of our frame.
        if out.read_failed {
            break;
        }
        io.hold_writes = out.pending.is_some();
        let read = ws.read(&mut io);
        io.hold_writes = false;
        match read {
            Ok(Message::Text(text)) if !conn.is_closing() => {
                return Poll::Ready(Event::Message(Bytes::from(text), true));
            }
            Ok(Message::Binary(data)) if !conn.is_closing() => {
                return Poll::Ready(Event::Message(data, false));
            }
            // Pings queue a pong and a close queues the close reply inside
            // tungstenite; data arriving while closing is ignored. Go round
            // again to write whatever that queued.
            Ok(_) => continue,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                out.read_failed = true;
                conn.fail(errors::FRAME_TOO_LARGE, Value::Null);
                continue;
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                return Poll::Ready(Event::End);
            }
            Err(WsError::Io(_)) => return Poll::Ready(Event::End),
            Err(e) => {
                tracing::debug!(conn = conn.id, error = %e, "websocket protocol error");
                if conn.is_closing() {
                    return Poll::Ready(Event::End);
                }
                out.read_failed = true;
                conn.fail(&format!("websocket protocol error: {e}"), Value::Null);
                continue;
            }
        }
    }
    conn.register(cx.waker());
    Poll::Pending
}

enum Flushed {
    /// Everything queued is written.
    Idle,
    /// The socket is full; its writability wakes the task.
    Blocked,
    /// The socket is broken: the connection is over.
    Done,
}

/// Largest batch of queued frames coalesced into one write.
const BATCH: usize = 64 * 1024;

thread_local! {
    /// The shard's buffer for coalescing frames (one per executor thread,
    /// so an idle connection carries no write buffer at all).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(BATCH));
}

/// Writes queued frames to the socket. Data frames are framed here rather
/// than by tungstenite: the payload is already encoded (and, for text, known
/// to be UTF-8, so it is not validated again per recipient), and every frame
/// queued for the connection goes out in one write instead of one each.
/// tungstenite still writes what it owns (pongs, the close frame), always
/// flushed before our next batch so frames never interleave.
fn write_queued(
    ws: &mut WebSocketContext,
    io: &mut Io<'_, '_, '_>,
    conn: &ConnHandle,
    out: &mut Outgoing,
) -> Flushed {
    loop {
        // Our unfinished batch first: nothing may be written in the middle
        // of a frame.
        if let Some(mut tail) = out.pending.take() {
            match io.write(&tail) {
                Ok(n) if n == tail.len() => continue,
                Ok(n) => {
                    let _ = tail.split_to(n);
                    out.pending = Some(tail);
                    return Flushed::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.pending = Some(tail);
                    return Flushed::Blocked;
                }
                Err(_) => return Flushed::Done,
            }
        }
        match ws.flush(io) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Flushed::Blocked;
            }
            Err(_) => return Flushed::Done,
        }
        if out.close_sent && out.read_failed {
            return Flushed::Done;
        }
        if out.close_sent {
            // Our close frame is out: nothing more to write. The connection
            // ends when the client answers with its own close frame (or
            // hangs up), so its socket is closed with nothing unread, which
            // would otherwise reset it and could destroy the packet that
            // said why. A client that never answers is cut off by the
            // reaper after `CLOSE_GRACE`.
            return Flushed::Idle;
        }
        let Some(first) = conn.pop() else {
            if !conn.is_closing() {
                return Flushed::Idle;
            }
            out.close_sent = true;
            let close = CloseFrame {
                code: CloseCode::from(CLOSE_CODE),
                reason: Utf8Bytes::from_static(""),
            };
            match ws.close(io, Some(close)) {
                // Written or buffered in tungstenite: the flush above
                // finishes it.
                Ok(()) => continue,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Flushed::Done,
            }
        };
        let binary = conn.encoding.is_binary();
        let written = SCRATCH.with_borrow_mut(|batch| {
            batch.clear();
            push_frame(batch, binary, &first);
            while batch.len() < BATCH {
                let Some(frame) = conn.pop() else { break };
                push_frame(batch, binary, &frame);
            }
            let result = match io.write(batch) {
                Ok(n) if n < batch.len() => {
                    out.pending = Some(Bytes::copy_from_slice(&batch[n..]));
                    Ok(false)
                }
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.pending = Some(Bytes::copy_from_slice(batch));
                    Ok(false)
                }
                Err(e) => Err(e),
            };
            // A huge frame grew the shared buffer: give that memory back.
            if batch.capacity() > 4 * BATCH {
                *batch = Vec::with_capacity(BATCH);
            }
            result
        });
        match written {
            Ok(true) => continue,
            Ok(false) => return Flushed::Blocked,
            Err(_) => return Flushed::Done,
        }
    }
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

/// The socket as a blocking-looking `std::io` stream for one poll.
struct Io<'s, 'c, 'w> {
    stream: &'s mut TcpStream,
    cx: &'c mut Context<'w>,
    /// Refuse writes (as if the socket were full) without touching it.
    hold_writes: bool,
}

impl Read for Io<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.stream).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
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
    use super::push_frame;
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
