//! [`Query`] → query JSON: the inverse of `parse`, so that a query can
//! cross the cluster as bytes and be parsed again, with the receiving
//! node's own parser and limits, into an equal [`Query`].
//!
//! The output is always the current dialect (contract §5), whichever
//! dialect the query came in: a legacy `{"<key>": {"$op": V}}` becomes
//! `{"path": "/<key>", "op": "$op", "to": {"value": V}}` with the key
//! escaped as a path, and a legacy object of several `$op`s becomes the
//! `$and` it was parsed into. Every top-level field is written, `null`
//! for an absent one, as the contract lists them.
//!
//! Literals are written as parsed, so the receiver must read the bytes with
//! a correctly rounded float parser (sonic-rs, as `protocol/json.rs` does):
//! serde_json's default one brings some floats back one ulp off, and an
//! `$eq` on such a float would then differ from node to node.
//!
//! Known gap: the `$and` a legacy object of several `$op`s is parsed into
//! is counted by neither [`MAX_DEPTH`] nor [`MAX_OPS`] (its `$op`s sit at
//! the object's own depth), while a written `$and` counts as an op and
//! puts its children one level deeper. So a legacy query at those limits
//! parses, but its canonical JSON does not.
//!
//! [`MAX_DEPTH`]: super::MAX_DEPTH
//! [`MAX_OPS`]: super::MAX_OPS

use serde_json::{Map, Value, json};

use super::ast::{Comparison, Op, Operand, Query};

impl Query {
    /// The query as JSON in the current dialect, such that
    /// `Query::parse(&q.to_json()) == Ok(q)` for every query `parse`
    /// returns (but see the module doc for queries at the limits).
    pub fn to_json(&self) -> Value {
        json!({
            "application": self.application,
            "restricted": self.restricted,
            "key": self.key,
            "droppable": self.droppable,
            "optional": self.optional,
            "ops": ops_json(&self.ops),
            "selector": self.selector.as_ref().map(|s| json!({ (s.kind.name()): s.key })),
        })
    }
}

fn ops_json(ops: &[Op]) -> Value {
    ops.iter().map(op_json).collect()
}

fn op_json(op: &Op) -> Value {
    let (name, with) = match op {
        Op::Compare(c) => return comparison_json(c),
        Op::And(with) => ("$and", with),
        Op::Or(with) => ("$or", with),
        Op::Nor(with) => ("$nor", with),
    };
    json!({"op": name, "with": ops_json(with)})
}

