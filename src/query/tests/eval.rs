//! Every op, evaluated through `Query::parse` + `Query::matches`.

use serde_json::{Value, json};

use super::{cmp, holds, meta, query, with_version};
use crate::metadata::Metadata;

fn sample() -> Metadata {
    let md = meta(json!({
        "n": 5,
        "f": 2.5,
        "big": 9_007_199_254_740_993_u64,
        "s": "beta",
        "b": true,
        "nothing": null,
        "l": ["a", 1, 2.0, [1, 2], {"k": "v"}, null],
        "m": {"x": {"y": [10, 20, {"z": "deep"}]}, "a/b": 1, "t~": 2, "lim": 7},
        "empty_l": [],
        "empty_m": {},
    }));
    let md = with_version(md, "v", "2.0.0");
    let md = with_version(md, "pre", "1.0.0-alpha.2");
    with_version(md, "built", "1.2.3+build.5")
}

/// Asserts the truth of `op` for each `(value, expected)` against `path`.
fn check(md: &Metadata, path: &str, op: &str, cases: &[(Value, bool)]) {
    for (value, expected) in cases {
        assert_eq!(
            holds(md, cmp(path, op, value.clone())),
            *expected,
            "{path} {op} {value}"
        );
    }
}

#[test]
fn eq_and_ne_by_kind() {
    let md = sample();
    let eq_cases = [
        ("/n", json!(5), true),
        ("/n", json!(5.0), true),
        ("/n", json!(6), false),
        ("/n", json!("5"), false),
        ("/f", json!(2.5), true),
        ("/big", json!(9_007_199_254_740_992.0), false),
        ("/big", json!(9_007_199_254_740_993_u64), true),
        ("/s", json!("beta"), true),
        ("/s", json!("Beta"), false),
        ("/b", json!(true), true),
        ("/b", json!(false), false),
        ("/b", json!(1), false),
        ("/nothing", json!(null), true),
        ("/nothing", json!(false), false),
        ("/empty_l", json!([]), true),
        ("/empty_m", json!({}), true),
        ("/empty_m", json!([]), false),
        ("/l", json!(["a", 1.0, 2, [1, 2], {"k": "v"}, null]), true),
        ("/l", json!(["a", 1, 2, [2, 1], {"k": "v"}, null]), false),
        ("/m/x", json!({"y": [10, 20, {"z": "deep"}]}), true),
        ("/m/x", json!({"y": [10, 20]}), false),
    ];
    for (path, value, expected) in eq_cases {
        assert_eq!(
            holds(&md, cmp(path, "$eq", value.clone())),
            expected,
            "{path} $eq {value}"
        );
        // The path resolves, so $ne is exactly the negation.
        assert_eq!(
            holds(&md, cmp(path, "$ne", value.clone())),
            !expected,
            "{path} $ne {value}"
        );
    }
}

#[test]
fn ordering_numbers_and_strings() {
    let md = sample();
    check(
        &md,
        "/n",
        "$gt",
        &[
            (json!(4), true),
            (json!(5), false),
            (json!(4.99), true),
            (json!(5.0), false),
        ],
    );
    check(
        &md,
        "/n",
        "$gte",
        &[(json!(5), true), (json!(5.0), true), (json!(5.01), false)],
    );
    check(
        &md,
        "/n",
        "$lt",
        &[(json!(6), true), (json!(5), false), (json!(-1e300), false)],
    );
    check(
        &md,
        "/n",
        "$lte",
        &[(json!(5), true), (json!(4), false), (json!(1e300), true)],
    );
    check(&md, "/f", "$gt", &[(json!(2), true), (json!(3), false)]);
    check(
        &md,
        "/big",
        "$gt",
        &[(json!(9_007_199_254_740_992.0), true)],
    );
    check(
        &md,
        "/s",
        "$gt",
        &[
            (json!("alpha"), true),
            (json!("beta"), false),
            (json!("c"), false),
        ],
    );
    check(
        &md,
        "/s",
        "$gte",
        &[(json!("beta"), true), (json!("betb"), false)],
    );
    check(
        &md,
        "/s",
        "$lt",
        &[(json!("betaa"), true), (json!("B"), false)],
    );
    check(
        &md,
        "/s",
        "$lte",
        &[(json!("beta"), true), (json!("a"), false)],
    );
}

