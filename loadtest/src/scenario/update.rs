//! `update`: the `-n` clients each send UPDATE_METADATA (contract §4, §6)
//! that moves indexed values on every update: an integer `load` (the
//! update's number) and a list `rooms` of [`ROOMS`] small integers of which
//! one element changes per update.
//!
//! The server answers nothing to a valid update, so throughput is measured
//! in closed loop with a probe: a client writes `--window` updates and then
//! a SEND to itself whose target matches only the metadata the last of
//! them set (`/id`, `/load` and `/rooms $contains` the room it just
//! joined), and waits for that SEND to come back before the next batch.
//! The server reads a connection's frames in order and an update is
//! visible to every query that starts after it was read (contract §4), so
//! the probe's delivery means the server has applied every update before
//! it. A probe answered `no_route` means an update was not visible when it
//! should have been: counted as `stale`, and its batch's updates are not
//! counted as applied.
//!
//! What this measures: updates applied per second over all clients, and
//! server CPU per applied update (`server.cpu_us_per_delivery`). The
//! probes are part of the load (one targeted SEND per `--window` updates),
//! so their routing is inside that CPU figure; a larger window dilutes it.
//! A client has one batch in flight at a time: `-n` is the concurrency.
//!
//! The scenario runs on its own, like `queue`: its connections and phases
//! live here; it has no open loop (`--rate`) and no `--processes`.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Args, Gateway, Scenario};
use crate::clock;
use crate::html::{self, Page};
use crate::identity::Shape;
use crate::report::{
    ClientReport, ErrorsReport, Percentiles, RssPoint, ServerReport, SpectrumPoint, TimelinePoint,
};
use crate::tally::{ErrorCount, counts, histogram};
use crate::timeline::Timeline;
use crate::wire::{self, Inbound};

use super::conn::{self, Conn, End, Errors};
use super::observe::Observer;
use super::{RunError, drain, run_id, secs};

/// Length of the `rooms` list.
pub const ROOMS: u64 = 4;
/// Distinct room numbers (0 .. ROOM_VALUES-1).
const ROOM_VALUES: u64 = 1000;

/// The metadata after update number `u` of client `id`. Updates are
/// numbered from [`ROOMS`] (the identify carries the state "after" updates
/// 0 .. ROOMS-1): update `u` sets `load = u` and `rooms[u % ROOMS] =
/// room(id, u)`, so every update moves the `load` index entry and one
/// `rooms` membership.
pub fn room(id: u64, u: u64) -> u64 {
    (id + u) % ROOM_VALUES
}

/// `rooms` after update `u`: element `j` holds the room of the last update
/// `v ≤ u` with `v % ROOMS == j`.
pub fn rooms(id: u64, u: u64) -> Vec<u64> {
    (0..ROOMS)
        .map(|j| {
            let back = (u + ROOMS - j) % ROOMS;
            room(id, u - back)
        })
        .collect()
}

/// The identify metadata: the usual shape ([`Shape::metadata`]) plus `load`
/// and `rooms` as after update `ROOMS - 1`.
pub fn initial_metadata(shape: &Shape, id: u64) -> serde_json::Value {
    let mut m = shape.metadata(id);
    let u = ROOMS - 1;
    m["load"] = serde_json::json!({"type": "integer", "value": u});
    m["rooms"] = serde_json::json!({"type": "list", "value": rooms(id, u)});
    m
}

/// Writes update `u` of client `id`: `{"op":4,"t":"UPDATE_METADATA","d":{"load":..,"rooms":..}}`.
pub fn update_frame(out: &mut String, id: u64, u: u64) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"op":4,"t":"UPDATE_METADATA","d":{{"load":{{"type":"integer","value":{u}}},"rooms":{{"type":"list","value":["#
    );
    for (j, r) in rooms(id, u).into_iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        let _ = write!(out, "{r}");
    }
    out.push_str("]}}}");
}

/// Writes the probe after update `u`: a SEND whose target matches client
/// `id` only once update `u` is applied; the payload carries `u` and the
/// send time.
pub fn probe_frame(out: &mut String, app_json: &str, id: u64, u: u64, t: u64) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"op":4,"t":"SEND","d":{{"target":{{"application":{app_json},"ops":[{{"path":"/id","op":"$eq","to":{{"value":{id}}}}},{{"path":"/load","op":"$eq","to":{{"value":{u}}}}},{{"path":"/rooms","op":"$contains","to":{{"value":{}}}}}]}},"nonce":{u},"payload":{{"t":{t},"u":{u}}}}}}}"#,
        room(id, u)
    );
}

