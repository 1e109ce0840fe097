//! Recovery at start (plain std I/O, before any shard runs) and the data
//! directory's lock.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::record::Record;
use super::segment::{self, At, Damage};
use crate::config::Config;
use crate::query::Query;
use crate::queue::state::{Message, MsgId};
use crate::shard::Dispatch;

/// A live message found in the log.
#[derive(Debug)]
pub struct RecoveredMsg {
    pub queue: Arc<str>,
    pub msg: Arc<Message>,
    /// Where its enqueue now is in segment 0 of this boot.
    pub at: At,
}

/// What one shard starts with.
#[derive(Debug, Default)]
pub struct RecoveredShard {
    /// Its live messages, in id order, all in its segment 0 of this boot.
    pub msgs: Vec<RecoveredMsg>,
    /// The epoch of that segment.
    pub epoch: u64,
    /// Segments found corrupt at start (counted on shard 0 only: recovery
    /// runs once for the whole process).
    pub corrupt_segments: u64,
}

/// What each shard starts with.
#[derive(Debug, Default)]
pub struct Recovered {
    pub shards: Vec<RecoveredShard>,
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
/// Blocking: the running log calls it through a blocking helper thread.
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

pub fn segment_name(boot: u64, shard: usize, seg: u64) -> String {
    format!("wal-{boot:013}-{shard:03}-{seg:06}.log")
}

/// A fresh random segment epoch.
pub fn new_epoch() -> u64 {
    fastrand::u64(..)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What reading every old segment found.
#[derive(Default)]
struct Found {
    enqueued: BTreeMap<MsgId, (Arc<str>, Value, Value)>,
    acked: HashSet<MsgId>,
    /// Segments with damage in the middle: kept as `<name>.corrupt`.
    corrupt: Vec<PathBuf>,
}

impl Found {
    fn read(&mut self, path: &Path, buf: &[u8]) {
        let scan = segment::scan(buf);
        if let Some(torn) = scan.torn_at {
            tracing::warn!(
                file = %path.display(),
                offset = torn,
                dropped_bytes = buf.len() as u64 - torn,
                "log segment ends in a torn write (a crash during a write; nothing in it was confirmed); recovered up to the last whole record"
            );
        }
        for damage in &scan.damage {
            let (what, skipped, lost) = match damage {
                Damage::Skipped {
                    offset,
                    resumed,
                    lost,
                } => (
                    "corrupt bytes in the middle of a log segment; recovered the records after them",
                    resumed - offset,
                    Some(*lost),
                ),
                Damage::Unreadable { .. } => (
                    "unreadable record (valid checksum, unknown content) in a log segment; skipped it and recovered the records after it",
                    0,
                    Some(1),
                ),
                Damage::Garbage { offset } => (
                    "corrupt bytes in a log segment that no torn write explains; nothing after them can be trusted",
                    buf.len() as u64 - offset,
                    None,
                ),
            };
            tracing::error!(
                file = %path.display(),
                offset = damage.offset(),
                skipped_bytes = skipped,
                lost_records = lost,
                format = scan.format,
                "{what}; the original file is kept as .corrupt for inspection"
            );
        }
        if !scan.damage.is_empty() {
            self.corrupt.push(path.to_owned());
        }
        for (record, _) in scan.records {
            match record {
                Record::Enqueue {
                    id,
                    queue,
                    target,
                    d,
                } => {
                    self.enqueued.insert(id, (queue, target, d));
                }
                Record::Ack { id } => {
                    self.acked.insert(id);
                }
                // Written by earlier versions; nothing to restore from it
                // (see the module documentation).
                Record::Deliver { .. } => {}
            }
        }
    }
}

/// Reads every segment of `config.data_dir` (if it exists), keeps the
/// messages never acked, and rewrites them into one segment per owning
/// shard; then deletes the old segments, except corrupt ones, which are
/// renamed `<name>.corrupt` (see the module documentation, Recovery).
/// Does nothing without durability or a data directory.
pub fn recover(config: &Config) -> Result<Recovered, WalError> {
    let boot = crate::shard::now_ms().max(0) as u64;
    let mut recovered = Recovered {
        shards: (0..config.shards)
            .map(|_| RecoveredShard {
                epoch: new_epoch(),
                ..RecoveredShard::default()
            })
            .collect(),
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
    let mut found = Found::default();
    for path in &old {
        let mut buf = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io)?;
        found.read(path, &buf);
    }
    // Per shard: segment 0 of this boot, header first.
    let mut rewritten: Vec<Vec<u8>> = recovered
        .shards
        .iter()
        .map(|s| segment::header(s.epoch))
        .collect();
    let mut count = 0usize;
    for (id, (queue, target_json, d)) in found.enqueued {
        if found.acked.contains(&id) {
            continue;
        }
        let Ok(target) = Query::parse(&target_json) else {
            tracing::error!(id, queue = %queue, "recovered message has an unparsable target; dropped");
            continue;
        };
        let shard = crate::queue::owner::owner(&queue, config.shards);
        let bytes = crate::queue::state::footprint(&d, &target_json);
        let record = Record::Enqueue {
            id,
            queue: queue.clone(),
            target: target_json,
            d: d.clone(),
        };
        // It was encoded once already, with the same limits.
        let Ok(body) = record.encode() else {
            tracing::error!(id, queue = %queue, "recovered message cannot be written again; dropped");
            continue;
        };
        let into = &mut recovered.shards[shard];
        let out = &mut rewritten[shard];
        let at = At {
            offset: out.len() as u64,
            len: (segment::FRAME_HEADER + body.len()) as u32,
        };
        segment::frame(into.epoch, into.msgs.len() as u64 + 1, &body, out);
        into.msgs.push(RecoveredMsg {
            queue,
            msg: Arc::new(Message {
                id,
                target: Arc::new(target),
                packet: Arc::new(Dispatch { t: "QUEUE", d }),
                bytes,
            }),
            at,
        });
        count += 1;
    }
    for (shard, bytes) in rewritten.iter_mut().enumerate() {
        if recovered.shards[shard].msgs.is_empty() {
            continue;
        }
        bytes.resize(segment::align_up(bytes.len()), 0);
        let path = dir.join(segment_name(boot, shard, 0));
        let mut f = File::create(&path).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
    }
    sync_dir(dir).map_err(io)?;
    for path in &old {
        if found.corrupt.contains(path) {
            let mut aside = path.clone().into_os_string();
            aside.push(".corrupt");
            std::fs::rename(path, &aside).map_err(io)?;
        } else {
            std::fs::remove_file(path).map_err(io)?;
        }
    }
    sync_dir(dir).map_err(io)?;
    if let Some(first) = recovered.shards.first_mut() {
        first.corrupt_segments = found.corrupt.len() as u64;
    }
    if !old.is_empty() {
        tracing::info!(
            files = old.len(),
            corrupt = found.corrupt.len(),
            messages = count,
            dir = %dir.display(),
            "recovered queues from the log"
        );
    }
    Ok(recovered)
}
