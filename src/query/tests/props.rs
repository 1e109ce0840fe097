//! Property tests: the algebra the contract implies, checked on small
//! random metadata and ops, and robustness on arbitrary JSON.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::holds;
use crate::metadata::{MetaType, MetaValue, Metadata, Probe, ScalarKey};
use crate::query::{Path, Query};

const KEYS: [&str; 4] = ["a", "b", "c", "k"];

/// Small scalars that collide often: equal numbers of both kinds, strings
/// that are and are not versions.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::from),
        prop::sample::select(vec![-1.5, 0.0, -0.0, 1.0, 2.0, 2.5, 1e300]).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "a",
            "b",
            "1.0.0",
            "1.10.0",
            "2.0.0-rc.1",
            "1.0.0+x"
        ])
        .prop_map(Value::from),
    ]
}

/// Scalars, half of them strings where version precedence and string
/// equality disagree.
fn scalar_or_version() -> impl Strategy<Value = Value> {
    prop_oneof![
        scalar(),
        prop::sample::select(vec!["1.0.0", "1.0.0+x", "1.0.0+y", "2.0.0-rc.1", "x"])
            .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), inner, 0..3).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// Metadata over [`KEYS`]; a string that parses as a version is declared
/// `version` when the flag says so.
fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::vec(
        (prop::sample::select(KEYS.to_vec()), value(), any::<bool>()),
        0..5,
    )
    .prop_map(|entries| {
        let mut md = Metadata::new();
        for (key, value, typed) in entries {
            let version = value.as_str().and_then(|s| semver::Version::parse(s).ok());
            let mv = match version {
                Some(v) if typed => MetaValue {
                    ty: MetaType::Version,
                    value,
                    version: Some(Box::new(v)),
                },
                _ => MetaValue::plain(value),
            };
            md.insert(key, mv);
        }
        md
    })
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(KEYS.to_vec()),
        prop::option::of(prop::sample::select(vec!["a", "b", "0", "1"])),
    )
        .prop_map(|(key, inner)| match inner {
            Some(seg) => format!("/{key}/{seg}"),
            None => format!("/{key}"),
        })
}

/// A `to` object: a literal or another path (maybe with a default),
/// maybe typed version.
fn to() -> impl Strategy<Value = Value> {
    let form = prop_oneof![
        value().prop_map(|v| json!({ "value": v })),
        (path(), prop::option::of(value())).prop_map(|(p, d)| match d {
            Some(d) => json!({"path": p, "default": d}),
            None => json!({ "path": p }),
        }),
    ];
    (form, any::<bool>()).prop_map(|(mut to, typed)| {
        if typed && let Value::Object(obj) = &mut to {
            obj.insert("type".into(), json!("version"));
        }
        to
    })
}

const SCALAR_OPS: [&str; 6] = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"];

/// Any valid comparison op.
fn comparison() -> impl Strategy<Value = Value> {
    let scalar_op = (path(), prop::sample::select(SCALAR_OPS.to_vec()), to())
        .prop_map(|(p, op, to)| json!({"path": p, "op": op, "to": to}));
    let list_op = (
        path(),
        prop::sample::select(vec!["$in", "$nin"]),
        prop::collection::vec(value(), 0..4),
    )
        .prop_map(|(p, op, xs)| json!({"path": p, "op": op, "to": {"value": xs}}));
    let contains_op = (
        path(),
        prop::sample::select(vec!["$contains", "$ncontains"]),
        to(),
    )
        .prop_map(|(p, op, to)| json!({"path": p, "op": op, "to": to}));
    prop_oneof![scalar_op, list_op, contains_op]
}

/// Any valid op, logical ones included.
fn op() -> impl Strategy<Value = Value> {
    comparison().prop_recursive(3, 16, 3, |inner| {
        (
            prop::sample::select(vec!["$and", "$or", "$nor"]),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(op, with)| json!({"op": op, "with": with}))
    })
}

/// Ops of the shapes the planner picks (top-level key, literal scalars),
/// so that plans are common enough to test.
fn plannable() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(KEYS.to_vec());
    prop_oneof![
        (key.clone(), scalar())
            .prop_map(|(k, v)| json!({"path": format!("/{k}"), "op": "$eq", "to": {"value": v}})),
        (key.clone(), scalar()).prop_map(|(k, v)| json!({ k: {"$eq": v} })),
        (key.clone(), scalar()).prop_map(
            |(k, v)| json!({"path": format!("/{k}"), "op": "$contains", "to": {"value": v}})
        ),
        (key, prop::collection::vec(scalar(), 0..3))
            .prop_map(|(k, v)| json!({"path": format!("/{k}"), "op": "$in", "to": {"value": v}})),
    ]
}

