//! Wire packets and encodings (contract §1, §2): pure functions from frame
//! bytes to packets and back. No I/O and no clock; the caller passes `ts`.
//!
//! # Layout
//!
//! - [`Encoding`] (`encoding.rs`): json / msgpack / etf, and which frame kind
//!   each uses.
//! - [`op`]: the opcode numbers.
//! - `packet.rs`: [`InboundPacket`], [`DecodeError`] and the packet rules all
//!   encodings share (`op` 0..=255, `t` a string, nesting depth).
//! - `json.rs`, `msgpack.rs`, `etf/`: one decoder and one encoder per
//!   encoding; `value_de.rs` is the serde glue the first two share.
//! - [`payload`]: builders for the `d` of server packets.
//! - [`errors`]: the exact wire text of every error, in one place.
//!
//! All three encodings decode into `serde_json::Value`, so the rest of the
//! server sees one value type. Numbers keep their kind across encodings:
//! i64, u64 and finite f64 survive any decode/encode pair exactly.

mod encoding;
pub mod errors;
mod etf;
mod json;
mod msgpack;
pub mod op;
mod packet;
pub mod payload;
mod value_de;

#[cfg(test)]
mod tests;

pub use encoding::Encoding;
pub use packet::{DecodeError, InboundPacket, MAX_DEPTH, check_frame_type};

use bytes::Bytes;
use serde_json::Value;

/// Decodes one frame received on a connection using `enc`.
///
/// Never panics; any input that is not a packet is a [`DecodeError`]. The
/// caller checks the frame kind first (see [`check_frame_type`]) and the
/// frame size limit.
pub fn decode(enc: Encoding, frame: &[u8]) -> Result<InboundPacket, DecodeError> {
    match enc {
        Encoding::Json => json::decode(frame),
        Encoding::Msgpack => msgpack::decode(frame),
        Encoding::Etf => etf::decode(frame),
    }
}

/// Encodes a full server packet `{"op", "d", "t", "ts"}`. All four keys are
/// always present; `t` is null unless given. `d` is serialized by
/// reference: one payload can be encoded for many connections without
/// copying it.
pub fn encode(enc: Encoding, op: u8, t: Option<&str>, d: &Value, ts: i64) -> Bytes {
    match enc {
        Encoding::Json => json::encode(op, t, d, ts),
        Encoding::Msgpack => msgpack::encode(op, t, d, ts),
        Encoding::Etf => etf::encode(op, t, d, ts),
    }
}