/// Counters shared by every client.
struct UpdateTally {
    /// UPDATE_METADATA frames written.
    sent: AtomicU64,
    /// Updates covered by a probe that came back: applied.
    applied: AtomicU64,
    probes: AtomicU64,
    /// Probes answered no_route: an update not visible when it should be.
    stale: AtomicU64,
    /// Updates of the batches whose probe was answered no_route.
    stale_updates: AtomicU64,
    undecodable: AtomicU64,
    errors: Errors,
    /// Batch round trip: first update written to the probe's delivery, µs.
    latency: Mutex<Histogram<u64>>,
}

impl UpdateTally {
    fn new() -> UpdateTally {
        UpdateTally {
            sent: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            stale_updates: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            errors: Errors::default(),
            latency: Mutex::new(histogram()),
        }
    }

    /// Sent updates whose probe has not come back.
    fn outstanding(&self) -> u64 {
        let settled = self.applied.load(Relaxed) + self.stale_updates.load(Relaxed);
        self.sent.load(Relaxed).saturating_sub(settled)
    }
}

/// What every client needs to know.
struct Plan {
    app_json: String,
    window: u64,
    deadline: Instant,
}

/// The batch a client has in flight.
struct Batch {
    /// The last update of the batch, the one the probe checks.
    last: u64,
    updates: u64,
    started_ns: u64,
}

/// What a probe's answer said.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The probe came back carrying update `u`.
    Delivered {
        u: u64,
    },
    /// The probe matched nothing.
    NoRoute,
    /// Another op 3 (an update refused: "invalid metadata", ...).
    Invalid(String),
    /// Heartbeat ack, or a dispatch that is not ours to count.
    Other,
    /// The server is closing the connection.
    End(String),
    Undecodable(String),
}

fn answer(text: &str) -> Answer {
    #[derive(Deserialize)]
    struct Payload {
        u: u64,
    }
    #[derive(Deserialize)]
    struct Delivery {
        payload: Payload,
    }
    let packet = match Inbound::parse(text) {
        Ok(p) => p,
        Err(e) => return Answer::Undecodable(e.to_string()),
    };
    match packet.op {
        wire::OP_DISPATCH if packet.t.as_deref() == Some("SEND") => {
            match packet
                .d
                .and_then(|d| serde_json::from_str::<Delivery>(d.get()).ok())
            {
                Some(d) => Answer::Delivered { u: d.payload.u },
                None => Answer::Undecodable("SEND without a probe payload".into()),
            }
        }
        wire::OP_DISPATCH | wire::OP_HEARTBEAT_ACK => Answer::Other,
        wire::OP_INVALID => match packet.error_text().as_str() {
            "no_route" => Answer::NoRoute,
            e => Answer::Invalid(e.to_string()),
        },
        wire::OP_ERROR | wire::OP_GOODBYE => {
            Answer::End(format!("op {}: {}", packet.op, packet.error_text()))
        }
        op => Answer::Invalid(format!("unexpected op {op}")),
    }
}