/// Does the path resolve in `md`?
fn resolves(md: &Metadata, path: &str) -> bool {
    Path::parse(path).ok().and_then(|p| p.resolve(md)).is_some()
}

/// Does a `to` produce a value for `md`?
fn to_resolves(md: &Metadata, to: &Value) -> bool {
    match to.get("path").and_then(Value::as_str) {
        Some(p) => resolves(md, p) || to.get("default").is_some_and(|d| !d.is_null()),
        None => true,
    }
}

/// The probe's own answer: its op, evaluated by the engine. Plans are
/// sound when the query implies it (and, when exact, is equivalent to it);
/// that the store answers a probe like this is the store's side, checked
/// by `store_keys_agree_with_eq`.
fn probe_holds(md: &Metadata, probe: &Probe) -> bool {
    let path = |key: &str| format!("/{}", key.replace('~', "~0").replace('/', "~1"));
    let op = match probe {
        Probe::Eq { key, value } => json!({"path": path(key), "op": "$eq", "to": {"value": value}}),
        Probe::In { key, values } => {
            json!({"path": path(key), "op": "$in", "to": {"value": values}})
        }
        Probe::Contains { key, value } => {
            json!({"path": path(key), "op": "$contains", "to": {"value": value}})
        }
    };
    holds(md, op)
}

/// Arbitrary JSON with the query vocabulary sprinkled in, so that parsing
/// gets deep into the op tree before it finds something wrong.
fn query_like() -> impl Strategy<Value = Value> {
    let words = vec![
        "op",
        "path",
        "to",
        "value",
        "with",
        "default",
        "type",
        "ops",
        "selector",
        "application",
        "$eq",
        "$in",
        "$contains",
        "$and",
        "$or",
        "$nor",
        "$min",
        "$avg",
        "$bad",
        "/a",
        "/a/0",
        "a",
        "version",
        "/",
        "~",
        "/~2",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(words.clone()).prop_map(Value::from),
        ".{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(words.clone()), inner), 0..4).prop_map(
                |entries| {
                    let map: Map<String, Value> = entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect();
                    Value::Object(map)
                }
            ),
        ]
    })
}

/// Every comparison op by wire name.
const CMP_OPS: [&str; 10] = [
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
];

/// One `"$op": V` entry of a legacy op (a list for `$in`/`$nin`).
fn legacy_cmp() -> impl Strategy<Value = (&'static str, Value)> {
    (
        prop::sample::select(CMP_OPS.to_vec()),
        value(),
        prop::collection::vec(value(), 0..3),
    )
        .prop_map(|(op, v, xs)| match op {
            "$in" | "$nin" => (op, Value::Array(xs)),
            _ => (op, v),
        })
}

/// A legacy `{"<key>": {"$op": V, ...}}` op: several `$op`s per object,
/// logical ones nested, keys taken literally (`/` and `~` included).
fn legacy_op() -> impl Strategy<Value = Value> {
    let object = |entries: Vec<(&str, Value)>| {
        Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    };
    let body = prop::collection::vec(legacy_cmp(), 1..3)
        .prop_map(object)
        .prop_recursive(2, 12, 3, move |inner| {
            let logical = (
                prop::sample::select(vec!["$and", "$or", "$nor"]),
                prop::collection::vec(inner, 0..3),
            )
                .prop_map(|(op, items)| (op, Value::Array(items)));
            prop::collection::vec(prop_oneof![legacy_cmp(), logical], 1..3).prop_map(object)
        });
    (prop::sample::select(vec!["a", "k", "a/b", "t~0"]), body).prop_map(|(k, b)| json!({ k: b }))
}

/// Paths with escapes, empty inner segments and non-ASCII segments.
fn odd_path() -> impl Strategy<Value = String> {
    let segments = vec!["a", "~0", "~1", "x~1y~0", "0", "01", "é", " ", ""];
    let keys = segments[..segments.len() - 1].to_vec();
    (
        prop::sample::select(keys),
        prop::collection::vec(prop::sample::select(segments), 0..3),
    )
        .prop_map(|(key, rest)| {
            std::iter::once(key)
                .chain(rest)
                .map(|s| format!("/{s}"))
                .collect()
        })
}

