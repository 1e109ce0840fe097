//! The server-wide queue budget: how many queues live and how many bytes
//! they hold, against `--max-queues` and `--max-total-queue-bytes`.
//!
//! Queues live on owner shards (by a hash of the name) but both limits are
//! per server, so the shards share one pair of counters. Two other designs
//! were set aside:
//!
//! - Splitting each budget evenly between shards needs no sharing, but one
//!   queue's bytes all sit on its one owner: a single busy queue (the usual
//!   case) could then hold only `1/shards` of the memory the operator
//!   allowed. And names hash unevenly, so a shard would refuse new queues
//!   while the server is far from its limit.
//! - Asking every shard before creating a queue costs a scatter per new
//!   name and is still racy without a lock.
//!
//! A shared atomic costs one compare-and-swap on a cache line the shards
//! share per QUEUE (and per ack, per new or forgotten queue): small next to
//! the mesh hop, JSON work and log write each of those already does, and
//! exact: a reservation either fits or is refused, whatever the other
//! shards do at the same moment. The counters publish no other memory, so
//! relaxed ordering is enough.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;

#[derive(Debug)]
pub struct Budget {
    max_queues: usize,
    max_bytes: usize,
    queues: AtomicUsize,
    bytes: AtomicUsize,
}

impl Budget {
    pub fn new(config: &Config) -> Budget {
        Budget::with_limits(config.max_queues, config.max_total_queue_bytes)
    }

    pub fn with_limits(max_queues: usize, max_bytes: usize) -> Budget {
        Budget {
            max_queues,
            max_bytes,
            queues: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    pub fn max_queues(&self) -> usize {
        self.max_queues
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Counts one more queue unless the server already has `max_queues`.
    pub fn try_add_queue(&self) -> bool {
        try_add(&self.queues, 1, self.max_queues)
    }

    /// Counts one more queue whatever the limit (recovery: what was
    /// confirmed before a restart comes back even if the limit shrank).
    pub fn add_queue(&self) {
        self.queues.fetch_add(1, Ordering::Relaxed);
    }

    /// A queue was forgotten.
    pub fn remove_queue(&self) {
        self.queues.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reserves `n` bytes unless that would pass `max_bytes`.
    pub fn try_reserve(&self, n: usize) -> bool {
        try_add(&self.bytes, n, self.max_bytes)
    }

    /// Reserves `n` bytes whatever the limit (recovery).
    pub fn reserve(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back bytes reserved earlier (an ack, or a refused QUEUE).
    pub fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Live queues and bytes held, server-wide.
    pub fn used(&self) -> (usize, usize) {
        (
            self.queues.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Adds `n` to `counter` if the result stays within `max`.
fn try_add(counter: &AtomicUsize, n: usize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
            cur.checked_add(n).filter(|&next| next <= max)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn queues_are_counted_up_to_the_limit() {
        let b = Budget::with_limits(2, 100);
        assert!(b.try_add_queue());
        assert!(b.try_add_queue());
        assert!(!b.try_add_queue());
        b.remove_queue();
        assert!(b.try_add_queue());
        // Recovery may go past it; new queues wait until enough are gone.
        b.add_queue();
        assert_eq!(b.used().0, 3);
        b.remove_queue();
        assert!(!b.try_add_queue());
    }

    #[test]
    fn bytes_are_reserved_whole_or_not_at_all() {
        let b = Budget::with_limits(1, 100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41), "would pass the limit");
        assert!(b.try_reserve(40), "exactly the limit fits");
        assert!(!b.try_reserve(1));
        assert!(!b.try_reserve(usize::MAX), "no overflow");
        b.release(60);
        assert!(b.try_reserve(60));
        assert_eq!(b.used().1, 100);
    }

    /// Shards reserving at the same time never pass the limit together.
    #[test]
    fn concurrent_reservations_stay_within_the_limit() {
        let b = Arc::new(Budget::with_limits(1000, 10_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut got = (0, 0);
                    for _ in 0..5000 {
                        got.0 += usize::from(b.try_add_queue());
                        got.1 += usize::from(b.try_reserve(7));
                    }
                    got
                })
            })
            .collect();
        let (queues, reservations) = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |a, g| (a.0 + g.0, a.1 + g.1));
        assert_eq!(queues, 1000);
        assert_eq!(reservations, 10_000 / 7);
        assert_eq!(b.used(), (1000, reservations * 7));
    }
}
