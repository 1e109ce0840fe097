//! The bytes of one segment file, and reading them back (pure functions:
//! no I/O, unit-tested on bytes).
//!
//! # Layout (format 2)
//!
//! ```text
//! block 0:   header = magic "SYWAL\0v2", block size u32, 0u32, epoch u64,
//!            crc32 of those 24 bytes; zeros to the end of the block
//! block 1..: write 1 = frame, frame, ..., zeros to a block boundary
//!            write 2 = frame, ..., zeros to a block boundary
//!            ...
//! frame:     [len u32][crc u32][seq u64][body: len bytes]
//!            crc = crc32(epoch ++ seq ++ len ++ body)
//! ```
//!
//! **Nothing confirmed is ever written twice.** Each write (one per sync)
//! starts at a fresh block boundary after the previous one and is padded
//! to the next with zeros written into the buffer (never whatever an I/O
//! buffer last held). A torn write can only damage the write in progress,
//! whose records nobody was told about yet. The price: every sync costs at
//! least one block ([`BLOCK`], 4 KiB) on disk even when it carries a single
//! small record. QUEUE messages are small and group commit puts every
//! confirm waiting at the time in one write, so this is a few KiB per
//! sync, not per message; segments are deleted or compacted as their
//! messages are acked, so padding costs space only for the life of a
//! segment (the log counts it when deciding to start a new one).
//!
//! **Stale bytes are never replayed.** Each segment gets a random `epoch`
//! (in its header, and folded into every frame's checksum), and frames
//! carry a sequence number that starts at 1 and grows by one per frame.
//! Recovery accepts a frame only if its checksum holds under the
//! segment's epoch *and* its sequence number is the next one expected, so
//! bytes of another segment (another epoch) or older bytes of this one (a
//! smaller sequence number) do not pass, whatever lands after the end of
//! data.
//!
//! # Reading a segment back ([`scan`])
//!
//! Frames are read in order. At a place where the next frame is not
//! valid:
//!
//! - zeros to the end of the block: the padding of a write; reading
//!   resumes at the next block boundary (the next write starts there);
//! - otherwise, a frame further on that passes its checksum under this
//!   epoch with a sequence number not below the expected one: the bytes in
//!   between are **corrupt** (a damaged block in the middle of the file).
//!   Reading resumes at that frame; the [`Damage`] says where, and how
//!   many sequence numbers (records) were lost;
//! - otherwise nothing valid follows. If the bytes from there can be what
//!   a torn final write leaves (a frame header with a plausible length and
//!   the expected sequence number, the rest of the write partly on disk,
//!   unwritten sectors reading as zeros), it is a **torn tail**: normal
//!   after a crash, the records in it were never confirmed. Anything else
//!   (bytes this writer cannot have put there) is **corrupt**.
//!
//! A frame that is valid but whose body does not decode (a bug, or a log
//! written by a newer version) is skipped by its length and counted as
//! corrupt: the frames after it are still read.
//!
//! # Format 1 (older versions)
//!
//! No header, frames `[len u32][crc32(body) u32][body]` from offset 0,
//! written by glommio's stream writer, which rewrote the partly filled
//! block at each sync and padded it with whatever its buffer held. Such
//! files are still read: up to the first bad frame (after which stale
//! copies of older records may follow: nothing tells them from real ones,
//! so nothing after it is trusted). Bad bytes within what the old writer
//! could have had in flight ([`LEGACY_TAIL`]) from the end of the file are
//! that torn or stale tail; bad bytes before it are reported as corrupt.

use super::record::{CRC32_INIT, MAX_RECORD, Record, crc32, crc32_finish, crc32_update};

/// The unit every write starts on and is padded to. Also a multiple of any
/// direct-I/O alignment seen in practice (512 or 4096).
pub const BLOCK: usize = 4096;
/// `[len][crc][seq]` before each body.
pub const FRAME_HEADER: usize = 16;
const MAGIC: &[u8; 8] = b"SYWAL\0v2";
/// The sector size assumed when telling written from unwritten bytes in a
/// torn tail: a sector either reached the disk whole or reads as zeros.
const SECTOR: usize = 512;
/// Format 1: what the old writer could have had in flight at a crash, so
/// what a torn or stale tail can span: 4 write-behind buffers of 16 KiB.
pub const LEGACY_TAIL: usize = 4 * (16 << 10);

/// Block 0 of a segment with this epoch.
pub fn header(epoch: u64) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The epoch of a format-2 header, if `buf` starts with a valid one.
fn read_header(buf: &[u8]) -> Option<u64> {
    let h = buf.get(..28)?;
    if &h[..8] != MAGIC || u32::from_le_bytes(h[8..12].try_into().ok()?) as usize != BLOCK {
        return None;
    }
    if crc32(&h[..24]) != u32::from_le_bytes(h[24..28].try_into().ok()?) {
        return None;
    }
    Some(u64::from_le_bytes(h[16..24].try_into().ok()?))
}

