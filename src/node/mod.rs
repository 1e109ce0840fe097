//! What a node does for its cluster beyond routing, above its shards (as
//! `routing` is): the decisions are pure, in `crate::cluster`; this is
//! where they meet the shards and the links.
//!
//! - [`balance`]: load balancing by goodbye, run on shard 0.
//! - [`claims`]: a duplicate (application, client id) refused across the
//!   cluster: claims at each name's home node, releases, and claims made
//!   again when the members change.

pub mod balance;
pub mod claims;
