//! The write-ahead log of one owner shard, and recovery at start.
//!
//! # Records
//!
//! `[len: u32 LE][crc32(body): u32 LE][body: len bytes]`, body =
//! `kind: u8` then for `Enqueue` (1): `id: u64`, queue (u16 length + UTF-8),
//! target JSON (u32 length + bytes), the consumer's `d` JSON (u32 length +
//! bytes); for `Ack` (3): `id: u64`. Ids are unique for the life of the
//! data directory, so an ack needs no queue name and recovery is "every
//! enqueue without an ack", whatever the file order (which also makes
//! writing a record twice harmless).
//!
//! `Deliver` (2, `id: u64`) records are no longer written, and recovery
//! reads and ignores the ones older logs hold. Nothing a restart restores
//! depends on deliveries: the contract (§7) has no delivery-attempt limit
//! (a message is redelivered until acked, and dead-lettered only when no
//! connected client matches its target), every message in flight at a
//! crash is redelivered anyway (its consumer's connection is gone), and
//! the per-queue counters start afresh with the process. Writing one
//! record per delivery would only cost log bandwidth.
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
//! # Write failures
//!
//! A confirm is sent only after the write (and sync) covering its record
//! succeeded. When a write fails, the segment it went to is abandoned
//! (never written again; recovery reads it up to its last good record)
//! and the whole batch is written again, in a fresh segment, at once. If
//! that fails too, the log is *failed*: the producers still waiting get
//! `queue storage failed` (with the message's id: it stays queued and is
//! written when the log recovers, so it may still arrive; at least once),
//! new QUEUEs are refused with the same error (without an id: not queued),
//! and every second the writer tries again in a fresh segment. The first
//! write that succeeds ends the failed state. Acks are never refused: they
//! wait in memory and are written on recovery.
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
use std::time::Duration;

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
    /// Read from logs of earlier versions, never written (module
    /// documentation, Records).
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
                // Written by earlier versions; nothing to restore from it
                // (see the module documentation).
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
        let bytes = super::state::footprint(&d, &target_json);
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
                bytes,
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

/// A record appended and not yet written.
struct Pending {
    /// The segment it goes to.
    seg: u64,
    /// The message it enqueues, if it is an enqueue.
    enqueue: Option<MsgId>,
    bytes: Vec<u8>,
    /// The QUEUE_CONFIRM to send once it is durable, and to whom.
    confirm: Option<Confirm>,
}

type Confirm = (ConnRef, Arc<Dispatch>);

