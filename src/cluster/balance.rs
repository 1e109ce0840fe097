//! Load balancing by goodbye, the decision alone (pure): how many of this
//! node's clients to send away in one round, and how to spread them over
//! its shards. The runtime (`crate::node::balance`) counts the clients,
//! asks this, and sends goodbye (reason `load balancing`).
//!
//! A node's share is the cluster's clients over its live nodes. A node
//! starts sending clients away once it holds more than `above` times its
//! share, and keeps on, at most `max` per round, until it is down to its
//! share (rounded up): the gap between the two thresholds keeps a node
//! that sits a little above its share from sending a client away, seeing
//! it come back, and sending it away again.

/// The hysteresis between rounds: whether this node is bringing itself
/// down to its share.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Balancer {
    active: bool,
}

impl Balancer {
    /// How many clients to send away this round. `mine`: this node's
    /// clients; `others`: every other live node's (one entry a node);
    /// `above`: the threshold, a multiple of the share (> 1); `max`: the
    /// most per round. Never more than takes `mine` below its share.
    pub fn round(&mut self, mine: u64, others: &[u64], above: f64, max: u64) -> u64 {
        let nodes = others.len() as u64 + 1;
        let total = mine + others.iter().sum::<u64>();
        // Rounded up: a node never goes below its share, and with a total
        // that does not divide evenly the larger nodes hold one more.
        let share = total.div_ceil(nodes);
        if (mine as f64) * (nodes as f64) > above * (total as f64) {
            self.active = true;
        }
        let excess = mine.saturating_sub(share);
        if !self.active || excess == 0 {
            self.active = false;
            return 0;
        }
        excess.min(max)
    }
}

/// `n` clients to send away spread over shards holding `held` clients
/// each, in proportion (largest remainders first, ties to the lower
/// shard): each shard's part is at most what it holds, and the parts add
/// up to `n`, or to every client when there are fewer.
pub fn split(n: u64, held: &[u64]) -> Vec<u64> {
    let total: u64 = held.iter().sum();
    if n >= total {
        return held.to_vec();
    }
    // In u128: n × held fits where u64 might not.
    let (n, total) = (u128::from(n), u128::from(total));
    let mut parts: Vec<u64> = held
        .iter()
        .map(|&h| (n * u128::from(h) / total) as u64)
        .collect();
    let mut left = n as u64 - parts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..held.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(n * u128::from(held[i]) % total));
    for i in order {
        if left == 0 {
            break;
        }
        if parts[i] < held[i] {
            parts[i] += 1;
            left -= 1;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_crowded_node_comes_down_to_its_share_in_bounded_rounds_and_stops() {
        let mut b = Balancer::default();
        // 30 here, 0 and 0 elsewhere: share 10.
        let mut mine = 30;
        let mut others = [0, 0];
        let mut rounds = Vec::new();
        loop {
            let n = b.round(mine, &others, 1.25, 8);
            if n == 0 {
                break;
            }
            rounds.push(n);
            // They reconnect elsewhere, half to each.
            mine -= n;
            others[0] += n / 2;
            others[1] += n - n / 2;
        }
        assert_eq!(rounds, [8, 8, 4]);
        assert_eq!(mine, 10);
        assert_eq!(b.round(mine, &others, 1.25, 8), 0, "stays stopped");
    }

    #[test]
    fn under_the_threshold_nothing_happens_and_a_node_under_its_share_sends_none() {
        let mut b = Balancer::default();
        // 12 of 20 over two nodes: share 10, 1.2 × share < 1.25 ×.
        assert_eq!(b.round(12, &[8], 1.25, 100), 0);
        assert_eq!(b.round(3, &[17], 1.25, 100), 0);
        assert_eq!(b.round(0, &[17], 1.25, 100), 0);
        // Alone: no share to come down to.
        assert_eq!(b.round(1000, &[], 1.25, 100), 0);
        // Past it: down to the share, rounded up.
        assert_eq!(b.round(14, &[7], 1.25, 100), 3);
    }

    #[test]
    fn once_started_it_goes_on_below_the_threshold_down_to_the_share() {
        let mut b = Balancer::default();
        assert_eq!(b.round(20, &[0], 1.25, 4), 4);
        // 12 of 20: under 1.25 × the share (10), which would not start
        // it, but over the share: it carries on.
        assert_eq!(b.round(12, &[8], 1.25, 4), 2);
        assert_eq!(b.round(10, &[10], 1.25, 4), 0);
        // Stopped: 12 of 20 does not start it again.
        assert_eq!(b.round(12, &[8], 1.25, 4), 0);
    }

    #[test]
    fn the_split_follows_each_shards_part() {
        assert_eq!(split(4, &[10, 10]), [2, 2]);
        assert_eq!(split(3, &[10, 0, 5]), [2, 0, 1]);
        assert_eq!(split(100, &[3, 4]), [3, 4]);
        assert_eq!(split(1, &[1, 1, 1]), [1, 0, 0]);
        assert_eq!(split(0, &[5]), [0]);
        assert_eq!(split(2, &[]), Vec::<u64>::new());
    }

    proptest! {
        #[test]
        fn a_round_never_passes_the_cap_the_excess_or_the_share(
            mine in 0u64..100_000,
            others in prop::collection::vec(0u64..100_000, 0..8),
            above in 1.01f64..4.0,
            max in 1u64..1000,
            active in any::<bool>(),
        ) {
            let mut b = Balancer { active };
            let n = b.round(mine, &others, above, max);
            let nodes = others.len() as u64 + 1;
            let total = mine + others.iter().sum::<u64>();
            let share = total.div_ceil(nodes);
            prop_assert!(n <= max);
            prop_assert!(n <= mine.saturating_sub(share));
            // Over the threshold, something is always sent (if it can be).
            if (mine as f64) > above * total as f64 / nodes as f64 && nodes > 1 {
                prop_assert!(n > 0 || mine <= share);
            }
            // Under its share (or alone), never.
            if mine <= share {
                prop_assert_eq!(n, 0);
            }
        }

        #[test]
        fn the_split_adds_up_and_stays_within_each_shard(
            n in 0u64..10_000,
            held in prop::collection::vec(0u64..5_000, 0..16),
        ) {
            let parts = split(n, &held);
            let total: u64 = held.iter().sum();
            prop_assert_eq!(parts.len(), held.len());
            prop_assert_eq!(parts.iter().sum::<u64>(), n.min(total));
            for (part, h) in parts.iter().zip(&held) {
                prop_assert!(part <= h);
                // Within one of its proportional part.
                if n < total {
                    let exact = n as f64 * *h as f64 / total as f64;
                    prop_assert!((*part as f64 - exact).abs() < 1.0 + 1e-9);
                }
            }
        }
    }
}
