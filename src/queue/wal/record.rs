//! What one log record says, as bytes: its *body*. How bodies are framed
//! on disk (lengths, checksums, sequence numbers, blocks) is
//! [`super::segment`]'s business.
//!
//! Body = `kind: u8`, then for `Enqueue` (1): `id: u64`, the queue name
//! (u16 length, then UTF-8), the target JSON (u32 length, then bytes), the
//! consumer's `d` JSON (u32 length, then bytes); for `Ack` (3): `id: u64`;
//! for `Deliver` (2, read from older logs, never written): `id: u64`.
//! Integers are little-endian.
//!
//! [`Record::encode`] refuses what the body cannot represent (a queue name
//! longer than its u16 length, a JSON value that does not serialize, a
//! body over [`MAX_RECORD`]) instead of truncating it: a record that is
//! written is always one that [`Record::decode`] reads back whole.

use std::sync::Arc;

use serde_json::Value;

use crate::queue::state::MsgId;

/// The largest body. Recovery takes a length above it for garbage, so the
/// encoder never writes one.
pub const MAX_RECORD: usize = 256 << 20;
/// The longest queue name a record can hold (its length is a u16).
pub const MAX_QUEUE_NAME: usize = u16::MAX as usize;

const ENQUEUE: u8 = 1;
const DELIVER: u8 = 2;
const ACK: u8 = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Enqueue {
        id: MsgId,
        queue: Arc<str>,
        target: Value,
        d: Value,
    },
    /// Read from logs of earlier versions, never written (see the module
    /// documentation of [`super`], Records).
    Deliver {
        id: MsgId,
    },
    Ack {
        id: MsgId,
    },
}

/// Why a record cannot be written. The message is then refused (never
/// queued, never confirmed): writing anything else would lose it at
/// recovery or, worse, make the records after it unreadable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("queue name is {0} bytes; the queue log holds names of at most {MAX_QUEUE_NAME} bytes")]
    QueueName(usize),
    #[error("message cannot be serialized for the queue log: {0}")]
    Json(String),
    #[error(
        "message is {0} bytes as a log record; the queue log holds records of at most {MAX_RECORD} bytes"
    )]
    TooLarge(usize),
}

impl Record {
    /// The body of this record, or why it cannot be written.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_within(MAX_RECORD)
    }

    /// [`Record::encode`] with a smaller limit than [`MAX_RECORD`] (tests).
    fn encode_within(&self, max: usize) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        match self {
            Record::Enqueue {
                id,
                queue,
                target,
                d,
            } => {
                let qlen =
                    u16::try_from(queue.len()).map_err(|_| EncodeError::QueueName(queue.len()))?;
                out.push(ENQUEUE);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&qlen.to_le_bytes());
                out.extend_from_slice(queue.as_bytes());
                for v in [target, d] {
                    let at = out.len();
                    out.extend_from_slice(&[0; 4]);
                    serde_json::to_writer(&mut out, v)
                        .map_err(|e| EncodeError::Json(e.to_string()))?;
                    let len = out.len() - at - 4;
                    // Checked against MAX_RECORD below; a u32 holds that.
                    let len = u32::try_from(len).map_err(|_| EncodeError::TooLarge(len))?;
                    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
                }
            }
            Record::Deliver { id } => {
                out.push(DELIVER);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Record::Ack { id } => {
                out.push(ACK);
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        if out.len() > max {
            return Err(EncodeError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Reads a body back; `None` if it is not one [`Record::encode`] could
    /// have written (unknown kind, cut short, trailing bytes, bad UTF-8 or
    /// JSON).
    pub fn decode(body: &[u8]) -> Option<Record> {
        let mut r = Reader(body);
        let record = match r.u8()? {
            ENQUEUE => {
                let id = r.u64()?;
                let qlen = r.u16()? as usize;
                let queue = std::str::from_utf8(r.take(qlen)?).ok()?.into();
                let tlen = r.u32()? as usize;
                let target = serde_json::from_slice(r.take(tlen)?).ok()?;
                let dlen = r.u32()? as usize;
                let d = serde_json::from_slice(r.take(dlen)?).ok()?;
                Record::Enqueue {
                    id,
                    queue,
                    target,
                    d,
                }
            }
            DELIVER => Record::Deliver { id: r.u64()? },
            ACK => Record::Ack { id: r.u64()? },
            _ => return None,
        };
        r.0.is_empty().then_some(record)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// CRC-32 (IEEE), table-driven, continuable: `crc32(a ++ b)` is
/// `crc32_finish(crc32_update(crc32_update(CRC32_INIT, a), b))`.
pub const CRC32_INIT: u32 = !0;

pub fn crc32_update(mut c: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

pub fn crc32_finish(c: u32) -> u32 {
    !c
}

pub fn crc32(data: &[u8]) -> u32 {
    crc32_finish(crc32_update(CRC32_INIT, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample() -> Vec<Record> {
        vec![
            Record::Enqueue {
                id: 7,
                queue: "jobs".into(),
                target: json!({"application": "a"}),
                d: json!({"nonce": 1, "payload": {"queue": "jobs", "id": "7", "payload": [1, 2]}}),
            },
            Record::Deliver { id: 7 },
            Record::Ack { id: 7 },
        ]
    }

    #[test]
    fn bodies_round_trip() {
        for r in sample() {
            assert_eq!(Record::decode(&r.encode().unwrap()), Some(r));
        }
    }

    #[test]
    fn a_queue_name_longer_than_its_length_field_is_refused_not_truncated() {
        // Issue 13: a 70,000-byte name was written with its length cut to
        // u16, with a valid checksum, and made recovery drop every record
        // after it.
        let long = Record::Enqueue {
            id: 1,
            queue: "q".repeat(70_000).into(),
            target: json!({"application": "a"}),
            d: json!({"nonce": null}),
        };
        assert_eq!(long.encode(), Err(EncodeError::QueueName(70_000)));
        let longest = Record::Enqueue {
            id: 1,
            queue: "q".repeat(MAX_QUEUE_NAME).into(),
            target: json!({"application": "a"}),
            d: json!({"nonce": null}),
        };
        let body = longest.encode().unwrap();
        assert_eq!(Record::decode(&body), Some(longest));
    }

    #[test]
    fn a_record_over_the_maximum_is_refused() {
        // The real limit is 256 MiB; the same check with a small one.
        let big = Record::Enqueue {
            id: 1,
            queue: "q".into(),
            target: json!({"application": "a"}),
            d: json!({"payload": "x".repeat(1000)}),
        };
        assert!(matches!(big.encode_within(1000), Err(EncodeError::TooLarge(n)) if n > 1000));
        assert!(big.encode_within(1100).is_ok());
    }

    #[test]
    fn decode_refuses_cut_or_padded_bodies() {
        let body = sample()[0].encode().unwrap();
        for cut in 0..body.len() {
            assert_eq!(Record::decode(&body[..cut]), None, "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer), None);
    }

    #[test]
    fn crc_matches_reference_and_continues() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let c = crc32_update(crc32_update(CRC32_INIT, b"1234"), b"56789");
        assert_eq!(crc32_finish(c), 0xCBF4_3926);
    }
}
