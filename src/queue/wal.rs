//! The write-ahead log of one owner shard, and recovery at start.
//!
//! # Records
//!
//! `[len: u32 LE][crc32(body): u32 LE][body: len bytes]`, body =
//! `kind: u8` then for `Enqueue` (1): `id: u64`, queue (u16 length + UTF-8),
//! target JSON (u32 length + bytes), the consumer's `d` JSON (u32 length +
//! bytes); for `Deliver` (2) and `Ack` (3): `id: u64`. Ids are unique for
//! the life of the data directory, so an ack needs no queue name and
//! recovery is "every enqueue without an ack", whatever the file order.
//!
//! # Files
//!
//! `<data-dir>/wal-<boot ms>-<shard>-<segment>.log`. Each shard appends to
//! its own segment through glommio's direct-I/O stream writer; a segment
//! past `--queue-segment-bytes` is closed and the next one opened. A segment is
//! deleted once every message enqueued in it is acked and every older
//! segment of the shard is gone (so an ack record is never deleted before
//! the enqueue it cancels).
//!
//! # Fsync policy ([`FsyncPolicy`], `--fsync`)
//!
//! - `group` (default): the writer takes every record appended since its
//!   last write, writes them, and one `fdatasync` covers every QUEUE
//!   confirm waiting among them. A confirmed message survives `kill -9`,
//!   a kernel crash and a power cut (given a drive that honours flushes).
//! - `each`: one `fdatasync` per enqueue (group commit off). Same
//!   guarantee, far fewer confirms per second; kept for measuring.
//! - `none`: records are written with direct I/O but never synced; the
//!   confirm follows the write. Survives `kill -9` of the server; a power
//!   cut or a drive with a volatile write cache may lose confirmed
//!   messages.
//!
//! # Recovery
//!
//! At start, before any shard runs, every segment is read with plain
//! buffered I/O. Each file is read up to its first record that is cut off
//! or fails its checksum (a torn tail: the direct-I/O writer pads partial
//! blocks, so zeros or stale bytes follow the last good record). The live
//! messages are rewritten, per owning shard under the current shard count,
//! into fresh segments and synced; only then are the old files deleted.
//! A crash in between leaves both, and the duplicates collapse by id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use glommio::io::{DmaFile, DmaStreamWriter, DmaStreamWriterBuilder};
use serde_json::Value;

use super::errors;
use super::state::{Message, MsgId};
use crate::config::{Config, FsyncPolicy};
use crate::query::Query;
use crate::shard::{ConnRef, Dispatch, Shard, ShardMsg};

/// The direct-I/O writer's buffer. A sync writes the whole partly filled
/// buffer again, so it is kept small: 16 KiB per sync at most.
const WRITE_BUFFER: usize = 16 << 10;
/// A record longer than this is taken for garbage.
const MAX_RECORD: usize = 256 << 20;

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
    Deliver {
        id: MsgId,
    },
    Ack {
        id: MsgId,
    },
}

