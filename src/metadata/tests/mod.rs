//! Tests of the metadata module: validation, the store and its indexes, and
//! a property test comparing the indexes with a brute-force scan.

mod prop;
mod store;
mod validate;

use serde_json::{Value, json};

use super::{MetaType, MetaValue, Metadata};

/// A typed value as a client would declare it (version parsed).
fn typed(ty: &str, value: Value) -> MetaValue {
    let ty = MetaType::from_name(ty).expect("test uses a known type");
    let version = match (ty, &value) {
        (MetaType::Version, Value::String(s)) => {
            Some(semver::Version::parse(s).expect("test version parses"))
        }
        _ => None,
    };
    MetaValue {
        ty,
        value,
        version: version.map(Box::new),
    }
}

/// Metadata from `(key, type, value)` triples.
fn meta(entries: &[(&str, &str, Value)]) -> Metadata {
    let mut md = Metadata::new();
    for (key, ty, value) in entries {
        md.insert(key, typed(ty, value.clone()));
    }
    md
}

fn update(entries: &[(&str, &str, Value)]) -> Vec<(String, MetaValue)> {
    entries
        .iter()
        .map(|(k, ty, v)| (k.to_string(), typed(ty, v.clone())))
        .collect()
}

#[test]
fn helpers_build_what_they_say() {
    let md = meta(&[("v", "version", json!("1.2.3"))]);
    assert_eq!(
        md.get("v").and_then(|v| v.version.clone()),
        Some(Box::new(semver::Version::new(1, 2, 3)))
    );
}
