//! Query engine (contract §5): which clients a SEND, BROADCAST, QUEUE or
//! HTTP query targets. Pure code: JSON in, decisions out; no I/O, no clock.
//!
//! # Layout
//!
//! - `ast`: the parsed query ([`Query`], [`Op`], [`Comparison`], ...).
//! - `parse`: query JSON → [`Query`], current op dialect; `legacy`: the
//!   older `{"<key>": {"$op": V}}` dialect. Both feed the same AST, and may
//!   be mixed in one `ops` list.
//! - `canonical`: [`Query::to_json`], a query back to current-dialect JSON.
//! - `path`: `/key/inner/0` paths, resolved against [`Metadata`].
//! - `compare`: equality and order of two values (numbers, strings,
//!   versions, deep equality).
//! - `eval`: [`Query::matches`], one client at a time.
//! - `plan`: [`Query::index_plan`], the index probe a query allows.
//! - `selector`: `$min`/`$max`/`$avg` after filtering.
//! - `rendezvous`: [`rendezvous_score`] for keyed SEND.
//! - `error`: [`QueryError`], every rejection's wire text; `limits`: the
//!   bounds on a query's shape.
//!
//! Who does what: the store filters by `application` and `restricted`,
//! uses the index plan, calls [`Query::matches`] on what remains, then
//! applies the selector, `optional` and the choice by `key`.
//!
//! [`Metadata`]: crate::metadata::Metadata

mod ast;
mod canonical;
mod compare;
mod error;
mod eval;
mod legacy;
mod limits;
mod parse;
mod path;
mod plan;
mod rendezvous;
mod selector;

#[cfg(test)]
mod tests;

pub use ast::{CmpOp, Comparison, Literal, Op, Operand, Query};
pub use error::QueryError;
pub use limits::{MAX_DEPTH, MAX_OPS};
pub use path::{Path, Resolved};
pub use rendezvous::rendezvous_score;
pub use selector::{Selector, SelectorKind};
