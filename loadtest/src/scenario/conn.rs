//! Connections the queue and proxy scenarios drive by hand (they speak
//! QUEUE/QUEUE_REQUEST/QUEUE_ACK, or only heartbeat): opening them,
//! heartbeat timers, reading frames and closing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::session::{self, Handshake, Session, Ws};

/// How long a connection gets to close politely at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Where and how connections are opened.
pub(super) struct Opener {
    pub server: SocketAddr,
    pub url: String,
    /// Source addresses, round robin (`None`: let the kernel choose).
    pub sources: Vec<Option<IpAddr>>,
    /// Connections that got to ready so far (the connect phase's progress).
    pub identified: Arc<AtomicU64>,
}

impl Opener {
    pub fn new(args: &Args, server: SocketAddr, url: &str, identified: Arc<AtomicU64>) -> Opener {
        Opener {
            server,
            url: url.to_string(),
            // Source addresses are IPv4; an IPv6 server is reached from any address.
            sources: if server.is_ipv4() {
                args.sources().into_iter().map(Some).collect()
            } else {
                vec![None]
            },
            identified,
        }
    }
}

/// Opens one identified connection per (client id, identify packet), at
/// most `--connect-concurrency` at a time; failures are counted in `errors`.
pub(super) async fn open_all(
    opener: &Opener,
    args: &Args,
    clients: Vec<(String, String)>,
    errors: &mut BTreeMap<String, u64>,
) -> Vec<Session> {
    let limit = Arc::new(Semaphore::new(args.connect_concurrency.max(1) as usize));
    let timeout = args.connect_timeout();
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (client_id, identify))| {
            let (limit, url) = (limit.clone(), opener.url.clone());
            let (server, identified) = (opener.server, opener.identified.clone());
            let source = opener.sources[i % opener.sources.len()];
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.expect("never closed");
                let handshake = Handshake::Singyeong {
                    client_id,
                    identify,
                };
                match tokio::time::timeout(timeout, session::open(server, &url, source, handshake))
                    .await
                {
                    Ok(Ok(s)) => {
                        identified.fetch_add(1, Relaxed);
                        Ok(s)
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(session::OpenError::Timeout.to_string()),
                }
            })
        })
        .collect();
    let mut sessions = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
            Err(e) => *errors.entry(format!("connect task: {e}")).or_insert(0) += 1,
        }
    }
    sessions
}

/// The first heartbeat comes at a random point of the first interval, so
/// connections opened together do not beat in unison.
pub(super) fn heartbeat_timer(session: &Session) -> Option<tokio::time::Interval> {
    session.keepalive.as_ref().map(|k| {
        let first = k.interval.mul_f64(0.25 + 0.75 * fastrand::f64());
        let mut timer = tokio::time::interval_at(Instant::now() + first, k.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    })
}

pub(super) async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What one inbound frame means to a producer or a consumer.
pub(super) enum Read {
    Packet(String),
    Ignore,
    End(String),
}

pub(super) fn read(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
    match msg {
        Some(Ok(Message::Text(text))) => Read::Packet(text.as_str().to_string()),
        Some(Ok(Message::Close(frame))) => Read::End(frame.map_or_else(
            || "closed by the server (no close frame)".to_string(),
            |f| {
                format!(
                    "closed by the server (code {} {:?})",
                    f.code,
                    f.reason.as_str()
                )
            },
        )),
        Some(Ok(_)) => Read::Ignore,
        Some(Err(e)) => Read::End(format!("websocket: {e}")),
        None => Read::End("connection closed".into()),
    }
}
