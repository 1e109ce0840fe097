//! The `$eq` equivalence on scalars, as a hashable key.
//!
//! Two scalars are `$eq`-equal exactly when their [`ScalarKey`]s are equal, so
//! the indexes can bucket clients by key and a probe can look its value up
//! instead of comparing against every client. The rules (contract §5):
//!
//! - numbers compare numerically, exactly: `1 == 1.0`, `-0.0 == 0`, but a
//!   large integer is never equal to a float that merely rounds to it;
//! - strings compare exactly, booleans by value, different kinds never equal;
//! - a metadata value of type `version` equals a string that parses as a
//!   semantic version of the same precedence (build metadata ignored). Since a
//!   probe value is untyped, a string probe is looked up both as a string and,
//!   if it parses, as a version (see [`probe_keys`]).
//!
//! `null`, lists and maps are not scalars: they get no key and no probe on
//! them can match (planners only build probes for scalars, see `Probe`).

use serde_json::{Number, Value};

use super::{MetaType, MetaValue};

/// A normalised scalar: equal keys ⇔ `$eq`-equal values.
///
/// Kept at 24 bytes (the version is boxed: rare, and 40 bytes inline) because
/// one key exists per distinct indexed value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScalarKey {
    Bool(bool),
    /// Any integral number within `i64`, whether written `3` or `3.0`.
    Int(i64),
    /// An integral number above `i64::MAX` (and within `u64`).
    UInt(u64),
    /// A non-integral (or out of integer range) float, by bit pattern. `-0.0`
    /// never lands here: it is integral, hence `Int(0)`.
    Float(u64),
    Str(Box<str>),
    /// A version's precedence: (major, minor, patch, pre-release), build
    /// metadata cleared. Pre-release identifiers cannot have leading zeros, so
    /// equal precedence is plain equality of these fields.
    Version(Box<semver::Version>),
}

/// 2^63 and 2^64 as floats (both exactly representable).
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

impl ScalarKey {
    /// The key of a JSON scalar (string, number, boolean); `None` otherwise.
    pub fn of_json(value: &Value) -> Option<ScalarKey> {
        match value {
            Value::Bool(b) => Some(ScalarKey::Bool(*b)),
            Value::Number(n) => Some(ScalarKey::of_number(n)),
            Value::String(s) => Some(ScalarKey::Str(s.as_str().into())),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    pub fn of_number(n: &Number) -> ScalarKey {
        if let Some(i) = n.as_i64() {
            ScalarKey::Int(i)
        } else if let Some(u) = n.as_u64() {
            ScalarKey::UInt(u)
        } else {
            // Without serde_json's arbitrary_precision every number is one of
            // the three; the fallback keeps this total anyway.
            ScalarKey::of_float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    pub fn of_float(f: f64) -> ScalarKey {
        // `fract` is NaN for infinities and NaN, so those stay floats.
        if f.fract() == 0.0 {
            if (-TWO_POW_63..TWO_POW_63).contains(&f) {
                return ScalarKey::Int(f as i64);
            }
            if (0.0..TWO_POW_64).contains(&f) {
                return ScalarKey::UInt(f as u64);
            }
        }
        ScalarKey::Float(f.to_bits())
    }

    pub fn of_version(v: &semver::Version) -> ScalarKey {
        let mut v = v.clone();
        v.build = semver::BuildMetadata::EMPTY;
        ScalarKey::Version(Box::new(v))
    }
}

/// What a stored top-level value contributes to the indexes.
#[derive(Debug, PartialEq)]
pub enum IndexKeys {
    /// Not indexable (`null`, or a `version` that is not a version).
    None,
    /// A scalar or a version: one equality key.
    Eq(ScalarKey),
    /// A list (its scalar elements) or a map (its keys): membership keys,
    /// sorted and without duplicates so a client is added to a bucket once.
    Member(Vec<ScalarKey>),
}

/// The index keys of a stored value. Only the `version` type changes how a
/// value compares; every other declared type compares by its JSON kind.
pub fn index_keys(mv: &MetaValue) -> IndexKeys {
    if mv.ty == MetaType::Version {
        let parsed;
        let version = match (&mv.version, &mv.value) {
            (Some(v), _) => &**v,
            // Hand-built values may lack the parsed form.
            (None, Value::String(s)) => match semver::Version::parse(s) {
                Ok(v) => {
                    parsed = v;
                    &parsed
                }
                Err(_) => return IndexKeys::None,
            },
            (None, _) => return IndexKeys::None,
        };
        return IndexKeys::Eq(ScalarKey::of_version(version));
    }
    match &mv.value {
        Value::Array(items) => {
            let mut keys: Vec<ScalarKey> = items.iter().filter_map(ScalarKey::of_json).collect();
            keys.sort_unstable();
            keys.dedup();
            IndexKeys::Member(keys)
        }
        Value::Object(map) => IndexKeys::Member(
            // BTreeMap keys are already sorted and unique.
            map.keys()
                .map(|k| ScalarKey::Str(k.as_str().into()))
                .collect(),
        ),
        other => ScalarKey::of_json(other).map_or(IndexKeys::None, IndexKeys::Eq),
    }
}

/// The equality keys a probe value can match: its own key, plus its version
/// key when it is a string that parses as a version (it then also equals
/// `version`-typed values of the same precedence). At most two keys, and
/// the two are always distinct.
pub fn probe_keys(value: &Value) -> impl Iterator<Item = ScalarKey> {
    let version = match value {
        Value::String(s) => semver::Version::parse(s)
            .ok()
            .map(|v| ScalarKey::of_version(&v)),
        _ => None,
    };
    ScalarKey::of_json(value).into_iter().chain(version)
}
