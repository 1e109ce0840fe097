use serde_json::{Value, json};

use crate::metadata::{ClientIdx, ClientStore, IndexPlan, MetaValue, Metadata, Probe};

use super::{meta, typed, update};

const NONE: [ClientIdx; 0] = [];

fn check(store: &ClientStore) {
    if let Err(problem) = store.debug_check_consistency() {
        panic!("inconsistent store: {problem}");
    }
}

fn eq(key: &str, value: Value) -> IndexPlan {
    IndexPlan {
        probe: Probe::Eq {
            key: key.into(),
            value,
        },
        exact: true,
    }
}

fn is_in(key: &str, values: Vec<Value>) -> IndexPlan {
    IndexPlan {
        probe: Probe::In {
            key: key.into(),
            values,
        },
        exact: true,
    }
}

fn contains(key: &str, value: Value) -> IndexPlan {
    IndexPlan {
        probe: Probe::Contains {
            key: key.into(),
            value,
        },
        exact: true,
    }
}

/// The candidates, sorted, after checking that `len`, `nth` and `iter`
/// agree and that nothing is listed twice.
fn found(
    store: &ClientStore,
    app: Option<&str>,
    restricted: bool,
    plan: Option<&IndexPlan>,
) -> Vec<ClientIdx> {
    let candidates = store.candidates(app, restricted, plan);
    let listed: Vec<ClientIdx> = candidates.iter().collect();
    let by_index: Vec<ClientIdx> = (0..candidates.len())
        .filter_map(|i| candidates.nth(i))
        .collect();
    assert_eq!(listed, by_index, "nth follows iter");
    assert_eq!(candidates.nth(candidates.len()), None);
    assert_eq!(candidates.is_empty(), listed.is_empty());
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), listed.len(), "no duplicates");
    sorted
}

fn with(
    store: &mut ClientStore,
    app: &str,
    id: &str,
    entries: &[(&str, &str, Value)],
) -> ClientIdx {
    let idx = store.insert(app, id, false, meta(entries));
    check(store);
    idx
}

#[test]
fn insert_get_remove_and_slot_reuse() {
    let mut store = ClientStore::new();
    assert!(store.is_empty());
    let a = with(&mut store, "app", "a", &[("x", "integer", json!(1))]);
    let b = store.insert("app", "b", true, Metadata::new());
    check(&store);
    assert_eq!(store.len(), 2);
    let entry = store.get(b).unwrap();
    assert_eq!(
        (&*entry.app_id, &*entry.client_id, entry.restricted),
        ("app", "b", true)
    );
    assert_eq!(
        entry.metadata.get("restricted").map(|v| &v.value),
        Some(&json!(true))
    );
    // Both entries share one interned app name.
    assert!(std::sync::Arc::ptr_eq(
        &store.get(a).unwrap().app_id,
        &entry.app_id
    ));

    let removed = store.remove(a).unwrap();
    check(&store);
    assert_eq!(&*removed.client_id, "a");
    assert!(store.get(a).is_none());
    assert!(store.remove(a).is_none(), "a second remove is a no-op");
    assert_eq!(found(&store, None, true, Some(&eq("x", json!(1)))), NONE);

    let c = with(&mut store, "other", "c", &[]);
    assert_eq!(c, a, "the freed slot is reused");
    assert_eq!(store.len(), 2);
    assert_eq!(
        store
            .iter()
            .map(|(i, e)| (i, &*e.client_id))
            .collect::<Vec<_>>(),
        [(a, "c"), (b, "b")]
    );
    store.remove(b);
    store.remove(c);
    check(&store);
    assert!(store.is_empty());
}

#[test]
fn app_and_restricted_filters() {
    let mut store = ClientStore::new();
    let a1 = store.insert("a", "1", false, meta(&[("k", "string", json!("v"))]));
    let a2 = store.insert("a", "2", true, meta(&[("k", "string", json!("v"))]));
    let b1 = store.insert("b", "1", false, meta(&[("k", "string", json!("v"))]));
    let b2 = store.insert("b", "2", true, Metadata::new());
    check(&store);
    assert_eq!(found(&store, Some("a"), false, None), [a1]);
    assert_eq!(found(&store, Some("a"), true, None), [a1, a2]);
    assert_eq!(found(&store, None, false, None), [a1, b1]);
    assert_eq!(found(&store, None, true, None), [a1, a2, b1, b2]);
    assert_eq!(found(&store, Some("nope"), true, None), NONE);
    let plan = eq("k", json!("v"));
    assert_eq!(found(&store, Some("a"), false, Some(&plan)), [a1]);
    assert_eq!(found(&store, Some("a"), true, Some(&plan)), [a1, a2]);
    assert_eq!(found(&store, Some("b"), true, Some(&plan)), [b1]);
    assert_eq!(found(&store, None, false, Some(&plan)), [a1, b1]);
    assert_eq!(found(&store, None, true, Some(&plan)), [a1, a2, b1]);
    assert_eq!(
        found(&store, None, true, Some(&eq("restricted", json!(true)))),
        [a2, b2]
    );
}

