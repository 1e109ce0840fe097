//! The cluster: several nodes (processes, usually on several machines)
//! that form one message bus, with no master.
//!
//! - [`node`]: who a node is and what this node knows of the others (pure).
//! - [`seal`]: gossip packets signed with the cluster secret (pure).
//! - [`gossip`]: membership, SWIM over UDP, run on shard 0.
//! - [`frame`]: frames on the links between nodes, and their codec (pure).
//!
//! Every shard holds the latest [`ClusterView`], published by shard 0's
//! gossip through the mesh whenever a member's state changes.

pub mod frame;
pub mod gossip;
pub mod node;
pub mod seal;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

pub use gossip::{Gossip, GossipStats, RejectReason, Settings};
pub use node::{ClusterView, MemberState, NodeId};

/// A shard's share of the cluster: the view, and on shard 0 the gossip.
#[derive(Default)]
pub struct ShardCluster {
    view: RefCell<Arc<ClusterView>>,
    gossip: RefCell<Option<Rc<Gossip>>>,
}

impl ShardCluster {
    /// What this node knows of the cluster now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    pub fn set_view(&self, view: Arc<ClusterView>) {
        *self.view.borrow_mut() = view;
    }

    /// On the shard that runs it: the gossip.
    pub fn set_gossip(&self, gossip: Rc<Gossip>) {
        *self.gossip.borrow_mut() = Some(gossip);
    }

    pub fn gossip(&self) -> Option<Rc<Gossip>> {
        self.gossip.borrow().clone()
    }

    /// For `/metrics`: gossip counters and members by state, from the
    /// shard that runs the gossip.
    pub fn stats(&self) -> Option<ClusterStats> {
        let gossip = self.gossip.borrow();
        let gossip = gossip.as_ref()?;
        Some(ClusterStats {
            gossip: gossip.stats(),
            members: self.view.borrow().counts(),
        })
    }
}

/// The cluster's part of a metrics snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub gossip: GossipStats,
    /// Other nodes by state, in [`MemberState::ALL`]'s order.
    pub members: [u64; 3],
}
