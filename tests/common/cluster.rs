//! Nodes of a cluster on loopback, for the tests that need several real
//! server processes: a gossip address chosen ahead (so a node can restart
//! on it), a node started with its peers, and waits on `GET
//! /api/v1/cluster`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Server;

pub const SECRET: &str = "a cluster secret for the tests";

/// How long a cluster of fresh nodes may take to link up.
pub const JOIN: Duration = Duration::from_secs(10);

/// A free UDP port on loopback, chosen ahead (for tests that restart a
/// node on its address before it has one: prefer [`ANY`] and
/// [`gossip_of`]). Taken below the kernel's ephemeral range, so that no
/// socket bound to port 0 meanwhile can be handed it before its node
/// starts.
pub fn gossip_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut x = (u64::from(std::process::id()) << 32)
        ^ SEQ
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ super::now_ms() as u64;
    for _ in 0..1000 {
        // xorshift: spread over the range whatever the seed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if let Ok(socket) = UdpSocket::bind(("127.0.0.1", port)) {
            return socket.local_addr().expect("a bound socket's address");
        }
    }
    panic!("no free UDP port in 20000..32000");
}

/// A gossip address on loopback whose port the node picks itself (read
/// it back with [`gossip_of`]): nothing can take it between choosing and
/// binding.
pub const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The gossip address a node bound.
pub fn gossip_of(server: &Server) -> SocketAddr {
    cluster(server)["node"]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the node's gossip address")
}

/// Starts node `name` gossiping on `gossip` with seeds `peers`, plus
/// `extra` flags, and waits for its `cluster on` line.
pub fn node(name: &str, gossip: SocketAddr, peers: &[SocketAddr], extra: &[&str]) -> Server {
    let gossip = gossip.to_string();
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    let peers = peers.join(",");
    let mut args = vec![
        "--node-name",
        name,
        "--cluster-addr",
        &gossip,
        "--cluster-secret",
        SECRET,
    ];
    if !peers.is_empty() {
        args.extend(["--peers", &peers]);
    }
    args.extend(extra);
    let server = Server::start(&args);
    let mut lines = Vec::new();
    wait_until(
        "the gossip address on stdout",
        Duration::from_secs(5),
        || {
            lines.extend(server.extra_stdout_lines());
            !lines.is_empty()
        },
    );
    let bound: Vec<SocketAddr> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("cluster on ")?.parse().ok())
        .collect();
    assert_eq!(bound.len(), 1, "{lines:?}");
    if !gossip.ends_with(":0") {
        assert_eq!(bound[0].to_string(), gossip);
    }
    server
}

/// `GET /api/v1/cluster`.
pub fn cluster(server: &Server) -> Value {
    let response = server.http("GET", "/api/v1/cluster", &[], None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Whether `server`'s shards have every link they should with `name`.
pub fn linked(server: &Server, name: &str) -> bool {
    let view = cluster(server);
    let Some(member) = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == name)
    else {
        return false;
    };
    let expected = member["links_expected"].as_u64().expect("links_expected");
    expected > 0 && member["links"].as_array().map(Vec::len) == Some(expected as usize)
}

/// Whether `server` sees `name` down (or no longer lists it).
pub fn down(server: &Server, name: &str) -> bool {
    cluster(server)["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == name)
        .is_none_or(|m| m["state"] == "down")
}

/// Waits until every pair of `nodes` (with their names) is linked.
pub fn wait_linked(nodes: &[(&Server, &str)]) {
    for (server, me) in nodes {
        for (_, other) in nodes {
            if other != me {
                wait_until(&format!("{me} linked to {other}"), JOIN, || {
                    linked(server, other)
                });
            }
        }
    }
}

/// Polls `done` until it holds; panics after `timeout`. Returns how long
/// it took.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// A scratch data directory removed on drop.
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        let dir = std::env::temp_dir().join(format!(
            "singyeong-cluster-{}-{tag}-{}",
            std::process::id(),
            super::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