impl Record {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Record::Enqueue {
                id,
                queue,
                target,
                d,
            } => {
                out.push(ENQUEUE);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&(queue.len() as u16).to_le_bytes());
                out.extend_from_slice(queue.as_bytes());
                for v in [target, d] {
                    let bytes = serde_json::to_vec(v).unwrap_or_default();
                    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(&bytes);
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
        let len = (out.len() - start - 8) as u32;
        let crc = crc32(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the records of `buf` up to the first bad one; returns them
    /// and the length of the good prefix.
    pub fn decode_all(buf: &[u8]) -> (Vec<Record>, usize) {
        let mut records = Vec::new();
        let mut pos = 0;
        while let Some((record, used)) = Record::decode(&buf[pos..]) {
            records.push(record);
            pos += used;
        }
        (records, pos)
    }

    fn decode(buf: &[u8]) -> Option<(Record, usize)> {
        let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
        if len == 0 || len > MAX_RECORD {
            return None;
        }
        let body = buf.get(8..8 + len)?;
        if crc32(body) != crc {
            return None;
        }
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
        Some((record, 8 + len))
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

/// CRC-32 (IEEE), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
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
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------
// Recovery (plain std I/O, before the shards start)
// ---------------------------------------------------------------------------

/// A live message found in the log.
#[derive(Debug)]
pub struct RecoveredMsg {
    pub queue: Arc<str>,
    pub msg: Arc<Message>,
}

/// What each shard starts with.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per shard: its live messages, in id order, and the segment (number 0
    /// of this boot) that now holds them.
    pub shards: Vec<Vec<RecoveredMsg>>,
    pub boot: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {0} is locked by another singyeong process (each process needs its own --data-dir)"
    )]
    Locked(PathBuf),
}

/// Data directories this process holds the lock of.
static LOCKS: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

/// Creates (if `create`) and locks the data directory. Idempotent.
pub fn lock_dir(dir: &Path, create: bool) -> Result<bool, WalError> {
    let io = |source| WalError::Io {
        dir: dir.to_owned(),
        source,
    };
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    if locks.iter().any(|(d, _)| d == dir) {
        return Ok(true);
    }
    if !dir.exists() {
        if !create {
            return Ok(false);
        }
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(WalError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    locks.push((dir.to_owned(), file));
    Ok(true)
}

fn segment_name(boot: u64, shard: usize, seg: u64) -> String {
    format!("wal-{boot:013}-{shard:03}-{seg:06}.log")
}

/// Reads every segment of `config.data_dir` (if it exists), keeps the
/// messages never acked, and rewrites them into one segment per owning
/// shard. Does nothing without durability or a data directory.
pub fn recover(config: &Config) -> Result<Recovered, WalError> {
    let boot = crate::shard::now_ms().max(0) as u64;
    let mut recovered = Recovered {
        shards: (0..config.shards).map(|_| Vec::new()).collect(),
        boot,
    };
    let dir = &config.data_dir;
    if !config.durable || !lock_dir(dir, false)? {
        return Ok(recovered);
    }
    let io = |source| WalError::Io {
        dir: dir.to_owned(),
        source,
    };
    let mut old: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    old.sort();
    let mut enqueued: BTreeMap<MsgId, (Arc<str>, Value, Value)> = BTreeMap::new();
    let mut acked: HashSet<MsgId> = HashSet::new();
    for path in &old {
        let mut buf = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io)?;
        let (records, good) = Record::decode_all(&buf);
        if good < buf.len() && buf[good..].iter().any(|&b| b != 0) {
            tracing::warn!(
                file = %path.display(),
                good_bytes = good,
                dropped_bytes = buf.len() - good,
                "log ends in a torn or corrupt record; recovered up to the last good one"
            );
        }
        for record in records {
            match record {
                Record::Enqueue {
                    id,
                    queue,
                    target,
                    d,
                } => {
                    enqueued.insert(id, (queue, target, d));
                }
                Record::Ack { id } => {
                    acked.insert(id);
                }
                Record::Deliver { .. } => {}
            }
        }
    }
    let mut rewritten: Vec<Vec<u8>> = vec![Vec::new(); config.shards];
    let mut count = 0usize;
    for (id, (queue, target_json, d)) in enqueued {
        if acked.contains(&id) {
            continue;
        }
        let Ok(target) = Query::parse(&target_json) else {
            tracing::warn!(id, "recovered message has an unparsable target; dropped");
            continue;
        };
        let shard = super::owner::owner(&queue, config.shards);
        Record::Enqueue {
            id,
            queue: queue.clone(),
            target: target_json,
            d: d.clone(),
        }
        .encode(&mut rewritten[shard]);
        recovered.shards[shard].push(RecoveredMsg {
            queue,
            msg: Arc::new(Message {
                id,
                target: Arc::new(target),
                packet: Arc::new(Dispatch { t: "QUEUE", d }),
            }),
        });
        count += 1;
    }
    for (shard, bytes) in rewritten.iter().enumerate() {
        if bytes.is_empty() {
            continue;
        }
        let path = dir.join(segment_name(boot, shard, 0));
        let mut f = File::create(&path).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
    }
    sync_dir(dir).map_err(io)?;
    for path in &old {
        std::fs::remove_file(path).map_err(io)?;
    }
    sync_dir(dir).map_err(io)?;
    if !old.is_empty() {
        tracing::info!(
            files = old.len(),
            messages = count,
            dir = %dir.display(),
            "recovered queues from the log"
        );
    }
    Ok(recovered)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

// ---------------------------------------------------------------------------
// The running log of one shard
// ---------------------------------------------------------------------------

struct Pending {
    seg: u64,
    bytes: Vec<u8>,
    confirm: Option<(ConnRef, Arc<Dispatch>)>,
}

/// The shard's log as the owner code sees it: [`Wal::append`] is
/// synchronous; [`write_loop`] does the I/O.
pub struct Wal {
    policy: FsyncPolicy,
    segment_bytes: u64,
    pending: Vec<Pending>,
    waker: Option<Waker>,
    failed: bool,
    /// The segment new records go to, and how full it is.
    seg: u64,
    seg_bytes: u64,
    /// Unacked enqueues per segment.
    live: BTreeMap<u64, u64>,
    msg_seg: HashMap<MsgId, u64>,
    /// Counters for `GET /api/v1/queues`.
    records: u64,
    /// Records written (and synced, per the policy).
    written: u64,
    bytes: u64,
    syncs: u64,
    confirms: u64,
}

impl Wal {
    pub fn new(policy: FsyncPolicy, segment_bytes: u64, recovered: &[RecoveredMsg]) -> Wal {
        let mut live = BTreeMap::new();
        let mut msg_seg = HashMap::new();
        if !recovered.is_empty() {
            live.insert(0, recovered.len() as u64);
            for r in recovered {
                msg_seg.insert(r.msg.id, 0);
            }
        }
        Wal {
            policy,
            segment_bytes,
            pending: Vec::new(),
            waker: None,
            failed: false,
            seg: 1,
            seg_bytes: 0,
            live,
            msg_seg,
            records: 0,
            written: 0,
            bytes: 0,
            syncs: 0,
            confirms: 0,
        }
    }

    pub fn stats(&self, shard: usize) -> Value {
        serde_json::json!({
            "shard": shard,
            "policy": format!("{:?}", self.policy).to_lowercase(),
            "records": self.records,
            "written": self.written,
            "bytes": self.bytes,
            "syncs": self.syncs,
            "confirms": self.confirms,
            "segments": self.live.len(),
            "failed": self.failed,
        })
    }

    /// Queues a record (and the confirm to send once it is durable).
    /// False if the log has failed: the caller must not confirm.
    pub fn append(&mut self, record: &Record, confirm: Option<(ConnRef, Arc<Dispatch>)>) -> bool {
        if self.failed {
            return false;
        }
        if self.seg_bytes >= self.segment_bytes {
            self.seg += 1;
            self.seg_bytes = 0;
        }
        match record {
            Record::Enqueue { id, .. } => {
                *self.live.entry(self.seg).or_default() += 1;
                self.msg_seg.insert(*id, self.seg);
            }
            Record::Ack { id } => {
                if let Some(seg) = self.msg_seg.remove(id)
                    && let Some(n) = self.live.get_mut(&seg)
                {
                    *n = n.saturating_sub(1);
                }
            }
            Record::Deliver { .. } => {}
        }
        let mut bytes = Vec::with_capacity(64);
        record.encode(&mut bytes);
        self.seg_bytes += bytes.len() as u64;
        self.records += 1;
        self.bytes += bytes.len() as u64;
        self.pending.push(Pending {
            seg: self.seg,
            bytes,
            confirm,
        });
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        true
    }
}

/// Writes what [`Wal::append`] queued, syncing per the policy, and sends
/// the confirms the sync covers. Runs for the life of the shard.
pub async fn write_loop(shard: Rc<Shard>, boot: u64) {
    let dir = shard.config.data_dir.clone();
    // Segment 0 of this boot holds what recovery rewrote (if anything).
    let mut open: Option<(u64, DmaStreamWriter)> = None;
    loop {
        let batch = std::future::poll_fn(|cx| {
            let mut wal = shard.queues.wal.borrow_mut();
            let Some(wal) = wal.as_mut() else {
                return Poll::Ready(None);
            };
            if wal.pending.is_empty() {
                wal.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let take = match wal.policy {
                FsyncPolicy::Each => {
                    // Up to and including the first record with a confirm.
                    let n = wal
                        .pending
                        .iter()
                        .position(|p| p.confirm.is_some())
                        .map_or(wal.pending.len(), |i| i + 1);
                    wal.pending.drain(..n).collect()
                }
                _ => std::mem::take(&mut wal.pending),
            };
            Poll::Ready(Some((take, wal.policy)))
        })
        .await;
        let Some((batch, policy)) = batch else {
            return;
        };
        match write_batch(&shard, &dir, boot, &mut open, &batch, policy).await {
            Ok(()) => {
                if let Some(w) = shard.queues.wal.borrow_mut().as_mut() {
                    w.syncs += u64::from(policy != FsyncPolicy::None);
                    w.written += batch.len() as u64;
                    w.confirms += batch.iter().filter(|p| p.confirm.is_some()).count() as u64;
                }
                for p in batch {
                    if let Some((to, confirm)) = p.confirm {
                        shard.on_shard(
                            to.shard,
                            ShardMsg::Deliver {
                                target: to,
                                packet: confirm,
                            },
                        );
                    }
                }
                delete_done(&shard, &dir, boot, open.as_ref().map(|o| o.0)).await;
            }
            Err(e) => {
                tracing::error!(shard = shard.id, error = %e, dir = %dir.display(),
                    "queue log write failed; QUEUE is refused from now on");
                if let Some(w) = shard.queues.wal.borrow_mut().as_mut() {
                    w.failed = true;
                }
                for p in batch {
                    if let Some((to, _)) = p.confirm {
                        shard.on_shard(
                            to.shard,
                            ShardMsg::Queue(super::msg::QueueMsg::Invalid {
                                to,
                                error: errors::STORAGE_FAILED,
                                extra: Value::String(e.to_string()),
                            }),
                        );
                    }
                }
                return;
            }
        }
    }
}

async fn write_batch(
    shard: &Shard,
    dir: &Path,
    boot: u64,
    open: &mut Option<(u64, DmaStreamWriter)>,
    batch: &[Pending],
    policy: FsyncPolicy,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures_lite::AsyncWriteExt;
    for p in batch {
        if open.as_ref().is_none_or(|o| o.0 != p.seg) {
            if let Some((_, mut w)) = open.take() {
                w.close().await?;
            }
            lock_dir(dir, true)?;
            let path = dir.join(segment_name(boot, shard.id, p.seg));
            let file = DmaFile::create(&path).await?;
            sync_dir(dir)?;
            let writer = DmaStreamWriterBuilder::new(file)
                .with_buffer_size(WRITE_BUFFER)
                .with_write_behind(4)
                .build();
            *open = Some((p.seg, writer));
        }
        let (_, w) = open.as_mut().expect("opened above");
        w.write_all(&p.bytes).await?;
    }
    if let Some((_, w)) = open.as_mut() {
        match policy {
            FsyncPolicy::None => w.flush().await?,
            FsyncPolicy::Group | FsyncPolicy::Each => {
                w.sync().await?;
            }
        }
    }
    Ok(())
}

/// Deletes the oldest segments whose messages are all acked.
async fn delete_done(shard: &Shard, dir: &Path, boot: u64, current: Option<u64>) {
    loop {
        let seg = {
            let mut wal = shard.queues.wal.borrow_mut();
            let Some(wal) = wal.as_mut() else { return };
            let Some((&seg, &live)) = wal.live.first_key_value() else {
                return;
            };
            if live > 0 || Some(seg) >= current || seg >= wal.seg {
                return;
            }
            wal.live.pop_first();
            seg
        };
        let path = dir.join(segment_name(boot, shard.id, seg));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot delete acked log segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Vec<Record> {
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
    fn records_round_trip() {
        let mut buf = Vec::new();
        for r in sample() {
            r.encode(&mut buf);
        }
        let (records, good) = Record::decode_all(&buf);
        assert_eq!(records, sample());
        assert_eq!(good, buf.len());
    }

    #[test]
    fn torn_or_corrupt_tail_stops_at_last_good_record() {
        let mut buf = Vec::new();
        for r in sample() {
            r.encode(&mut buf);
        }
        let full = buf.len();
        // Cut anywhere inside the last record: the first two survive.
        let mut last = Vec::new();
        sample()[2].encode(&mut last);
        for cut in full - last.len()..full {
            let (records, good) = Record::decode_all(&buf[..cut]);
            assert_eq!(records.len(), 2, "cut at {cut}");
            assert_eq!(good, full - last.len());
        }
        // Padding after the end.
        let mut padded = buf.clone();
        padded.extend_from_slice(&[0; 4096]);
        assert_eq!(Record::decode_all(&padded).0.len(), 3);
        // A flipped bit in the second record's body.
        let mut first = Vec::new();
        sample()[0].encode(&mut first);
        let mut bad = buf.clone();
        bad[first.len() + 9] ^= 0x40;
        assert_eq!(Record::decode_all(&bad).0.len(), 1);
    }

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
