//! `queue`: `--senders` producers QUEUE messages into one queue named for
//! the run; the `-n` consumers each keep `--credits` QUEUE_REQUESTs
//! outstanding and, for every delivery, send QUEUE_ACK and a new
//! QUEUE_REQUEST (contract §6, §7).
//!
//! A producer keeps at most `--window` QUEUEs unconfirmed (closed loop: a
//! QUEUE_CONFIRM gives the slot back), or sends `--rate` / producers per
//! second on a fixed schedule (open loop). Each payload carries its send
//! time (the scheduled time in open loop), so the confirm latency (QUEUE to
//! QUEUE_CONFIRM) and the end-to-end latency (QUEUE to delivery) are both
//! measured. Delivery is at least once: a message id delivered twice is
//! counted as a duplicate; a confirmed id never delivered by the end of the
//! drain is lost.
//!
//! The scenario runs on its own (no shared sender loop, no `--processes`):
//! its connections, phases and [`QueueRunReport`] live here.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Args, Gateway, Scenario};
use crate::clock;
use crate::report::{ErrorsReport, Percentiles};
use crate::session::{self, Handshake, Session, Ws};
use crate::tally::{ErrorCount, counts, histogram};
use crate::traffic::{due, scheduled_ns};
use crate::wire::{self, Inbound};

use super::{RunError, run_id, secs};

/// The most QUEUEs one producer writes before it reads again.
const MAX_BATCH: u64 = 1024;
/// How long a connection gets to close politely at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bits of [`Ids`]: what has been seen of one message id.
const CONFIRMED: u8 = 1;
const DELIVERED: u8 = 2;

/// Message ids seen, and how many were both confirmed and delivered.
#[derive(Default)]
struct Ids {
    seen: HashMap<String, u8>,
    both: u64,
}

impl Ids {
    /// Marks `id` with `bit`; true when it had not been marked with it before.
    fn mark(&mut self, id: &str, bit: u8) -> bool {
        let flags = match self.seen.get_mut(id) {
            Some(f) => f,
            None => self.seen.entry(id.to_string()).or_insert(0),
        };
        if *flags & bit != 0 {
            return false;
        }
        *flags |= bit;
        if *flags == CONFIRMED | DELIVERED {
            self.both += 1;
        }
        true
    }
}

/// Counters shared by every producer and consumer.
struct QueueTally {
    identified: AtomicU64,
    sent: AtomicU64,
    confirmed: AtomicU64,
    /// QUEUEs the server refused (op 3 naming the nonce).
    refused: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    undecodable: AtomicU64,
    disconnects: AtomicU64,
    error_count: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    confirm_latency: Mutex<Histogram<u64>>,
    latency: Mutex<Histogram<u64>>,
    ids: Mutex<Ids>,
}

impl QueueTally {
    fn new() -> QueueTally {
        QueueTally {
            identified: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            confirm_latency: Mutex::new(histogram()),
            latency: Mutex::new(histogram()),
            ids: Mutex::new(Ids::default()),
        }
    }

    fn record_error(&self, text: String) {
        self.error_count.fetch_add(1, Relaxed);
        *self.errors.lock().unwrap().entry(text).or_insert(0) += 1;
    }

    fn record(h: &Mutex<Histogram<u64>>, micros: u64) {
        let _ = h.lock().unwrap().record(micros.max(1));
    }

    /// Sent QUEUEs neither confirmed nor refused yet.
    fn unconfirmed(&self) -> u64 {
        let settled = self.confirmed.load(Relaxed) + self.refused.load(Relaxed);
        self.sent.load(Relaxed).saturating_sub(settled)
    }

    /// Confirmed ids not delivered (yet).
    fn lost(&self) -> u64 {
        let both = self.ids.lock().unwrap().both;
        self.confirmed.load(Relaxed).saturating_sub(both)
    }
}

/// What every producer needs to know.
struct Plan {
    queue: String,
    /// The consumers' application, JSON-encoded with its quotes.
    target_app_json: String,
    pad: String,
    window: u64,
    /// Open loop: QUEUEs per second per producer.
    rate: Option<f64>,
    started_ns: u64,
    deadline: Instant,
}

