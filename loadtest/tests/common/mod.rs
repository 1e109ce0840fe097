//! The load tester's test harness: start the real `singyeong` server on an
//! ephemeral port, run the real `singyeong-loadtest` binary against it, and
//! hand back its exit status and parsed JSON.
//!
//! The server binary is the workspace's own, built (a no-op when it is up to
//! date) into the same target directory and profile as this test's binary,
//! so the tests never run against a stale server. `SINGYEONG_BIN` overrides.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

pub use serde_json::Value;

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn loadtest_binary() -> &'static str {
    env!("CARGO_BIN_EXE_singyeong-loadtest")
}

/// `<target>/<profile>`, where cargo put this package's binary.
fn profile_dir() -> PathBuf {
    Path::new(loadtest_binary())
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

pub fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SINGYEONG_BIN") {
            return PathBuf::from(bin);
        }
        let profile_dir = profile_dir();
        let target_dir = profile_dir.parent().expect("profile dir has a parent");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("loadtest is in the workspace");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "singyeong", "--bin", "singyeong"])
            .current_dir(workspace)
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the server");
        assert!(status.success(), "building the singyeong server failed");
        let bin = profile_dir.join("singyeong");
        assert!(bin.exists(), "no server binary at {}", bin.display());
        bin
    })
}