/// Consecutive failed writes after which QUEUE is refused: the first
/// failure is retried at once in a fresh segment (the confirms wait), the
/// second puts the log in the failed state.
const GIVE_UP_AFTER: u32 = 2;
/// How often a failed log tries again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The shard's log as the owner code sees it: [`Wal::append`] is
/// synchronous; [`write_loop`] does the I/O. Everything here is
/// bookkeeping without I/O, so the failure handling is unit-tested.
pub struct Wal {
    policy: FsyncPolicy,
    segment_bytes: u64,
    pending: Vec<Pending>,
    waker: Option<Waker>,
    /// Consecutive failed writes (0: the last write succeeded).
    failures: u32,
    /// The segment new records go to, and how full it is.
    seg: u64,
    seg_bytes: u64,
    /// Unacked enqueues per segment; every segment this boot may have
    /// created has an entry (possibly 0) until it is deleted.
    live: BTreeMap<u64, u64>,
    /// The segment holding each unacked message: where its enqueue was last
    /// written, or where it is queued to be if it never was.
    msg_seg: HashMap<MsgId, u64>,
    /// Counters for `GET /api/v1/queues`.
    records: u64,
    /// Records written (and synced, per the policy). Records are written
    /// in append order, so record number `n` (see [`Wal::append`]) is
    /// durable once `written >= n`.
    written: u64,
    bytes: u64,
    syncs: u64,
    confirms: u64,
    write_errors: u64,
    /// QUEUE confirms turned into `queue storage failed`.
    refused: u64,
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
            failures: 0,
            seg: 1,
            seg_bytes: 0,
            live,
            msg_seg,
            records: 0,
            written: 0,
            bytes: 0,
            syncs: 0,
            confirms: 0,
            write_errors: 0,
            refused: 0,
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
            "failed": self.is_failed(),
            "write_errors": self.write_errors,
            "refused": self.refused,
        })
    }

    /// The log cannot be written: new messages are refused until a retry
    /// succeeds.
    pub fn is_failed(&self) -> bool {
        self.failures >= GIVE_UP_AFTER
    }

    /// How many records are durable: record number `n` is once this is at
    /// least `n`.
    pub fn durable_through(&self) -> u64 {
        self.written
    }

    /// Queues a record (and the confirm to send once it is durable) and
    /// returns its number. An enqueue is refused (`None`) while the log is
    /// failed: the caller must not queue or confirm it. Acks are always
    /// taken: they are written once the log recovers.
    pub fn append(&mut self, record: &Record, confirm: Option<Confirm>) -> Option<u64> {
        if self.is_failed() && matches!(record, Record::Enqueue { .. }) {
            return None;
        }
        if self.seg_bytes >= self.segment_bytes {
            self.roll();
        }
        let live = self.live.entry(self.seg).or_insert(0);
        let mut enqueue = None;
        match record {
            Record::Enqueue { id, .. } => {
                *live += 1;
                self.msg_seg.insert(*id, self.seg);
                enqueue = Some(*id);
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
            enqueue,
            bytes,
            confirm,
        });
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Some(self.records)
    }

    /// Starts a fresh segment for what is appended from now on.
    fn roll(&mut self) {
        self.seg += 1;
        self.seg_bytes = 0;
        self.live.entry(self.seg).or_insert(0);
    }

    /// The next records to write (in append order): everything appended,
    /// or with `--fsync each` up to the next one carrying a confirm.
    fn take_batch(&mut self) -> Vec<Pending> {
        let n = match self.policy {
            FsyncPolicy::Each => self
                .pending
                .iter()
                .position(|p| p.confirm.is_some())
                .map_or(self.pending.len(), |i| i + 1),
            FsyncPolicy::Group | FsyncPolicy::None => self.pending.len(),
        };
        self.pending.drain(..n).collect()
    }

    /// `batch` is durable: returns the confirms to send.
    fn batch_written(&mut self, batch: Vec<Pending>) -> Vec<Confirm> {
        self.failures = 0;
        self.syncs += u64::from(self.policy != FsyncPolicy::None);
        self.written += batch.len() as u64;
        let mut confirms = Vec::new();
        for p in batch {
            // A message rewritten after a failure now lives in the segment
            // it was rewritten to.
            if let Some(id) = p.enqueue
                && let Some(seg) = self.msg_seg.get_mut(&id)
                && *seg != p.seg
            {
                if let Some(n) = self.live.get_mut(seg) {
                    *n = n.saturating_sub(1);
                }
                *seg = p.seg;
                *self.live.entry(p.seg).or_insert(0) += 1;
            }
            confirms.extend(p.confirm);
        }
        self.confirms += confirms.len() as u64;
        confirms
    }

    /// Writing `batch` failed: nothing in it counts as durable. It goes
    /// back in front of what was appended since, all of it bound for a
    /// fresh segment (the one that failed is never written again). Once
    /// the log is failed, returns the confirms that will not be sent: the
    /// callers get `queue storage failed` instead of waiting. Their
    /// messages stay queued and are written when the log recovers.
    fn batch_failed(&mut self, mut batch: Vec<Pending>) -> Vec<Confirm> {
        self.failures += 1;
        self.write_errors += 1;
        self.roll();
        batch.append(&mut self.pending);
        for p in &mut batch {
            p.seg = self.seg;
            self.seg_bytes += p.bytes.len() as u64;
        }
        self.pending = batch;
        if !self.is_failed() {
            return Vec::new();
        }
        let refused: Vec<Confirm> = self
            .pending
            .iter_mut()
            .filter_map(|p| p.confirm.take())
            .collect();
        self.refused += refused.len() as u64;
        refused
    }

    /// The oldest segment that may be deleted now: all its messages acked,
    /// every older one gone, and older than `current` (the one open) and
    /// the one new records go to.
    fn deletable(&mut self, current: Option<u64>) -> Option<u64> {
        let (&seg, &live) = self.live.first_key_value()?;
        if live > 0 || Some(seg) >= current || seg >= self.seg {
            return None;
        }
        self.live.pop_first();
        Some(seg)
    }
}

