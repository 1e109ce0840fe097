//! Frames on the links between nodes.
//!
//! A link is a QUIC stream; one frame on it is a 4-byte little-endian
//! length, then that many bytes of an rkyv archive of [`Frame`]. A
//! receiver trusts nothing in it: the length is held to a limit before the
//! body is buffered, and the archive is validated (bytecheck) before it is
//! read, then copied out into owned values.
//!
//! No frame type may be recursive, directly or not: validating a
//! recursive archived type recurses as deep as the bytes nest it, so a
//! small hostile frame could overflow the stack (rkyv issue #684). Whatever
//! may nest (queries, payloads) travels as a byte string re-parsed by our
//! own parsers, under our own limits.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// The link protocol: what the frames mean.
pub const LINK_VERSION: u16 = 1;

/// The archived layout of [`Frame`]. Bump it with any change to `Frame` or
/// the types in it (a field, a variant, an order, a type): two layouts do
/// not reject each other's bytes reliably, so the handshake must. The
/// `layout_is_pinned` test fails on any change of layout, as a reminder.
pub const SCHEMA: u32 = 0x5f1e_000a;

const PREFIX: usize = 4;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Frame {
    /// First frame each side sends on a new link.
    Hello(Hello),
    Ping {
        seq: u64,
        sent_us: u64,
    },
    Pong {
        seq: u64,
        sent_us: u64,
    },
    /// Sent before closing a link on purpose.
    Goodbye {
        reason: String,
    },
    /// A question for the node at the other end, answered by a
    /// [`Frame::Response`] with the same `id`.
    Request {
        id: u64,
        body: Request,
    },
    Response {
        id: u64,
        body: Response,
    },
    /// The sender's node's clients per application, every application it
    /// holds clients of (the whole table, sent when it changes): which
    /// nodes a query of an application needs to ask.
    Apps {
        counts: Vec<(String, u64)>,
    },
    /// CLIENT_CONNECTED or CLIENT_DISCONNECTED (`event`) about a client
    /// of the sender's node, for this node's subscribers.
    ClientEvent {
        event: String,
        app: String,
        client: String,
    },
    /// The sender's node no longer holds the name (`app`, `client`) for
    /// its connection (`shard`, `conn`): for the name's home node, which
    /// forgets the claim if that connection still holds it.
    Release {
        app: String,
        client: String,
        shard: u32,
        conn: u64,
    },
    /// The sender's node's count of clients (open, restricted) in each of
    /// these indexed value buckets (keys as `cluster::values::encode_key`
    /// writes them), all homed on the receiver: absolute counts, a zero
    /// meaning none left.
    Values {
        counts: Vec<(Vec<u8>, u32, u32)>,
    },
    /// A queue message between a queue's owner node and the node of one
    /// of its clients (see `queue::cluster`).
    Queue(QueueFrame),
}

/// A connection on the node at one end of the link, as that node numbers
/// it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireConn {
    pub shard: u16,
    pub client: u32,
    pub conn: u64,
}

/// What a queue's owner needs to know of a waiting consumer: its
/// application and its typed metadata (JSON, see
/// `Metadata::to_typed_json`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireConsumer {
    pub conn: WireConn,
    pub app: String,
    pub restricted: bool,
    pub metadata: Vec<u8>,
}

