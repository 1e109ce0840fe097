//! The queue scenario's result: its JSON, its human summary, its HTML page,
//! and the merge of `--processes` workers' results into one.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::args::{Args, Scenario};
use crate::html::{self, Page};
use crate::processes::{Gathered, merged_timeline};
use crate::report::{
    ClientReport, ErrorsReport, Percentiles, Raw, RssPoint, ServerReport, SpectrumPoint,
    TimelinePoint,
};
use crate::scenario::conn::Opened;
use crate::tally::{ErrorCount, counts, merge_counts};

/// The queue scenario's result: the JSON on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueRunReport {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub params: Args,
    /// The queue's name (unique per run unless --queue-name).
    pub queue: String,
    pub connect: QueueConnect,
    /// Present with --server-pid or --metrics-url; `cpu_us_per_delivery`
    /// is per delivery read by a consumer.
    pub server: Option<ServerReport>,
    pub client: ClientReport,
    pub traffic: QueueTraffic,
    /// Server RSS sampled while connections were being opened.
    pub rss_by_connections: Vec<RssPoint>,
    /// One point per second of sending: QUEUEs sent, deliveries read, and
    /// the end-to-end latency of that second's first deliveries.
    pub timeline: Vec<TimelinePoint>,
    pub errors: ErrorsReport,
    /// `--processes`: how many worker processes made this result.
    pub processes: u32,
    /// Only in a worker's result to its coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Raw>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueConnect {
    pub requested: u64,
    pub identified: u64,
    pub failed: u64,
    pub seconds: f64,
    pub errors: Vec<ErrorCount>,
}

impl QueueConnect {
    /// This process's connect phase (queue and proxy).
    pub(in crate::scenario) fn of<const N: usize>(opened: &Opened<N>) -> QueueConnect {
        QueueConnect {
            requested: opened.requested,
            identified: opened.identified,
            failed: opened.requested - opened.identified,
            seconds: opened.seconds,
            errors: counts(&opened.errors),
        }
    }

