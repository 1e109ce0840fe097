//! The index lookups a query can hand to the metadata store.
//!
//! The query module decides *which* lookup a query allows (it knows the op
//! semantics); the store decides *how* to answer it (it owns the indexes).
//! This type is the contract between the two.

use serde_json::Value;

/// A lookup on one top-level metadata key that the per-shard indexes answer.
///
/// The store returns a superset-free answer: exactly the clients whose value
/// at `/key` satisfies the op under the query engine's semantics, as long as
/// the values given are scalars (string, number, boolean). A probe is only
/// built for scalar values.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `/key $eq value`.
    Eq { key: String, value: Value },
    /// `/key $in values`: the value at `/key` equals one of `values`.
    In { key: String, values: Vec<Value> },
    /// `/key $contains value`: `value` is an element of the list at `/key`,
    /// or a key of the map at `/key`.
    Contains { key: String, value: Value },
}

/// What a query's planner gives the store: a probe, and whether the probe
/// alone decides the query (`exact`: no other op and no selector remain),
/// in which case the store's answer can be counted and sampled without
/// evaluating anything per client.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexPlan {
    pub probe: Probe,
    pub exact: bool,
}