/// The queue scenario's result: the JSON on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueRunReport {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub params: Args,
    /// The queue's name (unique per run).
    pub queue: String,
    pub connect: QueueConnect,
    pub traffic: QueueTraffic,
    pub errors: ErrorsReport,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueConnect {
    pub requested: u64,
    pub identified: u64,
    pub failed: u64,
    pub seconds: f64,
    pub errors: Vec<ErrorCount>,
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
}

impl QueueRunReport {
    /// The human summary, for stderr.
    pub fn summary(&self) -> String {
        let t = &self.traffic;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "queue {}: {}/{} identified in {:.2} s ({} producers, {} consumers x {} credits)",
            self.queue,
            self.connect.identified,
            self.connect.requested,
            self.connect.seconds,
            t.producers,
            t.consumers,
            t.credits
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
        self.errors.write_summary(&mut s);
        s
    }
}

/// Runs the queue scenario; every connection is closed before it returns.
pub async fn run(args: &Args, gateway: &Gateway) -> Result<QueueRunReport, RunError> {
    let server = super::resolve(gateway).await?;
    crate::fdlimit::ensure(args.total_connections() + 64)?;
    let run = args.run_id.clone().unwrap_or_else(run_id);
    let queue = format!("{}-{run}-queue", args.app_prefix);
    let consumer_app = format!("{}-{run}-consumers", args.app_prefix);
    let producer_app = format!("{}-{run}-producers", args.app_prefix);
    let progress = !args.quiet;
    let tally = Arc::new(QueueTally::new());

    // Connect: consumers, then producers.
    let connect_started = Instant::now();
    let sources: Vec<Option<std::net::IpAddr>> = if server.is_ipv4() {
        args.sources().into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let mut open_errors = BTreeMap::new();
    let shape = crate::identity::Shape::from_args(args);
    let identify = |client: String, app: &str, i: u32| {
        let packet = wire::identify(&client, app, shape.metadata(u64::from(i)));
        (client, packet)
    };
    let consumers = open_all(
        server,
        &gateway.url,
        &sources,
        args,
        (0..args.connections)
            .map(|i| identify(format!("{run}-c{i}"), &consumer_app, i))
            .collect(),
        &mut open_errors,
    )
    .await;
    let producers = open_all(
        server,
        &gateway.url,
        &sources,
        args,
        (0..args.senders)
            .map(|i| identify(format!("{run}-p{i}"), &producer_app, i))
            .collect(),
        &mut open_errors,
    )
    .await;
    let connect_seconds = secs(connect_started.elapsed());
    let requested = u64::from(args.connections) + u64::from(args.senders);
    let identified = (consumers.len() + producers.len()) as u64;
    tally.identified.store(identified, Relaxed);
    if consumers.is_empty() || producers.is_empty() {
        return Err(RunError::no_connections(&open_errors));
    }
    if progress {
        eprintln!("connect: {identified}/{requested} identified in {connect_seconds:.2} s");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (n_producers, n_consumers) = (producers.len() as u64, consumers.len() as u64);
    let mut tasks = Vec::new();
    for session in consumers {
        let (tally, stop, queue) = (tally.clone(), stop_rx.clone(), queue.clone());
        let credits = args.credits;
        tasks.push(tokio::spawn(async move {
            consume(session, &queue, credits, &tally, stop).await;
        }));
    }
    tokio::time::sleep(args.idle()).await;

    // Traffic.
    let started = Instant::now();
    let plan = Arc::new(Plan {
        queue: queue.clone(),
        target_app_json: serde_json::to_string(&consumer_app).expect("a string"),
        pad: wire::padding(args.payload_bytes as usize),
        window: u64::from(args.window),
        rate: args.rate.map(|r| r / n_producers as f64),
        started_ns: clock::now_ns(),
        deadline: started + args.duration(),
    });
    for session in producers {
        let (tally, stop, plan) = (tally.clone(), stop_rx.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            produce(session, &plan, &tally, stop).await;
        }));
    }
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(plan.deadline) => break,
            _ = tick.tick() => if progress {
                eprintln!(
                    "traffic {:>5.1}s: sent {}, queued {}, delivered {}, duplicates {}, errors {}",
                    started.elapsed().as_secs_f64(),
                    tally.sent.load(Relaxed),
                    tally.confirmed.load(Relaxed),
                    tally.delivered.load(Relaxed),
                    tally.duplicates.load(Relaxed),
                    tally.error_count.load(Relaxed),
                );
            },
        }
    }
    let sent_for = started.elapsed();

    // Drain: every QUEUE confirmed (or refused) and every confirmed id delivered.
    let drain_started = Instant::now();
    let drain_end = drain_started + args.drain();
    while (tally.unconfirmed() > 0 || tally.lost() > 0) && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_for = drain_started.elapsed();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, task).await;
    }

    let t = &tally;
    let (sent, queued) = (t.sent.load(Relaxed), t.confirmed.load(Relaxed));
    let delivered = t.delivered.load(Relaxed);
    let duplicates = t.duplicates.load(Relaxed);
    let traffic = QueueTraffic {
        producers: n_producers,
        consumers: n_consumers,
        credits: args.credits,
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        offered_rate: args.rate,
        seconds: secs(sent_for),
        drain_seconds: secs(drained_for),
        sent,
        queued,
        refused: t.refused.load(Relaxed),
        unconfirmed: t.unconfirmed(),
        delivered,
        delivered_distinct: delivered - duplicates,
        duplicates,
        lost: t.lost(),
        undecodable: t.undecodable.load(Relaxed),
        queued_per_second: queued as f64 / secs(sent_for).max(1e-9),
        delivered_per_second: delivered as f64 / secs(sent_for + drained_for).max(1e-9),
        confirm_latency_us: Percentiles::of(&t.confirm_latency.lock().unwrap()),
        latency_us: Percentiles::of(&t.latency.lock().unwrap()),
    };
    Ok(QueueRunReport {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: Scenario::Queue,
        params: args.clone(),
        queue,
        connect: QueueConnect {
            requested,
            identified,
            failed: requested - identified,
            seconds: connect_seconds,
            errors: counts(&open_errors),
        },
        traffic,
        errors: ErrorsReport {
            count: t.error_count.load(Relaxed),
            disconnects: t.disconnects.load(Relaxed),
            texts: counts(&t.errors.lock().unwrap()),
        },
    })
}

