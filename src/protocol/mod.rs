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
mod unencodable;
mod value_de;

#[cfg(test)]
mod tests;

pub use encoding::Encoding;
pub use packet::{DecodeError, InboundPacket, MAX_DEPTH, check_frame_type};
pub use unencodable::EncodeError;

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
///
/// A packet that cannot be encoded (see `unencodable.rs` for what can
/// fail) is logged, counted in `singyeong_encode_errors_total`, and
/// replaced by an invalid (op 3) packet saying so: the recipient never
/// gets an empty or corrupt frame.
pub fn encode(enc: Encoding, op: u8, t: Option<&str>, d: &Value, ts: i64) -> Bytes {
    finish(enc, op, t, ts, try_encode(enc, op, t, d, ts))
}

/// The frame to send for an encoding attempt: the packet, or the invalid
/// packet that replaces it.
fn finish(
    enc: Encoding,
    op: u8,
    t: Option<&str>,
    ts: i64,
    encoded: Result<Bytes, EncodeError>,
) -> Bytes {
    encoded.unwrap_or_else(|error| {
        tracing::error!(encoding = enc.name(), op, t, %error,
            "a packet could not be encoded; the recipient gets an invalid packet instead");
        crate::metrics::encode_error();
        unencodable::replacement(enc, ts)
    })
}

/// [`encode`] without the replacement.
pub fn try_encode(
    enc: Encoding,
    op: u8,
    t: Option<&str>,
    d: &Value,
    ts: i64,
) -> Result<Bytes, EncodeError> {
    match enc {
        Encoding::Json => json::encode(op, t, d, ts),
        Encoding::Msgpack => msgpack::encode(op, t, d, ts),
        Encoding::Etf => etf::encode(op, t, d, ts),
    }
}

/// Encodes a JSON body (HTTP API responses, proxied request bodies). No
/// `Value` is known to make serde_json fail; a failure is logged and
/// counted like a packet's, and the caller says what the asker gets.
pub fn json_body(v: &Value) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(v).map_err(|e| {
        let error = EncodeError::Serializer(e.to_string());
        tracing::error!(%error, "a JSON body could not be encoded");
        crate::metrics::encode_error();
        error
    })
}
