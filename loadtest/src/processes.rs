//! `--processes P`: the tool re-executes itself as P worker processes, each
//! opening its share of the connections, so N is not capped by one
//! process's open-file limit; this process coordinates and merges.
//!
//! Each worker is its own slice of the population: receivers and senders
//! under its own applications (`<app-prefix>-w<i>`), its own client ids
//! (`<run>-w<i>`) and its own source addresses, so SEND and BROADCAST
//! traffic never crosses workers and every worker's delivered/expected
//! counts stay exact (README.md says why it cannot cross them yet).
//!
//! `queue` and `proxy` are the exceptions that span workers: queue workers
//! QUEUE into one queue (each worker's producers target its own consumers'
//! application, so every count stays exact per worker), and proxy workers'
//! receivers share one application, so a request from any worker may be
//! relayed through any worker's receiver (counted by the sender that made
//! it).
//!
//! The coordinator and a worker speak lines: the worker prints `PROGRESS
//! <n>` while connecting and `READY <n>` on stdout once its connections are
//! identified and idle, waits for `GO` on stdin, runs its traffic and prints
//! `RESULT <json>` (its report with the raw histograms, per second too). A
//! proxy worker prints `SENT` when its requests are done and keeps its
//! receivers and upstream up until `FINISH`, which the coordinator sends
//! once every worker has sent, so no request is left relayed to a closed
//! receiver. The coordinator samples the server before any worker starts,
//! when all are ready, every second of traffic and at the end, so RSS per
//! connection, CPU per message and CPU over time cover every worker.

use std::process::Stdio;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::args::{Args, Scenario};
use crate::procstat::Sample;
use crate::report::{
    ChurnReport, ClientReport, ConnectReport, ErrorsReport, Percentiles, Raw, Report, RssPoint,
    SpectrumPoint, TimelinePoint, TrafficReport,
};
use crate::scenario::proxy::ProxyRunReport;
use crate::scenario::queue::QueueRunReport;
use crate::scenario::{self, Probe, RunError};
use crate::tally;
use crate::timeline::{self, Timeline};

/// How often the server's RSS is sampled while the workers connect.
const RSS_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Worker side: say ready, wait for the go.
pub async fn ready_and_wait(identified: u64) -> Result<(), RunError> {
    say_and_wait(&format!("READY {identified}"), "GO").await
}

/// Worker side (proxy): say this worker's requests are done, wait until
/// every worker's are.
pub async fn sent_and_wait() -> Result<(), RunError> {
    say_and_wait("SENT", "FINISH").await
}

/// Prints `line`, then reads one line from the coordinator, which must be
/// `expect`. The coordinator writes a line only after the one before was
/// answered, so a fresh reader each time loses nothing.
async fn say_and_wait(line: &str, expect: &str) -> Result<(), RunError> {
    let mut out = tokio::io::stdout();
    let lost = |e: std::io::Error| RunError::Worker(format!("coordinator gone: {e}"));
    out.write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(lost)?;
    out.flush().await.map_err(lost)?;
    let mut answer = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut answer)
        .await
        .map_err(lost)?;
    if answer.trim() != expect {
        return Err(RunError::Worker(format!(
            "the coordinator said {:?} where {expect} was due",
            answer.trim()
        )));
    }
    Ok(())
}

/// Worker side: connections identified so far, while connecting.
pub fn progress(identified: u64) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PROGRESS {identified}");
    let _ = out.flush();
}

/// Worker side: the result line.
pub fn result_line(report: &impl Serialize) -> Result<String, serde_json::Error> {
    Ok(format!("RESULT {}", serde_json::to_string(report)?))
}

/// The share `i` of `total` split over `parts`.
pub fn share(total: u32, parts: u32, i: u32) -> u32 {
    total / parts + u32::from(i < total % parts)
}