#[test]
fn ordering_is_false_for_unordered_and_mixed_kinds() {
    let md = sample();
    for op in ["$gt", "$gte", "$lt", "$lte"] {
        check(
            &md,
            "/b",
            op,
            &[(json!(true), false), (json!(false), false)],
        );
        check(&md, "/nothing", op, &[(json!(null), false)]);
        check(&md, "/l", op, &[(json!([]), false)]);
        check(&md, "/m", op, &[(json!({}), false)]);
        check(
            &md,
            "/n",
            op,
            &[
                (json!("5"), false),
                (json!(true), false),
                (json!(null), false),
            ],
        );
        check(
            &md,
            "/s",
            op,
            &[(json!(1), false), (json!(["beta"]), false)],
        );
    }
    // Different kinds: $eq false, $ne true.
    check(&md, "/n", "$eq", &[(json!("5"), false)]);
    check(&md, "/n", "$ne", &[(json!("5"), true), (json!([5]), true)]);
}

#[test]
fn versions_compare_by_precedence() {
    let md = sample();
    // String order would put "2.0.0" after "10.0.0"; precedence puts it
    // before.
    check(
        &md,
        "/v",
        "$gt",
        &[(json!("1.10.0"), true), (json!("10.0.0"), false)],
    );
    check(
        &md,
        "/v",
        "$lt",
        &[(json!("10.0.0"), true), (json!("2.0.1"), true)],
    );
    check(
        &md,
        "/v",
        "$gte",
        &[(json!("2.0.0"), true), (json!("2.0.0-rc.1"), true)],
    );
    check(&md, "/v", "$lte", &[(json!("2.0.0-rc.1"), false)]);
    check(
        &md,
        "/v",
        "$eq",
        &[
            (json!("2.0.0"), true),
            (json!("2.0.0+meta"), true),
            (json!("2.0"), false),
        ],
    );
    // Unparsable against a version: different kinds.
    check(&md, "/v", "$ne", &[(json!("two"), true), (json!(2), true)]);
    check(
        &md,
        "/v",
        "$gt",
        &[(json!("two"), false), (json!(1), false)],
    );
    // Pre-release ordering: alpha.2 < alpha.10 < beta < release.
    check(
        &md,
        "/pre",
        "$lt",
        &[
            (json!("1.0.0-alpha.10"), true),
            (json!("1.0.0-beta"), true),
            (json!("1.0.0"), true),
        ],
    );
    check(
        &md,
        "/pre",
        "$gt",
        &[
            (json!("1.0.0-alpha"), true),
            (json!("1.0.0-alpha.1"), true),
            (json!("0.9.9"), true),
        ],
    );
    // Build metadata is ignored by precedence.
    check(
        &md,
        "/built",
        "$eq",
        &[(json!("1.2.3"), true), (json!("1.2.3+other"), true)],
    );
    check(&md, "/built", "$gt", &[(json!("1.2.3-rc.1"), true)]);
    let minor = with_version(Metadata::new(), "v", "1.10.0");
    check(&minor, "/v", "$gt", &[(json!("1.9.0"), true)]);
    // Plain strings that look like versions compare as strings.
    let plain = meta(json!({"s": "2.0.0"}));
    check(
        &plain,
        "/s",
        "$gt",
        &[(json!("1.10.0"), true), (json!("10.0.0"), true)],
    );
}

