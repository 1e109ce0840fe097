//! The result of a run: one serializable struct (the JSON on stdout) and its
//! human summary (stderr). Every count is reported as measured; losses,
//! misroutes and errors are fields of their own, never folded into others.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::{Args, Scenario, TargetKind};
use crate::tally::ErrorCount;

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub target: TargetKind,
    /// The command-line parameters, as parsed.
    pub params: Args,
    pub connect: ConnectReport,
    /// Present when `--server-pid` was given.
    pub server: Option<ServerReport>,
    pub client: ClientReport,
    /// Present for scenarios that send.
    pub traffic: Option<TrafficReport>,
    /// Present for the churn scenario.
    pub churn: Option<ChurnReport>,
    /// Server RSS sampled while connections were being opened (and once
    /// idle): what RSS against connections looks like.
    pub rss_by_connections: Vec<RssPoint>,
    /// One point per second of traffic.
    pub timeline: Vec<TimelinePoint>,
    /// Present when --plan-cores and --plan-memory-gib were given.
    pub plan: Option<crate::plan::Plan>,
    /// Errors after identify: op 3 / op 8 texts, and connections lost.
    pub errors: ErrorsReport,
    /// `--processes`: how many worker processes made this result.
    pub processes: u32,
    /// Only in a worker's result to its coordinator: the histograms, so
    /// merged percentiles are exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Raw>,
}

/// Histograms as (value, count) pairs, from a worker to its coordinator;
/// each report fills the ones it has.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Raw {
    #[serde(default)]
    pub connect_latency: Vec<(u64, u64)>,
    #[serde(default)]
    pub traffic_latency: Vec<(u64, u64)>,
    #[serde(default)]
    pub schedule_lag: Vec<(u64, u64)>,
    #[serde(default)]
    pub reconnect_latency: Vec<(u64, u64)>,
    /// Queue: QUEUE to QUEUE_CONFIRM.
    #[serde(default)]
    pub confirm_latency: Vec<(u64, u64)>,
    /// One histogram per timeline point: the latency of that second.
    #[serde(default)]
    pub timeline_latency: Vec<Vec<(u64, u64)>>,
}

impl Raw {
    pub fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Adds `pairs` into `h`.
    pub fn add(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
        for &(value, count) in pairs {
            let _ = h.record_n(value.max(1), count);
        }
    }

