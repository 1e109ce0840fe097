//! The proxy scenario's result: its JSON, its human summary, its HTML page,
//! and the merge of `--processes` workers' results into one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::args::{Args, Scenario};
use crate::html::{self, Page};
use crate::processes::{Gathered, merged_timeline};
use crate::report::{
    ClientReport, ErrorsReport, Percentiles, Raw, RssPoint, ServerReport, SpectrumPoint,
    TimelinePoint,
};
use crate::scenario::queue::QueueConnect;

#[derive(Debug, Serialize, Deserialize)]
pub struct ProxyRunReport {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub params: Args,
    /// The application the receivers identified under and requests query.
    pub app: String,
    /// The `ip` the receivers identified with (with --processes and the
    /// built-in upstream: each worker's, comma separated).
    pub upstream: String,
    /// Requests the built-in upstream answered (absent with --upstream).
    pub upstream_served: Option<u64>,
    pub connect: QueueConnect,
    /// Present with --server-pid or --metrics-url; `cpu_us_per_delivery`
    /// is per answered request.
    pub server: Option<ServerReport>,
    pub client: ClientReport,
    pub traffic: ProxyTraffic,
    /// Server RSS sampled while the receivers were being opened.
    pub rss_by_connections: Vec<RssPoint>,
    /// One point per second: requests written and answered, and the latency
    /// of that second's answers.
    pub timeline: Vec<TimelinePoint>,
    pub errors: ErrorsReport,
    /// `--processes`: how many worker processes made this result.
    pub processes: u32,
    /// Only in a worker's result to its coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Raw>,
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
    /// `latency_us` at percentiles from 0 to 99.999.
    pub latency_spectrum: Vec<SpectrumPoint>,
}

impl ProxyRunReport {
    pub fn summary(&self) -> String {
        let t = &self.traffic;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "proxy to {}: {}/{} identified ({} senders, {} receivers, {} process{})",
            self.upstream,
            self.connect.identified,
            self.connect.requested,
            t.senders,
            t.receivers,
            self.processes,
            if self.processes == 1 { "" } else { "es" }
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
        if let Some(v) = &self.server {
            v.write_summary(&mut s, "request");
        }
        self.client.write_summary(&mut s);
        self.errors.write_summary(&mut s);
        s
    }

    /// The HTML report.
    pub fn html(&self, json: &str) -> String {
        html::page(
            &Page {
                title: format!("proxy to {}", self.upstream),
                has_traffic: true,
                spectrum_title: "Request latency by percentile",
                spectra: vec![("request", &self.traffic.latency_spectrum[..])],
                timeline: &self.timeline,
                rates: ("requests / s", "written", "answered"),
                latency_over_time_title: "Latency over time (requests answered each second)",
                rss_by_connections: &self.rss_by_connections,
                summary: self.summary(),
            },
            json,
        )
    }

    /// One result from the workers' results: counts add up, percentiles
    /// (per second too) come from the merged histograms, the server's
    /// section from the coordinator's samples.
    pub(crate) fn merge(args: &Args, gathered: Gathered<ProxyRunReport>) -> ProxyRunReport {
        let Gathered {
            parts,
            probe,
            samples,
            rss_by_connections,
            identified,
            server_seconds,
        } = gathered;
        let sum = |f: &dyn Fn(&ProxyRunReport) -> u64| parts.iter().map(f).sum::<u64>();
        let latency = Raw::merged(parts.iter().filter_map(|p| p.raw.as_ref()), |r| {
            &r.traffic_latency
        });
        let seconds = parts.iter().map(|p| p.traffic.seconds).fold(0.0, f64::max);
        let (completed, ok) = (sum(&|p| p.traffic.completed), sum(&|p| p.traffic.ok));
        let mut statuses = BTreeMap::new();
        for (status, n) in parts.iter().flat_map(|p| &p.traffic.statuses) {
            *statuses.entry(status.clone()).or_insert(0) += n;
        }
        let mut upstreams: Vec<&str> = parts.iter().map(|p| p.upstream.as_str()).collect();
        upstreams.dedup();
        let served: Vec<u64> = parts.iter().filter_map(|p| p.upstream_served).collect();
        ProxyRunReport {
            tool: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scenario: Scenario::Proxy,
            params: args.clone(),
            app: parts[0].app.clone(),
            upstream: upstreams.join(", "),
            upstream_served: (!served.is_empty()).then(|| served.iter().sum()),
            connect: QueueConnect::merged(parts.iter().map(|p| &p.connect), identified),
            server: crate::scenario::server_report(
                &probe,
                &args.server_pid,
                samples,
                identified,
                Some(completed),
            ),
            client: ClientReport::merged(parts.iter().map(|p| &p.client)),
            traffic: ProxyTraffic {
                senders: sum(&|p| p.traffic.senders),
                receivers: sum(&|p| p.traffic.receivers),
                mode: parts[0].traffic.mode.clone(),
                offered_rate: args.rate,
                seconds,
                requests: sum(&|p| p.traffic.requests),
                completed,
                ok,
                statuses,
                requests_per_second: completed as f64 / seconds.max(1e-9),
                ok_per_second: ok as f64 / seconds.max(1e-9),
                latency_us: Percentiles::of(&latency),
                latency_spectrum: SpectrumPoint::spectrum(&latency),
            },
            timeline: merged_timeline(
                parts.iter().map(|p| (&p.timeline[..], p.raw.as_ref())),
                &server_seconds,
            ),
            rss_by_connections,
            errors: ErrorsReport::merged(parts.iter().map(|p| &p.errors)),
            processes: args.processes,
            raw: None,
        }
    }
}
