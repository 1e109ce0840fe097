//! `broadcast`: sender `s` broadcasts to every receiver of application
//! `s % apps`; each message should reach all of that application's
//! receivers that got to ready.

use crate::fleet::Connected;
use crate::identity::Names;
use crate::traffic::Workload;
use crate::wire::{self, Stamp, Target};

pub struct Broadcast {
    /// Identified receivers per application.
    fanout: Vec<u64>,
    app_json: Vec<String>,
    pad: String,
}

pub fn workload(names: &Names, connected: &Connected, payload_bytes: usize) -> Broadcast {
    let mut fanout = vec![0u64; names.apps as usize];
    for &id in &connected.receivers {
        fanout[names.app_of_receiver(id) as usize] += 1;
    }
    Broadcast {
        fanout,
        app_json: super::apps_json(names),
        pad: wire::padding(payload_bytes),
    }
}

impl Broadcast {
    fn app(&self, sender: u32) -> usize {
        sender as usize % self.fanout.len()
    }
}

impl Workload for Broadcast {
    fn write(&self, sender: u32, _rng: &mut fastrand::Rng, now_ns: u64, out: &mut String) {
        let app = self.app(sender);
        let stamp = Stamp {
            t: now_ns,
            s: sender,
            a: app as u32,
            r: -1,
        };
        let target = Target::App {
            app_json: &self.app_json[app],
        };
        wire::write_dispatch(out, "BROADCAST", &target, &stamp, &self.pad);
    }

    fn fanout(&self, sender: u32) -> u64 {
        self.fanout[self.app(sender)]
    }

    fn message_capacity(&self) -> usize {
        self.pad.len() + 192
    }
}
