//! A run, phase by phase, the same for every scenario:
//!
//! 1. sample the server (RSS, CPU) before any connection;
//! 2. open every receiver and sender ([`crate::fleet`]);
//! 3. idle, then sample again: RSS per identified connection;
//! 4. if the scenario sends, publish its [`Workload`] to the senders, let
//!    them run for `--duration`, then wait up to `--drain` for outstanding
//!    deliveries; sample again;
//! 5. build the [`Report`].
//!
//! Each scenario module only says what is sent (its `workload`); `churn`
//! adds the churner that runs beside the traffic. `queue`, `proxy` and
//! `update` are the exceptions: their clients speak
//! QUEUE/QUEUE_REQUEST/QUEUE_ACK, HTTP or UPDATE_METADATA, so they run their
//! own phases and reports ([`queue::run`], [`proxy::run`], [`update::run`]). The server is sampled the same way in all of them
//! (`observe`), and traffic is recorded per second the same way
//! ([`crate::timeline`]).

pub mod broadcast;
pub mod churn;
mod conn;
pub mod connect;
pub mod group;
mod observe;
pub mod proxy;
pub mod queue;
pub mod targeted;
pub mod update;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::args::{Args, Gateway, Scenario, TargetKind};
use crate::clock;
use crate::dialect::Encoder;
use crate::fdlimit::{self, FdLimitError};
use crate::fleet::{self, Connected, Dialer, Node};
use crate::identity::{Names, Shape};
use crate::metrics::{Endpoint, MetricsError};
use crate::procstat::{self, ProcError, Sample};
use crate::report::{
    ChurnReport, ConnectReport, ErrorsReport, Percentiles, Raw, Report, ServerReport,
    SpectrumPoint, TrafficReport,
};
use crate::spread::Candidates;
use crate::stop::StopSwitch;
use crate::timeline::Timeline;
use crate::traffic::{Churn, Plan, Shared, Workload};
use observe::Observer;

