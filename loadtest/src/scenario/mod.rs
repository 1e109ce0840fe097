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
//! Each scenario module only says what is sent (its `workload`).

pub mod broadcast;
pub mod connect;
pub mod targeted;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::args::{Args, Gateway, Scenario};
use crate::fdlimit::{self, FdLimitError};
use crate::fleet::{self, Connected, Dialer};
use crate::identity::{Names, Shape};
use crate::procstat::{self, ProcError, Sample};
use crate::report::{
    ClientReport, ConnectReport, ErrorsReport, Percentiles, Report, ServerReport, TrafficReport,
};
use crate::stop::StopSwitch;
use crate::traffic::{Plan, Shared, Workload};

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
    #[error("no connection got to ready; first errors: {0}")]
    NoConnections(String),
}

/// Application names, JSON-encoded, indexed by application number.
fn apps_json(names: &Names) -> Vec<String> {
    (0..names.apps)
        .map(|i| serde_json::to_string(&names.app(i)).expect("a string encodes"))
        .collect()
}

fn run_id() -> String {
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

/// Samples the server when a PID was given.
fn server_sample(pid: Option<u32>) -> Result<Option<Sample>, ProcError> {
    pid.map(|p| procstat::sample(&p.to_string())).transpose()
}

fn self_sample() -> Option<Sample> {
    procstat::sample("self").ok()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs the scenario `args` names; the caller owns `switch` and closes the
/// connections afterwards.
pub async fn run(
    args: &Args,
    gateway: &Gateway,
    workers: usize,
    switch: &StopSwitch,
) -> Result<Report, RunError> {
    let server = resolve(gateway).await?;
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
    let dialer = Arc::new(Dialer {
        server,
        url: gateway.url.clone(),
        // Source addresses are IPv4; an IPv6 server is reached from any address.
        sources: if server.is_ipv4() {
            args.sources().into_iter().map(Some).collect()
        } else {
            vec![None]
        },
        concurrency: args.connect_concurrency as usize,
        timeout: args.connect_timeout(),
        shape: Shape::from_args(args),
        names: names.clone(),
    });
    let (go, go_rx) = watch::channel(None::<Arc<Plan>>);
    let shared = Arc::new(Shared::new(workers * 4, senders, go_rx));

    // 1-3: connect and idle.
    let before = server_sample(args.server_pid)?;
    let connected =
        fleet::connect(dialer, args.connections, senders, &shared, switch, progress).await;
    if connected.identified == 0 {
        let first: Vec<String> = crate::tally::counts(&connected.errors)
            .into_iter()
            .take(3)
            .map(|e| format!("{} (x{})", e.text, e.count))
            .collect();
        return Err(RunError::NoConnections(first.join("; ")));
    }
    tokio::time::sleep(args.idle()).await;
    let idle = server_sample(args.server_pid)?;
    let client_idle = self_sample();

    // 4: traffic.
    let workload: Option<Box<dyn Workload>> = match args.scenario {
        Scenario::Connect => connect::workload(),
        Scenario::Targeted => Some(Box::new(targeted::workload(
            &names,
            &connected,
            args.payload_bytes as usize,
        ))),
        Scenario::Broadcast => Some(Box::new(broadcast::workload(
            &names,
            &connected,
            args.payload_bytes as usize,
        ))),
    };
    let traffic = match workload {
        Some(workload) => {
            Some(drive_traffic(args, workload, &connected, &shared, &go, progress).await)
        }
        None => None,
    };
    let end = server_sample(args.server_pid)?;
    let client_end = self_sample();

    // 5: report.
    let tally = &shared.tally;
    let server_report = match (before, idle, end) {
        (Some(before), Some(idle), Some(end)) => {
            let cpu_traffic = traffic
                .as_ref()
                .map(|_| secs(end.cpu.saturating_sub(idle.cpu)));
            let delivered = tally.delivered.load(Relaxed);
            Some(ServerReport {
                pid: args.server_pid.expect("sampled"),
                rss_before_bytes: before.rss_bytes,
                rss_connected_bytes: idle.rss_bytes,
                rss_end_bytes: end.rss_bytes,
                rss_per_connection_bytes: (idle.rss_bytes as f64 - before.rss_bytes as f64)
                    / connected.identified as f64,
                cpu_connect_seconds: secs(idle.cpu.saturating_sub(before.cpu)),
                cpu_traffic_seconds: cpu_traffic,
                cpu_us_per_delivery: cpu_traffic
                    .filter(|_| delivered > 0)
                    .map(|cpu| cpu * 1e6 / delivered as f64),
            })
        }
        _ => None,
    };
    let client = ClientReport {
        workers,
        rss_bytes: client_end.map_or(0, |s| s.rss_bytes),
        cpu_traffic_seconds: match (&traffic, client_idle, client_end) {
            (Some(_), Some(a), Some(b)) => Some(secs(b.cpu.saturating_sub(a.cpu))),
            _ => None,
        },
    };
    let connect = ConnectReport {
        requested: connected.requested,
        identified: connected.identified,
        failed: connected.requested - connected.identified,
        seconds: secs(connected.elapsed),
        per_second: connected.identified as f64 / secs(connected.elapsed).max(1e-9),
        latency_us: Percentiles::of(&connected.latency),
        errors: crate::tally::counts(&connected.errors),
    };
    Ok(Report {
        tool: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        scenario: args.scenario,
        params: args.clone(),
        connect,
        server: server_report,
        client,
        traffic,
        errors: ErrorsReport {
            count: tally.error_count.load(Relaxed),
            disconnects: tally.disconnects.load(Relaxed),
            texts: tally.errors(),
        },
    })
}

/// Starts the senders, waits out the duration and the drain.
async fn drive_traffic(
    args: &Args,
    workload: Box<dyn Workload>,
    connected: &Connected,
    shared: &Shared,
    go: &watch::Sender<Option<Arc<Plan>>>,
    progress: bool,
) -> TrafficReport {
    let tally = &shared.tally;
    let started = Instant::now();
    let deadline = started + args.duration();
    let _ = go.send(Some(Arc::new(Plan {
        workload,
        deadline,
        window: u64::from(args.window),
    })));

    // Sending: progress once a second until the deadline.
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_sent, mut last_delivered) = (0, 0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => if progress {
                let (sent, delivered) = (tally.sent.load(Relaxed), tally.delivered.load(Relaxed));
                eprintln!(
                    "traffic {:>5.1}s: sent {sent} (+{}), delivered {delivered} (+{}), errors {}",
                    started.elapsed().as_secs_f64(), sent - last_sent, delivered - last_delivered,
                    tally.error_count.load(Relaxed)
                );
                (last_sent, last_delivered) = (sent, delivered);
            },
        }
    }
    // Every sender notices the deadline within one loop turn; bound the wait anyway.
    let stragglers = Instant::now() + Duration::from_secs(2);
    while shared.senders_done.load(Acquire) < connected.senders && Instant::now() < stragglers {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sent_for = started.elapsed();

    // Drain: wait for what is still in flight.
    let drain_started = Instant::now();
    let drain_end = drain_started + args.drain();
    while tally.delivered.load(Relaxed) < tally.expected.load(Relaxed) && Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_for = drain_started.elapsed();

    let sent = tally.sent.load(Relaxed);
    let expected = tally.expected.load(Relaxed);
    let delivered = tally.delivered.load(Relaxed);
    TrafficReport {
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
        latency_us: Percentiles::of(&tally.latency()),
    }
}
