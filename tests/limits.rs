//! Every limit and what happens past it: frame size, metadata size, and the
//! per-connection outbound bound (slow consumers).

mod common;

use common::*;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

fn big(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn a_frame_above_the_limit_is_an_error_and_closes() {
    let server = Server::start(&["--max-frame-size", "4096"]);
    for enc in ALL_ENCODINGS {
        let app = format!("solo-{}", enc.name());
        // Under the limit: delivered (to the sender itself).
        let mut c = Client::ready(&server, enc, &app, "c");
        c.send_to(query(&app), json!(1), json!(big(3000)));
        c.expect_message("SEND", &json!(1), &json!(big(3000)));
        // Over it: error and close.
        c.send_to(query(&app), json!(2), json!(big(8000)));
        c.expect_error_close(texts::FRAME_TOO_LARGE);

        // Before identify, too, and whatever the frame holds.
        let mut c = Client::connect(&server, enc);
        c.send_identify(
            &app,
            "c",
            json!({"metadata": {"blob": meta("string", json!(big(8000)))}}),
        );
        c.expect_error_close(texts::FRAME_TOO_LARGE);
        let mut c = Client::ready(&server, enc, &app, "c2");
        let junk = match enc {
            Json => tungstenite::Message::text(big(10_000)),
            _ => tungstenite::Message::binary(vec![0xc1u8; 10_000]),
        };
        c.send_message(junk);
        c.expect_error_close(texts::FRAME_TOO_LARGE);
    }
    // The server is fine.
    let mut c = Client::ready(&server, Json, "app", "after");
    c.heartbeat();
}

/// `packet` as a text or binary message split into `n` websocket fragments.
fn fragments(enc: Encoding, packet: &Value, n: usize) -> Vec<Message> {
    let (kind, bytes) = match enc.encode(packet) {
        Message::Text(t) => (Data::Text, t.as_str().as_bytes().to_vec()),
        Message::Binary(b) => (Data::Binary, b.to_vec()),
        _ => unreachable!(),
    };
    let size = bytes.len().div_ceil(n);
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let op = if i == 0 {
                OpCode::Data(kind)
            } else {
                OpCode::Data(Data::Continue)
            };
            Message::Frame(Frame::message(c.to_vec(), op, i == last))
        })
        .collect()
}

#[test]
fn fragmented_messages_are_reassembled() {
    let server = Server::start(&[]);
    for enc in ALL_ENCODINGS {
        let app = format!("frag-{}", enc.name());
        let mut c = Client::connect(&server, enc);
        let identify = json!({"op": 1, "d": {"client_id": "f", "application_id": app}});
        for m in fragments(enc, &identify, 3) {
            c.send_message(m);
        }
        assert_eq!(
            c.expect_op(OP_READY)["d"],
            json!({"client_id": "f", "restricted": false})
        );
        c.id = Some("f".into());
        let send = json!({"op": 4, "t": "SEND", "d": {"target": query(&app), "nonce": 1, "payload": big(5000)}});
        for m in fragments(enc, &send, 4) {
            c.send_message(m);
        }
        c.expect_message("SEND", &json!(1), &json!(big(5000)));
    }
}

/// The limit bounds what the server buffers for one packet, so a message
/// whose fragments are each small but whose sum is over the limit is refused
/// the same way.
#[test]
fn a_fragmented_message_above_the_limit_is_too_large() {
    let server = Server::start(&["--max-frame-size", "4096"]);
    for enc in ALL_ENCODINGS {
        let app = format!("frag-{}", enc.name());
        let mut c = Client::ready(&server, enc, &app, "f");
        let send = json!({"op": 4, "t": "SEND", "d": {"target": query(&app), "nonce": 1, "payload": big(8000)}});
        for m in fragments(enc, &send, 4) {
            if c.try_send_message(m).is_err() {
                break;
            }
        }
        c.expect_error_close(texts::FRAME_TOO_LARGE);
    }
}