/// Descriptors the tool needs besides its connections (runtime, stdio, ...).
const SPARE_FDS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot resolve {host}:{port}: {reason}")]
    Resolve {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(transparent)]
    FdLimit(#[from] FdLimitError),
    #[error("--server-pid: {0}")]
    Proc(#[from] ProcError),
    #[error("--metrics-url: {0}")]
    Metrics(#[from] MetricsError),
    #[error("no connection got to ready; first errors: {0}")]
    NoConnections(String),
    #[error("worker process: {0}")]
    Worker(String),
    #[error("--scenario {0} runs on its own (scenario::{0}::run)")]
    RunsOnItsOwn(&'static str),
    #[error("only {identified} of {requested} clients got to ready; first errors: {first}")]
    NotAllIdentified {
        identified: u64,
        requested: u64,
        first: String,
    },
    #[error("built-in upstream: {0}")]
    Upstream(String),
}

impl RunError {
    /// Nothing got to ready: the most frequent connect errors say why.
    pub fn no_connections(errors: &std::collections::BTreeMap<String, u64>) -> RunError {
        RunError::NoConnections(Self::first_errors(errors))
    }

    /// The three most frequent connect errors, with their counts.
    pub fn first_errors(errors: &std::collections::BTreeMap<String, u64>) -> String {
        let first: Vec<String> = crate::tally::counts(errors)
            .into_iter()
            .take(3)
            .map(|e| format!("{} (x{})", e.text, e.count))
            .collect();
        first.join("; ")
    }
}

pub(crate) fn run_id() -> String {
    let mut rng = fastrand::Rng::new();
    (0..8).map(|_| rng.alphanumeric()).collect()
}

async fn resolve(gateway: &Gateway) -> Result<SocketAddr, RunError> {
    let err = |reason: String| RunError::Resolve {
        host: gateway.host.clone(),
        port: gateway.port,
        reason,
    };
    tokio::net::lookup_host((gateway.host.as_str(), gateway.port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

/// Where the server's RSS and CPU time come from.
pub(crate) enum Probe {
    None,
    /// One PID, or the nodes of a cluster (summed).
    Proc(Vec<u32>),
    /// One endpoint, or one per node (summed).
    Metrics(Vec<Endpoint>),
}

impl Probe {
    /// A worker process leaves the server to its coordinator.
    pub(crate) fn of(args: &Args) -> Probe {
        if args.worker.is_some() {
            return Probe::None;
        }
        match (&args.server_pid[..], &args.metrics_url[..]) {
            ([_, ..], _) => Probe::Proc(args.server_pid.clone()),
            ([], [_, ..]) => Probe::Metrics(
                args.metrics_url
                    .iter()
                    .map(|url| Endpoint {
                        auth: args.auth.clone(),
                        ..Endpoint::parse(url).expect("validated")
                    })
                    .collect(),
            ),
            ([], []) => Probe::None,
        }
    }

    fn source(&self) -> &'static str {
        match self {
            Probe::None => "none",
            Probe::Proc(_) => "proc",
            Probe::Metrics(_) => "metrics",
        }
    }

    pub(crate) async fn sample(&self) -> Result<Option<Sample>, RunError> {
        Ok(match self {
            Probe::None => None,
            Probe::Proc(pids) => Some(procstat::sample_sum(pids)?),
            Probe::Metrics(endpoints) => {
                let mut sum = Sample {
                    rss_bytes: 0,
                    cpu: Duration::ZERO,
                };
                for endpoint in endpoints {
                    let s = endpoint.sample().await?;
                    sum.rss_bytes += s.rss_bytes;
                    sum.cpu += s.cpu;
                }
                Some(sum)
            }
        })
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The drain after sending: waits while `in_flight()` says something is
/// still on its way, at most `limit`; how long it waited.
pub(crate) async fn drain(limit: Duration, in_flight: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    let end = started + limit;
    while in_flight() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// A report's `mode`: "open" with `--rate` (a fixed schedule), "closed"
/// without (a window of messages in flight).
pub(crate) fn loop_mode(rate: Option<f64>) -> String {
    if rate.is_some() { "open" } else { "closed" }.into()
}

/// Runs the scenario `args` names against `gateways` (one server, or the
/// nodes of a cluster: [`crate::spread`]); the caller owns `switch` and
/// closes the connections afterwards.
pub async fn run(
    args: &Args,
    gateways: &[Gateway],
    workers: usize,
    switch: &StopSwitch,
) -> Result<Report, RunError> {
    let mut nodes = Vec::with_capacity(gateways.len());
    for gateway in gateways {
        nodes.push(Node {
            addr: resolve(gateway).await?,
            url: gateway.url.clone(),
        });
    }
    fdlimit::ensure(args.total_connections() + SPARE_FDS)?;
    let progress = !args.quiet;
    let senders = if args.scenario.has_traffic() {
        args.senders
    } else {
        0
    };

    let names = Names {
        prefix: args.app_prefix.clone(),
        run: args.run_id.clone().unwrap_or_else(run_id),
        apps: args.apps,
    };
    // Source addresses are IPv4; an IPv6 server is reached from any address.
    let ipv4 = nodes.iter().all(|n| n.addr.is_ipv4());
    let dialer = Arc::new(Dialer {
        nodes,
        sources: if ipv4 {
            args.sources().into_iter().map(Some).collect()
        } else {
            vec![None]
        },
        concurrency: args.connect_concurrency as usize,
        timeout: args.connect_timeout(),
        shape: Shape::from_args(args),
        names: names.clone(),
        target: args.target,
        auth: args.auth.clone(),
    });
    let (go, go_rx) = watch::channel(None::<Arc<Plan>>);
    let churn = (args.scenario == Scenario::Churn).then(|| Churn::new(args.connections));
    let shared = Arc::new(Shared::new(workers * 4, senders, args.groups, churn, go_rx));

    // 1-3: connect and idle.
    let mut observer = Observer::start(args).await?;
    let connecting = fleet::connect(dialer, args.connections, senders, &shared, switch, progress);
    let connected = observer
        .connecting(&shared.tally.identified, connecting)
        .await;
    if connected.identified == 0 {
        return Err(RunError::no_connections(&connected.errors));
    }
    tokio::time::sleep(args.idle()).await;
    observer.ready(connected.identified).await?;
    let mut timeline = None;

    // 4: traffic.
    let shape = Shape::from_args(args);
    let mut group_members = None;
    let workload: Option<Box<dyn Workload>> = match args.scenario {
        Scenario::Connect => connect::workload(),
        Scenario::Targeted => Some(Box::new(targeted::workload(
            &names,
            candidates(args, &connected),
            None,
        ))),
        Scenario::Churn => Some(Box::new(targeted::workload(
            &names,
            candidates(args, &connected),
            shared.churn.as_ref().map(|c| c.up.clone()),
        ))),
        Scenario::Group => {
            let w = group::workload(&names, &shape, &connected);
            group_members = Some(w.members_per_group(connected.receivers.len()));
            Some(Box::new(w))
        }
        Scenario::Broadcast => Some(Box::new(broadcast::workload(&names, &connected))),
        Scenario::Queue | Scenario::Proxy | Scenario::Update => {
            return Err(RunError::RunsOnItsOwn(args.scenario.name()));
        }
    };
    let encoder = match args.target {
        TargetKind::Singyeong => Encoder::singyeong(&names, args.payload_bytes as usize),
        TargetKind::Nats => Encoder::nats(&names, args.payload_bytes as usize),
    };
    let traffic = match workload {
        Some(workload) => {
            let (mut t, record) = drive_traffic(
                args,
                workload,
                encoder,
                &connected,
                &shared,
                &go,
                (&observer.probe, progress),
            )
            .await;
            t.group_members = group_members;
            timeline = Some(record);
            Some(t)
        }
        None => None,
    };

    // 5: report.
    let tally = &shared.tally;
    let delivered = traffic.as_ref().map(|_| tally.delivered.load(Relaxed));
    let observed = observer
        .finish(connected.identified, delivered, workers)
        .await?;
    let connect = ConnectReport {
        requested: connected.requested,
        identified: connected.identified,
        failed: connected.requested - connected.identified,
        seconds: secs(connected.elapsed),
        per_second: connected.identified as f64 / secs(connected.elapsed).max(1e-9),
        latency_us: Percentiles::of(&connected.latency),
        errors: crate::tally::counts(&connected.errors),
    };
    let churn = shared.churn.as_ref().map(|c| ChurnReport {
        rate: args.churn_rate,
        kicked: c.kicked.load(Relaxed),
        reconnected: c.reconnected.load(Relaxed),
        reconnect_failed: c.failed.load(Relaxed),
        delivered_while_closing: c.delivered_while_closing.load(Relaxed),
        reconnect_latency_us: Percentiles::of(&c.reconnect_latency.lock().unwrap()),
    });
    Ok(Report {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: args.scenario,
        target: args.target,
        params: args.clone(),
        connect,
        client: observed.client,
        plan: crate::plan::Plan::of(args, observed.server.as_ref(), traffic.as_ref()),
        server: observed.server,
        traffic,
        churn,
        rss_by_connections: observed.rss_by_connections,
        timeline: timeline
            .as_ref()
            .map(|t| t.points.clone())
            .unwrap_or_default(),
        errors: ErrorsReport {
            count: tally.error_count.load(Relaxed),
            disconnects: tally.disconnects.load(Relaxed),
            texts: tally.errors(),
        },
        processes: 1,
        raw: args.worker.map(|_| Raw {
            connect_latency: Raw::pairs(&connected.latency),
            traffic_latency: Raw::pairs(&tally.latency()),
            schedule_lag: Raw::pairs(&tally.lag()),
            reconnect_latency: shared
                .churn
                .as_ref()
                .map(|c| Raw::pairs(&c.reconnect_latency.lock().unwrap()))
                .unwrap_or_default(),
            confirm_latency: Vec::new(),
            timeline_latency: timeline.map(|t| t.histograms).unwrap_or_default(),
        }),
    })
}

/// The receivers each targeted sender may choose: by node, as
/// `--placement` says.
fn candidates(args: &Args, connected: &Connected) -> Candidates {
    Candidates::new(&connected.receivers, args.url.len(), args.placement)
}

/// The server's section from its samples before connecting, idle with every
/// connection, and at the end; `delivered` when the scenario sent.
pub(crate) fn server_report(
    probe: &Probe,
    pids: &[u32],
    [before, idle, end]: [Option<Sample>; 3],
    identified: u64,
    delivered: Option<u64>,
) -> Option<ServerReport> {
    let (before, idle, end) = (before?, idle?, end?);
    let cpu_traffic = delivered.map(|_| secs(end.cpu.saturating_sub(idle.cpu)));
    Some(ServerReport {
        source: probe.source().into(),
        pid: match pids {
            [one] => Some(*one),
            _ => None,
        },
        pids: if pids.len() > 1 {
            pids.to_vec()
        } else {
            Vec::new()
        },
        rss_before_bytes: before.rss_bytes,
        rss_connected_bytes: idle.rss_bytes,
        rss_end_bytes: end.rss_bytes,
        rss_per_connection_bytes: (idle.rss_bytes as f64 - before.rss_bytes as f64)
            / identified.max(1) as f64,
        cpu_connect_seconds: secs(idle.cpu.saturating_sub(before.cpu)),
        cpu_traffic_seconds: cpu_traffic,
        cpu_us_per_delivery: match (cpu_traffic, delivered) {
            (Some(cpu), Some(d)) if d > 0 => Some(cpu * 1e6 / d as f64),
            _ => None,
        },
    })
}

/// Starts the senders, waits out the duration and the drain; one timeline
/// point (and progress line) per second.
#[allow(clippy::too_many_arguments)]
async fn drive_traffic(
    args: &Args,
    workload: Box<dyn Workload>,
    encoder: Encoder,
    connected: &Connected,
    shared: &Shared,
    go: &watch::Sender<Option<Arc<Plan>>>,
    (probe, progress): (&Probe, bool),
) -> (TrafficReport, Timeline) {
    let tally = &shared.tally;
    let started = Instant::now();
    let deadline = started + args.duration();
    let per_sender_rate = args.rate.map(|r| r / f64::from(connected.senders.max(1)));
    let _ = go.send(Some(Arc::new(Plan {
        workload,
        encoder,
        started_ns: clock::now_ns(),
        deadline,
        window: u64::from(args.window),
        rate: per_sender_rate,
    })));

    // Sending: progress once a second until the deadline; the churner, if
    // any, beside it.
    // The churner, if any, runs beside the traffic until the deadline (it
    // may finish before it: it then waits).
    let churner = async {
        if let Some(c) = &shared.churn {
            churn::churner(c, &connected.receivers, args.churn_rate, deadline).await;
        }
        std::future::pending::<()>().await
    };
    let until = async {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = churner => {}
        }
    };
    let (timeline, _) = Timeline::record(
        probe,
        started,
        args.worker.is_some(),
        until,
        || (tally.sent.load(Relaxed), tally.delivered.load(Relaxed), tally.latency()),
        |point, sent, delivered| {
            if progress {
                eprintln!(
                    "traffic {:>5.1}s: sent {sent} ({:.0}/s), delivered {delivered} ({:.0}/s), p99 {:.2} ms, errors {}",
                    point.t, point.sent_per_second, point.delivered_per_second,
                    point.p99_us as f64 / 1000.0, tally.error_count.load(Relaxed)
                );
            }
        },
    )
    .await;
    // Every sender notices the deadline within one loop turn; bound the wait anyway.
    let stragglers = Instant::now() + Duration::from_secs(2);
    while shared.senders_done.load(Acquire) < connected.senders && Instant::now() < stragglers {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sent_for = started.elapsed();

    // Drain: wait for what is still in flight.
    let drained_for = drain(args.drain(), || {
        tally.delivered.load(Relaxed) < tally.expected.load(Relaxed)
    })
    .await;

    let sent = tally.sent.load(Relaxed);
    let expected = tally.expected.load(Relaxed);
    let delivered = tally.delivered.load(Relaxed);
    let latency = tally.latency();
    let report = TrafficReport {
        senders: connected.senders,
        receivers: connected.receivers.len() as u64,
        seconds: secs(sent_for),
        drain_seconds: secs(drained_for),
        sent,
        expected,
        delivered,
        lost: expected as i64 - delivered as i64,
        misrouted: tally.misrouted.load(Relaxed),
        undecodable: tally.undecodable.load(Relaxed),
        sent_per_second: sent as f64 / secs(sent_for),
        delivered_per_second: delivered as f64 / secs(sent_for + drained_for),
        latency_us: Percentiles::of(&latency),
        latency_spectrum: SpectrumPoint::spectrum(&latency),
        mode: loop_mode(args.rate),
        offered_rate: args.rate,
        schedule_lag_us: args.rate.map(|_| Percentiles::of(&tally.lag())),
        group_members: None,
    };
    (report, timeline)
}
