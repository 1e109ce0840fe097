//! Opening the population: every receiver and sender connection, spread over
//! the source addresses and over the servers (one, or the nodes of a
//! cluster, by the rule in [`crate::spread`]), at most `connect_concurrency` in the middle of
//! connecting at once. Each connection task reports how its connect went and
//! then stays alive in [`traffic::drive`] until the run stops it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::args::TargetKind;
use crate::identity::{Names, Shape};
use crate::nats::Subjects;
use crate::session::{self, Handshake, OpenError};
use crate::spread;
use crate::stop::StopSwitch;
use crate::tally;
use crate::traffic::{self, Exit, Role, Shared};
use crate::wire;

/// One server to connect to: a single server, or one node of a cluster.
pub struct Node {
    pub addr: SocketAddr,
    /// The URL handed to the websocket handshake.
    pub url: String,
}

/// How to reach the servers and how fast to connect.
pub struct Dialer {
    /// At least one; connections are spread over them by [`crate::spread`].
    pub nodes: Vec<Node>,
    /// Source addresses to bind, round robin (`None`: let the kernel choose).
    pub sources: Vec<Option<IpAddr>>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub shape: Shape,
    pub names: Names,
    pub target: TargetKind,
    /// `--auth`: the server's password, sent in IDENTIFY.
    pub auth: Option<String>,
}

/// How the connect phase went.
pub struct Connected {
    pub requested: u64,
    pub identified: u64,
    pub elapsed: Duration,
    /// TCP connect to ready, per identified connection, in microseconds.
    pub latency: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// `id`s of the receivers that got to ready, ascending.
    pub receivers: Vec<u64>,
    pub senders: u32,
}

struct Outcome {
    role: Role,
    took: Duration,
    error: Option<String>,
}

/// Opens `receivers` receivers (ids 0..receivers) and `senders` senders and
/// waits until every one is identified or has failed. `progress` prints a
/// line per second on stderr.
pub async fn connect(
    dialer: Arc<Dialer>,
    receivers: u32,
    senders: u32,
    shared: &Arc<Shared>,
    switch: &StopSwitch,
    progress: bool,
) -> Connected {
    let gate = Arc::new(Semaphore::new(dialer.concurrency));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let roles = (0..receivers)
        .map(|i| {
            let id = u64::from(i);
            Role::Receiver {
                id,
                app: dialer.names.app_of_receiver(id),
            }
        })
        .chain((0..senders).map(|index| Role::Sender { index }));
    for (n, role) in roles.enumerate() {
        let dialer = dialer.clone();
        let gate = gate.clone();
        let tx = tx.clone();
        let shared = shared.clone();
        let mut stop = switch.handle();
        tokio::spawn(async move {
            let source = dialer.sources[n % dialer.sources.len()];
            let opened = tokio::select! {
                _ = stop.wait() => return,
                opened = open(&dialer, role, source, &gate) => opened,
            };
            let _ = tx.send(Outcome {
                role,
                took: opened.1,
                error: opened.0.as_ref().err().map(ToString::to_string),
            });
            drop(tx);
            let Ok(mut session) = opened.0 else { return };
            if let (Role::Receiver { id, .. }, Some(churn)) = (role, &shared.churn) {
                churn.set_up(id);
            }
            // Churn: a kicked receiver reconnects at once, as a new client
            // with the same metadata.
            for generation in 1.. {
                if traffic::drive(session, role, n, &shared, &mut stop).await != Exit::Kicked {
                    return;
                }
                let (Role::Receiver { id, .. }, Some(churn)) = (role, &shared.churn) else {
                    return;
                };
                let began = Instant::now();
                let reopened = tokio::select! {
                    _ = stop.wait() => return,
                    opened = tokio::time::timeout(dialer.timeout, dialer.session(role, source, generation)) =>
                        opened.unwrap_or(Err(OpenError::Timeout)),
                };
                match reopened {
                    Ok(s) => {
                        churn.reconnected.fetch_add(1, Ordering::Relaxed);
                        churn
                            .reconnect_latency
                            .lock()
                            .unwrap()
                            .saturating_record(began.elapsed().as_micros().max(1) as u64);
                        churn.set_up(id);
                        session = s;
                    }
                    Err(e) => {
                        churn.failed.fetch_add(1, Ordering::Relaxed);
                        shared.tally.record_error(format!("churn reconnect: {e}"));
                        return;
                    }
                }
            }
        });
    }
    drop(tx);

    let requested = u64::from(receivers) + u64::from(senders);
    let mut done = Connected {
        requested,
        identified: 0,
        elapsed: Duration::ZERO,
        latency: tally::histogram(),
        errors: BTreeMap::new(),
        receivers: Vec::with_capacity(receivers as usize),
        senders: 0,
    };
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let mut finished = 0u64;
    while finished < requested {
        tokio::select! {
            outcome = rx.recv() => {
                let Some(outcome) = outcome else { break };
                finished += 1;
                match outcome.error {
                    None => {
                        done.identified += 1;
                        shared.tally.identified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        done.latency.saturating_record(outcome.took.as_micros().max(1) as u64);
                        match outcome.role {
                            Role::Receiver { id, .. } => done.receivers.push(id),
                            Role::Sender { .. } => done.senders += 1,
                        }
                    }
                    Some(text) => *done.errors.entry(text).or_default() += 1,
                }
            }
            _ = tick.tick(), if progress => {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "connect {:>5.1}s: {}/{} identified, {} failed ({:.0}/s)",
                    secs, done.identified, requested, finished - done.identified,
                    done.identified as f64 / secs
                );
            }
        }
    }
    done.elapsed = started.elapsed();
    done.receivers.sort_unstable();
    done
}

