//! `proxy`: HTTP requests through the server's `POST /api/v1/proxy`
//! (contract §9) to an upstream named by its websocket clients.
//!
//! The `-n` receivers identify with `ip` = the upstream's address: a small
//! HTTP/1.1 keep-alive server this tool starts on 127.0.0.1 (it answers
//! every request `200` with a fixed small body), or `--upstream host:port`.
//! The `--senders` are HTTP/1.1 keep-alive connections to the server, each
//! POSTing `{"method":"GET","route":"/","query":{"application":<app>}}` with
//! one request in flight (closed loop; `--window` does not apply), or on a
//! fixed schedule at `--rate` / senders per second (open loop, latency from
//! the scheduled time). Any status but 200 is an error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Args, Gateway, Scenario};
use crate::clock;
use crate::report::{ErrorsReport, Percentiles};
use crate::session::Session;
use crate::tally::{counts, histogram};
use crate::traffic::scheduled_ns;

use super::queue::{QueueConnect, Read, close, heartbeat_timer, open_all, read, tick};
use super::{RunError, run_id, secs};

/// What the built-in upstream answers.
pub const UPSTREAM_BODY: &str = "singyeong-loadtest upstream\n";
/// A proxied request that takes longer is an error (the server's own
/// default proxy timeout is 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);
/// The most bytes of response head or chunk line accepted.
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
pub struct ProxyRunReport {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub params: Args,
    /// The `ip` the receivers identified with.
    pub upstream: String,
    /// Requests the built-in upstream answered (absent with --upstream).
    pub upstream_served: Option<u64>,
    pub connect: QueueConnect,
    pub traffic: ProxyTraffic,
    pub errors: ErrorsReport,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProxyTraffic {
    pub senders: u64,
    pub receivers: u64,
    /// "closed" (one request in flight per sender) or "open" (--rate).
    pub mode: String,
    pub offered_rate: Option<f64>,
    pub seconds: f64,
    /// Requests written.
    pub requests: u64,
    /// Requests answered with any status.
    pub completed: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<String, u64>,
    pub requests_per_second: f64,
    pub ok_per_second: f64,
    /// Request written (open loop: scheduled) to response fully read, for
    /// every answered request.
    pub latency_us: Percentiles,
}

impl ProxyRunReport {
    pub fn summary(&self) -> String {
        let t = &self.traffic;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "proxy to {}: {}/{} identified ({} senders, {} receivers)",
            self.upstream, self.connect.identified, self.connect.requested, t.senders, t.receivers
        );
        let _ = writeln!(
            s,
            "requests {} completed {} ok {} in {:.2} s ({:.0}/s, ok {:.0}/s); statuses {:?}",
            t.requests,
            t.completed,
            t.ok,
            t.seconds,
            t.requests_per_second,
            t.ok_per_second,
            t.statuses
        );
        let _ = writeln!(s, "latency: {}", t.latency_us.line());
        self.errors.write_summary(&mut s);
        s
    }
}

struct ProxyTally {
    requests: AtomicU64,
    completed: AtomicU64,
    ok: AtomicU64,
    disconnects: AtomicU64,
    error_count: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<Histogram<u64>>,
}

impl ProxyTally {
    fn record_error(&self, text: String) {
        self.error_count.fetch_add(1, Relaxed);
        *self.errors.lock().unwrap().entry(text).or_insert(0) += 1;
    }
}