#[test]
fn eq_on_strings_booleans_and_numbers() {
    let mut store = ClientStore::new();
    let s = with(&mut store, "a", "s", &[("k", "string", json!("1"))]);
    let i = with(&mut store, "a", "i", &[("k", "integer", json!(1))]);
    let f = with(&mut store, "a", "f", &[("k", "float", json!(1.0))]);
    let h = with(&mut store, "a", "h", &[("k", "float", json!(1.5))]);
    let t = with(&mut store, "a", "t", &[("k", "boolean", json!(true))]);
    let z = with(&mut store, "a", "z", &[("k", "float", json!(-0.0))]);
    let big = with(&mut store, "a", "big", &[("k", "integer", json!(u64::MAX))]);
    let two63 = with(
        &mut store,
        "a",
        "2^63",
        &[("k", "integer", json!(1u64 << 63))],
    );
    let near = with(
        &mut store,
        "a",
        "near",
        &[("k", "integer", json!((1i64 << 53) + 1))],
    );
    let l = with(&mut store, "a", "l", &[("k", "list", json!([1]))]);
    let _ = l;
    let app = Some("a");
    assert_eq!(found(&store, app, false, Some(&eq("k", json!("1")))), [s]);
    assert_eq!(
        found(&store, app, false, Some(&eq("k", json!(1)))),
        [i, f],
        "1 == 1.0"
    );
    assert_eq!(
        found(&store, app, false, Some(&eq("k", json!(1.0)))),
        [i, f]
    );
    assert_eq!(found(&store, app, false, Some(&eq("k", json!(1.5)))), [h]);
    assert_eq!(found(&store, app, false, Some(&eq("k", json!(true)))), [t]);
    assert_eq!(
        found(&store, app, false, Some(&eq("k", json!(false)))),
        NONE
    );
    assert_eq!(
        found(&store, app, false, Some(&eq("k", json!(0)))),
        [z],
        "-0.0 == 0"
    );
    assert_eq!(found(&store, app, false, Some(&eq("k", json!(0.0)))), [z]);
    assert_eq!(
        found(&store, app, false, Some(&eq("k", json!(u64::MAX)))),
        [big]
    );
    assert_eq!(
        found(
            &store,
            app,
            false,
            Some(&eq("k", json!(9_223_372_036_854_775_808.0)))
        ),
        [two63]
    );
    // 2^53 + 1 is not a float: the nearest float must not match it.
    assert_eq!(
        found(
            &store,
            app,
            false,
            Some(&eq("k", json!(9_007_199_254_740_992.0)))
        ),
        NONE
    );
    assert_eq!(
        found(&store, app, false, Some(&eq("k", json!((1i64 << 53) + 1)))),
        [near]
    );
    // Lists and maps are not equal to scalars, and non-scalar probes match nothing.
    assert_eq!(found(&store, app, false, Some(&eq("k", json!([1])))), NONE);
    assert_eq!(found(&store, app, false, Some(&eq("k", json!(null)))), NONE);
    assert_eq!(
        found(&store, app, false, Some(&eq("missing", json!(1)))),
        NONE
    );
}

