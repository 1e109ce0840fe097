//! The HTTP/1.1 the proxy scenario needs, by hand (no client crate for one
//! request shape): a keep-alive client connection that reads a response of
//! any framing (length, chunked, or to the end), and the built-in upstream
//! that answers every request 200 with a fixed body.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the built-in upstream answers.
pub const UPSTREAM_BODY: &str = "singyeong-loadtest upstream\n";
/// The most bytes of response head or chunk line accepted.
const MAX_HEAD: usize = 64 << 10;

/// One HTTP/1.1 keep-alive connection, and what has been read past the
/// last message.
pub(super) struct HttpConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

/// The parts of a message head this tool needs.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// The status code of a response (0 for a request).
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn find(buf: &[u8], what: &[u8]) -> Option<usize> {
    buf.windows(what.len()).position(|w| w == what)
}

/// Parses a head (start line and headers, without the blank line).
fn parse_head(head: &str) -> Result<Head, String> {
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let status = if start.starts_with("HTTP/") {
        start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {start:?}"))?
    } else {
        0
    };
    let mut h = Head {
        status,
        content_length: None,
        chunked: false,
        close: start.starts_with("HTTP/1.0"),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(value.parse().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            h.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(h)
}

impl HttpConn {
    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 << 10];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Err("closed by the server mid-response".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("http read: {e}")),
        }
    }

    /// Reads up to and including the next `\r\n`; returns the line without it.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err("line too long".into());
            }
            self.fill().await?;
        }
    }

    async fn skip(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        self.buf.drain(..n);
        Ok(())
    }

    /// Writes `request`, reads the whole response: (status, keep-alive).
    pub async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool), String> {
        self.stream
            .write_all(request)
            .await
            .map_err(|e| format!("http write: {e}"))?;
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            if self.buf.len() > MAX_HEAD {
                return Err("response head too long".into());
            }
            self.fill().await?;
        };
        let head = parse_head(&String::from_utf8_lossy(&self.buf[..end]))?;
        self.buf.drain(..end + 4);
        if head.chunked {
            loop {
                let line = self.line().await?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size =
                    usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk {line:?}"))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.skip(size + 2).await?;
            }
        } else if let Some(n) = head.content_length {
            self.skip(n).await?;
        } else if !(head.status == 204 || head.status == 304 || head.status < 200) {
            // Delimited by the end of the connection.
            loop {
                self.buf.clear();
                let mut chunk = [0u8; 16 << 10];
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Ok((head.status, false)),
                    Ok(_) => {}
                    Err(e) => return Err(format!("http read: {e}")),
                }
            }
        }
        Ok((head.status, !head.close))
    }
}

/// The built-in upstream: answers every request 200 with [`UPSTREAM_BODY`].
pub(super) async fn upstream_server(
    listener: TcpListener,
    served: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let served = served.clone();
                tokio::spawn(async move {
                    let _ = upstream_connection(stream, &served).await;
                });
            }
        }
    }
}

async fn upstream_connection(stream: TcpStream, served: &AtomicU64) -> Result<(), String> {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{UPSTREAM_BODY}",
        UPSTREAM_BODY.len()
    );
    let mut conn = HttpConn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let end = loop {
            if let Some(p) = find(&conn.buf, b"\r\n\r\n") {
                break p;
            }
            if conn.buf.len() > MAX_HEAD {
                return Err("request head too long".into());
            }
            conn.fill().await?;
        };
        let head = parse_head(&String::from_utf8_lossy(&conn.buf[..end]))?;
        conn.buf.drain(..end + 4);
        conn.skip(head.content_length.unwrap_or(0)).await?;
        conn.stream
            .write_all(response.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        served.fetch_add(1, Relaxed);
        if head.close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 12\r\nConnection: close")
            .unwrap();
        assert_eq!(
            h,
            Head {
                status: 502,
                content_length: Some(12),
                chunked: false,
                close: true
            }
        );
        let h = parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.chunked && !h.close && h.status == 200);
        let h = parse_head("GET / HTTP/1.1\r\nHost: x").unwrap();
        assert_eq!(h.status, 0);
        assert!(parse_head("HTTP/1.1 abc").is_err());
    }

    #[tokio::test]
    async fn upstream_answers_keep_alive_and_chunked_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(upstream_server(listener, served.clone(), stop_rx));
        let mut c = HttpConn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        };
        for _ in 0..3 {
            let r = c.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(r, Ok((200, true)));
        }
        assert_eq!(served.load(Relaxed), 3);

        // A chunked response, then a keep-alive one on the same connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
            )
            .await
            .unwrap();
            let _ = s.read(&mut b).await;
        });
        let mut c = HttpConn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        };
        assert_eq!(c.exchange(b"x").await, Ok((200, true)));
        assert_eq!(c.exchange(b"").await, Ok((404, true)));
        assert!(c.buf.is_empty());
    }
}
