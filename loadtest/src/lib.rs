//! `singyeong-loadtest`: the capacity-planning load tester for the 신경
//! message bus. It opens many identified websocket connections, drives
//! traffic between them, and reports what the server did with it.
//!
//! # Layout
//!
//! - [`args`]: the command line (one struct, validated, echoed in the result).
//! - [`scenario`]: a run phase by phase (connect, idle, traffic, drain,
//!   report), and one module per scenario saying only what is sent
//!   (`connect`, `targeted`, `group`, `broadcast`, `churn`); `queue`
//!   (QUEUE producers, QUEUE_REQUEST/QUEUE_ACK consumers) and `proxy` (HTTP
//!   `POST /api/v1/proxy` to a built-in upstream) run their own phases and
//!   reports, on connections driven by hand (`scenario::conn`) and with the
//!   server sampled around them as for the others (`scenario::observe`).
//! - [`fleet`]: opening the population with bounded concurrency over several
//!   source addresses, and the connect-phase statistics.
//! - [`spread`]: several servers (`--url` more than once, the nodes of a
//!   cluster): which node each connection goes to, and which receivers a
//!   targeted sender may choose (`--placement`).
//! - [`session`]: one connection from TCP connect to ready.
//! - [`traffic`]: an identified connection's life: heartbeats, reading
//!   deliveries, and a sender's window of outstanding messages.
//! - [`wire`]: the packets, encoded and decoded.
//! - [`identity`]: application ids, client ids and generated metadata.
//! - [`tally`]: the shared counters and latency histogram; [`timeline`]: the
//!   per-second record of traffic, and its merge over worker processes.
//! - [`procstat`] / [`fdlimit`]: /proc sampling and the open-file limit.
//! - [`report`]: the JSON result and its human summary; [`html`]: the same
//!   as a self-contained page with inline SVG plots; [`plan`]: the capacity
//!   plan drawn from it.
//! - [`dialect`]: what a message is for ([`dialect::Pick`]) and how it is
//!   written for the target (singyeong SEND/BROADCAST, or NATS PUB); [`nats`]:
//!   the NATS protocol over websocket.
//! - [`metrics`]: the server's RSS and CPU from its Prometheus `/metrics`.
//! - [`processes`]: `--processes`, the worker processes, the coordinator's
//!   server samples, and the merge of the workers' results.
//! - [`stop`]: telling every connection to close, and waiting (bounded) for it.
//! - [`clock`]: the process-wide monotonic clock behind send timestamps.

pub mod args;
pub mod clock;
pub mod dialect;
pub mod fdlimit;
pub mod fleet;
pub mod html;
pub mod identity;
pub mod metrics;
pub mod nats;
pub mod plan;
pub mod processes;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod session;
pub mod spread;
pub mod stop;
pub mod tally;
pub mod timeline;
pub mod traffic;
pub mod wire;
