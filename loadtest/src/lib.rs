//! `singyeong-loadtest`: the capacity-planning load tester for the 신경
//! message bus. It opens many identified websocket connections, drives
//! traffic between them, and reports what the server did with it.
//!
//! # Layout
//!
//! - [`args`]: the command line (one struct, validated, echoed in the result).
//! - [`scenario`]: a run phase by phase (connect, idle, traffic, drain,
//!   report), and one module per scenario saying only what is sent
//!   (`connect`, `targeted`, `broadcast`).
//! - [`fleet`]: opening the population with bounded concurrency over several
//!   source addresses, and the connect-phase statistics.
//! - [`session`]: one connection from TCP connect to ready.
//! - [`traffic`]: an identified connection's life: heartbeats, reading
//!   deliveries, and a sender's window of outstanding messages.
//! - [`wire`]: the packets, encoded and decoded.
//! - [`identity`]: application ids, client ids and generated metadata.
//! - [`tally`]: the shared counters and latency histogram.
//! - [`procstat`] / [`fdlimit`]: /proc sampling and the open-file limit.
//! - [`report`]: the JSON result and its human summary.
//! - [`stop`]: telling every connection to close, and waiting (bounded) for it.
//! - [`clock`]: the process-wide monotonic clock behind send timestamps.

pub mod args;
pub mod clock;
pub mod fdlimit;
pub mod fleet;
pub mod identity;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod session;
pub mod stop;
pub mod tally;
pub mod traffic;
pub mod wire;
