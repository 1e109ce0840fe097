//! Validation of metadata updates (contract §4) and their size estimate.
//!
//! An update is all-or-nothing: either every key is valid and the whole
//! update is returned as typed values, or nothing is and the error names
//! each bad key. Every message text is written in this file.
//!
//! Decisions beyond the contract:
//! - `version` is strict SemVer 2.0.0 (`semver::Version::parse`): no leading
//!   `v`, no `1.2`. The original server's parser was strict too, and a query
//!   string is compared as a version exactly when it parses the same way, so
//!   one strict parser on both sides keeps `$eq` predictable.
//! - Keys must be non-empty and free of `/`: a query path splits on `/`, so
//!   such a key could never be queried; rejecting it says so at once.
//! - Extra fields next to `type` and `value` are ignored.

use std::collections::BTreeMap;
use std::io;

use serde_json::Value;

use super::{MetaType, MetaValue, Metadata};

/// Keys the server sets itself; an update may not touch them.
pub const RESERVED_KEYS: [&str; 6] = [
    "last_heartbeat_time",
    "restricted",
    "encoding",
    "ip",
    "namespace",
    "receive_client_updates",
];

/// Counted per key on top of its key and value bytes in
/// [`estimated_size`], for the entry and its index postings, so that many
/// tiny keys are not free.
pub const ENTRY_OVERHEAD: usize = 32;

/// Longest part of an unknown type name echoed back in a message.
const MAX_ECHO: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The update itself is not a JSON object.
    #[error("metadata must be a map of key -> {{\"type\": ..., \"value\": ...}}")]
    NotAMap,
    /// One message per rejected key.
    #[error("invalid metadata")]
    Keys(BTreeMap<String, String>),
}

impl UpdateError {
    /// The `extra_info` of the rejection packet: `{key: message}`, or the
    /// `NotAMap` text.
    pub fn extra_info(&self) -> Value {
        match self {
            UpdateError::NotAMap => Value::String(self.to_string()),
            UpdateError::Keys(errors) => Value::Object(
                errors
                    .iter()
                    .map(|(k, m)| (k.clone(), Value::String(m.clone())))
                    .collect(),
            ),
        }
    }
}

/// Parses an update map `{key: {"type": T, "value": V}}` into typed values.
pub fn parse_update(d: &Value) -> Result<Vec<(String, MetaValue)>, UpdateError> {
    let Value::Object(map) = d else {
        return Err(UpdateError::NotAMap);
    };
    let mut values = Vec::with_capacity(map.len());
    let mut errors = BTreeMap::new();
    for (key, entry) in map {
        match parse_entry(key, entry) {
            // Once one key failed nothing is returned: stop collecting.
            Ok(value) if errors.is_empty() => values.push((key.clone(), value)),
            Ok(_) => {}
            Err(message) => {
                errors.insert(key.clone(), message);
            }
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(UpdateError::Keys(errors))
    }
}

fn parse_entry(key: &str, entry: &Value) -> Result<MetaValue, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if RESERVED_KEYS.contains(&key) {
        return Err("reserved key".into());
    }
    if key.contains('/') {
        return Err("key must not contain '/'".into());
    }
    let Value::Object(fields) = entry else {
        return Err(format!(
            "expected an object with 'type' and 'value', got {}",
            kind(entry)
        ));
    };
    let ty = match fields.get("type") {
        None => return Err("missing 'type'".into()),
        Some(Value::String(name)) => MetaType::from_name(name)
            .ok_or_else(|| format!("unknown type '{}'", truncate(name, MAX_ECHO)))?,
        Some(other) => return Err(format!("'type' must be a string, got {}", kind(other))),
    };
    let Some(value) = fields.get("value") else {
        return Err("missing 'value'".into());
    };
    let fits = match ty {
        MetaType::String => value.is_string(),
        MetaType::Integer => value.is_i64() || value.is_u64(),
        MetaType::Float => value.is_number(),
        MetaType::Boolean => value.is_boolean(),
        MetaType::List => value.is_array(),
        MetaType::Map => value.is_object(),
        MetaType::Version => {
            let Value::String(text) = value else {
                return Err(mismatch(ty, value));
            };
            let version =
                semver::Version::parse(text).map_err(|e| format!("invalid version: {e}"))?;
            return Ok(MetaValue {
                ty,
                value: value.clone(),
                version: Some(Box::new(version)),
            });
        }
    };
    if !fits {
        return Err(mismatch(ty, value));
    }
    Ok(MetaValue {
        ty,
        value: value.clone(),
        version: None,
    })
}

fn mismatch(ty: MetaType, value: &Value) -> String {
    format!("expected {}, got {}", ty.name(), kind(value))
}

/// The kind of a JSON value, in the words of the metadata types.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// A deterministic approximation of what a client's metadata costs, for the
/// per-client metadata size limit: per key, its length, its value's compact
/// JSON length and [`ENTRY_OVERHEAD`]. Linear in the metadata's size.
pub fn estimated_size(md: &Metadata) -> usize {
    md.iter().map(|(k, v)| estimated_entry_size(k, v)).sum()
}

/// One key's share of [`estimated_size`], so that a caller can price an
/// update (add the new keys, subtract the ones they replace) before
/// applying it.
pub fn estimated_entry_size(key: &str, value: &MetaValue) -> usize {
    ENTRY_OVERHEAD + key.len() + json_len(&value.value)
}

/// The length of `value` written as JSON, without building the text.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Cannot fail: the writer never errors and a Value always serializes.
    serde_json::to_writer(&mut count, value).ok();
    count.0
}
