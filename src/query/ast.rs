//! The parsed form of a query: what both wire dialects turn into.
//!
//! Everything that can be decided without a client's metadata is decided
//! here, once per query: paths are split and unescaped, op names resolved,
//! `to.value` versions parsed. Evaluation then only walks and compares.

use std::borrow::Cow;

use semver::Version;
use serde_json::Value;

use super::compare::Side;
use super::path::Path;
use super::selector::Selector;

/// A routing query (contract §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Only clients of this application; `None`: every application.
    pub application: Option<String>,
    /// When false, restricted clients never match.
    pub restricted: bool,
    /// Rendezvous-hashing key for SEND; `None`: uniformly random choice.
    pub key: Option<String>,
    /// No match: drop silently instead of answering `no_route`.
    pub droppable: bool,
    /// No match: retry without `ops` and `selector`.
    pub optional: bool,
    /// All must hold (implicit AND); empty means no condition.
    pub ops: Vec<Op>,
    pub selector: Option<Selector>,
}

/// One node of the op tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Compare(Comparison),
    /// All hold; `And([])` is true.
    And(Vec<Op>),
    /// At least one holds; `Or([])` is false.
    Or(Vec<Op>),
    /// None holds: `!Or`.
    Nor(Vec<Op>),
}

/// A boolean op: the value at `path` against `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub path: Path,
    pub op: CmpOp,
    pub to: Operand,
    /// `to` carried `"type": "version"`: strings on both sides compare as
    /// semantic versions.
    pub as_version: bool,
}

/// The comparison ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Contains,
    Ncontains,
}

impl CmpOp {
    /// Every op with its wire name, the single table both directions use.
    const NAMES: [(CmpOp, &'static str); 10] = [
        (CmpOp::Eq, "$eq"),
        (CmpOp::Ne, "$ne"),
        (CmpOp::Gt, "$gt"),
        (CmpOp::Gte, "$gte"),
        (CmpOp::Lt, "$lt"),
        (CmpOp::Lte, "$lte"),
        (CmpOp::In, "$in"),
        (CmpOp::Nin, "$nin"),
        (CmpOp::Contains, "$contains"),
        (CmpOp::Ncontains, "$ncontains"),
    ];

    pub fn from_name(name: &str) -> Option<CmpOp> {
        CmpOp::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(op, _)| *op)
    }

    pub fn name(self) -> &'static str {
        CmpOp::NAMES
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("$?", |(_, n)| n)
    }

    /// `$in`/`$nin`: the given side must be a list.
    pub fn takes_list(self) -> bool {
        matches!(self, CmpOp::In | CmpOp::Nin)
    }
}

/// Builds a logical node from its children (`Op::And`, ...).
pub(crate) type BuildLogical = fn(Vec<Op>) -> Op;

/// A logical op by wire name: its canonical name (for messages) and the
/// node it builds.
pub(crate) fn logical(name: &str) -> Option<(&'static str, BuildLogical)> {
    match name {
        "$and" => Some(("$and", Op::And)),
        "$or" => Some(("$or", Op::Or)),
        "$nor" => Some(("$nor", Op::Nor)),
        _ => None,
    }
}

/// What a comparison compares against.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `{"value": V}`.
    Value(Literal),
    /// `{"path": P, "default": D}`: the same client's value at `P`, or `D`
    /// when `P` does not resolve (no `D`: the op is false).
    Path {
        path: Path,
        default: Option<Literal>,
    },
}

/// A value given in the query, with its version pre-parsed when the op
/// compares as versions and the value is a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    pub value: Value,
    pub version: Option<Version>,
}

impl Literal {
    pub fn new(value: Value, as_version: bool) -> Literal {
        let version = match &value {
            Value::String(s) if as_version => Version::parse(s).ok(),
            _ => None,
        };
        Literal { value, version }
    }

    /// This literal as a comparison side. A string that had to be a version
    /// but did not parse is a [`Side::BadVersion`].
    pub(crate) fn side(&self, as_version: bool) -> Side<'_> {
        match (&self.value, &self.version) {
            (_, Some(v)) => Side::Version(Cow::Borrowed(v)),
            (Value::String(_), None) if as_version => Side::BadVersion,
            (value, None) => Side::Json(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn op_names_round_trip() {
        for (op, name) in CmpOp::NAMES {
            assert_eq!(CmpOp::from_name(name), Some(op));
            assert_eq!(op.name(), name);
        }
        assert_eq!(CmpOp::from_name("$foo"), None);
        assert_eq!(CmpOp::from_name("eq"), None);
        let (name, build) = logical("$or").expect("$or");
        assert_eq!(name, "$or");
        assert_eq!(build(vec![]), Op::Or(vec![]));
        assert!(logical("$not").is_none());
    }

    #[test]
    fn literal_sides() {
        let v = Literal::new(json!("1.2.3"), true);
        assert!(matches!(v.side(true), Side::Version(_)));
        let bad = Literal::new(json!("x"), true);
        assert!(matches!(bad.side(true), Side::BadVersion));
        let plain = Literal::new(json!("1.2.3"), false);
        assert!(matches!(plain.side(false), Side::Json(_)));
        let num = Literal::new(json!(3), true);
        assert!(matches!(num.side(true), Side::Json(_)));
    }
}
