//! Every way a query can be malformed, with the exact text the client sees.
//!
//! The gateway sends `to_string()` of these as the `error` of an invalid
//! (op 3) packet, so the wording is part of the wire contract: each message
//! names the offending field or value, and errors inside the op tree carry
//! where they happened (`ops[2].with[0]`), because "'with' must be a list"
//! alone is useless in a query with five `with`s.

use thiserror::Error;

use super::limits::{MAX_DEPTH, MAX_OPS};

/// Why a query was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    #[error("query must be an object")]
    NotObject,

    /// A top-level query field has the wrong JSON type (`null` is always
    /// accepted and means "absent").
    #[error("'{field}' must be {expected}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
    },

    #[error("'selector' must be an object with exactly one of $min, $max, $avg")]
    SelectorShape,

    #[error("unknown selector {0}")]
    UnknownSelector(String),

    #[error("selector {0} needs a non-empty string key")]
    SelectorKey(&'static str),

    #[error("query has more than {MAX_OPS} ops")]
    TooManyOps,

    #[error("query nests deeper than {MAX_DEPTH} levels")]
    TooDeep,

    /// An error inside the op tree, with its location (`ops[0].with[1]`).
    #[error("{error} (at {at})")]
    At { at: String, error: Box<QueryError> },

    #[error("op must be an object")]
    OpNotObject,

    #[error("unknown op {0}")]
    UnknownOp(String),

    #[error("'op' must be a string")]
    OpName,

    /// An object with neither `op` nor the legacy single-key shape.
    #[error("op needs 'op' and 'path' (or the legacy form {{\"<key>\": {{\"$eq\": <value>}}}})")]
    OpShape,

    #[error("missing '{field}' for {op}")]
    Missing {
        field: &'static str,
        op: &'static str,
    },

    #[error("'{field}' must be {expected}")]
    OpFieldType {
        field: &'static str,
        expected: &'static str,
    },

    /// `{"$and": [...]}`: a logical op written as if it were a key.
    #[error("{0} is written {{\"op\": \"{0}\", \"with\": [<op>...]}}")]
    LogicalShape(&'static str),

    #[error("'with' must be a list")]
    WithNotList,

    #[error("'to' needs 'value' or 'path'")]
    ToEmpty,

    #[error("'to' must not have both 'value' and 'path'")]
    ToBoth,

    #[error("'{field}' of {op} must be a list")]
    NotAList {
        field: &'static str,
        op: &'static str,
    },

    #[error("path must start with '/': {0}")]
    PathNoSlash(String),

    #[error("path must name a metadata key: {0}")]
    PathNoKey(String),

    #[error("invalid '~' escape in path (only ~0 and ~1 are allowed): {0}")]
    PathEscape(String),

    /// Legacy form `{"<key>": X}` where X is not an object of `$op`s.
    #[error("legacy op for key '{0}' must be an object like {{\"$eq\": <value>}}")]
    LegacyNotObject(String),

    #[error("legacy op for key '{0}' has no $op")]
    LegacyEmpty(String),

    #[error("legacy {op} for key '{key}' must be a list")]
    LegacyWithNotList { key: String, op: &'static str },
}

impl QueryError {
    /// The error without its location: what went wrong, for callers that
    /// match on the kind of problem.
    pub fn problem(&self) -> &QueryError {
        match self {
            QueryError::At { error, .. } => error.problem(),
            other => other,
        }
    }
}
