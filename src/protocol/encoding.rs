//! The three wire encodings a connection may choose (contract §1).

use std::fmt;

/// How packets are written on one connection, chosen once by the
/// `?encoding=` query parameter of the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// UTF-8 JSON in text frames; the default when no parameter is given.
    #[default]
    Json,
    /// MessagePack maps with string keys, in binary frames.
    Msgpack,
    /// Erlang External Term Format, in binary frames.
    Etf,
}

impl Encoding {
    /// Every encoding, in the order the HTTP 400 body lists them.
    pub const ALL: [Encoding; 3] = [Encoding::Json, Encoding::Msgpack, Encoding::Etf];

    /// Parses the value of the `encoding` query parameter. Matching is exact
    /// (the original server did not fold case either).
    pub fn from_query_param(s: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.name() == s)
    }

    /// The name used in the query parameter and in the `encoding` metadata key.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
            Encoding::Etf => "etf",
        }
    }

    /// Whether packets travel in binary frames; JSON uses text frames.
    pub fn is_binary(self) -> bool {
        !matches!(self, Encoding::Json)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_round_trips_every_name() {
        for enc in Encoding::ALL {
            assert_eq!(Encoding::from_query_param(enc.name()), Some(enc));
        }
    }

    #[test]
    fn unknown_or_miscased_names_are_rejected() {
        for s in ["", "JSON", "xml", "erlpack", "json "] {
            assert_eq!(Encoding::from_query_param(s), None, "{s:?}");
        }
    }

    #[test]
    fn only_json_uses_text_frames() {
        assert!(!Encoding::Json.is_binary());
        assert!(Encoding::Msgpack.is_binary());
        assert!(Encoding::Etf.is_binary());
        assert_eq!(Encoding::default(), Encoding::Json);
    }
}