    /// The histogram of every part's `pick`.
    pub fn merged<'a>(
        parts: impl IntoIterator<Item = &'a Raw>,
        pick: impl Fn(&Raw) -> &Vec<(u64, u64)>,
    ) -> Histogram<u64> {
        let mut h = crate::tally::histogram();
        for raw in parts {
            Raw::add(&mut h, pick(raw));
        }
        h
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectReport {
    pub requested: u64,
    pub identified: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Identified connections per second over the connect phase.
    pub per_second: f64,
    /// TCP connect to ready, per connection.
    pub latency_us: Percentiles,
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServerReport {
    /// "proc" (`--server-pid`) or "metrics" (`--metrics-url`).
    pub source: String,
    /// The server's PID (one `--server-pid`).
    pub pid: Option<u32>,
    /// Several `--server-pid` (the nodes of a cluster): every figure below
    /// is their sum (RSS, CPU), and `pid` is null.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    pub rss_before_bytes: u64,
    /// With every connection identified and idle.
    pub rss_connected_bytes: u64,
    pub rss_end_bytes: u64,
    /// (rss_connected − rss_before) / identified connections.
    pub rss_per_connection_bytes: f64,
    pub cpu_connect_seconds: f64,
    pub cpu_traffic_seconds: Option<f64>,
    /// Server CPU time per delivered message during traffic.
    pub cpu_us_per_delivery: Option<f64>,
}

impl ServerReport {
    /// The server's lines of a human summary; `per` names what the CPU per
    /// message is counted per ("delivery", "request").
    pub fn write_summary(&self, s: &mut String, per: &str) {
        let who = match (self.pid, &self.pids[..]) {
            (Some(p), _) => format!("pid {p}"),
            (None, []) => "(metrics)".to_string(),
            (None, pids) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("pids {} (summed)", list.join("+"))
            }
        };
        let _ = writeln!(
            s,
            "server {}: RSS {:.1} MiB before, {:.1} MiB connected, {:.1} MiB at end; {:.0} bytes per connection",
            who,
            mib(self.rss_before_bytes),
            mib(self.rss_connected_bytes),
            mib(self.rss_end_bytes),
            self.rss_per_connection_bytes
        );
        let _ = write!(
            s,
            "server CPU: {:.2} s connecting",
            self.cpu_connect_seconds
        );
        if let Some(t) = self.cpu_traffic_seconds {
            let _ = write!(s, ", {t:.2} s during traffic");
        }
        if let Some(us) = self.cpu_us_per_delivery {
            let _ = write!(s, " ({us:.2} µs per {per})");
        }
        let _ = writeln!(s);
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClientReport {
    pub workers: usize,
    pub rss_bytes: u64,
    /// This tool's own CPU time during traffic: near `workers × seconds`
    /// means the load generator, not the server, was the limit.
    pub cpu_traffic_seconds: Option<f64>,
}

impl ClientReport {
    /// Worker processes' sections as one: threads, RSS and CPU added up.
    pub fn merged<'a>(parts: impl Iterator<Item = &'a ClientReport>) -> ClientReport {
        let mut merged = ClientReport {
            workers: 0,
            rss_bytes: 0,
            cpu_traffic_seconds: None,
        };
        for c in parts {
            merged.workers += c.workers;
            merged.rss_bytes += c.rss_bytes;
            if let Some(cpu) = c.cpu_traffic_seconds {
                *merged.cpu_traffic_seconds.get_or_insert(0.0) += cpu;
            }
        }
        merged
    }

    /// The load generator's line of a human summary, when its CPU is known.
    pub fn write_summary(&self, s: &mut String) {
        if let Some(cpu) = self.cpu_traffic_seconds {
            let _ = writeln!(
                s,
                "load generator CPU: {cpu:.2} s on {} worker thread(s)",
                self.workers
            );
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TrafficReport {
    pub senders: u32,
    pub receivers: u64,
    /// From the start signal until every sender stopped.
    pub seconds: f64,
    /// Time spent waiting for outstanding deliveries after sending stopped.
    pub drain_seconds: f64,
    pub sent: u64,
    /// Deliveries the sent messages should produce (sent × fanout).
    pub expected: u64,
    pub delivered: u64,
    /// expected − delivered after the drain (negative: more delivered than expected).
    pub lost: i64,
    pub misrouted: u64,
    pub undecodable: u64,
    pub sent_per_second: f64,
    pub delivered_per_second: f64,
    /// Send timestamp to receipt, per delivery (open loop: from the time
    /// the message was scheduled to be sent).
    pub latency_us: Percentiles,
    /// "closed" (window of outstanding messages) or "open" (fixed rate).
    pub mode: String,
    /// Open loop: the rate asked for, messages per second in total.
    pub offered_rate: Option<f64>,
    /// Open loop: how late messages left against their schedule; this
    /// tool's own share of `latency_us`.
    pub schedule_lag_us: Option<Percentiles>,
    /// Group: receivers matched by each target, on average (K).
    pub group_members: Option<f64>,
    /// Latency at percentiles from 0 to 99.999 (tenths of a "nine").
    pub latency_spectrum: Vec<SpectrumPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpectrumPoint {
    pub percentile: f64,
    pub us: u64,
}

impl SpectrumPoint {
    /// Points at 1 − 10^(−k/10) for k = 0..=50, up to the largest the
    /// sample count can resolve.
    pub fn spectrum(h: &Histogram<u64>) -> Vec<SpectrumPoint> {
        if h.is_empty() {
            return Vec::new();
        }
        let mut points = Vec::new();
        for k in 0..=50 {
            let q = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
            if k > 0 && (1.0 - q) * (h.len() as f64) < 1.0 {
                break;
            }
            points.push(SpectrumPoint {
                percentile: q * 100.0,
                us: h.value_at_quantile(q),
            });
        }
        points.push(SpectrumPoint {
            percentile: 100.0,
            us: h.max(),
        });
        points
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssPoint {
    pub connections: u64,
    pub rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since traffic started.
    pub t: f64,
    pub sent_per_second: f64,
    pub delivered_per_second: f64,
    /// Latency of the deliveries in this second.
    pub p50_us: u64,
    pub p99_us: u64,
    pub server_rss_bytes: Option<u64>,
    /// Server CPU use over this second, in percent of one core.
    pub server_cpu_percent: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChurnReport {
    /// Disconnects asked per second.
    pub rate: f64,
    /// Receivers disconnected by the churner.
    pub kicked: u64,
    /// Of those, reconnected and ready again.
    pub reconnected: u64,
    /// Reconnects that failed (the error texts are under `errors`).
    pub reconnect_failed: u64,
    /// Deliveries read between a receiver's close and the server's close frame.
    pub delivered_while_closing: u64,
    /// Close start to ready again.
    pub reconnect_latency_us: Percentiles,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorsReport {
    pub count: u64,
    pub disconnects: u64,
    pub texts: Vec<ErrorCount>,
}

impl ErrorsReport {
    /// Worker processes' errors as one.
    pub fn merged<'a>(parts: impl Iterator<Item = &'a ErrorsReport> + Clone) -> ErrorsReport {
        ErrorsReport {
            count: parts.clone().map(|e| e.count).sum(),
            disconnects: parts.clone().map(|e| e.disconnects).sum(),
            texts: crate::tally::merge_counts(parts.map(|e| &e.texts)),
        }
    }

    /// The errors part of every scenario's human summary.
    pub fn write_summary(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "errors: {} ({} connections lost)",
            self.count, self.disconnects
        );
        for t in &self.texts {
            let _ = writeln!(s, "  x{}: {}", t.count, t.text);
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// One human line: p50, p99, p999 and max in ms, and the sample count.
    pub fn line(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms ({} samples)",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// The human summary, several lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.connect;
        let _ = writeln!(
            s,
            "== singyeong-loadtest {} against {:?} ({} process{}) ==",
            self.scenario.name(),
            self.target,
            self.processes,
            if self.processes == 1 { "" } else { "es" }
        );
        let nodes = self.params.url.len();
        if nodes > 1 {
            let _ = writeln!(
                s,
                "nodes: {nodes} (receiver id % {nodes}, sender index % {nodes}), placement {}",
                self.params.placement.name()
            );
        }
        let _ = writeln!(
            s,
            "connect: {}/{} identified, {} failed in {:.2} s ({:.0}/s); {}",
            c.identified,
            c.requested,
            c.failed,
            c.seconds,
            c.per_second,
            c.latency_us.line()
        );
        for e in &c.errors {
            let _ = writeln!(s, "  connect error x{}: {}", e.count, e.text);
        }
        if let Some(v) = &self.server {
            v.write_summary(&mut s, "delivery");
        }
        if let Some(t) = &self.traffic {
            let _ = writeln!(
                s,
                "traffic: {} senders -> {} receivers for {:.2} s (+{:.2} s drain)",
                t.senders, t.receivers, t.seconds, t.drain_seconds
            );
            let _ = writeln!(
                s,
                "  sent {} ({:.0}/s), delivered {} of {} expected ({:.0}/s), lost {}, misrouted {}",
                t.sent,
                t.sent_per_second,
                t.delivered,
                t.expected,
                t.delivered_per_second,
                t.lost,
                t.misrouted
            );
            let _ = writeln!(s, "  latency: {}", t.latency_us.line());
            if let (Some(rate), Some(lag)) = (t.offered_rate, &t.schedule_lag_us) {
                let _ = writeln!(
                    s,
                    "  open loop at {rate:.0}/s; send lag behind schedule: {}",
                    lag.line()
                );
            }
            if let Some(k) = t.group_members {
                let _ = writeln!(s, "  group: {k:.1} receivers match each target");
            }
            if let Some(cpu) = self.client.cpu_traffic_seconds {
                let _ = writeln!(
                    s,
                    "  load generator CPU: {:.2} s on {} worker(s)",
                    cpu, self.client.workers
                );
            }
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                s,
                "churn at {:.0}/s: {} disconnected, {} reconnected, {} reconnects failed; {} deliveries read while closing; reconnect {}",
                c.rate,
                c.kicked,
                c.reconnected,
                c.reconnect_failed,
                c.delivered_while_closing,
                c.reconnect_latency_us.line()
            );
        }
        if let Some(p) = &self.plan {
            s.push_str(&p.summary());
        }
        self.errors.write_summary(&mut s);
        s
    }
}