/// Writes what [`Wal::append`] queued, syncing per the policy, and sends
/// the confirms the sync covers. A failed write is retried at once in a
/// fresh segment; if that fails too, the log is failed: waiting confirms
/// become `queue storage failed`, new QUEUEs are refused, and the writer
/// tries again every [`RETRY_EVERY`] (each time in a fresh segment) until a
/// write succeeds. Runs for the life of the shard.
pub async fn write_loop(shard: Rc<Shard>, boot: u64) {
    let dir = shard.config.data_dir.clone();
    // Segment 0 of this boot holds what recovery rewrote (if anything).
    let mut open: Option<(u64, DmaStreamWriter)> = None;
    loop {
        if shard.queues.log_failed() {
            glommio::timer::sleep(RETRY_EVERY).await;
        }
        let batch = std::future::poll_fn(|cx| {
            let mut wal = shard.queues.wal.borrow_mut();
            let Some(wal) = wal.as_mut() else {
                return Poll::Ready(None);
            };
            if wal.pending.is_empty() {
                wal.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Some((wal.take_batch(), wal.policy)))
        })
        .await;
        let Some((batch, policy)) = batch else {
            return;
        };
        match write_batch(&shard, &dir, boot, &mut open, &batch, policy).await {
            Ok(()) => {
                let confirms = {
                    let mut wal = shard.queues.wal.borrow_mut();
                    let Some(wal) = wal.as_mut() else { return };
                    if wal.is_failed() {
                        tracing::info!(shard = shard.id, dir = %dir.display(),
                            "queue log writable again; QUEUE is accepted again");
                    }
                    wal.batch_written(batch)
                };
                for (to, confirm) in confirms {
                    shard.on_shard(
                        to.shard,
                        ShardMsg::Deliver {
                            target: to,
                            packet: confirm,
                        },
                    );
                }
                delete_done(&shard, &dir, boot, open.as_ref().map(|o| o.0)).await;
            }
            Err(e) => {
                // Whatever reached the segment is not trusted: it is never
                // written again, and the batch goes to a fresh one.
                open = None;
                let (refused, was_failed, failed) = {
                    let mut wal = shard.queues.wal.borrow_mut();
                    let Some(wal) = wal.as_mut() else { return };
                    let was_failed = wal.is_failed();
                    let refused = wal.batch_failed(batch);
                    (refused, was_failed, wal.is_failed())
                };
                if !failed {
                    tracing::warn!(shard = shard.id, error = %e, dir = %dir.display(),
                        "queue log write failed; retrying in a fresh segment");
                } else if !was_failed {
                    tracing::error!(shard = shard.id, error = %e, dir = %dir.display(),
                        retry_ms = RETRY_EVERY.as_millis() as u64,
                        "queue log cannot be written; QUEUE is refused until a retry succeeds");
                } else {
                    tracing::debug!(shard = shard.id, error = %e, "queue log retry failed");
                }
                let error = e.to_string();
                for (to, confirm) in refused {
                    let mut extra = confirm.d.clone();
                    if let Some(o) = extra.as_object_mut() {
                        o.insert("error".into(), Value::String(error.clone()));
                    }
                    shard.on_shard(
                        to.shard,
                        ShardMsg::Queue(super::msg::QueueMsg::Invalid {
                            to,
                            error: errors::STORAGE_FAILED,
                            extra,
                        }),
                    );
                }
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
            let file = DmaFile::create(&path).await.map_err(|e| {
                std::io::Error::other(format!("cannot create {}: {e}", path.display()))
            })?;
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
        let Some(seg) = shard
            .queues
            .wal
            .borrow_mut()
            .as_mut()
            .and_then(|w| w.deletable(current))
        else {
            return;
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

    fn enqueue(id: MsgId) -> Record {
        Record::Enqueue {
            id,
            queue: "jobs".into(),
            target: json!({"application": "a"}),
            d: json!({"nonce": id, "payload": {"queue": "jobs", "id": id.to_string(), "payload": "x"}}),
        }
    }

    fn confirm(id: MsgId) -> Option<Confirm> {
        let to = ConnRef {
            shard: 0,
            client: 1,
            conn: 1,
        };
        let d = json!({"queue": "jobs", "id": id.to_string(), "nonce": id});
        Some((
            to,
            Arc::new(Dispatch {
                t: "QUEUE_CONFIRM",
                d,
            }),
        ))
    }

    fn confirmed(confirms: &[Confirm]) -> Vec<String> {
        confirms
            .iter()
            .map(|(_, c)| c.d["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn confirms_only_what_was_written() {
        let mut wal = Wal::new(FsyncPolicy::Group, 1 << 20, &[]);
        assert_eq!(wal.append(&enqueue(1), confirm(1)), Some(1));
        assert_eq!(wal.append(&enqueue(2), confirm(2)), Some(2));
        let batch = wal.take_batch();
        assert_eq!(batch.len(), 2);
        assert_eq!(wal.append(&Record::Ack { id: 1 }, None), Some(3));
        assert_eq!(wal.durable_through(), 0);
        assert_eq!(confirmed(&wal.batch_written(batch)), ["1", "2"]);
        assert_eq!(wal.durable_through(), 2, "the ack is not written yet");
        let batch = wal.take_batch();
        assert!(wal.batch_written(batch).is_empty());
        assert_eq!(wal.durable_through(), 3);
    }

    #[test]
    fn each_policy_takes_one_confirm_per_batch() {
        let mut wal = Wal::new(FsyncPolicy::Each, 1 << 20, &[]);
        wal.append(&Record::Ack { id: 9 }, None);
        wal.append(&enqueue(1), confirm(1));
        wal.append(&enqueue(2), confirm(2));
        assert_eq!(wal.take_batch().len(), 2);
        assert_eq!(wal.take_batch().len(), 1);
        assert!(wal.take_batch().is_empty());
    }

    #[test]
    fn a_failed_write_is_retried_in_a_fresh_segment_then_refuses_until_it_recovers() {
        let mut wal = Wal::new(FsyncPolicy::Group, 1 << 20, &[]);
        wal.append(&enqueue(1), confirm(1));
        wal.append(&enqueue(2), confirm(2));
        let batch = wal.take_batch();
        let first_seg = batch[0].seg;
        wal.append(&enqueue(3), confirm(3));

        // First failure: retried at once, in a fresh segment, confirms kept.
        assert!(wal.batch_failed(batch).is_empty());
        assert!(!wal.is_failed());
        assert_eq!(wal.write_errors, 1);
        let retry = wal.take_batch();
        let ids: Vec<_> = retry.iter().map(|p| p.enqueue).collect();
        assert_eq!(ids, [Some(1), Some(2), Some(3)], "in append order");
        assert!(retry.iter().all(|p| p.seg > first_seg));
        assert!(retry.iter().all(|p| p.confirm.is_some()));
        let second_seg = retry[0].seg;

        // Second failure in a row: failed; every waiting confirm is refused.
        assert_eq!(confirmed(&wal.batch_failed(retry)), ["1", "2", "3"]);
        assert!(wal.is_failed());
        assert_eq!(wal.append(&enqueue(4), confirm(4)), None, "QUEUE refused");
        assert_eq!(
            wal.append(&Record::Ack { id: 1 }, None),
            Some(4),
            "acks are kept for later"
        );
        assert_eq!(wal.durable_through(), 0);
        assert_eq!(wal.stats(0)["failed"], json!(true));
        assert_eq!(wal.stats(0)["refused"], json!(3));

        // A retry that fails again changes nothing but the segment.
        let batch = wal.take_batch();
        assert_eq!(batch.len(), 4);
        assert!(wal.batch_failed(batch).is_empty());
        assert!(wal.is_failed());

        // The retry that works: the messages are durable (unconfirmed: their
        // producers were told), the log takes new messages again.
        let batch = wal.take_batch();
        let third_seg = batch[0].seg;
        assert!(third_seg > second_seg);
        assert!(
            batch
                .iter()
                .all(|p| p.seg == third_seg && p.confirm.is_none())
        );
        assert!(wal.batch_written(batch).is_empty());
        assert!(!wal.is_failed());
        assert_eq!(wal.durable_through(), 4);
        assert_eq!(wal.append(&enqueue(5), confirm(5)), Some(5));
        assert_eq!(wal.stats(0)["failed"], json!(false));

        // The abandoned segments hold nothing live: they go, the one the
        // rewritten messages are in stays.
        assert_eq!(wal.msg_seg[&2], third_seg);
        assert_eq!(wal.live[&third_seg], 3, "2, 3 and 5; 1 is acked");
        let mut deleted = Vec::new();
        while let Some(seg) = wal.deletable(Some(third_seg)) {
            deleted.push(seg);
        }
        assert!(deleted.contains(&first_seg) && deleted.contains(&second_seg));
        assert!(deleted.iter().all(|s| *s < third_seg), "{deleted:?}");
    }

    #[test]
    fn a_segment_is_kept_while_its_messages_wait_to_be_rewritten() {
        let mut wal = Wal::new(FsyncPolicy::Group, 1 << 20, &[]);
        wal.append(&enqueue(1), confirm(1));
        let batch = wal.take_batch();
        let seg = batch[0].seg;
        assert_eq!(confirmed(&wal.batch_written(batch)), ["1"]);
        // 2 goes to the same segment, whose next write fails.
        wal.append(&enqueue(2), confirm(2));
        let batch = wal.take_batch();
        wal.batch_failed(batch);
        wal.append(&Record::Ack { id: 1 }, None);
        // 1 is acked, but 2 is not written anywhere yet: `seg` may hold
        // its only copy, so it stays even once a later segment is open.
        assert_eq!(wal.deletable(Some(seg + 5)), None);
        let batch = wal.take_batch();
        assert_eq!(batch.len(), 2);
        assert_eq!(confirmed(&wal.batch_written(batch)), ["2"]);
        assert_eq!(wal.deletable(Some(seg + 1)), Some(seg));
    }

    #[test]
    fn acked_segments_are_deleted_oldest_first_even_without_enqueues() {
        // Every record fills a segment.
        let mut wal = Wal::new(FsyncPolicy::Group, 16, &[]);
        wal.append(&enqueue(1), None);
        wal.append(&Record::Ack { id: 1 }, None); // acks only
        wal.append(&Record::Ack { id: 1 }, None); // acks only
        wal.append(&enqueue(3), None);
        let batch = wal.take_batch();
        wal.batch_written(batch);
        let current = wal.seg;
        assert_eq!(current, 4);
        let mut deleted = Vec::new();
        while let Some(seg) = wal.deletable(Some(current)) {
            deleted.push(seg);
        }
        assert_eq!(deleted, (1..current).collect::<Vec<_>>());
    }

    #[test]
    fn recovery_ignores_deliver_records_of_older_logs() {
        let dir = std::env::temp_dir().join(format!("singyeong-wal-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut buf = Vec::new();
        for r in [
            enqueue(1 << 8),
            Record::Deliver { id: 1 << 8 },
            enqueue(2 << 8),
            Record::Deliver { id: 2 << 8 },
            Record::Ack { id: 1 << 8 },
            Record::Deliver { id: 2 << 8 },
            enqueue(3 << 8),
        ] {
            r.encode(&mut buf);
        }
        std::fs::write(dir.join(segment_name(1, 0, 1)), &buf).unwrap();
        let flags = <crate::config::Flags as clap::Parser>::parse_from([
            "singyeong",
            "--shards",
            "1",
            "--data-dir",
            dir.to_str().unwrap(),
        ]);
        let config = Config::from_flags(flags).unwrap();
        let recovered = recover(&config).unwrap();
        let ids: Vec<MsgId> = recovered.shards[0].iter().map(|r| r.msg.id).collect();
        assert_eq!(ids, [2 << 8, 3 << 8]);
        // Rewritten into one fresh segment without them.
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let (records, _) = Record::decode_all(&std::fs::read(&files[0]).unwrap());
        assert_eq!(records, [enqueue(2 << 8), enqueue(3 << 8)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
