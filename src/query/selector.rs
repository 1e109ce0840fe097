//! Selectors: after filtering, keep the one client with the minimum, maximum
//! or closest-to-average numeric value at `/<key>`. This file parses them
//! and reads a client's value; choosing across shards is routing's job.
//!
//! The key names a top-level metadata key literally (no path syntax, no
//! escapes), as every client library sends it. Only integers and floats
//! count; clients without a number there are ignored by the selector.

use serde_json::Value;

use super::error::QueryError;
use crate::metadata::Metadata;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub kind: SelectorKind,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    Min,
    Max,
    Avg,
}

impl SelectorKind {
    /// The wire name, `$min`/`$max`/`$avg`.
    pub fn name(self) -> &'static str {
        match self {
            SelectorKind::Min => "$min",
            SelectorKind::Max => "$max",
            SelectorKind::Avg => "$avg",
        }
    }

    fn from_name(name: &str) -> Option<(SelectorKind, &'static str)> {
        match name {
            "$min" => Some((SelectorKind::Min, "$min")),
            "$max" => Some((SelectorKind::Max, "$max")),
            "$avg" => Some((SelectorKind::Avg, "$avg")),
            _ => None,
        }
    }
}

impl Selector {
    /// Parses the `selector` field; absent or null means no selector.
    pub(crate) fn parse(v: Option<&Value>) -> Result<Option<Selector>, QueryError> {
        let obj = match v {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(obj)) if obj.len() == 1 => obj,
            Some(_) => return Err(QueryError::SelectorShape),
        };
        let Some((name, key)) = obj.iter().next() else {
            return Err(QueryError::SelectorShape);
        };
        let Some((kind, name)) = SelectorKind::from_name(name) else {
            return Err(QueryError::UnknownSelector(name.clone()));
        };
        match key {
            Value::String(key) if !key.is_empty() => Ok(Some(Selector {
                kind,
                key: key.clone(),
            })),
            _ => Err(QueryError::SelectorKey(name)),
        }
    }

    /// The numeric value at `/<key>` (integers and floats; anything else,
    /// including a missing key, is `None`).
    pub fn value(&self, md: &Metadata) -> Option<f64> {
        match &md.get(&self.key)?.value {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::MetaValue;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<Selector>, String> {
        Selector::parse(Some(&v)).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_each_kind() {
        for (name, kind) in [
            ("$min", SelectorKind::Min),
            ("$max", SelectorKind::Max),
            ("$avg", SelectorKind::Avg),
        ] {
            let s = parse(json!({ name: "load" })).unwrap().unwrap();
            assert_eq!(
                s,
                Selector {
                    kind,
                    key: "load".into()
                }
            );
            assert_eq!(kind.name(), name);
        }
        assert_eq!(parse(json!(null)), Ok(None));
        assert_eq!(Selector::parse(None), Ok(None));
    }

    #[test]
    fn errors() {
        let shape = "'selector' must be an object with exactly one of $min, $max, $avg";
        assert_eq!(
            parse(json!({"$median": "x"})).unwrap_err(),
            "unknown selector $median"
        );
        assert_eq!(parse(json!({})).unwrap_err(), shape);
        assert_eq!(parse(json!({"$min": "a", "$max": "b"})).unwrap_err(), shape);
        assert_eq!(parse(json!("$min")).unwrap_err(), shape);
        assert_eq!(parse(json!(["$min", "a"])).unwrap_err(), shape);
        assert_eq!(
            parse(json!({"$min": 3})).unwrap_err(),
            "selector $min needs a non-empty string key"
        );
        assert_eq!(
            parse(json!({"$avg": ""})).unwrap_err(),
            "selector $avg needs a non-empty string key"
        );
    }

    #[test]
    fn value_is_numeric_only() {
        let mut md = Metadata::new();
        md.insert("i", MetaValue::plain(json!(3)));
        md.insert("f", MetaValue::plain(json!(2.5)));
        md.insert("s", MetaValue::plain(json!("7")));
        md.insert("l", MetaValue::plain(json!([1])));
        let sel = |k: &str| Selector {
            kind: SelectorKind::Min,
            key: k.into(),
        };
        assert_eq!(sel("i").value(&md), Some(3.0));
        assert_eq!(sel("f").value(&md), Some(2.5));
        assert_eq!(sel("s").value(&md), None);
        assert_eq!(sel("l").value(&md), None);
        assert_eq!(sel("missing").value(&md), None);
    }
}