/// Runs the update scenario; every connection is closed before it returns.
pub async fn run(
    args: &Args,
    gateway: &Gateway,
    workers: usize,
) -> Result<UpdateRunReport, RunError> {
    let server = super::resolve(gateway).await?;
    crate::fdlimit::ensure(u64::from(args.connections) + super::SPARE_FDS)?;
    let run = args.run_id.clone().unwrap_or_else(run_id);
    let app = format!("{}-{run}-updaters", args.app_prefix);
    let progress = !args.quiet;
    let tally = Arc::new(UpdateTally::new());
    let mut observer = Observer::start(args).await?;

    // Connect.
    let shape = Shape::from_args(args);
    let auth = args.auth.as_deref();
    // The connect phase keeps the order of the clients it was given, less
    // failures; each session's id is recovered from its position below.
    let mut opened = conn::connect(&mut observer, args, server, &gateway.url, || {
        [(0..args.connections)
            .map(|i| {
                let client = format!("{run}-u{i}");
                let metadata = initial_metadata(&shape, u64::from(i));
                let packet = wire::identify(&client, &app, auth, None, metadata);
                (client, packet)
            })
            .collect()]
    })
    .await;
    let (requested, identified) = (opened.requested, opened.identified);
    opened.check_every_group()?;
    if !opened.errors.is_empty() {
        // A client's metadata id is its position among the clients asked
        // for; with failures the sessions no longer say whose they are.
        return Err(RunError::NotAllIdentified {
            identified,
            requested,
            first: RunError::first_errors(&opened.errors),
        });
    }
    if progress {
        eprintln!("{}", opened.progress_line());
    }
    let [sessions] = std::mem::take(&mut opened.groups);
    tokio::time::sleep(args.idle()).await;
    observer.ready(identified).await?;

    // Traffic.
    let started = Instant::now();
    let plan = Arc::new(Plan {
        app_json: serde_json::to_string(&app).expect("a string"),
        window: u64::from(args.window),
        deadline: started + args.duration(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, session)| {
            let conn = Conn::new(session, stop_rx.clone());
            let (tally, plan) = (tally.clone(), plan.clone());
            tokio::spawn(async move { update(conn, i as u64, &plan, &tally).await })
        })
        .collect();
    let (timeline, ended) = Timeline::record(
        &observer.probe,
        started,
        false,
        tokio::time::sleep_until(plan.deadline),
        || {
            let latency = tally.latency.lock().unwrap().clone();
            (tally.sent.load(Relaxed), tally.applied.load(Relaxed), latency)
        },
        |point, sent, applied| {
            if progress {
                eprintln!(
                    "traffic {:>5.1}s: updates sent {sent}, applied {applied} ({:.0}/s), stale {}, p99 batch {:.2} ms, errors {}",
                    point.t,
                    point.delivered_per_second,
                    tally.stale.load(Relaxed),
                    point.p99_us as f64 / 1000.0,
                    tally.errors.count.load(Relaxed),
                );
            }
        },
    )
    .await;
    let sent_for = ended - started;

    // Drain: every batch's probe back.
    let drained_for = drain(args.drain(), || tally.outstanding() > 0).await;
    conn::stop_all(&stop_tx, tasks).await;

    let t = &tally;
    let (sent, applied) = (t.sent.load(Relaxed), t.applied.load(Relaxed));
    let observed = observer.finish(identified, Some(applied), workers).await?;
    let latency = t.latency.lock().unwrap().clone();
    let traffic = UpdateTraffic {
        clients: identified,
        window: args.window,
        seconds: secs(sent_for),
        drain_seconds: secs(drained_for),
        sent,
        applied,
        probes: t.probes.load(Relaxed),
        stale: t.stale.load(Relaxed),
        outstanding: t.outstanding(),
        undecodable: t.undecodable.load(Relaxed),
        updates_per_second: applied as f64 / secs(sent_for + drained_for).max(1e-9),
        batch_latency_us: Percentiles::of(&latency),
        batch_latency_spectrum: SpectrumPoint::spectrum(&latency),
    };
    Ok(UpdateRunReport {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: Scenario::Update,
        params: args.clone(),
        application: app,
        // Not QueueConnect: no `failed`, every client identified or the
        // run stopped above.
        connect: UpdateConnect {
            requested,
            identified,
            seconds: opened.seconds,
            errors: counts(&opened.errors),
        },
        server: observed.server,
        client: observed.client,
        traffic,
        rss_by_connections: observed.rss_by_connections,
        timeline: timeline.points,
        errors: t.errors.report(),
    })
}

/// One client: a batch of `window` updates and its probe, wait for the
/// probe, again, until the deadline; then wait to be stopped.
async fn update(mut conn: Conn, id: u64, plan: &Plan, tally: &UpdateTally) {
    let mut next = ROOMS;
    let mut batch: Option<Batch> = None;
    let mut frame = String::new();
    let end = loop {
        if batch.is_none() && Instant::now() < plan.deadline {
            let started_ns = clock::now_ns();
            let ws = &mut conn.ws;
            let sent = async {
                for u in next..next + plan.window {
                    update_frame(&mut frame, id, u);
                    ws.feed(Message::text(frame.as_str())).await?;
                }
                let last = next + plan.window - 1;
                probe_frame(&mut frame, &plan.app_json, id, last, started_ns);
                ws.feed(Message::text(frame.as_str())).await?;
                ws.flush().await
            };
            if let Err(e) = sent.await {
                break End::Lost(format!("websocket send: {e}"));
            }
            tally.sent.fetch_add(plan.window, Relaxed);
            tally.probes.fetch_add(1, Relaxed);
            batch = Some(Batch {
                last: next + plan.window - 1,
                updates: plan.window,
                started_ns,
            });
            next += plan.window;
        }
        let text = match conn.next(None).await {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(end) => break end,
        };
        match answer(&text) {
            Answer::Delivered { u } => match batch.take() {
                Some(b) if b.last == u => {
                    tally.applied.fetch_add(b.updates, Relaxed);
                    let us = clock::now_ns().saturating_sub(b.started_ns) / 1000;
                    let _ = tally.latency.lock().unwrap().record(us.max(1));
                }
                other => {
                    batch = other;
                    tally
                        .errors
                        .record(format!("probe for update {u} not expected"));
                }
            },
            Answer::NoRoute => match batch.take() {
                Some(b) => {
                    tally.stale.fetch_add(1, Relaxed);
                    tally.stale_updates.fetch_add(b.updates, Relaxed);
                    tally
                        .errors
                        .record("op 3: no_route (probe: an update was not visible)".into());
                }
                None => tally.errors.record("op 3: no_route without a probe".into()),
            },
            Answer::Invalid(e) => tally.errors.record(format!("op 3: {e}")),
            Answer::Other => {}
            Answer::End(e) => break End::Lost(e),
            Answer::Undecodable(e) => {
                tally.undecodable.fetch_add(1, Relaxed);
                tally.errors.record(format!("undecodable packet: {e}"));
            }
        }
    };
    conn.finish(end, &tally.errors).await;
}

/// The update scenario's result: the JSON on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateRunReport {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub params: Args,
    /// The application every client identified under.
    pub application: String,
    pub connect: UpdateConnect,
    /// Present with --server-pid or --metrics-url; `cpu_us_per_delivery`
    /// is per applied update (probes included in the CPU).
    pub server: Option<ServerReport>,
    pub client: ClientReport,
    pub traffic: UpdateTraffic,
    pub rss_by_connections: Vec<RssPoint>,
    /// One point per second: updates sent (`sent_per_second`), updates
    /// applied (`delivered_per_second`), batch round-trip latency.
    pub timeline: Vec<TimelinePoint>,
    pub errors: ErrorsReport,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateConnect {
    pub requested: u64,
    pub identified: u64,
    pub seconds: f64,
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateTraffic {
    pub clients: u64,
    /// Updates per batch (one probe per batch).
    pub window: u32,
    pub seconds: f64,
    pub drain_seconds: f64,
    /// UPDATE_METADATA frames written.
    pub sent: u64,
    /// Updates whose probe came back: applied by the server.
    pub applied: u64,
    /// Probes (SENDs to self) written, one per batch.
    pub probes: u64,
    /// Probes answered no_route: the batch's last update was not visible.
    pub stale: u64,
    /// Updates whose probe had not come back by the end of the drain.
    pub outstanding: u64,
    pub undecodable: u64,
    /// applied / (seconds + drain_seconds).
    pub updates_per_second: f64,
    /// A batch's first update written to its probe's delivery.
    pub batch_latency_us: Percentiles,
    pub batch_latency_spectrum: Vec<SpectrumPoint>,
}

impl UpdateRunReport {
    /// The human summary, for stderr.
    pub fn summary(&self) -> String {
        let t = &self.traffic;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "update {}: {}/{} identified in {:.2} s ({} clients, {} updates per probe)",
            self.application,
            self.connect.identified,
            self.connect.requested,
            self.connect.seconds,
            t.clients,
            t.window
        );
        let _ = writeln!(
            s,
            "updates sent {} applied {} ({:.0}/s) in {:.2} s + {:.2} s drain; probes {}, stale {}, outstanding {}",
            t.sent,
            t.applied,
            t.updates_per_second,
            t.seconds,
            t.drain_seconds,
            t.probes,
            t.stale,
            t.outstanding
        );
        let _ = writeln!(s, "batch latency: {}", t.batch_latency_us.line());
        if let Some(v) = &self.server {
            v.write_summary(&mut s, "update");
        }
        self.client.write_summary(&mut s);
        self.errors.write_summary(&mut s);
        s
    }

    /// The HTML report.
    pub fn html(&self, json: &str) -> String {
        html::page(
            &Page {
                title: format!("update {}", self.application),
                has_traffic: true,
                spectrum_title: "Batch latency by percentile",
                spectra: vec![(
                    "first update to probe delivery",
                    &self.traffic.batch_latency_spectrum[..],
                )],
                timeline: &self.timeline,
                rates: ("updates / s", "sent", "applied"),
                latency_over_time_title: "Latency over time (batch: first update to probe delivery)",
                rss_by_connections: &self.rss_by_connections,
                summary: self.summary(),
            },
            json,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn every_update_moves_load_and_one_room() {
        let id = 7;
        let mut before = rooms(id, ROOMS - 1);
        assert_eq!(before, vec![7, 8, 9, 10]);
        for u in ROOMS..ROOMS + 20 {
            let after = rooms(id, u);
            let changed: Vec<usize> = (0..ROOMS as usize)
                .filter(|&j| after[j] != before[j])
                .collect();
            assert_eq!(changed, vec![(u % ROOMS) as usize], "update {u}");
            assert!(after.contains(&room(id, u)));
            before = after;
        }
    }

    #[test]
    fn frames_are_the_contract_packets() {
        let mut out = String::new();
        update_frame(&mut out, 3, 5);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"op":4,"t":"UPDATE_METADATA","d":{
                "load":{"type":"integer","value":5},
                "rooms":{"type":"list","value":[7,8,5,6]}}})
        );
        probe_frame(&mut out, "\"app\"", 3, 5, 99);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"op":4,"t":"SEND","d":{
                "target":{"application":"app","ops":[
                    {"path":"/id","op":"$eq","to":{"value":3}},
                    {"path":"/load","op":"$eq","to":{"value":5}},
                    {"path":"/rooms","op":"$contains","to":{"value":8}}]},
                "nonce":5,"payload":{"t":99,"u":5}}})
        );
        let m = initial_metadata(
            &Shape {
                groups: 10,
                list_size: 0,
                tag_values: 1,
            },
            3,
        );
        assert_eq!(m["load"], json!({"type":"integer","value":3}));
        assert_eq!(m["rooms"], json!({"type":"list","value":[3,4,5,6]}));
    }

    #[test]
    fn answers() {
        let probe = r#"{"op":4,"t":"SEND","ts":1,"d":{"nonce":5,"payload":{"t":9,"u":5}}}"#;
        assert_eq!(answer(probe), Answer::Delivered { u: 5 });
        let no_route = r#"{"op":3,"t":null,"ts":1,"d":{"error":"no_route","extra_info":{}}}"#;
        assert_eq!(answer(no_route), Answer::NoRoute);
        let invalid =
            r#"{"op":3,"t":null,"ts":1,"d":{"error":"invalid metadata","extra_info":{}}}"#;
        assert_eq!(answer(invalid), Answer::Invalid("invalid metadata".into()));
        let ack = r#"{"op":6,"t":null,"ts":1,"d":{"client_id":"x"}}"#;
        assert_eq!(answer(ack), Answer::Other);
        let bye = r#"{"op":7,"t":null,"ts":1,"d":{"reason":"bye"}}"#;
        assert!(matches!(answer(bye), Answer::End(_)));
    }
}
