//! A dispatch packet (op 4) as the frames its recipients receive: encoded
//! for one recipient, or at most once per encoding for many.

use bytes::Bytes;

use super::{Dispatch, now_ms};
use crate::protocol::{self, Encoding, op};

/// A dispatch packet encoded at most once per encoding.
pub struct EncodedOnce<'a> {
    packet: &'a Dispatch,
    frames: [Option<Bytes>; 3],
    ts: i64,
}

impl<'a> EncodedOnce<'a> {
    pub fn new(packet: &'a Dispatch) -> Self {
        EncodedOnce {
            packet,
            frames: [None, None, None],
            ts: now_ms(),
        }
    }

    pub fn get(&mut self, encoding: Encoding) -> Bytes {
        let slot = match encoding {
            Encoding::Json => &mut self.frames[0],
            Encoding::Msgpack => &mut self.frames[1],
            Encoding::Etf => &mut self.frames[2],
        };
        slot.get_or_insert_with(|| {
            protocol::encode(
                encoding,
                op::DISPATCH,
                Some(self.packet.t),
                &self.packet.d,
                self.ts,
            )
        })
        .clone()
    }
}

/// Encodes a dispatch for one recipient.
pub fn encode_dispatch(encoding: Encoding, packet: &Dispatch) -> Bytes {
    protocol::encode(encoding, op::DISPATCH, Some(packet.t), &packet.d, now_ms())
}
