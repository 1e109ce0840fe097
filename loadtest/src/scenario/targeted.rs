//! `targeted`: every SEND names exactly one receiver by its unique `/id`,
//! chosen uniformly at random among the receivers that got to ready (under
//! churn: among those connected at the time of sending).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dialect::{Pick, To};
use crate::fleet::Connected;
use crate::identity::Names;
use crate::traffic::Workload;

/// Under churn, how many draws a sender makes looking for a connected
/// receiver before it sends to a disconnected one anyway (and the server
/// answers no_route, or NATS drops it: either way a loss in the report).
const UP_DRAWS: usize = 8;

pub struct Targeted {
    receivers: Vec<u64>,
    apps: u64,
    /// Churn: which receivers are connected, by id.
    up: Option<Arc<Vec<AtomicBool>>>,
}

pub fn workload(
    names: &Names,
    connected: &Connected,
    up: Option<Arc<Vec<AtomicBool>>>,
) -> Targeted {
    Targeted {
        receivers: connected.receivers.clone(),
        apps: u64::from(names.apps),
        up,
    }
}

impl Targeted {
    fn draw(&self, rng: &mut fastrand::Rng) -> u64 {
        let mut any = || self.receivers[rng.usize(..self.receivers.len())];
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
    fn pick(&self, _sender: u32, rng: &mut fastrand::Rng) -> Pick {
        let id = self.draw(rng);
        Pick {
            app: (id % self.apps) as u32,
            to: To::Id(id),
        }
    }

    fn fanout(&self, _sender: u32) -> u64 {
        u64::from(!self.receivers.is_empty())
    }
}