fn frame_crc(epoch: u64, seq: u64, body: &[u8]) -> u32 {
    let mut c = crc32_update(CRC32_INIT, &epoch.to_le_bytes());
    c = crc32_update(c, &seq.to_le_bytes());
    c = crc32_update(c, &(body.len() as u32).to_le_bytes());
    crc32_finish(crc32_update(c, body))
}

/// Appends the frame of `body` (at most [`MAX_RECORD`] bytes: the encoder
/// guarantees it).
pub fn frame(epoch: u64, seq: u64, body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(body.len() <= MAX_RECORD);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame_crc(epoch, seq, body).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// The frame at the start of `buf` if it is whole and passes its checksum
/// under `epoch`: (sequence number, body).
pub fn frame_at(buf: &[u8], epoch: u64) -> Option<(u64, &[u8])> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    let body = buf.get(FRAME_HEADER..FRAME_HEADER + len)?;
    (frame_crc(epoch, seq, body) == crc).then_some((seq, body))
}

/// Where the next write of a segment goes: the pure half of the writer
/// (the I/O half is in `writer`), so the layout is tested on bytes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub epoch: u64,
    /// The end of what is written: a block boundary.
    pub end: u64,
    /// The sequence number of the next frame.
    pub next_seq: u64,
}

/// One write: `bytes` (a multiple of [`BLOCK`]) go at `offset`, the end of
/// everything written before, never below it.
#[derive(Debug)]
pub struct Write {
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// Where each body's frame is.
    pub ats: Vec<At>,
    /// Bytes besides the frames: header, padding.
    pub overhead: u64,
}

impl Layout {
    pub fn new(epoch: u64) -> Layout {
        Layout {
            epoch,
            end: 0,
            next_seq: 1,
        }
    }

    /// The next write, holding `bodies` (the header first if nothing was
    /// written yet), padded with zeros to a block boundary. The layout
    /// moves past it: call it once per write actually made (a failed
    /// write abandons the whole segment).
    pub fn write<'a>(&mut self, bodies: impl IntoIterator<Item = &'a [u8]>) -> Write {
        let mut bytes = if self.end == 0 {
            header(self.epoch)
        } else {
            Vec::new()
        };
        let mut ats = Vec::new();
        let mut framed = 0u64;
        for body in bodies {
            let at = At {
                offset: self.end + bytes.len() as u64,
                len: (FRAME_HEADER + body.len()) as u32,
            };
            frame(self.epoch, self.next_seq, body, &mut bytes);
            self.next_seq += 1;
            framed += u64::from(at.len);
            ats.push(at);
        }
        // Zeros, from a fresh allocation: never bytes an earlier write
        // left in a buffer.
        bytes.resize(align_up(bytes.len()), 0);
        let offset = self.end;
        self.end += bytes.len() as u64;
        Write {
            offset,
            overhead: bytes.len() as u64 - framed,
            bytes,
            ats,
        }
    }
}

/// `n` rounded up to a multiple of [`BLOCK`].
pub fn align_up(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// The first block boundary after `pos`.
fn next_block(pos: usize) -> usize {
    (pos / BLOCK + 1) * BLOCK
}

fn zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Where a record was read: byte offset of its frame in the file and the
/// frame's length (so it can be read again, to carry it forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub offset: u64,
    pub len: u32,
}

/// Something wrong in the middle of a segment (not a torn tail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Bytes `offset..resumed` are not valid frames; reading went on at
    /// `resumed`. `lost` frames (by sequence number) were in between.
    Skipped {
        offset: u64,
        resumed: u64,
        lost: u64,
    },
    /// A frame that passes its checksum but whose body is not a record.
    Unreadable { offset: u64 },
    /// Bad bytes from `offset` that a torn write cannot explain, with
    /// nothing valid after them (or, in format 1, nothing trusted).
    Garbage { offset: u64 },
}

impl Damage {
    pub fn offset(&self) -> u64 {
        match self {
            Damage::Skipped { offset, .. }
            | Damage::Unreadable { offset }
            | Damage::Garbage { offset } => *offset,
        }
    }
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// 2 or 1 (see the module documentation).
    pub format: u8,
    pub epoch: u64,
    pub records: Vec<(Record, At)>,
    /// Where a torn tail starts (nothing in it was confirmed).
    pub torn_at: Option<u64>,
    /// Corruption: non-empty means the file must be kept for an operator.
    pub damage: Vec<Damage>,
}

/// Reads every record of a segment's bytes (module documentation).
pub fn scan(buf: &[u8]) -> Scan {
    match read_header(buf) {
        Some(epoch) => scan_v2(buf, epoch),
        None => scan_v1(buf),
    }
}

