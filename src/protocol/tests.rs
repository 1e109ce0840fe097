//! Properties every encoding shares: round trips, exact numbers, the
//! packet shape on the wire, depth limits, and no panics on any input.

use proptest::prelude::*;
use serde_json::{Number, Value, json};

use super::{DecodeError, Encoding, InboundPacket, MAX_DEPTH, decode, encode};

/// Compares two values, numbers by kind and by bits. The one exception:
/// sonic-rs reads `-0.0` as `0.0` (see `json.rs`), so for JSON the sign
/// of a zero may be lost.
fn assert_exact(enc: Encoding, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let kind = |n: &Number| (n.is_u64(), n.is_i64(), n.is_f64());
            assert_eq!(kind(g), kind(w), "{enc}: {g} vs {w}");
            if let (Some(gf), Some(wf)) = (g.as_f64(), w.as_f64())
                && w.is_f64()
            {
                let zero_sign_lost = enc == Encoding::Json && gf == 0.0 && wf == 0.0;
                assert!(
                    gf.to_bits() == wf.to_bits() || zero_sign_lost,
                    "{enc}: {gf:e} vs {wf:e}"
                );
            } else {
                assert_eq!(g, w, "{enc}");
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{enc}");
            for (g, w) in g.iter().zip(w) {
                assert_exact(enc, g, w);
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            assert!(g.keys().eq(w.keys()), "{enc}: {g:?} vs {w:?}");
            for (g, w) in g.values().zip(w.values()) {
                assert_exact(enc, g, w);
            }
        }
        _ => assert_eq!(got, want, "{enc}"),
    }
}

fn round_trip(enc: Encoding, op: u8, t: Option<&str>, d: &Value, ts: i64) {
    let frame = encode(enc, op, t, d, ts);
    let packet = decode(enc, &frame).unwrap_or_else(|e| panic!("{enc}: {e} for {d}"));
    assert_eq!(packet.op, op, "{enc}");
    assert_eq!(packet.t.as_deref(), t, "{enc}");
    assert_exact(enc, &packet.d, d);
}

fn shapes() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(255),
        json!(256),
        json!(-1),
        json!(i32::MIN),
        json!(i32::MAX),
        json!(i64::from(i32::MAX) + 1),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1u64 << 63),
        json!(0.0),
        json!(-0.0),
        json!(0.1),
        json!(-1.5),
        json!(1e300),
        json!(f64::MAX),
        json!(f64::MIN_POSITIVE),
        json!(5e-324),
        json!(2.225073858507201e-308),
        json!(9007199254740993.0),
        json!(""),
        json!("신경 héllo 😀"),
        json!("quote \" backslash \\ newline \n nul \u{0} del \u{7f}"),
        json!([]),
        json!({}),
        json!([null, [[], [[1]]], {"a": {"b": [1.5, "x"]}}]),
        json!({"metadata": {"latency": {"type": "integer", "value": 5}}, "": [], "1": 1}),
    ]
}

#[test]
fn every_shape_round_trips_in_every_encoding() {
    for enc in Encoding::ALL {
        for d in shapes() {
            round_trip(enc, 4, Some("SEND"), &d, 1_700_000_000_000);
            round_trip(enc, 0, None, &d, i64::MIN);
        }
    }
}

/// JSON → msgpack → ETF → JSON, keeping every number exact.
#[test]
fn conversions_between_encodings_keep_values() {
    let d = Value::Array(shapes());
    let mut current = d.clone();
    // JSON last: it may drop the sign of a zero (see `assert_exact`).
    for enc in [Encoding::Msgpack, Encoding::Etf, Encoding::Json] {
        current = decode(enc, &encode(enc, 4, Some("X"), &current, 0))
            .unwrap()
            .d;
        assert_exact(enc, &current, &d);
    }
}

