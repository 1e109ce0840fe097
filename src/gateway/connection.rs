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
        close_sent: false,
    }
    .serve()
}

struct Connection {
    ws: WebSocketContext,
    stream: TcpStream,
    session: Session,
    close_sent: bool,
}

impl Connection {
    async fn serve(mut self) {
        let conn = self.session.conn().clone();
        self.session.hello();
        loop {
            let event = poll_fn(|cx| {
                poll_event(
                    &mut self.ws,
                    &mut self.stream,
                    &conn,
                    &mut self.close_sent,
                    cx,
                )
            })
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
    close_sent: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    if conn.is_aborted() {
        return Poll::Ready(Event::End);
    }
    let mut io = Io { stream, cx };
    loop {
        match write_queued(ws, &mut io, conn, close_sent) {
            Flushed::Blocked | Flushed::Idle => {}
            Flushed::Done => return Poll::Ready(Event::End),
        }
        match ws.read(&mut io) {
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
    /// The close frame is written: the connection is over.
    Done,
}

/// Moves queued frames through tungstenite onto the socket. At most one
/// frame sits in tungstenite's own buffer at a time, so the bound on the
/// connection's queue is the bound on its memory.
fn write_queued(
    ws: &mut WebSocketContext,
    io: &mut Io<'_, '_, '_>,
    conn: &ConnHandle,
    close_sent: &mut bool,
) -> Flushed {
    loop {
        match ws.flush(io) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Flushed::Blocked;
            }
            Err(_) => return Flushed::Done,
        }
        if *close_sent {
            return Flushed::Done;
        }
        let result = if let Some(frame) = conn.pop() {
            ws.write(io, to_message(frame, conn.encoding.is_binary()))
        } else if conn.is_closing() {
            *close_sent = true;
            ws.close(
                io,
                Some(CloseFrame {
                    code: CloseCode::from(CLOSE_CODE),
                    reason: Utf8Bytes::from_static(""),
                }),
            )
        } else {
            return Flushed::Idle;
        };
        match result {
            Ok(()) => {}
            // The frame is in tungstenite's buffer; the flush above
            // continues it once the socket drains.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Flushed::Blocked;
            }
            Err(_) => return Flushed::Done,
        }
    }
}

fn to_message(frame: Bytes, binary: bool) -> Message {
    if binary {
        return Message::Binary(frame);
    }
    // Cloning `Bytes` only bumps a reference count.
    match Utf8Bytes::try_from(frame.clone()) {
        Ok(text) => Message::Text(text),
        // Encoders only produce UTF-8 for text connections; should that
        // ever break, a binary frame beats dropping the packet.
        Err(_) => Message::Binary(frame),
    }
}

/// The socket as a blocking-looking `std::io` stream for one poll.
struct Io<'s, 'c, 'w> {
    stream: &'s mut TcpStream,
    cx: &'c mut Context<'w>,
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