#[test]
fn to_typed_version_makes_strings_versions() {
    let md = meta(json!({"s": "2.0.0", "bad": "two", "n": 3, "l": ["1.0.0+a", "3.0.0"]}));
    let typed = |path: &str, op: &str, value: Value| json!({"path": path, "op": op, "to": {"type": "version", "value": value}});
    assert!(holds(&md, typed("/s", "$gt", json!("1.10.0"))));
    assert!(!holds(&md, typed("/s", "$gt", json!("10.0.0"))));
    assert!(holds(&md, typed("/s", "$eq", json!("2.0.0+x"))));
    // Unparsable on either side: ordering false, $eq false, $ne true.
    assert!(!holds(&md, typed("/s", "$gt", json!("1"))));
    assert!(!holds(&md, typed("/s", "$eq", json!("nope"))));
    assert!(holds(&md, typed("/s", "$ne", json!("nope"))));
    assert!(!holds(&md, typed("/bad", "$eq", json!("two"))));
    assert!(holds(&md, typed("/bad", "$ne", json!("two"))));
    assert!(!holds(&md, typed("/bad", "$lt", json!("3.0.0"))));
    // Non-strings keep their kind.
    assert!(holds(&md, typed("/n", "$eq", json!(3))));
    // Elements of $in and $contains compare as versions too.
    assert!(holds(&md, typed("/s", "$in", json!(["2.0.0+b", "x"]))));
    assert!(holds(&md, typed("/l", "$contains", json!("1.0.0"))));
    assert!(!holds(
        &md,
        json!({"path": "/l", "op": "$contains", "to": {"value": "1.0.0"}})
    ));
    // Other types in `to` are ignored.
    for ty in [
        json!("string"),
        json!("integer"),
        json!("nonsense"),
        json!(7),
    ] {
        let op = json!({"path": "/s", "op": "$gt", "to": {"type": ty, "value": "10.0.0"}});
        assert!(holds(&md, op), "type {ty}");
    }
}

#[test]
fn in_and_nin() {
    let md = sample();
    check(
        &md,
        "/n",
        "$in",
        &[
            (json!([1, 5]), true),
            (json!([5.0]), true),
            (json!(["5"]), false),
            (json!([]), false),
        ],
    );
    check(
        &md,
        "/n",
        "$nin",
        &[
            (json!([1, 5]), false),
            (json!(["5"]), true),
            (json!([]), true),
        ],
    );
    check(
        &md,
        "/l/3",
        "$in",
        &[(json!([[1, 2], 3]), true), (json!([[2, 1]]), false)],
    );
    check(&md, "/v", "$in", &[(json!(["1.0.0", "2.0.0+z"]), true)]);
    check(&md, "/nothing", "$in", &[(json!([null]), true)]);
}

#[test]
fn contains_and_ncontains() {
    let md = sample();
    check(
        &md,
        "/l",
        "$contains",
        &[
            (json!("a"), true),
            (json!(1.0), true),
            (json!(2), true),
            (json!([1, 2]), true),
            (json!({"k": "v"}), true),
            (json!(null), true),
            (json!("b"), false),
            (json!(3), false),
        ],
    );
    check(
        &md,
        "/l",
        "$ncontains",
        &[(json!("a"), false), (json!("b"), true)],
    );
    // On a map: a string that is a key.
    check(
        &md,
        "/m",
        "$contains",
        &[
            (json!("x"), true),
            (json!("a/b"), true),
            (json!("y"), false),
            (json!(1), false),
        ],
    );
    check(
        &md,
        "/m",
        "$ncontains",
        &[(json!("x"), false), (json!("y"), true), (json!(1), true)],
    );
    check(&md, "/empty_l", "$contains", &[(json!(null), false)]);
    check(&md, "/empty_l", "$ncontains", &[(json!(null), true)]);
    // Neither list nor map: false both ways.
    for path in ["/n", "/s", "/b", "/nothing", "/v"] {
        check(
            &md,
            path,
            "$contains",
            &[(json!("a"), false), (json!(5), false)],
        );
        check(
            &md,
            path,
            "$ncontains",
            &[(json!("a"), false), (json!(5), false)],
        );
    }
}

#[test]
fn nested_paths() {
    let md = sample();
    check(&md, "/m/x/y/0", "$eq", &[(json!(10), true)]);
    check(&md, "/m/x/y/1", "$gt", &[(json!(15), true)]);
    check(&md, "/m/x/y/2/z", "$eq", &[(json!("deep"), true)]);
    check(&md, "/m/a~1b", "$eq", &[(json!(1), true)]);
    check(&md, "/m/t~0", "$eq", &[(json!(2), true)]);
    check(&md, "/l/0", "$eq", &[(json!("a"), true)]);
    check(&md, "/l/4/k", "$eq", &[(json!("v"), true)]);
}

