//! Typed metadata values as a client declares them (contract §4).
//!
//! A client's metadata is a map `key -> (type, value)`. The type matters for
//! queries: a `version` compares by semantic-version order, everything else by
//! its JSON kind. Values inside lists and maps are untyped JSON.

use serde_json::Value;

/// The declared type of one top-level metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaType {
    String,
    Integer,
    Float,
    Boolean,
    Version,
    List,
    Map,
}

impl MetaType {
    /// Parses the wire name of a type (`"string"`, `"integer"`, ...).
    pub fn from_name(name: &str) -> Option<MetaType> {
        Some(match name {
            "string" => MetaType::String,
            "integer" => MetaType::Integer,
            "float" => MetaType::Float,
            "boolean" => MetaType::Boolean,
            "version" => MetaType::Version,
            "list" => MetaType::List,
            "map" => MetaType::Map,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MetaType::String => "string",
            MetaType::Integer => "integer",
            MetaType::Float => "float",
            MetaType::Boolean => "boolean",
            MetaType::Version => "version",
            MetaType::List => "list",
            MetaType::Map => "map",
        }
    }
}

/// One validated top-level metadata value.
///
/// `version` is the parsed semantic version when `ty` is `Version`, kept so
/// that comparisons do not re-parse the string on every query.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaValue {
    pub ty: MetaType,
    pub value: Value,
    pub version: Option<Box<semver::Version>>,
}

impl MetaValue {
    /// A value whose type is implied by its JSON kind (used for the reserved
    /// keys the server sets itself). Numbers become `integer` when they are
    /// integers and `float` otherwise; null is stored as a `map`-less plain
    /// value of type `string` kind-wise, which queries treat as JSON null.
    pub fn plain(value: Value) -> MetaValue {
        let ty = match &value {
            Value::Bool(_) => MetaType::Boolean,
            Value::Number(n) if n.is_f64() => MetaType::Float,
            Value::Number(_) => MetaType::Integer,
            Value::Array(_) => MetaType::List,
            Value::Object(_) => MetaType::Map,
            Value::String(_) | Value::Null => MetaType::String,
        };
        MetaValue {
            ty,
            value,
            version: None,
        }
    }
}

/// The metadata of one client: a small map from key to typed value.
///
/// Stored as a vector sorted by key: clients carry a handful of keys, and a
/// sorted vector is both smaller and faster to search than a hash map at that
/// size (it also makes iteration order deterministic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(Box<str>, MetaValue)>,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// Sets `key`, returning the value it replaces.
    pub fn insert(&mut self, key: &str, value: MetaValue) -> Option<MetaValue> {
        match self.entries.binary_search_by(|(k, _)| (**k).cmp(key)) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key.into(), value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        self.entries
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops spare capacity: a client's metadata lives as long as its
    /// connection, and at ~100 bytes an entry the slack adds up.
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// The metadata with its types, `{key: {"type": T, "value": V}}` (the
    /// shape of a metadata update), for another node of the cluster:
    /// [`Metadata::from_typed_json`] reads it back.
    pub fn to_typed_json(&self) -> Value {
        Value::Object(
            self.entries
                .iter()
                .map(|(k, v)| {
                    let typed = serde_json::json!({"type": v.ty.name(), "value": v.value});
                    (k.to_string(), typed)
                })
                .collect(),
        )
    }

    /// Reads [`Metadata::to_typed_json`] back. Reserved keys and nulls
    /// (which the server sets itself) are taken as they are; a version is
    /// parsed again.
    pub fn from_typed_json(json: &Value) -> Result<Metadata, String> {
        let Value::Object(map) = json else {
            return Err("metadata is not an object".into());
        };
        let mut md = Metadata::new();
        for (key, entry) in map {
            let ty = entry["type"]
                .as_str()
                .and_then(MetaType::from_name)
                .ok_or_else(|| format!("{key}: no known type"))?;
            let value = entry.get("value").cloned().unwrap_or(Value::Null);
            let version = match (ty, &value) {
                (MetaType::Version, Value::String(text)) => Some(Box::new(
                    semver::Version::parse(text).map_err(|e| format!("{key}: {e}"))?,
                )),
                (MetaType::Version, _) => return Err(format!("{key}: version is not a string")),
                _ => None,
            };
            md.insert(key, MetaValue { ty, value, version });
        }
        Ok(md)
    }

    /// The metadata as a plain JSON object `{key: value}` (types dropped), as
    /// the `<client>` object of QUERY_NODES and the HTTP query API shows it.
    pub fn to_plain_json(&self) -> Value {
        Value::Object(
            self.entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.value.clone()))
                .collect(),
        )
    }
}
