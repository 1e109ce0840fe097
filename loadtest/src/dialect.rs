//! Which server a run talks to (`--target`), and how one message, chosen by
//! a workload as a [`Pick`], is written for it. Workloads never see the
//! wire, so `targeted`, `group` and `broadcast` mean the same on both
//! targets and their figures can be compared.

use tokio_tungstenite::tungstenite::Message;

use crate::identity::Names;
use crate::nats::{self, Subjects};
use crate::wire::{self, Stamp, Target};

/// Whom one message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The one receiver with this `id`.
    Id(u64),
    /// One receiver (any) of this group.
    Group(u64),
    /// Every receiver of the application.
    App,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub app: u32,
    pub to: To,
}

impl Pick {
    pub fn stamp(self, sender: u32, t_ns: u64) -> Stamp {
        Stamp {
            t: t_ns,
            s: sender,
            a: self.app,
            r: match self.to {
                To::Id(id) => id as i64,
                _ => -1,
            },
            g: match self.to {
                To::Group(g) => g as i64,
                _ => -1,
            },
        }
    }
}

/// Writes messages for one target.
pub enum Encoder {
    /// SEND (id, group) or BROADCAST (app) dispatches, as text frames.
    Singyeong { app_json: Vec<String>, pad: String },
    /// PUB to the id, group or app subject, as binary frames.
    Nats { subjects: Subjects, pad: String },
}

impl Encoder {
    pub fn singyeong(names: &Names, payload_bytes: usize) -> Encoder {
        Encoder::Singyeong {
            app_json: (0..names.apps)
                .map(|i| serde_json::to_string(&names.app(i)).expect("a string encodes"))
                .collect(),
            pad: wire::padding(payload_bytes),
        }
    }

    pub fn nats(names: &Names, payload_bytes: usize) -> Encoder {
        Encoder::Nats {
            subjects: Subjects::new(&names.prefix, &names.run),
            pad: wire::padding(payload_bytes),
        }
    }

    /// A good first capacity for one encoded message.
    pub fn capacity(&self) -> usize {
        match self {
            Encoder::Singyeong { pad, .. } | Encoder::Nats { pad, .. } => pad.len() + 256,
        }
    }

    /// Encodes `pick` from `sender`, stamped `t_ns`, as one frame.
    pub fn frame(&self, pick: Pick, sender: u32, t_ns: u64) -> Message {
        let stamp = pick.stamp(sender, t_ns);
        let mut out = String::with_capacity(self.capacity());
        match self {
            Encoder::Singyeong { app_json, pad } => {
                let app_json = &app_json[pick.app as usize];
                let (event, target) = match pick.to {
                    To::Id(id) => ("SEND", Target::Id { app_json, id }),
                    To::Group(group) => ("SEND", Target::Group { app_json, group }),
                    To::App => ("BROADCAST", Target::App { app_json }),
                };
                wire::write_dispatch(&mut out, event, &target, &stamp, pad);
                Message::text(out)
            }
            Encoder::Nats { subjects, pad } => {
                stamp.write_payload(&mut out, pad);
                let mut subject = String::with_capacity(48);
                match pick.to {
                    To::Id(id) => subjects.write_id(&mut subject, pick.app, id),
                    To::Group(g) => subjects.write_group(&mut subject, pick.app, g),
                    To::App => subjects.write_app(&mut subject, pick.app),
                }
                nats::wrap_pub(&mut out, &subject);
                Message::binary(out.into_bytes())
            }
        }
    }
}