/// A running server, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(server_binary())
            .args(["--bind", "127.0.0.1", "--port", "0", "--log", "warn"])
            .args(extra)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("the server printed no listening line within {START_TIMEOUT:?}");
            }
        };
        Server { child, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/gateway/websocket", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nats-server with a plain websocket listener on a free port, or `None`
/// when nats-server is not installed (the caller skips, saying so).
pub struct Nats {
    child: Child,
    ws_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nats {
    pub fn start() -> Option<Nats> {
        if !nats_installed() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "singyeong-loadtest-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ws_port = free_port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\nwebsocket {{ listen: \"127.0.0.1:{ws_port}\", no_tls: true }}\n",
                free_port()
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let nats = Nats {
            child,
            ws_port,
            dir,
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", ws_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {ws_port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` from `addr` (host:port), HTTP/1.1 with `Connection: close`;
/// the status code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Polls `done` every 100 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free UDP port on loopback, for a node's gossip address.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nodes` singyeong servers clustered on loopback (`--no-durable`, one
/// shard each), returned once every node sees every other alive with all
/// its links up (`GET /api/v1/cluster`).
pub fn start_cluster(nodes: usize) -> Vec<Server> {
    let gossip: Vec<String> = (0..nodes)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let servers: Vec<Server> = (0..nodes)
        .map(|i| {
            let peers: Vec<&str> = gossip
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, g)| g.as_str())
                .collect();
            let (name, peers) = (format!("n{i}"), peers.join(","));
            Server::start(&[
                "--shards",
                "1",
                "--no-durable",
                "--node-name",
                &name,
                "--cluster-addr",
                &gossip[i],
                "--cluster-secret",
                "a cluster secret for the loadtest tests",
                "--peers",
                &peers,
            ])
        })
        .collect();
    wait_until("the cluster formed", Duration::from_secs(30), || {
        servers.iter().all(|s| cluster_formed(&s.addr, nodes - 1))
    });
    servers
}

/// Whether the node at `addr` sees `others` members alive, each with
/// every link it should have.
pub fn cluster_formed(addr: &str, others: usize) -> bool {
    let Ok((200, body)) = http_get(addr, "/api/v1/cluster") else {
        return false;
    };
    let Ok(view) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    let Some(members) = view["members"].as_array() else {
        return false;
    };
    let linked = members
        .iter()
        .filter(|m| {
            let expected = m["links_expected"].as_u64().unwrap_or(0);
            m["state"] == "alive"
                && expected > 0
                && m["links"].as_array().map(Vec::len) == Some(expected as usize)
        })
        .count();
    linked == others
}

/// `nodes` nats-servers with websocket listeners, routed to each other as
/// one cluster, returned once each has a route to every other (its
/// monitoring page `/routez`); `None` when nats-server is not installed.
pub struct NatsCluster {
    children: Vec<Child>,
    ws_ports: Vec<u16>,
    dir: PathBuf,
}

impl NatsCluster {
    pub fn start(nodes: usize) -> Option<NatsCluster> {
        if !nats_installed() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "singyeong-loadtest-nats-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let route_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let ws_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let http_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let mut cluster = NatsCluster {
            children: Vec::new(),
            ws_ports: ws_ports.clone(),
            dir,
        };
        for i in 0..nodes {
            let routes: Vec<String> = (0..nodes)
                .filter(|&j| j != i)
                .map(|j| format!("\"nats-route://127.0.0.1:{}\"", route_ports[j]))
                .collect();
            let conf = cluster.dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     websocket {{ listen: \"127.0.0.1:{}\", no_tls: true }}\n\
                     cluster {{ name: loadtest, listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                    free_port(),
                    http_ports[i],
                    ws_ports[i],
                    route_ports[i],
                    routes.join(", ")
                ),
            )
            .unwrap();
            cluster.children.push(
                Command::new("nats-server")
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start nats-server"),
            );
        }
        wait_until("the NATS routes", START_TIMEOUT, || {
            http_ports.iter().all(|p| {
                http_get(&format!("127.0.0.1:{p}"), "/routez")
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .and_then(|v| v["num_routes"].as_u64())
                    .is_some_and(|n| n as usize >= nodes - 1)
            })
        });
        Some(cluster)
    }

    /// The websocket URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.ws_ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}"))
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a loadtest run produced.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// The JSON result; panics (showing stderr) when there is none.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}); exit {:?}\nstdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    pub fn assert_success(&self) -> Value {
        assert_eq!(self.code, Some(0), "exit status; stderr:\n{}", self.stderr);
        self.json()
    }
}

/// Runs the load tester with `args` (plus `--quiet`).
pub fn loadtest(args: &[&str]) -> Run {
    let started = std::time::Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(loadtest_binary())
        .args(args)
        .arg("--quiet")
        .stdin(Stdio::null())
        .output()
        .expect("run singyeong-loadtest");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// Checks the result's shape: every section and field a consumer relies on.
pub fn assert_shape(v: &Value) {
    let is_num = |v: &Value, path: &str| {
        let x = v
            .pointer(path)
            .unwrap_or_else(|| panic!("missing {path} in {v:#}"));
        assert!(x.is_number(), "{path} is not a number: {x}");
    };
    assert_eq!(v["tool"], "singyeong-loadtest");
    assert!(v["version"].is_string());
    assert!(v["scenario"].is_string());
    assert_eq!(v["params"]["scenario"], v["scenario"]);
    for p in [
        "/params/connections",
        "/params/senders",
        "/params/window",
        "/params/duration",
        "/params/timeout",
    ] {
        is_num(v, p);
    }
    for p in [
        "/connect/requested",
        "/connect/identified",
        "/connect/failed",
        "/connect/seconds",
        "/connect/per_second",
        "/client/workers",
        "/client/rss_bytes",
        "/errors/count",
        "/errors/disconnects",
    ] {
        is_num(v, p);
    }
    percentiles(v, "/connect/latency_us");
    assert!(v["connect"]["errors"].is_array());
    assert!(v["errors"]["texts"].is_array());
    if !v["server"].is_null() {
        assert!(v["server"]["source"] == "proc" || v["server"]["source"] == "metrics");
        // One PID, several summed (`pids`, the nodes of a cluster), or none
        // when read from /metrics.
        assert!(
            v["server"]["pid"].is_number()
                || v["server"]["pids"].is_array()
                || v["server"]["source"] == "metrics"
        );
        for p in [
            "/server/rss_before_bytes",
            "/server/rss_connected_bytes",
            "/server/rss_end_bytes",
            "/server/rss_per_connection_bytes",
            "/server/cpu_connect_seconds",
        ] {
            is_num(v, p);
        }
    }
    if !v["traffic"].is_null() {
        for p in [
            "/traffic/senders",
            "/traffic/receivers",
            "/traffic/seconds",
            "/traffic/drain_seconds",
            "/traffic/sent",
            "/traffic/expected",
            "/traffic/delivered",
            "/traffic/lost",
            "/traffic/misrouted",
            "/traffic/sent_per_second",
            "/traffic/delivered_per_second",
        ] {
            is_num(v, p);
        }
        percentiles(v, "/traffic/latency_us");
    }
}

fn percentiles(v: &Value, path: &str) {
    for k in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
        let x = v.pointer(&format!("{path}/{k}"));
        assert!(
            x.is_some_and(Value::is_number),
            "{path}/{k} missing or not a number in {v:#}"
        );
    }
}

pub fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not an unsigned integer in {v:#}"))
}

/// An HTML report that needs nothing from the network: no external scripts,
/// styles, images or fonts.
pub fn assert_self_contained_html(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "not an HTML page");
    assert!(html.contains("<svg"), "no inline SVG plot");
    for needle in ["src=", "href=", "@import", "url(", "<link", "<script src"] {
        assert!(!html.contains(needle), "the report references {needle:?}");
    }
}
