//! Decomposable choice of one client for SEND (pure code).
//!
//! Each shard evaluates a query against its own clients and reduces the
//! result to a [`Pick`]: the match count plus the one candidate each choosing
//! rule needs (a uniformly random match, the best rendezvous score, the best
//! selector value). The origin then combines the shards' picks with
//! [`choose`]. Nothing per client crosses a core, and the result is the same
//! as if one store held every client:
//! - uniform: shard `k` is chosen with probability `count_k / total`, then its
//!   own uniform pick, so every match has probability `1 / total`;
//! - rendezvous: the global maximum score is the maximum of local maxima;
//! - `$min`/`$max`: likewise;
//! - `$avg`: needs the global average first, so it takes one more round:
//!   [`Pick::sum`]/[`Pick::numeric`] give the average, then every shard
//!   reports its client closest to it.

use crate::metadata::{ClientIdx, ClientStore, IndexPlan};
use crate::query::{Query, SelectorKind, rendezvous_score};

/// One shard's answer to "which of your clients would you send this to?".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pick {
    /// How many clients match (with a selector: how many of those have a
    /// numeric value at the selector's key).
    pub count: u64,
    /// A match chosen uniformly at random among this shard's matches.
    pub random: Option<ClientIdx>,
    /// The match with the highest rendezvous score for the query's `key`.
    pub keyed: Option<(u64, ClientIdx)>,
    /// The best match by the selector: lowest value for `$min`, highest for
    /// `$max`, smallest distance to the given average for `$avg`.
    pub selected: Option<(f64, ClientIdx)>,
    /// Sum and count of selector values, for the global `$avg`.
    pub sum: f64,
    pub numeric: u64,
}

/// Whether the store's candidates for `plan` are already exactly the
/// clients whose ops hold, so nothing needs evaluating per client.
fn plan_is_exact(query: &Query, plan: Option<&IndexPlan>) -> bool {
    match plan {
        Some(plan) => plan.exact,
        None => query.ops.is_empty(),
    }
}

/// The local clients matching `query`'s application, restricted rule and
/// ops (selectors and `key` are the caller's business), found through the
/// indexes and evaluated only where the index does not decide.
pub fn matching<'a>(
    store: &'a ClientStore,
    query: &'a Query,
) -> impl Iterator<Item = ClientIdx> + 'a {
    let plan = query.index_plan();
    let exact = plan_is_exact(query, plan.as_ref());
    store
        .candidates(
            query.application.as_deref(),
            query.restricted,
            plan.as_ref(),
        )
        .into_iter()
        .filter(move |&idx| exact || store.get(idx).is_some_and(|e| query.matches(&e.metadata)))
}

/// Evaluates `query` against one shard's store. `avg` is the global average
/// in the second round of an `$avg` selection. `rng` picks among matches.
pub fn local_pick(
    store: &ClientStore,
    query: &Query,
    avg: Option<f64>,
    rng: &mut fastrand::Rng,
) -> Pick {
    let plan = query.index_plan();
    let candidates = store.candidates(
        query.application.as_deref(),
        query.restricted,
        plan.as_ref(),
    );
    let exact = query.selector.is_none() && plan_is_exact(query, plan.as_ref());
    if exact && query.key.is_none() {
        // The index (or the app set) is the answer: count and sample it
        // without touching a single client.
        let count = candidates.len();
        let random = match count {
            0 => None,
            n => candidates.nth(rng.usize(..n)),
        };
        return Pick {
            count: count as u64,
            random,
            ..Pick::default()
        };
    }

    let mut pick = Pick::default();
    for idx in candidates.iter() {
        let Some(entry) = store.get(idx) else {
            continue;
        };
        if !exact && !query.matches(&entry.metadata) {
            continue;
        }
        if let Some(selector) = &query.selector {
            let Some(value) = selector.value(&entry.metadata) else {
                continue;
            };
            pick.sum += value;
            pick.numeric += 1;
            let score = match (selector.kind, avg) {
                (SelectorKind::Min, _) => value,
                (SelectorKind::Max, _) => -value,
                (SelectorKind::Avg, Some(avg)) => (value - avg).abs(),
                (SelectorKind::Avg, None) => 0.0,
            };
            if pick.selected.is_none_or(|(best, _)| score < best) {
                pick.selected = Some((score, idx));
            }
        }
        pick.count += 1;
        // Reservoir sampling: the n-th match replaces the choice with
        // probability 1/n, which leaves every match equally likely.
        if rng.u64(..pick.count) == 0 {
            pick.random = Some(idx);
        }
        if let Some(key) = &query.key {
            let score = rendezvous_score(key, &entry.app_id, &entry.client_id);
            if pick.keyed.is_none_or(|(best, _)| score > best) {
                pick.keyed = Some((score, idx));
            }
        }
    }
    // `selected` scores are "lower is better" for every kind: `$max` was
    // negated above; give callers the real value back.
    if let (Some(selector), Some((score, idx))) = (&query.selector, pick.selected)
        && selector.kind == SelectorKind::Max
    {
        pick.selected = Some((-score, idx));
    }
    pick
}

/// The global average of an `$avg` selector from every shard's first-round
/// picks, or `None` when no matching client has a numeric value.
pub fn global_average<'a>(picks: impl IntoIterator<Item = &'a Pick>) -> Option<f64> {
    let (sum, n) = picks
        .into_iter()
        .fold((0.0, 0u64), |(s, n), p| (s + p.sum, n + p.numeric));
    (n > 0).then(|| sum / n as f64)
}

/// Combines the shards' picks (indexed by shard) into the one client to
/// deliver to: `(shard, client)`.
pub fn choose(
    query: &Query,
    picks: &[Pick],
    rng: &mut fastrand::Rng,
) -> Option<(usize, ClientIdx)> {
    let total: u64 = picks.iter().map(|p| p.count).sum();
    if total == 0 {
        return None;
    }
    let found = |f: &dyn Fn(&Pick) -> Option<(f64, ClientIdx)>,
                 better: &dyn Fn(f64, f64) -> bool| {
        picks
            .iter()
            .enumerate()
            .filter_map(|(shard, p)| f(p).map(|(v, idx)| (v, shard, idx)))
            .fold(None::<(f64, usize, ClientIdx)>, |best, cur| match best {
                Some(b) if !better(cur.0, b.0) => Some(b),
                _ => Some(cur),
            })
            .map(|(_, shard, idx)| (shard, idx))
    };
    if let Some(selector) = &query.selector {
        return match selector.kind {
            SelectorKind::Max => found(&|p| p.selected, &|a, b| a > b),
            SelectorKind::Min | SelectorKind::Avg => found(&|p| p.selected, &|a, b| a < b),
        };
    }
    if query.key.is_some() {
        return picks
            .iter()
            .enumerate()
            .filter_map(|(shard, p)| p.keyed.map(|(score, idx)| (score, shard, idx)))
            .max_by_key(|&(score, shard, _)| (score, std::cmp::Reverse(shard)))
            .map(|(_, shard, idx)| (shard, idx));
    }
    let mut target = rng.u64(..total);
    for (shard, p) in picks.iter().enumerate() {
        if target < p.count {
            return p.random.map(|idx| (shard, idx));
        }
        target -= p.count;
    }
    None
}
