//! Packet → ETF bytes, written straight from the borrowed `d`.

use bytes::Bytes;
use serde_json::Value;

use super::tag;
use crate::protocol::unencodable::{EncodeError, check_lengths};

/// Fails only for a frame past 4 GiB, where a length might not fit its 32
/// bits (see `unencodable.rs`).
pub(crate) fn encode(op: u8, t: Option<&str>, d: &Value, ts: i64) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.push(tag::VERSION);
    out.push(tag::MAP);
    out.extend_from_slice(&4u32.to_be_bytes());
    binary(&mut out, "op");
    integer(&mut out, i64::from(op));
    binary(&mut out, "d");
    value(&mut out, d);
    binary(&mut out, "t");
    match t {
        Some(t) => binary(&mut out, t),
        None => atom(&mut out, "nil"),
    }
    binary(&mut out, "ts");
    integer(&mut out, ts);
    check_lengths(out)
}

/// `{"op": 3, "d": {"error": error, "extra_info": nil}, "t": nil, "ts": ts}`:
/// the packet sent instead of one that could not be encoded. Its strings are
/// constants, so nothing in it can fail.
pub(crate) fn replacement(error: &'static str, ts: i64) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.push(tag::VERSION);
    out.push(tag::MAP);
    out.extend_from_slice(&4u32.to_be_bytes());
    binary(&mut out, "op");
    integer(&mut out, 3);
    binary(&mut out, "d");
    out.push(tag::MAP);
    out.extend_from_slice(&2u32.to_be_bytes());
    binary(&mut out, "error");
    binary(&mut out, error);
    binary(&mut out, "extra_info");
    atom(&mut out, "nil");
    binary(&mut out, "t");
    atom(&mut out, "nil");
    binary(&mut out, "ts");
    integer(&mut out, ts);
    Bytes::from(out)
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => atom(out, "nil"),
        Value::Bool(b) => atom(out, if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                integer(out, i);
            } else if let Some(u) = n.as_u64() {
                bignum(out, false, u);
            } else {
                // Neither integer kind: a float (`as_f64` is `Some` for
                // every number without serde_json's arbitrary precision,
                // which is off; NaN would never be written as nothing).
                out.push(tag::NEW_FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        Value::String(s) => binary(out, s),
        Value::Array(items) if items.is_empty() => out.push(tag::NIL),
        Value::Array(items) => {
            out.push(tag::LIST);
            length(out, items.len());
            for item in items {
                value(out, item);
            }
            out.push(tag::NIL);
        }
        Value::Object(map) => {
            out.push(tag::MAP);
            length(out, map.len());
            for (k, v) in map {
                binary(out, k);
                value(out, v);
            }
        }
    }
}

/// A 32-bit length prefix. A longer string or list saturates here, and the
/// frame holding it (over 4 GiB) is then refused by `encode`.
fn length(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn binary(out: &mut Vec<u8>, s: &str) {
    out.push(tag::BINARY);
    length(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// `SMALL_ATOM_UTF8_EXT`, what `term_to_binary` writes since OTP 26 and
/// what every OTP since 20 reads. Only used for nil/true/false.
fn atom(out: &mut Vec<u8>, name: &'static str) {
    out.push(tag::SMALL_ATOM_UTF8);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

/// The smallest form Erlang itself uses for the value, so
/// `binary_to_term` followed by `term_to_binary` gives back the same bytes.
fn integer(out: &mut Vec<u8>, v: i64) {
    if let Ok(small) = u8::try_from(v) {
        out.push(tag::SMALL_INTEGER);
        out.push(small);
    } else if let Ok(int) = i32::try_from(v) {
        out.push(tag::INTEGER);
        out.extend_from_slice(&int.to_be_bytes());
    } else {
        bignum(out, v < 0, v.unsigned_abs());
    }
}

fn bignum(out: &mut Vec<u8>, negative: bool, magnitude: u64) {
    let digits = magnitude.to_le_bytes();
    let n = (u64::BITS - magnitude.leading_zeros()).div_ceil(8) as usize;
    out.push(tag::SMALL_BIG);
    out.push(n as u8);
    out.push(u8::from(negative));
    out.extend_from_slice(digits.get(..n).unwrap_or(&digits));
}
