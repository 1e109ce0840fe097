//! Paths into a client's metadata: `/key/inner/0`.
//!
//! The syntax is JSON Pointer (RFC 6901): segments separated by `/`, with
//! `~1` for a literal `/` and `~0` for a literal `~` inside a segment. The
//! first segment names a top-level metadata key (a typed [`MetaValue`]);
//! further segments walk into that value's untyped JSON, as map keys or, on
//! a list, as indices.
//!
//! Decisions where the contract is silent:
//! - the first segment must be non-empty (`/` and `//x` are errors): metadata
//!   keys are never empty, so such a path could only ever be false, and it is
//!   far more likely a client bug than an intent;
//! - later segments may be empty (`/m/` is the key `""` of the map `m`), as in
//!   JSON Pointer;
//! - a `~` not followed by `0` or `1` is an error, as in JSON Pointer;
//! - on a list, a segment resolves only if it is a canonical decimal index
//!   (`0`, `17`; not `01`, `-1`, `+1` or `-`) within bounds.
//!
//! Segments are unescaped and list indices pre-parsed once, when the query
//! is parsed, since the path is then resolved once per client.

use std::fmt;

use semver::Version;
use serde_json::Value;

use super::error::QueryError;
use crate::metadata::{MetaType, Metadata};

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    key: String,
    rest: Vec<Segment>,
}

/// One segment after the key: the unescaped map key, and the list index it
/// denotes when it is a canonical decimal number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    name: String,
    index: Option<usize>,
}

/// What a path resolved to in one client's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    pub value: &'a Value,
    /// True when the path is just `/key` and that key is declared `version`:
    /// such a value compares by semantic-version order.
    pub version_typed: bool,
    /// The pre-parsed version of a `version_typed` value (the store keeps
    /// it, so queries need not re-parse).
    pub version: Option<&'a Version>,
}

