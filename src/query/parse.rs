//! Query JSON → [`Query`]: the top-level fields and the current op dialect.
//! The legacy dialect lives in `legacy.rs`.
//!
//! Field rules: every field is optional and `null` means absent; a present
//! field of the wrong JSON type is an error; unknown fields are ignored
//! (clients add their own).
//!
//! How an op object is read:
//! 1. exactly one entry whose value is an object → legacy
//!    `{"<key>": {"$op": V, ...}}` (a current-dialect op never has an
//!    object-valued `op` or `path`, so this cannot swallow one);
//! 2. has `op` → current dialect, logical (`$and`/`$or`/`$nor` with `with`)
//!    or a comparison (`path`, `to`);
//! 3. anything else is an error that says which shape was expected.
//!
//! Inside `to`: a non-null `path` selects the path form (a `value: null`
//! beside it is tolerated as serializer noise; any other `value` beside it
//! is an error), otherwise a present `value` (null included: `$eq null`
//! matches the reserved keys that are null) is the value form. A null
//! `default` is the same as none.

use serde_json::{Map, Value};

use super::ast::{CmpOp, Comparison, Literal, Op, Operand, Query, logical};
use super::error::QueryError;
use super::limits::{MAX_DEPTH, MAX_OPS};
use super::path::Path;
use super::selector::Selector;

impl Query {
    /// Parses a query; a malformed one gives an error naming the problem
    /// (and, inside the op tree, where it is).
    pub fn parse(v: &Value) -> Result<Query, QueryError> {
        let obj = v.as_object().ok_or(QueryError::NotObject)?;
        let ops = match field(obj, "ops") {
            None => Vec::new(),
            Some(Value::Array(ops)) => Parser::default().list(ops, &Loc::Root("ops"), 1)?,
            Some(_) => return Err(type_error("ops", "a list or null")),
        };
        Ok(Query {
            application: string_field(obj, "application")?,
            restricted: bool_field(obj, "restricted")?,
            key: string_field(obj, "key")?,
            droppable: bool_field(obj, "droppable")?,
            optional: bool_field(obj, "optional")?,
            ops,
            selector: Selector::parse(field(obj, "selector"))?,
        })
    }
}

/// A field's value, with `null` read as absent.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn type_error(field: &'static str, expected: &'static str) -> QueryError {
    QueryError::FieldType { field, expected }
}

fn string_field(
    obj: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, QueryError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_error(name, "a string or null")),
    }
}

fn bool_field(obj: &Map<String, Value>, name: &'static str) -> Result<bool, QueryError> {
    match field(obj, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(type_error(name, "a boolean")),
    }
}

/// Where in the op tree we are, as a chain of steps on the stack: rendered
/// (`ops[0].with[2]`) only when an error needs it, so a valid query costs
/// no allocation for it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Loc<'a> {
    Root(&'static str),
    /// `[i]` of the parent list.
    Index(&'a Loc<'a>, usize),
    /// `.name` of the parent.
    Field(&'a Loc<'a>, &'a str),
}

impl Loc<'_> {
    fn render(&self) -> String {
        match self {
            Loc::Root(name) => (*name).to_owned(),
            Loc::Index(parent, i) => format!("{}[{i}]", parent.render()),
            Loc::Field(parent, name) => format!("{}.{name}", parent.render()),
        }
    }
}

/// Parses op trees while counting ops against [`MAX_OPS`].
#[derive(Debug, Default)]
pub(super) struct Parser {
    ops: usize,
}

impl Parser {
    /// Parses `ops` (a list of ops at `depth`) located at `loc`.
    pub(super) fn list(
        &mut self,
        ops: &[Value],
        loc: &Loc<'_>,
        depth: usize,
    ) -> Result<Vec<Op>, QueryError> {
        ops.iter()
            .enumerate()
            .map(|(i, op)| self.op(op, &Loc::Index(loc, i), depth))
            .collect()
    }

    /// Counts one op node and checks the depth it sits at.
    pub(super) fn enter(&mut self, depth: usize) -> Result<(), QueryError> {
        if depth > MAX_DEPTH {
            return Err(QueryError::TooDeep);
        }
        self.ops += 1;
        if self.ops > MAX_OPS {
            return Err(QueryError::TooManyOps);
        }
        Ok(())
    }

