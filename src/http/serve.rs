//! One accepted TCP connection: HTTP requests until it either upgrades to
//! the websocket gateway or ends.
//!
//! Time is bounded per request, not per read: a request's head (the
//! websocket upgrade's included) must arrive within `http_head_timeout` of
//! the connection's start (first request) or of its first byte (later
//! requests), and its body within `http_body_timeout` of the head. A client
//! trickling bytes (slowloris) gets 408 and a close at the deadline; one
//! that sent nothing at all is just closed. Between requests a kept-alive
//! connection may sit idle for [`HTTP_IDLE`]; a response that cannot be
//! written for that long ends the connection.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::json;

use crate::config::Config;
use crate::gateway::{self, Session};
use crate::http::api::{self, Answer};
use crate::http::request::{Limits, ReadError, Request, read_body, read_head, read_more};
use crate::http::response::Response;
use crate::protocol::Encoding;
use crate::shard::Shard;

/// How long a kept-alive HTTP connection may wait for its next request, and
/// how long a response write may stall. A websocket connection is timed by
/// heartbeats instead.
const HTTP_IDLE: Duration = Duration::from_secs(30);

/// How long, and how many bytes, [`close_gently`] reads and drops.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;

pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(HTTP_IDLE));
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        // A later request's head deadline starts at its first byte; the
        // wait for that byte is the idle timeout. (Reads are boxed for the
        // reason given below.)
        if !first && buf.is_empty() {
            let idle = Instant::now() + HTTP_IDLE;
            match Box::pin(read_more(&mut Deadline::new(&mut stream, idle), &mut buf)).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
        first = false;
        // Boxed, like the API handler below: the task of a websocket
        // connection lives on after the HTTP phase, and an unboxed HTTP
        // future would make every idle connection carry its size.
        let read = Box::pin(read_timed(&mut stream, &mut buf, &shard.config));
        let req = match read.await {
            Ok(req) => req,
            Err(Failed::Silent) => return,
            Err(Failed::Answer(status, why)) => {
                if status == 408 {
                    shard.metrics.http_timeout();
                }
                let response = Response::json(status, &json!({"errors": [why]}));
                if stream.write_all(&response.to_bytes(false)).await.is_ok() {
                    Box::pin(close_gently(&mut stream)).await;
                }
                return;
            }
        };
        if req.path == "/gateway/websocket" {
            match upgrade(&req) {
                Ok((encoding, response)) => {
                    if stream.write_all(&response).await.is_err() {
                        return;
                    }
                    let _ = stream.set_read_timeout(None);
                    let _ = stream.set_write_timeout(None);
                    let session = Session::new(shard.clone(), encoding, peer);
                    // The connection continues as a task of its own, so its
                    // long idle life carries only websocket state, not this
                    // HTTP future's.
                    let max_frame_size = shard.config.max_frame_size;
                    let ws =
                        gateway::run(max_frame_size, stream, std::mem::take(&mut buf), session);
                    glommio::spawn_local(ws).detach();
                }
                Err(response) => {
                    let _ = stream.write_all(&response.to_bytes(false)).await;
                }
            }
            return;
        }
        let answer = Box::pin(api::answer(&shard, &req, peer.ip())).await;
        let keep_alive = req.keep_alive && !shard.is_shutting_down();
        let reusable = match answer {
            Answer::Response(response) => stream
                .write_all(&response.to_bytes(keep_alive))
                .await
                .map(|()| keep_alive),
            // A relay may end the connection early (a body cut short).
            // HTTP/1.0 has no chunked coding: a body of unknown length is
            // then delimited by closing the connection.
            Answer::Relay(relay) => {
                Box::pin(relay.write_to(&mut stream, keep_alive && !req.http10)).await
            }
        };
        if !matches!(reusable, Ok(true)) {
            return;
        }
    }
}

