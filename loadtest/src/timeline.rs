//! The per-second record of a run's traffic: what was sent and delivered in
//! each second, the latency of that second's deliveries, and the server's
//! RSS and CPU. Every scenario keeps one. A `--processes` worker also keeps
//! each second's latency histogram, so that its coordinator can merge the
//! workers' seconds into exact percentiles instead of bounds.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, Interval};

use crate::procstat::Sample;
use crate::report::{Raw, TimelinePoint};
use crate::scenario::Probe;
use crate::tally;

/// The shortest part second [`Timeline::finish`] adds a point for: shorter
/// ones would report rates from too few samples.
const MIN_LAST_POINT: Duration = Duration::from_millis(250);

pub struct Timeline {
    started: Instant,
    last_at: Instant,
    last_sent: u64,
    last_delivered: u64,
    last_latency: Histogram<u64>,
    last_server: Option<Sample>,
    keep_histograms: bool,
    pub points: Vec<TimelinePoint>,
    /// Each point's latency histogram as (value, count) pairs; kept only
    /// when asked (a worker sends them to its coordinator).
    pub histograms: Vec<Vec<(u64, u64)>>,
}

impl Timeline {
    /// Starts the record at `started`, with a first server sample to
    /// measure the first second's CPU against.
    pub(crate) async fn start(probe: &Probe, started: Instant, keep_histograms: bool) -> Timeline {
        Timeline {
            started,
            last_at: Instant::now(),
            last_sent: 0,
            last_delivered: 0,
            last_latency: tally::histogram(),
            last_server: probe.sample().await.ok().flatten(),
            keep_histograms,
            points: Vec::new(),
            histograms: Vec::new(),
        }
    }

    /// Ticks once a second from one second after the start.
    pub fn ticks(&self) -> Interval {
        tokio::time::interval_at(
            self.started + Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    /// Adds the point for the second that just ended, from the running
    /// totals `sent` and `delivered` and the run's whole latency histogram
    /// so far (this second's part is what it gained since the last tick).
    pub(crate) async fn tick(
        &mut self,
        probe: &Probe,
        sent: u64,
        delivered: u64,
        latency: Histogram<u64>,
    ) -> &TimelinePoint {
        let seconds = self.last_at.elapsed().as_secs_f64().max(1e-3);
        self.last_at = Instant::now();
        let mut recent = latency.clone();
        // Same bounds, and `latency` only grows: the subtraction cannot fail.
        let _ = recent.subtract(&self.last_latency);
        self.last_latency = latency;
        // A failed sample mid-run leaves a gap; the samples that matter
        // (before, idle, end) are checked by the caller.
        let server = probe.sample().await.ok().flatten();
        let cpu = match (&self.last_server, &server) {
            (Some(a), Some(b)) => Some(b.cpu.saturating_sub(a.cpu).as_secs_f64() * 100.0 / seconds),
            _ => None,
        };
        self.last_server = server;
        let (p50_us, p99_us) = quantiles(&recent);
        self.points.push(TimelinePoint {
            t: self.started.elapsed().as_secs_f64(),
            sent_per_second: sent.saturating_sub(self.last_sent) as f64 / seconds,
            delivered_per_second: delivered.saturating_sub(self.last_delivered) as f64 / seconds,
            p50_us,
            p99_us,
            server_rss_bytes: server.map(|s| s.rss_bytes),
            server_cpu_percent: cpu,
        });
        if self.keep_histograms {
            self.histograms.push(Raw::pairs(&recent));
        }
        (self.last_sent, self.last_delivered) = (sent, delivered);
        self.points.last().expect("just pushed")
    }
}

impl Timeline {
    /// Keeps the timeline of a run from `started` until `until` completes:
    /// a point a second, then one for the part second at the end. `totals`
    /// reads the running totals (sent, delivered, the latency histogram so
    /// far); `each` sees every point with them as it is made (the live
    /// progress line). Returns the timeline and when `until` completed.
    pub(crate) async fn record(
        probe: &Probe,
        started: Instant,
        keep_histograms: bool,
        until: impl Future<Output = ()>,
        totals: impl Fn() -> (u64, u64, Histogram<u64>),
        mut each: impl FnMut(&TimelinePoint, u64, u64),
    ) -> (Timeline, Instant) {
        let mut timeline = Timeline::start(probe, started, keep_histograms).await;
        let mut tick = timeline.ticks();
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => break,
                _ = tick.tick() => {
                    let (sent, delivered, latency) = totals();
                    let point = timeline.tick(probe, sent, delivered, latency).await;
                    each(point, sent, delivered);
                }
            }
        }
        let ended = Instant::now();
        let (sent, delivered, latency) = totals();
        timeline.finish(probe, sent, delivered, latency).await;
        (timeline, ended)
    }

