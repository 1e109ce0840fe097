//! The legacy op dialect of older clients (`shinkei`, the first singyeong
//! releases): `{"<key>": {"$op": V}}`, meaning
//! `{"path": "/<key>", "op": "$op", "to": {"value": V}}`.
//!
//! As in the original server:
//! - `<key>` is a top-level metadata key taken literally (no path syntax, so
//!   a `/` or `~` in it is part of the key);
//! - several `$op`s in one object must all hold: `{"n": {"$gte": 1, "$lt": 5}}`
//!   is `1 <= n < 5`;
//! - logical ops apply to the same key, their list holding further `$op`
//!   objects: `{"n": {"$or": [{"$eq": 1}, {"$gt": 10}]}}` is
//!   `n == 1 || n > 10`; they nest.
//!
//! Legacy values carry no type, so they never compare as versions, except
//! against a key declared `version`, which compares by version anyway.

use serde_json::{Map, Value};

use super::ast::{CmpOp, Comparison, Literal, Op, Operand, logical};
use super::error::QueryError;
use super::parse::{Loc, Parser, at};
use super::path::Path;

impl Parser {
    /// Parses the `$op`s object `ops` for `key` (the op object sits at
    /// `loc`, at `depth`).
    pub(super) fn legacy(
        &mut self,
        key: &str,
        ops: &Map<String, Value>,
        loc: &Loc<'_>,
        depth: usize,
    ) -> Result<Op, QueryError> {
        if key.is_empty() {
            // The same rule as the path `/`: no metadata key is empty.
            return Err(QueryError::PathNoKey("/".to_owned()));
        }
        if ops.is_empty() {
            return Err(QueryError::LegacyEmpty(key.to_owned()));
        }
        let mut all = Vec::with_capacity(ops.len());
        for (name, value) in ops {
            if let Some((logical_name, build)) = logical(name) {
                self.enter(depth)?;
                let Value::Array(items) = value else {
                    return Err(QueryError::LegacyWithNotList {
                        key: key.to_owned(),
                        op: logical_name,
                    });
                };
                let here = Loc::Field(loc, name);
                let mut with = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_loc = Loc::Index(&here, i);
                    let op = match item {
                        Value::Object(item) => self.legacy(key, item, &item_loc, depth + 1),
                        _ => Err(QueryError::LegacyNotObject(key.to_owned())),
                    };
                    with.push(op.map_err(|e| at(&item_loc, e))?);
                }
                all.push(build(with));
            } else if let Some(op) = CmpOp::from_name(name) {
                self.enter(depth)?;
                if op.takes_list() && !value.is_array() {
                    return Err(QueryError::NotAList {
                        field: "value",
                        op: op.name(),
                    });
                }
                all.push(Op::Compare(Comparison {
                    path: Path::top_level(key),
                    op,
                    to: Operand::Value(Literal::new(value.clone(), false)),
                    as_version: false,
                }));
            } else {
                return Err(QueryError::UnknownOp(name.clone()));
            }
        }
        // One op stays itself, so `{"k": {"$eq": V}}` plans as exactly as
        // its current-dialect twin.
        Ok(if all.len() == 1 {
            all.swap_remove(0)
        } else {
            Op::And(all)
        })
    }
}