/// A comparison between two odd paths, with the noise parse tolerates
/// (null default, a `type` other than version).
fn odd_comparison() -> impl Strategy<Value = Value> {
    (
        odd_path(),
        prop::sample::select(SCALAR_OPS.to_vec()),
        odd_path(),
        prop::option::of(value()),
        prop::sample::select(vec![json!("version"), json!("string"), json!(null)]),
    )
        .prop_map(|(p, op, other, default, ty)| {
            json!({"path": p, "op": op, "to": {"path": other, "default": default, "type": ty}})
        })
}

/// Whole queries, both dialects mixed, each field absent, null or set.
fn query_json() -> impl Strategy<Value = Value> {
    let op = prop_oneof![op(), plannable(), legacy_op(), odd_comparison()];
    let text = || prop::option::of(prop::sample::select(vec!["", "app", "a/~b"]));
    let flag = || prop::option::of(any::<bool>());
    let selector = (
        prop::sample::select(vec!["$min", "$max", "$avg"]),
        prop::sample::select(KEYS.to_vec()),
    );
    (
        (text(), flag(), text()),
        (flag(), flag()),
        prop::option::of(prop::collection::vec(op, 0..4)),
        prop::option::of(selector),
        any::<bool>(),
    )
        .prop_map(
            |((application, restricted, key), (droppable, optional), ops, selector, nulls)| {
                let q = json!({
                    "application": application, "restricted": restricted, "key": key,
                    "droppable": droppable, "optional": optional, "ops": ops,
                    "selector": selector.map(|(kind, key)| json!({ kind: key })),
                });
                // Absent fields, or the same as explicit nulls.
                match q {
                    Value::Object(map) if !nulls => {
                        Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
                    }
                    q => q,
                }
            },
        )
}

