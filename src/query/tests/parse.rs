//! Parsing: fields, both dialects, and the text of every error.

use serde_json::{Value, json};

use super::{cmp, error, query};
use crate::query::{
    CmpOp, Comparison, Literal, MAX_DEPTH, MAX_OPS, Op, Operand, Path, Query, QueryError, Selector,
    SelectorKind,
};

/// The error text for a query whose only op is `op`.
fn op_error(op: Value) -> String {
    error(json!({ "ops": [op] }))
}

fn eq_a(value: Value) -> Op {
    Op::Compare(Comparison {
        path: Path::parse("/a").expect("path"),
        op: CmpOp::Eq,
        to: Operand::Value(Literal::new(value, false)),
        as_version: false,
    })
}

#[test]
fn defaults() {
    let q = query(json!({}));
    assert_eq!(
        q,
        Query {
            application: None,
            restricted: false,
            key: None,
            droppable: false,
            optional: false,
            ops: vec![],
            selector: None,
        }
    );
    // null is absent, everywhere.
    let nulls = json!({"application": null, "restricted": null, "key": null,
        "droppable": null, "optional": null, "ops": null, "selector": null});
    assert_eq!(query(nulls), q);
}

#[test]
fn all_fields() {
    let q = query(json!({
        "application": "app", "restricted": true, "key": "k", "droppable": true,
        "optional": true, "ops": [cmp("/a", "$eq", json!(1))], "selector": {"$max": "load"},
        "some_client_extension": [1, 2, 3],
    }));
    assert_eq!(q.application.as_deref(), Some("app"));
    assert!(q.restricted && q.droppable && q.optional);
    assert_eq!(q.key.as_deref(), Some("k"));
    assert_eq!(q.ops, vec![eq_a(json!(1))]);
    assert_eq!(
        q.selector,
        Some(Selector {
            kind: SelectorKind::Max,
            key: "load".into()
        })
    );
}

#[test]
fn both_dialects_give_the_same_ast() {
    let current = query(json!({"ops": [cmp("/a", "$eq", json!("x"))]}));
    let legacy = query(json!({"ops": [{"a": {"$eq": "x"}}]}));
    assert_eq!(current, legacy);
    let multi = query(json!({"ops": [{"a": {"$eq": 1, "$ne": 2}}]}));
    assert!(matches!(multi.ops.as_slice(), [Op::And(both)] if both.len() == 2));
    let logical = query(json!({"ops": [{"a": {"$or": [{"$eq": 1}, {"$eq": 2}]}}]}));
    assert_eq!(
        logical.ops,
        vec![Op::Or(vec![eq_a(json!(1)), eq_a(json!(2))])]
    );
}

#[test]
fn to_forms() {
    let q = query(json!({"ops": [{"path": "/a", "op": "$lt",
        "to": {"path": "/b", "default": 3, "type": "integer"}}]}));
    let Op::Compare(c) = &q.ops[0] else {
        panic!("not a comparison")
    };
    assert_eq!(
        c.to,
        Operand::Path {
            path: Path::parse("/b").expect("path"),
            default: Some(Literal::new(json!(3), false)),
        }
    );
    assert!(!c.as_version);
    // value: null beside a path is serializer noise; null default is none.
    let q = query(json!({"ops": [{"path": "/a", "op": "$eq",
        "to": {"path": "/b", "value": null, "default": null}}]}));
    let Op::Compare(c) = &q.ops[0] else {
        panic!("not a comparison")
    };
    assert_eq!(
        c.to,
        Operand::Path {
            path: Path::parse("/b").expect("path"),
            default: None
        }
    );
    // value: null is a value when there is no path.
    let q = query(json!({"ops": [cmp("/a", "$eq", json!(null))]}));
    assert_eq!(q.ops, vec![eq_a(json!(null))]);
    // "type": "version" pre-parses the value.
    let q = query(json!({"ops": [{"path": "/a", "op": "$gt",
        "to": {"type": "version", "value": "1.2.3"}}]}));
    let Op::Compare(c) = &q.ops[0] else {
        panic!("not a comparison")
    };
    assert!(c.as_version);
    assert_eq!(
        c.to,
        Operand::Value(Literal {
            value: json!("1.2.3"),
            version: Some(semver::Version::new(1, 2, 3))
        })
    );
}