fn scan_v2(buf: &[u8], epoch: u64) -> Scan {
    let mut scan = Scan {
        format: 2,
        epoch,
        ..Scan::default()
    };
    let mut pos = BLOCK;
    let mut next = 1u64;
    while pos < buf.len() {
        if let Some((seq, body)) = frame_at(&buf[pos..], epoch)
            && seq == next
        {
            scan.take(pos, body);
            pos += FRAME_HEADER + body.len();
            next += 1;
            continue;
        }
        let block_end = next_block(pos).min(buf.len());
        if zero(&buf[pos..block_end]) {
            pos = block_end;
            continue;
        }
        if let Some((at, seq)) = resync(buf, pos, epoch, next) {
            scan.damage.push(Damage::Skipped {
                offset: pos as u64,
                resumed: at as u64,
                lost: seq - next,
            });
            pos = at;
            next = seq;
            continue;
        }
        if torn(buf, pos, next) {
            scan.torn_at = Some(pos as u64);
        } else {
            scan.damage.push(Damage::Garbage { offset: pos as u64 });
        }
        break;
    }
    scan
}

impl Scan {
    fn take(&mut self, pos: usize, body: &[u8]) {
        let at = At {
            offset: pos as u64,
            len: (FRAME_HEADER + body.len()) as u32,
        };
        match Record::decode(body) {
            Some(record) => self.records.push((record, at)),
            None => self.damage.push(Damage::Unreadable { offset: pos as u64 }),
        }
    }
}

/// The first place at or after `from` where a frame valid under `epoch`
/// with a sequence number of at least `next` starts: (offset, seq).
fn resync(buf: &[u8], from: usize, epoch: u64, next: u64) -> Option<(usize, u64)> {
    // No segment holds more frames than it has bytes for headers.
    let most = next + (buf.len() / FRAME_HEADER) as u64;
    (from..buf.len().saturating_sub(FRAME_HEADER)).find_map(|at| {
        let seq = u64::from_le_bytes(buf[at + 8..at + 16].try_into().ok()?);
        if seq < next || seq > most {
            return None;
        }
        frame_at(&buf[at..], epoch)
            .filter(|(s, _)| *s == seq)
            .map(|_| (at, seq))
    })
}

/// Whether the bytes from `pos` (where no valid frame is, and none follows)
/// can be what a torn final write leaves: frames of that write, with
/// sequence numbers from `next` on, some of their sectors on disk and the
/// others reading as zeros, then the write's zero padding.
fn torn(buf: &[u8], mut pos: usize, mut next: u64) -> bool {
    // A sector wholly zero was not written: its bytes are unknown.
    let written = |at: usize| {
        let s = at / SECTOR * SECTOR;
        !zero(&buf[s..(s + SECTOR).min(buf.len())])
    };
    loop {
        if pos >= buf.len() || zero(&buf[pos..]) {
            return true;
        }
        let field = |range: std::ops::Range<usize>| -> Option<u64> {
            let bytes = buf.get(pos + range.start..pos + range.end)?;
            if !(pos + range.start..pos + range.end).all(written) {
                return None;
            }
            let mut b = [0u8; 8];
            b[..bytes.len()].copy_from_slice(bytes);
            Some(u64::from_le_bytes(b))
        };
        let len = field(0..4);
        let seq = field(8..16);
        match len {
            // The write's padding: the write ends here, and a torn write
            // is the last one: nothing but zeros may follow.
            Some(0) => return zero(&buf[pos..]),
            Some(l) if l as usize > MAX_RECORD => return false,
            _ => {}
        }
        if seq.is_some_and(|s| s != next) {
            return false;
        }
        let Some(len) = len else {
            // The header's sector never reached the disk: where the next
            // frame starts is unknown, and so is anything after it.
            return true;
        };
        pos += FRAME_HEADER + len as usize;
        next += 1;
    }
}

fn scan_v1(buf: &[u8]) -> Scan {
    let mut scan = Scan {
        format: 1,
        ..Scan::default()
    };
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let frame = (|| {
            let len = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
            if len == 0 || len > MAX_RECORD {
                return None;
            }
            let body = rest.get(8..8 + len)?;
            (crc32(body) == crc).then_some(body)
        })();
        match frame {
            Some(body) => {
                let at = At {
                    offset: pos as u64,
                    len: (8 + body.len()) as u32,
                };
                match Record::decode(body) {
                    Some(record) => scan.records.push((record, at)),
                    None => scan.damage.push(Damage::Unreadable { offset: pos as u64 }),
                }
                pos += 8 + body.len();
            }
            None => {
                if zero(rest) || rest.len() <= LEGACY_TAIL {
                    scan.torn_at = Some(pos as u64);
                } else {
                    scan.damage.push(Damage::Garbage { offset: pos as u64 });
                }
                break;
            }
        }
    }
    scan
}

#[cfg(test)]
pub(super) mod tests;
