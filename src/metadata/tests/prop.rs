//! Random operation sequences: after every step the indexes equal a rebuild
//! from scratch, and every probe's candidates equal a brute-force scan by an
//! independent reference predicate (exact rational comparison of numbers,
//! `cmp_precedence` for versions; no `ScalarKey` involved).

use std::cmp::Ordering;

use proptest::prelude::*;
use serde_json::{Number, Value, json};

use crate::metadata::{
    ClientEntry, ClientIdx, ClientStore, IndexPlan, MetaType, MetaValue, Metadata, Probe,
};

const APPS: [&str; 3] = ["a1", "a2", "a3"];
const KEYS: [&str; 3] = ["a", "b", "c"];
const PROBE_KEYS: [&str; 7] = [
    "a",
    "b",
    "c",
    "last_heartbeat_time",
    "ip",
    "restricted",
    "zzz",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "x",
            "y",
            "1",
            "1.0.0",
            "1.0.0+b",
            "1.0.0-rc.1",
            "2.0.0",
            "v1.0.0"
        ])
        .prop_map(|s| json!(s)),
        (-2i64..3).prop_map(|i| json!(i)),
        prop::sample::select(vec![u64::MAX, 1 << 63, (1 << 53) + 1]).prop_map(|u| json!(u)),
        Just(json!(i64::MIN)),
        prop::sample::select(vec![
            1.0,
            1.5,
            -0.0,
            0.0,
            2.0,
            -2.0,
            1e20,
            9_223_372_036_854_775_808.0,
            18_446_744_073_709_551_615.0,
            9_007_199_254_740_992.0,
            -9_223_372_036_854_775_808.0,
        ])
        .prop_map(|f| json!(f)),
        any::<bool>().prop_map(|b| json!(b)),
    ]
}

fn element() -> impl Strategy<Value = Value> {
    prop_oneof![4 => scalar(), 1 => Just(Value::Null), 1 => scalar().prop_map(|s| json!([s]))]
}

fn value() -> impl Strategy<Value = MetaValue> {
    prop_oneof![
        3 => scalar().prop_map(MetaValue::plain),
        1 => prop::sample::select(vec!["1.0.0", "1.0.0+b", "1.0.0-rc.1", "2.0.0"]).prop_map(|s| MetaValue {
            ty: MetaType::Version,
            value: json!(s),
            version: semver::Version::parse(s).ok().map(Box::new),
        }),
        1 => prop::collection::vec(element(), 0..4).prop_map(|l| MetaValue::plain(Value::Array(l))),
        1 => prop::collection::btree_map(prop::sample::select(vec!["x", "1", "1.0.0", "y"]), scalar(), 0..3)
            .prop_map(|m| MetaValue::plain(json!(m))),
    ]
}