/// The worker's command line: the coordinator's own, plus overrides (flags
/// given last win, see `args_override_self`).
fn worker_args(args: &Args, run: &str, i: u32) -> Vec<String> {
    let p = args.processes;
    let mut v: Vec<String> = std::env::args().skip(1).collect();
    let senders = share(args.senders, p, i);
    let base = u32::from(args.source_base) + i * args.source_addrs;
    v.extend([
        "--processes".into(),
        "1".into(),
        "--worker".into(),
        i.to_string(),
        "--connections".into(),
        share(args.connections, p, i).to_string(),
        "--senders".into(),
        senders.to_string(),
        "--app-prefix".into(),
        format!("{}-w{i}", args.app_prefix),
        "--run-id".into(),
        format!("{run}-w{i}"),
        "--source-base".into(),
        std::net::Ipv4Addr::from(base).to_string(),
        "--quiet".into(),
    ]);
    if let Some(rate) = args.rate {
        v.extend([
            "--rate".into(),
            (rate * f64::from(senders) / f64::from(args.senders.max(1))).to_string(),
        ]);
    }
    // The names queue and proxy workers share, as one process would name them.
    match args.scenario {
        Scenario::Queue => v.extend(["--queue-name".into(), queue_name(args, run)]),
        Scenario::Proxy => v.extend(["--proxy-app".into(), proxy_app(args, run)]),
        _ => {}
    }
    v
}

/// The queue a queue run uses: `--queue-name`, or one named for the run.
pub fn queue_name(args: &Args, run: &str) -> String {
    args.queue_name
        .clone()
        .unwrap_or_else(|| format!("{}-{run}-queue", args.app_prefix))
}

/// The application a proxy run's receivers identify under: `--proxy-app`,
/// or one named for the run.
pub fn proxy_app(args: &Args, run: &str) -> String {
    args.proxy_app
        .clone()
        .unwrap_or_else(|| format!("{}-{run}-upstream", args.app_prefix))
}

struct Worker {
    index: u32,
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The next READY or PROGRESS line, with this worker's index.
    async fn next_tagged(&mut self) -> (u32, Result<(&'static str, String), RunError>) {
        let index = self.index;
        loop {
            let line = match self.lines.next_line().await {
                Ok(Some(line)) => line,
                _ => return (index, Err(self.ended("READY").await)),
            };
            for tag in ["READY", "PROGRESS"] {
                if let Some(rest) = line.strip_prefix(tag) {
                    return (index, Ok((tag, rest.trim().to_string())));
                }
            }
        }
    }

    async fn ended(&mut self, tag: &str) -> RunError {
        let status = self.child.wait().await.ok();
        RunError::Worker(format!(
            "worker {} ended before {tag} (exit status {})",
            self.index,
            status
                .and_then(|s| s.code())
                .map_or("unknown".into(), |c| c.to_string())
        ))
    }

    /// The next line starting with `tag`, or why there is none.
    async fn expect(&mut self, tag: &str) -> Result<String, RunError> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix(tag) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Ok(None) | Err(_) => return Err(self.ended(tag).await),
            }
        }
    }
}

/// What the coordinator gathered: the workers' results, and its own
/// samples of the server around them.
pub(crate) struct Gathered<T> {
    pub parts: Vec<T>,
    pub probe: Probe,
    /// Before any worker started, with every worker ready, and at the end.
    pub samples: [Option<Sample>; 3],
    pub rss_by_connections: Vec<RssPoint>,
    /// Connections the workers identified, in total.
    pub identified: u64,
    /// One point per second of traffic with the server's RSS and CPU (the
    /// traffic fields are the workers', merged by [`timeline::merge`]).
    pub server_seconds: Vec<TimelinePoint>,
}

/// Coordinator side: runs the workers and merges their reports.
pub async fn coordinate(args: &Args) -> Result<Report, RunError> {
    Ok(merge(args, gather::<Report>(args).await?))
}

/// Coordinator side of a queue run.
pub async fn coordinate_queue(args: &Args) -> Result<QueueRunReport, RunError> {
    Ok(QueueRunReport::merge(args, gather(args).await?))
}

/// Coordinator side of a proxy run.
pub async fn coordinate_proxy(args: &Args) -> Result<ProxyRunReport, RunError> {
    Ok(ProxyRunReport::merge(args, gather(args).await?))
}

