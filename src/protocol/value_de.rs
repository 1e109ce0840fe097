//! Bounded deserialization from any serde format into `serde_json::Value`,
//! shared by the JSON and MessagePack decoders.
//!
//! `serde_json::Value`'s own `Deserialize` is not used because it has no
//! depth limit of its own, rejects the integer map keys MessagePack allows,
//! and has no rule for MessagePack `bin`. The rules here:
//! - maps and lists nest at most [`MAX_DEPTH`] deep, counting the packet map;
//! - map keys: strings as they are, integers written in decimal, anything
//!   else rejected;
//! - byte strings (`bin`, or a `str` with invalid UTF-8): a string when the
//!   bytes are valid UTF-8, otherwise a list of byte values;
//! - non-finite floats (MessagePack can carry them, JSON cannot) are rejected;
//! - MessagePack `ext` values are rejected (no JSON equivalent).

use std::fmt;

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Number, Value};

use super::packet::{MAX_DEPTH, RawFields};

/// A whole inbound frame: the packet's raw fields, or `None` when the frame
/// held a well-formed value that is not a map.
pub(crate) struct PacketFields(pub Option<RawFields>);

impl<'de> de::Deserialize<'de> for PacketFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(PacketVisitor)
            .map(PacketFields)
    }
}

struct PacketVisitor;

/// The keys of a packet map that matter; `ts` and anything else is skipped.
enum Field {
    Op,
    D,
    T,
    Other,
}

impl<'de> Visitor<'de> for PacketVisitor {
    type Value = Option<RawFields>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a packet map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RawFields::default();
        // The packet map itself is the first level of nesting.
        let inner = ValueSeed { depth: 1 };
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            match field {
                Field::Op => fields.op = Some(map.next_value_seed(inner)?),
                Field::D => fields.d = Some(map.next_value_seed(inner)?),
                Field::T => fields.t = Some(map.next_value_seed(inner)?),
                // Built and dropped rather than skipped with `IgnoredAny`:
                // sonic-rs 0.5 skips recursively with no depth limit, so a
                // deeply nested unknown key would overflow the stack.
                Field::Other => drop(map.next_value_seed(inner)?),
            }
        }
        Ok(Some(fields))
    }

    // Anything else is well-formed but not a packet; consume it (depth
    // limited, as above) so the format can still check for trailing bytes,
    // then report "not a map".
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(ValueSeed { depth: 1 })?.is_some() {}
        Ok(None)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // A MessagePack `ext`: a tag and a byte string, nothing nested.
        IgnoredAny::deserialize(d)?;
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Classifies a packet-map key without allocating.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer map key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
        Ok(match s {
            "op" => Field::Op,
            "d" => Field::D,
            "t" => Field::T,
            _ => Field::Other,
        })
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Field, E> {
        match std::str::from_utf8(b) {
            Ok(s) => self.visit_str(s),
            Err(_) => Err(E::custom(INVALID_UTF8_KEY)),
        }
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Field, E> {
        Ok(Field::Other)
    }
}

const INVALID_UTF8_KEY: &str = "map key is not valid utf-8";

/// Deserializes one value nested inside `depth` already open maps/lists.
#[derive(Clone, Copy)]
pub(crate) struct ValueSeed {
    pub depth: usize,
}

impl ValueSeed {
    /// The seed for the elements of a map or list opened at this level.
    fn enter<E: de::Error>(self) -> Result<ValueSeed, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(ValueSeed { depth })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value with a JSON equivalent")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite float"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_to_value(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<Value, D::Error> {
        // rmp-serde reports MessagePack `ext` values this way.
        Err(de::Error::custom("msgpack ext values are not supported"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        // The size hint may be a length prefix an attacker chose; cap it.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(inner)?;
            // Duplicate keys: the last one wins, as in serde_json.
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Byte strings become text when they are UTF-8, else a list of bytes, so
/// nothing a client sends is silently altered.
pub(crate) fn bytes_to_value(v: &[u8]) -> Value {
    match std::str::from_utf8(v) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::Array(v.iter().map(|&b| Value::from(b)).collect()),
    }
}

/// Reads a map key as a JSON object key.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer map key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<String, E> {
        std::str::from_utf8(v)
            .map(str::to_owned)
            .map_err(|_| E::custom(INVALID_UTF8_KEY))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}
