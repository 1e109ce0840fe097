//! Choosing the index lookup a query allows.
//!
//! A probe must return *exactly* the clients for which its op holds (see
//! [`Probe`]); the store's indexes reproduce `$eq` on scalars, including a
//! string against a `version`-typed key (see
//! [`ScalarKey`](crate::metadata::ScalarKey)). So these ops are planned:
//! - the path is `/key` (the indexes cover top-level keys only), and not
//!   `last_heartbeat_time` (changes every heartbeat; the store does not
//!   index it);
//! - the op compares against a literal (`to.value`), not another path;
//! - `to` is not typed `version`: that reads *untyped* strings as versions
//!   too (`"1.0.0+a"` then equals `"1.0.0"`, and `"abc"` equals nothing),
//!   which the indexes, keyed by how values are stored, cannot see;
//! - `$eq` with a scalar, `$in` with a non-empty list of scalars, or
//!   `$contains` with a scalar. Scalars are strings, numbers and booleans,
//!   not null.
//!
//! The op is taken from the top-level list or from inside an `$and` there
//! (all of whose children must hold too), preferring `$eq` (one key) over
//! `$contains` over `$in` (several keys), then the first in query order.

use serde_json::Value;

use super::ast::{CmpOp, Comparison, Op, Operand, Query};
use crate::metadata::{IndexPlan, Probe};

/// The metadata key the store never indexes.
const UNINDEXED_KEY: &str = "last_heartbeat_time";

impl Query {
    /// The index plan for the ops, `None` if no op is indexable. `exact`
    /// when that op is the whole query: the only op, and no selector.
    pub fn index_plan(&self) -> Option<IndexPlan> {
        let mut best: Option<(u8, Probe)> = None;
        visit_conjuncts(&self.ops, &mut |c| {
            if let Some((rank, probe)) = candidate(c)
                && best.as_ref().is_none_or(|(best_rank, _)| rank < *best_rank)
            {
                best = Some((rank, probe));
            }
        });
        let (_, probe) = best?;
        let exact = self.selector.is_none() && matches!(self.ops.as_slice(), [Op::Compare(_)]);
        Some(IndexPlan { probe, exact })
    }
}

/// Calls `f` on every comparison that must hold for the whole list to hold:
/// the list's own, and those of `$and`s in it, recursively.
fn visit_conjuncts<'a>(ops: &'a [Op], f: &mut impl FnMut(&'a Comparison)) {
    for op in ops {
        match op {
            Op::Compare(c) => f(c),
            Op::And(inner) => visit_conjuncts(inner, f),
            Op::Or(_) | Op::Nor(_) => {}
        }
    }
}

/// The probe for one comparison, with its rank (lower is preferred).
fn candidate(c: &Comparison) -> Option<(u8, Probe)> {
    let key = c.path.key();
    if !c.path.is_top_level() || key == UNINDEXED_KEY || c.as_version {
        return None;
    }
    let Operand::Value(lit) = &c.to else {
        return None;
    };
    let key = key.to_owned();
    match c.op {
        CmpOp::Eq if is_scalar(&lit.value) => Some((
            0,
            Probe::Eq {
                key,
                value: lit.value.clone(),
            },
        )),
        CmpOp::Contains if is_scalar(&lit.value) => Some((
            1,
            Probe::Contains {
                key,
                value: lit.value.clone(),
            },
        )),
        CmpOp::In => match &lit.value {
            Value::Array(values) if !values.is_empty() && values.iter().all(is_scalar) => Some((
                2,
                Probe::In {
                    key,
                    values: values.clone(),
                },
            )),
            _ => None,
        },
        _ => None,
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}
