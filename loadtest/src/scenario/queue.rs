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
//! The scenario runs on its own (no shared sender loop): its connections
//! and phases live here, its result in [`report`]. With `--processes` every
//! worker QUEUEs into the same queue (`--queue-name`), each worker's
//! producers targeting its own consumers' application, so the server holds
//! one queue and each worker's counts stay exact.

mod report;

pub use report::{QueueConnect, QueueRunReport, QueueTraffic};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Args, Gateway, Scenario};
use crate::clock;
use crate::report::{Percentiles, Raw, SpectrumPoint};
use crate::tally::histogram;
use crate::timeline::Timeline;
use crate::traffic::{due, scheduled_ns};
use crate::wire::{self, Inbound};

use super::conn::{self, Conn, End, Errors};
use super::observe::Observer;
use super::{RunError, drain, loop_mode, run_id, secs};

/// The most QUEUEs one producer writes before it reads again.
const MAX_BATCH: u64 = 1024;

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
    errors: Errors,
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
            errors: Errors::default(),
            confirm_latency: Mutex::new(histogram()),
            latency: Mutex::new(histogram()),
            ids: Mutex::new(Ids::default()),
        }
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

/// Runs the queue scenario; every connection is closed before it returns.
pub async fn run(
    args: &Args,
    gateway: &Gateway,
    workers: usize,
) -> Result<QueueRunReport, RunError> {
    let server = super::resolve(gateway).await?;
    crate::fdlimit::ensure(args.total_connections() + super::SPARE_FDS)?;
    let run = args.run_id.clone().unwrap_or_else(run_id);
    let queue = crate::processes::queue_name(args, &run);
    // Per run (per worker): a worker's producers reach only its own
    // consumers, so its counts stay exact in a queue that workers share.
    let consumer_app = format!("{}-{run}-consumers", args.app_prefix);
    let producer_app = format!("{}-{run}-producers", args.app_prefix);
    let progress = !args.quiet;
    let tally = Arc::new(QueueTally::new());
    let mut observer = Observer::start(args).await?;

    // Connect: consumers, then producers.
    let shape = crate::identity::Shape::from_args(args);
    let auth = args.auth.as_deref();
    let identify = |client: String, app: &str, i: u32| {
        let packet = wire::identify(&client, app, auth, None, shape.metadata(u64::from(i)));
        (client, packet)
    };
    let mut opened = conn::connect(&mut observer, args, server, &gateway.url, || {
        [
            (0..args.connections)
                .map(|i| identify(format!("{run}-c{i}"), &consumer_app, i))
                .collect(),
            (0..args.senders)
                .map(|i| identify(format!("{run}-p{i}"), &producer_app, i))
                .collect(),
        ]
    })
    .await;
    let identified = opened.identified;
    tally.identified.store(identified, Relaxed);
    opened.check_every_group()?;
    if progress {
        eprintln!("{}", opened.progress_line());
    }
    let [consumers, producers] = std::mem::take(&mut opened.groups);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (n_producers, n_consumers) = (producers.len() as u64, consumers.len() as u64);
    let mut tasks = Vec::new();
    for session in consumers {
        let conn = Conn::new(session, stop_rx.clone());
        let (tally, queue) = (tally.clone(), queue.clone());
        let credits = args.credits;
        tasks.push(tokio::spawn(async move {
            consume(conn, &queue, credits, &tally).await;
        }));
    }
    tokio::time::sleep(args.idle()).await;
    observer.ready(identified).await?;

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
        let conn = Conn::new(session, stop_rx.clone());
        let (tally, plan) = (tally.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            produce(conn, &plan, &tally).await;
        }));
    }
    let (timeline, ended) = Timeline::record(
        &observer.probe,
        started,
        args.worker.is_some(),
        tokio::time::sleep_until(plan.deadline),
        || {
            let latency = tally.latency.lock().unwrap().clone();
            (tally.sent.load(Relaxed), tally.delivered.load(Relaxed), latency)
        },
        |point, sent, delivered| {
            if progress {
                eprintln!(
                    "traffic {:>5.1}s: sent {sent}, queued {}, delivered {delivered} ({:.0}/s), duplicates {}, p99 {:.2} ms, errors {}",
                    point.t,
                    tally.confirmed.load(Relaxed),
                    point.delivered_per_second,
                    tally.duplicates.load(Relaxed),
                    point.p99_us as f64 / 1000.0,
                    tally.errors.count.load(Relaxed),
                );
            }
        },
    )
    .await;
    let sent_for = ended - started;

    // Drain: every QUEUE confirmed (or refused) and every confirmed id delivered.
    let drained_for = drain(args.drain(), || tally.unconfirmed() > 0 || tally.lost() > 0).await;
    conn::stop_all(&stop_tx, tasks).await;

    let t = &tally;
    let (sent, queued) = (t.sent.load(Relaxed), t.confirmed.load(Relaxed));
    let delivered = t.delivered.load(Relaxed);
    let duplicates = t.duplicates.load(Relaxed);
    let observed = observer
        .finish(identified, Some(delivered), workers)
        .await?;
    let confirm_latency = t.confirm_latency.lock().unwrap().clone();
    let latency = t.latency.lock().unwrap().clone();
    let traffic = QueueTraffic {
        producers: n_producers,
        consumers: n_consumers,
        credits: args.credits,
        mode: loop_mode(args.rate),
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
        confirm_latency_us: Percentiles::of(&confirm_latency),
        latency_us: Percentiles::of(&latency),
        latency_spectrum: SpectrumPoint::spectrum(&latency),
        confirm_latency_spectrum: SpectrumPoint::spectrum(&confirm_latency),
    };
    Ok(QueueRunReport {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: Scenario::Queue,
        params: args.clone(),
        queue,
        connect: QueueConnect::of(&opened),
        server: observed.server,
        client: observed.client,
        traffic,
        rss_by_connections: observed.rss_by_connections,
        errors: t.errors.report(),
        processes: 1,
        raw: args.worker.map(|_| Raw {
            traffic_latency: Raw::pairs(&latency),
            confirm_latency: Raw::pairs(&confirm_latency),
            timeline_latency: timeline.histograms.clone(),
            ..Raw::default()
        }),
        timeline: timeline.points,
    })
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
            tally.errors.record(format!("unexpected op {op}"));
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
async fn produce(mut conn: Conn, plan: &Plan, tally: &QueueTally) {
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
                    if let Err(e) = conn.ws.feed(Message::text(frame.as_str())).await {
                        failed = Some(format!("websocket send: {e}"));
                        break;
                    }
                }
                tally.sent.fetch_add(n, Relaxed);
                if failed.is_none()
                    && let Err(e) = conn.ws.flush().await
                {
                    failed = Some(format!("websocket send: {e}"));
                }
                if let Some(e) = failed {
                    break End::Lost(e);
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
        match conn.next(wake_at).await {
            Ok(Some(text)) => {
                if let Err(e) = producer_packet(&text, &mut pending, tally) {
                    break End::Lost(e);
                }
            }
            Ok(None) => {}
            Err(end) => break end,
        }
    };
    conn.finish(end, &tally.errors).await;
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
            tally.errors.record(format!("undecodable packet: {e}"));
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
        tally
            .errors
            .record(format!("op 3: {}", packet.error_text()));
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
        tally
            .errors
            .record("QUEUE_CONFIRM for an unknown nonce".into());
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
async fn consume(mut conn: Conn, queue: &str, credits: u32, tally: &QueueTally) {
    let queue_json = serde_json::to_string(queue).expect("a string");
    let request = format!(r#"{{"op":4,"t":"QUEUE_REQUEST","d":{{"queue":{queue_json}}}}}"#);
    let ws = &mut conn.ws;
    let requested = async {
        for _ in 0..credits {
            ws.feed(Message::text(request.as_str())).await?;
        }
        ws.flush().await
    };
    let end = match requested.await {
        Err(e) => End::Lost(format!("websocket send: {e}")),
        Ok(()) => loop {
            match conn.next(None).await {
                Ok(Some(text)) => match consumer_packet(&text, tally) {
                    Ok(Some(id)) => {
                        let ack = format!(
                            r#"{{"op":4,"t":"QUEUE_ACK","d":{{"queue":{queue_json},"id":{}}}}}"#,
                            serde_json::to_string(&id).expect("a string")
                        );
                        let ws = &mut conn.ws;
                        let sent = async {
                            ws.feed(Message::text(ack)).await?;
                            ws.feed(Message::text(request.as_str())).await?;
                            ws.flush().await
                        };
                        if let Err(e) = sent.await {
                            break End::Lost(format!("websocket send: {e}"));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break End::Lost(e),
                },
                Ok(None) => {}
                Err(end) => break end,
            }
        },
    };
    conn.finish(end, &tally.errors).await;
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
            tally.errors.record(format!("undecodable packet: {e}"));
            return Ok(None);
        }
    };
    if let Some(r) = common_packet(&packet, tally) {
        return r.map(|()| None);
    }
    if packet.op == wire::OP_INVALID {
        tally
            .errors
            .record(format!("op 3: {}", packet.error_text()));
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
        assert_eq!(tally.errors.count.load(Relaxed), 1);
    }
}