/// Opens one identified connection per (client id, identify packet), at
/// most `--connect-concurrency` at a time; failures are counted in `errors`.
pub(super) async fn open_all(
    server: SocketAddr,
    url: &str,
    sources: &[Option<std::net::IpAddr>],
    args: &Args,
    clients: Vec<(String, String)>,
    errors: &mut BTreeMap<String, u64>,
) -> Vec<Session> {
    let limit = Arc::new(Semaphore::new(args.connect_concurrency.max(1) as usize));
    let timeout = args.connect_timeout();
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (client_id, identify))| {
            let (limit, url) = (limit.clone(), url.to_string());
            let source = sources[i % sources.len()];
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.expect("never closed");
                let handshake = Handshake::Singyeong {
                    client_id,
                    identify,
                };
                match tokio::time::timeout(timeout, session::open(server, &url, source, handshake))
                    .await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(session::OpenError::Timeout.to_string()),
                }
            })
        })
        .collect();
    let mut sessions = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
            Err(e) => *errors.entry(format!("connect task: {e}")).or_insert(0) += 1,
        }
    }
    sessions
}

pub(super) fn heartbeat_timer(session: &Session) -> Option<tokio::time::Interval> {
    session.keepalive.as_ref().map(|k| {
        let first = k.interval.mul_f64(0.25 + 0.75 * fastrand::f64());
        let mut timer = tokio::time::interval_at(Instant::now() + first, k.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    })
}

pub(super) async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What one inbound frame means to a producer or a consumer.
pub(super) enum Read {
    Packet(String),
    Ignore,
    End(String),
}

pub(super) fn read(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
    match msg {
        Some(Ok(Message::Text(text))) => Read::Packet(text.as_str().to_string()),
        Some(Ok(Message::Close(frame))) => Read::End(frame.map_or_else(
            || "closed by the server (no close frame)".to_string(),
            |f| {
                format!(
                    "closed by the server (code {} {:?})",
                    f.code,
                    f.reason.as_str()
                )
            },
        )),
        Some(Ok(_)) => Read::Ignore,
        Some(Err(e)) => Read::End(format!("websocket: {e}")),
        None => Read::End("connection closed".into()),
    }
}

/// Handles the packets every connection may get; `Some(end)` for a packet
/// that ends the connection, `None` when it was dealt with or is a dispatch.
fn common_packet(packet: &Inbound<'_>, tally: &QueueTally) -> Option<Result<(), String>> {
    match packet.op {
        wire::OP_DISPATCH => None,
        wire::OP_HEARTBEAT_ACK => Some(Ok(())),
        wire::OP_INVALID => None,
        wire::OP_ERROR | wire::OP_GOODBYE => {
            Some(Err(format!("op {}: {}", packet.op, packet.error_text())))
        }
        op => {
            tally.record_error(format!("unexpected op {op}"));
            Some(Ok(()))
        }
    }
}

fn queue_frame(out: &mut String, plan: &Plan, nonce: u64, t: u64) {
    out.clear();
    let queue = serde_json::to_string(&plan.queue).expect("a string");
    let _ = write!(
        out,
        r#"{{"op":4,"t":"QUEUE","d":{{"queue":{queue},"target":{{"application":{}}},"nonce":{nonce},"payload":{{"t":{t},"p":"{}"}}}}}}"#,
        plan.target_app_json, plan.pad
    );
}

/// One producer: QUEUE within the window (or on schedule) until the
/// deadline, then wait for the outstanding confirms until stopped.
async fn produce(
    session: Session,
    plan: &Plan,
    tally: &QueueTally,
    mut stop: watch::Receiver<bool>,
) {
    let mut beat = heartbeat_timer(&session);
    let Session {
        mut ws, keepalive, ..
    } = session;
    // nonce -> the time stamped in its payload.
    let mut pending: HashMap<u64, u64> = HashMap::new();
    let mut nonce = 0u64;
    let mut frame = String::new();
    let end = loop {
        let sending = Instant::now() < plan.deadline;
        if sending {
            let now_ns = clock::now_ns();
            let n = match plan.rate {
                Some(rate) => due(now_ns.saturating_sub(plan.started_ns), rate, nonce),
                None => plan.window.saturating_sub(pending.len() as u64),
            }
            .min(MAX_BATCH);
            if n > 0 {
                let mut failed = None;
                for _ in 0..n {
                    let t = match plan.rate {
                        Some(rate) => plan.started_ns + scheduled_ns(nonce, rate),
                        None => clock::now_ns(),
                    };
                    queue_frame(&mut frame, plan, nonce, t);
                    pending.insert(nonce, t);
                    nonce += 1;
                    if let Err(e) = ws.feed(Message::text(frame.as_str())).await {
                        failed = Some(format!("websocket send: {e}"));
                        break;
                    }
                }
                tally.sent.fetch_add(n, Relaxed);
                if failed.is_none()
                    && let Err(e) = ws.flush().await
                {
                    failed = Some(format!("websocket send: {e}"));
                }
                if let Some(e) = failed {
                    break Some(e);
                }
            }
        }
        let wake_at = match (sending, plan.rate) {
            (false, _) => None,
            (true, None) => Some(plan.deadline),
            (true, Some(rate)) => {
                let at_ns = plan.started_ns + scheduled_ns(nonce, rate);
                let wait = Duration::from_nanos(at_ns.saturating_sub(clock::now_ns()));
                Some((Instant::now() + wait).min(plan.deadline))
            }
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break None,
            msg = ws.next() => match read(msg) {
                Read::Packet(text) => {
                    if let Err(e) = producer_packet(&text, &mut pending, tally) {
                        break Some(e);
                    }
                }
                Read::Ignore => {}
                Read::End(e) => break Some(e),
            },
            _ = tick(beat.as_mut()) => {
                let packet = keepalive.as_ref().expect("timer only with keepalive").packet.clone();
                if let Err(e) = ws.send(Message::Text(packet)).await {
                    break Some(format!("heartbeat send: {e}"));
                }
            }
            _ = sleep_until(wake_at) => {}
        }
    };
    match end {
        None => close(ws).await,
        Some(e) => {
            tally.disconnects.fetch_add(1, Relaxed);
            tally.record_error(e);
        }
    }
}

fn producer_packet(
    text: &str,
    pending: &mut HashMap<u64, u64>,
    tally: &QueueTally,
) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Confirm<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
        nonce: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Refused<'a> {
        #[serde(borrow)]
        extra_info: Option<&'a RawValue>,
    }
    let packet = match Inbound::parse(text) {
        Ok(p) => p,
        Err(e) => {
            tally.record_error(format!("undecodable packet: {e}"));
            return Ok(());
        }
    };
    if let Some(r) = common_packet(&packet, tally) {
        return r;
    }
    if packet.op == wire::OP_INVALID {
        // extra_info is the refused packet: its nonce frees the slot.
        let nonce = packet
            .d
            .and_then(|d| serde_json::from_str::<Refused>(d.get()).ok())
            .and_then(|r| r.extra_info)
            .and_then(|e| serde_json::from_str::<serde_json::Value>(e.get()).ok())
            .and_then(|v| v["d"]["nonce"].as_u64());
        match nonce {
            Some(n) => {
                if pending.remove(&n).is_some() {
                    tally.refused.fetch_add(1, Relaxed);
                }
            }
            // A refusal that does not name the packet (queue_full): the
            // server answers a connection's QUEUEs in order, so it is for
            // the oldest one still pending; free that slot.
            None => {
                if let Some(&oldest) = pending.keys().min() {
                    pending.remove(&oldest);
                    tally.refused.fetch_add(1, Relaxed);
                }
            }
        }
        tally.record_error(format!("op 3: {}", packet.error_text()));
        return Ok(());
    }
    if packet.t.as_deref() != Some("QUEUE_CONFIRM") {
        return Ok(());
    }
    let confirm = packet
        .d
        .and_then(|d| serde_json::from_str::<Confirm>(d.get()).ok());
    let Some(Confirm {
        id,
        nonce: Some(nonce),
    }) = confirm
    else {
        tally.undecodable.fetch_add(1, Relaxed);
        return Ok(());
    };
    let Some(t) = pending.remove(&nonce) else {
        tally.record_error("QUEUE_CONFIRM for an unknown nonce".into());
        return Ok(());
    };
    QueueTally::record(
        &tally.confirm_latency,
        clock::now_ns().saturating_sub(t) / 1000,
    );
    tally.confirmed.fetch_add(1, Relaxed);
    tally.ids.lock().unwrap().mark(&id, CONFIRMED);
    Ok(())
}

