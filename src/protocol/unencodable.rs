//! Packets that cannot be encoded.
//!
//! What can fail, per encoding, for a `serde_json::Value`:
//! - JSON: nothing known. Keys are strings and numbers finite by
//!   construction of `Value`, and the output is a `Vec`; sonic-rs's
//!   `Result` is handled anyway, not assumed away.
//! - MessagePack: lengths past the format's 32 bits, which rmp writes
//!   truncated, a corrupt frame. (rmp-serde also has a depth limit, which a
//!   `Value` does not trip: measured with 1100 levels; decoding admits 128.)
//! - ETF: lengths past 32 bits, which would be written saturated.
//!
//! A length past 32 bits needs more than 4 GiB of output (every byte of a
//! string, and at least one byte per element of a list or map, is in it), so
//! checking the size of the whole frame catches every such length without a
//! second walk over the value.
//!
//! Whatever the cause, the recipient gets a well-formed invalid (op 3)
//! instead of the packet, never an empty or corrupt frame; the failure is
//! logged and counted (`singyeong_encode_errors_total`). The replacement is
//! assembled from constants here, so it cannot fail in turn.

use bytes::Bytes;

use super::Encoding;
use super::errors::ENCODE_FAILED;

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} bytes: past the 4 GiB the format's 32-bit lengths can describe")]
    TooLong(usize),
    #[error("nested deeper than the encoder's limit")]
    TooDeep,
    #[error("{0}")]
    Serializer(String),
}

/// Refuses a frame whose size means some length in it may not fit 32 bits.
pub(crate) fn check_lengths(frame: Vec<u8>) -> Result<Bytes, EncodeError> {
    // Not reachable with the default frame limit (1 MiB): it takes a
    // `--max-frame-size` past 4 GiB.
    check_size(frame.len())?;
    Ok(Bytes::from(frame))
}

fn check_size(len: usize) -> Result<(), EncodeError> {
    match u32::try_from(len) {
        Ok(_) => Ok(()),
        Err(_) => Err(EncodeError::TooLong(len)),
    }
}

/// The invalid packet that replaces one that could not be encoded:
/// `{"op": 3, "d": {"error": ENCODE_FAILED, "extra_info": null}, "t": null,
/// "ts": ts}`, in `enc`.
pub(crate) fn replacement(enc: Encoding, ts: i64) -> Bytes {
    match enc {
        Encoding::Json => Bytes::from(format!(
            r#"{{"op":3,"d":{{"error":"{ENCODE_FAILED}","extra_info":null}},"t":null,"ts":{ts}}}"#
        )),
        Encoding::Msgpack => msgpack_replacement(ts),
        Encoding::Etf => super::etf::replacement(ENCODE_FAILED, ts),
    }
}

/// The replacement in MessagePack, written marker by marker.
fn msgpack_replacement(ts: i64) -> Bytes {
    fn str(out: &mut Vec<u8>, s: &'static str) {
        // Every string here is a constant shorter than 256 bytes: fixstr
        // (< 32) or str8.
        let len = s.len() as u8;
        if len < 32 {
            out.push(0xa0 | len);
        } else {
            out.extend_from_slice(&[0xd9, len]);
        }
        out.extend_from_slice(s.as_bytes());
    }
    const NIL: u8 = 0xc0;
    let mut out = Vec::with_capacity(96);
    out.push(0x84); // map of 4
    str(&mut out, "op");
    out.push(0x03); // positive fixint
    str(&mut out, "d");
    out.push(0x82); // map of 2
    str(&mut out, "error");
    str(&mut out, ENCODE_FAILED);
    str(&mut out, "extra_info");
    out.push(NIL);
    str(&mut out, "t");
    out.push(NIL);
    str(&mut out, "ts");
    out.push(0xd3); // int 64
    out.extend_from_slice(&ts.to_be_bytes());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode, finish, op, try_encode};
    use serde_json::json;

    #[test]
    fn the_replacement_is_an_invalid_packet_in_every_encoding() {
        for enc in [Encoding::Json, Encoding::Msgpack, Encoding::Etf] {
            let frame = replacement(enc, 1_796_000_000_123);
            let packet = decode(enc, &frame).unwrap_or_else(|e| panic!("{enc:?}: {e}"));
            assert_eq!(packet.op, op::INVALID, "{enc:?}");
            assert_eq!(
                packet.d,
                json!({"error": ENCODE_FAILED, "extra_info": null}),
                "{enc:?}"
            );
            assert_eq!(packet.t, None, "{enc:?}");
        }
    }

    #[test]
    fn a_packet_that_cannot_be_encoded_reaches_the_recipient_as_an_invalid_packet() {
        // No value small enough for a test fails to encode (a length past
        // 32 bits needs a frame over 4 GiB), so the failure is given.
        for enc in [Encoding::Json, Encoding::Msgpack, Encoding::Etf] {
            let before = crate::metrics::encode_errors();
            let frame = finish(
                enc,
                op::DISPATCH,
                Some("SEND"),
                7,
                Err(EncodeError::TooLong(5 << 30)),
            );
            assert!(crate::metrics::encode_errors() > before, "{enc:?}: counted");
            let packet = decode(enc, &frame).unwrap();
            assert_eq!(packet.op, op::INVALID, "{enc:?}");
            assert_eq!(packet.d["error"], json!(ENCODE_FAILED), "{enc:?}");
            // A packet that encodes is passed through untouched.
            let ok = try_encode(enc, op::DISPATCH, Some("SEND"), &json!({"a": 1}), 7);
            assert_eq!(
                finish(enc, op::DISPATCH, Some("SEND"), 7, ok.clone()),
                ok.unwrap()
            );
        }
    }

    #[test]
    fn deep_values_encode_in_every_encoding() {
        // Far deeper than decoding admits (128): rmp-serde's depth limit
        // does not apply to a `Value`, and nothing else limits depth.
        let mut d = json!(0);
        for _ in 0..600 {
            d = json!([d]);
        }
        for enc in [Encoding::Json, Encoding::Msgpack, Encoding::Etf] {
            assert!(
                try_encode(enc, op::DISPATCH, None, &d, 1).is_ok(),
                "{enc:?}"
            );
        }
    }

    #[test]
    fn a_frame_past_32_bit_lengths_is_refused() {
        assert_eq!(check_size(u32::MAX as usize), Ok(()));
        assert_eq!(
            check_size(u32::MAX as usize + 1),
            Err(EncodeError::TooLong(u32::MAX as usize + 1))
        );
    }
}