/// `{"path", "op", "to"}`. Three entries, so it can never be read back as
/// a legacy op (which is exactly one object-valued entry).
fn comparison_json(c: &Comparison) -> Value {
    let mut to = Map::new();
    match &c.to {
        // A null value is written as is: `{"value": null}` is `$eq null`.
        Operand::Value(literal) => {
            to.insert("value".into(), literal.value.clone());
        }
        // No default is written as none: parse reads an absent and a null
        // default alike, and never keeps a null one.
        Operand::Path { path, default } => {
            to.insert("path".into(), path.to_string().into());
            if let Some(default) = default {
                to.insert("default".into(), default.value.clone());
            }
        }
    }
    // A literal's pre-parsed version is not written: parse derives it again
    // from the value and this flag.
    if c.as_version {
        to.insert("type".into(), "version".into());
    }
    json!({"path": c.path.to_string(), "op": c.op.name(), "to": to})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{MAX_DEPTH, MAX_OPS, QueryError};

    /// Parses `input`, checks that its canonical JSON parses back to the
    /// same query, also through bytes as it crosses the cluster, and
    /// returns that canonical JSON.
    fn canonical(input: Value) -> Value {
        let q = Query::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        let out = q.to_json();
        assert_eq!(Query::parse(&out), Ok(q.clone()), "{out}");
        // Read with sonic-rs, as the server reads JSON: serde_json's
        // default parser does not round every float correctly.
        let bytes = serde_json::to_vec(&out).expect("serialize");
        let back: Value = sonic_rs::from_slice(&bytes).expect("deserialize");
        assert_eq!(Query::parse(&back), Ok(q), "{out}");
        out
    }

    /// The canonical JSON of a query whose only op is `op`: that op's.
    fn canonical_op(op: Value) -> Value {
        canonical(json!({ "ops": [op] }))["ops"][0].clone()
    }

    #[test]
    fn every_comparison_op() {
        for op in [
            "$eq",
            "$ne",
            "$gt",
            "$gte",
            "$lt",
            "$lte",
            "$in",
            "$nin",
            "$contains",
            "$ncontains",
        ] {
            let written = json!({"path": "/a", "op": op, "to": {"value": [1, "x"]}});
            assert_eq!(canonical_op(written.clone()), written);
        }
        let null = json!({"path": "/a", "op": "$eq", "to": {"value": null}});
        assert_eq!(canonical_op(null.clone()), null);
        // A float serde_json's default parser reads back one ulp off.
        let float = json!({"path": "/a", "op": "$eq", "to": {"value": -4.5744279469711886e-178}});
        assert_eq!(canonical_op(float.clone()), float);
    }

    #[test]
    fn logical_ops_nest() {
        let a = json!({"path": "/a", "op": "$gt", "to": {"value": 1}});
        let b = json!({"path": "/b/0", "op": "$eq", "to": {"value": {"x": [true]}}});
        let tree = json!({"op": "$nor", "with": [
            {"op": "$or", "with": [a, {"op": "$and", "with": [b, {"op": "$or", "with": []}]}]},
            {"op": "$and", "with": []},
        ]});
        assert_eq!(canonical_op(tree.clone()), tree);
    }

    #[test]
    fn path_operands_and_versions() {
        let plain = json!({"path": "/a", "op": "$lt", "to": {"path": "/b/c"}});
        assert_eq!(canonical_op(plain.clone()), plain);
        let with_default =
            json!({"path": "/a", "op": "$in", "to": {"path": "/b", "default": [1, 2]}});
        assert_eq!(canonical_op(with_default.clone()), with_default);
        let version = json!({"path": "/v", "op": "$gte",
            "to": {"path": "/w", "default": "1.2.3", "type": "version"}});
        assert_eq!(canonical_op(version.clone()), version);
        let version =
            json!({"path": "/v", "op": "$lt", "to": {"value": "2.0.0-rc.1", "type": "version"}});
        assert_eq!(canonical_op(version.clone()), version);
        // A `type: version` on a value that is no version stays, as parse
        // keeps the flag (such a comparison is false).
        let bad = json!({"path": "/v", "op": "$eq", "to": {"value": "x", "type": "version"}});
        assert_eq!(canonical_op(bad.clone()), bad);
    }

    #[test]
    fn noise_parse_tolerates_is_not_written() {
        let noisy = json!({"path": "/a", "op": "$eq", "extra": 1,
            "to": {"path": "/b", "value": null, "default": null, "type": "string"}});
        assert_eq!(
            canonical_op(noisy),
            json!({"path": "/a", "op": "$eq", "to": {"path": "/b"}})
        );
    }

    #[test]
    fn unusual_path_characters_are_escaped() {
        let odd = json!({"path": "/x~1y/t~0//~01/~10/é/ /01",
            "op": "$eq", "to": {"path": "/m/", "default": "~"}});
        assert_eq!(canonical_op(odd.clone()), odd);
    }

    #[test]
    fn top_level_fields() {
        let full = json!({
            "application": "app", "restricted": true, "key": "k", "droppable": true,
            "optional": true, "ops": [], "selector": {"$avg": "load"},
        });
        assert_eq!(canonical(full.clone()), full);
        let mut with_unknown = full.clone();
        with_unknown["client_extension"] = json!([1]);
        assert_eq!(canonical(with_unknown), full);
        // Absent, null and empty all come out as the contract's defaults.
        let defaults = json!({
            "application": null, "restricted": false, "key": null, "droppable": false,
            "optional": false, "ops": [], "selector": null,
        });
        assert_eq!(canonical(json!({})), defaults);
        assert_eq!(canonical(json!({"ops": null, "selector": null})), defaults);
        // The empty strings parse accepts are kept, not read as absent.
        let empty = canonical(json!({"application": "", "key": ""}));
        assert_eq!(
            (&empty["application"], &empty["key"]),
            (&json!(""), &json!(""))
        );
        for kind in ["$min", "$max", "$avg"] {
            let q = canonical(json!({"selector": { kind: "a/~b" }}));
            assert_eq!(q["selector"], json!({ kind: "a/~b" }));
        }
    }

    #[test]
    fn legacy_comes_out_current() {
        let q = canonical(json!({"ops": [
            {"n": {"$gte": 1, "$lt": 5}},
            {"a/b~c": {"$in": [1, 2]}},
            {"v": {"$or": [{"$eq": "1.0.0"}, {"$nor": [{"$gt": 10}, {"$lt": 0}]}]}},
            {"path": "/x", "op": "$ne", "to": {"value": 0}},
        ]}));
        let cmp =
            |path: &str, op: &str, v: Value| json!({"path": path, "op": op, "to": {"value": v}});
        assert_eq!(
            q["ops"],
            json!([
                {"op": "$and", "with": [cmp("/n", "$gte", json!(1)), cmp("/n", "$lt", json!(5))]},
                cmp("/a~1b~0c", "$in", json!([1, 2])),
                {"op": "$or", "with": [
                    cmp("/v", "$eq", json!("1.0.0")),
                    {"op": "$nor", "with": [cmp("/v", "$gt", json!(10)), cmp("/v", "$lt", json!(0))]},
                ]},
                cmp("/x", "$ne", json!(0)),
            ])
        );
    }

    /// The known gap (module doc): a legacy object of several `$op`s at the
    /// limits parses, its canonical `$and` does not. If this starts to
    /// round-trip, the gap is closed: update the module doc.
    #[test]
    fn legacy_and_at_the_limits_does_not_round_trip() {
        let mut deepest = json!({"n": {"$gte": 1, "$lt": 5}});
        for _ in 1..MAX_DEPTH {
            deepest = json!({"n": {"$or": [deepest["n"]]}});
        }
        let q = Query::parse(&json!({ "ops": [deepest] })).expect("legacy at MAX_DEPTH");
        let err = Query::parse(&q.to_json()).unwrap_err();
        assert_eq!(err.problem(), &QueryError::TooDeep);

        let pairs = vec![json!({"n": {"$gte": 1, "$lt": 5}}); MAX_OPS / 2];
        let q = Query::parse(&json!({ "ops": pairs })).expect("legacy at MAX_OPS");
        let err = Query::parse(&q.to_json()).unwrap_err();
        assert_eq!(err.problem(), &QueryError::TooManyOps);
    }
}
