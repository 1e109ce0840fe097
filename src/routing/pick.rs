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

/// Sums up one node's shard picks as one pick, so that the nodes of a
/// cluster are chosen among exactly as shards are: the count is the sum,
/// the best rendezvous score and selector value are the best of the
/// shards', and the `$avg` sum and count add up. The client indexes it
/// names mean nothing outside the node (the node chooses its own client
/// again, by the same rule, when it delivers); they only say that a
/// candidate exists.
pub fn summarize(query: &Query, picks: &[Pick]) -> Pick {
    let mut out = Pick::default();
    for p in picks {
        out.count += p.count;
        out.sum += p.sum;
        out.numeric += p.numeric;
        out.random = out.random.or(p.random);
        if let Some((score, idx)) = p.keyed
            && out.keyed.is_none_or(|(best, _)| score > best)
        {
            out.keyed = Some((score, idx));
        }
        if let Some((value, idx)) = p.selected {
            let better = match query.selector.as_ref().map(|s| s.kind) {
                Some(SelectorKind::Max) => |a: f64, b: f64| a > b,
                _ => |a: f64, b: f64| a < b,
            };
            if out.selected.is_none_or(|(best, _)| better(value, best)) {
                out.selected = Some((value, idx));
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn query(extra: serde_json::Value) -> Query {
        let mut q = json!({"application": "a", "ops": []});
        q.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Query::parse(&q).unwrap()
    }

    /// One shard's pick with distinct scores: `n` is the shard's number,
    /// so no two shards tie.
    fn shard_pick(n: u32, count: u64, score: u64, value: f64) -> Pick {
        let some = count > 0;
        Pick {
            count,
            random: some.then_some(n),
            keyed: some.then_some((score * 1000 + n as u64, n)),
            selected: some.then_some((value + n as f64 / 1000.0, n)),
            sum: if some { value * count as f64 } else { 0.0 },
            numeric: count,
        }
    }

    fn groups() -> impl Strategy<Value = Vec<Vec<(u64, u64, f64)>>> {
        prop::collection::vec(
            prop::collection::vec((0u64..4, 0u64..1000, -50.0f64..50.0), 1..4),
            1..5,
        )
    }

    proptest! {
        /// Nodes summed up by `summarize` are chosen among as their shards
        /// would be all together: by `key` and by `$min`/`$max`, the node
        /// chosen holds the client the whole cluster's choice names.
        #[test]
        fn a_summary_chooses_the_node_holding_the_overall_choice(groups in groups()) {
            let mut n = 0u32;
            let mut all = Vec::new();
            let mut owner = Vec::new();
            let mut by_node = Vec::new();
            for (g, group) in groups.iter().enumerate() {
                let mut picks = Vec::new();
                for &(count, score, value) in group {
                    let pick = shard_pick(n, count, score, value);
                    all.push(pick.clone());
                    owner.push(g);
                    picks.push(pick);
                    n += 1;
                }
                by_node.push(picks);
            }
            let mut rng = fastrand::Rng::with_seed(1);
            for extra in [
                json!({"key": "k"}),
                json!({"selector": {"$min": "v"}}),
                json!({"selector": {"$max": "v"}}),
            ] {
                let q = query(extra);
                let summaries: Vec<Pick> = by_node.iter().map(|p| summarize(&q, p)).collect();
                let overall = choose(&q, &all, &mut rng).map(|(shard, _)| owner[shard]);
                let node = choose(&q, &summaries, &mut rng).map(|(node, _)| node);
                prop_assert_eq!(overall, node);
            }
            // Counts and the `$avg` sum add up, so the cluster's average is
            // the one over every shard.
            let q = query(json!({"selector": {"$avg": "v"}}));
            let summaries: Vec<Pick> = by_node.iter().map(|p| summarize(&q, p)).collect();
            prop_assert_eq!(
                summaries.iter().map(|p| p.count).sum::<u64>(),
                all.iter().map(|p| p.count).sum::<u64>()
            );
            match (global_average(&summaries), global_average(&all)) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-9),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Without `key` or a selector, a node is drawn in proportion to
        /// its matches, whatever their spread over its shards: so every
        /// client of the cluster is equally likely, not every node. (Many
        /// draws per case from a fixed seed; the bound is 5 standard
        /// deviations.)
        #[test]
        fn the_uniform_choice_over_nodes_is_uniform_over_clients(
            nodes in prop::collection::vec(prop::collection::vec(0u64..6, 1..4), 1..5),
            seed in any::<u64>(),
        ) {
            let q = query(json!({}));
            let mut n = 0;
            let summaries: Vec<Pick> = nodes
                .iter()
                .map(|shards| {
                    let picks: Vec<Pick> = shards
                        .iter()
                        .map(|&count| {
                            n += 1;
                            shard_pick(n, count, 0, 0.0)
                        })
                        .collect();
                    summarize(&q, &picks)
                })
                .collect();
            let total: u64 = nodes.iter().flatten().sum();
            let mut rng = fastrand::Rng::with_seed(seed);
            const DRAWS: usize = 20_000;
            let mut drawn = vec![0usize; nodes.len()];
            for _ in 0..DRAWS {
                match choose(&q, &summaries, &mut rng) {
                    Some((node, _)) => drawn[node] += 1,
                    None => prop_assert_eq!(total, 0),
                }
            }
            for (node, shards) in nodes.iter().enumerate() {
                let p = shards.iter().sum::<u64>() as f64 / total.max(1) as f64;
                let expected = p * DRAWS as f64;
                let sd = (DRAWS as f64 * p * (1.0 - p)).sqrt();
                prop_assert!(
                    (drawn[node] as f64 - expected).abs() <= 5.0 * sd + 1.0,
                    "node {node}: {} drawn, {expected} expected", drawn[node]
                );
            }
        }
    }

    #[test]
    fn a_summary_draws_nodes_in_proportion_to_their_matches() {
        // A node with three matches against one with one: over many draws,
        // the first is chosen about three times as often, as each of its
        // clients is as likely as the other node's.
        let q = query(json!({}));
        let nodes = [
            summarize(&q, &[shard_pick(0, 1, 0, 0.0), shard_pick(1, 2, 0, 0.0)]),
            summarize(&q, &[shard_pick(2, 1, 0, 0.0)]),
        ];
        assert_eq!(nodes[0].count, 3);
        let mut rng = fastrand::Rng::with_seed(7);
        let first = (0..40_000)
            .filter(|_| choose(&q, &nodes, &mut rng).unwrap().0 == 0)
            .count();
        assert!((29_000..31_000).contains(&first), "{first}");
        assert_eq!(summarize(&q, &[]), Pick::default());
    }
}
