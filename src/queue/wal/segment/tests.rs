//! The on-disk bytes of a segment: layout, torn writes, stale bytes,
//! corruption in the middle.

use super::*;
use serde_json::json;

/// An enqueue record of queue `jobs` (also used by the log's own tests).
pub(in crate::queue::wal) fn enqueue(id: u64) -> Record {
    Record::Enqueue {
        id,
        queue: "jobs".into(),
        target: json!({"application": "a"}),
        d: json!({"nonce": id, "payload": {"queue": "jobs", "id": id.to_string(), "payload": "x"}}),
    }
}

fn body(id: u64) -> Vec<u8> {
    enqueue(id).encode().unwrap()
}

/// A file as the writer leaves it: each write lands at the end of the
/// previous one (asserted: nothing is ever written over).
#[derive(Default)]
struct File {
    bytes: Vec<u8>,
    /// Where each write started.
    writes: Vec<usize>,
}

impl File {
    fn write(&mut self, layout: &mut Layout, ids: &[u64]) -> Write {
        let bodies: Vec<Vec<u8>> = ids.iter().map(|&id| body(id)).collect();
        let w = layout.write(bodies.iter().map(Vec::as_slice));
        assert_eq!(
            w.offset as usize,
            self.bytes.len(),
            "never over earlier bytes"
        );
        assert_eq!(w.offset as usize % BLOCK, 0);
        assert_eq!(w.bytes.len() % BLOCK, 0);
        self.writes.push(self.bytes.len());
        self.bytes.extend_from_slice(&w.bytes);
        w
    }
}

fn ids(scan: &Scan) -> Vec<u64> {
    scan.records
        .iter()
        .map(|(r, _)| match r {
            Record::Enqueue { id, .. } | Record::Ack { id } | Record::Deliver { id } => *id,
        })
        .collect()
}

/// Three writes (one per sync): [1, 2], [3], [4, 5].
fn three_writes(epoch: u64) -> File {
    let mut layout = Layout::new(epoch);
    let mut f = File::default();
    f.write(&mut layout, &[1, 2]);
    f.write(&mut layout, &[3]);
    f.write(&mut layout, &[4, 5]);
    f
}

#[test]
fn writes_are_block_aligned_zero_padded_and_read_back() {
    let f = three_writes(42);
    // Header block, then one block per (small) write.
    assert_eq!(f.writes, [0, 2 * BLOCK, 3 * BLOCK]);
    assert_eq!(f.bytes.len(), 4 * BLOCK);
    let scan = scan(&f.bytes);
    assert_eq!(scan.format, 2);
    assert_eq!(scan.epoch, 42);
    assert_eq!(ids(&scan), [1, 2, 3, 4, 5]);
    assert_eq!(scan.torn_at, None);
    assert!(scan.damage.is_empty(), "{:?}", scan.damage);
    // Where each record was read is where it was written.
    let (_, at) = scan.records[2];
    assert_eq!(at.offset as usize, 2 * BLOCK);
    let frame_bytes = &f.bytes[at.offset as usize..(at.offset + u64::from(at.len)) as usize];
    let (seq, b) = frame_at(frame_bytes, 42).unwrap();
    assert_eq!((seq, b), (3, body(3).as_slice()));
}

#[test]
fn a_write_pads_with_zeros_even_from_a_dirty_allocator() {
    // The padding is part of the bytes the layout hands out: zeros.
    let mut layout = Layout::new(7);
    let w = layout.write([body(1).as_slice()]);
    let used = BLOCK + FRAME_HEADER + body(1).len();
    assert!(w.bytes[used..].iter().all(|&b| b == 0));
    assert_eq!(
        w.overhead as usize,
        w.bytes.len() - FRAME_HEADER - body(1).len()
    );
}

