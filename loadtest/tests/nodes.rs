//! Several servers at once (`--url` more than once): connections land on
//! the node the spreading rule says (`crate::spread`), `--placement`
//! keeps SENDs remote or local, and `--server-pid` sums every node.

mod common;

use common::{NatsCluster, Server, assert_shape, loadtest, start_cluster, u};

fn urls(servers: &[Server]) -> String {
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    urls.join(",")
}

fn pids(servers: &[Server]) -> String {
    let pids: Vec<String> = servers.iter().map(|s| s.pid().to_string()).collect();
    pids.join(",")
}

/// A short targeted run over `urls` with `placement`.
fn targeted(urls: &str, pids: &str, placement: &str, target: &str) -> common::Run {
    loadtest(&[
        "--scenario",
        "targeted",
        "--target",
        target,
        "--url",
        urls,
        "--server-pid",
        pids,
        "--placement",
        placement,
        "-n",
        "30",
        "--senders",
        "3",
        "--window",
        "8",
        "--duration",
        "1",
        "--drain",
        "3",
        "--idle",
        "0.2",
        "--timeout",
        "40",
    ])
}

/// Three servers that are NOT a cluster: a SEND reaches only receivers on
/// the server it was sent to. So `local` delivers everything and `remote`
/// nothing exactly when every connection went where the rule says.
#[test]
fn connections_land_on_the_node_the_rule_says() {
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::start(&["--shards", "1", "--no-durable"]))
        .collect();
    let (urls, pids) = (urls(&servers), pids(&servers));

    let run = targeted(&urls, &pids, "local", "singyeong");
    let v = run.assert_success();
    assert_shape(&v);
    let sent = u(&v, "/traffic/sent");
    assert!(sent > 0, "nothing sent: {}", run.stderr);
    assert_eq!(u(&v, "/traffic/delivered"), sent, "{}", run.stderr);
    assert_eq!(u(&v, "/errors/count"), 0, "{}", run.stderr);

    let run = targeted(&urls, &pids, "remote", "singyeong");
    let v = run.assert_success();
    let sent = u(&v, "/traffic/sent");
    assert!(sent > 0, "nothing sent: {}", run.stderr);
    assert_eq!(u(&v, "/traffic/delivered"), 0, "{}", run.stderr);
    let texts = v["errors"]["texts"].to_string();
    assert!(texts.contains("no_route"), "{texts}");
}

/// A three-node cluster: remote and local SENDs all arrive, broadcast
/// reaches the receivers of every node, and the server section sums the
/// three processes.
#[test]
fn a_cluster_delivers_remote_local_and_broadcast() {
    let servers = start_cluster(3);
    let (urls, pids) = (urls(&servers), pids(&servers));
    for placement in ["remote", "local"] {
        let run = targeted(&urls, &pids, placement, "singyeong");
        let v = run.assert_success();
        assert_shape(&v);
        let sent = u(&v, "/traffic/sent");
        assert!(sent > 0, "{placement}: nothing sent: {}", run.stderr);
        assert_eq!(
            u(&v, "/traffic/delivered"),
            sent,
            "{placement}: {}",
            run.stderr
        );
        assert_eq!(u(&v, "/traffic/misrouted"), 0);
        assert_eq!(u(&v, "/errors/count"), 0, "{placement}: {}", run.stderr);
        assert_eq!(v["params"]["placement"], placement);
        assert_eq!(v["params"]["url"].as_array().map(Vec::len), Some(3));
        let summed: Vec<u64> = v["server"]["pids"]
            .as_array()
            .expect("pids")
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        let started: Vec<u64> = servers.iter().map(|s| u64::from(s.pid())).collect();
        assert_eq!(summed, started);
        assert!(v["server"]["pid"].is_null());
        assert!(v["server"]["cpu_us_per_delivery"].is_number());
        assert!(run.stderr.contains(&format!("placement {placement}")));
    }

    let run = loadtest(&[
        "--scenario",
        "broadcast",
        "--url",
        &urls,
        "--server-pid",
        &pids,
        "-n",
        "30",
        "--senders",
        "1",
        "--window",
        "2",
        "--duration",
        "1",
        "--drain",
        "3",
        "--idle",
        "0.2",
        "--timeout",
        "40",
    ]);
    let v = run.assert_success();
    let sent = u(&v, "/traffic/sent");
    assert!(sent > 0, "nothing sent: {}", run.stderr);
    assert_eq!(u(&v, "/traffic/expected"), sent * 30);
    assert_eq!(u(&v, "/traffic/delivered"), sent * 30, "{}", run.stderr);
    assert_eq!(u(&v, "/errors/count"), 0, "{}", run.stderr);
}

/// The same against a three-node NATS cluster (routes between them):
/// every remote PUB reaches its subscriber on another node.
#[test]
fn a_nats_cluster_delivers_remote_sends() {
    let Some(nats) = NatsCluster::start(3) else {
        println!("SKIPPED a_nats_cluster_delivers_remote_sends: nats-server not on the PATH");
        return;
    };
    let urls = nats.urls().join(",");
    let pids: Vec<String> = nats.pids().iter().map(u32::to_string).collect();
    let run = targeted(&urls, &pids.join(","), "remote", "nats");
    let v = run.assert_success();
    assert_shape(&v);
    let sent = u(&v, "/traffic/sent");
    assert!(sent > 0, "nothing sent: {}", run.stderr);
    assert_eq!(u(&v, "/traffic/delivered"), sent, "{}", run.stderr);
    assert_eq!(u(&v, "/traffic/misrouted"), 0);
    assert_eq!(v["server"]["pids"].as_array().map(Vec::len), Some(3));
}