    /// The workers' connect phases as one (queue and proxy): counts add
    /// up, the connect time is the longest; `identified` is the
    /// coordinator's count.
    pub(crate) fn merged<'a>(
        parts: impl Iterator<Item = &'a QueueConnect> + Clone,
        identified: u64,
    ) -> QueueConnect {
        let requested: u64 = parts.clone().map(|c| c.requested).sum();
        QueueConnect {
            requested,
            identified,
            failed: requested.saturating_sub(identified),
            seconds: parts.clone().map(|c| c.seconds).fold(0.0, f64::max),
            errors: merge_counts(parts.map(|c| &c.errors)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueTraffic {
    pub producers: u64,
    pub consumers: u64,
    pub credits: u32,
    /// "closed" (--window unconfirmed QUEUEs per producer) or "open" (--rate).
    pub mode: String,
    pub offered_rate: Option<f64>,
    pub seconds: f64,
    pub drain_seconds: f64,
    /// QUEUEs sent.
    pub sent: u64,
    /// QUEUEs confirmed (QUEUE_CONFIRM received): the messages queued.
    pub queued: u64,
    /// QUEUEs the server refused (op 3).
    pub refused: u64,
    /// Sent, neither confirmed nor refused by the end.
    pub unconfirmed: u64,
    /// Deliveries read, duplicates included.
    pub delivered: u64,
    /// Distinct message ids delivered.
    pub delivered_distinct: u64,
    /// Deliveries of an id already delivered (allowed: at least once).
    pub duplicates: u64,
    /// Confirmed ids never delivered by the end of the drain.
    pub lost: u64,
    pub undecodable: u64,
    pub queued_per_second: f64,
    pub delivered_per_second: f64,
    /// QUEUE to QUEUE_CONFIRM.
    pub confirm_latency_us: Percentiles,
    /// QUEUE to its first delivery.
    pub latency_us: Percentiles,
    /// `latency_us` at percentiles from 0 to 99.999.
    pub latency_spectrum: Vec<SpectrumPoint>,
    /// `confirm_latency_us` at percentiles from 0 to 99.999.
    pub confirm_latency_spectrum: Vec<SpectrumPoint>,
}

impl QueueRunReport {
    /// The human summary, for stderr.
    pub fn summary(&self) -> String {
        let t = &self.traffic;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "queue {}: {}/{} identified in {:.2} s ({} producers, {} consumers x {} credits, {} process{})",
            self.queue,
            self.connect.identified,
            self.connect.requested,
            self.connect.seconds,
            t.producers,
            t.consumers,
            t.credits,
            self.processes,
            if self.processes == 1 { "" } else { "es" }
        );
        let _ = writeln!(
            s,
            "sent {} queued {} refused {} unconfirmed {} in {:.2} s ({:.0}/s); delivered {} ({} distinct, {} duplicates, {:.0}/s), lost {}",
            t.sent,
            t.queued,
            t.refused,
            t.unconfirmed,
            t.seconds,
            t.queued_per_second,
            t.delivered,
            t.delivered_distinct,
            t.duplicates,
            t.delivered_per_second,
            t.lost
        );
        for (name, p) in [
            ("confirm", &t.confirm_latency_us),
            ("end to end", &t.latency_us),
        ] {
            let _ = writeln!(s, "{name} latency: {}", p.line());
        }
        if let Some(v) = &self.server {
            v.write_summary(&mut s, "delivery");
        }
        self.client.write_summary(&mut s);
        self.errors.write_summary(&mut s);
        s
    }

    /// The HTML report.
    pub fn html(&self, json: &str) -> String {
        let t = &self.traffic;
        html::page(
            &Page {
                title: format!("queue {}", self.queue),
                has_traffic: true,
                spectrum_title: "Queue latency by percentile",
                spectra: vec![
                    ("QUEUE to first delivery", &t.latency_spectrum[..]),
                    ("QUEUE to QUEUE_CONFIRM", &t.confirm_latency_spectrum[..]),
                ],
                timeline: &self.timeline,
                rates: ("messages / s", "QUEUEs sent", "deliveries read"),
                latency_over_time_title: "Latency over time (first deliveries of each second)",
                rss_by_connections: &self.rss_by_connections,
                summary: self.summary(),
            },
            json,
        )
    }

    /// One result from the workers' results: counts add up, percentiles
    /// (per second too) come from the merged histograms, the server's
    /// section from the coordinator's samples.
    pub(crate) fn merge(args: &Args, gathered: Gathered<QueueRunReport>) -> QueueRunReport {
        let Gathered {
            parts,
            probe,
            samples,
            rss_by_connections,
            identified,
            server_seconds,
        } = gathered;
        let sum = |f: &dyn Fn(&QueueRunReport) -> u64| parts.iter().map(f).sum::<u64>();
        let max = |f: &dyn Fn(&QueueRunReport) -> f64| parts.iter().map(f).fold(0.0, f64::max);
        let raws = || parts.iter().filter_map(|p| p.raw.as_ref());
        let latency = Raw::merged(raws(), |r| &r.traffic_latency);
        let confirm = Raw::merged(raws(), |r| &r.confirm_latency);
        let (seconds, drain) = (
            max(&|p| p.traffic.seconds),
            max(&|p| p.traffic.drain_seconds),
        );
        let (queued, delivered) = (sum(&|p| p.traffic.queued), sum(&|p| p.traffic.delivered));
        let first = &parts[0];
        let traffic = QueueTraffic {
            producers: sum(&|p| p.traffic.producers),
            consumers: sum(&|p| p.traffic.consumers),
            credits: first.traffic.credits,
            mode: first.traffic.mode.clone(),
            offered_rate: args.rate,
            seconds,
            drain_seconds: drain,
            sent: sum(&|p| p.traffic.sent),
            queued,
            refused: sum(&|p| p.traffic.refused),
            unconfirmed: sum(&|p| p.traffic.unconfirmed),
            delivered,
            delivered_distinct: sum(&|p| p.traffic.delivered_distinct),
            duplicates: sum(&|p| p.traffic.duplicates),
            lost: sum(&|p| p.traffic.lost),
            undecodable: sum(&|p| p.traffic.undecodable),
            queued_per_second: queued as f64 / seconds.max(1e-9),
            delivered_per_second: delivered as f64 / (seconds + drain).max(1e-9),
            confirm_latency_us: Percentiles::of(&confirm),
            latency_us: Percentiles::of(&latency),
            latency_spectrum: SpectrumPoint::spectrum(&latency),
            confirm_latency_spectrum: SpectrumPoint::spectrum(&confirm),
        };
        QueueRunReport {
            tool: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scenario: Scenario::Queue,
            params: args.clone(),
            queue: first.queue.clone(),
            connect: QueueConnect::merged(parts.iter().map(|p| &p.connect), identified),
            server: crate::scenario::server_report(
                &probe,
                &args.server_pid,
                samples,
                identified,
                Some(delivered),
            ),
            client: ClientReport::merged(parts.iter().map(|p| &p.client)),
            timeline: merged_timeline(
                parts.iter().map(|p| (&p.timeline[..], p.raw.as_ref())),
                &server_seconds,
            ),
            traffic,
            rss_by_connections,
            errors: ErrorsReport::merged(parts.iter().map(|p| &p.errors)),
            processes: args.processes,
            raw: None,
        }
    }
}