    /// Parses one op, attaching `loc` to an error raised at this level.
    pub(super) fn op(&mut self, v: &Value, loc: &Loc<'_>, depth: usize) -> Result<Op, QueryError> {
        self.op_here(v, loc, depth).map_err(|e| at(loc, e))
    }

    fn op_here(&mut self, v: &Value, loc: &Loc<'_>, depth: usize) -> Result<Op, QueryError> {
        let obj = v.as_object().ok_or(QueryError::OpNotObject)?;
        let mut entries = obj.iter();
        if let (Some((key, Value::Object(ops))), None) = (entries.next(), entries.next()) {
            return self.legacy(key, ops, loc, depth);
        }
        let Some(name) = obj.get("op") else {
            return Err(shape_error(obj));
        };
        let name = name.as_str().ok_or(QueryError::OpName)?;
        if let Some((logical_name, build)) = logical(name) {
            self.enter(depth)?;
            let with = match obj.get("with") {
                None | Some(Value::Null) => {
                    return Err(QueryError::Missing {
                        field: "with",
                        op: logical_name,
                    });
                }
                Some(Value::Array(with)) => with,
                Some(_) => return Err(QueryError::WithNotList),
            };
            let with = self.list(with, &Loc::Field(loc, "with"), depth + 1)?;
            return Ok(build(with));
        }
        let op = CmpOp::from_name(name).ok_or_else(|| QueryError::UnknownOp(name.to_owned()))?;
        self.enter(depth)?;
        comparison(obj, op).map(Op::Compare)
    }
}

/// Wraps an error with its location, unless a deeper op already did.
pub(super) fn at(loc: &Loc<'_>, error: QueryError) -> QueryError {
    match error {
        QueryError::At { .. } => error,
        error => QueryError::At {
            at: loc.render(),
            error: Box::new(error),
        },
    }
}

/// The error for an op object that has no `op` and is not legacy.
fn shape_error(obj: &Map<String, Value>) -> QueryError {
    let mut entries = obj.iter();
    match (entries.next(), entries.next()) {
        (Some((key, _)), None) if !["path", "to", "with"].contains(&key.as_str()) => {
            match logical(key) {
                Some((op, _)) => QueryError::LogicalShape(op),
                None => QueryError::LegacyNotObject(key.clone()),
            }
        }
        _ => QueryError::OpShape,
    }
}

/// A current-dialect comparison: `{"path", "op", "to"}`.
fn comparison(obj: &Map<String, Value>, op: CmpOp) -> Result<Comparison, QueryError> {
    let missing = |field| QueryError::Missing {
        field,
        op: op.name(),
    };
    let path = match field(obj, "path") {
        None => return Err(missing("path")),
        Some(Value::String(p)) => Path::parse(p)?,
        Some(_) => return Err(op_type_error("path", "a string")),
    };
    let to = match field(obj, "to") {
        None => return Err(missing("to")),
        Some(Value::Object(to)) => to,
        Some(_) => return Err(op_type_error("to", "an object")),
    };
    let as_version = to.get("type").and_then(Value::as_str) == Some("version");
    let list_check = |field: &'static str, v: &Value| {
        if op.takes_list() && !v.is_array() {
            Err(QueryError::NotAList {
                field,
                op: op.name(),
            })
        } else {
            Ok(())
        }
    };
    let to = match (field(to, "path"), to.get("value")) {
        (Some(Value::String(other)), value) => {
            if value.is_some_and(|v| !v.is_null()) {
                return Err(QueryError::ToBoth);
            }
            let default = field(to, "default");
            if let Some(d) = default {
                list_check("to.default", d)?;
            }
            Operand::Path {
                path: Path::parse(other)?,
                default: default.map(|d| Literal::new(d.clone(), as_version)),
            }
        }
        (Some(_), _) => return Err(op_type_error("to.path", "a string")),
        (None, Some(value)) => {
            list_check("to.value", value)?;
            Operand::Value(Literal::new(value.clone(), as_version))
        }
        (None, None) => return Err(QueryError::ToEmpty),
    };
    Ok(Comparison {
        path,
        op,
        to,
        as_version,
    })
}

fn op_type_error(field: &'static str, expected: &'static str) -> QueryError {
    QueryError::OpFieldType { field, expected }
}
