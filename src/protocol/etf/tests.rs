//! ETF against hand-built bytes of what `term_to_binary` writes, and
//! against the `eetf` crate as a reference codec.

use eetf::{Atom, BigInteger, Binary, FixInteger, Float, List, Map, Term, Tuple};
use serde_json::{Value, json};

use super::{decode, encode};
use crate::protocol::packet::{DecodeError, InboundPacket};

const V: u8 = 131;

fn atom_small_utf8(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&[119, name.len() as u8]);
    out.extend_from_slice(name.as_bytes());
}

fn atom_latin1(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(&[100, 0, name.len() as u8]);
    out.extend_from_slice(name);
}

fn binary(out: &mut Vec<u8>, s: &[u8]) {
    out.push(109);
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// `%{op: 4, t: "SEND", d: <d>}` with `d` given as raw term bytes.
fn frame_with_d(d: &[u8]) -> Vec<u8> {
    let mut f = vec![V, 116, 0, 0, 0, 3];
    atom_small_utf8(&mut f, "d");
    f.extend_from_slice(d);
    atom_small_utf8(&mut f, "op");
    f.extend_from_slice(&[97, 4]);
    atom_small_utf8(&mut f, "t");
    binary(&mut f, b"SEND");
    f
}

fn d_of(d: &[u8]) -> Result<Value, DecodeError> {
    decode(&frame_with_d(d)).map(|p| p.d)
}

fn reason_of(d: &[u8]) -> String {
    match d_of(d) {
        Err(DecodeError::Etf { reason, .. }) => reason,
        other => panic!("not an etf error: {other:?}"),
    }
}

/// Elixir (OTP 26+): `:erlang.term_to_binary(%{op: 1, d: %{client_id:
/// "abc", application_id: "app", metadata: %{}}, t: nil})`. Small maps are
/// written with keys in term order; atoms as SMALL_ATOM_UTF8_EXT.
#[test]
fn elixir_map_with_atom_keys_and_binary_values() {
    let mut f = vec![V, 116, 0, 0, 0, 3];
    atom_small_utf8(&mut f, "d");
    f.extend_from_slice(&[116, 0, 0, 0, 3]);
    atom_small_utf8(&mut f, "application_id");
    binary(&mut f, b"app");
    atom_small_utf8(&mut f, "client_id");
    binary(&mut f, b"abc");
    atom_small_utf8(&mut f, "metadata");
    f.extend_from_slice(&[116, 0, 0, 0, 0]);
    atom_small_utf8(&mut f, "op");
    f.extend_from_slice(&[97, 1]);
    atom_small_utf8(&mut f, "t");
    atom_small_utf8(&mut f, "nil");
    assert_eq!(
        decode(&f).unwrap(),
        InboundPacket {
            op: 1,
            d: json!({"application_id": "app", "client_id": "abc", "metadata": {}}),
            t: None,
        }
    );
}

/// Before OTP 26 atoms were written as ATOM_EXT (Latin-1, 16-bit length).
#[test]
fn pre_otp26_atoms() {
    let mut f = vec![V, 116, 0, 0, 0, 2];
    atom_latin1(&mut f, b"op");
    f.extend_from_slice(&[97, 5]);
    atom_latin1(&mut f, b"d");
    f.extend_from_slice(&[116, 0, 0, 0, 1]);
    atom_latin1(&mut f, b"client_id");
    binary(&mut f, "신경".as_bytes());
    let p = decode(&f).unwrap();
    assert_eq!((p.op, p.d), (5, json!({"client_id": "신경"})));
}

#[test]
fn atoms() {
    let mut nil = vec![];
    atom_small_utf8(&mut nil, "nil");
    assert_eq!(d_of(&nil).unwrap(), Value::Null);
    let mut t = vec![];
    atom_latin1(&mut t, b"true");
    assert_eq!(d_of(&t).unwrap(), json!(true));
    let mut f = vec![];
    atom_small_utf8(&mut f, "false");
    assert_eq!(d_of(&f).unwrap(), json!(false));
    let mut other = vec![];
    atom_small_utf8(&mut other, "ok");
    assert_eq!(d_of(&other).unwrap(), json!("ok"));
    // Latin-1 'é' in ATOM_EXT and SMALL_ATOM_EXT; UTF-8 in ATOM_UTF8_EXT.
    assert_eq!(d_of(&[100, 0, 1, 0xe9]).unwrap(), json!("é"));
    assert_eq!(d_of(&[115, 1, 0xe9]).unwrap(), json!("é"));
    assert_eq!(d_of(&[118, 0, 2, 0xc3, 0xa9]).unwrap(), json!("é"));
    assert_eq!(reason_of(&[119, 1, 0xe9]), "atom is not valid utf-8");
}

#[test]
fn integers() {
    assert_eq!(d_of(&[97, 255]).unwrap(), json!(255));
    assert_eq!(d_of(&[98, 0xff, 0xff, 0xff, 0xff]).unwrap(), json!(-1));
    assert_eq!(d_of(&[98, 0x80, 0, 0, 0]).unwrap(), json!(i32::MIN));
    // 2^31 and -(2^31 + 1) as term_to_binary writes them.
    assert_eq!(
        d_of(&[110, 4, 0, 0, 0, 0, 0x80]).unwrap(),
        json!(1u64 << 31)
    );
    assert_eq!(
        d_of(&[110, 4, 1, 1, 0, 0, 0x80]).unwrap(),
        json!(-(1i64 << 31) - 1)
    );
    let max = [110, 8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(d_of(&max).unwrap(), json!(u64::MAX));
    let min = [110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0x80];
    assert_eq!(d_of(&min).unwrap(), json!(i64::MIN));
    // LARGE_BIG_EXT with high zero padding is still in range.
    let padded = [111, 0, 0, 0, 10, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(d_of(&padded).unwrap(), json!(7));
    assert_eq!(d_of(&[110, 0, 1]).unwrap(), json!(0));

    let too_big = [110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(reason_of(&too_big), "integer does not fit in 64 bits");
    let too_small = [110, 8, 1, 1, 0, 0, 0, 0, 0, 0, 0x80];
    assert_eq!(reason_of(&too_small), "integer does not fit in 64 bits");
    assert_eq!(reason_of(&[110, 1, 2, 1]), "invalid bignum sign byte 2");
}

#[test]
fn floats() {
    let mut f = vec![70];
    f.extend_from_slice(&0.1f64.to_be_bytes());
    assert_eq!(d_of(&f).unwrap(), json!(0.1));
    // FLOAT_EXT: "%.20e" in 31 bytes, NUL padded.
    let mut old = vec![99];
    let text = b"1.50000000000000000000e+00";
    old.extend_from_slice(text);
    old.extend(std::iter::repeat_n(0, 31 - text.len()));
    assert_eq!(d_of(&old).unwrap(), json!(1.5));
    let mut bad = vec![99];
    bad.extend_from_slice(&[b'x'; 31]);
    assert_eq!(reason_of(&bad), "invalid float text");
    let mut nan = vec![70];
    nan.extend_from_slice(&f64::NAN.to_be_bytes());
    assert_eq!(reason_of(&nan), "non-finite float");
}

#[test]
fn binaries_lists_tuples_and_charlists() {
    let mut b = vec![];
    binary(&mut b, "héllo".as_bytes());
    assert_eq!(d_of(&b).unwrap(), json!("héllo"));
    let mut raw = vec![];
    binary(&mut raw, &[0xff, 0]);
    assert_eq!(d_of(&raw).unwrap(), json!([255, 0]));
    assert_eq!(d_of(&[106]).unwrap(), json!([]));
    // 'ab' is a list in Erlang, sent compactly as STRING_EXT.
    assert_eq!(d_of(&[107, 0, 2, b'a', b'b']).unwrap(), json!([97, 98]));
    // [1, [2]]
    let list = [108, 0, 0, 0, 2, 97, 1, 108, 0, 0, 0, 1, 97, 2, 106, 106];
    assert_eq!(d_of(&list).unwrap(), json!([1, [2]]));
    // {:ok, 1} and an empty LARGE_TUPLE_EXT
    let mut tuple = vec![104, 2];
    atom_small_utf8(&mut tuple, "ok");
    tuple.extend_from_slice(&[97, 1]);
    assert_eq!(d_of(&tuple).unwrap(), json!(["ok", 1]));
    assert_eq!(d_of(&[105, 0, 0, 0, 0]).unwrap(), json!([]));
    // [1 | 2]
    assert_eq!(
        reason_of(&[108, 0, 0, 0, 1, 97, 1, 97, 2]),
        "improper lists are not supported"
    );
}

#[test]
fn map_keys() {
    // %{1 => "a", :nil => 2, "k" => 3, -5 => 4}: atom keys stay strings.
    let mut m = vec![116, 0, 0, 0, 4, 97, 1];
    binary(&mut m, b"a");
    atom_small_utf8(&mut m, "nil");
    m.extend_from_slice(&[97, 2]);
    binary(&mut m, b"k");
    m.extend_from_slice(&[97, 3]);
    m.extend_from_slice(&[98, 0xff, 0xff, 0xff, 0xfb, 97, 4]);
    assert_eq!(
        d_of(&m).unwrap(),
        json!({"1": "a", "nil": 2, "k": 3, "-5": 4})
    );
    // Tuple, list and float keys have no JSON form.
    for key in [&[104, 0][..], &[106], &[70, 0, 0, 0, 0, 0, 0, 0, 0]] {
        let mut m = vec![116, 0, 0, 0, 1];
        m.extend_from_slice(key);
        m.extend_from_slice(&[97, 1]);
        assert_eq!(
            reason_of(&m),
            "map keys must be binaries, atoms or integers"
        );
    }
    let mut m = vec![116, 0, 0, 0, 1];
    binary(&mut m, &[0xff]);
    m.extend_from_slice(&[97, 1]);
    assert_eq!(reason_of(&m), "map key is not valid utf-8");
}

#[test]
fn unsupported_terms() {
    let cases: [(&[u8], &str); 6] = [
        (&[77, 0, 0, 0, 1, 3, 0xff], "bit strings are not supported"),
        (
            &[88, 119, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            "pids are not supported",
        ),
        (
            &[90, 0, 1, 119, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 1],
            "references are not supported",
        ),
        (&[82, 0], "distribution headers are not supported"),
        (
            &[80, 0, 0, 0, 1, 0x78, 0x9c],
            "compressed terms are not supported",
        ),
        (&[200], "unknown term tag 200"),
    ];
    for (d, reason) in cases {
        assert_eq!(reason_of(d), reason, "{d:?}");
    }
    // Compression applies to the whole term, right after the version byte.
    assert_eq!(
        decode(&[V, 80, 0, 0, 0, 10, 0x78, 0x9c])
            .unwrap_err()
            .to_string(),
        "invalid etf at byte 1: compressed terms are not supported"
    );
    assert_eq!(
        decode(&[V, 68, 0]).unwrap_err().to_string(),
        "invalid etf at byte 1: distribution headers are not supported"
    );
}

#[test]
fn frame_errors() {
    assert_eq!(
        decode(&[]).unwrap_err().to_string(),
        "invalid etf at byte 0: unexpected end of frame"
    );
    assert_eq!(
        decode(b"{\"op\":1}").unwrap_err().to_string(),
        "invalid etf at byte 0: expected version byte 131, found 123"
    );
    let mut trailing = frame_with_d(&[106]);
    trailing.push(106);
    assert_eq!(
        decode(&trailing).unwrap_err(),
        DecodeError::Etf {
            offset: trailing.len() - 1,
            reason: "trailing bytes after term".into()
        }
    );
    let full = frame_with_d(&[108, 0, 0, 0, 1, 97, 1, 106]);
    for cut in 0..full.len() {
        assert!(
            matches!(decode(&full[..cut]), Err(DecodeError::Etf { .. })),
            "cut at {cut}"
        );
    }
    // Length prefixes larger than the frame are refused before allocating.
    for d in [
        &[108, 0xff, 0xff, 0xff, 0xff, 106][..],
        &[116, 0xff, 0xff, 0xff, 0xff],
        &[105, 0xff, 0xff, 0xff, 0xff],
        &[109, 0xff, 0xff, 0xff, 0xff],
        &[111, 0xff, 0xff, 0xff, 0xff, 0],
    ] {
        assert!(reason_of(d).contains("past the end of the frame"), "{d:?}");
    }
}

#[test]
fn top_level_rules() {
    assert_eq!(decode(&[V, 106]), Err(DecodeError::NotAMap));
    assert_eq!(decode(&[V, 104, 1, 97, 1]), Err(DecodeError::NotAMap));
    assert_eq!(decode(&[V, 116, 0, 0, 0, 0]), Err(DecodeError::MissingOp));
    // %{"op" => "1"}
    let mut f = vec![V, 116, 0, 0, 0, 1];
    binary(&mut f, b"op");
    binary(&mut f, b"1");
    assert_eq!(decode(&f), Err(DecodeError::InvalidOp));
    // %{op: 4, t: :SEND} - an atom `t` reads as the string "SEND".
    let mut f = vec![V, 116, 0, 0, 0, 2];
    atom_small_utf8(&mut f, "op");
    f.extend_from_slice(&[97, 4]);
    atom_small_utf8(&mut f, "t");
    atom_small_utf8(&mut f, "SEND");
    assert_eq!(decode(&f).unwrap().t.as_deref(), Some("SEND"));
    // %{op: 4, t: 1}
    let mut f = vec![V, 116, 0, 0, 0, 2];
    atom_small_utf8(&mut f, "op");
    f.extend_from_slice(&[97, 4]);
    atom_small_utf8(&mut f, "t");
    f.extend_from_slice(&[97, 1]);
    assert_eq!(decode(&f), Err(DecodeError::InvalidT));
}

#[test]
fn integers_are_written_in_erlangs_smallest_form() {
    let forms: [(i64, &[u8]); 9] = [
        (0, &[97, 0]),
        (255, &[97, 255]),
        (256, &[98, 0, 0, 1, 0]),
        (-1, &[98, 0xff, 0xff, 0xff, 0xff]),
        (i64::from(i32::MAX), &[98, 0x7f, 0xff, 0xff, 0xff]),
        (1 << 31, &[110, 4, 0, 0, 0, 0, 0x80]),
        (-(1 << 31) - 1, &[110, 4, 1, 1, 0, 0, 0x80]),
        (
            1_700_000_000_000,
            &[110, 6, 0, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01],
        ),
        (i64::MIN, &[110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0x80]),
    ];
    for (n, bytes) in forms {
        let out = encode(0, None, &json!(n), 0).unwrap();
        let mut expected = vec![V, 116, 0, 0, 0, 4, 109, 0, 0, 0, 2, b'o', b'p', 97, 0];
        expected.extend_from_slice(&[109, 0, 0, 0, 1, b'd']);
        expected.extend_from_slice(bytes);
        assert_eq!(&out[..expected.len()], &expected[..], "{n}");
    }
    let out = encode(0, None, &json!(u64::MAX), 0).unwrap();
    assert_eq!(
        &out[21..32],
        &[110, 8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
}

#[test]
fn packet_layout() {
    let out = encode(7, None, &json!({"reason": "shutdown"}), 5).unwrap();
    let mut expected = vec![V, 116, 0, 0, 0, 4];
    binary(&mut expected, b"op");
    expected.extend_from_slice(&[97, 7]);
    binary(&mut expected, b"d");
    expected.extend_from_slice(&[116, 0, 0, 0, 1]);
    binary(&mut expected, b"reason");
    binary(&mut expected, b"shutdown");
    binary(&mut expected, b"t");
    atom_small_utf8(&mut expected, "nil");
    binary(&mut expected, b"ts");
    expected.extend_from_slice(&[97, 5]);
    assert_eq!(&out[..], &expected[..]);
}

/// The JSON → term mapping, written against `eetf` types.
fn reference_term(v: &Value) -> Term {
    match v {
        Value::Null => Atom::from("nil").into(),
        Value::Bool(b) => Atom::from(if *b { "true" } else { "false" }).into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => FixInteger::from(small).into(),
                Err(_) => BigInteger::from(i).into(),
            },
            (None, Some(u)) => BigInteger::from(u).into(),
            _ => Float::try_from(n.as_f64().unwrap()).unwrap().into(),
        },
        Value::String(s) => Binary::from(s.as_bytes()).into(),
        Value::Array(items) => {
            List::from(items.iter().map(reference_term).collect::<Vec<_>>()).into()
        }
        Value::Object(m) => Map::from(
            m.iter()
                .map(|(k, v)| (Binary::from(k.as_bytes()).into(), reference_term(v)))
                .collect::<std::collections::HashMap<Term, Term>>(),
        )
        .into(),
    }
}

fn sample() -> Value {
    json!({
        "null": null, "t": true, "f": false,
        "ints": [0, 255, 256, -1, i32::MIN, i32::MAX, 1u64 << 31, i64::MIN, i64::MAX, u64::MAX],
        "floats": [0.0, 1.5, -2.25e-300, 1e300, f64::MAX, f64::MIN_POSITIVE, 5e-324],
        "strings": ["", "신경", "😀", "\u{0}"],
        "nested": {"a": [[], {}, [{"b": null}]]}
    })
}

#[test]
fn eetf_reads_what_we_write() {
    let d = sample();
    let out = encode(4, Some("SEND"), &d, -7).unwrap();
    let term = Term::decode(&out[..]).unwrap();
    let expected: Term = Map::from([
        (Binary::from(&b"op"[..]).into(), FixInteger::from(4).into()),
        (Binary::from(&b"d"[..]).into(), reference_term(&d)),
        (
            Binary::from(&b"t"[..]).into(),
            Binary::from(&b"SEND"[..]).into(),
        ),
        (Binary::from(&b"ts"[..]).into(), FixInteger::from(-7).into()),
    ])
    .into();
    assert_eq!(term, expected);
}

#[test]
fn we_read_what_eetf_writes() {
    let d = sample();
    let term: Term = Map::from([
        (Atom::from("op").into(), FixInteger::from(4).into()),
        (Atom::from("d").into(), reference_term(&d)),
        (Atom::from("t").into(), Atom::from("SEND").into()),
        (
            Atom::from("ts").into(),
            BigInteger::from(1_700_000_000_000i64).into(),
        ),
        (
            Atom::from("extra").into(),
            Tuple::from(vec![Atom::from("ok").into()]).into(),
        ),
    ])
    .into();
    let mut bytes = Vec::new();
    term.encode(&mut bytes).unwrap();
    let p = decode(&bytes).unwrap();
    assert_eq!(
        p,
        InboundPacket {
            op: 4,
            d,
            t: Some("SEND".into())
        }
    );
}