#[test]
fn top_level_field_errors() {
    assert_eq!(error(json!([])), "query must be an object");
    assert_eq!(error(json!("q")), "query must be an object");
    assert_eq!(error(json!(null)), "query must be an object");
    assert_eq!(
        error(json!({"application": 1})),
        "'application' must be a string or null"
    );
    assert_eq!(
        error(json!({"key": ["k"]})),
        "'key' must be a string or null"
    );
    assert_eq!(
        error(json!({"restricted": "yes"})),
        "'restricted' must be a boolean"
    );
    assert_eq!(
        error(json!({"droppable": 0})),
        "'droppable' must be a boolean"
    );
    assert_eq!(
        error(json!({"optional": {}})),
        "'optional' must be a boolean"
    );
    assert_eq!(error(json!({"ops": {}})), "'ops' must be a list or null");
    assert_eq!(error(json!({"ops": "x"})), "'ops' must be a list or null");
    assert_eq!(
        error(json!({"selector": {"$median": "x"}})),
        "unknown selector $median"
    );
    assert_eq!(
        error(json!({"selector": "$min"})),
        "'selector' must be an object with exactly one of $min, $max, $avg"
    );
    assert_eq!(
        error(json!({"selector": {"$min": 1}})),
        "selector $min needs a non-empty string key"
    );
}

#[test]
fn current_dialect_errors() {
    let cases: Vec<(Value, &str)> = vec![
        (json!(1), "op must be an object (at ops[0])"),
        (json!([]), "op must be an object (at ops[0])"),
        (
            json!({"path": "/a", "op": "$foo", "to": {"value": 1}}),
            "unknown op $foo (at ops[0])",
        ),
        (
            json!({"path": "/a", "op": "$not", "to": {"value": 1}}),
            "unknown op $not (at ops[0])",
        ),
        (
            json!({"path": "/a", "op": 5, "to": {"value": 1}}),
            "'op' must be a string (at ops[0])",
        ),
        (
            json!({"path": "/a", "to": {"value": 1}}),
            "op needs 'op' and 'path' (or the legacy form {\"<key>\": {\"$eq\": <value>}}) (at ops[0])",
        ),
        (
            json!({}),
            "op needs 'op' and 'path' (or the legacy form {\"<key>\": {\"$eq\": <value>}}) (at ops[0])",
        ),
        (
            json!({"path": "/a"}),
            "op needs 'op' and 'path' (or the legacy form {\"<key>\": {\"$eq\": <value>}}) (at ops[0])",
        ),
        (
            json!({"op": "$eq", "to": {"value": 1}}),
            "missing 'path' for $eq (at ops[0])",
        ),
        (
            json!({"op": "$eq", "path": null, "to": {"value": 1}}),
            "missing 'path' for $eq (at ops[0])",
        ),
        (
            json!({"op": "$eq", "path": 5, "to": {"value": 1}}),
            "'path' must be a string (at ops[0])",
        ),
        (
            json!({"op": "$eq", "path": "a/b", "to": {"value": 1}}),
            "path must start with '/': a/b (at ops[0])",
        ),
        (
            json!({"op": "$eq", "path": "/", "to": {"value": 1}}),
            "path must name a metadata key: / (at ops[0])",
        ),
        (
            json!({"op": "$eq", "path": "/a~x", "to": {"value": 1}}),
            "invalid '~' escape in path (only ~0 and ~1 are allowed): /a~x (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a"}),
            "missing 'to' for $gt (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a", "to": 5}),
            "'to' must be an object (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a", "to": {}}),
            "'to' needs 'value' or 'path' (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a", "to": {"type": "version"}}),
            "'to' needs 'value' or 'path' (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a", "to": {"value": 1, "path": "/b"}}),
            "'to' must not have both 'value' and 'path' (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a", "to": {"path": 3}}),
            "'to.path' must be a string (at ops[0])",
        ),
        (
            json!({"op": "$gt", "path": "/a", "to": {"path": "b"}}),
            "path must start with '/': b (at ops[0])",
        ),
        (
            json!({"op": "$in", "path": "/a", "to": {"value": 3}}),
            "'to.value' of $in must be a list (at ops[0])",
        ),
        (
            json!({"op": "$nin", "path": "/a", "to": {"value": null}}),
            "'to.value' of $nin must be a list (at ops[0])",
        ),
        (
            json!({"op": "$nin", "path": "/a", "to": {"path": "/b", "default": 3}}),
            "'to.default' of $nin must be a list (at ops[0])",
        ),
        (json!({"op": "$and"}), "missing 'with' for $and (at ops[0])"),
        (
            json!({"op": "$nor", "with": null}),
            "missing 'with' for $nor (at ops[0])",
        ),
        (
            json!({"op": "$or", "with": {}}),
            "'with' must be a list (at ops[0])",
        ),
        (
            json!({"op": "$or", "with": [3]}),
            "op must be an object (at ops[0].with[0])",
        ),
        (
            json!({"$and": [cmp("/a", "$eq", json!(1))]}),
            "$and is written {\"op\": \"$and\", \"with\": [<op>...]} (at ops[0])",
        ),
    ];
    for (op, expected) in cases {
        assert_eq!(op_error(op.clone()), expected, "{op}");
    }
}

