//! Who each connection is: its application, client id and generated
//! metadata. The shape (groups, list size, distinct tag values) comes from
//! the arguments so a capacity plan can be made for metadata like the
//! user's own.

use serde_json::{Value, json};

use crate::args::Args;

/// The metadata shape every connection gets.
#[derive(Debug, Clone)]
pub struct Shape {
    pub groups: u64,
    pub list_size: u64,
    pub tag_values: u64,
}

impl Shape {
    pub fn from_args(args: &Args) -> Shape {
        Shape {
            groups: u64::from(args.groups),
            list_size: u64::from(args.list_size),
            tag_values: u64::from(args.tag_values),
        }
    }

    /// Typed metadata (contract §4): `id` (unique integer), `group`
    /// (`id % groups`), `tags` (`list_size` small integers).
    pub fn metadata(&self, id: u64) -> Value {
        let tags: Vec<u64> = (0..self.list_size)
            .map(|j| (id + j) % self.tag_values)
            .collect();
        json!({
            "id": {"type": "integer", "value": id},
            "group": {"type": "integer", "value": id % self.groups},
            "tags": {"type": "list", "value": tags},
        })
    }
}

/// The names this run uses; `run` keeps client ids unique across runs
/// against one server.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub run: String,
    pub apps: u32,
}

impl Names {
    pub fn app(&self, index: u32) -> String {
        format!("{}-{index}", self.prefix)
    }

    pub fn sender_app(&self) -> String {
        format!("{}-senders", self.prefix)
    }

    /// `generation` counts reconnects (churn); 0 is the first connection.
    pub fn receiver_client(&self, id: u64, generation: u64) -> String {
        if generation == 0 {
            format!("{}-r{id}", self.run)
        } else {
            format!("{}-r{id}-{generation}", self.run)
        }
    }

    pub fn sender_client(&self, index: u32) -> String {
        format!("{}-s{index}", self.run)
    }

    /// Receivers are spread over the applications round robin.
    pub fn app_of_receiver(&self, id: u64) -> u32 {
        (id % u64::from(self.apps)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_shape() {
        let shape = Shape {
            groups: 10,
            list_size: 3,
            tag_values: 4,
        };
        assert_eq!(
            shape.metadata(13),
            json!({"id":{"type":"integer","value":13},"group":{"type":"integer","value":3},
                   "tags":{"type":"list","value":[1,2,3]}})
        );
    }
}
