//! What every connection task counts into: messages sent and delivered,
//! misroutes, errors by text, disconnects, and end-to-end latency. Shared by
//! all tasks, so counters are atomics and the latency histogram is split into
//! stripes to keep receivers on different workers off each other's lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;
/// Error texts kept verbatim; past this many distinct ones the rest are
/// counted under one key so a misbehaving server cannot grow the report
/// without bound.
const MAX_DISTINCT_ERRORS: usize = 64;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

pub struct Tally {
    /// Connections that got to ready in the connect phase, so far.
    pub identified: AtomicU64,
    pub sent: AtomicU64,
    pub expected: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries that reached a client the message was not addressed to.
    pub misrouted: AtomicU64,
    /// Deliveries whose payload this tool could not read.
    pub undecodable: AtomicU64,
    /// Identified connections the server closed (or that failed) before the
    /// tool asked them to close.
    pub disconnects: AtomicU64,
    pub error_count: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: Vec<Mutex<Histogram<u64>>>,
    /// Open loop: how late each message left against its schedule (the
    /// tool's own share of the latency), by sender.
    lag: Vec<Mutex<Histogram<u64>>>,
}

impl Tally {
    pub fn new(stripes: usize) -> Tally {
        Tally {
            identified: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            latency: (0..stripes.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
            lag: (0..stripes.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
        }
    }

    pub fn record_lag(&self, stripe: usize, micros: u64) {
        let mut h = self.lag[stripe % self.lag.len()].lock().unwrap();
        // 0 is "on time"; the histogram's lowest value is 1 µs.
        h.saturating_record(micros.max(1));
    }

    pub fn lag(&self) -> Histogram<u64> {
        let mut all = histogram();
        for stripe in &self.lag {
            all.add(&*stripe.lock().unwrap()).expect("same bounds");
        }
        all
    }

    pub fn record_latency(&self, stripe: usize, micros: u64) {
        let mut h = self.latency[stripe % self.latency.len()].lock().unwrap();
        h.saturating_record(micros.max(1));
    }

    /// Counts one error under its text (e.g. `"op 3: no_route"`).
    pub fn record_error(&self, text: String) {
        self.error_count.fetch_add(1, Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() >= MAX_DISTINCT_ERRORS && !errors.contains_key(&text) {
            *errors.entry("(other errors)".into()).or_default() += 1;
        } else {
            *errors.entry(text).or_default() += 1;
        }
    }

    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for stripe in &self.latency {
            all.add(&*stripe.lock().unwrap()).expect("same bounds");
        }
        all
    }

    pub fn errors(&self) -> Vec<ErrorCount> {
        counts(&self.errors.lock().unwrap())
    }

    /// Forgets latencies and errors recorded so far (e.g. before traffic starts).
    pub fn reset_latency(&self) {
        for stripe in &self.latency {
            stripe.lock().unwrap().reset();
        }
    }
}

/// One error text and how often it was seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorCount {
    pub text: String,
    pub count: u64,
}

/// Most frequent first.
pub fn counts(map: &BTreeMap<String, u64>) -> Vec<ErrorCount> {
    let mut v: Vec<ErrorCount> = map
        .iter()
        .map(|(text, &count)| ErrorCount {
            text: text.clone(),
            count,
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
    v
}

/// Several lists of counts as one: counts of the same text added up, most
/// frequent first (the merge of worker processes' errors).
pub fn merge_counts<'a>(lists: impl IntoIterator<Item = &'a Vec<ErrorCount>>) -> Vec<ErrorCount> {
    let mut map = BTreeMap::new();
    for e in lists.into_iter().flatten() {
        *map.entry(e.text.clone()).or_default() += e.count;
    }
    counts(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_merge() {
        let t = Tally::new(4);
        for i in 0..100 {
            t.record_latency(i, 10 + i as u64);
        }
        let h = t.latency();
        assert_eq!(h.len(), 100);
        assert_eq!(h.min(), 10);
        assert_eq!(h.max(), 109);
    }

    #[test]
    fn distinct_errors_are_bounded() {
        let t = Tally::new(1);
        for i in 0..MAX_DISTINCT_ERRORS + 10 {
            t.record_error(format!("e{i}"));
        }
        t.record_error("e0".into());
        let errors = t.errors();
        assert_eq!(errors.len(), MAX_DISTINCT_ERRORS + 1);
        assert_eq!(errors[0].text, "(other errors)");
        assert_eq!(errors[0].count, 10);
        assert_eq!(t.error_count.load(Relaxed), MAX_DISTINCT_ERRORS as u64 + 11);
    }
}
