//! Query semantics (contract §5), observed through QUERY_NODES over a fixed
//! population spread across three shards: every comparison op and value kind,
//! versions, membership, paths, `to` paths, logical ops and the legacy
//! dialect. A property test checks numeric comparisons against a model.

mod common;

use common::*;
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeSet;

/// Five clients of app "q" with carefully overlapping metadata.
///
/// | key   | c1                 | c2              | c3                    | c4               | c5 |
/// |-------|--------------------|-----------------|-----------------------|------------------|----|
/// | n     | integer 5          | integer 10      | float 7.5             | string "5"       | -  |
/// | f     | float 2.5          | float 10        | -                     | -                | -  |
/// | s     | "apple"            | "banana"        | "Cherry"              | "apple"          | -  |
/// | v     | version 1.2.0      | version 1.10.0  | version 1.2.0-beta.1  | string "1.10.0"  | -  |
/// | b     | true               | false           | -                     | true             | -  |
/// | l     | [1,"two",{"x":3}]  | ["x"]           | []                    | -                | -  |
/// | m     | {a:{b:[10,20]},k:"v"} | {a:{b:[30]},"0":"zero"} | {}            | -                | -  |
/// | other | integer 5          | integer 7       | -                     | -                | -  |
struct Population {
    _server: Server,
    _clients: Vec<Client>,
    obs: Client,
}

fn population() -> Population {
    let server = Server::start(&["--shards", "3"]);
    let specs = [
        (
            "c1",
            json!({
                "n": meta("integer", json!(5)), "f": meta("float", json!(2.5)),
                "s": meta("string", json!("apple")), "v": meta("version", json!("1.2.0")),
                "b": meta("boolean", json!(true)), "l": meta("list", json!([1, "two", {"x": 3}])),
                "m": meta("map", json!({"a": {"b": [10, 20]}, "k": "v"})), "other": meta("integer", json!(5)),
            }),
        ),
        (
            "c2",
            json!({
                "n": meta("integer", json!(10)), "f": meta("float", json!(10)),
                "s": meta("string", json!("banana")), "v": meta("version", json!("1.10.0")),
                "b": meta("boolean", json!(false)), "l": meta("list", json!(["x"])),
                "m": meta("map", json!({"a": {"b": [30]}, "0": "zero"})), "other": meta("integer", json!(7)),
            }),
        ),
        (
            "c3",
            json!({
                "n": meta("float", json!(7.5)), "s": meta("string", json!("Cherry")),
                "v": meta("version", json!("1.2.0-beta.1")), "l": meta("list", json!([])),
                "m": meta("map", json!({})),
            }),
        ),
        (
            "c4",
            json!({
                "n": meta("string", json!("5")), "s": meta("string", json!("apple")),
                "v": meta("string", json!("1.10.0")), "b": meta("boolean", json!(true)),
            }),
        ),
        ("c5", json!({})),
    ];
    let clients: Vec<Client> = specs
        .iter()
        .enumerate()
        .map(|(i, (id, m))| {
            Client::ready_with(
                &server,
                ALL_ENCODINGS[i % 3],
                "q",
                id,
                json!({"metadata": m}),
            )
        })
        .collect();
    let obs = Client::ready(&server, Msgpack, "observer", "obs");
    Population {
        _server: server,
        _clients: clients,
        obs,
    }
}

