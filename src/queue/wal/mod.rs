//! The write-ahead log of one owner shard, and recovery at start.
//!
//! - [`record`]: what a record says, as bytes (its body); the encoder
//!   refuses what it cannot represent.
//! - [`segment`]: how bodies are framed in a segment file (header, epoch,
//!   sequence numbers, block-aligned writes) and how a file is read back
//!   (torn tail vs corruption). Pure functions, tested on bytes.
//! - [`recovery`]: reading every segment at start and the directory lock.
//! - [`writer`]: the shard's writer task (io_uring I/O), compaction and
//!   deletion of segments.
//! - this module: [`Wal`], the log's bookkeeping (what is pending, where
//!   each unacked message is on disk, what may be deleted or carried
//!   forward), without I/O.
//!
//! # Records
//!
//! Ids are unique for the life of the data directory, so an ack needs no
//! queue name and recovery is "every enqueue without an ack", whatever
//! the file order (which also makes a record written twice harmless).
//!
//! `Deliver` records are no longer written, and recovery reads and
//! ignores the ones older logs hold. Nothing a restart restores depends on
//! deliveries: the contract (§7) has no delivery-attempt limit (a message
//! is redelivered until acked, and dead-lettered only when no connected
//! client matches its target), every message in flight at a crash is
//! redelivered anyway (its consumer's connection is gone), and the
//! per-queue counters start afresh with the process.
//!
//! A record the encoder cannot represent (queue name over 65,535 bytes,
//! JSON that does not serialize, over 256 MiB) is refused at
//! [`Wal::append`]: the producer gets invalid `queue message cannot be
//! stored` and the message is neither queued nor confirmed; the log counts
//! it (`encode_errors`, `singyeong_queue_log_encode_errors_total`).
//!
//! # Files
//!
//! `<data-dir>/wal-<boot ms>-<shard>-<segment>.log`, format 2 (see
//! [`segment`]: every write starts on a fresh 4 KiB block, so confirmed
//! bytes are never rewritten, and a per-segment epoch plus sequence
//! numbers make stale bytes unreplayable). A segment past
//! `--queue-segment-bytes` (records and padding) is closed and the next one
//! opened.
//!
//! # Deleting and compacting segments
//!
//! Invariant: **an ack record is never deleted before the enqueue it
//! cancels.** Segments are deleted oldest first, and only once every
//! message whose enqueue they hold is acked. An ack is always appended
//! after its enqueue, so it lies in the same segment or a later one: when
//! a segment goes, every enqueue its acks cancel is in it or in an older
//! segment, already gone.
//!
//! One unacked message would then pin its segment and every later one.
//! So the oldest segment, once at most half of its bytes on disk are
//! unacked messages, is *compacted*: the enqueue records of its unacked messages
//! are read back from it (checked against its epoch) and appended again,
//! same ids, to the segment being written; once those copies are durable
//! the messages count as living there, the old segment holds nothing live
//! and is deleted. The invariant still holds: a message is carried only
//! while it is unacked (checked again when the copy is appended, after the
//! read), so its ack is appended after the copy, into the same segment or
//! a later one; acks already in the old segment cancel enqueues in it or
//! in older segments, which are gone. Until the copy is durable both
//! copies exist; recovery merges them by id. Each compaction writes at
//! most half of what it frees, so a segment that recovery filled with
//! live messages only is not copied again for nothing. A segment more than half
//! unacked (a real backlog) is kept as it is until its messages are acked.
//! Deleted files are removed oldest first with a directory sync after each,
//! so a power cut cannot undo the removal of an older segment while
//! keeping that of a newer one.
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
//! buffered I/O ([`segment::scan`]). A torn tail (the last write cut by a
//! crash: nothing in it was confirmed) is normal and logged as a warning.
//! Corruption (bad bytes in the middle of a file, or bytes no torn write
//! explains) is not: it is logged at error level with its offset, counted
//! (`corrupt_segments` in `GET /api/v1/queues`,
//! `singyeong_queue_log_corrupt_segments_total`), and the original file is
//! renamed `<name>.corrupt` (never rewritten or deleted) for an operator.
//!
//! What recovery does with the rest of a corrupt file: it still recovers
//! everything it can trust, the records before the bad bytes and, in
//! format 2, every record after them (found again by a frame that passes
//! its checksum under the segment's epoch with a sequence number not
//! below the expected one; the gap in sequence numbers says how many
//! records were lost). Refusing to start would turn one bad block into an
//! outage of every queue, and dropping the records after the bad bytes
//! (what this log did before) loses confirmed messages that are intact on
//! disk. The cost of going on: a lost ack brings its message back (at
//! least once, as after any crash); a lost enqueue is gone, which the
//! error line and the counter make visible, and the `.corrupt` file keeps
//! the bytes for whoever can do better. In format 1 (older logs, whose
//! padding held stale copies of older records) nothing after a bad frame
//! can be trusted, so recovery stops reading that file there; a frame that
//! passes its checksum but does not decode (the 70,000-byte queue name of
//! issue 13) is skipped by its length in both formats.
//!
//! The live messages are then rewritten, per owning shard under the
//! current shard count, into fresh segments (segment 0 of this boot) and
//! synced; only then are the old files deleted (or set aside). A crash in
//! between leaves both, and the duplicates collapse by id.
//!
//! # I/O on the shard's thread
//!
//! Nothing in the running log blocks the shard's thread. Creating,
//! writing, syncing, reading and removing segment files go through
//! io_uring (glommio's `DmaFile::create`, `write_at`, `fdatasync`,
//! `read_at`, `glommio::io::remove`). What io_uring cannot do runs on
//! glommio's blocking helper thread (`spawn_blocking`): locking the
//! directory (`flock`, once) and syncing it after a segment is created or
//! removed (a full `fsync`: glommio's io_uring directory sync is
//! `fdatasync`, which file systems need not apply to directory entries).
//! Recovery runs before the shards and uses plain blocking I/O.

