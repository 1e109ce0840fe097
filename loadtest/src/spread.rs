//! Several servers at once (`--url` given more than once: the nodes of a
//! cluster): which node each connection goes to, and, for targeted SENDs,
//! which receivers each sender may choose (`--placement`).
//!
//! The rule, fixed so that a run can be reasoned about and repeated:
//!
//! - receiver `id` connects to node `id % nodes`;
//! - sender `index` connects to node `index % nodes`;
//! - `--placement any` (the default): a sender chooses among every
//!   receiver, wherever it is (with 3 nodes, 2 in 3 SENDs cross nodes);
//!   `remote`: only among the receivers on other nodes than its own, so
//!   every SEND crosses nodes ("publisher and receiver on different
//!   nodes"); `local`: only among the receivers on its own node, so no
//!   delivery crosses nodes (what a cluster adds to a SEND that stays on
//!   one node).
//!
//! Node `i` is the `i`-th `--url` (in the order given). With one URL every
//! connection goes to it and `any` and `local` are the same. Receivers'
//! applications are `id % --apps` too, so with `--apps` a multiple of the
//! node count an application sits on one node only: keep them coprime
//! (`--apps 1` is) when every application should span every node.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Which receivers a targeted sender may choose, by node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Every receiver, on any node.
    #[default]
    Any,
    /// Only receivers on another node than the sender's.
    Remote,
    /// Only receivers on the sender's own node.
    Local,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Any => "any",
            Placement::Remote => "remote",
            Placement::Local => "local",
        }
    }

    pub fn is_any(&self) -> bool {
        *self == Placement::Any
    }
}

/// The node receiver `id` connects to, of `nodes` (at least 1).
pub fn receiver_node(id: u64, nodes: usize) -> usize {
    (id % nodes.max(1) as u64) as usize
}

/// The node sender `index` connects to, of `nodes` (at least 1).
pub fn sender_node(index: u32, nodes: usize) -> usize {
    index as usize % nodes.max(1)
}

/// For each node a sender may sit on, the receivers it may choose.
#[derive(Debug, Clone)]
pub struct Candidates {
    nodes: usize,
    /// One list (`any`: shared by every sender) or one per node.
    lists: Vec<Vec<u64>>,
}

impl Candidates {
    /// Sorts `receivers` (the ids that got to ready) by the sender node
    /// that may choose them under `placement`.
    pub fn new(receivers: &[u64], nodes: usize, placement: Placement) -> Candidates {
        let nodes = nodes.max(1);
        let lists = match placement {
            Placement::Any => vec![receivers.to_vec()],
            Placement::Local | Placement::Remote => (0..nodes)
                .map(|node| {
                    receivers
                        .iter()
                        .copied()
                        .filter(|&id| {
                            (receiver_node(id, nodes) == node) == (placement == Placement::Local)
                        })
                        .collect()
                })
                .collect(),
        };
        Candidates { nodes, lists }
    }

    /// The receivers sender `index` may choose (empty: it sends nothing).
    pub fn for_sender(&self, index: u32) -> &[u64] {
        if self.lists.len() == 1 {
            return &self.lists[0];
        }
        &self.lists[sender_node(index, self.nodes)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection lands on one of the nodes, and the receivers are
    /// spread evenly: node counts differ by at most one.
    #[test]
    fn spreads_evenly_over_the_nodes() {
        for nodes in 1..=5 {
            for n in 0..40u64 {
                let mut count = vec![0u64; nodes];
                for id in 0..n {
                    let node = receiver_node(id, nodes);
                    assert!(node < nodes);
                    count[node] += 1;
                }
                let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
                assert!(hi - lo <= 1, "{nodes} nodes, {n} receivers: {count:?}");
            }
            for s in 0..20u32 {
                assert_eq!(sender_node(s, nodes), s as usize % nodes);
            }
        }
        // One node: everything on it; zero is taken as one.
        assert_eq!(receiver_node(7, 1), 0);
        assert_eq!(receiver_node(7, 0), 0);
        assert_eq!(sender_node(3, 0), 0);
    }

    /// `remote` and `local` split the receivers: for every sender, its
    /// remote and local candidates are disjoint, together are every
    /// receiver, and sit on other nodes / its own node; `any` is every
    /// receiver.
    #[test]
    fn remote_and_local_partition_the_receivers() {
        for nodes in 1..=4 {
            // Receivers that got to ready: some ids missing.
            let receivers: Vec<u64> = (0..30u64).filter(|id| id % 7 != 3).collect();
            let any = Candidates::new(&receivers, nodes, Placement::Any);
            let remote = Candidates::new(&receivers, nodes, Placement::Remote);
            let local = Candidates::new(&receivers, nodes, Placement::Local);
            for s in 0..10u32 {
                let home = sender_node(s, nodes);
                assert_eq!(any.for_sender(s), &receivers[..]);
                for &id in remote.for_sender(s) {
                    assert_ne!(receiver_node(id, nodes), home);
                }
                for &id in local.for_sender(s) {
                    assert_eq!(receiver_node(id, nodes), home);
                }
                let mut both: Vec<u64> = remote
                    .for_sender(s)
                    .iter()
                    .chain(local.for_sender(s))
                    .copied()
                    .collect();
                both.sort_unstable();
                assert_eq!(both, receivers, "{nodes} nodes, sender {s}");
            }
        }
    }

    #[test]
    fn one_node_has_no_remote_receivers() {
        let remote = Candidates::new(&[0, 1, 2], 1, Placement::Remote);
        assert!(remote.for_sender(0).is_empty());
        let local = Candidates::new(&[0, 1, 2], 1, Placement::Local);
        assert_eq!(local.for_sender(5), &[0, 1, 2]);
    }

    /// Three nodes, six receivers, as cluster-nats.sh runs them: sender 1
    /// sits on node 1, its local receivers are 1 and 4, its remote ones
    /// the rest.
    #[test]
    fn three_nodes_by_example() {
        let r: Vec<u64> = (0..6).collect();
        assert_eq!(
            Candidates::new(&r, 3, Placement::Local).for_sender(1),
            &[1, 4]
        );
        assert_eq!(
            Candidates::new(&r, 3, Placement::Remote).for_sender(1),
            &[0, 2, 3, 5]
        );
        assert_eq!(
            Candidates::new(&r, 3, Placement::Remote).for_sender(4),
            &[0, 2, 3, 5]
        );
    }
}