/// Runs the proxy scenario; every connection is closed before it returns.
pub async fn run(args: &Args, gateway: &Gateway) -> Result<ProxyRunReport, RunError> {
    let server = super::resolve(gateway).await?;
    crate::fdlimit::ensure(args.total_connections() + 64)?;
    let run = args.run_id.clone().unwrap_or_else(run_id);
    let app = format!("{}-{run}-upstream", args.app_prefix);
    let progress = !args.quiet;
    let (stop_tx, stop_rx) = watch::channel(false);

    let served = Arc::new(AtomicU64::new(0));
    let upstream = match &args.upstream {
        Some(u) => u.clone(),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| RunError::Upstream(e.to_string()))?;
            let addr = listener
                .local_addr()
                .map_err(|e| RunError::Upstream(e.to_string()))?;
            tokio::spawn(upstream_server(listener, served.clone(), stop_rx.clone()));
            addr.to_string()
        }
    };

    let connect_started = Instant::now();
    let sources: Vec<Option<std::net::IpAddr>> = if server.is_ipv4() {
        args.sources().into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let shape = crate::identity::Shape::from_args(args);
    let mut open_errors = BTreeMap::new();
    let receivers = open_all(
        server,
        &gateway.url,
        &sources,
        args,
        (0..args.connections)
            .map(|i| {
                let client = format!("{run}-u{i}");
                let identify = json!({"op": crate::wire::OP_IDENTIFY, "d": {
                    "client_id": client,
                    "application_id": app,
                    "ip": upstream,
                    "metadata": shape.metadata(u64::from(i)),
                }})
                .to_string();
                (client, identify)
            })
            .collect(),
        &mut open_errors,
    )
    .await;
    let connect_seconds = secs(connect_started.elapsed());
    let requested = u64::from(args.connections);
    let identified = receivers.len() as u64;
    if receivers.is_empty() {
        return Err(RunError::no_connections(&open_errors));
    }
    if progress {
        eprintln!("connect: {identified}/{requested} identified in {connect_seconds:.2} s");
    }
    let tally = Arc::new(ProxyTally {
        requests: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        error_count: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        statuses: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(histogram()),
    });
    let mut idle = Vec::new();
    for session in receivers {
        let (tally, stop) = (tally.clone(), stop_rx.clone());
        idle.push(tokio::spawn(async move {
            stay(session, &tally, stop).await;
        }));
    }
    tokio::time::sleep(args.idle()).await;

    // Traffic: each sender runs until the deadline and finishes its request.
    let body = json!({"method": "GET", "route": "/", "query": {"application": app}}).to_string();
    let host = format!("{}:{}", gateway.host, gateway.port);
    let request = Arc::new(format!(
        "POST /api/v1/proxy HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let started = Instant::now();
    let started_ns = clock::now_ns();
    let deadline = started + args.duration();
    let rate = args.rate.map(|r| r / f64::from(args.senders.max(1)));
    let mut senders = Vec::new();
    for _ in 0..args.senders {
        let (tally, request) = (tally.clone(), request.clone());
        senders.push(tokio::spawn(async move {
            send_loop(server, &request, rate, started_ns, deadline, &tally).await;
        }));
    }
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let all_done = async {
        for s in senders {
            let _ = s.await;
        }
    };
    tokio::pin!(all_done);
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            _ = tick.tick() => if progress {
                eprintln!(
                    "traffic {:>5.1}s: requests {}, ok {}, errors {}",
                    started.elapsed().as_secs_f64(),
                    tally.requests.load(Relaxed),
                    tally.ok.load(Relaxed),
                    tally.error_count.load(Relaxed),
                );
            },
        }
    }
    let sent_for = started.elapsed();
    let _ = stop_tx.send(true);
    for task in idle {
        let _ = tokio::time::timeout(Duration::from_secs(4), task).await;
    }

    let t = &tally;
    let (completed, ok) = (t.completed.load(Relaxed), t.ok.load(Relaxed));
    let seconds = secs(sent_for).max(1e-9);
    Ok(ProxyRunReport {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: Scenario::Proxy,
        params: args.clone(),
        upstream_served: args.upstream.is_none().then(|| served.load(Relaxed)),
        upstream,
        connect: QueueConnect {
            requested,
            identified,
            failed: requested - identified,
            seconds: connect_seconds,
            errors: counts(&open_errors),
        },
        traffic: ProxyTraffic {
            senders: u64::from(args.senders),
            receivers: identified,
            mode: if rate.is_some() { "open" } else { "closed" }.into(),
            offered_rate: args.rate,
            seconds: secs(sent_for),
            requests: t.requests.load(Relaxed),
            completed,
            ok,
            statuses: t
                .statuses
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            requests_per_second: completed as f64 / seconds,
            ok_per_second: ok as f64 / seconds,
            latency_us: Percentiles::of(&t.latency.lock().unwrap()),
        },
        errors: ErrorsReport {
            count: t.error_count.load(Relaxed),
            disconnects: t.disconnects.load(Relaxed),
            texts: counts(&t.errors.lock().unwrap()),
        },
    })
}

/// A receiver: heartbeats, and reads (and ignores) what it gets, until stopped.
async fn stay(session: Session, tally: &ProxyTally, mut stop: watch::Receiver<bool>) {
    let mut beat = heartbeat_timer(&session);
    let Session {
        mut ws, keepalive, ..
    } = session;
    let end = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break None,
            msg = ws.next() => match read(msg) {
                Read::Packet(_) | Read::Ignore => {}
                Read::End(e) => break Some(e),
            },
            _ = tick(beat.as_mut()) => {
                let packet = keepalive.as_ref().expect("timer only with keepalive").packet.clone();
                if let Err(e) = ws.send(Message::Text(packet)).await {
                    break Some(format!("heartbeat send: {e}"));
                }
            }
        }
    };
    match end {
        None => close(ws).await,
        Some(e) => {
            tally.disconnects.fetch_add(1, Relaxed);
            tally.record_error(e);
        }
    }
}

/// One sender connection: a request at a time until the deadline.
async fn send_loop(
    server: SocketAddr,
    request: &str,
    rate: Option<f64>,
    started_ns: u64,
    deadline: Instant,
    tally: &ProxyTally,
) {
    let mut conn: Option<HttpConn> = None;
    let mut k = 0u64;
    loop {
        let t = match rate {
            Some(rate) => {
                let at = started_ns + scheduled_ns(k, rate);
                let wait = Duration::from_nanos(at.saturating_sub(clock::now_ns()));
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
                at
            }
            None => {
                if Instant::now() >= deadline {
                    break;
                }
                clock::now_ns()
            }
        };
        k += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match TcpStream::connect(server).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    conn.insert(HttpConn {
                        stream,
                        buf: Vec::new(),
                    })
                }
                Err(e) => {
                    tally.record_error(format!("tcp connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        tally.requests.fetch_add(1, Relaxed);
        match tokio::time::timeout(REQUEST_TIMEOUT, c.exchange(request.as_bytes())).await {
            Ok(Ok((status, keep))) => {
                let micros = clock::now_ns().saturating_sub(t) / 1000;
                let _ = tally.latency.lock().unwrap().record(micros.max(1));
                tally.completed.fetch_add(1, Relaxed);
                *tally.statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                if status == 200 {
                    tally.ok.fetch_add(1, Relaxed);
                } else {
                    tally.record_error(format!("status {status}"));
                }
                if !keep {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                tally.disconnects.fetch_add(1, Relaxed);
                tally.record_error(e);
                conn = None;
            }
            Err(_) => {
                tally.record_error(format!("no response within {REQUEST_TIMEOUT:?}"));
                conn = None;
            }
        }
    }
}

/// One HTTP/1.1 keep-alive connection, and what has been read past the
/// last message.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
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
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool), String> {
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
async fn upstream_server(
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