/// Coordinator side: starts the workers, samples the server while they
/// connect, lets them go together, samples the server every second until
/// their results are in, and reads those results as `T`.
async fn gather<T: DeserializeOwned>(args: &Args) -> Result<Gathered<T>, RunError> {
    let exe = std::env::current_exe()
        .map_err(|e| RunError::Worker(format!("cannot find this program: {e}")))?;
    let run = args.run_id.clone().unwrap_or_else(scenario::run_id);
    let probe = Probe::of(args);
    let before = probe.sample().await?;
    let mut workers = Vec::new();
    for i in 0..args.processes {
        let mut child = Command::new(&exe)
            .args(worker_args(args, &run, i))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RunError::Worker(format!("cannot start worker {i}: {e}")))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        workers.push(Worker {
            index: i,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }
    // Until every worker is ready: sample the server against the sum of
    // the workers' latest PROGRESS counts.
    let mut rss_by_connections: Vec<RssPoint> = before
        .iter()
        .map(|b| RssPoint {
            connections: 0,
            rss_bytes: b.rss_bytes,
        })
        .collect();
    let mut progress = vec![0u64; workers.len()];
    let mut ready = vec![None::<u64>; workers.len()];
    let mut every = tokio::time::interval(RSS_SAMPLE_EVERY);
    while ready.iter().any(Option::is_none) {
        let waiting: Vec<_> = workers
            .iter_mut()
            .zip(&ready)
            .filter(|(_, r)| r.is_none())
            .map(|(w, _)| Box::pin(w.next_tagged()))
            .collect();
        tokio::select! {
            ((index, line), _, _) = futures_util::future::select_all(waiting) => {
                let (tag, value) = line?;
                let n = value.parse::<u64>().unwrap_or(0);
                match tag {
                    "READY" => ready[index as usize] = Some(n),
                    _ => progress[index as usize] = n,
                }
            }
            _ = every.tick(), if before.is_some() => {
                if let Ok(Some(s)) = probe.sample().await {
                    let connections = progress
                        .iter()
                        .zip(&ready)
                        .map(|(p, r)| r.unwrap_or(*p))
                        .sum();
                    rss_by_connections.push(RssPoint { connections, rss_bytes: s.rss_bytes });
                }
            }
        }
    }
    let identified: u64 = ready.iter().map(|r| r.unwrap_or(0)).sum();
    if !args.quiet {
        eprintln!(
            "{} workers ready: {identified} connections identified",
            workers.len()
        );
    }
    let idle = probe.sample().await?;
    if let Some(s) = &idle {
        rss_by_connections.push(RssPoint {
            connections: identified,
            rss_bytes: s.rss_bytes,
        });
    }
    let mut seconds = Timeline::start(&probe, tokio::time::Instant::now(), false).await;
    for w in &mut workers {
        let _ = w.stdin.write_all(b"GO\n").await;
        let _ = w.stdin.flush().await;
    }
    let barrier = args.scenario == Scenario::Proxy;
    let results = async {
        if barrier {
            for w in &mut workers {
                w.expect("SENT").await?;
            }
            for w in &mut workers {
                let _ = w.stdin.write_all(b"FINISH\n").await;
                let _ = w.stdin.flush().await;
            }
        }
        let mut parts = Vec::new();
        for w in &mut workers {
            let json = w.expect("RESULT").await?;
            let part: T = serde_json::from_str(&json).map_err(|e| {
                RunError::Worker(format!("worker {}: unreadable result: {e}", w.index))
            })?;
            parts.push(part);
            let _ = w.child.wait().await;
        }
        Ok::<_, RunError>(parts)
    };
    tokio::pin!(results);
    let mut tick = seconds.ticks();
    let parts = loop {
        tokio::select! {
            parts = &mut results => break parts?,
            _ = tick.tick(), if before.is_some() => {
                seconds.tick(&probe, 0, 0, crate::tally::histogram()).await;
            }
        }
    };
    let histogram = crate::tally::histogram();
    seconds.finish(&probe, 0, 0, histogram).await;
    let end = probe.sample().await?;
    Ok(Gathered {
        parts,
        probe,
        samples: [before, idle, end],
        rss_by_connections,
        identified,
        server_seconds: seconds.points,
    })
}

fn histogram(parts: &[Report], pick: impl Fn(&Raw) -> &Vec<(u64, u64)>) -> Histogram<u64> {
    Raw::merged(parts.iter().filter_map(|p| p.raw.as_ref()), pick)
}

/// The workers' timelines merged, with the coordinator's server samples.
pub(crate) fn merged_timeline<'a>(
    parts: impl Iterator<Item = (&'a [TimelinePoint], Option<&'a Raw>)>,
    server_seconds: &[TimelinePoint],
) -> Vec<TimelinePoint> {
    let parts: Vec<timeline::Part<'_>> = parts
        .map(|(points, raw)| timeline::Part {
            points,
            histograms: raw.map_or(&[][..], |r| &r.timeline_latency),
        })
        .collect();
    timeline::merge(&parts, server_seconds)
}

