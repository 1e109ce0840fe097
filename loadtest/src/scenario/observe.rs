//! The server (and this tool) sampled around a run, phase by phase, the
//! same for every scenario: before any connection, every 250 ms while connecting (RSS against connections),
//! idle with every connection, and at the end. In a `--processes` worker it
//! samples nothing (the coordinator samples the server against every
//! worker's connections) and speaks the worker's lines instead: PROGRESS
//! while connecting, READY and the wait for GO.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::args::Args;
use crate::procstat::{self, Sample};
use crate::report::{ClientReport, RssPoint, ServerReport};

use super::{Probe, RunError, secs};

/// How often the server's RSS is sampled while connections are opened.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(250);

pub(crate) struct Observer {
    pub probe: Probe,
    worker: bool,
    pids: Vec<u32>,
    before: Option<Sample>,
    idle: Option<Sample>,
    client_idle: Option<Sample>,
    rss_by_connections: Vec<RssPoint>,
}

/// What the observer adds to a report.
pub(crate) struct Observed {
    pub server: Option<ServerReport>,
    pub client: ClientReport,
    pub rss_by_connections: Vec<RssPoint>,
}

impl Observer {
    /// Takes the sample before any connection.
    pub async fn start(args: &Args) -> Result<Observer, RunError> {
        let probe = Probe::of(args);
        let before = probe.sample().await?;
        Ok(Observer {
            rss_by_connections: before
                .iter()
                .map(|b| RssPoint {
                    connections: 0,
                    rss_bytes: b.rss_bytes,
                })
                .collect(),
            probe,
            worker: args.worker.is_some(),
            pids: args.server_pid.clone(),
            before,
            idle: None,
            client_idle: None,
        })
    }

    /// Runs the connect phase `connecting`, which counts the connections
    /// it got to ready into `identified`, sampling the server's RSS against
    /// that count.
    pub async fn connecting<T>(
        &mut self,
        identified: &AtomicU64,
        connecting: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(connecting);
        let mut every = tokio::time::interval(RSS_SAMPLE_EVERY);
        loop {
            tokio::select! {
                done = &mut connecting => {
                    if self.worker {
                        crate::processes::progress(identified.load(Relaxed));
                    }
                    return done;
                }
                _ = every.tick(), if self.before.is_some() || self.worker => {
                    let connections = identified.load(Relaxed);
                    if self.worker {
                        // The coordinator samples the server against the sum.
                        crate::processes::progress(connections);
                    }
                    // A failed sample mid-run is skipped; the ones that
                    // matter (before, idle, end) are checked.
                    if let Ok(Some(s)) = self.probe.sample().await {
                        self.rss_by_connections.push(RssPoint { connections, rss_bytes: s.rss_bytes });
                    }
                }
            }
        }
    }

    /// After the idle period: the sample with every connection identified;
    /// a worker then says READY and waits for the coordinator's GO.
    pub async fn ready(&mut self, identified: u64) -> Result<(), RunError> {
        self.idle = self.probe.sample().await?;
        if let Some(s) = &self.idle {
            self.rss_by_connections.push(RssPoint {
                connections: identified,
                rss_bytes: s.rss_bytes,
            });
        }
        self.client_idle = procstat::sample("self").ok();
        if self.worker {
            crate::processes::ready_and_wait(identified).await?;
        }
        Ok(())
    }

    /// After the run: the end sample, and the server's section with CPU per
    /// `delivered` (deliveries, or answered requests) when traffic was sent.
    pub async fn finish(
        self,
        identified: u64,
        delivered: Option<u64>,
        workers: usize,
    ) -> Result<Observed, RunError> {
        let end = self.probe.sample().await?;
        let client_end = procstat::sample("self").ok();
        let server = super::server_report(
            &self.probe,
            &self.pids,
            [self.before, self.idle, end],
            identified,
            delivered,
        );
        Ok(Observed {
            server,
            client: ClientReport {
                workers,
                rss_bytes: client_end.map_or(0, |s| s.rss_bytes),
                cpu_traffic_seconds: match (delivered, self.client_idle, client_end) {
                    (Some(_), Some(a), Some(b)) => Some(secs(b.cpu.saturating_sub(a.cpu))),
                    _ => None,
                },
            },
            rss_by_connections: self.rss_by_connections,
        })
    }
}