#[test]
fn errors_locate_deep_ops() {
    let bad = json!({"ops": [
        cmp("/a", "$eq", json!(1)),
        {"op": "$and", "with": [cmp("/a", "$eq", json!(1)), {"op": "$or", "with": [{"op": "$bad"}]}]},
    ]});
    assert_eq!(
        error(bad.clone()),
        "unknown op $bad (at ops[1].with[1].with[0])"
    );
    let err = Query::parse(&bad).unwrap_err();
    assert_eq!(err.problem(), &QueryError::UnknownOp("$bad".into()));
    assert!(matches!(err, QueryError::At { ref at, .. } if at == "ops[1].with[1].with[0]"));
}

#[test]
fn legacy_dialect_errors() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"k": 5}),
            "legacy op for key 'k' must be an object like {\"$eq\": <value>} (at ops[0])",
        ),
        (
            json!({"k": {}}),
            "legacy op for key 'k' has no $op (at ops[0])",
        ),
        (json!({"k": {"$foo": 1}}), "unknown op $foo (at ops[0])"),
        (json!({"k": {"eq": 1}}), "unknown op eq (at ops[0])"),
        (
            json!({"k": {"$not": {"$eq": 1}}}),
            "unknown op $not (at ops[0])",
        ),
        (
            json!({"k": {"$in": 5}}),
            "'value' of $in must be a list (at ops[0])",
        ),
        (
            json!({"k": {"$and": 5}}),
            "legacy $and for key 'k' must be a list (at ops[0])",
        ),
        (
            json!({"k": {"$or": [{"$eq": 1}, 5]}}),
            "legacy op for key 'k' must be an object like {\"$eq\": <value>} (at ops[0].$or[1])",
        ),
        (
            json!({"k": {"$or": [{"$bad": 1}]}}),
            "unknown op $bad (at ops[0].$or[0])",
        ),
        (
            json!({"k": {"$or": [{"$and": [{}]}]}}),
            "legacy op for key 'k' has no $op (at ops[0].$or[0].$and[0])",
        ),
        (
            json!({"": {"$eq": 1}}),
            "path must name a metadata key: / (at ops[0])",
        ),
    ];
    for (op, expected) in cases {
        assert_eq!(op_error(op.clone()), expected, "{op}");
    }
}

/// `depth` levels of `$and`, the innermost holding one comparison.
fn nested(depth: usize) -> Value {
    (1..depth).fold(
        cmp("/a", "$eq", json!(1)),
        |inner, _| json!({"op": "$and", "with": [inner]}),
    )
}

/// The same in the legacy dialect.
fn nested_legacy(depth: usize) -> Value {
    let inner = (1..depth).fold(json!({"$eq": 1}), |inner, _| json!({"$and": [inner]}));
    json!({ "a": inner })
}

#[test]
fn depth_limit() {
    assert!(Query::parse(&json!({"ops": [nested(MAX_DEPTH)]})).is_ok());
    let err = Query::parse(&json!({"ops": [nested(MAX_DEPTH + 1)]})).unwrap_err();
    assert_eq!(err.problem(), &QueryError::TooDeep);
    assert!(
        err.to_string()
            .starts_with("query nests deeper than 32 levels (at ops[0].with[0]")
    );
    assert!(Query::parse(&json!({"ops": [nested_legacy(MAX_DEPTH)]})).is_ok());
    let err = Query::parse(&json!({"ops": [nested_legacy(MAX_DEPTH + 1)]})).unwrap_err();
    assert_eq!(err.problem(), &QueryError::TooDeep);
    // Far past the limit: an error, not a stack overflow.
    let deep = Query::parse(&json!({"ops": [nested(120)]})).unwrap_err();
    assert_eq!(deep.problem(), &QueryError::TooDeep);
}

#[test]
fn op_count_limit() {
    let ops = |n: usize| json!({ "ops": vec![cmp("/a", "$eq", json!(1)); n] });
    assert!(Query::parse(&ops(MAX_OPS)).is_ok());
    let err = Query::parse(&ops(MAX_OPS + 1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "query has more than 1024 ops (at ops[1024])"
    );
    // Logical nodes count too.
    let wrapped =
        json!({"ops": [{"op": "$or", "with": vec![cmp("/a", "$eq", json!(1)); MAX_OPS]}]});
    assert_eq!(
        Query::parse(&wrapped).unwrap_err().problem(),
        &QueryError::TooManyOps
    );
    // As do legacy ops, one per $op.
    let legacy = json!({ "ops": vec![json!({"a": {"$gt": 0, "$lt": 9}}); MAX_OPS / 2 + 1] });
    assert_eq!(
        Query::parse(&legacy).unwrap_err().problem(),
        &QueryError::TooManyOps
    );
}
