use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::metadata::{
    ENTRY_OVERHEAD, MetaType, RESERVED_KEYS, UpdateError, estimated_size, parse_update,
};

use super::meta;

/// The message for `key` when `entry` is its only entry.
fn error_of(key: &str, entry: Value) -> String {
    match parse_update(&json!({ key: entry })) {
        Err(UpdateError::Keys(errors)) => {
            assert_eq!(errors.len(), 1);
            errors[key].clone()
        }
        other => panic!("expected a key error, got {other:?}"),
    }
}

fn parse_one(ty: &str, value: Value) -> crate::metadata::MetaValue {
    let mut parsed =
        parse_update(&json!({"k": {"type": ty, "value": value}})).expect("valid update");
    assert_eq!(parsed.len(), 1);
    let (key, value) = parsed.remove(0);
    assert_eq!(key, "k");
    value
}

#[test]
fn accepts_every_type() {
    let cases = [
        ("string", json!("hello"), MetaType::String),
        ("string", json!(""), MetaType::String),
        ("integer", json!(-5), MetaType::Integer),
        ("integer", json!(u64::MAX), MetaType::Integer),
        ("float", json!(1.5), MetaType::Float),
        ("float", json!(2), MetaType::Float),
        ("boolean", json!(false), MetaType::Boolean),
        ("version", json!("1.2.3-rc.1+build.5"), MetaType::Version),
        ("list", json!([1, "a", null, [2], {"x": 1}]), MetaType::List),
        ("list", json!([]), MetaType::List),
        ("map", json!({"a": {"b": [1]}}), MetaType::Map),
        ("map", json!({}), MetaType::Map),
    ];
    for (ty, value, expected) in cases {
        let parsed = parse_one(ty, value.clone());
        assert_eq!(parsed.ty, expected, "{ty} {value}");
        assert_eq!(parsed.value, value, "the value is kept as given");
        assert_eq!(parsed.version.is_some(), expected == MetaType::Version);
    }
    let v = parse_one("version", json!("1.2.3-rc.1+build.5"))
        .version
        .unwrap();
    assert_eq!(
        (v.major, v.minor, v.patch, v.pre.as_str(), v.build.as_str()),
        (1, 2, 3, "rc.1", "build.5")
    );
}

#[test]
fn rejects_values_of_the_wrong_kind() {
    let cases = [
        ("string", json!(1), "expected string, got integer"),
        ("string", json!(null), "expected string, got null"),
        ("integer", json!("1"), "expected integer, got string"),
        ("integer", json!(1.5), "expected integer, got float"),
        ("integer", json!(1.0), "expected integer, got float"),
        ("float", json!("1.5"), "expected float, got string"),
        ("float", json!(true), "expected float, got boolean"),
        ("boolean", json!(0), "expected boolean, got integer"),
        ("boolean", json!("true"), "expected boolean, got string"),
        ("version", json!(1), "expected version, got integer"),
        ("version", json!([1, 2, 3]), "expected version, got list"),
        ("list", json!({}), "expected list, got map"),
        ("list", json!("[]"), "expected list, got string"),
        ("map", json!([]), "expected map, got list"),
        ("map", json!(null), "expected map, got null"),
    ];
    for (ty, value, message) in cases {
        assert_eq!(
            error_of("k", json!({"type": ty, "value": value})),
            message,
            "{ty} {value}"
        );
    }
}

#[test]
fn rejects_bad_versions_strictly() {
    for text in [
        "1.2", "v1.2.3", "1.2.3.4", "01.2.3", "1.2.3-01", "", "latest", " 1.2.3",
    ] {
        let message = error_of("k", json!({"type": "version", "value": text}));
        assert!(
            message.starts_with("invalid version: "),
            "{text:?}: {message}"
        );
    }
    assert_eq!(
        error_of("k", json!({"type": "version", "value": "1.2"})),
        "invalid version: unexpected end of input while parsing minor version number"
    );
}