#[test]
fn the_default_frame_limit_is_one_mebibyte() {
    let server = Server::start(&[]);
    let mut c = Client::ready(&server, Msgpack, "solo", "c");
    c.send_to(query("solo"), json!(1), json!(big(900_000)));
    c.expect_message("SEND", &json!(1), &json!(big(900_000)));
    c.send_to(query("solo"), json!(2), json!(big(1_100_000)));
    c.expect_error_close(texts::FRAME_TOO_LARGE);
}

#[test]
fn a_metadata_update_above_the_limit_is_invalid() {
    let server = Server::start(&["--max-metadata-size", "1024"]);
    for enc in ALL_ENCODINGS {
        let id = format!("m-{}", enc.name());
        let mut c = Client::ready(&server, enc, "app", &id);
        c.update_metadata(json!({"small": meta("string", json!(big(100)))}));
        c.update_metadata(json!({"blob": meta("string", json!(big(4000)))}));
        c.expect_invalid(texts::METADATA_TOO_LARGE);
        c.update_metadata(json!({"many": meta("list", json!((0..1000).collect::<Vec<_>>()))}));
        c.expect_invalid(texts::METADATA_TOO_LARGE);
        // Connection open; nothing of the big updates applied.
        let nodes = c.query_nodes(query("app"));
        let m = &node_of(&nodes, &id)["metadata"];
        assert_eq!(m["small"], json!(big(100)));
        assert!(m.get("blob").is_none() && m.get("many").is_none(), "{m}");
    }
}

/// The limit applies to what the metadata would become: updates add up,
/// a key overwritten by merge counts once, and replace mode frees the old
/// keys.
#[test]
fn the_metadata_limit_counts_the_result_of_the_update() {
    let server = Server::start(&["--max-metadata-size", "2000"]);
    let mut c = Client::ready(&server, Json, "app", "merge");
    c.set_metadata(json!({"a": meta("string", json!(big(700)))}));
    c.set_metadata(json!({"b": meta("string", json!(big(700)))}));
    // Overwriting "a" with the same size is fine: it replaces, not adds.
    c.set_metadata(json!({"a": meta("string", json!(big(700)))}));
    // A third key of that size would pass 2000 bytes in all.
    c.update_metadata(json!({"c": meta("string", json!(big(700)))}));
    c.expect_invalid(texts::METADATA_TOO_LARGE);

    let server = Server::start(&[
        "--max-metadata-size",
        "2000",
        "--metadata-update-mode",
        "replace",
    ]);
    let mut c = Client::ready(&server, Json, "app", "replace");
    c.set_metadata(json!({"a": meta("string", json!(big(700)))}));
    c.set_metadata(json!({"b": meta("string", json!(big(700)))}));
    // Replace drops "a" and "b": a new pair of the same size fits.
    c.set_metadata(
        json!({"c": meta("string", json!(big(700))), "d": meta("string", json!(big(700)))}),
    );
    let nodes = c.query_nodes(query("app"));
    let m = &node_of(&nodes, "replace")["metadata"];
    assert!(
        m.get("a").is_none() && m.get("b").is_none() && m.get("c").is_some(),
        "{m}"
    );
}

#[test]
fn the_default_metadata_limit_is_64_kib() {
    let server = Server::start(&[]);
    let mut c = Client::ready(&server, Json, "app", "c");
    c.set_metadata(json!({"ok": meta("string", json!(big(30_000)))}));
    c.update_metadata(json!({"blob": meta("string", json!(big(100_000)))}));
    c.expect_invalid(texts::METADATA_TOO_LARGE);
    c.heartbeat();
}