/// One report from the workers' reports: counts add up, percentiles (per
/// second too) come from the merged histograms.
fn merge(args: &Args, gathered: Gathered<Report>) -> Report {
    let Gathered {
        parts,
        probe,
        samples,
        rss_by_connections,
        server_seconds,
        ..
    } = gathered;
    let probe = &probe;
    let sum = |f: &dyn Fn(&Report) -> u64| parts.iter().map(f).sum::<u64>();
    let connect_latency = histogram(&parts, |r| &r.connect_latency);
    let identified = sum(&|p| p.connect.identified);
    let requested = sum(&|p| p.connect.requested);
    let connect_seconds = parts.iter().map(|p| p.connect.seconds).fold(0.0, f64::max);
    let connect = ConnectReport {
        requested,
        identified,
        failed: requested - identified,
        seconds: connect_seconds,
        per_second: identified as f64 / connect_seconds.max(1e-9),
        latency_us: Percentiles::of(&connect_latency),
        errors: tally::merge_counts(parts.iter().map(|p| &p.connect.errors)),
    };
    let traffic = if parts.iter().any(|p| p.traffic.is_some()) {
        let ts: Vec<&TrafficReport> = parts.iter().filter_map(|p| p.traffic.as_ref()).collect();
        let tsum = |f: &dyn Fn(&TrafficReport) -> u64| ts.iter().map(|t| f(t)).sum::<u64>();
        let seconds = ts.iter().map(|t| t.seconds).fold(0.0, f64::max);
        let drain = ts.iter().map(|t| t.drain_seconds).fold(0.0, f64::max);
        let (sent, expected, delivered) = (
            tsum(&|t| t.sent),
            tsum(&|t| t.expected),
            tsum(&|t| t.delivered),
        );
        let latency = histogram(&parts, |r| &r.traffic_latency);
        let lag = histogram(&parts, |r| &r.schedule_lag);
        Some(TrafficReport {
            senders: ts.iter().map(|t| t.senders).sum(),
            receivers: tsum(&|t| t.receivers),
            seconds,
            drain_seconds: drain,
            sent,
            expected,
            delivered,
            lost: expected as i64 - delivered as i64,
            misrouted: tsum(&|t| t.misrouted),
            undecodable: tsum(&|t| t.undecodable),
            sent_per_second: sent as f64 / seconds.max(1e-9),
            delivered_per_second: delivered as f64 / (seconds + drain).max(1e-9),
            latency_us: Percentiles::of(&latency),
            mode: ts[0].mode.clone(),
            offered_rate: args.rate,
            schedule_lag_us: args.rate.map(|_| Percentiles::of(&lag)),
            group_members: ts[0].group_members,
            latency_spectrum: SpectrumPoint::spectrum(&latency),
        })
    } else {
        None
    };
    let churn = if parts.iter().any(|p| p.churn.is_some()) {
        let cs: Vec<&ChurnReport> = parts.iter().filter_map(|p| p.churn.as_ref()).collect();
        Some(ChurnReport {
            rate: args.churn_rate,
            kicked: cs.iter().map(|c| c.kicked).sum(),
            reconnected: cs.iter().map(|c| c.reconnected).sum(),
            reconnect_failed: cs.iter().map(|c| c.reconnect_failed).sum(),
            delivered_while_closing: cs.iter().map(|c| c.delivered_while_closing).sum(),
            reconnect_latency_us: Percentiles::of(&histogram(&parts, |r| &r.reconnect_latency)),
        })
    } else {
        None
    };
    let timeline = merged_timeline(
        parts.iter().map(|p| (&p.timeline[..], p.raw.as_ref())),
        &server_seconds,
    );
    let server = scenario::server_report(
        probe,
        &args.server_pid,
        samples,
        identified,
        traffic.as_ref().map(|t| t.delivered),
    );
    Report {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: args.scenario,
        target: args.target,
        params: args.clone(),
        connect,
        client: ClientReport::merged(parts.iter().map(|p| &p.client)),
        plan: crate::plan::Plan::of(args, server.as_ref(), traffic.as_ref()),
        server,
        traffic,
        churn,
        rss_by_connections,
        timeline,
        errors: ErrorsReport::merged(parts.iter().map(|p| &p.errors)),
        processes: args.processes,
        raw: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, parts) in [(10, 3), (3, 4), (20_001, 2)] {
            let s: Vec<u32> = (0..parts).map(|i| share(total, parts, i)).collect();
            assert_eq!(s.iter().sum::<u32>(), total);
            assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
        }
    }
}
