//! What a packet is (contract §2), and what makes an inbound one valid.
//!
//! The three decoders only turn bytes into the raw `op`/`d`/`t` fields;
//! the checks on those fields live here once, so every encoding rejects the
//! same packets with the same message.

use serde::Serialize;
use serde_json::Value;

use super::encoding::Encoding;

/// How many maps and lists may nest in one packet, counting the packet map
/// itself. Deeper input is rejected rather than parsed: every later step
/// (metadata validation, query evaluation, dropping the value) recurses over
/// it, and a client must not be able to exhaust the stack of a shard.
pub const MAX_DEPTH: usize = 128;

/// A packet as received from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundPacket {
    /// The opcode; any value 0..=255 decodes, known or not (see [`super::op`]).
    pub op: u8,
    /// The payload; `Null` when absent.
    pub d: Value,
    /// The event name of a dispatch; `None` when absent or null.
    pub t: Option<String>,
}

/// Why a frame is not a packet. The `Display` text is meant for
/// `extra_info` of a [`super::errors::CANNOT_DECODE`] reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not well-formed JSON, or a JSON value this server does not accept.
    #[error("invalid json at byte {offset}: {reason}")]
    Json { offset: usize, reason: String },
    /// Not well-formed MessagePack, or a value with no JSON equivalent.
    #[error("invalid msgpack at byte {offset}: {reason}")]
    Msgpack { offset: usize, reason: String },
    /// Not well-formed ETF, or a term with no JSON equivalent.
    #[error("invalid etf at byte {offset}: {reason}")]
    Etf { offset: usize, reason: String },
    /// A text frame on a binary connection or the reverse (contract §1).
    #[error("{encoding} connections take {expected} frames")]
    WrongFrameType {
        encoding: Encoding,
        expected: &'static str,
    },
    /// Well-formed, but the top-level value is not a map.
    #[error("packet must be a map")]
    NotAMap,
    /// The packet map has no `op` key.
    #[error("missing op")]
    MissingOp,
    /// `op` is not an integer in 0..=255.
    #[error("op must be an integer 0..255")]
    InvalidOp,
    /// `t` is present, not null, and not a string.
    #[error("t must be a string")]
    InvalidT,
}

/// Checks that a frame's kind matches the connection's encoding; JSON
/// travels in text frames, the others in binary frames.
pub fn check_frame_type(encoding: Encoding, binary: bool) -> Result<(), DecodeError> {
    if binary == encoding.is_binary() {
        Ok(())
    } else {
        Err(DecodeError::WrongFrameType {
            encoding,
            expected: if encoding.is_binary() {
                "binary"
            } else {
                "text"
            },
        })
    }
}

/// The three keys of an inbound packet map as found, before validation.
/// `None` means the key was absent; a present null is `Some(Value::Null)`.
#[derive(Debug, Default)]
pub(crate) struct RawFields {
    pub op: Option<Value>,
    pub d: Option<Value>,
    pub t: Option<Value>,
}

impl RawFields {
    /// Applies the packet rules shared by every encoding: `op` an integer
    /// 0..=255, `d` absent or null meaning `Null`, `t` absent or null meaning
    /// none and otherwise a string. `ts` and unknown keys were already dropped.
    pub fn into_packet(self) -> Result<InboundPacket, DecodeError> {
        let op = match self.op {
            None => return Err(DecodeError::MissingOp),
            Some(v) => v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(DecodeError::InvalidOp)?,
        };
        let t = match self.t {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(DecodeError::InvalidT),
        };
        Ok(InboundPacket {
            op,
            d: self.d.unwrap_or(Value::Null),
            t,
        })
    }
}

/// A server packet, borrowing its payload so encoding never clones `d`.
/// Field order is the wire order; `t` serializes as null when `None`.
#[derive(Serialize)]
pub(crate) struct OutboundPacket<'a> {
    pub op: u8,
    pub d: &'a Value,
    pub t: Option<&'a str>,
    pub ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(op: Option<Value>, d: Option<Value>, t: Option<Value>) -> RawFields {
        RawFields { op, d, t }
    }

    #[test]
    fn absent_or_null_d_and_t_become_null_and_none() {
        let p = raw(Some(json!(5)), None, None).into_packet().unwrap();
        assert_eq!((p.op, p.d, p.t), (5, Value::Null, None));
        let p = raw(Some(json!(4)), Some(Value::Null), Some(Value::Null))
            .into_packet()
            .unwrap();
        assert_eq!((p.d, p.t), (Value::Null, None));
    }

    #[test]
    fn op_must_be_a_byte_sized_integer() {
        for ok in [0u64, 8, 9, 255] {
            let p = raw(Some(json!(ok)), None, None).into_packet().unwrap();
            assert_eq!(u64::from(p.op), ok);
        }
        for bad in [
            json!(256),
            json!(-1),
            json!(1.0),
            json!("1"),
            json!(null),
            json!(true),
            json!([1]),
            json!(u64::MAX),
        ] {
            let err = raw(Some(bad.clone()), None, None)
                .into_packet()
                .unwrap_err();
            assert_eq!(err, DecodeError::InvalidOp, "{bad}");
            assert_eq!(err.to_string(), "op must be an integer 0..255");
        }
        let err = raw(None, Some(json!({})), None).into_packet().unwrap_err();
        assert_eq!(err, DecodeError::MissingOp);
        assert_eq!(err.to_string(), "missing op");
    }

    #[test]
    fn t_must_be_a_string_when_present() {
        let p = raw(Some(json!(4)), None, Some(json!("SEND")))
            .into_packet()
            .unwrap();
        assert_eq!(p.t.as_deref(), Some("SEND"));
        for bad in [
            json!(1),
            json!(false),
            json!(["SEND"]),
            json!({"t": "SEND"}),
        ] {
            let err = raw(Some(json!(4)), None, Some(bad))
                .into_packet()
                .unwrap_err();
            assert_eq!(err, DecodeError::InvalidT);
            assert_eq!(err.to_string(), "t must be a string");
        }
    }

    #[test]
    fn frame_type_must_match_the_encoding() {
        assert_eq!(check_frame_type(Encoding::Json, false), Ok(()));
        assert_eq!(check_frame_type(Encoding::Etf, true), Ok(()));
        assert_eq!(
            check_frame_type(Encoding::Json, true)
                .unwrap_err()
                .to_string(),
            "json connections take text frames"
        );
        assert_eq!(
            check_frame_type(Encoding::Msgpack, false)
                .unwrap_err()
                .to_string(),
            "msgpack connections take binary frames"
        );
    }

    #[test]
    fn other_error_texts() {
        assert_eq!(DecodeError::NotAMap.to_string(), "packet must be a map");
        let e = DecodeError::Json {
            offset: 12,
            reason: "EOF while parsing".into(),
        };
        assert_eq!(e.to_string(), "invalid json at byte 12: EOF while parsing");
    }
}
