//! One monotonic clock for the whole process. Senders and receivers live in
//! the same process, so a send timestamp written into a payload can be
//! compared with the receive time without any wall-clock skew.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the clock's zero; call once at start (later calls do nothing).
pub fn init() {
    BASE.get_or_init(Instant::now);
}

/// Nanoseconds since [`init`].
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
