//! Relaying the upstream's answer to the caller: status, headers minus
//! hop-by-hop ones, and the body. A body that ends within the first
//! [`PREBUFFER`] bytes is read whole before anything is written, so an
//! upstream that breaks early still gets the caller a clean 502; a larger
//! one is streamed as it arrives (its length relayed when the upstream
//! declared one, chunked otherwise), bounded by `proxy_max_body` and the
//! total timeout. Past that point a failure can only cut the caller's
//! connection, which its framing shows as a truncated body.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::CONTENT_LENGTH;
use hyper::{HeaderMap, Method, StatusCode};

use crate::proxy::error::ProxyError;
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::pool::{self, Sender, until};
use crate::proxy::target::PoolKey;

/// Bodies up to this size are read whole before the caller sees a byte.
pub const PREBUFFER: usize = 64 * 1024;

/// What a relay needs besides the response.
pub struct Limits {
    pub deadline: Instant,
    pub timeout: Duration,
    pub max_body: usize,
    pub pool_size: usize,
}

/// An upstream response ready to be written to the caller.
pub struct Relay {
    upstream: String,
    status: StatusCode,
    headers: HeaderMap,
    /// Body bytes already read.
    buffered: Vec<Bytes>,
    buffered_len: usize,
    /// The rest of the body; `None` once it has been read to its end.
    rest: Option<Incoming>,
    /// Body bytes read from the upstream so far.
    read: usize,
    /// The length the upstream declared, if any.
    declared: Option<u64>,
    /// The connection, returned to the pool once the body is read whole.
    conn: Option<(PoolKey, Sender)>,
    limits: Limits,
}

impl Relay {
    /// Reads the head's details and up to [`PREBUFFER`] bytes of body.
    /// Called within the total timeout.
    pub async fn prepare(
        upstream: String,
        method: &Method,
        response: hyper::Response<Incoming>,
        conn: (PoolKey, Sender),
        limits: Limits,
    ) -> Result<Relay, ProxyError> {
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(CONTENT_LENGTH);
        let no_body = *method == Method::HEAD
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let declared = if no_body {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        if declared.is_some_and(|n| n > limits.max_body as u64) {
            return Err(ProxyError::TooLarge {
                upstream,
                limit: limits.max_body,
            });
        }
        let mut relay = Relay {
            upstream,
            status: parts.status,
            headers,
            buffered: Vec::new(),
            buffered_len: 0,
            rest: Some(body),
            read: 0,
            declared,
            conn: Some(conn),
            limits,
        };
        while relay.buffered_len < PREBUFFER && relay.rest.is_some() {
            match relay.next_chunk().await {
                Ok(Some(data)) => {
                    relay.buffered_len += data.len();
                    relay.buffered.push(data);
                }
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(relay)
    }

    /// The next piece of body; `None` at its end (the connection then goes
    /// back to the pool). Enforces `proxy_max_body`.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ProxyError> {
        let Some(body) = self.rest.as_mut() else {
            return Ok(None);
        };
        loop {
            match body.frame().await {
                None => {
                    self.rest = None;
                    if let Some((key, sender)) = self.conn.take() {
                        pool::put(key, sender, self.limits.pool_size);
                    }
                    return Ok(None);
                }
                Some(Err(e)) => {
                    return Err(ProxyError::Upstream {
                        upstream: self.upstream.clone(),
                        reason: super::error_chain(&e),
                    });
                }
                Some(Ok(frame)) => {
                    // Trailers are hop-by-hop here: the caller's framing
                    // may not be chunked.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.read += data.len();
                    if self.read > self.limits.max_body {
                        return Err(ProxyError::TooLarge {
                            upstream: self.upstream.clone(),
                            limit: self.limits.max_body,
                        });
                    }
                    return Ok(Some(data));
                }
            }
        }
    }

    /// Writes the response to the caller. Returns whether the caller's
    /// connection can carry another request.
    pub async fn write_to<W: AsyncWrite + Unpin>(
        mut self,
        out: &mut W,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let deadline = self.limits.deadline;
        match until(deadline, self.write_inner(out, keep_alive)).await {
            Some(result) => result,
            None => {
                tracing::warn!(
                    upstream = %self.upstream,
                    after = ?self.limits.timeout,
                    "proxied response cut: total timeout"
                );
                Ok(false)
            }
        }
    }

    async fn write_inner<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
        keep_alive: bool,
    ) -> io::Result<bool> {
        enum Framing {
            Length(u64),
            Chunked,
            UntilClose,
        }
        let framing = match (self.rest.is_none(), self.declared) {
            (true, _) => Framing::Length(self.buffered_len as u64),
            (false, Some(n)) => Framing::Length(n),
            (false, None) if keep_alive => Framing::Chunked,
            (false, None) => Framing::UntilClose,
        };
        let keep_alive = keep_alive && !matches!(framing, Framing::UntilClose);
        let mut head = Vec::with_capacity(256 + self.buffered_len);
        head.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            )
            .as_bytes(),
        );
        for (name, value) in &self.headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match framing {
            Framing::Length(n) => {
                // 204 and 304 carry no length.
                if !matches!(
                    self.status,
                    StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
                ) {
                    head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                }
            }
            Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::UntilClose => {}
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        head.extend_from_slice(format!("connection: {connection}\r\n\r\n").as_bytes());
        let chunked = matches!(framing, Framing::Chunked);
        for data in std::mem::take(&mut self.buffered) {
            push_data(&mut head, &data, chunked);
        }
        if self.rest.is_none() {
            out.write_all(&head).await?;
            return Ok(keep_alive);
        }
        out.write_all(&head).await?;
        drop(head);
        let mut frame = Vec::new();
        loop {
            let data = match self.next_chunk().await {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "proxied response cut");
                    return Ok(false);
                }
            };
            if chunked {
                frame.clear();
                push_data(&mut frame, &data, true);
                out.write_all(&frame).await?;
            } else {
                out.write_all(&data).await?;
            }
        }
        if chunked {
            out.write_all(b"0\r\n\r\n").await?;
        }
        Ok(keep_alive)
    }
}

fn push_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}
