//! `targeted`: every SEND names exactly one receiver by its unique `/id`,
//! chosen uniformly at random among the receivers that got to ready.

use crate::fleet::Connected;
use crate::identity::Names;
use crate::traffic::Workload;
use crate::wire::{self, Stamp, Target};

pub struct Targeted {
    receivers: Vec<u64>,
    apps: u64,
    /// Application names, JSON-encoded once.
    app_json: Vec<String>,
    pad: String,
}

pub fn workload(names: &Names, connected: &Connected, payload_bytes: usize) -> Targeted {
    Targeted {
        receivers: connected.receivers.clone(),
        apps: u64::from(names.apps),
        app_json: super::apps_json(names),
        pad: wire::padding(payload_bytes),
    }
}

impl Workload for Targeted {
    fn write(&self, sender: u32, rng: &mut fastrand::Rng, now_ns: u64, out: &mut String) {
        let id = self.receivers[rng.usize(..self.receivers.len())];
        let app = (id % self.apps) as usize;
        let stamp = Stamp {
            t: now_ns,
            s: sender,
            a: app as u32,
            r: id as i64,
        };
        let target = Target::Id {
            app_json: &self.app_json[app],
            id,
        };
        wire::write_dispatch(out, "SEND", &target, &stamp, &self.pad);
    }

    fn fanout(&self, _sender: u32) -> u64 {
        u64::from(!self.receivers.is_empty())
    }

    fn message_capacity(&self) -> usize {
        self.pad.len() + 256
    }
}