/// A client that never reads, while others broadcast big payloads to it and
/// to a reader, gets "slow consumer" and is closed; the reader, which keeps up,
/// gets every message.
#[test]
fn a_slow_consumer_is_cut_off_and_others_keep_receiving() {
    let server = Server::start(&["--max-outbound-bytes", "262144", "--shards", "3"]);
    let mut sender = Client::ready(&server, Json, "src", "sender");
    let mut slow = Client::ready(&server, Json, "sink", "slow");
    let mut reader = Client::ready(&server, Msgpack, "sink", "reader");

    // 400 x 64 KiB = 25 MiB: far past the kernel's socket buffers plus the
    // 256 KiB bound, whatever they are on this machine.
    let count = 400usize;
    let chunk = big(64 * 1024);
    let (tx, rx) = mpsc::channel::<usize>();
    let reader_thread = std::thread::spawn(move || {
        let mut got = 0usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while got < count {
            assert!(
                Instant::now() < deadline,
                "reader got only {got} of {count}"
            );
            let d = reader.expect_dispatch("BROADCAST");
            assert_eq!(
                d["nonce"],
                json!(got),
                "the reader gets every message, in order"
            );
            assert_eq!(d["payload"].as_str().map(str::len), Some(64 * 1024));
            got += 1;
            let _ = tx.send(got);
        }
        reader.expect_quiet();
        reader.heartbeat();
        (got, reader)
    });
    for i in 0..count {
        sender.broadcast(query("sink"), json!(i), json!(chunk));
        // Keep at most a few messages in flight to the reader, so the reader
        // itself never comes near the bound.
        if i >= 2 {
            let want = i - 1;
            loop {
                let got = rx
                    .recv_timeout(STEP)
                    .unwrap_or_else(|_| panic!("the reader stalled before message {want}"));
                if got >= want {
                    break;
                }
            }
        }
    }
    let (got, mut reader) = reader_thread.join().expect("reader thread");
    assert_eq!(got, count);

    // Now read what the slow client was sent: some broadcasts, then the error
    // and the close.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut broadcasts = 0usize;
    loop {
        assert!(
            Instant::now() < deadline,
            "no slow-consumer error after {broadcasts} broadcasts"
        );
        match slow.next_event(STEP) {
            Event::Packet(p) if p["op"] == json!(OP_DISPATCH) => broadcasts += 1,
            Event::Packet(p) => {
                assert_eq!(p["op"], json!(OP_ERROR), "{p}");
                assert_eq!(p["d"]["error"], json!(texts::SLOW_CONSUMER), "{p}");
                break;
            }
            other => panic!(
                "slow client: expected broadcasts then the error, got {other:?} after {broadcasts}"
            ),
        }
    }
    assert!(
        broadcasts < count,
        "the slow client was cut off before the end ({broadcasts} of {count})"
    );
    slow.expect_closed();
    // It is gone from the registry, the others are not.
    let ids = sender.query_ids(query("sink"));
    assert_eq!(ids, set(&["reader"]));
    reader.heartbeat();
}

