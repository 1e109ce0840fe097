//! The log's bookkeeping (no I/O) and recovery on real files.

use super::segment::tests::enqueue;
use super::segment::{self, Layout};
use super::*;
use crate::config::Config;
use crate::shard::{ConnRef, Dispatch};
use serde_json::json;
use std::sync::Arc;

fn confirm(id: MsgId) -> Option<Confirm> {
    let to = ConnRef {
        shard: 0,
        client: 1,
        conn: 1,
    };
    let d = json!({"queue": "jobs", "id": id.to_string(), "nonce": id});
    Some(Confirm::Client(
        crate::queue::msg::Who::here(to),
        Arc::new(Dispatch {
            t: "QUEUE_CONFIRM",
            d,
        }),
    ))
}

fn confirmed(confirms: &[Confirm]) -> Vec<String> {
    confirms
        .iter()
        .map(|c| match c {
            Confirm::Client(_, c) => c.d["id"].as_str().unwrap().to_string(),
            Confirm::Moved { id, .. } => id.to_string(),
        })
        .collect()
}

fn wal(policy: FsyncPolicy, segment_bytes: u64) -> Wal {
    Wal::new(policy, segment_bytes, &RecoveredShard::default())
}

/// What the writer does with a batch, without I/O: lays it out segment by
/// segment and reports it written.
struct FakeDisk {
    layouts: HashMap<u64, Layout>,
}

impl FakeDisk {
    fn new() -> FakeDisk {
        FakeDisk {
            layouts: HashMap::new(),
        }
    }

    fn write(&mut self, wal: &mut Wal) -> Vec<Confirm> {
        let mut batch = wal.take_batch();
        let epochs = wal.epochs();
        let mut overhead = Vec::new();
        for run in batch.chunk_by_mut(|a, b| a.seg == b.seg) {
            let seg = run[0].seg;
            let layout = self
                .layouts
                .entry(seg)
                .or_insert_with(|| Layout::new(epochs.of(seg)));
            let w = layout.write(run.iter().map(|p| p.body.as_slice()));
            for (p, at) in run.iter_mut().zip(w.ats) {
                p.at = Some(at);
            }
            overhead.push((seg, w.overhead));
        }
        wal.batch_written(batch, &overhead)
    }
}

#[test]
fn confirms_only_what_was_written() {
    let mut wal = wal(FsyncPolicy::Group, 1 << 20);
    assert_eq!(wal.append(&enqueue(1), confirm(1)), Ok(1));
    assert_eq!(wal.append(&enqueue(2), confirm(2)), Ok(2));
    let batch = wal.take_batch();
    assert_eq!(batch.len(), 2);
    assert_eq!(wal.append(&Record::Ack { id: 1 }, None), Ok(3));
    assert_eq!(wal.durable_through(), 0);
    assert_eq!(confirmed(&wal.batch_written(batch, &[])), ["1", "2"]);
    assert_eq!(wal.durable_through(), 2, "the ack is not written yet");
    let batch = wal.take_batch();
    assert!(wal.batch_written(batch, &[]).is_empty());
    assert_eq!(wal.durable_through(), 3);
}

#[test]
fn a_record_the_log_cannot_hold_is_refused_and_nothing_else_changes() {
    let mut wal = wal(FsyncPolicy::Group, 1 << 20);
    wal.append(&enqueue(1), confirm(1)).unwrap();
    let long = Record::Enqueue {
        id: 2,
        queue: "q".repeat(70_000).into(),
        target: json!({"application": "a"}),
        d: json!({}),
    };
    assert_eq!(
        wal.append(&long, confirm(2)),
        Err(AppendError::Encode(EncodeError::QueueName(70_000)))
    );
    wal.append(&enqueue(3), confirm(3)).unwrap();
    let batch = wal.take_batch();
    assert_eq!(batch.len(), 2, "nothing pending for the refused record");
    assert!(batch.iter().all(|p| !p.body.is_empty()));
    assert!(!wal.msgs.contains_key(&2));
    assert_eq!(wal.stats(0)["encode_errors"], json!(1));
    assert_eq!(confirmed(&wal.batch_written(batch, &[])), ["1", "3"]);
}

