//! The result of a run: one serializable struct (the JSON on stdout) and its
//! human summary (stderr). Every count is reported as measured; losses,
//! misroutes and errors are fields of their own, never folded into others.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{Args, Scenario};
use crate::tally::ErrorCount;

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: Scenario,
    /// The command-line parameters, as parsed.
    pub params: Args,
    pub connect: ConnectReport,
    /// Present when `--server-pid` was given.
    pub server: Option<ServerReport>,
    pub client: ClientReport,
    /// Present for scenarios that send.
    pub traffic: Option<TrafficReport>,
    /// Errors after identify: op 3 / op 8 texts, and connections lost.
    pub errors: ErrorsReport,
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct ServerReport {
    pub pid: u32,
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

#[derive(Debug, Serialize)]
pub struct ClientReport {
    pub workers: usize,
    pub rss_bytes: u64,
    /// This tool's own CPU time during traffic: near `workers × seconds`
    /// means the load generator, not the server, was the limit.
    pub cpu_traffic_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
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
    /// Send timestamp to receipt, per delivery.
    pub latency_us: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct ErrorsReport {
    pub count: u64,
    pub disconnects: u64,
    pub texts: Vec<ErrorCount>,
}

#[derive(Debug, Serialize)]
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

    fn line(&self) -> String {
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
        let _ = writeln!(s, "== singyeong-loadtest {} ==", self.scenario.name());
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
            let _ = writeln!(
                s,
                "server pid {}: RSS {:.1} MiB before, {:.1} MiB connected, {:.1} MiB at end; {:.0} bytes per connection",
                v.pid,
                mib(v.rss_before_bytes),
                mib(v.rss_connected_bytes),
                mib(v.rss_end_bytes),
                v.rss_per_connection_bytes
            );
            let _ = write!(s, "server CPU: {:.2} s connecting", v.cpu_connect_seconds);
            if let Some(t) = v.cpu_traffic_seconds {
                let _ = write!(s, ", {t:.2} s during traffic");
            }
            if let Some(per) = v.cpu_us_per_delivery {
                let _ = write!(s, " ({per:.2} µs per delivery)");
            }
            let _ = writeln!(s);
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
            if let Some(cpu) = self.client.cpu_traffic_seconds {
                let _ = writeln!(
                    s,
                    "  load generator CPU: {:.2} s on {} worker(s)",
                    cpu, self.client.workers
                );
            }
        }
        let e = &self.errors;
        let _ = writeln!(
            s,
            "errors: {} ({} connections lost)",
            e.count, e.disconnects
        );
        for t in &e.texts {
            let _ = writeln!(s, "  x{}: {}", t.count, t.text);
        }
        s
    }
}
