//! `broadcast`: sender `s` broadcasts to every receiver of application
//! `s % apps`; each message should reach all of that application's
//! receivers that got to ready.

use crate::dialect::{Pick, To};
use crate::fleet::Connected;
use crate::identity::Names;
use crate::traffic::Workload;

pub struct Broadcast {
    /// Identified receivers per application.
    fanout: Vec<u64>,
}

pub fn workload(names: &Names, connected: &Connected) -> Broadcast {
    let mut fanout = vec![0u64; names.apps as usize];
    for &id in &connected.receivers {
        fanout[names.app_of_receiver(id) as usize] += 1;
    }
    Broadcast { fanout }
}

impl Broadcast {
    fn app(&self, sender: u32) -> usize {
        sender as usize % self.fanout.len()
    }
}

impl Workload for Broadcast {
    fn pick(&self, sender: u32, _rng: &mut fastrand::Rng) -> Pick {
        Pick {
            app: self.app(sender) as u32,
            to: To::App,
        }
    }

    fn fanout(&self, sender: u32) -> u64 {
        self.fanout[self.app(sender)]
    }
}