/// Reads any encoding's output back as a generic value, with a reference
/// decoder that is not ours.
fn reference_decode(enc: Encoding, frame: &[u8]) -> Value {
    match enc {
        Encoding::Json => serde_json::from_slice(frame).unwrap(),
        Encoding::Msgpack => rmp_serde::from_slice(frame).unwrap(),
        Encoding::Etf => {
            let eetf::Term::Map(map) = eetf::Term::decode(frame).unwrap() else {
                panic!("not a map")
            };
            let key = |k: &str| eetf::Term::from(eetf::Binary::from(k.as_bytes()));
            let as_json = |t: &eetf::Term| match t {
                eetf::Term::FixInteger(i) => json!(i.value),
                eetf::Term::BigInteger(i) => json!(i.value.to_string().parse::<i64>().unwrap()),
                eetf::Term::Atom(a) if a.name == "nil" => Value::Null,
                eetf::Term::Binary(b) => json!(String::from_utf8(b.bytes.clone()).unwrap()),
                _ => json!("<term>"),
            };
            assert_eq!(map.map.len(), 4);
            json!({
                "op": as_json(&map.map[&key("op")]),
                "d": "<term>",
                "t": as_json(&map.map[&key("t")]),
                "ts": as_json(&map.map[&key("ts")]),
            })
        }
    }
}

#[test]
fn every_server_packet_has_all_four_keys() {
    for enc in Encoding::ALL {
        for (op, t) in [(0, None), (3, None), (4, Some("QUEUE")), (8, None)] {
            let frame = encode(enc, op, t, &json!({"x": 1}), 1_700_000_000_123);
            let v = reference_decode(enc, &frame);
            let map = v.as_object().unwrap();
            assert_eq!(map.len(), 4, "{enc}: {v}");
            assert_eq!(map["op"], json!(op), "{enc}");
            assert_eq!(map["t"], t.map_or(Value::Null, Value::from), "{enc}");
            assert_eq!(map["ts"], json!(1_700_000_000_123i64), "{enc}");
            if enc != Encoding::Etf {
                assert_eq!(map["d"], json!({"x": 1}), "{enc}");
            }
        }
    }
}

/// Runs `f` on a thread with room for [`MAX_DEPTH`] levels in a debug
/// build: unoptimized sonic-rs takes about 25 KiB of stack per level (an
/// optimized build under 1 KiB), more than the 2 MiB test threads have.
fn with_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
}

#[test]
fn nesting_is_limited_to_max_depth_counting_the_packet() {
    with_big_stack(|| {
        for enc in Encoding::ALL {
            // The packet map is one level; `d` may add MAX_DEPTH - 1 more.
            let ok = nested(MAX_DEPTH - 1);
            assert_eq!(decode(enc, &encode(enc, 1, None, &ok, 0)).unwrap().d, ok);
            let e = decode(enc, &encode(enc, 1, None, &nested(MAX_DEPTH), 0)).unwrap_err();
            assert!(
                e.to_string().contains("nesting deeper than 128 levels"),
                "{enc}: {e}"
            );
            let deep_map = (0..MAX_DEPTH).fold(Value::Null, |inner, _| json!({"k": inner}));
            let e = decode(enc, &encode(enc, 1, None, &deep_map, 0)).unwrap_err();
            assert!(e.to_string().contains("nesting deeper"), "{enc}: {e}");
        }
    });
}

