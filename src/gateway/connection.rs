//! One websocket connection's task: tungstenite's protocol state driven
//! over a glommio socket. This file owns reading and the connection's own
//! writes (pongs, the close handshake, a write the socket took only part
//! of); what a packet means is the session's business, and queued frames
//! are usually written by the shard's flusher (see `gateway::writer`).
//!
//! tungstenite is sans-async: it reads from and writes to a `std::io`
//! stream. `Io` is that stream, built for the duration of one poll: a read
//! or write the socket cannot do now returns `WouldBlock` and leaves the
//! task's waker registered with glommio's reactor, so the connection task
//! sleeps until the socket or its outbound queue has work for it. Nothing is
//! cancelled and no read is pending in the kernel with a buffer attached
//! while the client is idle.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use glommio::net::TcpStream;
use serde_json::Value;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use super::writer::{Io, Step, write_batch, write_tail};
use crate::gateway::session::Session;
use crate::protocol::errors;
use crate::shard::ConnHandle;
use crate::shard::conn::CLOSE_CODE;

/// tungstenite's read buffer per connection. Its default (128 KiB) would
/// dominate the memory of an idle connection; frames larger than this grow
/// the buffer for as long as they need it.
const READ_BUFFER: usize = 1024;

/// The most tungstenite may hold of what it writes itself (pongs and the
/// close frame; data frames are written by `writer`), for a client that
/// sends pings but does not read. Past it, a new pong replaces the one
/// still waiting instead of queueing behind it: RFC 6455 §5.5.3 lets an
/// endpoint answer only the latest ping. Room for several control frames
/// (at most 129 bytes each), so an ordinary client never sees a pong
/// coalesced.
const CONTROL_WRITE_BUFFER: usize = 1024;

/// What the connection task has to do next.
enum Event {
    /// A complete data message: its bytes and whether it was a text frame.
    Message(Bytes, bool),
    /// The connection has handled its frames for this turn: it lets the
    /// shard's other connections run before it reads more.
    Yield,
    /// The connection is over (closed by either side, or broken).
    End,
}

/// Runs a websocket connection from the end of its upgrade to its close.
///
/// Not an `async fn`: its arguments go straight into [`Connection`] instead
/// of being kept in the future beside it, which matters because this future
/// is what an idle connection costs.
pub fn run(
    max_frame_size: usize,
    stream: TcpStream,
    leftover: Vec<u8>,
    session: Session,
) -> impl Future<Output = ()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_WRITE_BUFFER)
        .max_message_size(Some(max_frame_size))
        .max_frame_size(Some(max_frame_size));
    *session.conn().stream.borrow_mut() = Some(stream);
    let per_turn = session.shard().config.frames_per_turn;
    Connection {
        ws: WebSocketContext::from_partially_read(leftover, Role::Server, Some(config)),
        session,
        out: Outgoing::default(),
        read_ahead: Bytes::new(),
        turn: Turn::new(per_turn),
    }
    .serve()
}

struct Connection {
    ws: WebSocketContext,
    session: Session,
    out: Outgoing,
    /// Bytes read from the socket that tungstenite has not asked for yet.
    read_ahead: Bytes,
    turn: Turn,
}

/// How many frames the connection may still handle before it yields.
///
/// Without a budget, a client whose frames keep arriving (a ping flood
/// needs no reply from us to keep going) is served in one endless poll:
/// glommio preempts only between tasks, so every other connection of the
/// shard would wait for the flood to stop.
struct Turn {
    left: usize,
    per_turn: usize,
}

impl Turn {
    fn new(per_turn: usize) -> Turn {
        Turn {
            left: per_turn,
            per_turn,
        }
    }

    /// Counts one frame; true when the turn is used up.
    fn spend(&mut self) -> bool {
        self.left = self.left.saturating_sub(1);
        self.left == 0
    }

    fn renew(&mut self) {
        self.left = self.per_turn;
    }
}

/// Lets the shard's other tasks run, and its reactor look for their I/O,
/// before the connection goes on. A plain yield (waking itself) is not
/// enough: glommio runs every ready task before it polls for I/O again,
/// and a task that is always ready would keep that from happening until
/// the preemption timer fires. A timer, which is due only once the reactor
/// has looked, makes the connection wait for exactly one reactor pass.
async fn yield_to_reactor() {
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
}

/// Write-side state of the task's own (the tail of an unfinished write is
/// the connection's, see [`ConnHandle`]).
#[derive(Default)]
struct Outgoing {
    close_sent: bool,
    /// tungstenite's reader failed (frame too large, protocol error): its
    /// state can't be read further, so no close handshake either.
    read_failed: bool,
}

