//! A short run of each scenario against the real server, checking what was
//! sent against what was delivered and the shape of the JSON result; then
//! the hard limits and argument errors.

mod common;

use std::time::Duration;

use common::{Server, assert_shape, loadtest, u};

#[test]
fn connect_holds_identified_connections_through_heartbeats() {
    // A short heartbeat interval: connections that failed to heartbeat would
    // be closed by the server during the idle period.
    let server = Server::start(&["--shards", "2", "--heartbeat-interval", "400"]);
    let pid = server.pid().to_string();
    let url = server.url();
    let run = loadtest(&[
        "--scenario",
        "connect",
        "--url",
        &url,
        "-n",
        "60",
        "--source-addrs",
        "3",
        "--idle",
        "1.5",
        "--server-pid",
        &pid,
        "--timeout",
        "30",
    ]);
    let v = run.assert_success();
    assert_shape(&v);
    assert_eq!(v["scenario"], "connect");
    assert_eq!(u(&v, "/connect/requested"), 60);
    assert_eq!(u(&v, "/connect/identified"), 60);
    assert_eq!(u(&v, "/connect/failed"), 0);
    assert_eq!(u(&v, "/connect/latency_us/count"), 60);
    assert_eq!(u(&v, "/errors/disconnects"), 0, "{}", run.stderr);
    assert_eq!(u(&v, "/errors/count"), 0, "{}", run.stderr);
    assert!(v["traffic"].is_null());
    assert_eq!(u(&v, "/server/pid"), u64::from(server.pid()));
    assert!(u(&v, "/server/rss_connected_bytes") > 0);
    assert!(run.stderr.contains("60/60 identified"), "{}", run.stderr);
}

#[test]
fn targeted_delivers_every_send_to_its_receiver() {
    let server = Server::start(&["--shards", "2"]);
    let pid = server.pid().to_string();
    let url = server.url();
    let run = loadtest(&[
        "--scenario",
        "targeted",
        "--url",
        &url,
        "-n",
        "40",
        "--senders",
        "2",
        "--apps",
        "2",
        "--window",
        "8",
        "--payload-bytes",
        "100",
        "--duration",
        "1",
        "--idle",
        "0.2",
        "--server-pid",
        &pid,
        "--timeout",
        "30",
    ]);
    let v = run.assert_success();
    assert_shape(&v);
    let sent = u(&v, "/traffic/sent");
    assert!(sent > 0, "nothing sent: {}", run.stderr);
    assert_eq!(u(&v, "/connect/identified"), 42);
    assert_eq!(u(&v, "/traffic/expected"), sent);
    assert_eq!(u(&v, "/traffic/delivered"), sent, "{}", run.stderr);
    assert_eq!(v["traffic"]["lost"], 0);
    assert_eq!(u(&v, "/traffic/misrouted"), 0);
    assert_eq!(u(&v, "/traffic/latency_us/count"), sent);
    assert_eq!(u(&v, "/errors/count"), 0, "{}", run.stderr);
    assert!(v["server"]["cpu_traffic_seconds"].is_number());
}

#[test]
fn broadcast_reaches_every_receiver_of_the_app() {
    let server = Server::start(&["--shards", "2"]);
    let url = server.url();
    // Two apps of 15 receivers; sender 0 broadcasts to app 0, sender 1 to app 1.
    let json_path =
        std::env::temp_dir().join(format!("singyeong-loadtest-{}.json", std::process::id()));
    let json_arg = json_path.to_str().unwrap().to_string();
    let run = loadtest(&[
        "--scenario",
        "broadcast",
        "--url",
        &url,
        "-n",
        "30",
        "--apps",
        "2",
        "--senders",
        "2",
        "--window",
        "2",
        "--duration",
        "1",
        "--idle",
        "0.2",
        "--timeout",
        "30",
        "--json",
        &json_arg,
    ]);
    let v = run.assert_success();
    assert_shape(&v);
    let sent = u(&v, "/traffic/sent");
    assert!(sent > 0, "nothing sent: {}", run.stderr);
    assert_eq!(u(&v, "/traffic/expected"), sent * 15);
    assert_eq!(u(&v, "/traffic/delivered"), sent * 15, "{}", run.stderr);
    assert_eq!(u(&v, "/traffic/misrouted"), 0);
    assert_eq!(u(&v, "/errors/count"), 0, "{}", run.stderr);
    assert!(v["server"].is_null(), "no --server-pid, no server section");
    let written: common::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(written, v, "--json writes the object printed on stdout");
    let _ = std::fs::remove_file(&json_path);
}

#[test]
fn timeout_stops_the_run_with_a_failure_status() {
    let server = Server::start(&[]);
    let url = server.url();
    let run = loadtest(&[
        "--scenario",
        "targeted",
        "--url",
        &url,
        "-n",
        "10",
        "--duration",
        "60",
        "--timeout",
        "1.5",
    ]);
    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("--timeout"), "{}", run.stderr);
    assert!(run.stdout.trim().is_empty(), "no result after a timeout");
    assert!(run.took < Duration::from_secs(10), "took {:?}", run.took);
}

#[test]
fn unreachable_server_is_a_clear_failure() {
    // Bind a port and close it again: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/gateway/websocket");
    let run = loadtest(&[
        "--scenario",
        "connect",
        "--url",
        &url,
        "-n",
        "3",
        "--timeout",
        "20",
    ]);
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("no connection got to ready"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("tcp connect"), "{}", run.stderr);
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "--scenario"),
        (&["--scenario", "nope"], "possible values"),
        (&["--scenario", "connect", "-n", "0"], "--connections"),
        (&["--scenario", "connect", "--duration", "0"], "--duration"),
        (
            &["--scenario", "connect", "--url", "http://127.0.0.1:1/"],
            "ws://",
        ),
        (
            &["--scenario", "targeted", "--senders", "0"],
            "needs at least one sender",
        ),
        (
            &["--scenario", "connect", "--source-addrs", "300"],
            "--source-addrs",
        ),
        (
            &["--scenario", "connect", "--app-prefix", "a b"],
            "whitespace",
        ),
        (&["--scenario", "connect", "--bogus"], "--bogus"),
        (
            &[
                "--scenario",
                "targeted",
                "--window",
                "100000",
                "--payload-bytes",
                "1000000",
            ],
            "--window",
        ),
    ];
    for (args, expect) in cases {
        let run = loadtest(args);
        assert_eq!(run.code, Some(2), "{args:?}: stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains(expect),
            "{args:?}: expected {expect:?} in:\n{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}");
    }
}