    /// Adds a point for the part second since the last tick, when it is
    /// long enough to say something (a run of 1.5 s gets two points, not
    /// one; a run of 1 s whose last tick raced its end gets one, not none).
    pub(crate) async fn finish(
        &mut self,
        probe: &Probe,
        sent: u64,
        delivered: u64,
        latency: Histogram<u64>,
    ) {
        if self.last_at.elapsed() >= MIN_LAST_POINT {
            self.tick(probe, sent, delivered, latency).await;
        }
    }
}

fn quantiles(h: &Histogram<u64>) -> (u64, u64) {
    if h.is_empty() {
        (0, 0)
    } else {
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }
}

/// One worker's timeline: its points and each point's latency histogram.
pub struct Part<'a> {
    pub points: &'a [TimelinePoint],
    pub histograms: &'a [Vec<(u64, u64)>],
}

/// The workers' timelines merged second by second (workers start on the
/// same GO, so their n-th seconds coincide): rates add up, p50 and p99 come
/// from the merged histograms of that second, and the server's RSS and CPU
/// from `server`, the coordinator's own per-second samples.
pub fn merge(parts: &[Part<'_>], server: &[TimelinePoint]) -> Vec<TimelinePoint> {
    let seconds = parts.iter().map(|p| p.points.len()).max().unwrap_or(0);
    (0..seconds)
        .map(|i| {
            let mut h = tally::histogram();
            let mut point = TimelinePoint {
                t: 0.0,
                sent_per_second: 0.0,
                delivered_per_second: 0.0,
                p50_us: 0,
                p99_us: 0,
                server_rss_bytes: server.get(i).and_then(|s| s.server_rss_bytes),
                server_cpu_percent: server.get(i).and_then(|s| s.server_cpu_percent),
            };
            for part in parts {
                let Some(p) = part.points.get(i) else {
                    continue;
                };
                point.t = point.t.max(p.t);
                point.sent_per_second += p.sent_per_second;
                point.delivered_per_second += p.delivered_per_second;
                if let Some(pairs) = part.histograms.get(i) {
                    Raw::add(&mut h, pairs);
                }
            }
            (point.p50_us, point.p99_us) = quantiles(&h);
            point
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, sent: f64) -> TimelinePoint {
        TimelinePoint {
            t,
            sent_per_second: sent,
            delivered_per_second: sent,
            p50_us: 0,
            p99_us: 0,
            server_rss_bytes: None,
            server_cpu_percent: None,
        }
    }

    #[test]
    fn merged_seconds_have_exact_percentiles() {
        // Worker A: 99 fast deliveries in second 0; worker B: 99 slow ones.
        // The upper bound of the per-worker p50s would say 1000 µs; the
        // merged histogram's p50 is the fast half's.
        let fast: Vec<(u64, u64)> = vec![(10, 99)];
        let slow: Vec<(u64, u64)> = vec![(1000, 98)];
        let (a, b) = ([point(1.0, 99.0)], [point(1.01, 98.0), point(2.0, 5.0)]);
        let (ha, hb) = ([fast], [slow, vec![(50, 5)]]);
        let merged = merge(
            &[
                Part {
                    points: &a,
                    histograms: &ha,
                },
                Part {
                    points: &b,
                    histograms: &hb,
                },
            ],
            &[TimelinePoint {
                server_cpu_percent: Some(40.0),
                server_rss_bytes: Some(7),
                ..point(1.0, 0.0)
            }],
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].sent_per_second, 197.0);
        assert_eq!(merged[0].t, 1.01);
        assert_eq!(merged[0].p50_us, 10);
        assert!(merged[0].p99_us >= 1000 && merged[0].p99_us < 1001);
        assert_eq!(merged[0].server_cpu_percent, Some(40.0));
        assert_eq!(merged[0].server_rss_bytes, Some(7));
        assert_eq!(merged[1].p50_us, 50);
        assert_eq!(merged[1].server_cpu_percent, None);
    }
}
