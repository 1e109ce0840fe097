//! Evaluating a parsed query against one client's metadata.
//!
//! The rule that shapes everything here: an op whose inputs are missing is
//! false, whatever its polarity. `$ne`, `$nin` and `$ncontains` are *not* the
//! negations of `$eq`, `$in` and `$contains` when the path does not resolve
//! (contract §5), so each op is evaluated on its own rather than as `!other`.
//! "Missing" means: the path does not resolve, a `to.path` does not resolve
//! and has no default, `$in`/`$nin` meet a given side that is not a list, or
//! `$contains`/`$ncontains` meet a metadata value that is neither list nor
//! map.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{CmpOp, Comparison, Op, Operand, Query};
use super::compare::{Side, relate};
use super::path::Resolved;
use crate::metadata::Metadata;

impl Query {
    /// Do all ops hold for this metadata? `application` and `restricted`
    /// are not checked here: the store filters on those before it asks.
    pub fn matches(&self, md: &Metadata) -> bool {
        self.ops.iter().all(|op| op.matches(md))
    }
}

impl Op {
    pub fn matches(&self, md: &Metadata) -> bool {
        match self {
            Op::Compare(c) => c.matches(md),
            Op::And(ops) => ops.iter().all(|op| op.matches(md)),
            Op::Or(ops) => ops.iter().any(|op| op.matches(md)),
            Op::Nor(ops) => !ops.iter().any(|op| op.matches(md)),
        }
    }
}

impl Comparison {
    pub fn matches(&self, md: &Metadata) -> bool {
        let Some(found) = self.path.resolve(md) else {
            return false;
        };
        let Some((given_raw, given)) = self.given(md) else {
            return false;
        };
        let mine = side(found, self.as_version);
        match self.op {
            CmpOp::Eq => relate(&mine, &given).is_equal(),
            CmpOp::Ne => !relate(&mine, &given).is_equal(),
            CmpOp::Gt => ordered(&mine, &given, Ordering::is_gt),
            CmpOp::Gte => ordered(&mine, &given, Ordering::is_ge),
            CmpOp::Lt => ordered(&mine, &given, Ordering::is_lt),
            CmpOp::Lte => ordered(&mine, &given, Ordering::is_le),
            CmpOp::In => self.is_in(&mine, given_raw).unwrap_or(false),
            CmpOp::Nin => self.is_in(&mine, given_raw).is_some_and(|found| !found),
            CmpOp::Contains => self
                .contains(found.value, given_raw, &given)
                .unwrap_or(false),
            CmpOp::Ncontains => self
                .contains(found.value, given_raw, &given)
                .is_some_and(|found| !found),
        }
    }

    /// The given side: its raw JSON (for list and map-key checks) and its
    /// comparison side. `None` when a `to.path` is missing with no default.
    fn given<'a>(&'a self, md: &'a Metadata) -> Option<(&'a Value, Side<'a>)> {
        match &self.to {
            Operand::Value(lit) => Some((&lit.value, lit.side(self.as_version))),
            Operand::Path { path, default } => match path.resolve(md) {
                Some(found) => Some((found.value, side(found, self.as_version))),
                None => default
                    .as_ref()
                    .map(|lit| (&lit.value, lit.side(self.as_version))),
            },
        }
    }

    /// Is `mine` an element of the given list? `None`: it is not a list.
    fn is_in(&self, mine: &Side<'_>, list: &Value) -> Option<bool> {
        let Value::Array(list) = list else {
            return None;
        };
        Some(
            list.iter()
                .any(|item| relate(mine, &Side::new(item, self.as_version)).is_equal()),
        )
    }

    /// Is the given value an element of my list, or (a string) a key of my
    /// map? `None`: I am neither list nor map. A non-string is never a key.
    fn contains(&self, mine: &Value, given_raw: &Value, given: &Side<'_>) -> Option<bool> {
        match mine {
            Value::Array(list) => Some(
                list.iter()
                    .any(|item| relate(&Side::new(item, self.as_version), given).is_equal()),
            ),
            Value::Object(map) => Some(given_raw.as_str().is_some_and(|k| map.contains_key(k))),
            _ => None,
        }
    }
}

/// An ordering op: false for kinds without an order.
fn ordered(mine: &Side<'_>, given: &Side<'_>, test: fn(Ordering) -> bool) -> bool {
    relate(mine, given).ordering().is_some_and(test)
}

/// A resolved metadata value as a comparison side: a version when it is a
/// `version`-typed key (pre-parsed by the store) or the op compares as
/// versions and it is a string.
fn side(found: Resolved<'_>, as_version: bool) -> Side<'_> {
    match found.version {
        Some(v) => Side::Version(Cow::Borrowed(v)),
        None => Side::new(found.value, as_version || found.version_typed),
    }
}
