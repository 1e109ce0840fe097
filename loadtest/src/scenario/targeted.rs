//! `targeted`: every SEND names exactly one receiver by its unique `/id`,
//! chosen uniformly at random among the receivers that got to ready (under
//! churn: among those connected at the time of sending) and that the
//! sender may choose under `--placement` (with several servers: on any
//! node, only on other nodes than the sender's, or only on its own; see
//! [`crate::spread`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dialect::{Pick, To};
use crate::identity::Names;
use crate::spread::Candidates;
use crate::traffic::Workload;

/// Under churn, how many draws a sender makes looking for a connected
/// receiver before it sends to a disconnected one anyway (and the server
/// answers no_route, or NATS drops it: either way a loss in the report).
const UP_DRAWS: usize = 8;

pub struct Targeted {
    receivers: Candidates,
    apps: u64,
    /// Churn: which receivers are connected, by id.
    up: Option<Arc<Vec<AtomicBool>>>,
}

/// `receivers`: for each sender, the receivers it may choose (of those
/// that got to ready).
pub fn workload(
    names: &Names,
    receivers: Candidates,
    up: Option<Arc<Vec<AtomicBool>>>,
) -> Targeted {
    Targeted {
        receivers,
        apps: u64::from(names.apps),
        up,
    }
}

impl Targeted {
    /// Sender `sender`'s next receiver; only called when it has some
    /// (its fanout is 0 otherwise, so it sends nothing).
    fn draw(&self, sender: u32, rng: &mut fastrand::Rng) -> u64 {
        let receivers = self.receivers.for_sender(sender);
        let mut any = || receivers[rng.usize(..receivers.len())];
        let Some(up) = &self.up else { return any() };
        let mut id = any();
        for _ in 1..UP_DRAWS {
            if up[id as usize].load(Ordering::Acquire) {
                break;
            }
            id = any();
        }
        id
    }
}

impl Workload for Targeted {
    fn pick(&self, sender: u32, rng: &mut fastrand::Rng) -> Pick {
        let id = self.draw(sender, rng);
        Pick {
            app: (id % self.apps) as u32,
            to: To::Id(id),
        }
    }

    fn fanout(&self, sender: u32) -> u64 {
        u64::from(!self.receivers.for_sender(sender).is_empty())
    }
}
