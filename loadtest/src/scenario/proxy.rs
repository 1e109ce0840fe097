//! `proxy`: HTTP requests through the server's `POST /api/v1/proxy`
//! (contract §9) to an upstream named by its websocket clients.
//!
//! The `-n` receivers identify with `ip` = the upstream's address: a small
//! HTTP/1.1 keep-alive server this tool starts on 127.0.0.1 (it answers
//! every request `200` with a fixed small body), or `--upstream host:port`.
//! The `--senders` are HTTP/1.1 keep-alive connections to the server, each
//! POSTing `{"method":"GET","route":"/","query":{"application":<app>}}` with
//! one request in flight (closed loop; `--window` does not apply), or on a
//! fixed schedule at `--rate` / senders per second (open loop, latency from
//! the scheduled time). Any status but 200 is an error. With `--auth` the
//! receivers identify with the password and every request carries it as
//! its `Authorization` header.
//!
//! With `--processes` the workers' receivers share one application
//! (`--proxy-app`), each naming its own worker's upstream, so a request
//! from any worker may be relayed through any worker's receiver; requests
//! are counted by the sender that made them, so the counts stay exact.
//! The HTTP itself is in [`http`], the result in [`report`].

mod http;
mod report;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::args::{Args, Gateway, Scenario};
use crate::clock;
use crate::report::{Percentiles, Raw, SpectrumPoint};
use crate::tally::histogram;
use crate::timeline::Timeline;
use crate::traffic::scheduled_ns;
use crate::wire;

pub use self::http::UPSTREAM_BODY;
use self::http::{HttpConn, upstream_server};
pub use self::report::{ProxyRunReport, ProxyTraffic};
use super::conn::{self, Conn, Errors};
use super::observe::Observer;
use super::queue::QueueConnect;
use super::{RunError, loop_mode, run_id, secs};

/// A proxied request that takes longer is an error (the server's own
/// default proxy timeout is 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);

struct ProxyTally {
    requests: AtomicU64,
    completed: AtomicU64,
    ok: AtomicU64,
    errors: Errors,
    statuses: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<Histogram<u64>>,
}

/// Runs the proxy scenario; every connection is closed before it returns.
pub async fn run(
    args: &Args,
    gateway: &Gateway,
    workers: usize,
) -> Result<ProxyRunReport, RunError> {
    let server = super::resolve(gateway).await?;
    crate::fdlimit::ensure(args.total_connections() + super::SPARE_FDS)?;
    let run = args.run_id.clone().unwrap_or_else(run_id);
    let app = crate::processes::proxy_app(args, &run);
    let progress = !args.quiet;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut observer = Observer::start(args).await?;

    let served = Arc::new(AtomicU64::new(0));
    let upstream = match &args.upstream {
        Some(u) => u.clone(),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| RunError::Upstream(e.to_string()))?;
            let addr = listener
                .local_addr()
                .map_err(|e| RunError::Upstream(e.to_string()))?;
            tokio::spawn(upstream_server(listener, served.clone(), stop_rx.clone()));
            addr.to_string()
        }
    };

    let shape = crate::identity::Shape::from_args(args);
    let mut opened = conn::connect(&mut observer, args, server, &gateway.url, || {
        [(0..args.connections)
            .map(|i| {
                let client = format!("{run}-u{i}");
                let identify = wire::identify(
                    &client,
                    &app,
                    args.auth.as_deref(),
                    Some(&upstream),
                    shape.metadata(u64::from(i)),
                );
                (client, identify)
            })
            .collect()]
    })
    .await;
    let identified = opened.identified;
    opened.check_every_group()?;
    if progress {
        eprintln!("{}", opened.progress_line());
    }
    let [receivers] = std::mem::take(&mut opened.groups);
    let tally = Arc::new(ProxyTally {
        requests: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: Errors::default(),
        statuses: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(histogram()),
    });
    let mut idle = Vec::new();
    for session in receivers {
        let conn = Conn::new(session, stop_rx.clone());
        let tally = tally.clone();
        idle.push(tokio::spawn(async move {
            stay(conn, &tally.errors).await;
        }));
    }
    tokio::time::sleep(args.idle()).await;
    observer.ready(identified).await?;

    // Traffic: each sender runs until the deadline and finishes its request.
    let request = Arc::new(proxy_request(gateway, &app, args.auth.as_deref()));
    let started = Instant::now();
    let started_ns = clock::now_ns();
    let deadline = started + args.duration();
    let rate = args.rate.map(|r| r / f64::from(args.senders.max(1)));
    let mut senders = Vec::new();
    for _ in 0..args.senders {
        let (tally, request) = (tally.clone(), request.clone());
        senders.push(tokio::spawn(async move {
            send_loop(server, &request, rate, started_ns, deadline, &tally).await;
        }));
    }
    let all_done = async {
        for s in senders {
            let _ = s.await;
        }
    };
    let (timeline, ended) = Timeline::record(
        &observer.probe,
        started,
        args.worker.is_some(),
        all_done,
        || {
            let latency = tally.latency.lock().unwrap().clone();
            (tally.requests.load(Relaxed), tally.completed.load(Relaxed), latency)
        },
        |point, requests, completed| {
            if progress {
                eprintln!(
                    "traffic {:>5.1}s: requests {requests}, answered {completed} ({:.0}/s), ok {}, p99 {:.2} ms, errors {}",
                    point.t,
                    point.delivered_per_second,
                    tally.ok.load(Relaxed),
                    point.p99_us as f64 / 1000.0,
                    tally.errors.count.load(Relaxed),
                );
            }
        },
    )
    .await;
    let sent_for = ended - started;
    if args.worker.is_some() {
        // Other workers' requests may still be relayed through this
        // worker's receivers and upstream: keep them up until all are done.
        crate::processes::sent_and_wait().await?;
    }
    conn::stop_all(&stop_tx, idle).await;

    let t = &tally;
    let (completed, ok) = (t.completed.load(Relaxed), t.ok.load(Relaxed));
    let observed = observer
        .finish(identified, Some(completed), workers)
        .await?;
    let seconds = secs(sent_for).max(1e-9);
    let latency = t.latency.lock().unwrap().clone();
    Ok(ProxyRunReport {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: Scenario::Proxy,
        params: args.clone(),
        app,
        upstream_served: args.upstream.is_none().then(|| served.load(Relaxed)),
        upstream,
        connect: QueueConnect::of(&opened),
        server: observed.server,
        client: observed.client,
        traffic: ProxyTraffic {
            senders: u64::from(args.senders),
            receivers: identified,
            mode: loop_mode(rate),
            offered_rate: args.rate,
            seconds: secs(sent_for),
            requests: t.requests.load(Relaxed),
            completed,
            ok,
            statuses: t
                .statuses
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            requests_per_second: completed as f64 / seconds,
            ok_per_second: ok as f64 / seconds,
            latency_us: Percentiles::of(&latency),
            latency_spectrum: SpectrumPoint::spectrum(&latency),
        },
        rss_by_connections: observed.rss_by_connections,
        errors: t.errors.report(),
        processes: 1,
        raw: args.worker.map(|_| Raw {
            traffic_latency: Raw::pairs(&latency),
            timeline_latency: timeline.histograms.clone(),
            ..Raw::default()
        }),
        timeline: timeline.points,
    })
}

