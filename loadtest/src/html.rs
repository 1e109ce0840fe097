//! The HTML report (`--html PATH`): one self-contained file, plots drawn as
//! inline SVG by this module, no scripts, styles or fonts fetched from
//! anywhere, so it opens the same offline, in a mail attachment or in CI
//! artifacts. Plots: the latency percentile spectrum, throughput and
//! latency over time, server CPU over time, and server RSS against
//! connections; then the summary and the full JSON result. Every scenario's
//! report describes what it has as a [`Page`].

use std::fmt::Write;

use crate::report::{Report, RssPoint, SpectrumPoint, TimelinePoint};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// How x values are laid out.
#[derive(Clone, Copy)]
pub enum XAxis {
    Linear,
    /// x is a percentile (0..100), drawn by its "nines": log10(1/(1 − p/100)).
    Nines,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A rounded step giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    }
}

/// A tick label: k/M suffixes for large values, and as many decimals as
/// the tick `step` needs, so one axis's labels share a format.
fn label(v: f64, step: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        let decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10()).ceil() as usize
        };
        format!("{v:.decimals$}")
    }
}

/// An SVG line chart; empty series give a chart saying "no data".
pub fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_axis: XAxis,
    series: &[Series],
) -> String {
    let map_x = |x: f64| match x_axis {
        XAxis::Linear => x,
        XAxis::Nines => -(1.0 - (x / 100.0).min(0.999_999)).log10(),
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(x, y)| (map_x(x), y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><text x="{cx}" y="18" text-anchor="middle" font-weight="bold">{t}</text>"#,
        t = escape(title),
        cx = WIDTH / 2.0
    );
    if all.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text></svg>"##,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &(x, _)| (a.min(x), b.max(x)));
    let y1 = all.iter().fold(0f64, |m, &(_, y)| m.max(y)) * 1.05;
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 };
    if matches!(x_axis, XAxis::Linear) {
        x0 = x0.min(0.0); // time and connection counts read best from 0
    }
    if x1 <= x0 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - y / y1 * ph;
    // Axes and grid.
    let _ = write!(
        svg,
        "<g font-size=\"11\" fill=\"#444\"><rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    let ystep = nice_step(y1, 5.0);
    let mut y = 0.0;
    while y <= y1 {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 5.0,
            py(y) + 4.0,
            label(y, ystep),
            yy = py(y)
        );
        y += ystep;
    }
    match x_axis {
        XAxis::Linear => {
            let xstep = nice_step(x1 - x0, 6.0);
            let mut x = (x0 / xstep).ceil() * xstep;
            while x <= x1 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    px(x),
                    TOP + ph + 15.0,
                    label(x, xstep)
                );
                x += xstep;
            }
        }
        XAxis::Nines => {
            for (n, text) in [
                (0.0, "0%"),
                (1.0, "90%"),
                (2.0, "99%"),
                (3.0, "99.9%"),
                (4.0, "99.99%"),
                (5.0, "99.999%"),
            ] {
                if n <= x1 + 1e-9 {
                    let _ = write!(
                        svg,
                        "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{text}</text>",
                        TOP + ph,
                        TOP + ph + 15.0,
                        xx = px(n)
                    );
                }
            }
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text></g>",
        LEFT + pw / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        TOP + ph / 2.0,
        escape(y_label)
    );
    // Lines and legend.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| (map_x(x), y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/><text x=\"{}\" y=\"{}\" fill=\"{color}\" font-size=\"12\">{}</text>",
            path.join(" "),
            LEFT + 8.0,
            TOP + 14.0 + 14.0 * i as f64,
            escape(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// What one report page shows; every scenario's report fills one.
pub struct Page<'a> {
    /// e.g. "queue against Singyeong".
    pub title: String,
    /// Whether traffic was sent: the spectrum and timeline charts are drawn
    /// only then.
    pub has_traffic: bool,
    pub spectrum_title: &'a str,
    /// Latency by percentile, one line per latency measured.
    pub spectra: Vec<(&'a str, &'a [SpectrumPoint])>,
    pub timeline: &'a [TimelinePoint],
    /// What the timeline's two rates count: (unit, first, second), e.g.
    /// ("messages / s", "sent", "delivered").
    pub rates: (&'a str, &'a str, &'a str),
    /// Which samples the per-second latency is of.
    pub latency_over_time_title: &'a str,
    pub rss_by_connections: &'a [RssPoint],
    pub summary: String,
}

/// The report page of the SEND/BROADCAST scenarios.
pub fn render(report: &Report, json: &str) -> String {
    page(
        &Page {
            title: format!("{} against {:?}", report.scenario.name(), report.target),
            has_traffic: report.traffic.is_some(),
            spectrum_title: "End-to-end latency by percentile",
            spectra: report
                .traffic
                .iter()
                .map(|t| ("latency", &t.latency_spectrum[..]))
                .collect(),
            timeline: &report.timeline,
            rates: ("messages / s", "sent", "delivered"),
            latency_over_time_title: "Latency over time (deliveries of each second)",
            rss_by_connections: &report.rss_by_connections,
            summary: report.summary(),
        },
        json,
    )
}

/// The whole page: charts, summary, and the JSON result.
pub fn page(p: &Page<'_>, json: &str) -> String {
    let mut charts = Vec::new();
    let over_time = |f: &dyn Fn(&TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        p.timeline.iter().map(|t| (t.t, f(t))).collect()
    };
    if p.has_traffic {
        let spectra: Vec<Series> = p
            .spectra
            .iter()
            .map(|(name, points)| Series {
                name,
                points: points
                    .iter()
                    .map(|s| (s.percentile, s.us as f64 / 1000.0))
                    .collect(),
            })
            .collect();
        charts.push(chart(
            p.spectrum_title,
            "percentile",
            "latency (ms)",
            XAxis::Nines,
            &spectra,
        ));
        let (unit, first, second) = p.rates;
        charts.push(chart(
            "Throughput over time",
            "seconds",
            unit,
            XAxis::Linear,
            &[
                Series {
                    name: first,
                    points: over_time(&|t| t.sent_per_second),
                },
                Series {
                    name: second,
                    points: over_time(&|t| t.delivered_per_second),
                },
            ],
        ));
        charts.push(chart(
            p.latency_over_time_title,
            "seconds",
            "latency (ms)",
            XAxis::Linear,
            &[
                Series {
                    name: "p50",
                    points: over_time(&|t| t.p50_us as f64 / 1000.0),
                },
                Series {
                    name: "p99",
                    points: over_time(&|t| t.p99_us as f64 / 1000.0),
                },
            ],
        ));
        if p.timeline.iter().any(|t| t.server_cpu_percent.is_some()) {
            charts.push(chart(
                "Server CPU over time",
                "seconds",
                "% of one core",
                XAxis::Linear,
                &[Series {
                    name: "server CPU",
                    points: p
                        .timeline
                        .iter()
                        .filter_map(|t| Some((t.t, t.server_cpu_percent?)))
                        .collect(),
                }],
            ));
        }
    }
    charts.push(chart(
        "Server RSS against connections",
        "identified connections",
        "RSS (MiB)",
        XAxis::Linear,
        &[Series {
            name: "server RSS",
            points: p
                .rss_by_connections
                .iter()
                .map(|r| (r.connections as f64, r.rss_bytes as f64 / 1048576.0))
                .collect(),
        }],
    ));
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>singyeong-loadtest: {t}</title>\
         <style>body{{font-family:sans-serif;max-width:1340px;margin:1em auto;color:#222}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}}svg{{border:1px solid #ddd;background:#fff}}\
         pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>\
         <h1>singyeong-loadtest: {t}</h1><div class=\"charts\">",
        t = escape(&p.title)
    );
    for c in &charts {
        html.push_str(c);
    }
    let _ = writeln!(
        html,
        "</div><h2>Summary</h2><pre>{}</pre><h2>Result (JSON)</h2><pre id=\"result\">{}</pre></body></html>",
        escape(&p.summary),
        escape(json)
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_inline_svg_without_fetches() {
        let c = chart(
            "t <1>",
            "x",
            "y",
            XAxis::Nines,
            &[Series {
                name: "a",
                points: vec![(0.0, 1.0), (90.0, 2.0), (99.9, 5.0), (100.0, 9.0)],
            }],
        );
        assert!(c.starts_with("<svg") && c.ends_with("</svg>"));
        assert!(c.contains("t &lt;1&gt;"));
        assert!(c.contains("99.9%"));
        assert!(!c.contains("http"));
        let empty = chart("e", "x", "y", XAxis::Linear, &[]);
        assert!(empty.contains("no data"));
    }

    #[test]
    fn labels_share_a_format() {
        assert_eq!(label(1.0, 0.2), "1.0");
        assert_eq!(label(0.4, 0.2), "0.4");
        assert_eq!(label(0.05, 0.05), "0.05");
        assert_eq!(label(200.0, 50.0), "200");
        assert_eq!(label(25_000.0, 5000.0), "25k");
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 1.0);
        assert!((nice_step(0.3, 6.0) - 0.05).abs() < 1e-12);
    }
}