/// QUERY_NODES and `POST /api/v1/query` describe at most
/// `--max-query-results` clients. An answer within the cap keeps the
/// contract's shape exactly; a cut one says so: QUERY_NODES adds
/// `"truncated": true` and the `total` matched, HTTP keeps its array body
/// and adds `X-Singyeong-Truncated: true` and `X-Singyeong-Total`.
#[test]
fn query_answers_are_capped_and_say_so() {
    let server = Server::start(&["--shards", "3", "--max-query-results", "5"]);
    let mut clients: Vec<Client> = (0..12)
        .map(|n| {
            let extra = json!({"metadata": {"n": meta("integer", json!(n))}});
            Client::ready_with(&server, Json, "many", &format!("c{n}"), extra)
        })
        .collect();
    for enc in ALL_ENCODINGS {
        let mut asker = Client::ready(&server, enc, "obs", &format!("asker-{}", enc.name()));
        // Under and at the cap: exactly the contract's answer.
        for (below, want) in [(3, 3), (5, 5)] {
            let q = query_ops("many", json!([op("/n", "$lt", json!(below))]));
            asker.dispatch("QUERY_NODES", q);
            let d = asker.expect_dispatch("QUERY_NODES");
            let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["nodes"], "{d}");
            assert_eq!(d["nodes"].as_array().unwrap().len(), want, "{d}");
        }
        // Past it: five clients, and the answer says it was cut.
        asker.dispatch("QUERY_NODES", query("many"));
        let d = asker.expect_dispatch("QUERY_NODES");
        assert_eq!(d["truncated"], json!(true), "{d}");
        assert_eq!(d["total"], json!(12), "{d}");
        let nodes = d["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 5, "{d}");
        for n in nodes {
            check_client_object(n);
        }
        assert_eq!(ids(nodes).len(), 5, "five different clients");
        asker.heartbeat();
    }

    let r = server.http_query(&query_ops("many", json!([op("/n", "$lt", json!(4))])), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 4);
    assert_eq!(r.header("x-singyeong-truncated"), None);
    assert_eq!(r.header("x-singyeong-total"), None);
    let r = server.http_query(&query("many"), None);
    assert_eq!(r.status, 200);
    let nodes = r.json().as_array().unwrap().clone();
    assert_eq!(nodes.len(), 5);
    nodes.iter().for_each(check_client_object);
    assert_eq!(r.header("x-singyeong-truncated"), Some("true"));
    assert_eq!(r.header("x-singyeong-total"), Some("12"));

    let metrics = server.http("GET", "/metrics", &[], None).text();
    let cut: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("singyeong_limit_refusals_total{") && l.contains("query_results"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(cut, 4, "three QUERY_NODES and one HTTP answer were cut");
    clients.iter_mut().for_each(Client::heartbeat);
}

/// A QUERY_NODES answer larger than the asker's outbound bound used to
/// close the asker as a "slow consumer". The answer is now cut to half of
/// `--max-outbound-bytes` (and says so), and the asker stays connected.
#[test]
fn a_large_query_answer_is_cut_not_a_slow_consumer() {
    let server = Server::start(&["--shards", "2", "--max-outbound-bytes", "65536"]);
    let mut clients: Vec<Client> = (0..10)
        .map(|n| {
            let extra = json!({"metadata": {"blob": meta("string", json!(big(16 * 1024)))}});
            Client::ready_with(&server, Json, "fat", &format!("f{n}"), extra)
        })
        .collect();
    for enc in ALL_ENCODINGS {
        let mut asker = Client::ready(&server, enc, "obs", &format!("asker-{}", enc.name()));
        asker.dispatch("QUERY_NODES", query("fat"));
        let d = asker.expect_dispatch("QUERY_NODES");
        assert_eq!(d["truncated"], json!(true), "{}", d["total"]);
        assert_eq!(d["total"], json!(10));
        let nodes = d["nodes"].as_array().unwrap();
        // 32 KiB of answer: one 16 KiB client fits, three never do.
        assert!(!nodes.is_empty() && nodes.len() < 3, "{}", nodes.len());
        asker.heartbeat();
    }
    // HTTP answers stay within the same budget.
    let r = server.http_query(&query("fat"), None);
    assert_eq!(r.status, 200);
    assert!(r.json().as_array().unwrap().len() < 3);
    assert_eq!(r.header("x-singyeong-truncated"), Some("true"));
    clients.iter_mut().for_each(Client::heartbeat);
}

/// The new limits are read like every other setting: from the environment
/// and from the config file.
#[test]
fn the_new_limits_come_from_the_environment_and_the_config_file() {
    let dir = std::env::temp_dir().join("singyeong-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}-limits.toml", std::process::id()));
    std::fs::write(&file, "max_queue_name_length = 8\nno_durable = true\n").unwrap();
    let server = Server::start_with_env(
        &["--config", file.to_str().unwrap()],
        &[("MAX_QUERY_RESULTS", "2")],
    );
    let _others: Vec<Client> = (0..3)
        .map(|n| Client::ready(&server, Json, "env", &format!("e{n}")))
        .collect();
    let mut asker = Client::ready(&server, Json, "obs", "asker");
    asker.dispatch("QUERY_NODES", query("env"));
    let d = asker.expect_dispatch("QUERY_NODES");
    assert_eq!(d["nodes"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!((&d["truncated"], &d["total"]), (&json!(true), &json!(3)));
    asker.dispatch("QUEUE_REQUEST", json!({"queue": "123456789"}));
    let extra = asker.expect_invalid("queue name too long");
    assert_eq!(extra["max_queue_name_length"], json!(8));
    let _ = std::fs::remove_file(file);
}
