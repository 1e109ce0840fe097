//! The shard's writer task: writes what [`super::Wal::append`] queued, syncs per
//! the policy, sends the confirms the sync covers, compacts and deletes
//! segments. File creation, writes, syncs, reads and removal go through
//! io_uring; the directory's lock and fsync, which io_uring cannot do,
//! run on glommio's blocking helper thread (see the module documentation
//! of [`super`]).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use glommio::io::DmaFile;

use super::record::Record;
use super::segment::{self, At, Layout, Write};
use super::{CarryJob, Epochs, Pending, lock_dir, segment_name};
use crate::config::FsyncPolicy;
use crate::shard::Shard;

/// How often a failed log tries again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The most bytes one write (one DMA buffer) carries; a bigger batch is
/// written in several, one after the other, before its sync.
const MAX_WRITE: usize = 1 << 20;

/// The segment being written.
struct Open {
    seg: u64,
    file: DmaFile,
    layout: Layout,
}

/// The writer's files.
struct Files {
    path: PathBuf,
    boot: u64,
    shard: usize,
    /// Whether the data directory exists and is locked.
    locked: bool,
    open: Option<Open>,
}

impl Files {
    fn seg_path(&self, seg: u64) -> PathBuf {
        self.path.join(segment_name(self.boot, self.shard, seg))
    }

    /// Creates and locks the data directory on first use. `flock` has no
    /// io_uring operation, so this runs on glommio's blocking helper
    /// thread (once: the lock is held for the life of the process).
    async fn lock(&mut self) -> io::Result<()> {
        if !self.locked {
            let path = self.path.clone();
            glommio::executor()
                .spawn_blocking(move || lock_dir(&path, true))
                .await
                .map_err(io::Error::other)?;
            self.locked = true;
        }
        Ok(())
    }

    /// Makes the directory's entries durable (a segment created or
    /// removed). io_uring (glommio) only offers `fdatasync`, which does not
    /// promise to cover a directory's entries on every file system, so this
    /// is a full `fsync` on the blocking helper thread.
    async fn sync_dir(&self) -> io::Result<()> {
        let path = self.path.clone();
        glommio::executor()
            .spawn_blocking(move || std::fs::File::open(&path)?.sync_all())
            .await
    }

    /// Closes the open segment (after syncing it per the policy) and
    /// starts segment `seg`: created through io_uring, then the directory
    /// synced so that its name is durable before anything in it is
    /// confirmed.
    async fn start(&mut self, seg: u64, epoch: u64, policy: FsyncPolicy) -> io::Result<()> {
        self.close(policy).await?;
        self.lock().await?;
        let path = self.seg_path(seg);
        let file = DmaFile::create(&path)
            .await
            .map_err(|e| io::Error::other(format!("cannot create {}: {e}", path.display())))?;
        self.sync_dir().await?;
        self.open = Some(Open {
            seg,
            file,
            layout: Layout::new(epoch),
        });
        Ok(())
    }

    async fn close(&mut self, policy: FsyncPolicy) -> io::Result<()> {
        if let Some(open) = self.open.take() {
            if policy != FsyncPolicy::None {
                open.file.fdatasync().await?;
            }
            open.file.close().await?;
        }
        Ok(())
    }

    /// Forgets the open segment after a failed write: it is never written
    /// again (dropping the file closes it asynchronously).
    fn abandon(&mut self) {
        self.open = None;
    }
}

/// Makes the next write of the open segment ([`Layout::write`]): at its
/// end, never over anything written before. A big write goes out in
/// several buffers of at most [`MAX_WRITE`] bytes, one after the other.
async fn append<'a>(
    open: &mut Open,
    bodies: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<Write> {
    let write = open.layout.write(bodies);
    let mut pos = write.offset;
    for chunk in write.bytes.chunks(MAX_WRITE) {
        let mut buf = open.file.alloc_dma_buffer(chunk.len());
        // Every byte of the buffer is overwritten: nothing it held before
        // (another write's records) can reach the disk.
        buf.as_bytes_mut().copy_from_slice(chunk);
        let n = open.file.write_at(buf, pos).await?;
        if n != chunk.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", chunk.len()),
            ));
        }
        pos += n as u64;
    }
    Ok(write)
}