/// One-way queue messages. To the owner node: what its clients' QUEUE,
/// QUEUE_REQUEST, QUEUE_REQUEST_CANCEL and QUEUE_ACK say, their metadata
/// changes and their leaving, and messages handed over by a node that no
/// longer owns their queue. From the owner node: deliveries, confirms and
/// errors for those clients. Payloads, targets and `d`s are JSON bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum QueueFrame {
    Push {
        from: WireConn,
        queue: String,
        target: Vec<u8>,
        nonce: Vec<u8>,
        payload: Vec<u8>,
    },
    Request {
        queue: String,
        consumer: WireConsumer,
    },
    Cancel {
        queue: String,
        conn: WireConn,
    },
    Ack {
        queue: String,
        conn: WireConn,
        id: u64,
    },
    Update {
        queues: Vec<String>,
        consumer: WireConsumer,
    },
    Gone {
        queues: Vec<String>,
        conn: WireConn,
    },
    /// Message `id` of a queue the receiver owns, held by the sender:
    /// queued anew by the receiver, which answers [`QueueFrame::Moved`]
    /// once it is durable.
    Handoff {
        queue: String,
        id: u64,
        target: Vec<u8>,
        d: Vec<u8>,
    },
    /// The sender holds message `id` (the receiver's) durably now: the
    /// receiver drops its copy.
    Moved {
        queue: String,
        id: u64,
    },
    Deliver {
        to: WireConn,
        queue: String,
        id: u64,
        d: Vec<u8>,
    },
    /// QUEUE_CONFIRM.
    Confirm {
        to: WireConn,
        d: Vec<u8>,
    },
    Invalid {
        to: WireConn,
        error: String,
        extra: Vec<u8>,
    },
    Revoked {
        to: WireConn,
        queue: String,
        id: u64,
    },
    Cancelled {
        to: WireConn,
        queue: String,
    },
    Refused {
        to: WireConn,
        queue: String,
        error: String,
        extra: Vec<u8>,
    },
    /// The sender no longer owns `queue` and dropped `credits` waiting
    /// credits of `to`: they are asked of the owner again.
    Rehome {
        to: WireConn,
        queue: String,
        credits: u32,
    },
}