/// Closes after an error answer sent while the request may still be
/// arriving (a body past the limit, a head past its deadline). Closing with
/// unread bytes makes the kernel send a reset, which can destroy the answer
/// before the client reads it; so the write side is shut first and what the
/// client still sends is read and dropped, for at most [`LINGER`] and
/// [`LINGER_BYTES`].
pub async fn close_gently(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let until = Instant::now() + LINGER;
    let mut drained = 0;
    let mut sink = Vec::new();
    while drained < LINGER_BYTES {
        sink.clear();
        match read_more(&mut Deadline::new(stream, until), &mut sink).await {
            Ok(n) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Why no request came: nothing to answer, or an error status and message.
enum Failed {
    Silent,
    Answer(u16, String),
}

/// Reads one request, its head and its body each within their deadline.
async fn read_timed(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    config: &Config,
) -> Result<Request, Failed> {
    let limits = Limits {
        max_body: config.max_http_body,
        max_headers: config.http_max_headers,
    };
    let head_deadline = Instant::now() + config.http_head_timeout;
    let head = read_head(
        &mut Deadline::new(stream, head_deadline),
        buf,
        limits.max_headers,
    )
    .await;
    let (mut req, body) = match head {
        Ok(head) => head,
        // Nothing at all arrived in time: no request to answer.
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::TimedOut && buf.is_empty() => {
            return Err(Failed::Silent);
        }
        Err(e) => return Err(failed(e, "head", config.http_head_timeout)),
    };
    let body_deadline = Instant::now() + config.http_body_timeout;
    req.body = read_body(&mut Deadline::new(stream, body_deadline), buf, body, limits)
        .await
        .map_err(|e| failed(e, "body", config.http_body_timeout))?;
    Ok(req)
}

fn failed(e: ReadError, part: &str, timeout: Duration) -> Failed {
    let status = match &e {
        ReadError::Closed => return Failed::Silent,
        ReadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            return Failed::Answer(
                408,
                format!(
                    "request {part} not received within {} ms",
                    timeout.as_millis()
                ),
            );
        }
        ReadError::Io(_) => return Failed::Silent,
        ReadError::HeadTooLarge
        | ReadError::TooManyHeaders(_)
        | ReadError::TooManyTrailers(_)
        | ReadError::TrailersTooLarge => 431,
        ReadError::BodyTooLarge(_) => 413,
        ReadError::Malformed(_) => 400,
    };
    Failed::Answer(status, e.to_string())
}

/// The socket read against a deadline: each read gets the time left as its
/// timeout, so the deadline bounds the whole part of the request read
/// through it, however the client spreads its bytes.
struct Deadline<'a> {
    stream: &'a mut TcpStream,
    at: Instant,
}

impl<'a> Deadline<'a> {
    fn new(stream: &'a mut TcpStream, at: Instant) -> Self {
        Deadline { stream, at }
    }
}

impl AsyncRead for Deadline<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let left = this.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        // glommio arms a read's timer when the read first waits, with the
        // timeout set then; a read already waiting keeps its timer.
        this.stream.set_read_timeout(Some(left))?;
        Pin::new(&mut *this.stream).poll_read(cx, out)
    }
}

/// Validates a websocket upgrade request (RFC 6455 §4.2.1) and its
/// `encoding`; returns the encoding and the 101 response bytes.
fn upgrade(req: &Request) -> Result<(Encoding, Vec<u8>), Response> {
    let encoding = match req.query_param("encoding") {
        None => Encoding::Json,
        Some(name) => Encoding::from_query_param(name).ok_or_else(|| {
            Response::json(
                400,
                &json!({
                    "errors": [format!("invalid encoding {name:?}: valid encodings are json, msgpack, etf")],
                    "valid_encodings": ["json", "msgpack", "etf"],
                }),
            )
        })?,
    };
    let bad = |why: &str| Response::json(400, &json!({"errors": [why]}));
    if req.method != "GET" {
        return Err(bad("websocket upgrade must be a GET"));
    }
    if !req.header_has_token("upgrade", "websocket")
        || !req.header_has_token("connection", "upgrade")
    {
        return Err(Response::json(
            426,
            &json!({"errors": ["this endpoint requires a websocket upgrade"]}),
        )
        .with_header("upgrade", "websocket"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(bad("unsupported sec-websocket-version (expected 13)")
            .with_header("sec-websocket-version", "13"));
    }
    let Some(key) = req.header("sec-websocket-key") else {
        return Err(bad("missing sec-websocket-key"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    Ok((encoding, response.into_bytes()))
}