#[test]
fn versions_compare_by_precedence_against_strings() {
    let mut store = ClientStore::new();
    let v = with(
        &mut store,
        "a",
        "v",
        &[("ver", "version", json!("1.0.0+build.1"))],
    );
    let rc = with(
        &mut store,
        "a",
        "rc",
        &[("ver", "version", json!("1.0.0-rc.1"))],
    );
    let s = with(&mut store, "a", "s", &[("ver", "string", json!("1.0.0"))]);
    let s2 = with(
        &mut store,
        "a",
        "s2",
        &[("ver", "string", json!("1.0.0+other"))],
    );
    let app = Some("a");
    assert_eq!(
        found(&store, app, false, Some(&eq("ver", json!("1.0.0")))),
        [v, s],
        "both buckets"
    );
    assert_eq!(
        found(&store, app, false, Some(&eq("ver", json!("1.0.0+other")))),
        [v, s2]
    );
    assert_eq!(
        found(&store, app, false, Some(&eq("ver", json!("1.0.0-rc.1")))),
        [rc]
    );
    assert_eq!(
        found(&store, app, false, Some(&eq("ver", json!("v1.0.0")))),
        NONE
    );
    assert_eq!(found(&store, app, false, Some(&eq("ver", json!(1)))), NONE);
    // Two strings of one precedence count the version bucket once.
    let plan = is_in(
        "ver",
        vec![json!("1.0.0"), json!("1.0.0+x"), json!("1.0.0")],
    );
    assert_eq!(found(&store, app, false, Some(&plan)), [v, s]);
    // List elements are untyped: no version reading for $contains.
    let l = with(&mut store, "a", "l", &[("ls", "list", json!(["1.0.0"]))]);
    assert_eq!(
        found(&store, app, false, Some(&contains("ls", json!("1.0.0")))),
        [l]
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("ls", json!("1.0.0+b")))),
        NONE
    );
}

#[test]
fn in_counts_each_bucket_once() {
    let mut store = ClientStore::new();
    let one = with(&mut store, "a", "1", &[("k", "integer", json!(1))]);
    let two = with(&mut store, "a", "2", &[("k", "string", json!("two"))]);
    let _three = with(&mut store, "a", "3", &[("k", "integer", json!(3))]);
    let plan = is_in(
        "k",
        vec![
            json!(1),
            json!(1.0),
            json!("two"),
            json!("two"),
            json!(7),
            json!(null),
        ],
    );
    let candidates = store.candidates(Some("a"), false, Some(&plan));
    assert_eq!(candidates.len(), 2);
    assert_eq!(found(&store, Some("a"), false, Some(&plan)), [one, two]);
    assert_eq!(found(&store, None, false, Some(&is_in("k", vec![]))), NONE);
}

#[test]
fn contains_on_lists_and_map_keys() {
    let mut store = ClientStore::new();
    let l = with(
        &mut store,
        "a",
        "l",
        &[("k", "list", json!([1, 1.0, "x", true, null, [2], {"y": 1}]))],
    );
    let m = with(
        &mut store,
        "a",
        "m",
        &[("k", "map", json!({"x": 0, "1": 2}))],
    );
    let s = with(&mut store, "a", "s", &[("k", "string", json!("x"))]);
    let _ = s;
    let app = Some("a");
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!("x")))),
        [l, m]
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!(1)))),
        [l],
        "a number is not a map key"
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!("1")))),
        [m]
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!(1.0)))),
        [l]
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!(true)))),
        [l]
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!(2)))),
        NONE,
        "nested values are not elements"
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!("y")))),
        NONE
    );
    assert_eq!(
        found(&store, app, false, Some(&contains("k", json!(null)))),
        NONE
    );
    // $eq never looks inside a list.
    assert_eq!(found(&store, app, false, Some(&eq("k", json!("x")))), [s]);
}

#[test]
fn merge_and_replace_move_index_entries() {
    let mut store = ClientStore::new();
    let c = with(
        &mut store,
        "a",
        "c",
        &[
            ("x", "integer", json!(1)),
            ("tags", "list", json!(["p", "q"])),
        ],
    );
    store.set_reserved(c, "ip", MetaValue::plain(json!("10.0.0.1")));
    check(&store);

    store.merge(
        c,
        update(&[("x", "integer", json!(2)), ("y", "string", json!("new"))]),
    );
    check(&store);
    assert_eq!(found(&store, None, false, Some(&eq("x", json!(1)))), NONE);
    assert_eq!(found(&store, None, false, Some(&eq("x", json!(2)))), [c]);
    assert_eq!(
        found(&store, None, false, Some(&eq("y", json!("new")))),
        [c]
    );
    assert_eq!(
        found(&store, None, false, Some(&contains("tags", json!("p")))),
        [c]
    );

    // A key changing kind moves from the membership to the equality index.
    store.merge(c, update(&[("tags", "string", json!("p"))]));
    check(&store);
    assert_eq!(
        found(&store, None, false, Some(&contains("tags", json!("p")))),
        NONE
    );
    assert_eq!(
        found(&store, None, false, Some(&eq("tags", json!("p")))),
        [c]
    );

    store.replace(
        c,
        update(&[
            ("y", "string", json!("new")),
            ("z", "boolean", json!(false)),
        ]),
    );
    check(&store);
    let md = &store.get(c).unwrap().metadata;
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["ip", "restricted", "y", "z"]);
    assert_eq!(found(&store, None, false, Some(&eq("x", json!(2)))), NONE);
    assert_eq!(
        found(&store, None, false, Some(&eq("ip", json!("10.0.0.1")))),
        [c]
    );
    assert_eq!(
        found(&store, None, false, Some(&eq("z", json!(false)))),
        [c]
    );

    // Unknown slots are ignored.
    store.merge(99, update(&[("x", "integer", json!(1))]));
    store.replace(99, vec![]);
    store.set_reserved(99, "ip", MetaValue::plain(json!(null)));
    check(&store);
}

