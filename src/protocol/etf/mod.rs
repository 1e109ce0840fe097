//! Erlang External Term Format: binary frames, as written by
//! `:erlang.term_to_binary/1` (version byte 131, then one term).
//!
//! Both directions are written here by hand rather than through the `eetf`
//! crate, which the tests use as the reference implementation instead:
//! - decoding: `eetf` 0.11 panics on some input (`unimplemented!` for
//!   distribution headers and atom cache refs, an out-of-range shift in bit
//!   binaries), preallocates from untrusted 32-bit length prefixes, recurses
//!   without a depth limit and inflates compressed terms without a bound;
//!   none of that may be reachable from a socket;
//! - encoding: `eetf` needs an owned `Term` tree, i.e. a deep copy of `d`
//!   on the hot path, and stores maps in a `HashMap`.
//!
//! Mapping (decode → JSON):
//! - integers (small, 32-bit, bignums within i64/u64) → numbers; larger
//!   bignums are rejected;
//! - floats (new and old format) → numbers;
//! - atoms: `nil` → null, `true`/`false` → booleans, others → strings;
//! - binaries → strings when UTF-8, else lists of byte values;
//! - lists and tuples → arrays; `STRING_EXT` (a list of small integers the
//!   encoder packed) → an array of numbers, as it is a list in Erlang;
//! - maps → objects; keys may be binaries, atoms (read as their name, so
//!   `:nil` is "nil") or integers (written in decimal);
//! - improper lists, bit strings, pids, ports, references, funs and
//!   compressed terms are rejected.
//!
//! Encoding (JSON → term): objects → maps with binary keys, strings →
//! binaries, null → `nil`, booleans → atoms, integers → the smallest
//! integer form Erlang itself uses, floats → `NEW_FLOAT_EXT`, arrays → lists.

mod decode;
mod encode;

pub(crate) use decode::decode;
pub(crate) use encode::{encode, replacement};

/// Term tags, from the Erlang "External Term Format" documentation.
mod tag {
    pub const VERSION: u8 = 131;
    pub const DISTRIBUTION_HEADER: u8 = 68;
    pub const NEW_FLOAT: u8 = 70;
    pub const BIT_BINARY: u8 = 77;
    pub const COMPRESSED: u8 = 80;
    pub const ATOM_CACHE_REF: u8 = 82;
    pub const NEW_PID: u8 = 88;
    pub const NEW_PORT: u8 = 89;
    pub const NEWER_REFERENCE: u8 = 90;
    pub const SMALL_INTEGER: u8 = 97;
    pub const INTEGER: u8 = 98;
    pub const FLOAT: u8 = 99;
    pub const ATOM: u8 = 100;
    pub const REFERENCE: u8 = 101;
    pub const PORT: u8 = 102;
    pub const PID: u8 = 103;
    pub const SMALL_TUPLE: u8 = 104;
    pub const LARGE_TUPLE: u8 = 105;
    pub const NIL: u8 = 106;
    pub const STRING: u8 = 107;
    pub const LIST: u8 = 108;
    pub const BINARY: u8 = 109;
    pub const SMALL_BIG: u8 = 110;
    pub const LARGE_BIG: u8 = 111;
    pub const NEW_FUN: u8 = 112;
    pub const EXPORT: u8 = 113;
    pub const NEW_REFERENCE: u8 = 114;
    pub const SMALL_ATOM: u8 = 115;
    pub const MAP: u8 = 116;
    pub const FUN: u8 = 117;
    pub const ATOM_UTF8: u8 = 118;
    pub const SMALL_ATOM_UTF8: u8 = 119;
    pub const V4_PORT: u8 = 120;
    pub const LOCAL: u8 = 121;
}

#[cfg(test)]
mod tests;
