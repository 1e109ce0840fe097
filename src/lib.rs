//! 신경 (singyeong): a thread-per-core, io_uring message bus.
//!
//! # Layout
//!
//! Pure core (no I/O, no clock; `now` is passed in):
//! - [`protocol`]: packets, opcodes, the three wire encodings, error texts.
//! - [`metadata`]: typed metadata values, update validation, the per-shard
//!   store of clients with its indexes.
//! - [`query`]: the query language: parsing both dialects, evaluation,
//!   selectors, rendezvous hashing, index planning.

pub mod metadata;
pub mod protocol;
pub mod query;
