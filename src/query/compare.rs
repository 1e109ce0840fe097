//! How two values relate: the one place that defines equality and order for
//! every comparison op, `$in` and `$contains`. (The store's
//! [`ScalarKey`](crate::metadata::ScalarKey) must agree with `$eq` here; a
//! property test in `tests/props.rs` checks that it does.)
//!
//! Kinds (contract §5):
//! - numbers: integers and floats compare numerically and exactly (no
//!   rounding through `f64` when an integer meets an integer, and an exact
//!   integer-vs-float comparison otherwise), so `1 == 1.0` and
//!   `9007199254740993 > 9007199254740992.0`;
//! - strings: by code point (Rust's byte order on UTF-8 is code point order);
//! - versions: by semantic-version precedence (major, minor, patch,
//!   pre-release; build metadata ignored, as semver §10 says);
//! - booleans, null, lists, maps: equality only; lists and maps compare
//!   deeply, with numbers inside compared numerically and strings exactly.
//!
//! Different kinds are incomparable: ordering ops are false, `$eq` false,
//! `$ne` true. A version meeting a string parses the string as a version;
//! if it does not parse, the two are different kinds.

use std::borrow::Cow;
use std::cmp::Ordering;

use semver::Version;
use serde_json::{Number, Value};

/// One side of a comparison, after deciding whether it is a version.
#[derive(Debug, Clone)]
pub(crate) enum Side<'a> {
    Json(&'a Value),
    Version(Cow<'a, Version>),
    /// A string that had to be read as a version but does not parse. It is
    /// equal to nothing and ordered with nothing.
    BadVersion,
}

impl<'a> Side<'a> {
    /// Reads `value` as a version when `as_version` is set and it is a
    /// string; any other value stays plain JSON.
    pub(crate) fn new(value: &'a Value, as_version: bool) -> Side<'a> {
        match value {
            Value::String(s) if as_version => match Version::parse(s) {
                Ok(v) => Side::Version(Cow::Owned(v)),
                Err(_) => Side::BadVersion,
            },
            _ => Side::Json(value),
        }
    }
}

/// How two sides relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relation {
    /// Same orderable kind: numbers, strings, versions.
    Ordered(Ordering),
    /// Same kind with equality only: booleans, null, lists, maps.
    Unordered { equal: bool },
    /// Different kinds, or an unparsable version.
    Incomparable,
}

impl Relation {
    pub(crate) fn is_equal(self) -> bool {
        matches!(
            self,
            Relation::Ordered(Ordering::Equal) | Relation::Unordered { equal: true }
        )
    }

    /// The order, when the kinds have one.
    pub(crate) fn ordering(self) -> Option<Ordering> {
        match self {
            Relation::Ordered(o) => Some(o),
            _ => None,
        }
    }
}

/// Relates `a` (the metadata side) to `b` (the given side).
pub(crate) fn relate(a: &Side<'_>, b: &Side<'_>) -> Relation {
    match (a, b) {
        (Side::BadVersion, _) | (_, Side::BadVersion) => Relation::Incomparable,
        (Side::Version(x), Side::Version(y)) => Relation::Ordered(x.cmp_precedence(y)),
        (Side::Version(x), Side::Json(Value::String(s))) => match Version::parse(s) {
            Ok(y) => Relation::Ordered(x.cmp_precedence(&y)),
            Err(_) => Relation::Incomparable,
        },
        (Side::Json(Value::String(s)), Side::Version(y)) => match Version::parse(s) {
            Ok(x) => Relation::Ordered(x.cmp_precedence(y)),
            Err(_) => Relation::Incomparable,
        },
        (Side::Version(_), Side::Json(_)) | (Side::Json(_), Side::Version(_)) => {
            Relation::Incomparable
        }
        (Side::Json(x), Side::Json(y)) => relate_json(x, y),
    }
}

/// Relates two plain JSON values.
pub(crate) fn relate_json(a: &Value, b: &Value) -> Relation {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Relation::Ordered(cmp_numbers(x, y)),
        (Value::String(x), Value::String(y)) => Relation::Ordered(x.as_str().cmp(y.as_str())),
        (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null)
        | (Value::Array(_), Value::Array(_))
        | (Value::Object(_), Value::Object(_)) => Relation::Unordered {
            equal: json_eq(a, b),
        },
        _ => Relation::Incomparable,
    }
}

/// Deep equality with numbers compared numerically (`[1] == [1.0]`).
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| json_eq(xv, yv)))
        }
        _ => a == b,
    }
}

