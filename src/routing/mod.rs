//! Routing: choosing recipients for SEND / BROADCAST / QUERY_NODES.
//! [`pick`] is the pure, per-shard reduction; [`router`] runs it across
//! shards (the asking half) and [`answer`] is what each shard replies (the
//! answering half); [`remote`] is both halves one level up, across the
//! nodes of a cluster, narrowed by [`homes`] (indexed values homed over
//! the nodes).

pub mod answer;
pub mod directory;
pub mod homes;
pub mod locate;
pub mod pick;
pub mod pipeline;
pub mod remote;
pub mod router;

pub use pick::{Pick, local_pick, matching};