impl Connection {
    async fn serve(mut self) {
        let conn = self.session.conn().clone();
        let shard = self.session.shard().clone();
        self.session.hello();
        loop {
            let event = poll_fn(|cx| {
                // Writing comes first in `poll_event`: wake the shards this
                // one sent messages to before the client can hear of them.
                if conn.has_output() {
                    shard.flush_wakes();
                }
                poll_event(
                    &mut self.ws,
                    &conn,
                    &mut self.out,
                    &mut self.read_ahead,
                    &mut self.turn,
                    cx,
                )
            })
            .await;
            match event {
                // Boxed: handling a packet may await other shards, and that
                // future's size would otherwise be paid by every idle
                // connection rather than once per packet in flight.
                Event::Message(data, is_text) => {
                    Box::pin(self.session.handle_frame(&data, is_text)).await;
                    if self.turn.spend() {
                        self.turn.renew();
                        yield_to_reactor().await;
                    }
                }
                Event::Yield => {
                    self.turn.renew();
                    yield_to_reactor().await;
                }
                Event::End => break,
            }
        }
        // Close the socket now, not when the last handle to the connection
        // goes (a delivery in flight may hold one); the flusher finds it
        // gone.
        conn.set_direct(false);
        let stream = conn.stream.take();
        self.session.end();
        // A close the server began (an error such as a frame past the
        // limit) may leave the client's bytes unread: closing on them
        // would reset the connection and could destroy the error packet
        // before the client reads it. At shutdown there is no time for it.
        if let Some(mut stream) = stream
            && !shard.is_shutting_down()
        {
            crate::http::serve::close_gently(&mut stream).await;
        }
    }
}

/// Writes what is queued, then reads; returns the first thing the task must
/// act on, or registers for wakeups and returns `Pending`. Before it sleeps,
/// the task tells the flusher whether it may write for it.
fn poll_event(
    ws: &mut WebSocketContext,
    conn: &ConnHandle,
    out: &mut Outgoing,
    read_ahead: &mut Bytes,
    turn: &mut Turn,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    if conn.is_aborted() {
        return Poll::Ready(Event::End);
    }
    let mut stream = conn.stream.borrow_mut();
    let Some(stream) = stream.as_mut() else {
        return Poll::Ready(Event::End);
    };
    let mut io = Io::reading(stream, cx, read_ahead);
    // Meanwhile, only this task writes.
    conn.set_direct(false);
    let idle = loop {
        let flushed = write_queued(ws, &mut io, conn, out);
        if let Flushed::Done = flushed {
            return Poll::Ready(Event::End);
        }
        // tungstenite answers pings and closes from inside `read`; while
        // part of our batch is unwritten those replies must wait in its
        // buffer, or they would land in the middle of our frame.
        if out.read_failed {
            break matches!(flushed, Flushed::Idle);
        }
        io.hold_writes = conn.has_tail();
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
            // again to write whatever that queued, unless this turn's
            // frames are used up: then what is queued is written first
            // (the pong may coalesce with later ones meanwhile) and the
            // task lets others run.
            Ok(_) if turn.spend() => {
                return match write_queued(ws, &mut io, conn, out) {
                    Flushed::Done => Poll::Ready(Event::End),
                    Flushed::Idle | Flushed::Blocked => Poll::Ready(Event::Yield),
                };
            }
            Ok(_) => continue,
            // Nothing more to read. The read may have left a pong in
            // tungstenite's buffer (the socket took only part of it): one
            // more pass says whether all is written.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                match write_queued(ws, &mut io, conn, out) {
                    Flushed::Done => return Poll::Ready(Event::End),
                    flushed => break matches!(flushed, Flushed::Idle),
                }
            }
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
    };
    // Everything written and nothing of tungstenite's or closing to finish:
    // the flusher may write what is queued from now on.
    conn.set_direct(idle && !conn.is_closing() && !out.close_sent);
    conn.register(io.waker());
    // Nothing more to read: the next wakeup starts a new turn.
    turn.renew();
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

/// Writes what the connection has to write, in order: the tail of an
/// unfinished write, what tungstenite holds (pongs, the close frame), then
/// queued frames in batches, then, once closing, the close frame.
fn write_queued(
    ws: &mut WebSocketContext,
    io: &mut Io<'_, '_, '_>,
    conn: &ConnHandle,
    out: &mut Outgoing,
) -> Flushed {
    loop {
        match write_tail(conn, io) {
            Step::Wrote | Step::Empty => {}
            Step::Blocked => return Flushed::Blocked,
            Step::Broken => return Flushed::Done,
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
        match write_batch(conn, io) {
            Step::Wrote => continue,
            Step::Blocked => return Flushed::Blocked,
            Step::Broken => return Flushed::Done,
            Step::Empty => {}
        }
        if !conn.is_closing() {
            return Flushed::Idle;
        }
        out.close_sent = true;
        let close = CloseFrame {
            code: CloseCode::from(CLOSE_CODE),
            reason: Utf8Bytes::from_static(""),
        };
        match ws.close(io, Some(close)) {
            // Written or buffered in tungstenite: the flush above finishes
            // it.
            Ok(()) => continue,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Flushed::Done,
        }
    }
}