fn values() -> impl Strategy<Value = Vec<(String, MetaValue)>> {
    prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), value(), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        app: usize,
        restricted: bool,
        values: Vec<(String, MetaValue)>,
    },
    Merge {
        pick: usize,
        values: Vec<(String, MetaValue)>,
    },
    Replace {
        pick: usize,
        values: Vec<(String, MetaValue)>,
    },
    Remove {
        pick: usize,
    },
    Reserved {
        pick: usize,
        key: &'static str,
        value: MetaValue,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let reserved = prop_oneof![
        scalar().prop_map(|v| ("last_heartbeat_time", MetaValue::plain(v))),
        scalar().prop_map(|v| ("ip", MetaValue::plain(v))),
        any::<bool>().prop_map(|b| ("restricted", MetaValue::plain(json!(b)))),
    ];
    prop_oneof![
        3 => (0..APPS.len(), any::<bool>(), values()).prop_map(|(app, restricted, values)| Op::Insert { app, restricted, values }),
        2 => (any::<usize>(), values()).prop_map(|(pick, values)| Op::Merge { pick, values }),
        1 => (any::<usize>(), values()).prop_map(|(pick, values)| Op::Replace { pick, values }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => (any::<usize>(), reserved).prop_map(|(pick, (key, value))| Op::Reserved { pick, key, value }),
    ]
}

fn probe_value() -> impl Strategy<Value = Value> {
    prop_oneof![8 => scalar(), 1 => Just(Value::Null), 1 => Just(json!([1]))]
}

fn query() -> impl Strategy<Value = (Option<usize>, bool, Option<Probe>)> {
    let key = || prop::sample::select(PROBE_KEYS.to_vec()).prop_map(str::to_owned);
    let probe = prop_oneof![
        (key(), probe_value()).prop_map(|(key, value)| Probe::Eq { key, value }),
        (key(), prop::collection::vec(probe_value(), 0..4))
            .prop_map(|(key, values)| Probe::In { key, values }),
        (key(), probe_value()).prop_map(|(key, value)| Probe::Contains { key, value }),
    ];
    (
        prop::option::of(0..APPS.len() + 1),
        any::<bool>(),
        prop::option::weighted(0.9, probe),
    )
}

/// A number as an exact value: integers (and integral floats of moderate
/// size) as i128, everything else as its float.
#[derive(PartialEq)]
enum Exact {
    Int(i128),
    Float(f64),
}

fn exact(n: &Number) -> Exact {
    if let Some(i) = n.as_i64() {
        return Exact::Int(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Exact::Int(u.into());
    }
    let f = n.as_f64().unwrap();
    if f.fract() == 0.0 && f.abs() < 1e30 {
        Exact::Int(f as i128)
    } else {
        Exact::Float(f)
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => exact(x) == exact(y),
        _ => false,
    }
}

/// `$eq` of a stored value and a probe value.
fn stored_eq(stored: &MetaValue, probe: &Value) -> bool {
    if stored.ty == MetaType::Version {
        let mine = stored.version.clone().unwrap();
        return match probe {
            Value::String(s) => {
                semver::Version::parse(s).is_ok_and(|v| v.cmp_precedence(&mine) == Ordering::Equal)
            }
            _ => false,
        };
    }
    json_eq(&stored.value, probe)
}

fn stored_contains(stored: &MetaValue, probe: &Value) -> bool {
    match (&stored.value, probe) {
        (Value::Array(items), _) => items.iter().any(|e| json_eq(e, probe)),
        (Value::Object(map), Value::String(s)) => map.contains_key(s),
        _ => false,
    }
}

fn reference(
    entry: &ClientEntry,
    app: Option<&str>,
    restricted: bool,
    probe: Option<&Probe>,
) -> bool {
    if app.is_some_and(|a| a != &*entry.app_id) || (entry.restricted && !restricted) {
        return false;
    }
    let Some(probe) = probe else {
        return true;
    };
    let (Probe::Eq { key, .. } | Probe::In { key, .. } | Probe::Contains { key, .. }) = probe;
    let Some(stored) = entry.metadata.get(key) else {
        return false;
    };
    match probe {
        Probe::Eq { value, .. } => stored_eq(stored, value),
        Probe::In { values, .. } => values.iter().any(|v| stored_eq(stored, v)),
        Probe::Contains { value, .. } => stored_contains(stored, value),
    }
}

fn apply(store: &mut ClientStore, live: &mut Vec<ClientIdx>, op: Op, next_id: &mut u32) {
    let pick = |p: usize| (!live.is_empty()).then(|| live[p % live.len()]);
    match op {
        Op::Insert {
            app,
            restricted,
            values,
        } => {
            let mut md = crate::metadata::Metadata::new();
            for (k, v) in values {
                md.insert(&k, v);
            }
            *next_id += 1;
            live.push(store.insert(APPS[app], &next_id.to_string(), restricted, md));
        }
        Op::Merge { pick: p, values } => {
            if let Some(c) = pick(p) {
                store.merge(c, values);
            }
        }
        Op::Replace { pick: p, values } => {
            if let Some(c) = pick(p) {
                store.replace(c, values);
            }
        }
        Op::Remove { pick: p } => {
            if let Some(c) = pick(p) {
                assert!(store.remove(c).is_some());
                live.retain(|&x| x != c);
            }
        }
        Op::Reserved {
            pick: p,
            key,
            value,
        } => {
            if let Some(c) = pick(p) {
                store.set_reserved(c, key, value);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn indexes_match_a_scan(
        steps in prop::collection::vec((op(), prop::collection::vec(query(), 4)), 1..40),
    ) {
        let mut store = ClientStore::new();
        let mut live = Vec::new();
        let mut next_id = 0;
        for (op, queries) in steps {
            apply(&mut store, &mut live, op, &mut next_id);
            if let Err(problem) = store.debug_check_consistency() {
                panic!("inconsistent store: {problem}");
            }
            prop_assert_eq!(store.len(), live.len());
            for (app, restricted, probe) in queries {
                // Index APPS.len() names an app that never exists.
                let app = app.map(|i| APPS.get(i).copied().unwrap_or("none"));
                let plan = probe.map(|probe| IndexPlan { probe, exact: true });
                let candidates = store.candidates(app, restricted, plan.as_ref());
                let mut got: Vec<ClientIdx> = candidates.iter().collect();
                let by_index: Vec<ClientIdx> = (0..candidates.len()).filter_map(|i| candidates.nth(i)).collect();
                prop_assert_eq!(&got, &by_index);
                got.sort_unstable();
                let expected: Vec<ClientIdx> = store
                    .iter()
                    .filter(|(_, e)| reference(e, app, restricted, plan.as_ref().map(|p| &p.probe)))
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(got, expected, "app {:?} restricted {} plan {:?}", app, restricted, plan);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What another node of the cluster reads back is what was sent,
    /// reserved keys, nulls and versions included.
    #[test]
    fn typed_json_round_trips(values in values(), reserved in scalar(), null in any::<bool>()) {
        let mut md = Metadata::new();
        for (k, v) in values {
            md.insert(&k, v);
        }
        md.insert("ip", MetaValue::plain(reserved));
        if null {
            md.insert("namespace", MetaValue::plain(Value::Null));
        }
        let wire = serde_json::to_vec(&md.to_typed_json()).unwrap();
        let back = Metadata::from_typed_json(&sonic_rs::from_slice(&wire).unwrap()).unwrap();
        prop_assert_eq!(back, md);
    }
}