/// What one node asks another to do among its own clients. Queries and
/// payloads are JSON bytes, re-parsed by the receiver with its own limits.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// BROADCAST: deliver the dispatch (`event`, `payload`) to every local
    /// match of `query`; answered with [`Response::Delivered`].
    Broadcast {
        query: Vec<u8>,
        event: String,
        payload: Vec<u8>,
    },
    /// QUERY_NODES: describe the local matches, at most `count` clients and
    /// about `bytes` of JSON; answered with [`Response::Nodes`].
    Nodes {
        query: Vec<u8>,
        count: u32,
        bytes: u32,
    },
    /// SEND, first step: this node's summary of its matches (`avg`: the
    /// cluster's average for a `$avg` selector's second round); answered
    /// with [`Response::Pick`].
    Pick { query: Vec<u8>, avg: Option<f64> },
    /// SEND, last step: deliver to one of this node's matches, chosen as
    /// the summary promised; answered with [`Response::Delivered`] (0: its
    /// matches had gone, choose again elsewhere).
    Send {
        query: Vec<u8>,
        avg: Option<f64>,
        event: String,
        payload: Vec<u8>,
    },
    /// The proxy, and QUERY_NODES with a selector: describe the one
    /// client of this node a SEND would go to; answered with
    /// [`Response::Nodes`] holding it (or none: its matches had gone).
    Describe { query: Vec<u8>, avg: Option<f64> },
    /// Dead-letter checks of a queue's owner: for each target (a query),
    /// whether a local client matches it, strictly and without its ops;
    /// answered with [`Response::Counts`].
    QueueCounts { targets: Vec<Vec<u8>> },
    /// On the name's home node: the sender's node claims (`app`,
    /// `client`) for its connection (`shard`, `conn`); answered with
    /// [`Response::Claimed`] (false: another node, or the home, holds it).
    Claim {
        app: String,
        client: String,
        shard: u32,
        conn: u64,
    },
    /// From a name's home node, which found this node's claim of (`app`,
    /// `client`) in the way of another: does this node still hold it?
    /// Answered with [`Response::Claimed`].
    Holds { app: String, client: String },
    /// On the home of these value keys: which nodes hold clients in their
    /// buckets that a query with this `restricted` flag reaches; answered
    /// with [`Response::Holders`].
    Holders {
        keys: Vec<Vec<u8>>,
        restricted: bool,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    /// Clients delivered to.
    Delivered(u64),
    /// `<client>` objects (a JSON array), and how many matched in all.
    Nodes { nodes: Vec<u8>, matched: u64 },
    /// A node's matches summed up as one shard's pick: how many, the best
    /// rendezvous score, the best selector value, and the selector's sum
    /// and count (see `routing::pick::summarize`).
    Pick {
        count: u64,
        keyed: Option<u64>,
        selected: Option<f64>,
        sum: f64,
        numeric: u64,
    },
    /// The request could not be carried out (a query that does not parse
    /// here, say); the asker counts this node as having no match.
    Refused(String),
    /// Per target of [`Request::QueueCounts`]: (strict, relaxed) matches.
    Counts(Vec<(u64, u64)>),
    /// To [`Request::Claim`]: granted or not; to [`Request::Holds`]:
    /// held or not.
    Claimed(bool),
    /// The nodes holding clients in the buckets asked about: each node's
    /// gossip address, run and count. `settled`: the answering node is the
    /// home of every key asked about, and has been for long enough that
    /// every holder has told it (otherwise the list may miss some).
    Holders {
        nodes: Vec<(String, u64, u64)>,
        settled: bool,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    /// [`LINK_VERSION`] of the sender.
    pub version: u16,
    /// [`SCHEMA`] of the sender.
    pub schema: u32,
    /// The node's name.
    pub name: String,
    /// The node's gossip address (`ip:port`), which names it in the
    /// cluster: how the accepting side knows which member dialed.
    pub addr: String,
    /// The node's run id.
    pub boot: u64,
    /// Which shard of that node speaks on this link.
    pub shard: u16,
    /// Its shard count.
    pub shards: u16,
    /// HMAC proving the cluster secret.
    pub proof: [u8; 32],
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// The length prefix announces more than the limit: refused before any
    /// byte of the body is buffered.
    #[error("frame of {len} bytes announced, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not a valid archive of a Frame.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// A JSON value as the bytes a frame carries (queries, payloads).
pub fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a Value cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// JSON bytes from a frame, parsed with sonic-rs, as clients' JSON is: it
/// reads back every float exactly as serde_json wrote it (serde_json's own
/// parser does not, without its `float_roundtrip` feature).
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    sonic_rs::from_slice(bytes).map_err(|e| format!("bad JSON: {e}"))
}

/// Appends `frame`, length prefix included, to `out`.
///
/// # Panics
///
/// If the frame cannot be archived: only with a string of 1 GiB or more
/// (rkyv's limit under 32-bit lengths), far past any receiver's limit.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    // Archived on its own rather than in place in `out`: rkyv aligns
    // relative to the start of its buffer, and the receiver decodes from an
    // aligned buffer of its own.
    let body = rkyv::to_bytes::<rancor::Error>(frame).expect("frame too large to archive");
    let len = u32::try_from(body.len()).expect("frame longer than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
}

/// Reassembles frames from a stream's bytes as they arrive in chunks.
pub struct FrameReader {
    max_frame: usize,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already returned as frames.
    read: usize,
    /// Where the first prefix not yet checked starts (or will start): past
    /// the end of `buf` while a body is incomplete.
    next_prefix: usize,
    /// Once set, nothing more is accepted; it is returned after the frames
    /// already complete in `buf`, and from then on.
    error: Option<FrameError>,
    /// Reused for each body: network bytes are not aligned, archives must be.
    aligned: AlignedVec,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            max_frame,
            buf: Vec::new(),
            read: 0,
            next_prefix: 0,
            error: None,
            aligned: AlignedVec::new(),
        }
    }

    /// Adds received bytes. Never buffers more than 4 + `max_frame` bytes
    /// of one frame: each prefix is checked as soon as its 4 bytes are in.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.read > 0 {
            self.buf.drain(..self.read);
            self.next_prefix -= self.read;
            self.read = 0;
        }
        // Stored in steps, each up to the end of a body or of a prefix, so
        // that a refused prefix stops the copy before its body.
        while !bytes.is_empty() {
            let until = if self.buf.len() < self.next_prefix {
                self.next_prefix
            } else {
                self.next_prefix + PREFIX
            };
            let (now, rest) = bytes.split_at((until - self.buf.len()).min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
            let unchecked = self.buf.get(self.next_prefix..).unwrap_or_default();
            if let Some(len) = unchecked.first_chunk().map(announced) {
                if len > self.max_frame {
                    self.buf.truncate(self.next_prefix);
                    self.error = Some(FrameError::TooLarge {
                        len,
                        max: self.max_frame,
                    });
                    return;
                }
                self.next_prefix += PREFIX + len;
            }
        }
    }

    /// The next complete frame, if any: `Ok(None)` = need more bytes. After
    /// an `Err` the reader is poisoned: every later call returns the same
    /// error (the link is to be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let pending = &self.buf[self.read..];
        let body = pending
            .first_chunk()
            .and_then(|prefix| pending[PREFIX..].get(..announced(prefix)));
        let Some(body) = body else {
            return match &self.error {
                Some(error) => Err(error.clone()),
                None => Ok(None),
            };
        };
        self.read += PREFIX + body.len();
        self.aligned.clear();
        self.aligned.extend_from_slice(body);
        match decode(&self.aligned) {
            Ok(frame) => Ok(Some(frame)),
            Err(error) => {
                // Whatever follows a broken frame cannot be trusted to be
                // frames at all.
                self.buf = Vec::new();
                self.read = 0;
                self.next_prefix = 0;
                self.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.read
    }
}