pub mod record;
pub mod recovery;
pub mod segment;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::task::Waker;

use serde_json::Value;

pub use record::{EncodeError, Record};
pub use recovery::{
    Recovered, RecoveredMsg, RecoveredShard, WalError, lock_dir, recover, segment_name,
};
use segment::{At, FRAME_HEADER};
pub use writer::write_loop;

use super::state::MsgId;
use crate::config::FsyncPolicy;

/// A record appended and not yet written.
struct Pending {
    /// The segment it goes to.
    seg: u64,
    /// The message it enqueues, if it is an enqueue.
    enqueue: Option<MsgId>,
    /// An enqueue carried forward from an older segment (compaction).
    carried: bool,
    body: Vec<u8>,
    /// The QUEUE_CONFIRM to send once it is durable, and to whom.
    confirm: Option<Confirm>,
    /// Where the writer put it.
    at: Option<At>,
}

type Confirm = crate::queue::msg::Confirm;

/// Why [`Wal::append`] refused a record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppendError {
    /// The log cannot be written (see the module documentation).
    #[error("the queue log cannot be written")]
    Failed,
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Consecutive failed writes after which QUEUE is refused: the first
/// failure is retried at once in a fresh segment (the confirms wait), the
/// second puts the log in the failed state.
const GIVE_UP_AFTER: u32 = 2;

/// Where a message's enqueue is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    /// `None` until it is written there.
    at: Option<At>,
}

/// The unacked messages of a segment, and its size.
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    count: u64,
    /// Bytes of their frames that are on disk.
    bytes: u64,
    /// Bytes of the segment on disk: every frame, header and padding.
    size: u64,
}

/// The epochs of this log's segments: segment 0 is recovery's, the others
/// are drawn from a random seed.
#[derive(Debug, Clone, Copy)]
pub struct Epochs {
    seed: u64,
    zero: u64,
}