fn check(p: &mut Population, cases: &[(Value, &[&str])]) {
    let mut failures = Vec::new();
    for (ops, want) in cases {
        let got = p.obs.query_ids(query_ops("q", ops.clone()));
        if got != set(want) {
            failures.push(format!("  {ops}\n    want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn numbers_compare_numerically_across_integer_and_float() {
    let mut p = population();
    check(
        &mut p,
        &[
            (json!([op("/n", "$eq", json!(5))]), &["c1"]),
            (json!([op("/n", "$eq", json!(5.0))]), &["c1"]),
            (json!([op("/n", "$eq", json!(7.5))]), &["c3"]),
            (json!([op("/n", "$ne", json!(5))]), &["c2", "c3", "c4"]),
            (json!([op("/n", "$gt", json!(5))]), &["c2", "c3"]),
            (json!([op("/n", "$gte", json!(7.5))]), &["c2", "c3"]),
            (json!([op("/n", "$lt", json!(7.5))]), &["c1"]),
            (json!([op("/n", "$lte", json!(7.5))]), &["c1", "c3"]),
            (json!([op("/n", "$gte", json!(5))]), &["c1", "c2", "c3"]),
            (json!([op("/f", "$gt", json!(2))]), &["c1", "c2"]),
            (json!([op("/f", "$eq", json!(10))]), &["c2"]),
            (
                json!([op("/n", "$gt", json!(-1000000000000i64))]),
                &["c1", "c2", "c3"],
            ),
        ],
    );
}

#[test]
fn strings_compare_by_code_point() {
    let mut p = population();
    check(
        &mut p,
        &[
            (json!([op("/s", "$eq", json!("apple"))]), &["c1", "c4"]),
            (json!([op("/s", "$gt", json!("apple"))]), &["c2"]),
            (json!([op("/s", "$lt", json!("apple"))]), &["c3"]),
            (
                json!([op("/s", "$gte", json!("apple"))]),
                &["c1", "c2", "c4"],
            ),
            (json!([op("/s", "$lte", json!("B"))]), &[]),
            (json!([op("/s", "$lt", json!("a"))]), &["c3"]),
            (json!([op("/s", "$ne", json!("apple"))]), &["c2", "c3"]),
        ],
    );
}

#[test]
fn versions_compare_by_semver_order() {
    let mut p = population();
    check(
        &mut p,
        &[
            // Metadata typed version: 1.10.0 > 1.3.0, prerelease < release.
            (json!([op("/v", "$gt", json!("1.3.0"))]), &["c2"]),
            (json!([op("/v", "$eq", json!("1.2.0"))]), &["c1"]),
            (json!([op("/v", "$gte", json!("1.2.0"))]), &["c1", "c2"]),
            // c4's "1.10.0" is a plain string: "1.10.0" < "1.2.0" by code point.
            (json!([op("/v", "$lt", json!("1.2.0"))]), &["c3", "c4"]),
            // A `to` typed version makes strings compare as versions.
            (
                json!([{"path": "/v", "op": "$gt", "to": {"value": "1.3.0", "type": "version"}}]),
                &["c2", "c4"],
            ),
            (
                json!([{"path": "/v", "op": "$lt", "to": {"value": "1.2.0", "type": "version"}}]),
                &["c3"],
            ),
            // Any other `type` is ignored.
            (
                json!([{"path": "/n", "op": "$eq", "to": {"value": 5, "type": "string"}}]),
                &["c1"],
            ),
        ],
    );
}

#[test]
fn booleans_lists_and_maps_support_only_equality() {
    let mut p = population();
    check(
        &mut p,
        &[
            (json!([op("/b", "$eq", json!(true))]), &["c1", "c4"]),
            (json!([op("/b", "$ne", json!(true))]), &["c2"]),
            (json!([op("/b", "$gt", json!(false))]), &[]),
            (json!([op("/b", "$lte", json!(true))]), &[]),
            (
                json!([op("/l", "$eq", json!([1, "two", {"x": 3}]))]),
                &["c1"],
            ),
            (json!([op("/l", "$eq", json!([]))]), &["c3"]),
            (json!([op("/l", "$ne", json!(["x"]))]), &["c1", "c3"]),
            (json!([op("/l", "$gt", json!([0]))]), &[]),
            (json!([op("/m", "$eq", json!({}))]), &["c3"]),
            (
                json!([op("/m", "$eq", json!({"k": "v", "a": {"b": [10, 20]}}))]),
                &["c1"],
            ),
            (json!([op("/m/a", "$eq", json!({"b": [30]}))]), &["c2"]),
            (json!([op("/m", "$lt", json!({"z": 1}))]), &[]),
        ],
    );
}

#[test]
fn different_kinds_never_order_and_are_never_equal() {
    let mut p = population();
    check(
        &mut p,
        &[
            (json!([op("/n", "$eq", json!("5"))]), &["c4"]),
            (json!([op("/n", "$ne", json!("5"))]), &["c1", "c2", "c3"]),
            (json!([op("/s", "$gt", json!(1))]), &[]),
            (json!([op("/s", "$lt", json!(1))]), &[]),
            // Only c4's "5" is a string: it orders against a string, the numbers do not.
            (json!([op("/n", "$lt", json!("9"))]), &["c4"]),
            (json!([op("/n", "$lt", json!(9))]), &["c1", "c3"]),
            (json!([op("/b", "$eq", json!(1))]), &[]),
            (json!([op("/b", "$ne", json!(1))]), &["c1", "c2", "c4"]),
            (json!([op("/l", "$eq", json!({}))]), &[]),
        ],
    );
}

#[test]
fn membership_ops() {
    let mut p = population();
    check(
        &mut p,
        &[
            (
                json!([op("/s", "$in", json!(["apple", "kiwi"]))]),
                &["c1", "c4"],
            ),
            (json!([op("/s", "$nin", json!(["apple"]))]), &["c2", "c3"]),
            (json!([op("/n", "$in", json!([10, 7.5]))]), &["c2", "c3"]),
            (json!([op("/n", "$in", json!([]))]), &[]),
            (json!([op("/l", "$contains", json!("two"))]), &["c1"]),
            (json!([op("/l", "$contains", json!({"x": 3}))]), &["c1"]),
            (json!([op("/l", "$contains", json!(1))]), &["c1"]),
            (json!([op("/l", "$ncontains", json!("x"))]), &["c1", "c3"]),
            (json!([op("/m", "$contains", json!("k"))]), &["c1"]),
            (json!([op("/m", "$ncontains", json!("k"))]), &["c2", "c3"]),
            (json!([op("/m", "$contains", json!("0"))]), &["c2"]),
            (json!([op("/m/a", "$contains", json!("b"))]), &["c1", "c2"]),
        ],
    );
}

#[test]
fn paths_walk_maps_and_lists_and_unresolved_paths_are_false() {
    let mut p = population();
    check(
        &mut p,
        &[
            (json!([op("/m/a/b/0", "$eq", json!(10))]), &["c1"]),
            (json!([op("/m/a/b/1", "$eq", json!(20))]), &["c1"]),
            (json!([op("/m/a/b/0", "$gte", json!(10))]), &["c1", "c2"]),
            // c2's list has no index 1: unresolved, so even $ne is false.
            (json!([op("/m/a/b/1", "$ne", json!(20))]), &[]),
            (json!([op("/l/2/x", "$eq", json!(3))]), &["c1"]),
            (json!([op("/l/0", "$eq", json!("x"))]), &["c2"]),
            (json!([op("/m/k", "$eq", json!("v"))]), &["c1"]),
            // On a map, a numeric-looking segment is a key.
            (json!([op("/m/0", "$eq", json!("zero"))]), &["c2"]),
            (json!([op("/nope", "$ne", json!(1))]), &[]),
            (json!([op("/nope", "$nin", json!([1]))]), &[]),
            (json!([op("/nope", "$ncontains", json!(1))]), &[]),
            (json!([op("/n/0", "$eq", json!(5))]), &[]),
            (json!([op("/l/x", "$eq", json!(1))]), &[]),
            (json!([op("/l/-1", "$eq", json!(1))]), &[]),
        ],
    );
}

#[test]
fn to_may_name_another_path_with_a_default() {
    let mut p = population();
    check(
        &mut p,
        &[
            (
                json!([{"path": "/n", "op": "$eq", "to": {"path": "/other"}}]),
                &["c1"],
            ),
            (
                json!([{"path": "/n", "op": "$gt", "to": {"path": "/other", "default": 7}}]),
                &["c2", "c3"],
            ),
            (
                json!([{"path": "/n", "op": "$lt", "to": {"path": "/f"}}]),
                &[],
            ),
            (
                json!([{"path": "/f", "op": "$lt", "to": {"path": "/n"}}]),
                &["c1"],
            ),
            (
                json!([{"path": "/s", "op": "$eq", "to": {"path": "/missing", "default": "Cherry"}}]),
                &["c3"],
            ),
        ],
    );
}

#[test]
fn logical_ops_nest() {
    let mut p = population();
    check(
        &mut p,
        &[
            (
                json!([op("/n", "$gte", json!(5)), op("/n", "$lt", json!(10))]),
                &["c1", "c3"],
            ),
            (
                json!([{"op": "$and", "with": [op("/n", "$gte", json!(5)), op("/n", "$lt", json!(10))]}]),
                &["c1", "c3"],
            ),
            (
                json!([{"op": "$or", "with": [op("/s", "$eq", json!("banana")), op("/b", "$eq", json!(true))]}]),
                &["c1", "c2", "c4"],
            ),
            (
                json!([{"op": "$nor", "with": [op("/s", "$eq", json!("apple")), op("/s", "$eq", json!("banana"))]}]),
                &["c3", "c5"],
            ),
            (
                json!([{"op": "$or", "with": [
                    {"op": "$and", "with": [op("/n", "$eq", json!(5)), op("/b", "$eq", json!(true))]},
                    op("/s", "$eq", json!("Cherry")),
                ]}]),
                &["c1", "c3"],
            ),
            (
                json!([
                    op("/s", "$eq", json!("apple")),
                    op("/b", "$eq", json!(true))
                ]),
                &["c1", "c4"],
            ),
            (
                json!([op("/s", "$eq", json!("apple")), {"op": "$nor", "with": [op("/n", "$eq", json!(5))]}]),
                &["c4"],
            ),
            (json!([]), &["c1", "c2", "c3", "c4", "c5"]),
            (Value::Null, &["c1", "c2", "c3", "c4", "c5"]),
        ],
    );
}

#[test]
fn the_legacy_dialect_means_the_same_and_mixes_with_the_path_dialect() {
    let mut p = population();
    check(
        &mut p,
        &[
            (json!([{"s": {"$eq": "apple"}}]), &["c1", "c4"]),
            (json!([{"n": {"$gt": 5}}]), &["c2", "c3"]),
            (json!([{"s": {"$in": ["banana"]}}]), &["c2"]),
            (json!([{"l": {"$contains": "two"}}]), &["c1"]),
            (
                json!([{"s": {"$eq": "apple"}}, op("/n", "$eq", json!(5))]),
                &["c1"],
            ),
            (json!([{"nope": {"$ne": 1}}]), &[]),
        ],
    );
    // A query with no ops key at all matches the whole app.
    let got = p.obs.query_ids(json!({"application": "q"}));
    assert_eq!(got, set(&["c1", "c2", "c3", "c4", "c5"]));
}

#[test]
fn integers_beyond_f64_precision_compare_exactly() {
    let server = Server::start(&[]);
    let two53 = 9_007_199_254_740_992i64; // 2^53: the last integer f64 holds exactly
    let _a = Client::ready_with(
        &server,
        Json,
        "q",
        "a",
        json!({"metadata": {"big": meta("integer", json!(two53 + 1))}}),
    );
    let _b = Client::ready_with(
        &server,
        Msgpack,
        "q",
        "b",
        json!({"metadata": {"big": meta("integer", json!(two53))}}),
    );
    let mut obs = Client::ready(&server, Json, "observer", "obs");
    let cases: [(Value, &[&str]); 5] = [
        (json!([op("/big", "$eq", json!(two53 + 1))]), &["a"]),
        (json!([op("/big", "$eq", json!(two53))]), &["b"]),
        (json!([op("/big", "$gt", json!(two53))]), &["a"]),
        // Against a float: still numerically, 2^53 + 1 > 2^53.
        (json!([op("/big", "$gt", json!(two53 as f64))]), &["a"]),
        (json!([op("/big", "$eq", json!(two53 as f64))]), &["b"]),
    ];
    for (ops, want) in cases {
        assert_eq!(
            obs.query_ids(query_ops("q", ops.clone())),
            set(want),
            "{ops}"
        );
    }
}

// ---------------------------------------------------------------------------
// Property: numeric comparisons match a model, whatever shard holds whom and
// however often the values change.
// ---------------------------------------------------------------------------

fn model(op: &str, v: f64, to: f64) -> bool {
    match op {
        "$eq" => v == to,
        "$ne" => v != to,
        "$gt" => v > to,
        "$gte" => v >= to,
        "$lt" => v < to,
        "$lte" => v <= to,
        _ => unreachable!(),
    }
}

#[test]
fn numeric_comparisons_match_a_model() {
    let server = Server::start(&["--shards", "3"]);
    // The runner takes an `Fn`: the connections are borrowed through RefCells.
    let clients: RefCell<Vec<Client>> = RefCell::new(
        (0..6)
            .map(|i| Client::ready(&server, ALL_ENCODINGS[i % 3], "p", &format!("p{i}")))
            .collect(),
    );
    let obs = RefCell::new(Client::ready(&server, Json, "observer", "obs"));
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    // Values are small so that equality happens often; halves mix in floats.
    let strategy = (
        proptest::collection::vec(-6i64..6, 6),
        proptest::collection::vec(any::<bool>(), 6),
        prop::sample::select(vec!["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]),
        -7i64..7,
        any::<bool>(),
    );
    let result = runner.run(&strategy, |(vals, floats, opname, to, to_float)| {
        let mut want = BTreeSet::new();
        let to_v = if to_float {
            json!(to as f64 / 2.0)
        } else {
            json!(to)
        };
        let to_f = to_v.as_f64().unwrap();
        for (i, c) in clients.borrow_mut().iter_mut().enumerate() {
            let (ty, v) = if floats[i] {
                ("float", json!(vals[i] as f64 + 0.5))
            } else {
                ("integer", json!(vals[i]))
            };
            c.set_metadata(json!({"x": meta(ty, v.clone())}));
            if model(opname, v.as_f64().unwrap(), to_f) {
                want.insert(format!("p{i}"));
            }
        }
        let got = obs
            .borrow_mut()
            .query_ids(query_ops("p", json!([op("/x", opname, to_v.clone())])));
        prop_assert_eq!(got, want, "/x {} {}", opname, to_v);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
