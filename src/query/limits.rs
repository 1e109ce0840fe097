//! Bounds on the work one query can ask for.
//!
//! A query arrives from any client and is evaluated against every client of
//! a shard, so its size is the multiplier on all of that work. The frame
//! size limit already bounds the bytes; these bound the shape, so that a
//! small frame cannot describe a deep tree (stack) or a huge op list (CPU
//! per client). Real queries use a handful of ops and one or two levels.

/// Deepest nesting of logical ops (`$and`/`$or`/`$nor`, either dialect).
/// The top-level `ops` list is depth 1.
pub const MAX_DEPTH: usize = 32;

/// Most op nodes (comparisons and logical ops together) in one query.
pub const MAX_OPS: usize = 1024;