#[test]
fn each_policy_takes_one_confirm_per_batch() {
    let mut wal = wal(FsyncPolicy::Each, 1 << 20);
    wal.append(&Record::Ack { id: 9 }, None).unwrap();
    wal.append(&enqueue(1), confirm(1)).unwrap();
    wal.append(&enqueue(2), confirm(2)).unwrap();
    assert_eq!(wal.take_batch().len(), 2);
    assert_eq!(wal.take_batch().len(), 1);
    assert!(wal.take_batch().is_empty());
}

#[test]
fn a_failed_write_is_retried_in_a_fresh_segment_then_refuses_until_it_recovers() {
    let mut wal = wal(FsyncPolicy::Group, 1 << 20);
    wal.append(&enqueue(1), confirm(1)).unwrap();
    wal.append(&enqueue(2), confirm(2)).unwrap();
    let batch = wal.take_batch();
    let first_seg = batch[0].seg;
    wal.append(&enqueue(3), confirm(3)).unwrap();

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
    assert_eq!(
        wal.append(&enqueue(4), confirm(4)),
        Err(AppendError::Failed),
        "QUEUE refused"
    );
    assert_eq!(
        wal.append(&Record::Ack { id: 1 }, None),
        Ok(4),
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
    assert!(wal.batch_written(batch, &[]).is_empty());
    assert!(!wal.is_failed());
    assert_eq!(wal.durable_through(), 4);
    assert_eq!(wal.append(&enqueue(5), confirm(5)), Ok(5));
    assert_eq!(wal.stats(0)["failed"], json!(false));

    // The abandoned segments hold nothing live: they go, the one the
    // rewritten messages are in stays.
    assert_eq!(wal.msgs[&2].seg, third_seg);
    assert_eq!(wal.live[&third_seg].count, 3, "2, 3 and 5; 1 is acked");
    let mut deleted = Vec::new();
    while let Some(seg) = wal.deletable(Some(third_seg)) {
        deleted.push(seg);
    }
    assert!(deleted.contains(&first_seg) && deleted.contains(&second_seg));
    assert!(deleted.iter().all(|s| *s < third_seg), "{deleted:?}");
}

#[test]
fn a_segment_is_kept_while_its_messages_wait_to_be_rewritten() {
    let mut wal = wal(FsyncPolicy::Group, 1 << 20);
    wal.append(&enqueue(1), confirm(1)).unwrap();
    let batch = wal.take_batch();
    let seg = batch[0].seg;
    assert_eq!(confirmed(&wal.batch_written(batch, &[])), ["1"]);
    // 2 goes to the same segment, whose next write fails.
    wal.append(&enqueue(2), confirm(2)).unwrap();
    let batch = wal.take_batch();
    wal.batch_failed(batch);
    wal.append(&Record::Ack { id: 1 }, None).unwrap();
    // 1 is acked, but 2 is not written anywhere yet: `seg` may hold
    // its only copy, so it stays even once a later segment is open.
    assert_eq!(wal.deletable(Some(seg + 5)), None);
    let batch = wal.take_batch();
    assert_eq!(batch.len(), 2);
    assert_eq!(confirmed(&wal.batch_written(batch, &[])), ["2"]);
    assert_eq!(wal.deletable(Some(seg + 1)), Some(seg));
}

#[test]
fn acked_segments_are_deleted_oldest_first_even_without_enqueues() {
    // Every record fills a segment.
    let mut wal = wal(FsyncPolicy::Group, 16);
    wal.append(&enqueue(1), None).unwrap();
    wal.append(&Record::Ack { id: 1 }, None).unwrap(); // acks only
    wal.append(&Record::Ack { id: 1 }, None).unwrap(); // acks only
    wal.append(&enqueue(3), None).unwrap();
    let batch = wal.take_batch();
    wal.batch_written(batch, &[]);
    let current = wal.seg;
    assert_eq!(current, 4);
    let mut deleted = Vec::new();
    while let Some(seg) = wal.deletable(Some(current)) {
        deleted.push(seg);
    }
    assert_eq!(deleted, (1..current).collect::<Vec<_>>());
}

#[test]
fn padding_counts_toward_the_segment_size() {
    // Small records, one sync each: a block per sync on disk. The segment
    // is closed by what it takes on disk, not by its records alone.
    let mut wal = wal(FsyncPolicy::Group, 8 * segment::BLOCK as u64);
    let mut disk = FakeDisk::new();
    for id in 1..=20 {
        wal.append(&enqueue(id), confirm(id)).unwrap();
        disk.write(&mut wal);
    }
    // Header + 7 one-block writes fill a segment: 20 syncs span 3.
    assert_eq!(wal.seg, 3, "{}", wal.seg);
}

#[test]
fn one_unacked_message_is_carried_forward_and_its_segment_deleted() {
    let seg_bytes = 4 * segment::BLOCK as u64;
    let mut wal = wal(FsyncPolicy::Group, seg_bytes);
    let mut disk = FakeDisk::new();
    // Message 1 is never acked; 2..=40 are, each after its own sync.
    wal.append(&enqueue(1), confirm(1)).unwrap();
    disk.write(&mut wal);
    let mut peak = 0;
    for id in 2..=40 {
        wal.append(&enqueue(id), confirm(id)).unwrap();
        disk.write(&mut wal);
        wal.append(&Record::Ack { id }, None).unwrap();
        disk.write(&mut wal);
        let current = Some(wal.seg);
        while wal.deletable(current).is_some() {}
        if let Some(job) = wal.start_carry(current) {
            assert_eq!(job.msgs.iter().map(|m| m.0).collect::<Vec<_>>(), [1]);
            // What the writer reads back from the old segment.
            let body = enqueue(1).encode().unwrap();
            assert_eq!(wal.carry(job.seg, vec![(1, body)]), 1);
            assert_eq!(wal.start_carry(current), None, "one compaction at a time");
            disk.write(&mut wal);
            while wal.deletable(Some(wal.seg)).is_some() {}
        }
        peak = peak.max(wal.live.len());
    }
    assert!(
        wal.seg > 10,
        "the log went through many segments: {}",
        wal.seg
    );
    assert!(peak <= 3, "segments stay bounded: at most {peak}");
    assert!(wal.stats(0)["carried"].as_u64().unwrap() >= 3);
    assert_eq!(wal.live.values().map(|l| l.count).sum::<u64>(), 1);
}

#[test]
fn a_message_acked_while_being_carried_is_not_carried() {
    let mut wal = wal(FsyncPolicy::Group, segment::BLOCK as u64);
    let mut disk = FakeDisk::new();
    wal.append(&enqueue(1), None).unwrap();
    disk.write(&mut wal);
    wal.append(&enqueue(2), None).unwrap(); // next segment
    disk.write(&mut wal);
    let job = wal
        .start_carry(Some(wal.seg))
        .expect("segment 1 is worth it");
    assert_eq!(job.seg, 1);
    assert_eq!(wal.start_carry(Some(wal.seg)), None, "one at a time");
    // The ack arrives while the old record is read back.
    wal.append(&Record::Ack { id: 1 }, None).unwrap();
    assert_eq!(wal.carry(1, vec![(1, enqueue(1).encode().unwrap())]), 0);
    disk.write(&mut wal);
    // Nothing live in segment 1: deleted; the ack sits in a later one.
    assert_eq!(wal.deletable(Some(wal.seg)), Some(1));
}

#[test]
fn a_mostly_unacked_segment_is_not_carried() {
    let mut wal = wal(FsyncPolicy::Group, 64 << 10);
    let mut disk = FakeDisk::new();
    // 600 unacked messages written together fill segment 1 densely and go
    // on in segment 2.
    for id in 1..=600 {
        wal.append(&enqueue(id), None).unwrap();
    }
    disk.write(&mut wal);
    wal.append(&enqueue(601), None).unwrap();
    disk.write(&mut wal);
    assert!(wal.seg > 1);
    assert_eq!(wal.start_carry(Some(wal.seg)), None);
    // Once most of it is acked, it is worth copying what is left.
    let first: Vec<MsgId> = (1..=600).filter(|id| wal.msgs[id].seg == 1).collect();
    for id in &first[..first.len() * 2 / 3] {
        wal.append(&Record::Ack { id: *id }, None).unwrap();
    }
    disk.write(&mut wal);
    let job = wal.start_carry(Some(wal.seg)).expect("mostly acked now");
    assert_eq!(job.seg, 1);
    assert_eq!(job.msgs.len(), first.len() - first.len() * 2 / 3);
}

#[test]
fn a_segment_of_live_messages_only_is_not_copied_for_nothing() {
    // Segment 0 as recovery leaves it: a header and unacked messages.
    let msgs: Vec<RecoveredMsg> = (1..=3u64)
        .map(|id| RecoveredMsg {
            queue: "jobs".into(),
            msg: Arc::new(crate::queue::state::Message {
                id,
                target: Arc::new(crate::query::Query::parse(&json!({"application": "a"})).unwrap()),
                packet: Arc::new(Dispatch {
                    t: "QUEUE",
                    d: json!({}),
                }),
                bytes: 0,
            }),
            at: At {
                offset: (segment::BLOCK + 2000 * (id as usize - 1)) as u64,
                len: 2000,
            },
        })
        .collect();
    let recovered = RecoveredShard {
        msgs,
        epoch: 1,
        corrupt_segments: 0,
    };
    let mut wal = Wal::new(FsyncPolicy::Group, 1 << 20, &recovered);
    let mut disk = FakeDisk::new();
    wal.append(&enqueue(9), None).unwrap();
    disk.write(&mut wal);
    assert_eq!(wal.start_carry(Some(1)), None, "all of it is live");
    // Two of three acked: now it is worth it.
    wal.append(&Record::Ack { id: 1 }, None).unwrap();
    wal.append(&Record::Ack { id: 2 }, None).unwrap();
    disk.write(&mut wal);
    let job = wal.start_carry(Some(1)).expect("mostly acked");
    assert_eq!((job.seg, job.epoch), (0, 1));
    assert_eq!(job.msgs.iter().map(|m| m.0).collect::<Vec<_>>(), [3]);
}

// ---------------------------------------------------------------------------
// Recovery on real files
// ---------------------------------------------------------------------------

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("singyeong-wal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn config(&self) -> Config {
        let flags = <crate::config::Flags as clap::Parser>::parse_from([
            "singyeong",
            "--shards",
            "1",
            "--data-dir",
            self.0.to_str().unwrap(),
        ]);
        Config::from_flags(flags).unwrap()
    }

    fn files(&self, ext: &str) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn recovered_ids(r: &Recovered) -> Vec<MsgId> {
    r.shards[0].msgs.iter().map(|m| m.msg.id).collect()
}

/// The live records of a segment file as recovery rewrote it.
fn records_in(path: &std::path::Path) -> Vec<Record> {
    segment::scan(&std::fs::read(path).unwrap())
        .records
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn recovery_ignores_deliver_records_of_older_logs() {
    let dir = TempDir::new("legacy");
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
        segment::tests::legacy_frame(&r.encode().unwrap(), &mut buf);
    }
    std::fs::write(dir.0.join(segment_name(1, 0, 1)), &buf).unwrap();
    let recovered = recover(&dir.config()).unwrap();
    assert_eq!(recovered_ids(&recovered), [2 << 8, 3 << 8]);
    // Rewritten (format 2) into one fresh segment without them.
    let files = dir.files("log");
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(records_in(&files[0]), [enqueue(2 << 8), enqueue(3 << 8)]);
    // Where recovery says each message is, it is.
    let bytes = std::fs::read(&files[0]).unwrap();
    let epoch = recovered.shards[0].epoch;
    for (i, m) in recovered.shards[0].msgs.iter().enumerate() {
        let at = m.at;
        let frame = &bytes[at.offset as usize..(at.offset + u64::from(at.len)) as usize];
        let (seq, _) = segment::frame_at(frame, epoch).unwrap();
        assert_eq!(seq, i as u64 + 1);
    }
    assert!(dir.files("corrupt").is_empty());
    assert_eq!(recovered.shards[0].corrupt_segments, 0);
}

#[test]
fn issue_13_long_queue_name_in_an_old_log_loses_none_of_the_records_after_it() {
    // The log issue 13 describes: 10 messages, the 70,000-byte name with
    // its length cut to u16 (valid checksum), 10 more.
    let dir = TempDir::new("longname");
    let mut buf = Vec::new();
    for id in 1..=10u64 {
        segment::tests::legacy_frame(&enqueue(id << 8).encode().unwrap(), &mut buf);
    }
    segment::tests::legacy_truncated_name(11 << 8, 70_000, &mut buf);
    for id in 12..=21u64 {
        segment::tests::legacy_frame(&enqueue(id << 8).encode().unwrap(), &mut buf);
    }
    let name = segment_name(1, 0, 1);
    std::fs::write(dir.0.join(&name), &buf).unwrap();
    let recovered = recover(&dir.config()).unwrap();
    let want: Vec<MsgId> = (1..=10).chain(12..=21).map(|id| id << 8).collect();
    assert_eq!(recovered_ids(&recovered), want);
    // The original is kept aside, byte for byte, and counted.
    let aside = dir.0.join(format!("{name}.corrupt"));
    assert_eq!(std::fs::read(&aside).unwrap(), buf);
    assert_eq!(recovered.shards[0].corrupt_segments, 1);
    // The next start finds only the rewritten segment: nothing new is
    // corrupt, nothing is lost.
    let again = recover(&dir.config()).unwrap();
    assert_eq!(recovered_ids(&again), want);
    assert_eq!(again.shards[0].corrupt_segments, 0);
    assert!(aside.exists());
}

#[test]
fn a_bad_record_in_the_middle_keeps_the_good_ones_after_it_and_the_file_aside() {
    let dir = TempDir::new("middle");
    let mut layout = Layout::new(99);
    let mut bytes = Vec::new();
    let mut ats = Vec::new();
    for id in 1..=9u64 {
        let body = enqueue(id << 8).encode().unwrap();
        let w = layout.write([body.as_slice()]);
        ats.extend(w.ats);
        bytes.extend_from_slice(&w.bytes);
    }
    // Record 5's frame is damaged (a bad sector, a bit flip).
    let at = ats[4];
    bytes[at.offset as usize + 20] ^= 0x01;
    let name = segment_name(1, 0, 1);
    std::fs::write(dir.0.join(&name), &bytes).unwrap();
    // An ack of 2 in another, healthy segment.
    let mut other = Layout::new(100);
    std::fs::write(
        dir.0.join(segment_name(1, 0, 2)),
        other
            .write([Record::Ack { id: 2 << 8 }.encode().unwrap().as_slice()])
            .bytes,
    )
    .unwrap();
    let recovered = recover(&dir.config()).unwrap();
    assert_eq!(
        recovered_ids(&recovered),
        [1, 3, 4, 6, 7, 8, 9].map(|id| id << 8)
    );
    assert_eq!(
        std::fs::read(dir.0.join(format!("{name}.corrupt"))).unwrap(),
        bytes
    );
    assert_eq!(recovered.shards[0].corrupt_segments, 1);
    assert_eq!(dir.files("corrupt").len(), 1, "the healthy one is not kept");
    assert_eq!(dir.files("log").len(), 1, "just the rewritten one");
}