/// Waits for a connect slot, then opens and identifies one connection.
async fn open(
    dialer: &Dialer,
    role: Role,
    source: Option<IpAddr>,
    gate: &Semaphore,
) -> (Result<session::Session, OpenError>, Duration) {
    let _slot = gate.acquire().await.expect("semaphore never closed");
    let began = Instant::now();
    let opened = tokio::time::timeout(dialer.timeout, dialer.session(role, source, 0))
        .await
        .unwrap_or(Err(OpenError::Timeout));
    (opened, began.elapsed())
}

impl Dialer {
    /// Opens one connection for `role` and makes it ready; `generation`
    /// counts its reconnects (churn), so each gets a fresh client id.
    async fn session(
        &self,
        role: Role,
        source: Option<IpAddr>,
        generation: u64,
    ) -> Result<session::Session, OpenError> {
        let (app, client_id, id) = match role {
            Role::Receiver { id, app } => (app, self.names.receiver_client(id, generation), id),
            Role::Sender { index } => (
                u32::MAX,
                self.names.sender_client(index),
                // Senders get ids past every receiver's, so no target matches them.
                u64::from(u32::MAX) + u64::from(index),
            ),
        };
        let handshake = match self.target {
            TargetKind::Singyeong => {
                let app_name = match role {
                    Role::Receiver { .. } => self.names.app(app),
                    Role::Sender { .. } => self.names.sender_app(),
                };
                let identify = wire::identify(
                    &client_id,
                    &app_name,
                    self.auth.as_deref(),
                    None,
                    self.shape.metadata(id),
                );
                Handshake::Singyeong {
                    client_id,
                    identify,
                }
            }
            TargetKind::Nats => {
                let subjects = Subjects::new(&self.names.prefix, &self.names.run);
                let hello = match role {
                    Role::Receiver { .. } => {
                        subjects.receiver_handshake(&client_id, app, id, id % self.shape.groups)
                    }
                    Role::Sender { .. } => subjects.sender_handshake(&client_id),
                };
                Handshake::Nats { hello }
            }
        };
        let node = &self.nodes[match role {
            Role::Receiver { id, .. } => spread::receiver_node(id, self.nodes.len()),
            Role::Sender { index } => spread::sender_node(index, self.nodes.len()),
        }];
        session::open(node.addr, &node.url, source, handshake).await
    }
}