#[test]
fn unresolved_paths_make_every_op_false() {
    let md = sample();
    let missing = [
        "/absent",
        "/m/nope",
        "/l/99",
        "/l/x",
        "/m/x/y/00",
        "/n/deeper",
        "/s/0",
    ];
    let ops: [(&str, Value); 10] = [
        ("$eq", json!(1)),
        ("$ne", json!(1)),
        ("$gt", json!(1)),
        ("$gte", json!(1)),
        ("$lt", json!(1)),
        ("$lte", json!(1)),
        ("$in", json!([1])),
        ("$nin", json!([1])),
        ("$contains", json!(1)),
        ("$ncontains", json!(1)),
    ];
    for path in missing {
        for (op, value) in &ops {
            assert!(!holds(&md, cmp(path, op, value.clone())), "{path} {op}");
        }
    }
}

#[test]
fn to_path_compares_within_the_client() {
    let md = meta(json!({"cur": 5, "max": 10, "list": [5, 6], "notlist": 3, "nums": {"lo": 1}}));
    let md = with_version(md, "v", "1.2.0");
    let md = with_version(md, "min_v", "1.10.0");
    let rel =
        |path: &str, op: &str, other: &str| json!({"path": path, "op": op, "to": {"path": other}});
    assert!(holds(&md, rel("/cur", "$lt", "/max")));
    assert!(!holds(&md, rel("/cur", "$gt", "/max")));
    assert!(holds(&md, rel("/cur", "$gt", "/nums/lo")));
    assert!(holds(&md, rel("/cur", "$in", "/list")));
    assert!(!holds(&md, rel("/cur", "$nin", "/list")));
    assert!(holds(&md, rel("/list", "$contains", "/cur")));
    // Two version-typed keys compare as versions.
    assert!(holds(&md, rel("/v", "$lt", "/min_v")));
    // Not a list at eval time: $in and $nin both false.
    assert!(!holds(&md, rel("/cur", "$in", "/notlist")));
    assert!(!holds(&md, rel("/cur", "$nin", "/notlist")));
    // Missing without default: false, even for the negated ops.
    for op in ["$eq", "$ne", "$lt", "$nin", "$ncontains"] {
        assert!(!holds(&md, rel("/cur", op, "/absent")), "{op}");
    }
    // Missing with a default: the default is used.
    let with_default = |op: &str, other: &str, d: Value| json!({"path": "/cur", "op": op, "to": {"path": other, "default": d}});
    assert!(holds(&md, with_default("$lt", "/absent", json!(7))));
    assert!(!holds(&md, with_default("$lt", "/absent", json!(3))));
    assert!(holds(&md, with_default("$ne", "/absent", json!(3))));
    assert!(holds(&md, with_default("$in", "/absent", json!([4, 5]))));
    assert!(holds(&md, with_default("$nin", "/absent", json!([4]))));
    // Present path: the default is not used.
    assert!(holds(&md, with_default("$lt", "/max", json!(0))));
    // A null default is no default.
    assert!(!holds(&md, with_default("$ne", "/absent", json!(null))));
    // The metadata side must still resolve.
    assert!(!holds(
        &md,
        json!({"path": "/absent", "op": "$ne", "to": {"path": "/x", "default": 1}})
    ));
    // Typed version with a path: strings on both sides as versions.
    let strs = meta(json!({"a": "1.2.0", "b": "1.10.0"}));
    let typed = json!({"path": "/a", "op": "$lt", "to": {"type": "version", "path": "/b"}});
    assert!(holds(&strs, typed));
    assert!(!holds(&strs, rel("/a", "$lt", "/b")));
}

