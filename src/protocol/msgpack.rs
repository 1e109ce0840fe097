//! MessagePack: binary frames, maps with string keys (rmp-serde).

use std::io::Cursor;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::packet::{DecodeError, InboundPacket, MAX_DEPTH, OutboundPacket};
use super::value_de::PacketFields;

pub(crate) fn decode(frame: &[u8]) -> Result<InboundPacket, DecodeError> {
    // The `Read`-based deserializer, unlike `from_slice`, reports how far it
    // got, which gives the error offset and the trailing-bytes check. It
    // copies strings through a buffer sized by bytes actually read, never by
    // a length prefix.
    let mut de = rmp_serde::Deserializer::new(Cursor::new(frame));
    // rmp-serde counts so that a limit of N admits N - 1 nested containers.
    de.set_max_depth(MAX_DEPTH + 1);
    let result = PacketFields::deserialize(&mut de);
    let offset = usize::try_from(de.position()).unwrap_or(usize::MAX);
    let PacketFields(fields) = result.map_err(|e| DecodeError::Msgpack {
        offset,
        reason: e.to_string(),
    })?;
    if offset != frame.len() {
        return Err(DecodeError::Msgpack {
            offset,
            reason: "trailing bytes after packet".to_owned(),
        });
    }
    fields.ok_or(DecodeError::NotAMap)?.into_packet()
}

pub(crate) fn encode(op: u8, t: Option<&str>, d: &Value, ts: i64) -> Bytes {
    let packet = OutboundPacket { op, d, t, ts };
    // `to_vec_named` writes structs as maps keyed by field name. Writing a
    // `serde_json::Value` into a `Vec` cannot fail (every length is known
    // and the depth is bounded by what decoding admitted); the fallback only
    // keeps this free of panics.
    rmp_serde::to_vec_named(&packet)
        .map(Bytes::from)
        .unwrap_or_default()
}