impl Epochs {
    pub fn of(&self, seg: u64) -> u64 {
        if seg == 0 {
            return self.zero;
        }
        // splitmix64: distinct segments get unrelated epochs.
        let mut z = self
            .seed
            .wrapping_add(seg.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A segment to compact: its unacked messages and where they are.
#[derive(Debug, PartialEq)]
pub struct CarryJob {
    pub seg: u64,
    pub epoch: u64,
    pub msgs: Vec<(MsgId, At)>,
}

/// The shard's log as the owner code sees it: [`Wal::append`] is
/// synchronous; [`write_loop`] does the I/O. Everything here is
/// bookkeeping without I/O, so the failure handling and compaction are
/// unit-tested.
pub struct Wal {
    policy: FsyncPolicy,
    segment_bytes: u64,
    epochs: Epochs,
    pending: Vec<Pending>,
    waker: Option<Waker>,
    /// Consecutive failed writes (0: the last write succeeded).
    failures: u32,
    /// The segment new records go to, and how full it is (frames and
    /// the writer's header and padding).
    seg: u64,
    seg_bytes: u64,
    /// Unacked enqueues per segment; every segment this boot may have
    /// created has an entry (possibly 0) until it is deleted.
    live: BTreeMap<u64, Live>,
    /// Where each unacked message is: where its enqueue was last written,
    /// or where it is queued to be if it never was.
    msgs: HashMap<MsgId, Loc>,
    /// A compaction is reading its segment back.
    compacting: bool,
    /// Carried enqueues appended and not yet written: no new compaction
    /// starts meanwhile.
    carrying: u64,
    /// Segments whose compaction failed (unreadable): kept, not retried.
    stuck: HashSet<u64>,
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
    encode_errors: u64,
    carried: u64,
    compacted: u64,
    corrupt_segments: u64,
}

impl Wal {
    pub fn new(policy: FsyncPolicy, segment_bytes: u64, recovered: &RecoveredShard) -> Wal {
        let mut live = BTreeMap::new();
        let mut msgs = HashMap::new();
        if !recovered.msgs.is_empty() {
            let mut seg0 = Live::default();
            for r in &recovered.msgs {
                msgs.insert(
                    r.msg.id,
                    Loc {
                        seg: 0,
                        at: Some(r.at),
                    },
                );
                seg0.count += 1;
                seg0.bytes += u64::from(r.at.len);
            }
            // Recovery wrote nothing else there but the header.
            seg0.size = seg0.bytes + segment::BLOCK as u64;
            live.insert(0, seg0);
        }
        Wal {
            policy,
            segment_bytes,
            epochs: Epochs {
                seed: recovery::new_epoch(),
                zero: recovered.epoch,
            },
            pending: Vec::new(),
            waker: None,
            failures: 0,
            seg: 1,
            seg_bytes: 0,
            live,
            msgs,
            compacting: false,
            carrying: 0,
            stuck: HashSet::new(),
            records: 0,
            written: 0,
            bytes: 0,
            syncs: 0,
            confirms: 0,
            write_errors: 0,
            refused: 0,
            encode_errors: 0,
            carried: 0,
            compacted: 0,
            corrupt_segments: recovered.corrupt_segments,
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
            "encode_errors": self.encode_errors,
            "carried": self.carried,
            "compacted_segments": self.compacted,
            "corrupt_segments": self.corrupt_segments,
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

    pub fn epochs(&self) -> Epochs {
        self.epochs
    }

    /// Queues a record (and the confirm to send once it is durable) and
    /// returns its number. An enqueue is refused while the log is failed
    /// and any record the log cannot represent is refused (see
    /// [`record`]): the caller must not queue or confirm it. Acks are
    /// always taken: they are written once the log recovers.
    pub fn append(
        &mut self,
        record: &Record,
        confirm: Option<Confirm>,
    ) -> Result<u64, AppendError> {
        if self.is_failed() && matches!(record, Record::Enqueue { .. }) {
            return Err(AppendError::Failed);
        }
        let body = record.encode().inspect_err(|_| self.encode_errors += 1)?;
        let mut enqueue = None;
        match record {
            Record::Enqueue { id, .. } => enqueue = Some(*id),
            Record::Ack { id } => {
                if let Some(loc) = self.msgs.remove(id)
                    && let Some(n) = self.live.get_mut(&loc.seg)
                {
                    n.count = n.count.saturating_sub(1);
                    n.bytes = n.bytes.saturating_sub(loc.at.map_or(0, |a| a.len.into()));
                }
            }
            Record::Deliver { .. } => {}
        }
        self.push(enqueue, false, body, confirm);
        if let Some(id) = enqueue {
            self.live.entry(self.seg).or_default().count += 1;
            self.msgs.insert(
                id,
                Loc {
                    seg: self.seg,
                    at: None,
                },
            );
        }
        Ok(self.records)
    }

    fn push(
        &mut self,
        enqueue: Option<MsgId>,
        carried: bool,
        body: Vec<u8>,
        confirm: Option<Confirm>,
    ) {
        if self.seg_bytes >= self.segment_bytes {
            self.roll();
        }
        self.live.entry(self.seg).or_default();
        let size = (FRAME_HEADER + body.len()) as u64;
        self.seg_bytes += size;
        self.records += 1;
        self.bytes += size;
        self.pending.push(Pending {
            seg: self.seg,
            enqueue,
            carried,
            body,
            confirm,
            at: None,
        });
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Starts a fresh segment for what is appended from now on.
    fn roll(&mut self) {
        self.seg += 1;
        self.seg_bytes = 0;
        self.live.entry(self.seg).or_default();
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

    /// `batch` is durable (each record's place filled in by the writer;
    /// `overhead`: bytes the writer added per segment, headers and
    /// padding): returns the confirms to send.
    fn batch_written(&mut self, batch: Vec<Pending>, overhead: &[(u64, u64)]) -> Vec<Confirm> {
        self.failures = 0;
        self.syncs += u64::from(self.policy != FsyncPolicy::None);
        self.written += batch.len() as u64;
        let mut confirms = Vec::new();
        for p in batch {
            if p.carried {
                self.carrying = self.carrying.saturating_sub(1);
            }
            if let Some(at) = p.at {
                self.live.entry(p.seg).or_default().size += u64::from(at.len);
            }
            if let Some(id) = p.enqueue
                && let Some(loc) = self.msgs.get_mut(&id)
            {
                // A message rewritten after a failure, or carried forward,
                // now lives in the segment it was written to.
                if loc.seg != p.seg {
                    if let Some(n) = self.live.get_mut(&loc.seg) {
                        n.count = n.count.saturating_sub(1);
                        n.bytes = n.bytes.saturating_sub(loc.at.map_or(0, |a| a.len.into()));
                    }
                    loc.seg = p.seg;
                    loc.at = None;
                    self.live.entry(p.seg).or_default().count += 1;
                }
                if loc.at.is_none()
                    && let Some(at) = p.at
                {
                    loc.at = Some(at);
                    self.live.entry(p.seg).or_default().bytes += u64::from(at.len);
                }
            }
            confirms.extend(p.confirm);
        }
        for &(seg, n) in overhead {
            self.live.entry(seg).or_default().size += n;
            if seg == self.seg {
                self.seg_bytes += n;
            }
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
            p.at = None;
            self.seg_bytes += (FRAME_HEADER + p.body.len()) as u64;
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
        let (&seg, live) = self.live.first_key_value()?;
        if live.count > 0 || Some(seg) >= current || seg >= self.seg {
            return None;
        }
        self.live.pop_first();
        self.stuck.remove(&seg);
        Some(seg)
    }

    /// Deleting `seg` (from [`Wal::deletable`]) failed: it stays the
    /// oldest, to be deleted later.
    fn not_deleted(&mut self, seg: u64) {
        self.live.insert(seg, Live::default());
    }

    /// The segment to compact now, if any: the oldest, closed (older than
    /// `current` and the one new records go to), holding unacked messages
    /// that are all on disk there and take at most half of its bytes (so a
    /// compaction never writes more than it frees), with no compaction
    /// under way. Marks it under way: [`Wal::carry`] or
    /// [`Wal::carry_failed`] ends it.
    pub fn start_carry(&mut self, current: Option<u64>) -> Option<CarryJob> {
        if self.compacting || self.carrying > 0 || self.is_failed() {
            return None;
        }
        let (&seg, live) = self.live.first_key_value()?;
        if live.count == 0
            || Some(seg) >= current
            || seg >= self.seg
            || live.bytes * 2 > live.size
            || self.stuck.contains(&seg)
        {
            return None;
        }
        // A scan of every unacked message, but only when the oldest
        // segment is worth compacting: once per segment at most.
        let mut msgs = Vec::with_capacity(live.count as usize);
        for (&id, loc) in &self.msgs {
            if loc.seg == seg {
                msgs.push((id, loc.at?));
            }
        }
        msgs.sort_by_key(|(_, at)| at.offset);
        self.compacting = true;
        Some(CarryJob {
            seg,
            epoch: self.epochs.of(seg),
            msgs,
        })
    }

    /// Appends again the enqueue records read back from segment `seg`
    /// (bodies), for the messages still unacked and still there.
    pub fn carry(&mut self, seg: u64, bodies: Vec<(MsgId, Vec<u8>)>) -> u64 {
        self.compacting = false;
        let mut n = 0;
        for (id, body) in bodies {
            if self.msgs.get(&id).is_some_and(|l| l.seg == seg) {
                self.push(Some(id), true, body, None);
                self.carrying += 1;
                n += 1;
            }
        }
        self.carried += n;
        if n > 0 {
            self.compacted += 1;
        }
        n
    }

    /// Segment `seg` could not be read back for compaction: it is kept
    /// (and not tried again) until its messages are acked.
    pub fn carry_failed(&mut self, seg: u64) {
        self.compacting = false;
        self.stuck.insert(seg);
    }
}

#[cfg(test)]
mod tests;