/// The request every sender repeats: `POST /api/v1/proxy` for `GET /` on
/// one client of `app`, with the server's password (contract §9) when the
/// run has one.
fn proxy_request(gateway: &Gateway, app: &str, auth: Option<&str>) -> String {
    let body = json!({"method": "GET", "route": "/", "query": {"application": app}}).to_string();
    let authorization = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    format!(
        "POST /api/v1/proxy HTTP/1.1\r\nHost: {}:{}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        gateway.host,
        gateway.port,
        body.len()
    )
}

/// A receiver: heartbeats, and reads (and ignores) what it gets, until stopped.
async fn stay(mut conn: Conn, errors: &Errors) {
    let end = loop {
        if let Err(end) = conn.next(None).await {
            break end;
        }
    };
    conn.finish(end, errors).await;
}

/// One sender connection: a request at a time until the deadline.
async fn send_loop(
    server: SocketAddr,
    request: &str,
    rate: Option<f64>,
    started_ns: u64,
    deadline: Instant,
    tally: &ProxyTally,
) {
    let mut conn: Option<HttpConn> = None;
    let mut k = 0u64;
    loop {
        let t = match rate {
            Some(rate) => {
                let at = started_ns + scheduled_ns(k, rate);
                let wait = Duration::from_nanos(at.saturating_sub(clock::now_ns()));
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
                at
            }
            None => {
                if Instant::now() >= deadline {
                    break;
                }
                clock::now_ns()
            }
        };
        k += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match TcpStream::connect(server).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    conn.insert(HttpConn {
                        stream,
                        buf: Vec::new(),
                    })
                }
                Err(e) => {
                    tally.errors.record(format!("tcp connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        tally.requests.fetch_add(1, Relaxed);
        match tokio::time::timeout(REQUEST_TIMEOUT, c.exchange(request.as_bytes())).await {
            Ok(Ok((status, keep))) => {
                let micros = clock::now_ns().saturating_sub(t) / 1000;
                let _ = tally.latency.lock().unwrap().record(micros.max(1));
                tally.completed.fetch_add(1, Relaxed);
                *tally.statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                if status == 200 {
                    tally.ok.fetch_add(1, Relaxed);
                } else {
                    tally.errors.record(format!("status {status}"));
                }
                if !keep {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                tally.errors.lost(e);
                conn = None;
            }
            Err(_) => {
                tally
                    .errors
                    .record(format!("no response within {REQUEST_TIMEOUT:?}"));
                conn = None;
            }
        }
    }
}
