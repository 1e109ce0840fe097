//! One client flooding the server with websocket pings, and never reading
//! the pongs, must neither starve the other connections of its shard nor
//! make the server hold its pongs without bound (issue 13, point 8).

mod common;

use common::*;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long the flood lasts while the others' round trips are timed.
const FLOOD: Duration = Duration::from_millis(3000);
/// The slowest round trip allowed to a neighbour of the flooder. Generous:
/// the machine running the tests may be busy; a starved shard answers
/// nothing at all until the flood stops.
const SLOWEST: Duration = Duration::from_millis(500);

/// Masked client ping frames with the largest control payload (125 bytes),
/// so each one asks for the largest pong.
fn ping_frames(count: usize) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = Vec::with_capacity(count * 131);
    for _ in 0..count {
        out.extend_from_slice(&[0x89, 0x80 | 125]);
        out.extend_from_slice(&mask);
        out.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    }
    out
}

fn resident_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

#[test]
fn a_ping_flood_neither_starves_the_shard_nor_grows_memory() {
    let server = Server::start(&["--shards", "1"]);
    let mut a = Client::ready(&server, Encoding::Json, "app", "a");
    let mut b = Client::ready(&server, Encoding::Json, "bapp", "b");
    let before = resident_kib(&server);

    // The flooder writes raw ping frames on its socket from a thread and
    // never reads: its pongs pile up on the server's side.
    let flooder = Client::connect_raw(&server, Encoding::Json);
    let mut socket = flooder
        .tcp()
        .try_clone()
        .expect("clone the flooder's socket");
    socket
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        thread::spawn(move || {
            let frames = ping_frames(500);
            // Where the next write starts in `frames`: a write the socket
            // takes only part of is continued, never restarted, so the
            // frames stay whole.
            let mut at = 0;
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match socket.write(&frames[at..]) {
                    Ok(n) => {
                        written += n as u64;
                        at = (at + n) % frames.len();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => panic!("flooder: write failed: {e}"),
                }
            }
            written
        })
    };
    thread::sleep(Duration::from_millis(100));

    // Meanwhile `a` keeps making round trips: a heartbeat, and a SEND to
    // `b` that `b` must receive.
    let end = Instant::now() + FLOOD;
    let (mut trips, mut slowest, mut grown) = (0u32, Duration::ZERO, 0);
    while Instant::now() < end {
        let t0 = Instant::now();
        a.send(OP_HEARTBEAT, json!({"client_id": "a"}), None);
        match a.next_event(SLOWEST) {
            Event::Packet(p) if p["op"] == json!(OP_HEARTBEAT_ACK) => {}
            other => panic!("a: no heartbeat ack within {SLOWEST:?} during the flood: {other:?}"),
        }
        a.send_to(query("bapp"), json!(trips), json!("x"));
        match b.next_event(SLOWEST) {
            Event::Packet(p) if p["d"]["nonce"] == json!(trips) => {}
            other => panic!("b: SEND not received within {SLOWEST:?} during the flood: {other:?}"),
        }
        slowest = slowest.max(t0.elapsed());
        trips += 1;
        grown = grown.max(resident_kib(&server).saturating_sub(before));
    }
    stop.store(true, Ordering::Relaxed);
    let written = flood.join().expect("flooder thread");
    eprintln!(
        "{trips} round trips, slowest {slowest:?}; flooder wrote {} MiB; server grew {grown} KiB",
        written >> 20
    );
    assert!(trips >= 10, "only {trips} round trips in {FLOOD:?}");
    // Pongs a non-reading client asked for are coalesced, not queued: the
    // server holds a few of them, whatever the flood's length.
    assert!(
        written > 8 << 20,
        "the flooder wrote only {written} bytes: the flood did not happen"
    );
    assert!(
        grown < 16 << 10,
        "the server grew by {grown} KiB during the flood"
    );
    drop(flooder);
}