/// Frames nested far deeper than the limit fail fast instead of
/// overflowing the stack, in `d` and in keys that are otherwise skipped
/// (sonic-rs skips ignored values recursively with no depth limit, so the
/// JSON decoder must never hand it one).
#[test]
fn nesting_bombs_are_rejected() {
    with_big_stack(|| {
        let n = 200_000;
        for key in ["d", "ts", "zz"] {
            let json = format!(r#"{{"op":1,"{key}":{}0{}}}"#, "[".repeat(n), "]".repeat(n));
            let mut msgpack = vec![0x82, 0xa2, b'o', b'p', 0x01, 0xa0 | key.len() as u8];
            msgpack.extend_from_slice(key.as_bytes());
            msgpack.extend(std::iter::repeat_n(0x91, n));
            msgpack.push(0xc0);
            let mut etf = vec![
                131,
                116,
                0,
                0,
                0,
                2,
                119,
                2,
                b'o',
                b'p',
                97,
                1,
                119,
                key.len() as u8,
            ];
            etf.extend_from_slice(key.as_bytes());
            for _ in 0..n {
                etf.extend_from_slice(&[108, 0, 0, 0, 1]);
            }
            for (enc, frame) in [
                (Encoding::Json, json.into_bytes()),
                (Encoding::Msgpack, msgpack),
                (Encoding::Etf, etf),
            ] {
                let e = decode(enc, &frame).unwrap_err();
                assert!(
                    e.to_string().contains("nesting deeper") || e.to_string().contains("depth"),
                    "{enc} {key}: {e}"
                );
            }
        }
        // The same for a top level that is not a map.
        let json = format!("{}0{}", "[".repeat(n), "]".repeat(n));
        assert!(decode(Encoding::Json, json.as_bytes()).is_err());
    });
}

#[test]
fn the_same_packet_decodes_alike_in_every_encoding() {
    let json = br#"{"op":1,"d":{"client_id":"c","application_id":"a"},"ts":0}"#;
    let msgpack =
        rmp_serde::to_vec_named(&json!({"op": 1, "d": {"client_id": "c", "application_id": "a"}}))
            .unwrap();
    let want = InboundPacket {
        op: 1,
        d: json!({"client_id": "c", "application_id": "a"}),
        t: None,
    };
    assert_eq!(decode(Encoding::Json, json).unwrap(), want);
    assert_eq!(decode(Encoding::Msgpack, &msgpack).unwrap(), want);
    let etf = encode(Encoding::Etf, 1, None, &want.d, 0);
    assert_eq!(decode(Encoding::Etf, &etf).unwrap(), want);
}

#[test]
fn a_json_frame_is_no_packet_in_the_binary_encodings() {
    let frame = br#"{"op":1}"#;
    assert!(matches!(
        decode(Encoding::Msgpack, frame),
        Err(DecodeError::NotAMap | DecodeError::Msgpack { .. })
    ));
    assert!(matches!(
        decode(Encoding::Etf, frame),
        Err(DecodeError::Etf { .. })
    ));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_encoding() -> impl Strategy<Value = Encoding> {
    prop::sample::select(Encoding::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_values_round_trip(
        enc in arb_encoding(),
        op in any::<u8>(),
        t in proptest::option::of(any::<String>()),
        d in arb_json(),
        ts in any::<i64>(),
    ) {
        round_trip(enc, op, t.as_deref(), &d, ts);
    }

    /// sonic-rs reads whatever serde_json writes as the same value.
    #[test]
    fn sonic_reads_serde_json_output(d in arb_json()) {
        let text = serde_json::to_vec(&json!({"op": 1, "d": d})).unwrap();
        let packet = decode(Encoding::Json, &text).unwrap();
        assert_exact(Encoding::Json, &packet.d, &d);
    }

    #[test]
    fn arbitrary_bytes_never_panic(enc in arb_encoding(), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(enc, &bytes);
    }

    /// Random bytes rarely get past the first tag; corrupting valid frames
    /// reaches the deeper paths of each decoder.
    #[test]
    fn corrupted_frames_never_panic(
        enc in arb_encoding(),
        d in arb_json(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = encode(enc, 4, Some("SEND"), &d, 0).to_vec();
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        let _ = decode(enc, &frame);
        let _ = decode(enc, &frame[..cut.index(frame.len() + 1)]);
    }
}
/// Other JSON parsers (clients') read our output as the same values.
#[test]
fn serde_json_reads_our_json_output() {
    for d in shapes() {
        let frame = encode(Encoding::Json, 4, Some("T"), &d, 1);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["d"], d, "{}", String::from_utf8_lossy(&frame));
    }
}