#[test]
fn a_torn_last_write_loses_nothing_written_before_it() {
    // Issue 13 point 4: the old writer rewrote the partly filled block at
    // each sync, so a torn sync could damage records confirmed before it.
    // Here the last write only ever covers blocks of its own: tearing it
    // (some sectors on disk, some not, some garbled) leaves every earlier
    // record readable.
    let whole = three_writes(9);
    let last = whole.writes[2];
    type Tear = Box<dyn Fn(&mut Vec<u8>)>;
    let tears: Vec<(&str, Tear)> = vec![
        (
            "cut short",
            Box::new(move |b: &mut Vec<u8>| b.truncate(last + 20)),
        ),
        (
            "first sector lost",
            Box::new(move |b: &mut Vec<u8>| b[last..last + SECTOR].fill(0)),
        ),
        (
            "second record's sector lost",
            Box::new(move |b: &mut Vec<u8>| {
                let end = b.len();
                b[last + 100..end].fill(0)
            }),
        ),
        (
            "not on disk at all",
            Box::new(move |b: &mut Vec<u8>| b.truncate(last)),
        ),
    ];
    for (what, tear) in tears {
        let mut bytes = whole.bytes.clone();
        tear(&mut bytes);
        let scan = scan(&bytes);
        let got = ids(&scan);
        assert_eq!(&got[..3], [1, 2, 3], "{what}: confirmed records lost");
        assert!(scan.damage.is_empty(), "{what}: {:?}", scan.damage);
        // What the torn write held is gone (it was never confirmed), and
        // that is a torn tail, not corruption.
        assert_eq!(got, [1, 2, 3], "{what}");
        if what == "cut short" || what == "second record's sector lost" {
            assert_eq!(scan.torn_at, Some(last as u64), "{what}");
        }
    }
}

#[test]
fn stale_bytes_after_the_end_of_data_are_never_replayed() {
    // Issue 13 point 4: the old writer padded with an unzeroed buffer, so
    // copies of older records lay after the end of data and could be
    // replayed. Copy valid frames after the end here, from this segment
    // and from another one, aligned and not: none is taken.
    let f = three_writes(1234);
    let other = three_writes(5678);
    let own_frame = |i: usize| {
        let (_, at) = scan(&f.bytes).records[i];
        f.bytes[at.offset as usize..(at.offset + u64::from(at.len)) as usize].to_vec()
    };
    let other_frames: Vec<Vec<u8>> = scan(&other.bytes)
        .records
        .iter()
        .map(|(_, at)| {
            other.bytes[at.offset as usize..(at.offset + u64::from(at.len)) as usize].to_vec()
        })
        .collect();
    let end_of_data = {
        let (_, at) = scan(&f.bytes).records[4];
        (at.offset + u64::from(at.len)) as usize
    };
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        (
            "own record, right after the data",
            end_of_data,
            own_frame(0),
        ),
        ("own record, next block", f.bytes.len(), own_frame(3)),
        (
            "another segment's next-numbered record",
            end_of_data,
            other_frames[4].clone(),
        ),
        (
            "another segment's records, next block",
            f.bytes.len(),
            other_frames.concat(),
        ),
    ];
    for (what, at, stale) in cases {
        let mut bytes = f.bytes.clone();
        if bytes.len() < at + stale.len() {
            bytes.resize(at + stale.len(), 0);
        }
        bytes[at..at + stale.len()].copy_from_slice(&stale);
        let scan = scan(&bytes);
        assert_eq!(ids(&scan), [1, 2, 3, 4, 5], "{what}: stale record replayed");
    }
}

#[test]
fn corruption_in_the_middle_keeps_every_record_after_it() {
    let mut layout = Layout::new(77);
    let mut f = File::default();
    for id in 1..=6 {
        f.write(&mut layout, &[id]);
    }
    let whole = scan(&f.bytes);
    let (_, bad) = whole.records[2]; // record 3, in the middle
    for (what, damage) in [
        ("flipped bit", 0usize),
        ("zeroed header", 1),
        ("garbage block", 2),
    ] {
        let mut bytes = f.bytes.clone();
        let o = bad.offset as usize;
        match damage {
            0 => bytes[o + FRAME_HEADER + 5] ^= 0x10,
            1 => bytes[o..o + FRAME_HEADER].fill(0),
            _ => bytes[o..o + BLOCK].fill(0xa5),
        }
        let scan = scan(&bytes);
        assert_eq!(ids(&scan), [1, 2, 4, 5, 6], "{what}");
        assert_eq!(scan.torn_at, None, "{what}");
        assert!(
            matches!(
                scan.damage[..],
                [Damage::Skipped { offset, lost: 1, .. }] if offset == bad.offset
            ),
            "{what}: {:?}",
            scan.damage
        );
    }
}

