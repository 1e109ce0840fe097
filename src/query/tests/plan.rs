//! Index plan choices.

use serde_json::{Value, json};

use super::{cmp, query};
use crate::metadata::{IndexPlan, Probe};

fn plan(ops: Value) -> Option<IndexPlan> {
    query(json!({ "ops": ops })).index_plan()
}

fn eq(key: &str, value: Value) -> Probe {
    Probe::Eq {
        key: key.into(),
        value,
    }
}

#[test]
fn single_ops_are_exact() {
    assert_eq!(
        plan(json!([cmp("/a", "$eq", json!("x"))])),
        Some(IndexPlan {
            probe: eq("a", json!("x")),
            exact: true
        })
    );
    assert_eq!(
        plan(json!([cmp("/a", "$in", json!([1, "two", true]))])),
        Some(IndexPlan {
            probe: Probe::In {
                key: "a".into(),
                values: vec![json!(1), json!("two"), json!(true)]
            },
            exact: true
        })
    );
    assert_eq!(
        plan(json!([cmp("/tags", "$contains", json!("gpu"))])),
        Some(IndexPlan {
            probe: Probe::Contains {
                key: "tags".into(),
                value: json!("gpu")
            },
            exact: true
        })
    );
    // The legacy form plans like its twin.
    assert_eq!(
        plan(json!([{"a": {"$eq": 2.5}}])),
        Some(IndexPlan {
            probe: eq("a", json!(2.5)),
            exact: true
        })
    );
}

#[test]
fn preference_eq_then_contains_then_in() {
    let ops = json!([
        cmp("/i", "$in", json!([1, 2])),
        cmp("/c", "$contains", json!(1)),
        cmp("/e", "$eq", json!(1)),
        cmp("/e2", "$eq", json!(2)),
    ]);
    let p = plan(ops).expect("plan");
    assert_eq!(p.probe, eq("e", json!(1)));
    assert!(!p.exact);
    let p = plan(json!([
        cmp("/i", "$in", json!([1])),
        cmp("/c", "$contains", json!(1))
    ]))
    .expect("plan");
    assert!(matches!(p.probe, Probe::Contains { ref key, .. } if key == "c"));
    let p = plan(json!([
        cmp("/i", "$in", json!([1])),
        cmp("/n", "$gt", json!(1))
    ]))
    .expect("plan");
    assert!(matches!(p.probe, Probe::In { ref key, .. } if key == "i"));
    assert!(!p.exact);
}

#[test]
fn looks_inside_and_but_not_or_or_nor() {
    let inside_and = json!([{"op": "$and", "with": [
        cmp("/n", "$gt", json!(1)),
        {"op": "$and", "with": [cmp("/a", "$eq", json!("x"))]},
    ]}]);
    let p = plan(inside_and).expect("plan");
    assert_eq!(p.probe, eq("a", json!("x")));
    assert!(!p.exact, "inside an $and is never exact");
    assert_eq!(
        plan(json!([{"op": "$or", "with": [cmp("/a", "$eq", json!(1))]}])),
        None
    );
    assert_eq!(
        plan(json!([{"op": "$nor", "with": [cmp("/a", "$eq", json!(1))]}])),
        None
    );
    // Multi-op legacy is an $and: planned, not exact.
    let p = plan(json!([{"a": {"$eq": 1, "$ne": 2}}])).expect("plan");
    assert_eq!(p.probe, eq("a", json!(1)));
    assert!(!p.exact);
}

#[test]
fn selector_prevents_exact() {
    let q = query(json!({"ops": [cmp("/a", "$eq", json!(1))], "selector": {"$min": "load"}}));
    let p = q.index_plan().expect("plan");
    assert!(!p.exact);
}

#[test]
fn unindexable_ops() {
    let none = [
        json!([]),
        json!([cmp("/a/b", "$eq", json!(1))]),
        json!([cmp("/last_heartbeat_time", "$eq", json!(1))]),
        json!([cmp("/a", "$eq", json!(null))]),
        json!([cmp("/a", "$eq", json!([1]))]),
        json!([cmp("/a", "$eq", json!({"k": 1}))]),
        json!([cmp("/a", "$in", json!([]))]),
        json!([cmp("/a", "$in", json!([1, null]))]),
        json!([cmp("/a", "$in", json!([[1]]))]),
        json!([cmp("/a", "$contains", json!(null))]),
        json!([cmp("/a", "$contains", json!([1]))]),
        json!([cmp("/a", "$ne", json!(1))]),
        json!([cmp("/a", "$gt", json!(1))]),
        json!([cmp("/a", "$nin", json!([1]))]),
        json!([cmp("/a", "$ncontains", json!(1))]),
        json!([{"path": "/a", "op": "$eq", "to": {"path": "/b"}}]),
        json!([{"path": "/a", "op": "$eq", "to": {"type": "version", "value": "x"}}]),
    ];
    for ops in none {
        assert_eq!(plan(ops.clone()), None, "{ops}");
    }
    // Version-looking strings are planned: the store's keys know versions.
    let p = plan(json!([cmp("/v", "$eq", json!("1.2.3"))])).expect("plan");
    assert_eq!(p.probe, eq("v", json!("1.2.3")));
    let p = plan(json!([cmp("/v", "$in", json!(["x", "1.0.0-rc.1"]))])).expect("plan");
    assert!(p.exact);
    // An unindexable op beside an indexable one: planned, not exact.
    let p = plan(json!([
        cmp("/last_heartbeat_time", "$eq", json!(1)),
        cmp("/b", "$eq", json!(1))
    ]))
    .expect("plan");
    assert_eq!(p.probe, eq("b", json!(1)));
    assert!(!p.exact);
}