#[test]
fn rejects_malformed_entries() {
    let cases = [
        (
            json!("string"),
            "expected an object with 'type' and 'value', got string",
        ),
        (
            json!(null),
            "expected an object with 'type' and 'value', got null",
        ),
        (
            json!([1]),
            "expected an object with 'type' and 'value', got list",
        ),
        (json!({"value": 1}), "missing 'type'"),
        (json!({"type": "integer"}), "missing 'value'"),
        (json!({}), "missing 'type'"),
        (
            json!({"type": 5, "value": 1}),
            "'type' must be a string, got integer",
        ),
        (json!({"type": "foo", "value": 1}), "unknown type 'foo'"),
        (
            json!({"type": "Integer", "value": 1}),
            "unknown type 'Integer'",
        ),
    ];
    for (entry, message) in cases {
        assert_eq!(error_of("k", entry.clone()), message, "{entry}");
    }
    let long = "x".repeat(100);
    assert_eq!(
        error_of("k", json!({"type": long, "value": 1})),
        format!("unknown type '{}...'", "x".repeat(32))
    );
}

#[test]
fn rejects_reserved_empty_and_unaddressable_keys() {
    let good = json!({"type": "integer", "value": 1});
    for key in RESERVED_KEYS {
        assert_eq!(error_of(key, good.clone()), "reserved key", "{key}");
    }
    assert_eq!(error_of("", good.clone()), "empty key");
    assert_eq!(error_of("a/b", good.clone()), "key must not contain '/'");
    // The key check comes first, whatever the entry.
    assert_eq!(error_of("ip", json!("junk")), "reserved key");
}

#[test]
fn rejects_non_objects() {
    for d in [json!(null), json!([]), json!("x"), json!(1)] {
        assert_eq!(parse_update(&d), Err(UpdateError::NotAMap), "{d}");
    }
    let error = UpdateError::NotAMap;
    assert_eq!(
        error.to_string(),
        r#"metadata must be a map of key -> {"type": ..., "value": ...}"#
    );
    assert_eq!(error.extra_info(), Value::String(error.to_string()));
}

#[test]
fn is_all_or_nothing_and_names_every_bad_key() {
    let d = json!({
        "good": {"type": "integer", "value": 1},
        "bad_type": {"type": "nope", "value": 1},
        "bad_value": {"type": "boolean", "value": "yes"},
        "also_good": {"type": "string", "value": "x"},
        "restricted": {"type": "boolean", "value": true},
    });
    let Err(UpdateError::Keys(errors)) = parse_update(&d) else {
        panic!("expected key errors");
    };
    let expected: BTreeMap<String, String> = [
        ("bad_type", "unknown type 'nope'"),
        ("bad_value", "expected boolean, got string"),
        ("restricted", "reserved key"),
    ]
    .into_iter()
    .map(|(k, m)| (k.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(errors, expected);
    let error = UpdateError::Keys(errors);
    assert_eq!(error.to_string(), "invalid metadata");
    assert_eq!(
        error.extra_info(),
        json!({"bad_type": "unknown type 'nope'", "bad_value": "expected boolean, got string", "restricted": "reserved key"})
    );
}

#[test]
fn accepts_empty_updates_and_ignores_extra_fields() {
    assert_eq!(parse_update(&json!({})), Ok(vec![]));
    let parsed = parse_update(&json!({"a": {"type": "integer", "value": 3, "note": "x"}})).unwrap();
    assert_eq!(parsed[0].1.value, json!(3));
}

#[test]
fn estimated_size_counts_keys_values_and_overhead() {
    let md = meta(&[("ab", "string", json!("xy")), ("n", "list", json!([1, 2]))]);
    // "ab" + "\"xy\"" and "n" + "[1,2]".
    assert_eq!(estimated_size(&md), 2 * ENTRY_OVERHEAD + 2 + 4 + 1 + 5);
    assert_eq!(estimated_size(&crate::metadata::Metadata::new()), 0);
    let big = meta(&[("k", "string", json!("x".repeat(1000)))]);
    assert_eq!(estimated_size(&big), ENTRY_OVERHEAD + 1 + 1002);
}