fn announced(prefix: &[u8; PREFIX]) -> usize {
    u32::from_le_bytes(*prefix) as usize
}

fn decode(aligned: &[u8]) -> Result<Frame, FrameError> {
    let invalid = |error: rancor::Error| FrameError::Invalid(error.to_string());
    let archived = rkyv::access::<ArchivedFrame, rancor::Error>(aligned).map_err(invalid)?;
    rkyv::deserialize::<Frame, rancor::Error>(archived).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 16;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            version: LINK_VERSION,
            schema: SCHEMA,
            name: "node-a".into(),
            addr: "10.0.0.1:7000".into(),
            boot: 0x0123_4567_89ab_cdef,
            shard: 3,
            shards: 8,
            proof: [0xa5; 32],
        })
    }

    fn samples() -> Vec<Frame> {
        vec![
            hello(),
            Frame::Ping {
                seq: 1,
                sent_us: u64::MAX,
            },
            Frame::Pong { seq: 2, sent_us: 0 },
            Frame::Goodbye {
                reason: "shutting down".into(),
            },
            Frame::Goodbye {
                reason: String::new(),
            },
            Frame::Request {
                id: 9,
                body: Request::Broadcast {
                    query: br#"{"application":"a"}"#.to_vec(),
                    event: "e".into(),
                    payload: b"{}".to_vec(),
                },
            },
            Frame::Request {
                id: 10,
                body: Request::Nodes {
                    query: b"{}".to_vec(),
                    count: 1000,
                    bytes: 4096,
                },
            },
            Frame::Response {
                id: 9,
                body: Response::Nodes {
                    nodes: b"[]".to_vec(),
                    matched: 3,
                },
            },
            Frame::Request {
                id: 11,
                body: Request::QueueCounts {
                    targets: vec![br#"{"application":"a"}"#.to_vec()],
                },
            },
            Frame::Response {
                id: 11,
                body: Response::Counts(vec![(1, 0)]),
            },
            Frame::Queue(QueueFrame::Request {
                queue: "jobs".into(),
                consumer: WireConsumer {
                    conn: WireConn {
                        shard: 1,
                        client: 7,
                        conn: 0x0102_0304_0506_0708,
                    },
                    app: "app".into(),
                    restricted: true,
                    metadata: b"{}".to_vec(),
                },
            }),
            Frame::Queue(QueueFrame::Deliver {
                to: WireConn {
                    shard: 0,
                    client: 1,
                    conn: 2,
                },
                queue: "jobs".into(),
                id: 0xffff_0000_0000_0001,
                d: b"{}".to_vec(),
            }),
            Frame::Values {
                counts: vec![(b"key".to_vec(), 2, 1)],
            },
            Frame::Response {
                id: 11,
                body: Response::Holders {
                    nodes: vec![("10.0.0.2:7000".into(), 5, 3)],
                    settled: true,
                },
            },
        ]
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(frame, &mut out);
        out
    }

    /// Everything the reader gives until it needs more bytes or fails.
    fn drain(reader: &mut FrameReader) -> (Vec<Frame>, Option<FrameError>) {
        let mut frames = Vec::new();
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, None),
                Err(error) => return (frames, Some(error)),
            }
        }
    }

    /// A frame whose body is `body`, prefix and all.
    fn raw(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn every_variant_round_trips() {
        for frame in samples() {
            let mut reader = FrameReader::new(MAX);
            reader.push(&encoded(&frame));
            assert_eq!(reader.next_frame(), Ok(Some(frame)));
            assert_eq!(reader.next_frame(), Ok(None));
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn one_push_and_byte_by_byte_decode_alike() {
        let mut stream = Vec::new();
        for frame in samples() {
            encode(&frame, &mut stream);
        }

        let mut whole = FrameReader::new(MAX);
        whole.push(&stream);
        assert_eq!(drain(&mut whole), (samples(), None));

        let mut bytewise = FrameReader::new(MAX);
        let mut frames = Vec::new();
        for byte in &stream {
            bytewise.push(std::slice::from_ref(byte));
            let (more, error) = drain(&mut bytewise);
            assert_eq!(error, None);
            frames.extend(more);
        }
        assert_eq!(frames, samples());
        assert_eq!(bytewise.buffered(), 0);
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_body() {
        let mut reader = FrameReader::new(100);
        let too_large = FrameError::TooLarge { len: 101, max: 100 };
        reader.push(&101u32.to_le_bytes()[..3]);
        assert_eq!(reader.next_frame(), Ok(None));
        reader.push(&101u32.to_le_bytes()[3..]);
        assert_eq!(reader.next_frame(), Err(too_large.clone()));
        assert!(reader.buffered() <= 4);
        reader.push(&[0; 1000]);
        assert!(reader.buffered() <= 4);
        assert_eq!(reader.next_frame(), Err(too_large.clone()));
        assert_eq!(reader.next_frame(), Err(too_large));
    }

    #[test]
    fn frames_before_an_oversized_prefix_still_come_out() {
        let mut stream = encoded(&hello());
        stream.extend_from_slice(&u32::MAX.to_le_bytes());
        stream.extend_from_slice(&[7; 64]);
        let mut reader = FrameReader::new(MAX);
        reader.push(&stream);
        let too_large = FrameError::TooLarge {
            len: u32::MAX as usize,
            max: MAX,
        };
        assert_eq!(drain(&mut reader), (vec![hello()], Some(too_large)));
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn a_zero_length_frame_is_invalid() {
        let mut reader = FrameReader::new(MAX);
        reader.push(&[0; 4]);
        assert!(matches!(reader.next_frame(), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn garbage_is_invalid_and_poisons() {
        let mut reader = FrameReader::new(MAX);
        reader.push(&raw(&[0xff; 96]));
        reader.push(&encoded(&hello()));
        let error = reader.next_frame().unwrap_err();
        assert!(matches!(error, FrameError::Invalid(_)));
        assert_eq!(reader.buffered(), 0);
        reader.push(&encoded(&hello()));
        assert_eq!(reader.next_frame(), Err(error.clone()));
        assert_eq!(reader.next_frame(), Err(error));
    }

    #[test]
    fn a_corrupted_variant_tag_is_invalid() {
        let mut bytes = encoded(&hello());
        // The root of an archive sits at its end; an enum's starts with its tag.
        let tag = bytes.len() - std::mem::size_of::<ArchivedFrame>();
        bytes[tag] = 0xee;
        let mut reader = FrameReader::new(MAX);
        reader.push(&bytes);
        assert!(matches!(reader.next_frame(), Err(FrameError::Invalid(_))));
    }

    /// Fails when `Frame`'s archived layout changes: bump [`SCHEMA`], then
    /// update the bytes here.
    #[test]
    fn layout_is_pinned() {
        assert_eq!(SCHEMA, 0x5f1e_000a);
        assert_eq!(samples().len(), GOLDEN.len());
        for (frame, golden) in samples().iter().zip(GOLDEN) {
            assert_eq!(hex(&encoded(frame)), golden, "{frame:?}");
        }
    }

    const GOLDEN: [&str; 14] = [
        concat!(
            "6000000031302e302e302e313a37303030000000000000000000000001000000",
            "0a001e5f6e6f64652d61ffff8d000000d8ffffffefcdab896745230103000800",
            "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5",
            "00000000",
        ),
        concat!(
            "5000000001000000000000000100000000000000ffffffffffffffff00000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000",
        ),
        concat!(
            "5000000002000000000000000200000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000",
        ),
        concat!(
            "600000007368757474696e6720646f776e000000030000008d000000ecffffff",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "00000000",
        ),
        concat!(
            "5000000003000000ffffffffffffffff00000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000",
        ),
        concat!(
            "680000007b226170706c69636174696f6e223a2261227d7b7d00000004000000",
            "00000000090000000000000000000000d4ffffff1300000065ffffffffffffff",
            "d7ffffff02000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
        ),
        concat!(
            "580000007b7d00000000000004000000000000000a0000000000000001000000",
            "e4ffffff02000000e80300000010000000000000000000000000000000000000",
            "00000000000000000000000000000000000000000000000000000000",
        ),
        concat!(
            "580000005b5d0000000000000500000000000000090000000000000001000000",
            "e4ffffff02000000000000000300000000000000000000000000000000000000",
            "00000000000000000000000000000000000000000000000000000000",
        ),
        concat!(
            "700000007b226170706c69636174696f6e223a2261227d00ecffffff13000000",
            "0000000004000000000000000b0000000000000005000000e0ffffff01000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000",
        ),
        concat!(
            "600000000100000000000000000000000000000005000000000000000b000000",
            "0000000004000000dcffffff0100000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "00000000",
        ),
        concat!(
            "580000007b7d0000000000000a00000000000000010000006a6f6273ffffffff",
            "0000000001000000070000000807060504030201617070ffffffffff01000000",
            "c4ffffff020000000000000000000000000000000000000000000000",
        ),
        concat!(
            "580000007b7d0000000000000a00000000000000080000000000000000000000",
            "0100000002000000000000006a6f6273ffffffff010000000000ffffc8ffffff",
            "02000000000000000000000000000000000000000000000000000000",
        ),
        concat!(
            "680000006b657900fcffffff0300000002000000010000000000000009000000",
            "e8ffffff01000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
        ),
        concat!(
            "7800000031302e302e302e323a373030300000008d000000f0ffffff05000000",
            "00000000030000000000000005000000000000000b0000000000000006000000",
            "d4ffffff01000000010000000000000000000000000000000000000000000000",
            "00000000000000000000000000000000000000000000000000000000",
        ),
    ];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let text = "(?s).{0,300}";
        prop_oneof![
            (
                any::<u16>(),
                any::<u32>(),
                (text, text),
                any::<u64>(),
                any::<u16>(),
                any::<u16>(),
                any::<[u8; 32]>(),
            )
                .prop_map(
                    |(version, schema, (name, addr), boot, shard, shards, proof)| {
                        Frame::Hello(Hello {
                            version,
                            schema,
                            name,
                            addr,
                            boot,
                            shard,
                            shards,
                            proof,
                        })
                    }
                ),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, sent_us)| Frame::Ping { seq, sent_us }),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, sent_us)| Frame::Pong { seq, sent_us }),
            text.prop_map(|reason| Frame::Goodbye { reason }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..200),
                text,
                prop::collection::vec(any::<u8>(), 0..200),
            )
                .prop_map(|(id, query, event, payload)| Frame::Request {
                    id,
                    body: Request::Broadcast {
                        query,
                        event,
                        payload,
                    },
                }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..200),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(id, query, count, bytes)| Frame::Request {
                    id,
                    body: Request::Nodes {
                        query,
                        count,
                        bytes
                    },
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(id, n)| Frame::Response {
                id,
                body: Response::Delivered(n),
            }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..200),
                prop::option::of(-1e9f64..1e9),
                text,
            )
                .prop_map(|(id, query, avg, event)| Frame::Request {
                    id,
                    body: Request::Send {
                        query: query.clone(),
                        avg,
                        event,
                        payload: query,
                    },
                }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<Option<u64>>(),
                prop::option::of(-1e9f64..1e9),
                any::<u64>(),
            )
                .prop_map(|(id, count, keyed, selected, numeric)| Frame::Response {
                    id,
                    body: Response::Pick {
                        count,
                        keyed,
                        selected,
                        sum: 0.5,
                        numeric,
                    },
                }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..200),
                any::<u64>()
            )
                .prop_map(|(id, nodes, matched)| Frame::Response {
                    id,
                    body: Response::Nodes { nodes, matched },
                }),
            (any::<u64>(), text).prop_map(|(id, why)| Frame::Response {
                id,
                body: Response::Refused(why),
            }),
            (text, text, text).prop_map(|(event, app, client)| Frame::ClientEvent {
                event,
                app,
                client
            }),
            prop::collection::vec((text, any::<u64>()), 0..10)
                .prop_map(|counts| Frame::Apps { counts }),
            (text, text, any::<u32>(), any::<u64>()).prop_map(|(app, client, shard, conn)| {
                Frame::Release {
                    app,
                    client,
                    shard,
                    conn,
                }
            }),
            (any::<u64>(), text, text, any::<u32>(), any::<u64>()).prop_map(
                |(id, app, client, shard, conn)| Frame::Request {
                    id,
                    body: Request::Claim {
                        app,
                        client,
                        shard,
                        conn,
                    },
                }
            ),
            (any::<u64>(), text, text).prop_map(|(id, app, client)| Frame::Request {
                id,
                body: Request::Holds { app, client },
            }),
            (any::<u64>(), any::<bool>()).prop_map(|(id, held)| Frame::Response {
                id,
                body: Response::Claimed(held),
            }),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u8>(), 0..40),
                    any::<u32>(),
                    any::<u32>()
                ),
                0..10
            )
            .prop_map(|counts| Frame::Values { counts }),
            (
                any::<u64>(),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..10),
                any::<bool>()
            )
                .prop_map(|(id, keys, restricted)| Frame::Request {
                    id,
                    body: Request::Holders { keys, restricted },
                }),
            (
                any::<u64>(),
                prop::collection::vec((text, any::<u64>(), any::<u64>()), 0..10),
                any::<bool>()
            )
                .prop_map(|(id, nodes, settled)| Frame::Response {
                    id,
                    body: Response::Holders { nodes, settled },
                }),
        ]
    }

    proptest! {
        #[test]
        fn random_frames_round_trip(
            frames in prop::collection::vec(any_frame(), 1..8),
            chunk in 1usize..200,
        ) {
            let mut stream = Vec::new();
            for frame in &frames {
                encode(frame, &mut stream);
            }
            let mut whole = FrameReader::new(MAX);
            whole.push(&stream);
            prop_assert_eq!(drain(&mut whole), (frames.clone(), None));

            let mut chunked = FrameReader::new(MAX);
            let mut decoded = Vec::new();
            for bytes in stream.chunks(chunk) {
                chunked.push(bytes);
                let (more, error) = drain(&mut chunked);
                prop_assert_eq!(error, None);
                decoded.extend(more);
            }
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(chunked.buffered(), 0);
        }

        #[test]
        fn arbitrary_chunks_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            chunks in prop::collection::vec(1usize..64, 1..64),
            max in 0usize..256,
        ) {
            let mut reader = FrameReader::new(max);
            let mut rest = &bytes[..];
            for size in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at((*size).min(rest.len()));
                reader.push(now);
                rest = later;
                drain(&mut reader);
                prop_assert!(reader.buffered() < PREFIX + max);
            }
        }

        #[test]
        fn a_flipped_body_byte_never_panics(
            frame in any_frame(),
            at in any::<prop::sample::Index>(),
            mask in 1u8..,
        ) {
            let mut bytes = encoded(&frame);
            let at = PREFIX + at.index(bytes.len() - PREFIX);
            bytes[at] ^= mask;
            let mut reader = FrameReader::new(MAX);
            reader.push(&bytes);
            match reader.next_frame() {
                Ok(Some(_)) | Err(FrameError::Invalid(_)) => {}
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
