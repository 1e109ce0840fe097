//! Slow HTTP clients (issue 13 point 10): a request's head must arrive
//! within `--http-head-timeout` and its body within `--http-body-timeout`,
//! however the client spreads its bytes (a slowloris sending a byte now and
//! then used to keep a connection forever, each read resetting a per-read
//! timeout); header and trailer fields are counted. The deadlines here are
//! short so that each test runs in about a second.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const HEAD_MS: u64 = 400;
const BODY_MS: u64 = 400;

fn start(extra: &[&str]) -> Server {
    let head = HEAD_MS.to_string();
    let body = BODY_MS.to_string();
    let mut args = vec!["--http-head-timeout", &head, "--http-body-timeout", &body];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// What a client got back after writing `prefix`, then one byte of `trickle`
/// every 50 ms, until the server answered and closed (or `STEP` passed):
/// the bytes received and when the connection was closed.
fn trickle(server: &Server, prefix: &[u8], trickle: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    s.write_all(prefix).unwrap();
    let mut got = Vec::new();
    let mut next = trickle.iter().cycle();
    let mut chunk = [0u8; 4096];
    loop {
        assert!(
            started.elapsed() < STEP,
            "the server kept a trickling client {STEP:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        // Keep trickling until the answer starts (the server may have
        // stopped reading already: write errors are the point).
        if got.is_empty() {
            let _ = s.write_all(&[*next.next().unwrap()]);
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

fn assert_cut_at(deadline_ms: u64, took: Duration) {
    let deadline = Duration::from_millis(deadline_ms);
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(1500),
        "cut after {took:?}, deadline {deadline:?}"
    );
}

#[test]
fn a_head_trickling_in_is_cut_at_the_deadline_with_408() {
    let server = start(&["--shards", "1"]);
    let (answer, took) = trickle(&server, b"GET /api/version HTTP/1.1\r\nX-Slow: ", b"a");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains(&format!("request head not received within {HEAD_MS} ms")),
        "{answer}"
    );
    assert_cut_at(HEAD_MS, took);
    // The server is fine, and counted it.
    let text = server.http("GET", "/metrics", &[], None).text();
    assert!(
        text.contains("singyeong_http_request_timeouts_total{shard=\"0\"} 1"),
        "{text}"
    );
}

#[test]
fn a_websocket_upgrade_trickling_in_is_cut_at_the_same_deadline() {
    let server = start(&[]);
    let (answer, took) = trickle(
        &server,
        b"GET /gateway/websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        b"X-a: b\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_cut_at(HEAD_MS, took);
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_head_deadline() {
    let server = start(&[]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let n = s.read_to_end(&mut got).unwrap();
    assert_eq!(
        n,
        0,
        "nothing to answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_cut_at(HEAD_MS, started.elapsed());
}

#[test]
fn a_body_trickling_in_is_cut_at_the_body_deadline_with_408() {
    let server = start(&[]);
    let (answer, took) = trickle(
        &server,
        b"POST /api/v1/query HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        b" ",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains(&format!("request body not received within {BODY_MS} ms")),
        "{answer}"
    );
    assert_cut_at(BODY_MS, took);
}

#[test]
fn chunked_trailers_trickling_in_are_cut_at_the_body_deadline() {
    let server = start(&[]);
    let (answer, took) = trickle(
        &server,
        b"POST /api/v1/query HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
        b"T: v\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_cut_at(BODY_MS, took);
}

#[test]
fn idle_time_between_kept_alive_requests_is_not_head_time() {
    let server = start(&[]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let request = b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        s.write_all(request).unwrap();
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        let answer = String::from_utf8_lossy(&chunk[..n]);
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        // Longer than the head deadline, shorter than the idle timeout.
        std::thread::sleep(Duration::from_millis(HEAD_MS * 2));
    }
}

/// A request with `fields` headers, or a chunked one with `fields` trailers.
fn with_fields(fields: usize, trailers: bool) -> Vec<u8> {
    let lines: String = (0..fields).map(|i| format!("X-F{i}: v\r\n")).collect();
    if trailers {
        format!(
            "POST /api/v1/query HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
             2\r\n{{}}\r\n0\r\n{lines}\r\n"
        )
    } else {
        format!("GET /api/version HTTP/1.1\r\nConnection: close\r\n{lines}\r\n")
    }
    .into_bytes()
}

#[test]
fn header_and_trailer_fields_past_the_limit_get_431() {
    let server = start(&["--http-max-headers", "8"]);
    // Connection: close (and Transfer-Encoding) count among the fields.
    let r = server.http_raw(&with_fields(7, false));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.http_raw(&with_fields(8, false));
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json(), json!({"errors": ["more than 8 header fields"]}));

    let r = server.http_raw(&with_fields(8, true));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.http_raw(&with_fields(9, true));
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json(), json!({"errors": ["more than 8 trailer fields"]}));
}