/// One consumer: `credits` QUEUE_REQUESTs up front, then QUEUE_ACK and a
/// new QUEUE_REQUEST per delivery, until stopped.
async fn consume(
    session: Session,
    queue: &str,
    credits: u32,
    tally: &QueueTally,
    mut stop: watch::Receiver<bool>,
) {
    let mut beat = heartbeat_timer(&session);
    let Session {
        mut ws, keepalive, ..
    } = session;
    let queue_json = serde_json::to_string(queue).expect("a string");
    let request = format!(r#"{{"op":4,"t":"QUEUE_REQUEST","d":{{"queue":{queue_json}}}}}"#);
    let mut end = None;
    for _ in 0..credits {
        if let Err(e) = ws.feed(Message::text(request.as_str())).await {
            end = Some(format!("websocket send: {e}"));
            break;
        }
    }
    if end.is_none()
        && let Err(e) = ws.flush().await
    {
        end = Some(format!("websocket send: {e}"));
    }
    let end = match end {
        Some(e) => Some(e),
        None => loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break None,
                msg = ws.next() => match read(msg) {
                    Read::Packet(text) => match consumer_packet(&text, tally) {
                        Ok(Some(id)) => {
                            let ack = format!(
                                r#"{{"op":4,"t":"QUEUE_ACK","d":{{"queue":{queue_json},"id":{}}}}}"#,
                                serde_json::to_string(&id).expect("a string")
                            );
                            let sent = async {
                                ws.feed(Message::text(ack)).await?;
                                ws.feed(Message::text(request.as_str())).await?;
                                ws.flush().await
                            };
                            if let Err(e) = sent.await {
                                break Some(format!("websocket send: {e}"));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => break Some(e),
                    },
                    Read::Ignore => {}
                    Read::End(e) => break Some(e),
                },
                _ = tick(beat.as_mut()) => {
                    let packet = keepalive.as_ref().expect("timer only with keepalive").packet.clone();
                    if let Err(e) = ws.send(Message::Text(packet)).await {
                        break Some(format!("heartbeat send: {e}"));
                    }
                }
            }
        },
    };
    match end {
        None => close(ws).await,
        Some(e) => {
            tally.disconnects.fetch_add(1, Relaxed);
            tally.record_error(e);
        }
    }
}

/// A consumer's packet: `Ok(Some(id))` for a QUEUE delivery to acknowledge.
fn consumer_packet(text: &str, tally: &QueueTally) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    struct Stamp {
        t: u64,
    }
    #[derive(Deserialize)]
    struct Inner {
        id: String,
        payload: Stamp,
    }
    #[derive(Deserialize)]
    struct Delivery {
        payload: Inner,
    }
    let packet = match Inbound::parse(text) {
        Ok(p) => p,
        Err(e) => {
            tally.record_error(format!("undecodable packet: {e}"));
            return Ok(None);
        }
    };
    if let Some(r) = common_packet(&packet, tally) {
        return r.map(|()| None);
    }
    if packet.op == wire::OP_INVALID {
        tally.record_error(format!("op 3: {}", packet.error_text()));
        return Ok(None);
    }
    if packet.t.as_deref() != Some("QUEUE") {
        return Ok(None);
    }
    let Some(Delivery {
        payload: Inner { id, payload },
    }) = packet
        .d
        .and_then(|d| serde_json::from_str::<Delivery>(d.get()).ok())
    else {
        tally.undecodable.fetch_add(1, Relaxed);
        return Ok(None);
    };
    tally.delivered.fetch_add(1, Relaxed);
    if tally.ids.lock().unwrap().mark(&id, DELIVERED) {
        QueueTally::record(
            &tally.latency,
            clock::now_ns().saturating_sub(payload.t) / 1000,
        );
    } else {
        tally.duplicates.fetch_add(1, Relaxed);
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_count_confirmed_and_delivered_once() {
        let mut ids = Ids::default();
        assert!(ids.mark("1", DELIVERED), "a delivery may beat its confirm");
        assert_eq!(ids.both, 0);
        assert!(ids.mark("1", CONFIRMED));
        assert_eq!(ids.both, 1);
        assert!(!ids.mark("1", DELIVERED), "a duplicate");
        assert!(ids.mark("2", CONFIRMED));
        assert_eq!(ids.both, 1);
    }

    #[test]
    fn queue_frame_is_the_contract_packet() {
        let plan = Plan {
            queue: "lt-x-queue".into(),
            target_app_json: "\"lt-x-consumers\"".into(),
            pad: "xx".into(),
            window: 1,
            rate: None,
            started_ns: 0,
            deadline: Instant::now(),
        };
        let mut out = String::new();
        queue_frame(&mut out, &plan, 7, 123);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"op":4,"t":"QUEUE","d":{"queue":"lt-x-queue",
                "target":{"application":"lt-x-consumers"},"nonce":7,
                "payload":{"t":123,"p":"xx"}}})
        );
    }

    #[test]
    fn confirm_and_delivery_are_counted() {
        let tally = QueueTally::new();
        let mut pending = HashMap::from([(7, 1)]);
        let confirm =
            r#"{"op":4,"t":"QUEUE_CONFIRM","ts":1,"d":{"queue":"q","id":"42","nonce":7}}"#;
        producer_packet(confirm, &mut pending, &tally).unwrap();
        assert!(pending.is_empty());
        assert_eq!(tally.confirmed.load(Relaxed), 1);
        assert_eq!(tally.lost(), 1);
        let delivery = r#"{"op":4,"t":"QUEUE","ts":1,"d":{"nonce":7,"payload":{"queue":"q","id":"42","payload":{"t":1,"p":""}}}}"#;
        assert_eq!(
            consumer_packet(delivery, &tally).unwrap().as_deref(),
            Some("42")
        );
        assert_eq!(tally.lost(), 0);
        consumer_packet(delivery, &tally).unwrap();
        assert_eq!(tally.duplicates.load(Relaxed), 1);
        assert_eq!(tally.delivered.load(Relaxed), 2);
        // A refused QUEUE frees its slot.
        let mut pending = HashMap::from([(9, 1)]);
        let refused = r#"{"op":3,"t":null,"ts":1,"d":{"error":"queue_full","extra_info":{"op":4,"t":"QUEUE","d":{"nonce":9}}}}"#;
        producer_packet(refused, &mut pending, &tally).unwrap();
        assert!(pending.is_empty());
        assert_eq!(tally.refused.load(Relaxed), 1);
        assert_eq!(tally.error_count.load(Relaxed), 1);
    }
}