/// A JSON number as either an exact integer or a float.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i.into())
    } else if let Some(u) = n.as_u64() {
        Num::Int(u.into())
    } else {
        // Without serde_json's arbitrary_precision every other number is an
        // f64; with it, an unrepresentable one becomes NaN, handled below.
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Numeric order of two JSON numbers, exact across integers and floats.
pub(crate) fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or_else(|| x.total_cmp(&y)),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

/// 2^127 as an f64: every float at or beyond it is outside `i128`.
const I128_LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

/// Compares an integer with a float without rounding the integer: the
/// float's integral part is exact in `i128` (JSON integers fit in 65 bits),
/// and only on a tie does its fraction decide.
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        // Unreachable for parsed JSON; any fixed answer keeps the order total.
        return Ordering::Less;
    }
    if f >= I128_LIMIT {
        return Ordering::Less;
    }
    if f < -I128_LIMIT {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    // In range and integral, so the cast is exact.
    match i.cmp(&(whole as i128)) {
        Ordering::Equal => whole.partial_cmp(&f).unwrap_or(Ordering::Equal),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rel(a: Value, b: Value) -> Relation {
        relate_json(&a, &b)
    }

    fn n(v: Value) -> Number {
        match v {
            Value::Number(n) => n,
            _ => panic!("not a number"),
        }
    }

    #[test]
    fn numbers_compare_exactly_across_kinds() {
        assert_eq!(
            rel(json!(1), json!(1.0)),
            Relation::Ordered(Ordering::Equal)
        );
        assert_eq!(
            rel(json!(2), json!(1.5)),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(json!(-2), json!(-1.5)),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            rel(json!(-1), json!(-1.5)),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(json!(u64::MAX), json!(i64::MIN)),
            Relation::Ordered(Ordering::Greater)
        );
        // 2^53 + 1 is not an f64; a float round trip would call these equal.
        let big = json!(9_007_199_254_740_993_u64);
        assert_eq!(
            rel(big.clone(), json!(9_007_199_254_740_992.0)),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(json!(9_007_199_254_740_992.0), big),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            rel(json!(u64::MAX), json!(1e300)),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            rel(json!(i64::MIN), json!(-1e300)),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(json!(0), json!(-0.0)),
            Relation::Ordered(Ordering::Equal)
        );
        assert_eq!(
            rel(json!(0.5), json!(0.25)),
            Relation::Ordered(Ordering::Greater)
        );
    }

    #[test]
    fn int_float_boundaries() {
        assert_eq!(cmp_int_float(0, f64::NAN), Ordering::Less);
        assert_eq!(cmp_int_float(i128::MAX, I128_LIMIT), Ordering::Less);
        assert_eq!(cmp_int_float(i128::MIN, -I128_LIMIT), Ordering::Equal);
        assert_eq!(cmp_int_float(3, 3.0), Ordering::Equal);
        assert_eq!(cmp_int_float(3, 3.5), Ordering::Less);
        assert_eq!(cmp_int_float(-3, -3.5), Ordering::Greater);
    }

    #[test]
    fn strings_by_code_point() {
        assert_eq!(
            rel(json!("a"), json!("b")),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            rel(json!("Z"), json!("a")),
            Relation::Ordered(Ordering::Less)
        );
        // U+FF5E (3 bytes) sorts after U+00E9 (2 bytes), as code points do.
        assert_eq!(
            rel(json!("～"), json!("é")),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(json!("10"), json!("9")),
            Relation::Ordered(Ordering::Less)
        );
    }

    #[test]
    fn equality_only_kinds() {
        assert_eq!(
            rel(json!(true), json!(true)),
            Relation::Unordered { equal: true }
        );
        assert_eq!(
            rel(json!(true), json!(false)),
            Relation::Unordered { equal: false }
        );
        assert_eq!(
            rel(json!(null), json!(null)),
            Relation::Unordered { equal: true }
        );
        assert_eq!(
            rel(json!([1, {"a": 2}]), json!([1.0, {"a": 2.0}])),
            Relation::Unordered { equal: true }
        );
        assert_eq!(
            rel(json!([1, 2]), json!([2, 1])),
            Relation::Unordered { equal: false }
        );
        assert_eq!(
            rel(json!({"a": 1}), json!({"a": 1, "b": 2})),
            Relation::Unordered { equal: false }
        );
        assert_eq!(
            rel(json!({"a": 1}), json!({"b": 1})),
            Relation::Unordered { equal: false }
        );
        assert_eq!(
            rel(json!({"a": "x"}), json!({"a": "x"})),
            Relation::Unordered { equal: true }
        );
    }

    #[test]
    fn different_kinds_are_incomparable() {
        for (a, b) in [
            (json!(1), json!("1")),
            (json!(true), json!(1)),
            (json!(null), json!(false)),
            (json!([1]), json!(1)),
            (json!({}), json!([])),
        ] {
            assert_eq!(
                rel(a.clone(), b.clone()),
                Relation::Incomparable,
                "{a} vs {b}"
            );
            assert!(!rel(a, b).is_equal());
        }
    }

    #[test]
    fn versions_by_precedence() {
        let v = |s: &str| Side::Version(Cow::Owned(Version::parse(s).unwrap()));
        let s = json!("1.10.0");
        assert_eq!(
            relate(&v("2.0.0"), &Side::Json(&s)),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            relate(&Side::Json(&s), &v("2.0.0")),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            relate(&v("1.0.0-alpha"), &v("1.0.0")),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            relate(&v("1.0.0-alpha.2"), &v("1.0.0-alpha.10")),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            relate(&v("1.0.0-alpha"), &v("1.0.0-beta")),
            Relation::Ordered(Ordering::Less)
        );
        assert_eq!(
            relate(&v("1.0.0+a"), &v("1.0.0+b")),
            Relation::Ordered(Ordering::Equal)
        );
        let bad = json!("not.a.version");
        assert_eq!(
            relate(&v("1.0.0"), &Side::Json(&bad)),
            Relation::Incomparable
        );
        let num = json!(1);
        assert_eq!(
            relate(&v("1.0.0"), &Side::Json(&num)),
            Relation::Incomparable
        );
        assert_eq!(
            relate(&Side::BadVersion, &Side::BadVersion),
            Relation::Incomparable
        );
        assert!(matches!(Side::new(&bad, true), Side::BadVersion));
        assert!(matches!(Side::new(&num, true), Side::Json(_)));
        assert!(matches!(Side::new(&s, false), Side::Json(_)));
    }

    #[test]
    fn numbers_helper() {
        assert_eq!(cmp_numbers(&n(json!(5)), &n(json!(5.0))), Ordering::Equal);
    }
}
