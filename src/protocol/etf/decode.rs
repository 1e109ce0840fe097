//! ETF bytes → packet: a recursive-descent reader over the frame.
//!
//! Every length prefix is checked against the bytes actually left before
//! anything is allocated, and nesting stops at [`MAX_DEPTH`], so a hostile
//! frame costs at most a small multiple of its own size.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::tag;
use crate::protocol::packet::{DecodeError, InboundPacket, MAX_DEPTH, RawFields};
use crate::protocol::value_de::bytes_to_value;

pub(crate) fn decode(frame: &[u8]) -> Result<InboundPacket, DecodeError> {
    let mut reader = Reader { buf: frame, pos: 0 };
    let fields = reader.packet().map_err(|fail| DecodeError::Etf {
        offset: fail.offset,
        reason: fail.reason.into_owned(),
    })?;
    fields.ok_or(DecodeError::NotAMap)?.into_packet()
}

/// Where and why decoding stopped.
struct Fail {
    offset: usize,
    reason: Cow<'static, str>,
}

type Step<T> = Result<T, Fail>;

fn fail<T>(offset: usize, reason: impl Into<Cow<'static, str>>) -> Step<T> {
    Err(Fail {
        offset,
        reason: reason.into(),
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The whole frame: version byte, then one term that should be a map.
    /// Returns `None` for a well-formed term that is not a map.
    fn packet(&mut self) -> Step<Option<RawFields>> {
        let version = self.u8()?;
        if version != tag::VERSION {
            return fail(0, format!("expected version byte 131, found {version}"));
        }
        let start = self.pos;
        let tag = self.u8()?;
        if tag != tag::MAP {
            self.term_with_tag(tag, start, 0)?;
            self.finish()?;
            return Ok(None);
        }
        let pairs = self.count(2)?;
        let mut fields = RawFields::default();
        for _ in 0..pairs {
            let key = self.key()?;
            // The packet map is the first level of nesting.
            let value = self.term(1)?;
            match &*key {
                "op" => fields.op = Some(value),
                "d" => fields.d = Some(value),
                "t" => fields.t = Some(value),
                _ => {}
            }
        }
        self.finish()?;
        Ok(Some(fields))
    }

    fn finish(&self) -> Step<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            fail(self.pos, "trailing bytes after term")
        }
    }

    /// One term nested inside `depth` already open containers.
    fn term(&mut self, depth: usize) -> Step<Value> {
        let start = self.pos;
        let tag = self.u8()?;
        self.term_with_tag(tag, start, depth)
    }

    fn term_with_tag(&mut self, tag: u8, start: usize, depth: usize) -> Step<Value> {
        match tag {
            tag::SMALL_INTEGER => Ok(Value::from(self.u8()?)),
            tag::INTEGER => Ok(Value::from(i32::from_be_bytes(self.array()?))),
            tag::SMALL_BIG => {
                let n = usize::from(self.u8()?);
                self.bignum(start, n)
            }
            tag::LARGE_BIG => {
                let n = self.count(1)?;
                self.bignum(start, n)
            }
            tag::NEW_FLOAT => float(start, f64::from_be_bytes(self.array()?)),
            tag::FLOAT => self.old_float(start),
            tag::ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => {
                Ok(match self.atom_name(tag, start)? {
                    name if name == "nil" => Value::Null,
                    name if name == "true" => Value::Bool(true),
                    name if name == "false" => Value::Bool(false),
                    name => Value::String(name.into_owned()),
                })
            }
            tag::NIL => Ok(Value::Array(Vec::new())),
            tag::STRING => {
                // A list of bytes the encoder packed; still a list in Erlang.
                let n = usize::from(self.u16()?);
                let bytes = self.bytes(n)?;
                Ok(Value::Array(
                    bytes.iter().map(|&b| Value::from(b)).collect(),
                ))
            }
            tag::LIST => {
                let n = self.count(1)?;
                let items = self.elements(start, n, depth)?;
                let tail = self.pos;
                if self.u8()? != tag::NIL {
                    return fail(tail, "improper lists are not supported");
                }
                Ok(Value::Array(items))
            }
            tag::SMALL_TUPLE => {
                let n = usize::from(self.u8()?);
                Ok(Value::Array(self.elements(start, n, depth)?))
            }
            tag::LARGE_TUPLE => {
                let n = self.count(1)?;
                Ok(Value::Array(self.elements(start, n, depth)?))
            }
            tag::BINARY => {
                let n = self.count(1)?;
                Ok(bytes_to_value(self.bytes(n)?))
            }
            tag::MAP => {
                let pairs = self.count(2)?;
                let inner = enter(start, depth)?;
                let mut map = Map::new();
                for _ in 0..pairs {
                    let key = self.key()?.into_owned();
                    let value = self.term(inner)?;
                    // Duplicate keys (possible after atom/binary folding):
                    // the last one wins, as for JSON.
                    map.insert(key, value);
                }
                Ok(Value::Object(map))
            }
            other => fail(start, unsupported(other)),
        }
    }

    /// `n` terms inside a list or tuple opened at `start`.
    fn elements(&mut self, start: usize, n: usize, depth: usize) -> Step<Vec<Value>> {
        let inner = enter(start, depth)?;
        // `n` is bounded by the bytes left; the cap keeps a lying prefix
        // from reserving more than a little memory up front.
        let mut items = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            items.push(self.term(inner)?);
        }
        Ok(items)
    }

    /// A map key: binaries and atoms by their text (an atom key is never
    /// turned into null or a boolean), integers in decimal.
    fn key(&mut self) -> Step<Cow<'a, str>> {
        let start = self.pos;
        let tag = self.u8()?;
        match tag {
            tag::BINARY => {
                let n = self.count(1)?;
                match std::str::from_utf8(self.bytes(n)?) {
                    Ok(s) => Ok(Cow::Borrowed(s)),
                    Err(_) => fail(start, "map key is not valid utf-8"),
                }
            }
            tag::ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => {
                self.atom_name(tag, start)
            }
            tag::SMALL_INTEGER | tag::INTEGER | tag::SMALL_BIG | tag::LARGE_BIG => {
                Ok(Cow::Owned(self.term_with_tag(tag, start, 0)?.to_string()))
            }
            _ => fail(start, "map keys must be binaries, atoms or integers"),
        }
    }

    /// The name of an atom whose tag was just read.
    fn atom_name(&mut self, tag: u8, start: usize) -> Step<Cow<'a, str>> {
        let n = match tag {
            tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        let bytes = self.bytes(n)?;
        if let Ok(s) = std::str::from_utf8(bytes)
            && (bytes.is_ascii() || matches!(tag, tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8))
        {
            return Ok(Cow::Borrowed(s));
        }
        match tag {
            // The deprecated atom forms are Latin-1: each byte is the code
            // point of its character.
            tag::ATOM | tag::SMALL_ATOM => {
                Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()))
            }
            _ => fail(start, "atom is not valid utf-8"),
        }
    }

    /// A bignum: sign byte, then `n` little-endian magnitude bytes. Only
    /// values JSON numbers carry exactly (i64, u64) are accepted.
    fn bignum(&mut self, start: usize, n: usize) -> Step<Value> {
        let sign = self.u8()?;
        let digits = self.bytes(n)?;
        // Erlang never pads with high zero bytes, but other encoders may.
        let significant = digits.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if significant > 8 {
            return fail(start, "integer does not fit in 64 bits");
        }
        let magnitude = digits
            .iter()
            .take(significant)
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        match sign {
            0 => Ok(Value::from(magnitude)),
            1 => match 0i64.checked_sub_unsigned(magnitude) {
                Some(v) => Ok(Value::from(v)),
                None => fail(start, "integer does not fit in 64 bits"),
            },
            _ => fail(start, format!("invalid bignum sign byte {sign}")),
        }
    }

    /// The pre-R12 float: 31 bytes of `%.20e` text, padded with NULs.
    fn old_float(&mut self, start: usize) -> Step<Value> {
        let raw = self.bytes(31)?;
        let text = raw.split(|&b| b == 0).next().unwrap_or_default();
        match std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
        {
            Some(v) => float(start, v),
            None => fail(start, "invalid float text"),
        }
    }

    /// A 32-bit element count, rejected when even `min_size` bytes per
    /// element would not fit in what is left of the frame.
    fn count(&mut self, min_size: usize) -> Step<usize> {
        let at = self.pos;
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        let left = self.buf.len() - self.pos;
        match n.checked_mul(min_size) {
            Some(needed) if needed <= left => Ok(n),
            _ => fail(at, format!("length {n} runs past the end of the frame")),
        }
    }

    fn bytes(&mut self, n: usize) -> Step<&'a [u8]> {
        let buf: &'a [u8] = self.buf;
        match buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => fail(self.pos, "unexpected end of frame"),
        }
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Step<u8> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Step<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
}

/// The depth for the contents of a container opened at `start`.
fn enter(start: usize, depth: usize) -> Step<usize> {
    if depth + 1 > MAX_DEPTH {
        return fail(start, format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    Ok(depth + 1)
}

fn float(start: usize, v: f64) -> Step<Value> {
    match Number::from_f64(v) {
        Some(n) => Ok(Value::Number(n)),
        None => fail(start, "non-finite float"),
    }
}

fn unsupported(tag: u8) -> String {
    let what = match tag {
        tag::COMPRESSED => "compressed terms are",
        tag::BIT_BINARY => "bit strings are",
        tag::PID | tag::NEW_PID => "pids are",
        tag::PORT | tag::NEW_PORT | tag::V4_PORT => "ports are",
        tag::REFERENCE | tag::NEW_REFERENCE | tag::NEWER_REFERENCE => "references are",
        tag::FUN | tag::NEW_FUN | tag::EXPORT => "funs are",
        tag::DISTRIBUTION_HEADER | tag::ATOM_CACHE_REF => "distribution headers are",
        tag::LOCAL => "local terms are",
        _ => return format!("unknown term tag {tag}"),
    };
    format!("{what} not supported")
}