#[test]
fn garbage_no_torn_write_explains_is_corruption_even_at_the_end() {
    let f = three_writes(3);
    let mut bytes = f.bytes.clone();
    bytes.extend_from_slice(&[0xa5; 100]);
    let scan = scan(&bytes);
    assert_eq!(ids(&scan), [1, 2, 3, 4, 5]);
    assert!(
        matches!(scan.damage[..], [Damage::Garbage { .. }]),
        "{:?}",
        scan.damage
    );
}

#[test]
fn a_valid_frame_that_does_not_decode_is_skipped_not_the_end() {
    let mut layout = Layout::new(5);
    let mut f = File::default();
    f.write(&mut layout, &[1]);
    let w = layout.write([b"\x09not a record".as_slice()]);
    f.bytes.extend_from_slice(&w.bytes);
    f.write(&mut layout, &[3]);
    let scan = scan(&f.bytes);
    assert_eq!(ids(&scan), [1, 3]);
    assert!(
        matches!(scan.damage[..], [Damage::Unreadable { .. }]),
        "{:?}",
        scan.damage
    );
}

// ---------------------------------------------------------------------------
// Format 1 (logs of earlier versions)
// ---------------------------------------------------------------------------

/// A format-1 frame, exactly as earlier versions wrote it.
pub(crate) fn legacy_frame(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// The enqueue record earlier versions wrote for a queue name longer than
/// 65,535 bytes: its length cut to u16, its checksum valid.
pub(crate) fn legacy_truncated_name(id: u64, name_len: usize, out: &mut Vec<u8>) {
    let mut b = vec![1u8];
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(name_len as u16).to_le_bytes());
    b.extend(std::iter::repeat_n(b'q', name_len));
    for v in [json!({"application": "a"}), json!({"nonce": 1})] {
        let j = serde_json::to_vec(&v).unwrap();
        b.extend_from_slice(&(j.len() as u32).to_le_bytes());
        b.extend_from_slice(&j);
    }
    legacy_frame(&b, out);
}

#[test]
fn format_1_is_still_read() {
    let mut buf = Vec::new();
    for id in 1..=3 {
        legacy_frame(&body(id), &mut buf);
    }
    let scan = scan(&buf);
    assert_eq!(scan.format, 1);
    assert_eq!(ids(&scan), [1, 2, 3]);
    // Padding, stale bytes or a torn record in the last writes: the
    // tail, as before.
    let mut padded = buf.clone();
    padded.extend_from_slice(&[0; 4096]);
    assert_eq!(ids(&scan_v1(&padded)), [1, 2, 3]);
    let mut cut = buf.clone();
    cut.truncate(buf.len() - 3);
    let s = scan_v1(&cut);
    assert_eq!((ids(&s).len(), s.damage.len()), (2, 0));
    assert!(s.torn_at.is_some());
}

#[test]
fn format_1_record_with_a_cut_queue_name_does_not_hide_the_records_after_it() {
    // Issue 13 point 1, as written by the old encoder: 10 records, the
    // 70,000-byte name, 10 more.
    let mut buf = Vec::new();
    for id in 1..=10 {
        legacy_frame(&body(id), &mut buf);
    }
    legacy_truncated_name(11, 70_000, &mut buf);
    for id in 12..=21 {
        legacy_frame(&body(id), &mut buf);
    }
    let scan = scan(&buf);
    let want: Vec<u64> = (1..=10).chain(12..=21).collect();
    assert_eq!(ids(&scan), want);
    assert!(
        matches!(scan.damage[..], [Damage::Unreadable { .. }]),
        "{:?}",
        scan.damage
    );
}

#[test]
fn format_1_bad_frame_far_from_the_end_is_corruption() {
    let mut buf = Vec::new();
    let mut id = 0;
    while buf.len() < 3 * LEGACY_TAIL {
        id += 1;
        legacy_frame(&body(id), &mut buf);
    }
    let first = body(1).len() + 8;
    buf[first + 12] ^= 0xff; // inside record 2, far from the end
    let scan = scan(&buf);
    assert_eq!(ids(&scan), [1]);
    assert!(
        matches!(scan.damage[..], [Damage::Garbage { .. }]),
        "{:?}",
        scan.damage
    );
}
