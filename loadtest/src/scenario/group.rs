//! `group`: every SEND targets one group of one application
//! (`/group $eq g`), which K receivers match; the server delivers it to one
//! of them. The (application, group) pair is drawn uniformly among the pairs
//! that have at least one receiver that got to ready.

use crate::dialect::{Pick, To};
use crate::fleet::Connected;
use crate::identity::{Names, Shape};
use crate::traffic::Workload;

pub struct Group {
    /// (application, group) pairs with members.
    pairs: Vec<(u32, u64)>,
}

pub fn workload(names: &Names, shape: &Shape, connected: &Connected) -> Group {
    let mut pairs: Vec<(u32, u64)> = connected
        .receivers
        .iter()
        .map(|&id| (names.app_of_receiver(id), id % shape.groups))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    Group { pairs }
}

impl Group {
    /// Receivers matched by each target, on average (K).
    pub fn members_per_group(&self, receivers: usize) -> f64 {
        receivers as f64 / self.pairs.len().max(1) as f64
    }
}

impl Workload for Group {
    fn pick(&self, _sender: u32, rng: &mut fastrand::Rng) -> Pick {
        let (app, group) = self.pairs[rng.usize(..self.pairs.len())];
        Pick {
            app,
            to: To::Group(group),
        }
    }

    fn fanout(&self, _sender: u32) -> u64 {
        u64::from(!self.pairs.is_empty())
    }
}