/// Writes `batch` (and syncs per the policy): one write per segment it
/// goes to, each at a fresh block boundary. Fills in where each record
/// went; returns the bytes added per segment besides the frames (headers,
/// padding).
async fn write_batch(
    files: &mut Files,
    batch: &mut [Pending],
    policy: FsyncPolicy,
    epochs: Epochs,
) -> io::Result<Vec<(u64, u64)>> {
    let mut overhead: Vec<(u64, u64)> = Vec::new();
    // Runs of records bound for the same segment (a batch spans two when
    // the segment fills up in the middle).
    for run in batch.chunk_by_mut(|a, b| a.seg == b.seg) {
        let seg = run[0].seg;
        if files.open.as_ref().is_none_or(|o| o.seg != seg) {
            files.start(seg, epochs.of(seg), policy).await?;
        }
        let open = files.open.as_mut().expect("started above");
        let write = append(open, run.iter().map(|p| p.body.as_slice())).await?;
        for (p, at) in run.iter_mut().zip(write.ats) {
            p.at = Some(at);
        }
        note(&mut overhead, seg, write.overhead);
    }
    if let Some(open) = files.open.as_mut()
        && policy != FsyncPolicy::None
    {
        open.file.fdatasync().await?;
    }
    Ok(overhead)
}

fn note(overhead: &mut Vec<(u64, u64)>, seg: u64, n: u64) {
    match overhead.iter_mut().find(|(s, _)| *s == seg) {
        Some((_, total)) => *total += n,
        None => overhead.push((seg, n)),
    }
}

/// Writes what [`super::Wal::append`] queued, syncing per the policy, and sends
/// the confirms the sync covers. A failed write is retried at once in a
/// fresh segment; if that fails too, the log is failed: waiting confirms
/// become `queue storage failed`, new QUEUEs are refused, and the writer
/// tries again every [`RETRY_EVERY`] (each time in a fresh segment) until a
/// write succeeds. After each write, compacts and deletes what it can.
/// Runs for the life of the shard.
pub async fn write_loop(shard: Rc<Shard>, boot: u64) {
    let dir = shard.config.data_dir.clone();
    // Segment 0 of this boot holds what recovery rewrote (if anything).
    let mut files = Files {
        path: dir.clone(),
        boot,
        shard: shard.id,
        locked: false,
        open: None,
    };
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
            Poll::Ready(Some((wal.take_batch(), wal.policy, wal.epochs())))
        })
        .await;
        let Some((mut batch, policy, epochs)) = batch else {
            return;
        };
        match write_batch(&mut files, &mut batch, policy, epochs).await {
            Ok(overhead) => {
                let confirms = {
                    let mut wal = shard.queues.wal.borrow_mut();
                    let Some(wal) = wal.as_mut() else { return };
                    if wal.is_failed() {
                        tracing::info!(shard = shard.id, dir = %dir.display(),
                            "queue log writable again; QUEUE is accepted again");
                    }
                    wal.batch_written(batch, &overhead)
                };
                for confirm in confirms {
                    crate::queue::owner::confirmed(&shard, confirm);
                }
                let current = files.open.as_ref().map(|o| o.seg);
                delete_done(&shard, &mut files, current).await;
                let job = shard
                    .queues
                    .wal
                    .borrow_mut()
                    .as_mut()
                    .and_then(|w| w.start_carry(current));
                if let Some(job) = job {
                    // Its own task: reading back does not hold up writes
                    // (and the confirms waiting on them).
                    let path = files.seg_path(job.seg);
                    glommio::spawn_local(compact(shard.clone(), path, job)).detach();
                }
            }
            Err(e) => {
                // Whatever reached the segment is not trusted: it is never
                // written again, and the batch goes to a fresh one.
                files.abandon();
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
                for confirm in refused {
                    crate::queue::owner::not_confirmed(&shard, confirm, &error);
                }
            }
        }
    }
}