#[test]
fn heartbeat_time_is_not_indexed_but_still_answers() {
    let mut store = ClientStore::new();
    let c = with(&mut store, "a", "c", &[]);
    let d = with(&mut store, "a", "d", &[]);
    store.set_reserved(c, "last_heartbeat_time", MetaValue::plain(json!(1000)));
    store.set_reserved(d, "last_heartbeat_time", MetaValue::plain(json!(2000)));
    store.set_reserved(c, "last_heartbeat_time", MetaValue::plain(json!(3000)));
    check(&store);
    assert_eq!(
        found(
            &store,
            Some("a"),
            false,
            Some(&eq("last_heartbeat_time", json!(3000)))
        ),
        [c]
    );
    assert_eq!(
        found(
            &store,
            None,
            false,
            Some(&is_in("last_heartbeat_time", vec![json!(2000.0)]))
        ),
        [d]
    );
    assert_eq!(
        found(
            &store,
            Some("a"),
            false,
            Some(&eq("last_heartbeat_time", json!(1000)))
        ),
        NONE
    );
}

#[test]
fn changing_the_restricted_key_moves_the_client() {
    let mut store = ClientStore::new();
    let c = with(&mut store, "a", "c", &[("k", "integer", json!(1))]);
    store.set_reserved(c, "restricted", MetaValue::plain(json!(true)));
    check(&store);
    assert!(store.get(c).unwrap().restricted);
    assert_eq!(
        found(&store, Some("a"), false, Some(&eq("k", json!(1)))),
        NONE
    );
    assert_eq!(
        found(&store, Some("a"), true, Some(&eq("k", json!(1)))),
        [c]
    );
    store.set_reserved(c, "restricted", MetaValue::plain(json!(false)));
    check(&store);
    assert_eq!(
        found(&store, Some("a"), false, Some(&eq("k", json!(1)))),
        [c]
    );
}

#[test]
fn big_buckets_switch_representation_and_back() {
    let mut store = ClientStore::new();
    let clients: Vec<ClientIdx> = (0..100)
        .map(|i| {
            store.insert(
                "a",
                &i.to_string(),
                i % 7 == 0,
                meta(&[("k", "string", json!("same"))]),
            )
        })
        .collect();
    check(&store);
    let plan = eq("k", json!("same"));
    assert_eq!(store.candidates(Some("a"), true, Some(&plan)).len(), 100);
    assert_eq!(
        store.candidates(Some("a"), false, Some(&plan)).len(),
        100 - 15
    );
    assert_eq!(store.candidates(None, false, None).len(), 85);
    for &c in &clients[..95] {
        store.remove(c);
        check(&store);
    }
    assert_eq!(found(&store, None, true, Some(&plan)), clients[95..]);
}

#[test]
fn apps_are_freed_and_reinterned() {
    let mut store = ClientStore::new();
    let a = store.insert("a", "1", false, Metadata::new());
    let b = store.insert("b", "1", false, meta(&[("k", "integer", json!(1))]));
    store.remove(a);
    check(&store);
    let c = store.insert("c", "1", true, meta(&[("k", "integer", json!(1))]));
    check(&store);
    assert_eq!(found(&store, Some("a"), true, None), NONE);
    assert_eq!(
        found(&store, Some("b"), true, Some(&eq("k", json!(1)))),
        [b]
    );
    assert_eq!(
        found(&store, Some("c"), true, Some(&eq("k", json!(1)))),
        [c]
    );
    let mut both = vec![b, c];
    both.sort_unstable();
    assert_eq!(found(&store, None, true, Some(&eq("k", json!(1)))), both);
}