/// `q`'s canonical JSON parses back to `q`, also after a trip as bytes,
/// and is a fixed point.
fn round_trips(q: &Query) -> Result<(), TestCaseError> {
    let canonical = q.to_json();
    let back = Query::parse(&canonical);
    prop_assert_eq!(back.as_ref(), Ok(q), "{}", canonical);
    if let Ok(back) = back {
        prop_assert_eq!(&back.to_json(), &canonical);
    }
    // Read back with sonic-rs, as the server reads client JSON: serde_json's
    // default parser is not correctly rounded, and would bring
    // -4.5744279469711886e-178 back one ulp off.
    let bytes = serde_json::to_vec(&canonical).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let received: Value =
        sonic_rs::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(Query::parse(&received), Ok(q.clone()), "{}", canonical);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn nor_is_not_or(md in metadata(), with in prop::collection::vec(op(), 0..4)) {
        let or = holds(&md, json!({"op": "$or", "with": with.clone()}));
        let nor = holds(&md, json!({"op": "$nor", "with": with}));
        prop_assert_eq!(nor, !or);
    }

    #[test]
    fn ne_is_not_eq_when_both_sides_resolve(md in metadata(), p in path(), to in to()) {
        let eq = holds(&md, json!({"path": p, "op": "$eq", "to": to}));
        let ne = holds(&md, json!({"path": p, "op": "$ne", "to": to}));
        if resolves(&md, &p) && to_resolves(&md, &to) {
            prop_assert_eq!(ne, !eq);
        } else {
            prop_assert!(!eq && !ne);
        }
    }

    #[test]
    fn in_is_any_eq(md in metadata(), p in path(), xs in prop::collection::vec(value(), 0..4), typed in any::<bool>()) {
        let ty = if typed { json!("version") } else { json!(null) };
        let any_eq = xs.iter().any(|x| holds(&md, json!({"path": p, "op": "$eq", "to": {"value": x, "type": ty}})));
        let is_in = holds(&md, json!({"path": p, "op": "$in", "to": {"value": xs, "type": ty}}));
        prop_assert_eq!(is_in, any_eq);
        let nin = holds(&md, json!({"path": p, "op": "$nin", "to": {"value": xs, "type": ty}}));
        if resolves(&md, &p) {
            prop_assert_eq!(nin, !is_in);
        } else {
            prop_assert!(!nin);
        }
    }

    #[test]
    fn gt_is_lt_swapped(md in metadata(), a in path(), b in path(), typed in any::<bool>()) {
        let ty = if typed { json!("version") } else { json!(null) };
        for (op, swapped) in [("$gt", "$lt"), ("$gte", "$lte"), ("$eq", "$eq"), ("$ne", "$ne")] {
            let left = holds(&md, json!({"path": a, "op": op, "to": {"path": b, "type": ty}}));
            let right = holds(&md, json!({"path": b, "op": swapped, "to": {"path": a, "type": ty}}));
            prop_assert_eq!(left, right, "{} {} {}", a, op, b);
        }
    }

    #[test]
    fn and_commutes(md in metadata(), x in op(), y in op()) {
        let xy = holds(&md, json!({"op": "$and", "with": [x.clone(), y.clone()]}));
        let yx = holds(&md, json!({"op": "$and", "with": [y.clone(), x.clone()]}));
        prop_assert_eq!(xy, yx);
        let both = holds(&md, x) && holds(&md, y);
        prop_assert_eq!(xy, both);
    }

    #[test]
    fn contains_negation_on_lists_and_maps(md in metadata(), p in path(), to in to()) {
        let c = holds(&md, json!({"path": p, "op": "$contains", "to": to}));
        let nc = holds(&md, json!({"path": p, "op": "$ncontains", "to": to}));
        let container = Path::parse(&p).ok().and_then(|p| p.resolve(&md))
            .is_some_and(|r| r.value.is_array() || r.value.is_object());
        if container && to_resolves(&md, &to) {
            prop_assert_eq!(nc, !c);
        } else {
            prop_assert!(!c && !nc);
        }
    }

    /// The store's index keys agree with `$eq` on scalars: a stored value
    /// (typed `version` or not) is `$eq` to a probe value exactly when its
    /// key is among the probe's keys (its own, plus its version key when it
    /// parses as one).
    #[test]
    fn store_keys_agree_with_eq(a in scalar_or_version(), b in scalar_or_version(), typed in any::<bool>()) {
        prop_assume!(!a.is_null() && !b.is_null());
        let version = |v: &Value| v.as_str().and_then(|s| semver::Version::parse(s).ok());
        let (md, stored) = match version(&a) {
            Some(v) if typed => {
                let key = ScalarKey::of_version(&v);
                let mut md = Metadata::new();
                md.insert("k", MetaValue { ty: MetaType::Version, value: a, version: Some(Box::new(v)) });
                (md, Some(key))
            }
            _ => (super::meta(json!({ "k": a.clone() })), ScalarKey::of_json(&a)),
        };
        let probe_keys = [ScalarKey::of_json(&b), version(&b).map(|v| ScalarKey::of_version(&v))];
        let eq = holds(&md, json!({"path": "/k", "op": "$eq", "to": {"value": b}}));
        prop_assert_eq!(eq, stored.is_some() && probe_keys.contains(&stored));
    }

    #[test]
    fn index_plans_are_sound(md in metadata(), ops in prop::collection::vec(prop_oneof![op(), plannable()], 1..4)) {
        let q = Query::parse(&json!({ "ops": ops })).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Some(plan) = q.index_plan() {
            let matched = q.matches(&md);
            let probed = probe_holds(&md, &plan.probe);
            if plan.exact {
                prop_assert_eq!(matched, probed);
            } else {
                prop_assert!(!matched || probed);
            }
        }
    }

    #[test]
    fn parse_never_panics(v in query_like(), md in metadata()) {
        let _ = Query::parse(&json!({ "ops": [v.clone()] })).map(|q| (q.matches(&md), q.index_plan()));
        let _ = Query::parse(&json!({ "ops": v.clone() })).map(|q| (q.matches(&md), q.index_plan()));
        let _ = Query::parse(&v).map(|q| (q.matches(&md), q.index_plan()));
    }

    #[test]
    fn valid_ops_always_parse(o in op()) {
        let parsed = Query::parse(&json!({ "ops": [o] }));
        prop_assert!(parsed.is_ok(), "{:?}", parsed);
    }

    #[test]
    fn canonical_json_round_trips(v in query_json()) {
        let q = Query::parse(&v).map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
        round_trips(&q)?;
    }

    /// Whatever odd JSON happens to parse round-trips too.
    #[test]
    fn canonical_json_round_trips_whatever_parses(v in query_like()) {
        for input in [json!({ "ops": [v.clone()] }), json!({ "ops": v.clone() }), v] {
            if let Ok(q) = Query::parse(&input) {
                round_trips(&q)?;
            }
        }
    }

    #[test]
    fn canonical_json_keeps_every_float(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let q = Query::parse(&json!({"ops": [{"path": "/a", "op": "$eq", "to": {"value": f}}]}))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        round_trips(&q)?;
    }
}
