//! Behaviour of the whole engine through its public API: parsing (both
//! dialects, every error), evaluation of every op, index plans, and
//! property tests of the algebra the contract implies.

mod eval;
mod parse;
mod plan;
mod props;

use serde_json::{Value, json};

use super::Query;
use crate::metadata::{MetaType, MetaValue, Metadata};

/// Metadata from a JSON object, every value typed by its JSON kind.
fn meta(v: Value) -> Metadata {
    let mut md = Metadata::new();
    if let Value::Object(map) = v {
        for (k, v) in map {
            md.insert(&k, MetaValue::plain(v));
        }
    }
    md
}

/// Adds a `version`-typed key, as the store keeps it (pre-parsed).
fn with_version(mut md: Metadata, key: &str, v: &str) -> Metadata {
    md.insert(
        key,
        MetaValue {
            ty: MetaType::Version,
            value: json!(v),
            version: Some(Box::new(semver::Version::parse(v).expect("test version"))),
        },
    );
    md
}

fn query(v: Value) -> Query {
    Query::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// Does the single op `op` hold for `md`?
fn holds(md: &Metadata, op: Value) -> bool {
    query(json!({ "ops": [op] })).matches(md)
}

/// `{"path": path, "op": op, "to": {"value": value}}`.
fn cmp(path: &str, op: &str, value: Value) -> Value {
    json!({"path": path, "op": op, "to": {"value": value}})
}

/// The error text for a query.
fn error(v: Value) -> String {
    match Query::parse(&v) {
        Ok(q) => panic!("{v} parsed: {q:?}"),
        Err(e) => e.to_string(),
    }
}