#[test]
fn reserved_values_are_indexed_by_kind() {
    let mut store = ClientStore::new();
    let mut md = Metadata::new();
    md.insert("encoding", MetaValue::plain(json!("json")));
    md.insert("namespace", MetaValue::plain(Value::Null));
    md.insert("receive_client_updates", MetaValue::plain(json!(false)));
    md.insert("ver", typed("version", json!("2.0.0")));
    let c = store.insert("a", "c", false, md);
    check(&store);
    assert_eq!(
        found(&store, None, false, Some(&eq("encoding", json!("json")))),
        [c]
    );
    assert_eq!(
        found(
            &store,
            None,
            false,
            Some(&eq("receive_client_updates", json!(false)))
        ),
        [c]
    );
    assert_eq!(
        found(&store, None, false, Some(&eq("namespace", Value::Null))),
        NONE
    );
    assert_eq!(
        found(&store, None, false, Some(&eq("ver", json!("2.0.0")))),
        [c]
    );
    // A hand-built version without its parsed form is still a version.
    let bare = MetaValue {
        version: None,
        ..typed("version", json!("3.0.0"))
    };
    store.set_reserved(c, "ver", bare);
    check(&store);
    assert_eq!(
        found(&store, None, false, Some(&eq("ver", json!("3.0.0+b")))),
        [c]
    );
}

/// The directory's view of a store: every bucket and application touched
/// is noted, and the counts read afterwards are the store's.
#[test]
fn touched_buckets_and_counts_follow_every_mutation() {
    use crate::metadata::{Count, Kind, ScalarKey, Touched, ValueKey};
    use std::collections::HashSet;
    let vk = |key: &str, kind, scalar| ValueKey {
        app: "a".into(),
        key: key.into(),
        kind,
        scalar,
    };
    let touched = |store: &mut ClientStore| -> HashSet<Touched> {
        store.take_touched().into_iter().collect()
    };
    let mut store = ClientStore::new();
    let quiet = store.insert("a", "q", false, meta(&[("id", "integer", json!(1))]));
    assert!(!store.has_touched(), "nothing noted until asked to");
    store.note_changes();

    let c = store.insert(
        "a",
        "c",
        false,
        meta(&[
            ("id", "integer", json!(5)),
            ("rooms", "list", json!([1, 2])),
        ]),
    );
    let seen = touched(&mut store);
    for t in [
        Touched::App("a".into()),
        Touched::Value(vk("id", Kind::Eq, ScalarKey::Int(5))),
        Touched::Value(vk("rooms", Kind::Member, ScalarKey::Int(1))),
        Touched::Value(vk("rooms", Kind::Member, ScalarKey::Int(2))),
        Touched::Value(vk("restricted", Kind::Eq, ScalarKey::Bool(false))),
    ] {
        assert!(seen.contains(&t), "{t:?} not in {seen:?}");
    }
    let open = |n| Count {
        open: n,
        restricted: 0,
    };
    assert_eq!(store.app_count("a"), open(2));
    assert_eq!(store.app_count("b"), Count::default());
    let id5 = vk("id", Kind::Eq, ScalarKey::Int(5));
    assert_eq!(store.value_count(&id5), open(1));

    // An update notes the old and the new bucket; an unchanged value nothing.
    store.merge(c, update(&[("id", "integer", json!(6))]));
    let seen = touched(&mut store);
    assert!(seen.contains(&Touched::Value(id5.clone())));
    assert!(seen.contains(&Touched::Value(vk("id", Kind::Eq, ScalarKey::Int(6)))));
    assert_eq!(store.value_count(&id5), Count::default());
    store.merge(c, update(&[("id", "integer", json!(6))]));
    assert!(!store.has_touched());

    // Becoming restricted moves every count to the restricted side.
    store.merge(c, update(&[("restricted", "boolean", json!(true))]));
    assert!(touched(&mut store).contains(&Touched::App("a".into())));
    assert_eq!(
        store.app_count("a"),
        Count {
            open: 1,
            restricted: 1
        }
    );
    let rooms1 = vk("rooms", Kind::Member, ScalarKey::Int(1));
    assert_eq!(
        store.value_count(&rooms1),
        Count {
            open: 0,
            restricted: 1
        }
    );

    store.remove(c);
    let seen = touched(&mut store);
    assert!(
        seen.contains(&Touched::App("a".into())) && seen.contains(&Touched::Value(rooms1.clone()))
    );
    assert_eq!(store.value_count(&rooms1), Count::default());
    store.remove(quiet);
    assert_eq!(store.app_count("a"), Count::default());
    check(&store);
}
