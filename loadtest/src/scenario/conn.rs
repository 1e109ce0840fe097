//! Connections the queue, update and proxy scenarios drive by hand (they
//! speak QUEUE/QUEUE_REQUEST/QUEUE_ACK, UPDATE_METADATA, or only
//! heartbeat): the connect phase ([`connect`]), one connection's turns
//! ([`Conn::next`]: heartbeat, frames read, the stop switch), closing it
//! ([`Conn::finish`]), the errors counted on the way ([`Errors`]), and
//! stopping them all at the end ([`stop_all`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::args::Args;
use crate::report::ErrorsReport;
use crate::session::{self, Handshake, Session, Ws};
use crate::tally::counts;
use crate::traffic::{heartbeat_timer, sleep_until, tick};

use super::observe::Observer;
use super::{RunError, secs};

/// How long a connection gets to close politely at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A client to open: its client id and its identify packet.
pub(super) type Client = (String, String);

/// What the connect phase of a hand-driven scenario opened: `groups[i]`
/// holds the sessions of the `i`th group of clients asked for, in their
/// order, less the ones that failed.
pub(super) struct Opened<const N: usize> {
    pub groups: [Vec<Session>; N],
    pub requested: u64,
    pub identified: u64,
    pub seconds: f64,
    /// Why connections failed, with counts.
    pub errors: BTreeMap<String, u64>,
}

/// The connect phase: opens the groups of clients `clients` builds, one
/// group after the other, while `observer` samples the server's RSS
/// against the connections identified so far.
///
/// `clients` is called after the clock starts, so building the identify
/// packets counts in the connect time, as it always has.
pub(super) async fn connect<const N: usize>(
    observer: &mut Observer,
    args: &Args,
    server: SocketAddr,
    url: &str,
    clients: impl FnOnce() -> [Vec<Client>; N],
) -> Opened<N> {
    let started = Instant::now();
    let identified_so_far = Arc::new(AtomicU64::new(0));
    let opener = Opener::new(args, server, url, identified_so_far.clone());
    let mut errors = BTreeMap::new();
    let clients = clients();
    let requested = clients.iter().map(|c| c.len() as u64).sum();
    let groups = observer
        .connecting(&identified_so_far, async {
            let mut groups = std::array::from_fn(|_| Vec::new());
            for (group, clients) in groups.iter_mut().zip(clients) {
                *group = open_all(&opener, args, clients, &mut errors).await;
            }
            groups
        })
        .await;
    Opened {
        requested,
        identified: groups.iter().map(|g| g.len() as u64).sum(),
        seconds: secs(started.elapsed()),
        errors,
        groups,
    }
}

impl<const N: usize> Opened<N> {
    /// Every group needs at least one connection to run at all.
    pub fn check_every_group(&self) -> Result<(), RunError> {
        if self.groups.iter().any(Vec::is_empty) {
            return Err(RunError::no_connections(&self.errors));
        }
        Ok(())
    }

    /// The progress line once connected.
    pub fn progress_line(&self) -> String {
        format!(
            "connect: {}/{} identified in {:.2} s",
            self.identified, self.requested, self.seconds
        )
    }
}

/// Where and how connections are opened.
struct Opener {
    pub server: SocketAddr,
    pub url: String,
    /// Source addresses, round robin (`None`: let the kernel choose).
    pub sources: Vec<Option<IpAddr>>,
    /// Connections that got to ready so far (the connect phase's progress).
    pub identified: Arc<AtomicU64>,
}

impl Opener {
    fn new(args: &Args, server: SocketAddr, url: &str, identified: Arc<AtomicU64>) -> Opener {
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
async fn open_all(
    opener: &Opener,
    args: &Args,
    clients: Vec<Client>,
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

async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What one inbound frame means to a producer or a consumer.
enum Read {
    Packet(String),
    Ignore,
    End(String),
}

fn read(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
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

/// One identified connection a scenario drives by hand: its websocket,
/// its heartbeat, and the switch that asks it to stop.
pub(super) struct Conn {
    pub ws: Ws,
    beat: Option<tokio::time::Interval>,
    /// The heartbeat packet (with `beat`).
    heartbeat: Option<Utf8Bytes>,
    stop: watch::Receiver<bool>,
}

/// Why a connection's loop ended.
pub(super) enum End {
    /// The run asked it to stop: it is closed politely.
    Stopped,
    /// The server ended it, or it failed: a disconnect and an error.
    Lost(String),
}

impl Conn {
    pub fn new(session: Session, stop: watch::Receiver<bool>) -> Conn {
        // Staggered like every other connection's (see heartbeat_timer).
        let beat = session
            .keepalive
            .as_ref()
            .map(|k| heartbeat_timer(k.interval));
        Conn {
            ws: session.ws,
            beat,
            heartbeat: session.keepalive.map(|k| k.packet),
            stop,
        }
    }

    /// One turn: waits for the first of the stop switch, a frame, the
    /// heartbeat's time (it is sent) and `wake_at`, in that order of
    /// preference. `Ok(Some(text))` for a text frame; `Ok(None)` when
    /// there is nothing for the caller (a frame to ignore, a heartbeat
    /// sent, `wake_at` reached); `Err` when the loop should end.
    pub async fn next(&mut self, wake_at: Option<Instant>) -> Result<Option<String>, End> {
        tokio::select! {
            biased;
            _ = self.stop.changed() => Err(End::Stopped),
            msg = self.ws.next() => match read(msg) {
                Read::Packet(text) => Ok(Some(text)),
                Read::Ignore => Ok(None),
                Read::End(e) => Err(End::Lost(e)),
            },
            _ = tick(self.beat.as_mut()) => {
                let packet = self.heartbeat.clone().expect("timer only with keepalive");
                match self.ws.send(Message::Text(packet)).await {
                    Ok(()) => Ok(None),
                    Err(e) => Err(End::Lost(format!("heartbeat send: {e}"))),
                }
            }
            _ = sleep_until(wake_at) => Ok(None),
        }
    }

    /// After the loop: closes the connection politely when it was asked to
    /// stop; counts it as lost otherwise.
    pub async fn finish(self, end: End, errors: &Errors) {
        match end {
            End::Stopped => close(self.ws).await,
            End::Lost(why) => errors.lost(why),
        }
    }
}

/// Asks every connection task to stop, and waits for each long enough to
/// close its connection politely.
pub(super) async fn stop_all(stop: &watch::Sender<bool>, tasks: Vec<JoinHandle<()>>) {
    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, task).await;
    }
}

/// The errors of a hand-driven scenario's connections, by text, and the
/// connections lost. Unlike [`crate::tally::Tally`] it keeps every
/// distinct text (these scenarios have always reported them all).
#[derive(Default)]
pub(super) struct Errors {
    pub count: AtomicU64,
    pub disconnects: AtomicU64,
    texts: Mutex<BTreeMap<String, u64>>,
}

impl Errors {
    /// Counts one error under its text (e.g. `"op 3: no_route"`).
    pub fn record(&self, text: String) {
        self.count.fetch_add(1, Relaxed);
        *self.texts.lock().unwrap().entry(text).or_insert(0) += 1;
    }

    /// A connection lost: a disconnect, and an error saying why.
    pub fn lost(&self, why: String) {
        self.disconnects.fetch_add(1, Relaxed);
        self.record(why);
    }

    pub fn report(&self) -> ErrorsReport {
        ErrorsReport {
            count: self.count.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            texts: counts(&self.texts.lock().unwrap()),
        }
    }
}
