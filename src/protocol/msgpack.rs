//! MessagePack: binary frames, maps with string keys (rmp-serde).

use std::io::Cursor;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::packet::{DecodeError, InboundPacket, MAX_DEPTH, OutboundPacket};
use super::unencodable::{EncodeError, check_lengths};
use super::value_de::PacketFields;

pub(crate) fn decode(frame: &[u8]) -> Result<InboundPacket, DecodeError> {
    // The `Read`-based deserializer, unlike `from_slice`, reports how far it
    // got, which gives the error offset and the trailing-bytes check. It
    // copies strings through a buffer sized by bytes actually read, never by
    // a length prefix.
    let mut de = rmp_serde::Deserializer::new(Cursor::new(frame));
    // A second guard behind our own depth check. rmp-serde admits N - 1
    // nested containers for a limit of N and checks before our visitor sees
    // the container; one level of slack lets our check, with its clearer
    // message, fire first.
    de.set_max_depth(MAX_DEPTH + 2);
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

/// Fails for a value nested deeper than rmp-serde's limit (1024; decoding
/// admits 128) and for a frame past 4 GiB, whose lengths rmp would write
/// truncated (see `unencodable.rs`).
pub(crate) fn encode(op: u8, t: Option<&str>, d: &Value, ts: i64) -> Result<Bytes, EncodeError> {
    let packet = OutboundPacket { op, d, t, ts };
    // `to_vec_named` writes structs as maps keyed by field name.
    let frame = rmp_serde::to_vec_named(&packet).map_err(|e| match e {
        rmp_serde::encode::Error::DepthLimitExceeded => EncodeError::TooDeep,
        other => EncodeError::Serializer(other.to_string()),
    })?;
    check_lengths(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `{"op": 4, "t": "SEND", "d": <d>}` with `d` given as raw msgpack.
    fn frame_with_d(d: &[u8]) -> Vec<u8> {
        let mut f = vec![0x83, 0xa2, b'o', b'p', 0x04, 0xa1, b't', 0xa4];
        f.extend_from_slice(b"SEND");
        f.extend_from_slice(&[0xa1, b'd']);
        f.extend_from_slice(d);
        f
    }

    fn d_of(d: &[u8]) -> Result<Value, DecodeError> {
        decode(&frame_with_d(d)).map(|p| p.d)
    }

    fn reason(e: DecodeError) -> String {
        match e {
            DecodeError::Msgpack { reason, .. } => reason,
            other => panic!("not a msgpack error: {other:?}"),
        }
    }

    #[test]
    fn reads_a_packet_as_python_msgpack_writes_it() {
        // msgpack.packb({"op": 1, "d": {"client_id": "c", "n": -3, "f": 1.5}, "ts": 1})
        let mut f = vec![0x83, 0xa2, b'o', b'p', 0x01, 0xa1, b'd', 0x83];
        f.extend_from_slice(&[0xa9]);
        f.extend_from_slice(b"client_id");
        f.extend_from_slice(&[0xa1, b'c', 0xa1, b'n', 0xfd, 0xa1, b'f', 0xcb]);
        f.extend_from_slice(&1.5f64.to_be_bytes());
        f.extend_from_slice(&[0xa2, b't', b's', 0x01]);
        let p = decode(&f).unwrap();
        assert_eq!(p.op, 1);
        assert_eq!(p.d, json!({"client_id": "c", "n": -3, "f": 1.5}));
        assert_eq!(p.t, None);
    }

    #[test]
    fn scalar_forms() {
        assert_eq!(d_of(&[0xc0]).unwrap(), Value::Null);
        assert_eq!(d_of(&[0xc3]).unwrap(), json!(true));
        assert_eq!(d_of(&[0xcc, 0xff]).unwrap(), json!(255));
        assert_eq!(d_of(&[0xd0, 0x80]).unwrap(), json!(-128));
        let mut u = vec![0xcf];
        u.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(d_of(&u).unwrap(), json!(u64::MAX));
        let mut i = vec![0xd3];
        i.extend_from_slice(&i64::MIN.to_be_bytes());
        assert_eq!(d_of(&i).unwrap(), json!(i64::MIN));
        let mut f = vec![0xca];
        f.extend_from_slice(&0.5f32.to_be_bytes());
        assert_eq!(d_of(&f).unwrap(), json!(0.5));
    }

    #[test]
    fn bin_is_text_when_utf8_and_bytes_otherwise() {
        assert_eq!(d_of(&[0xc4, 2, b'h', b'i']).unwrap(), json!("hi"));
        assert_eq!(d_of(&[0xc4, 2, 0xff, 0x00]).unwrap(), json!([255, 0]));
        // A str with invalid UTF-8 is treated the same way.
        assert_eq!(d_of(&[0xa2, 0xc3, 0x28]).unwrap(), json!([0xc3, 0x28]));
    }

    #[test]
    fn map_keys_strings_integers_or_nothing() {
        // {1: "a", -2: "b", bin"k": "c"}
        let d = [
            0x83, 0x01, 0xa1, b'a', 0xfe, 0xa1, b'b', 0xc4, 1, b'k', 0xa1, b'c',
        ];
        assert_eq!(d_of(&d).unwrap(), json!({"1": "a", "-2": "b", "k": "c"}));
        for key in [&[0xc0][..], &[0xc2], &[0x90], &[0x80], &[0xc4, 1, 0xff]] {
            let mut d = vec![0x81];
            d.extend_from_slice(key);
            d.push(0x01);
            let e = d_of(&d).unwrap_err();
            assert!(reason(e.clone()).contains("map key"), "{key:?}: {e}");
        }
    }

    #[test]
    fn values_without_a_json_equivalent_are_rejected() {
        let mut nan = vec![0xcb];
        nan.extend_from_slice(&f64::NAN.to_be_bytes());
        assert!(reason(d_of(&nan).unwrap_err()).contains("non-finite float"));
        let mut inf = vec![0xca];
        inf.extend_from_slice(&f32::INFINITY.to_be_bytes());
        assert!(reason(d_of(&inf).unwrap_err()).contains("non-finite float"));
        let ext = [0xd4, 0x01, 0x00];
        assert!(reason(d_of(&ext).unwrap_err()).contains("ext"));
    }

    #[test]
    fn top_level_rules() {
        for not_map in [&[0x90][..], &[0x01], &[0xc0], &[0xa1, b'x'], &[0xd4, 1, 0]] {
            assert_eq!(decode(not_map), Err(DecodeError::NotAMap), "{not_map:?}");
        }
        assert_eq!(decode(&[0x80]), Err(DecodeError::MissingOp));
        // {"op": "1"}, {"op": 4, "t": 1}
        assert_eq!(
            decode(&[0x81, 0xa2, b'o', b'p', 0xa1, b'1']),
            Err(DecodeError::InvalidOp)
        );
        assert_eq!(
            decode(&[0x82, 0xa2, b'o', b'p', 0x04, 0xa1, b't', 0x01]),
            Err(DecodeError::InvalidT)
        );
        // Integer keys at the top level are skipped like unknown keys.
        let p = decode(&[0x82, 0x07, 0x08, 0xa2, b'o', b'p', 0x05]).unwrap();
        assert_eq!(p.op, 5);
    }

    #[test]
    fn malformed_frames() {
        let e = decode(&[]).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid msgpack at byte 0: "),
            "{e}"
        );
        let mut trailing = frame_with_d(&[0xc0]);
        trailing.push(0xc0);
        let e = decode(&trailing).unwrap_err();
        assert_eq!(
            e,
            DecodeError::Msgpack {
                offset: trailing.len() - 1,
                reason: "trailing bytes after packet".into()
            }
        );
        let full = frame_with_d(&[0x92, 0x01, 0x02]);
        for cut in 0..full.len() {
            assert!(
                matches!(decode(&full[..cut]), Err(DecodeError::Msgpack { .. })),
                "cut at {cut}"
            );
        }
        assert!(matches!(decode(&[0xc1]), Err(DecodeError::Msgpack { .. })));
    }

    #[test]
    fn lying_length_prefixes_fail_without_allocating_them() {
        for d in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],
            &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            assert!(d_of(d).is_err(), "{d:?}");
        }
        let mut top = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
        top.extend_from_slice(&[0xa2, b'o', b'p', 0x01]);
        assert!(matches!(decode(&top), Err(DecodeError::Msgpack { .. })));
    }

    #[test]
    fn output_is_a_map_with_four_string_keys() {
        let bytes = encode(6, None, &json!({"client_id": "c"}), 1_700_000_000_000).unwrap();
        assert_eq!(bytes[0], 0x84);
        let v: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"op": 6, "d": {"client_id": "c"}, "t": null, "ts": 1_700_000_000_000i64})
        );
    }
}