impl Path {
    /// Parses a path, or says precisely what is wrong with it.
    pub fn parse(text: &str) -> Result<Path, QueryError> {
        let Some(body) = text.strip_prefix('/') else {
            return Err(QueryError::PathNoSlash(text.to_owned()));
        };
        let mut segments = body.split('/');
        let key = unescape(segments.next().unwrap_or_default(), text)?;
        if key.is_empty() {
            return Err(QueryError::PathNoKey(text.to_owned()));
        }
        let rest = segments
            .map(|raw| {
                let name = unescape(raw, text)?;
                let index = list_index(&name);
                Ok(Segment { name, index })
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        Ok(Path { key, rest })
    }

    /// A path to the top-level key `key` (no escaping involved).
    pub fn top_level(key: &str) -> Path {
        Path {
            key: key.to_owned(),
            rest: Vec::new(),
        }
    }

    /// The top-level metadata key the path starts at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// True for `/key` alone: the paths the store's indexes can answer.
    pub fn is_top_level(&self) -> bool {
        self.rest.is_empty()
    }

    /// Walks the path through `md`; `None` when any step is missing.
    pub fn resolve<'a>(&self, md: &'a Metadata) -> Option<Resolved<'a>> {
        let top = md.get(&self.key)?;
        if self.rest.is_empty() {
            let version_typed = top.ty == MetaType::Version;
            return Some(Resolved {
                value: &top.value,
                version_typed,
                version: top.version.as_deref().filter(|_| version_typed),
            });
        }
        let mut value = &top.value;
        for segment in &self.rest {
            value = match value {
                Value::Object(map) => map.get(&segment.name)?,
                Value::Array(list) => list.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(Resolved {
            value,
            version_typed: false,
            version: None,
        })
    }
}

/// The path as text that [`Path::parse`] reads back as an equal path:
/// each segment escaped (`~` as `~0`, then `/` as `~1`), so a key taken
/// literally from the legacy dialect (`a/b`) stays one segment.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in std::iter::once(&self.key).chain(self.rest.iter().map(|s| &s.name)) {
            f.write_str("/")?;
            f.write_str(&segment.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// Undoes JSON Pointer escaping in one segment; `whole` is the full path,
/// for the error message.
fn unescape(raw: &str, whole: &str) -> Result<String, QueryError> {
    if !raw.contains('~') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(QueryError::PathEscape(whole.to_owned())),
        }
    }
    Ok(out)
}

/// The list index a segment denotes: canonical decimal only, as in JSON
/// Pointer, so that `"01"` and `"1"` never both name the same element.
fn list_index(segment: &str) -> Option<usize> {
    let canonical = !segment.is_empty()
        && segment.bytes().all(|b| b.is_ascii_digit())
        && (segment == "0" || !segment.starts_with('0'));
    if canonical {
        segment.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::MetaValue;
    use serde_json::json;

    fn md() -> Metadata {
        let mut md = Metadata::new();
        md.insert(
            "m",
            MetaValue::plain(json!({"a": {"b": [10, {"c": true}]}, "x/y": 1, "t~": 2, "": 3})),
        );
        md.insert("l", MetaValue::plain(json!(["p", "q"])));
        md.insert(
            "v",
            MetaValue {
                ty: MetaType::Version,
                value: json!("1.2.3"),
                version: Some(Box::new(Version::new(1, 2, 3))),
            },
        );
        md
    }

    fn get(path: &str) -> Option<Value> {
        let md = md();
        Path::parse(path)
            .unwrap()
            .resolve(&md)
            .map(|r| r.value.clone())
    }

    #[test]
    fn walks_maps_and_lists() {
        assert_eq!(get("/m/a/b/0"), Some(json!(10)));
        assert_eq!(get("/m/a/b/1/c"), Some(json!(true)));
        assert_eq!(get("/l/1"), Some(json!("q")));
        assert_eq!(get("/l"), Some(json!(["p", "q"])));
    }

    #[test]
    fn missing_steps_do_not_resolve() {
        assert_eq!(get("/nope"), None);
        assert_eq!(get("/m/zz"), None);
        assert_eq!(get("/l/2"), None);
        assert_eq!(get("/l/01"), None);
        assert_eq!(get("/l/-1"), None);
        assert_eq!(get("/l/-"), None);
        assert_eq!(get("/l/x"), None);
        assert_eq!(get("/l/0/deeper"), None);
        assert_eq!(get("/m/a/b/99999999999999999999999"), None);
    }

    #[test]
    fn escapes_and_empty_inner_segments() {
        assert_eq!(get("/m/x~1y"), Some(json!(1)));
        assert_eq!(get("/m/t~0"), Some(json!(2)));
        assert_eq!(get("/m/"), Some(json!(3)));
    }

    #[test]
    fn version_typing_only_at_top_level() {
        let md = md();
        let r = Path::parse("/v").unwrap().resolve(&md).unwrap();
        assert!(r.version_typed);
        assert_eq!(r.version, Some(&Version::new(1, 2, 3)));
        let r = Path::parse("/l").unwrap().resolve(&md).unwrap();
        assert!(!r.version_typed);
        assert_eq!(r.version, None);
    }

    #[test]
    fn errors() {
        let err = |p: &str| Path::parse(p).unwrap_err().to_string();
        assert_eq!(err("a/b"), "path must start with '/': a/b");
        assert_eq!(err(""), "path must start with '/': ");
        assert_eq!(err("/"), "path must name a metadata key: /");
        assert_eq!(err("//a"), "path must name a metadata key: //a");
        assert_eq!(
            err("/a~2"),
            "invalid '~' escape in path (only ~0 and ~1 are allowed): /a~2"
        );
        assert!(Path::parse("/a/b~").is_err());
    }

    #[test]
    fn top_level() {
        assert!(Path::parse("/a").unwrap().is_top_level());
        assert!(!Path::parse("/a/b").unwrap().is_top_level());
        assert_eq!(Path::parse("/a~1b").unwrap().key(), "a/b");
        assert_eq!(Path::top_level("k"), Path::parse("/k").unwrap());
    }

    #[test]
    fn display_parses_back() {
        for text in ["/a", "/a/b/0", "/m/", "/m//x", "/x~1y/t~0/~01/~10", "/é/ü"] {
            let path = Path::parse(text).unwrap();
            assert_eq!(path.to_string(), text);
            assert_eq!(Path::parse(&path.to_string()).unwrap(), path);
        }
        assert_eq!(Path::top_level("a/~b").to_string(), "/a~1~0b");
    }
}