#[test]
fn logical_ops() {
    let md = meta(json!({"n": 5, "s": "x"}));
    let t = cmp("/n", "$eq", json!(5));
    let f = cmp("/n", "$eq", json!(6));
    let logical = |op: &str, with: Vec<Value>| json!({"op": op, "with": with});
    assert!(holds(&md, logical("$and", vec![])));
    assert!(!holds(&md, logical("$or", vec![])));
    assert!(holds(&md, logical("$nor", vec![])));
    assert!(holds(&md, logical("$and", vec![t.clone(), t.clone()])));
    assert!(!holds(&md, logical("$and", vec![t.clone(), f.clone()])));
    assert!(holds(&md, logical("$or", vec![f.clone(), t.clone()])));
    assert!(!holds(&md, logical("$or", vec![f.clone(), f.clone()])));
    assert!(holds(&md, logical("$nor", vec![f.clone(), f.clone()])));
    assert!(!holds(&md, logical("$nor", vec![f.clone(), t.clone()])));
    let nested = logical(
        "$or",
        vec![
            logical("$and", vec![t.clone(), f.clone()]),
            logical("$nor", vec![logical("$or", vec![f.clone()])]),
        ],
    );
    assert!(holds(&md, nested));
    // Top-level ops are an implicit AND.
    assert!(query(json!({"ops": [t.clone(), t.clone()]})).matches(&md));
    assert!(!query(json!({"ops": [t.clone(), f.clone()]})).matches(&md));
    assert!(query(json!({"ops": []})).matches(&md));
    assert!(query(json!({})).matches(&Metadata::new()));
}

#[test]
fn legacy_dialect() {
    let md = meta(json!({"n": 5, "s": "x", "l": [1, 2]}));
    assert!(holds(&md, json!({"n": {"$eq": 5}})));
    assert!(!holds(&md, json!({"n": {"$ne": 5}})));
    assert!(holds(&md, json!({"l": {"$contains": 2}})));
    assert!(holds(&md, json!({"n": {"$in": [4, 5]}})));
    // Several $ops on one key: all must hold.
    assert!(holds(&md, json!({"n": {"$gte": 1, "$lt": 6}})));
    assert!(!holds(&md, json!({"n": {"$gte": 1, "$lt": 5}})));
    // Per-key logical ops, nested.
    assert!(holds(&md, json!({"n": {"$or": [{"$eq": 1}, {"$gt": 4}]}})));
    assert!(!holds(
        &md,
        json!({"n": {"$nor": [{"$eq": 1}, {"$gt": 4}]}})
    ));
    assert!(holds(
        &md,
        json!({"n": {"$and": [{"$gt": 1}, {"$or": [{"$eq": 5}, {"$eq": 9}]}]}})
    ));
    assert!(holds(&md, json!({"n": {"$and": []}})));
    // Missing key: false, negated ops included.
    assert!(!holds(&md, json!({"absent": {"$ne": 1}})));
    assert!(!holds(&md, json!({"absent": {"$nin": [1]}})));
    // The key is literal: a '/' is part of it, not a path.
    let slashy = meta(json!({"a/b": 1, "a": {"b": 2}}));
    assert!(holds(&slashy, json!({"a/b": {"$eq": 1}})));
    // Keys named like current-dialect fields still read as legacy.
    let odd = meta(json!({"op": 1, "path": 2}));
    assert!(holds(&odd, json!({"op": {"$eq": 1}})));
    assert!(holds(&odd, json!({"path": {"$eq": 2}})));
    // Mixed with the current dialect in one list.
    let mixed = query(json!({"ops": [{"n": {"$eq": 5}}, cmp("/s", "$eq", json!("x"))]}));
    assert!(mixed.matches(&md));
    let mixed = query(json!({"ops": [{"n": {"$eq": 5}}, cmp("/s", "$eq", json!("y"))]}));
    assert!(!mixed.matches(&md));
    // And inside a current-dialect logical op.
    let inside = json!({"op": "$or", "with": [{"n": {"$eq": 0}}, {"s": {"$eq": "x"}}]});
    assert!(holds(&md, inside));
    // Legacy against a version-typed key still compares as versions.
    let v = with_version(Metadata::new(), "v", "2.0.0");
    assert!(holds(&v, json!({"v": {"$gt": "1.10.0"}})));
}

#[test]
fn reserved_keys_query_like_any_other() {
    let md = meta(
        json!({"namespace": null, "restricted": false, "last_heartbeat_time": 1_700_000_000_000_u64}),
    );
    assert!(holds(&md, cmp("/namespace", "$eq", json!(null))));
    assert!(holds(&md, cmp("/restricted", "$eq", json!(false))));
    assert!(holds(
        &md,
        cmp("/last_heartbeat_time", "$gt", json!(1_600_000_000_000_u64))
    ));
}