/// Deletes the oldest segments whose messages are all acked, oldest first,
/// syncing the directory after each (module documentation of [`super`]).
async fn delete_done(shard: &Shard, files: &mut Files, current: Option<u64>) {
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
        let path = files.seg_path(seg);
        match remove(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                // Kept, and nothing newer is deleted before it is: a newer
                // segment may hold the acks of its enqueues.
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot delete acked log segment; trying again after the next write");
                if let Some(w) = shard.queues.wal.borrow_mut().as_mut() {
                    w.not_deleted(seg);
                }
                return;
            }
        }
        if let Err(e) = files.sync_dir().await {
            tracing::warn!(dir = %files.path.display(), error = %e, "cannot sync the data directory after deleting a segment");
        }
    }
}

/// Removes a file through io_uring (`unlinkat`); on a kernel without that
/// operation (before 5.11), on the blocking helper thread.
async fn remove(path: &Path) -> io::Result<()> {
    match glommio::io::remove(path).await.map_err(io::Error::from) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            let path = path.to_owned();
            glommio::executor()
                .spawn_blocking(move || std::fs::remove_file(path))
                .await
        }
        other => other,
    }
}

/// Carries the unacked messages of the oldest segment forward
/// ([`super::Wal::start_carry`]): reads their enqueue records back
/// (io_uring reads), checks them, and appends them again. The segment is
/// deleted once the copies are written (by the writer, after that write).
async fn compact(shard: Rc<Shard>, path: PathBuf, job: CarryJob) {
    match read_back(&path, job.epoch, &job.msgs).await {
        Ok(bodies) => {
            let n = shard
                .queues
                .wal
                .borrow_mut()
                .as_mut()
                .map_or(0, |w| w.carry(job.seg, bodies));
            if n > 0 {
                shard.metrics.queue_log_carried(n);
                tracing::debug!(shard = shard.id, file = %path.display(), messages = n,
                    "carrying unacked messages forward to free an old log segment");
            }
        }
        Err(e) => {
            if let Some(w) = shard.queues.wal.borrow_mut().as_mut() {
                w.carry_failed(job.seg);
            }
            tracing::error!(shard = shard.id, file = %path.display(), error = %e,
                "cannot read unacked messages back from an old log segment; it is kept until they are acked");
        }
    }
}

/// The bodies of the enqueue records at `msgs` (sorted by offset) in the
/// segment at `path`, each checked: its frame passes its checksum under
/// `epoch` and holds the enqueue of that id. Neighbouring records are
/// read together, at most [`MAX_WRITE`] bytes at a time.
async fn read_back(path: &Path, epoch: u64, msgs: &[(u64, At)]) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let file = DmaFile::open(path).await?;
    let mut bodies = Vec::with_capacity(msgs.len());
    let mut i = 0;
    let result = async {
        while i < msgs.len() {
            let start = msgs[i].1.offset;
            let mut end = start + u64::from(msgs[i].1.len);
            let mut j = i + 1;
            while j < msgs.len() {
                let e = msgs[j].1.offset + u64::from(msgs[j].1.len);
                if e - start > MAX_WRITE as u64 {
                    break;
                }
                end = end.max(e);
                j += 1;
            }
            let read = file.read_at(start, (end - start) as usize).await?;
            for &(id, at) in &msgs[i..j] {
                let from = (at.offset - start) as usize;
                let bytes = read.get(from..from + at.len as usize).unwrap_or_default();
                let body = segment::frame_at(bytes, epoch)
                    .map(|(_, body)| body)
                    .filter(|body| {
                        matches!(Record::decode(body), Some(Record::Enqueue { id: got, .. }) if got == id)
                    })
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the record of message {id} at offset {} is corrupt", at.offset),
                        )
                    })?;
                bodies.push((id, body.to_vec()));
            }
            i = j;
        }
        Ok::<_, io::Error>(())
    }
    .await;
    let _ = file.close().await;
    result.map(|()| bodies)
}
