//! Cluster membership over real processes on loopback: nodes find each
//! other through their peers, a killed node is declared down within the
//! failure timeout and rejoins when restarted, a paused node comes back, a
//! node with another secret is never admitted, and garbage sent to the
//! gossip port is counted and harms nothing.

mod common;
// The proxy test below uses a real upstream; the rest of its helpers
// serve tests/proxy.rs.
#[allow(dead_code)]
#[path = "proxy/upstream.rs"]
mod upstream;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Server;
use common::cluster::{JOIN, SECRET, cluster, gossip_addr, linked, wait_until};
use serde_json::Value;

fn start_node(
    name: &str,
    gossip: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    down_after_ms: Option<u64>,
) -> Server {
    start_node_with(name, "1", gossip, peers, secret, down_after_ms)
}

fn start_node_with(
    name: &str,
    shards: &str,
    gossip: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    down_after_ms: Option<u64>,
) -> Server {
    start_node_extra(name, shards, gossip, peers, secret, down_after_ms, &[])
}

/// [`start_node_with`], with `extra` arguments.
fn start_node_extra(
    name: &str,
    shards: &str,
    gossip: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    down_after_ms: Option<u64>,
    extra: &[&str],
) -> Server {
    let gossip = gossip.to_string();
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    let peers = peers.join(",");
    let down_after = down_after_ms.map(|ms| ms.to_string());
    let mut args = vec![
        "--shards",
        shards,
        "--no-durable",
        "--node-name",
        name,
        "--cluster-addr",
        &gossip,
        "--cluster-secret",
        secret,
    ];
    if !peers.is_empty() {
        args.extend(["--peers", &peers]);
    }
    if let Some(ms) = &down_after {
        args.extend(["--cluster-down-after", ms]);
    }
    args.extend(extra);
    let server = Server::start(&args);
    let mut lines = Vec::new();
    wait_until(
        "the gossip address on stdout",
        Duration::from_secs(2),
        || {
            lines.extend(server.extra_stdout_lines());
            !lines.is_empty()
        },
    );
    assert_eq!(lines, [format!("cluster on {gossip}")]);
    server
}

/// The state of the member named `name` as `server` sees it, and its boot.
fn member(server: &Server, name: &str) -> Option<(String, u64)> {
    cluster(server)["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| {
            (
                m["state"].as_str().expect("state").to_string(),
                m["boot"].as_u64().expect("boot"),
            )
        })
}

/// Whether every thread of process `pid` is stopped (a SIGSTOP takes
/// effect on each thread as it next runs, which a loaded machine delays).
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name's closing parenthesis.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

/// How many clients `server` last heard member `name` holds.
fn clients_of(server: &Server, name: &str) -> Option<u64> {
    cluster(server)["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == name)?["clients"]
        .as_u64()
}

fn alive(server: &Server, name: &str) -> bool {
    member(server, name).is_some_and(|(state, _)| state == "alive")
}

fn metric(server: &Server, series: &str) -> u64 {
    let body = server.http("GET", "/metrics", &[], None).text();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

#[test]
fn three_nodes_join_a_killed_one_is_dropped_within_the_default_timeout_and_rejoins() {
    let (ga, gb, gc) = (gossip_addr(), gossip_addr(), gossip_addr());
    // A knows nobody; B and C know only A: membership spreads by gossip.
    // A has two shards, so its links to the others are not one to one.
    let a = start_node_with("a", "2", ga, &[], SECRET, None);
    let b = start_node("b", gb, &[ga], SECRET, None);
    let mut c = start_node("c", gc, &[ga], SECRET, None);
    for (server, others) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        for other in others {
            wait_until(&format!("{other} alive"), JOIN, || alive(server, other));
            wait_until(&format!("links to {other}"), JOIN, || linked(server, other));
        }
    }
    let view = cluster(&a);
    let to_b = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "b")
        .unwrap();
    assert_eq!(
        to_b["links_expected"], 2,
        "a's two shards each link to b's one"
    );
    assert!(to_b["links"][0]["rtt_us"].as_u64().is_some());
    assert_eq!(metric(&b, "singyeong_cluster_links{shard=\"0\"}"), 3);
    let view = cluster(&a);
    assert_eq!(view["enabled"], true);
    assert_eq!(view["node"]["name"], "a");
    assert_eq!(view["node"]["addr"], ga.to_string());
    assert_eq!(view["node"]["shards"], 2);
    assert_eq!(metric(&a, "singyeong_cluster_members{state=\"alive\"}"), 2);
    assert!(metric(&a, "singyeong_cluster_gossip_packets_received_total") > 0);

    let (_, first_boot) = member(&a, "c").expect("c known");
    c.kill();
    // The default suspicion timeout (4 s) plus probing: within 10 s.
    let took = wait_until("c down on a", Duration::from_secs(10), || {
        member(&a, "c").is_some_and(|(s, _)| s == "down")
    });
    wait_until("c down on b", Duration::from_secs(3), || {
        member(&b, "c").is_some_and(|(s, _)| s == "down")
    });
    assert!(
        took >= Duration::from_secs(2),
        "declared down after {took:?}: no suspicion?"
    );
    assert_eq!(metric(&a, "singyeong_cluster_members{state=\"down\"}"), 1);

    // Restarted on the same address, it is a new run of c and rejoins.
    let c = start_node("c", gc, &[ga], SECRET, None);
    for server in [&a, &b] {
        wait_until("c back", JOIN, || {
            member(server, "c").is_some_and(|(s, boot)| s == "alive" && boot > first_boot)
        });
    }
    wait_until("c sees a and b", JOIN, || alive(&c, "a") && alive(&c, "b"));
    wait_until("links to the new c", JOIN, || {
        linked(&a, "c") && linked(&b, "c")
    });
}

#[test]
fn a_paused_node_is_declared_down_and_rejoins_when_resumed() {
    let (ga, gb) = (gossip_addr(), gossip_addr());
    let a = start_node("a", ga, &[gb], SECRET, Some(1000));
    let b = start_node("b", gb, &[ga], SECRET, Some(1000));
    wait_until("joined", JOIN, || alive(&a, "b") && alive(&b, "a"));
    let (_, boot) = member(&a, "b").expect("b known");
    b.signal("STOP");
    wait_until("b down", Duration::from_secs(8), || {
        member(&a, "b").is_some_and(|(s, _)| s == "down")
    });
    b.signal("CONT");
    // b learns it was declared down and comes back as a new run.
    wait_until("b alive again", JOIN, || {
        member(&a, "b").is_some_and(|(s, new_boot)| s == "alive" && new_boot > boot)
    });
    wait_until("b sees a", JOIN, || alive(&b, "a"));
}

#[test]
fn a_node_that_shuts_down_leaves_at_once() {
    let (ga, gb) = (gossip_addr(), gossip_addr());
    let a = start_node("a", ga, &[gb], SECRET, Some(10_000));
    let mut b = start_node("b", gb, &[ga], SECRET, Some(10_000));
    wait_until("joined", JOIN, || linked(&a, "b"));
    b.terminate();
    assert!(b.wait_exit(Duration::from_secs(10)).is_some(), "b exits");
    // Far sooner than the 10 s suspicion: b said goodbye, to the gossip
    // and on its links, which close without counting as lost.
    wait_until("b down", Duration::from_secs(3), || {
        member(&a, "b").is_some_and(|(s, _)| s == "down")
    });
    assert_eq!(metric(&a, "singyeong_cluster_links{shard=\"0\"}"), 0);
    assert_eq!(
        metric(
            &a,
            "singyeong_cluster_link_errors_total{shard=\"0\",reason=\"lost\"}"
        ),
        0
    );
}

#[test]
fn a_node_with_another_secret_is_never_admitted() {
    let (ga, gx) = (gossip_addr(), gossip_addr());
    let a = start_node("a", ga, &[], SECRET, None);
    let x = start_node("x", gx, &[ga], "another secret, same length!!", None);
    let bad = "singyeong_cluster_gossip_packets_rejected_total{reason=\"bad_signature\"}";
    // x announces every 2 s; a refuses each announce.
    wait_until("a refused x", JOIN, || metric(&a, bad) >= 2);
    assert_eq!(member(&a, "x"), None, "{}", cluster(&a));
    assert_eq!(cluster(&x)["members"], Value::Array(Vec::new()));
    assert!(
        a.log_tail().contains("bad signature"),
        "the refusal is logged:\n{}",
        a.log_tail()
    );
}

#[test]
fn garbage_on_the_gossip_port_is_counted_and_harms_nothing() {
    let (ga, gb) = (gossip_addr(), gossip_addr());
    let a = start_node("a", ga, &[gb], SECRET, None);
    let b = start_node("b", gb, &[ga], SECRET, None);
    wait_until("joined", JOIN, || alive(&a, "b"));
    let rejected = |reason: &str| {
        metric(
            &a,
            &format!("singyeong_cluster_gossip_packets_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    let before: Vec<u64> = ["not_gossip", "truncated", "bad_signature", "oversized"]
        .iter()
        .map(|r| rejected(r))
        .collect();

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    // Not gossip (QUIC-looking), a bare tag, a forged signature, and a
    // datagram far larger than any node sends.
    let mut quic = noise(60);
    quic[0] = 0xc3;
    socket.send_to(&quic, ga).unwrap();
    socket.send_to(&[0x1c; 10], ga).unwrap();
    let mut forged = vec![0x1c];
    forged.extend(noise(300));
    socket.send_to(&forged, ga).unwrap();
    let mut big = vec![0x1c];
    big.extend(noise(20_000));
    socket.send_to(&big, ga).unwrap();
    socket.send_to(&[], ga).unwrap();

    // The same noise on a's link port, where QUIC ignores what does not
    // parse.
    let link_port = cluster(&a)["node"]["link_ports"][0].as_u64().unwrap() as u16;
    let link = SocketAddr::from(([127, 0, 0, 1], link_port));
    for datagram in [&quic, &forged, &big, &Vec::new()] {
        socket.send_to(datagram, link).unwrap();
    }

    wait_until("every datagram counted", Duration::from_secs(5), || {
        rejected("oversized") > before[3]
    });
    assert_eq!(
        rejected("not_gossip"),
        before[0] + 2,
        "noise and the empty datagram"
    );
    assert_eq!(rejected("truncated"), before[1] + 1);
    assert!(rejected("bad_signature") > before[2]);
    // Nothing else moved: the members, their links, the gateway.
    assert!(alive(&a, "b") && alive(&b, "a"));
    wait_until("links", JOIN, || linked(&a, "b") && linked(&b, "a"));
    assert_eq!(
        metric(
            &a,
            "singyeong_cluster_link_errors_total{shard=\"0\",reason=\"bad_frame\"}"
        ),
        0
    );
    assert_eq!(a.http("GET", "/api/version", &[], None).status, 200);
}

#[test]
fn a_single_node_says_clustering_is_off_and_the_endpoint_needs_the_password() {
    let server = Server::start(&["--auth", "pw"]);
    let denied = server.http("GET", "/api/v1/cluster", &[], None);
    assert_eq!(denied.status, 401);
    let ok = server.http("GET", "/api/v1/cluster", &[("authorization", "pw")], None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["enabled"], false);
    let post = server.http(
        "POST",
        "/api/v1/cluster",
        &[("authorization", "pw")],
        Some("{}"),
    );
    assert_eq!(post.status, 405);
    let metrics = server
        .http("GET", "/metrics", &[("authorization", "pw")], None)
        .text();
    assert!(
        !metrics.contains("singyeong_cluster_members"),
        "no cluster families"
    );
    assert!(server.extra_stdout_lines().is_empty());
}

#[test]
fn a_taken_gossip_port_or_a_bad_cluster_setting_refuses_to_start() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--cluster-addr", &taken, "--cluster-secret", SECRET],
            "cannot gossip on the cluster address",
        ),
        (&["--cluster-addr", "127.0.0.1:0"], "cluster_secret"),
        (
            &["--cluster-addr", "127.0.0.1:0", "--cluster-secret", "short"],
            "at least 16 bytes",
        ),
        (
            &["--cluster-addr", "0.0.0.0:7000", "--cluster-secret", SECRET],
            "not 0.0.0.0",
        ),
        (&["--peers", "127.0.0.1:7000"], "needs --cluster-addr"),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_singyeong"))
            .env_clear()
            .args(["--bind", "127.0.0.1", "--port", "0", "--no-durable"])
            .args(args)
            .output()
            .expect("run singyeong");
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Three linked nodes: `a` with two shards, `b` and `c` with one.
fn three_linked() -> (Server, Server, Server) {
    let (ga, gb, gc) = (gossip_addr(), gossip_addr(), gossip_addr());
    let a = start_node_with("a", "2", ga, &[], SECRET, None);
    let b = start_node("b", gb, &[ga], SECRET, None);
    let c = start_node("c", gc, &[ga], SECRET, None);
    for (server, others) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        for other in others {
            wait_until(&format!("links to {other}"), JOIN, || linked(server, other));
        }
    }
    (a, b, c)
}

#[test]
fn broadcast_and_query_nodes_reach_clients_on_every_node() {
    use common::{Client, Encoding, ids, meta};
    use serde_json::json;
    let (a, b, c) = three_linked();
    let room = |n: i64| json!({"room": meta("integer", json!(n))});
    let mut clients = Vec::new();
    for (server, id, n) in [(&a, "a1", 1), (&a, "a2", 2), (&b, "b1", 1), (&c, "c1", 1)] {
        let mut client = Client::ready(server, Encoding::Json, "chat", id);
        client.set_metadata(room(n));
        clients.push(client);
    }
    let mut sender = Client::ready(&b, Encoding::Msgpack, "chat", "sender");
    let mut other_app = Client::ready(&c, Encoding::Json, "other", "o1");

    // QUERY_NODES from b sees the clients of every node, each named by its
    // node.
    let in_room_1 =
        json!({"application": "chat", "ops": [{"path": "/room", "op": "$eq", "to": {"value": 1}}]});
    let found = sender.query_nodes(in_room_1.clone());
    assert_eq!(
        ids(&found),
        ["a1", "b1", "c1"].map(String::from).into(),
        "{found:?}"
    );
    for node in &found {
        let expected = &node["client_id"].as_str().unwrap()[..1];
        assert_eq!(node["node"], expected, "{node}");
    }
    let everyone = sender.query_ids(json!({"application": "chat", "ops": []}));
    assert_eq!(everyone.len(), 5);

    // BROADCAST from b reaches room 1 on all three nodes, once each, and
    // nobody else.
    sender.broadcast(in_room_1, json!("n1"), json!({"hello": [1, 2.5, "x"]}));
    for client in clients.iter_mut().filter(|c| c.id() != "a2") {
        client.expect_message("BROADCAST", &json!("n1"), &json!({"hello": [1, 2.5, "x"]}));
    }
    for client in &mut clients {
        client.expect_nothing(Duration::from_millis(200));
    }
    other_app.expect_nothing(Duration::from_millis(1));
    sender.expect_nothing(Duration::from_millis(1));

    // A BROADCAST matching nobody anywhere is still a no_route.
    sender.broadcast(
        json!({"application": "chat", "ops": [{"path": "/room", "op": "$eq", "to": {"value": 9}}]}),
        json!("n2"),
        json!(1),
    );
    sender.expect_invalid(common::texts::NO_ROUTE);

    // The HTTP query merges every node too.
    let http = a.http_query(&json!({"application": "chat", "ops": []}), None);
    assert_eq!(http.status, 200);
    assert_eq!(ids(http.json().as_array().unwrap()).len(), 5);
    let sent = metric(
        &b,
        "singyeong_cluster_requests_total{shard=\"0\",direction=\"sent\"}",
    );
    assert!(sent >= 4, "b asked a and c twice each: {sent}");
    assert!(
        metric(
            &a,
            "singyeong_cluster_requests_total{shard=\"0\",direction=\"received\"}"
        ) + metric(
            &a,
            "singyeong_cluster_requests_total{shard=\"1\",direction=\"received\"}"
        ) >= 2
    );
}

#[test]
fn a_node_that_does_not_answer_in_time_counts_as_no_match() {
    use common::{Client, Encoding, ids};
    use serde_json::json;
    let (ga, gb) = (gossip_addr(), gossip_addr());
    // A long suspicion timeout: b stays a member while it is stopped.
    let a = start_node_with("a", "1", ga, &[gb], SECRET, Some(30_000));
    let b = start_node_with("b", "1", gb, &[ga], SECRET, Some(30_000));
    wait_until("links", JOIN, || linked(&a, "b") && linked(&b, "a"));
    let mut on_a = Client::ready(&a, Encoding::Json, "app", "x");
    let _on_b = Client::ready(&b, Encoding::Json, "app", "y");
    let all = json!({"application": "app", "ops": []});
    assert_eq!(ids(&on_a.query_nodes(all.clone())).len(), 2);
    b.signal("STOP");
    wait_until("b stopped", Duration::from_secs(5), || stopped(b.pid()));
    let started = Instant::now();
    assert_eq!(
        ids(&on_a.query_nodes(all.clone())),
        ["x".to_string()].into(),
        "only a's client"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "waited the 2 s deadline, not more: {took:?}"
    );
    assert_eq!(
        metric(
            &a,
            "singyeong_cluster_request_failures_total{shard=\"0\",reason=\"timeout\"}"
        ),
        1
    );
    b.signal("CONT");
    wait_until("b answers again", JOIN, || {
        ids(&on_a.query_nodes(all.clone())).len() == 2
    });
}

#[test]
fn send_reaches_clients_on_every_node_uniformly_by_key_and_by_selector() {
    use common::{Client, Encoding, meta};
    use serde_json::json;
    let (a, b, c) = three_linked();
    let load = |n: i64, id: &str| json!({"load": meta("integer", json!(n)), "uid": meta("string", json!(id))});
    let mut clients = Vec::new();
    for (server, id, n) in [(&a, "a1", 5), (&a, "a2", 1), (&b, "b1", 3), (&c, "c1", 9)] {
        let mut client = Client::ready(server, Encoding::Json, "work", id);
        client.set_metadata(load(n, id));
        clients.push(client);
    }
    let mut on_b = Client::ready(&b, Encoding::Json, "senders", "from-b");
    let mut on_c = Client::ready(&c, Encoding::Etf, "senders", "from-c");
    // Each node tells the others how many clients it holds of which
    // application; until it has, a SEND may not consider it (see the
    // README), so the uniform and keyed checks below wait for that.
    let servers = [("a", &a), ("b", &b), ("c", &c)];
    for (name, server) in servers {
        for (other, _) in servers.iter().filter(|(o, _)| *o != name) {
            wait_until("tables of applications", JOIN, || {
                clients_of(server, other) == Some(2)
            });
        }
    }
    let count_received = |clients: &mut Vec<Client>| -> Vec<usize> {
        clients
            .iter_mut()
            .map(|client| {
                let mut n = 0;
                while let common::Event::Packet(_) = client.next_event(Duration::from_millis(150)) {
                    n += 1;
                }
                n
            })
            .collect()
    };

    // A unique id on another node: exactly that client.
    on_b.send_to(
        json!({"application": "work", "ops": [{"path": "/uid", "op": "$eq", "to": {"value": "c1"}}]}),
        json!("to-c1"),
        json!({"x": 1}),
    );
    clients[3].expect_message("SEND", &json!("to-c1"), &json!({"x": 1}));

    // Uniform over clients, not nodes: 80 SENDs from b reach all four
    // (each with probability 1/4 per SEND; none left out by chance but
    // once in 10^9 runs).
    for i in 0..80 {
        on_b.send_to(
            json!({"application": "work", "ops": []}),
            json!(i),
            json!(i),
        );
    }
    on_b.sync();
    let got = count_received(&mut clients);
    assert_eq!(got.iter().sum::<usize>(), 80, "{got:?}");
    assert!(got.iter().all(|&n| n > 0), "every client chosen: {got:?}");

    // `key`: the same client whichever node the SEND enters.
    for sender in [&mut on_b, &mut on_c] {
        for nonce in 0..3 {
            sender.send_to(
                json!({"application": "work", "key": "order-17", "ops": []}),
                json!(nonce),
                json!("keyed"),
            );
        }
        sender.sync();
    }
    let got = count_received(&mut clients);
    assert_eq!(
        got.iter().filter(|&&n| n > 0).count(),
        1,
        "one client: {got:?}"
    );
    assert_eq!(got.iter().sum::<usize>(), 6);

    // Selectors take the best of every node: $max load is c1 (9), $min is
    // a2 (1), $avg (4.5) is a1 (5) or b1 (3): a1 is 0.5 away, b1 1.5.
    for (selector, expected) in [("$max", 3), ("$min", 1), ("$avg", 0)] {
        on_b.send_to(
            json!({"application": "work", "ops": [], "selector": {selector: "load"}}),
            json!(selector),
            json!(null),
        );
        on_b.sync();
        let got = count_received(&mut clients);
        let mut want = vec![0; 4];
        want[expected] = 1;
        assert_eq!(got, want, "{selector}");
    }

    // QUERY_NODES with a selector describes the one client chosen over
    // every node.
    let best =
        on_b.query_nodes(json!({"application": "work", "ops": [], "selector": {"$max": "load"}}));
    assert_eq!(best.len(), 1, "{best:?}");
    assert_eq!(best[0]["client_id"], "c1");
    assert_eq!(best[0]["node"], "c");

    // Nothing matches anywhere: no_route; `optional` falls back to the
    // whole application across nodes.
    let nobody = json!({"application": "work", "ops": [{"path": "/load", "op": "$gt", "to": {"value": 100}}]});
    on_b.send_to(nobody.clone(), json!("n"), json!(1));
    on_b.expect_invalid(common::texts::NO_ROUTE);
    let mut optional = nobody;
    optional["optional"] = json!(true);
    on_b.send_to(optional, json!("o"), json!(1));
    on_b.sync();
    assert_eq!(count_received(&mut clients).iter().sum::<usize>(), 1);
}

#[test]
fn one_senders_messages_to_a_client_on_another_node_arrive_in_order() {
    use common::{Client, Encoding};
    use serde_json::json;
    let (ga, gb) = (gossip_addr(), gossip_addr());
    let a = start_node_with("a", "2", ga, &[gb], SECRET, None);
    let b = start_node_with("b", "2", gb, &[ga], SECRET, None);
    wait_until("links", JOIN, || linked(&a, "b") && linked(&b, "a"));
    let mut receiver = Client::ready(&a, Encoding::Json, "app", "receiver");
    receiver.set_metadata(json!({
        "uid": common::meta("string", json!("receiver")),
        "n": common::meta("integer", json!(5)),
    }));
    let mut sender = Client::ready(&b, Encoding::Msgpack, "app", "sender");
    // Two routes to the same client that take different paths on both
    // nodes (an indexed value, found through the directory, and a range,
    // asked of every shard), so a later SEND could overtake an earlier one
    // anywhere the order were not kept.
    let by_id = json!({"application": "app", "ops": [{"path": "/uid", "op": "$eq", "to": {"value": "receiver"}}]});
    let by_range =
        json!({"application": "app", "ops": [{"path": "/n", "op": "$gte", "to": {"value": 1}}]});
    for i in 0..1000 {
        let target = if i % 3 == 0 { &by_range } else { &by_id };
        sender.send_to(target.clone(), json!(i), json!({"seq": i}));
    }
    for i in 0..1000 {
        receiver.expect_message("SEND", &json!(i), &json!({"seq": i}));
    }
    sender.sync();
    sender.expect_nothing(Duration::from_millis(50));
}

#[test]
fn a_send_asks_only_nodes_holding_its_application_yet_finds_a_client_that_just_connected() {
    use common::{Client, Encoding};
    use serde_json::json;
    let (ga, gb) = (gossip_addr(), gossip_addr());
    let a = start_node("a", ga, &[gb], SECRET, None);
    let b = start_node("b", gb, &[ga], SECRET, None);
    wait_until("links", JOIN, || linked(&a, "b") && linked(&b, "a"));
    let mut sender = Client::ready(&b, Encoding::Json, "senders", "sender");
    let mut local = Client::ready(&b, Encoding::Json, "local", "peer");
    wait_until("b's table on a", JOIN, || clients_of(&a, "b") == Some(2));
    wait_until("a's table on b", JOIN, || clients_of(&b, "a") == Some(0));
    let asked = || {
        metric(
            &b,
            "singyeong_cluster_requests_total{shard=\"0\",direction=\"sent\"}",
        )
    };
    let before = asked();
    // a holds no client of "local": b never asks it.
    for i in 0..20 {
        sender.send_to(
            json!({"application": "local", "ops": []}),
            json!(i),
            json!(i),
        );
    }
    sender.sync();
    for i in 0..20 {
        local.expect_message("SEND", &json!(i), &json!(i));
    }
    assert_eq!(asked(), before, "no request to a");

    // A client of a new application on a, sent to at once from b: found,
    // though a's table may not name the application yet.
    let mut fresh = Client::ready(&a, Encoding::Json, "fresh", "new");
    sender.send_to(
        json!({"application": "fresh", "ops": []}),
        json!("hi"),
        json!(1),
    );
    fresh.expect_message("SEND", &json!("hi"), &json!(1));
    sender.expect_nothing(Duration::from_millis(100));
}

#[test]
fn the_proxy_reaches_an_upstream_behind_a_client_on_another_node() {
    use common::{Client, Encoding};
    use serde_json::json;
    let (a, b, _c) = three_linked();
    let up = upstream::Upstream::start("behind-b");
    let _client = Client::ready_with(
        &b,
        Encoding::Json,
        "web",
        "w1",
        json!({"ip": up.ip(), "metadata": {}}),
    );
    let body =
        json!({"method": "GET", "route": "/hello", "query": {"application": "web", "ops": []}});
    let response = a.http(
        "POST",
        "/api/v1/proxy",
        &[("Content-Type", "application/json")],
        Some(&body.to_string()),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(up.requests(), 1);
    // Nothing of the application anywhere: the proxy's no-route answer.
    let none =
        json!({"method": "GET", "route": "/", "query": {"application": "nobody", "ops": []}});
    let response = a.http(
        "POST",
        "/api/v1/proxy",
        &[("Content-Type", "application/json")],
        Some(&none.to_string()),
    );
    assert_ne!(response.status, 200);
    assert_eq!(up.requests(), 1);
}

#[test]
fn client_updates_reach_subscribers_on_every_node() {
    use common::{Client, Encoding};
    use serde_json::json;
    let (ga, gb) = (gossip_addr(), gossip_addr());
    let a = start_node_with("a", "2", ga, &[gb], SECRET, None);
    let b = start_node("b", gb, &[ga], SECRET, None);
    wait_until("links", JOIN, || linked(&a, "b") && linked(&b, "a"));
    let mut watcher = Client::ready_with(
        &a,
        Encoding::Json,
        "watchers",
        "w",
        json!({"receive_client_updates": true}),
    );
    let joiner = Client::ready(&b, Encoding::Msgpack, "workers", "on-b");
    watcher.expect_client_update("CLIENT_CONNECTED", "workers", "on-b");
    joiner.close();
    watcher.expect_client_update("CLIENT_DISCONNECTED", "workers", "on-b");
}

/// The next packet of `client` within `within`, `None` if there is none;
/// panics if the connection ends.
fn poll_packet(client: &mut common::Client, within: Duration) -> Option<Value> {
    match client.next_event(within) {
        common::Event::Packet(p) => Some(p),
        common::Event::Timeout => None,
        other => panic!("{}: unexpected {other:?}", client.label()),
    }
}

#[test]
fn a_crowded_node_sends_clients_away_by_goodbye_until_it_holds_its_share() {
    use common::{Client, Encoding, OP_GOODBYE};
    let (ga, gb) = (gossip_addr(), gossip_addr());
    // A check a second, at most 3 clients each; over 1.25 × the share.
    let balance = [
        "--balance-above",
        "1.25",
        "--balance-interval",
        "1000",
        "--balance-max",
        "3",
    ];
    // a has two shards: the goodbyes are spread over both.
    let a = start_node_extra("a", "2", ga, &[gb], SECRET, None, &balance);
    let b = start_node_extra("b", "1", gb, &[ga], SECRET, None, &balance);
    for (server, other) in [(&a, "b"), (&b, "a")] {
        wait_until(&format!("links to {other}"), JOIN, || linked(server, other));
    }
    // 12 on a, none on b: a's share is 6.
    let mut on_a: Vec<Client> = (0..12)
        .map(|i| Client::ready(&a, Encoding::Json, "lb", &format!("c{i}")))
        .collect();
    let mut on_b = Vec::new();
    let mut goodbyes = Vec::new();
    let start = Instant::now();
    // Every client sent away reconnects, to b, as a client would through
    // a load balancer; until a holds its share and a few checks more.
    let mut settled: Option<Instant> = None;
    while settled.is_none_or(|at| at.elapsed() < Duration::from_secs(3)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a never came down to its share: {} goodbyes",
            goodbyes.len()
        );
        let mut i = 0;
        while i < on_a.len() {
            let Some(p) = poll_packet(&mut on_a[i], Duration::from_millis(10)) else {
                i += 1;
                continue;
            };
            let mut client = on_a.swap_remove(i);
            assert_eq!(p["op"], OP_GOODBYE, "{}: {p}", client.label());
            assert_eq!(p["d"], serde_json::json!({"reason": "load balancing"}));
            client.expect_closed();
            goodbyes.push(start.elapsed());
            let id = client.id().to_string();
            on_b.push(Client::ready(&b, Encoding::Json, "lb", &id));
        }
        if on_a.len() <= 6 && settled.is_none() {
            settled = Some(Instant::now());
        }
    }
    assert_eq!(on_a.len(), 6, "a holds its share, no fewer");
    assert_eq!(on_b.len(), 6);
    // Never more than the cap at once: a check's goodbyes go out together,
    // and the next check is a second later.
    let first_round = goodbyes
        .iter()
        .filter(|t| **t < goodbyes[0] + Duration::from_millis(400))
        .count();
    assert!(first_round <= 3, "{goodbyes:?}");
    assert_eq!(
        common::metric_sum(&a, "singyeong_balance_goodbyes_total", ""),
        6.0
    );
    // b, under its share all along, sent nobody away.
    assert_eq!(
        common::metric_sum(&b, "singyeong_balance_goodbyes_total", ""),
        0.0
    );
    for client in on_a.iter_mut().chain(on_b.iter_mut()) {
        client.expect_nothing(Duration::from_millis(50));
    }
}

#[test]
fn without_balance_above_a_crowded_node_sends_nobody_away() {
    use common::{Client, Encoding};
    let (ga, gb) = (gossip_addr(), gossip_addr());
    // Checks would come every 200 ms, if the threshold were set.
    let every = ["--balance-interval", "200"];
    let a = start_node_extra("a", "1", ga, &[gb], SECRET, None, &every);
    let b = start_node_extra("b", "1", gb, &[ga], SECRET, None, &every);
    wait_until("links to b", JOIN, || linked(&a, "b"));
    let mut on_a: Vec<Client> = (0..8)
        .map(|i| Client::ready(&a, Encoding::Json, "lb", &format!("c{i}")))
        .collect();
    wait_until("a's clients counted on b", JOIN, || {
        clients_of(&b, "a") == Some(8)
    });
    std::thread::sleep(Duration::from_secs(1));
    for client in &mut on_a {
        client.expect_nothing(Duration::from_millis(20));
    }
    assert_eq!(
        common::metric_sum(&a, "singyeong_balance_goodbyes_total", ""),
        0.0
    );
}

/// Identifies (`app`, `id`) on `server`: the client on ready, `None` on
/// the duplicate error (checked exactly, with its close).
fn try_identify(server: &Server, app: &str, id: &str) -> Option<common::Client> {
    use common::{Client, Encoding, OP_ERROR, OP_READY};
    let mut client = Client::connect(server, Encoding::Json);
    client.send_identify(app, id, serde_json::json!({}));
    let p = client.recv();
    if p["op"] == OP_READY {
        return Some(client);
    }
    assert_eq!(p["op"], OP_ERROR, "{p}");
    assert_eq!(
        p["d"]["error"],
        common::texts::duplicate(id, app),
        "the exact error: {p}"
    );
    client.expect_closed();
    None
}

#[test]
fn a_name_held_on_one_node_is_refused_on_the_others_until_it_is_given_back() {
    use common::{Client, Encoding};
    let (a, b, c) = three_linked();
    // Enough names that some are homed on each node.
    let ids: Vec<String> = (0..9).map(|i| format!("x{i}")).collect();
    let held: Vec<Client> = ids
        .iter()
        .map(|id| Client::ready(&a, Encoding::Json, "dup", id))
        .collect();
    for id in &ids {
        for server in [&b, &c] {
            assert!(try_identify(server, "dup", id).is_none(), "{id} twice");
        }
    }
    assert_eq!(
        common::metric_sum(&b, "singyeong_cluster_claims_refused_total", "")
            + common::metric_sum(&c, "singyeong_cluster_claims_refused_total", ""),
        18.0
    );
    // The same id in another application is another name.
    let other: Vec<Client> = ids
        .iter()
        .map(|id| Client::ready(&b, Encoding::Json, "other", id))
        .collect();
    // Given back when its connection ends: free on b (the release is one
    // way, so it may take a moment), then held by b.
    for (id, client) in ids.iter().zip(held) {
        client.close();
        let mut now_on_b = None;
        wait_until(&format!("{id} free on b"), common::STEP, || {
            now_on_b = try_identify(&b, "dup", id);
            now_on_b.is_some()
        });
        assert!(try_identify(&c, "dup", id).is_none(), "{id} held by b");
        assert!(try_identify(&a, "dup", id).is_none(), "{id} held by b");
    }
    drop(other);
    assert_eq!(
        common::metric_sum(&b, "singyeong_cluster_claims_unconfirmed_total", ""),
        0.0,
        "every home answered"
    );
}

#[test]
fn the_same_name_identified_on_two_nodes_at_once_is_granted_once() {
    use common::{Client, Encoding, OP_ERROR, OP_READY};
    let (a, b, _c) = three_linked();
    for i in 0..9 {
        let id = format!("race{i}");
        // Both identifies are on their way before either is answered.
        let mut on_a = Client::connect(&a, Encoding::Json);
        let mut on_b = Client::connect(&b, Encoding::Json);
        on_a.send_identify("race", &id, serde_json::json!({}));
        on_b.send_identify("race", &id, serde_json::json!({}));
        let (pa, pb) = (on_a.recv(), on_b.recv());
        let ready = [&pa, &pb].iter().filter(|p| p["op"] == OP_READY).count();
        assert_eq!(ready, 1, "{id}: exactly one is ready: {pa} {pb}");
        let refused = if pa["op"] == OP_READY { &pb } else { &pa };
        assert_eq!(refused["op"], OP_ERROR);
        assert_eq!(refused["d"]["error"], common::texts::duplicate(&id, "race"));
    }
}

#[test]
fn the_names_of_a_node_that_dies_are_free_once_it_is_down() {
    use common::{Client, Encoding};
    let (ga, gb, gc) = (gossip_addr(), gossip_addr(), gossip_addr());
    let a = start_node_with("a", "2", ga, &[], SECRET, Some(1000));
    let b = start_node_with("b", "1", gb, &[ga], SECRET, Some(1000));
    let mut c = start_node_with("c", "1", gc, &[ga], SECRET, Some(1000));
    for (server, others) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        for other in others {
            wait_until(&format!("links to {other}"), JOIN, || linked(server, other));
        }
    }
    let ids: Vec<String> = (0..9).map(|i| format!("d{i}")).collect();
    let _held: Vec<Client> = ids
        .iter()
        .map(|id| Client::ready(&c, Encoding::Json, "dup", id))
        .collect();
    for id in &ids {
        assert!(try_identify(&b, "dup", id).is_none(), "{id} held by c");
    }
    c.kill();
    for server in [&a, &b] {
        wait_until("c down", JOIN, || {
            member(server, "c").is_some_and(|(state, _)| state == "down")
        });
    }
    for (i, id) in ids.iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        assert!(try_identify(server, "dup", id).is_some(), "{id} free");
    }
}

#[test]
fn names_are_claimed_again_at_a_new_home_when_a_node_joins() {
    use common::{Client, Encoding};
    let (ga, gb, gc) = (gossip_addr(), gossip_addr(), gossip_addr());
    let a = start_node_with("a", "2", ga, &[], SECRET, None);
    let b = start_node_with("b", "1", gb, &[ga], SECRET, None);
    wait_until("links to b", JOIN, || linked(&a, "b") && linked(&b, "a"));
    let ids: Vec<String> = (0..12).map(|i| format!("j{i}")).collect();
    let _held: Vec<Client> = ids
        .iter()
        .map(|id| Client::ready(&a, Encoding::Json, "dup", id))
        .collect();
    // c joins: about a third of the names are homed on it now, and it
    // learns of them only from a claiming them again.
    let c = start_node_with("c", "1", gc, &[ga], SECRET, None);
    for (server, others) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        for other in others {
            wait_until(&format!("links to {other}"), JOIN, || linked(server, other));
        }
    }
    // The claims made again follow the new view, and are retried every
    // 0.5 s until the new links carry them.
    std::thread::sleep(Duration::from_millis(1500));
    for id in &ids {
        for server in [&b, &c] {
            assert!(try_identify(server, "dup", id).is_none(), "{id} held by a");
        }
    }
    assert_eq!(
        common::metric_sum(&c, "singyeong_cluster_claims_unconfirmed_total", ""),
        0.0
    );
}

/// Which of `nodes` (gossip addresses) is the home of user `id` of
/// application `app`, as every node computes it.
fn home_of_user(nodes: &[SocketAddr], app: &str, id: i64) -> usize {
    use singyeong::cluster::node::{Member, NodeId};
    use singyeong::cluster::{ClusterView, MemberState, values};
    use singyeong::metadata::{Kind, ScalarKey, ValueKey};
    let node = |addr: SocketAddr| NodeId {
        addr,
        boot: 1,
        name: String::new(),
        shards: 1,
        links: vec![1],
    };
    let view = ClusterView {
        this: Some(node(nodes[0])),
        members: nodes[1..]
            .iter()
            .map(|&addr| Member {
                id: node(addr),
                state: MemberState::Alive,
                since_ms: 0,
            })
            .collect(),
    };
    let key = values::encode_key(&ValueKey {
        app: app.into(),
        key: "user_id".into(),
        kind: Kind::Eq,
        scalar: ScalarKey::Int(id),
    });
    view.home(&key).map_or(0, |home| {
        nodes.iter().position(|&a| a == home.addr).unwrap()
    })
}

#[test]
fn a_send_to_a_unique_id_touches_only_the_values_home_and_the_owner() {
    use common::{Client, Encoding, meta, metric_sum};
    use serde_json::json;
    let (a, b, c) = three_linked();
    let servers = [&a, &b, &c];
    let addrs: Vec<SocketAddr> = servers
        .iter()
        .map(|s| {
            cluster(s)["node"]["addr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // Users 1000.. on a, 2000.. on b, 3000.. on c: on each node, two
    // whose value is homed on each node (chosen knowing the addresses).
    let mut users: Vec<(usize, i64, Client)> = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        let mut per_home = [0; 3];
        for id in (1000 * (n as i64 + 1))..(1000 * (n as i64 + 2)) {
            let home = home_of_user(&addrs, "users", id);
            if per_home[home] == 2 {
                continue;
            }
            per_home[home] += 1;
            let mut client = Client::ready(server, Encoding::Json, "users", &format!("u{id}"));
            client.set_metadata(json!({"user_id": meta("integer", json!(id))}));
            users.push((n, id, client));
            if per_home == [2; 3] {
                break;
            }
        }
        assert_eq!(per_home, [2; 3]);
    }
    let mut sender = Client::ready(&a, Encoding::Json, "senders", "from-a");
    let to = |id: i64| json!({"application": "users", "ops": [{"path": "/user_id", "op": "$eq", "to": {"value": id}}]});
    let lookups = |answer: &str| {
        metric_sum(
            &a,
            "singyeong_cluster_value_lookups_total",
            &format!("answer=\"{answer}\""),
        ) as u64
    };

    // A home calls itself settled a few seconds after it last saw the
    // members change (each node on its own clock); until then a SEND asks
    // as if there were no homes. Settled once every user on c is looked up
    // with holders named.
    let mut nonce = 0;
    wait_until("settled homes", JOIN, || {
        let before = lookups("holders");
        let mut sent = 0;
        for (_, id, client) in users.iter_mut().filter(|(n, _, _)| *n == 2) {
            nonce += 1;
            sender.send_to(to(*id), json!(nonce), json!("settling"));
            client.expect_message("SEND", &json!(nonce), &json!("settling"));
            sent += 1;
        }
        lookups("holders") == before + sent
    });

    // Every user on c, from a: the home of the value (asked unless it is
    // a) and c (which delivers) receive requests, and no other node.
    for (n, id, client) in users.iter_mut().filter(|(n, _, _)| *n == 2) {
        let home = home_of_user(&addrs, "users", *id);
        let delta = requests_for_send(&servers, &mut sender, client, *id, *id as u64);
        let mut want = [0; 3];
        want[*n] += 1; // the owner: the SEND itself, no pick round
        if home != 0 {
            want[home] += 1; // the lookup
        }
        assert_eq!(delta, want, "user {id} homed on node {home}");
    }

    // Users on a and b: the same bound.
    for (n, id, client) in users.iter_mut().filter(|(n, _, _)| *n != 2) {
        let home = home_of_user(&addrs, "users", *id);
        let delta = requests_for_send(&servers, &mut sender, client, *id, *id as u64);
        let touched: Vec<usize> = (0..3).filter(|&i| delta[i] > 0).collect();
        let allowed: Vec<usize> = (1..3).filter(|&i| i == *n || i == home).collect();
        assert_eq!(touched, allowed, "user {id} on node {n}, homed on {home}");
    }

    // Nobody holds the id: the homes say so, the SEND still asks the
    // nodes holding the application before answering no_route.
    let nobody = lookups("nobody");
    sender.send_to(to(999), json!("none"), json!(1));
    sender.expect_invalid(common::texts::NO_ROUTE);
    assert_eq!(lookups("nobody"), nobody + 1);

    // A client that connected a moment ago, whose home may not know it
    // yet, still gets its message.
    for (n, server) in servers.iter().enumerate() {
        let id = 9000 + n as i64;
        let mut fresh = Client::ready(server, Encoding::Json, "users", &format!("fresh{id}"));
        fresh.set_metadata(json!({"user_id": meta("integer", json!(id))}));
        sender.send_to(to(id), json!(id), json!("fresh"));
        fresh.expect_message("SEND", &json!(id), &json!("fresh"));
    }
    sender.expect_nothing(Duration::from_millis(100));

    // A value two nodes hold: either may get it, never both.
    let mut twin_b = Client::ready(&b, Encoding::Json, "users", "twin-b");
    let mut twin_c = Client::ready(&c, Encoding::Json, "users", "twin-c");
    for twin in [&mut twin_b, &mut twin_c] {
        twin.set_metadata(json!({"user_id": meta("integer", json!(5000))}));
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..30 {
        sender.send_to(to(5000), json!(i), json!("twin"));
    }
    sender.sync();
    let mut got = [0; 2];
    for (k, twin) in [&mut twin_b, &mut twin_c].into_iter().enumerate() {
        while let common::Event::Packet(_) = twin.next_event(Duration::from_millis(200)) {
            got[k] += 1;
        }
    }
    assert_eq!(got[0] + got[1], 30, "{got:?}");
    assert!(got[0] > 0 && got[1] > 0, "both holders chosen: {got:?}");
}

/// Sends from `sender` to the user `id` of application "users" (held by
/// `client`) and returns how many requests each of `servers` received
/// meanwhile.
fn requests_for_send(
    servers: &[&Server],
    sender: &mut common::Client,
    client: &mut common::Client,
    id: i64,
    nonce: u64,
) -> Vec<u64> {
    use serde_json::json;
    let received = |s: &Server| {
        common::metric_sum(
            s,
            "singyeong_cluster_requests_total",
            "direction=\"received\"",
        ) as u64
    };
    let before: Vec<u64> = servers.iter().map(|s| received(s)).collect();
    let to = json!({"application": "users", "ops": [{"path": "/user_id", "op": "$eq", "to": {"value": id}}]});
    sender.send_to(to, json!(nonce), json!(id));
    client.expect_message("SEND", &json!(nonce), &json!(id));
    sender.sync();
    servers
        .iter()
        .zip(before)
        .map(|(s, b)| received(s) - b)
        .collect()
}

/// Waits until every SEND to `users` from `sender` (on `origin`) was
/// narrowed by settled homes.
fn wait_for_settled_homes(
    origin: &Server,
    sender: &mut common::Client,
    users: &mut [(i64, common::Client)],
    nonce: &mut u64,
) {
    let holders = || {
        common::metric_sum(
            origin,
            "singyeong_cluster_value_lookups_total",
            "answer=\"holders\"",
        ) as u64
    };
    wait_until("settled homes", JOIN, || {
        let before = holders();
        for (id, client) in users.iter_mut() {
            *nonce += 1;
            requests_for_send(&[origin], sender, client, *id, *nonce);
        }
        holders() == before + users.len() as u64
    });
}

#[test]
fn values_move_to_a_new_home_when_their_home_leaves_and_back_when_it_runs_again() {
    use common::{Client, Encoding, meta};
    use serde_json::json;
    let (ga, gb, gc) = (gossip_addr(), gossip_addr(), gossip_addr());
    let down_after = Some(1500);
    let a = start_node_with("a", "2", ga, &[], SECRET, down_after);
    let mut b = start_node("b", gb, &[ga], SECRET, down_after);
    let c = start_node_with("c", "2", gc, &[ga], SECRET, down_after);
    for (server, others) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        for other in others {
            wait_until(&format!("links to {other}"), JOIN, || linked(server, other));
        }
    }
    // Users on c whose values are homed on b.
    let all = [ga, gb, gc];
    let mut users: Vec<(i64, Client)> = (1..)
        .filter(|&id| home_of_user(&all, "users", id) == 1)
        .take(4)
        .map(|id| {
            let mut client = Client::ready(&c, Encoding::Json, "users", &format!("u{id}"));
            client.set_metadata(json!({"user_id": meta("integer", json!(id))}));
            (id, client)
        })
        .collect();
    let mut sender = Client::ready(&a, Encoding::Json, "senders", "from-a");
    let mut nonce = 0;
    wait_for_settled_homes(&a, &mut sender, &mut users, &mut nonce);
    for (id, client) in users.iter_mut() {
        nonce += 1;
        let hops = requests_for_send(&[&a, &b, &c], &mut sender, client, *id, nonce);
        assert_eq!(hops, [0, 1, 1], "user {id}: the lookup on b, the SEND on c");
    }

    // b dies: SENDs keep arriving at once (its values' new homes may not
    // be settled yet), and once they are, b's values are narrowed by their
    // new homes (a or c), which heard of them from c.
    b.kill();
    for server in [&a, &c] {
        wait_until("b down", Duration::from_secs(10), || {
            member(server, "b").is_some_and(|(s, _)| s == "down")
        });
    }
    for (id, client) in users.iter_mut() {
        nonce += 1;
        requests_for_send(&[&a], &mut sender, client, *id, nonce);
    }
    wait_for_settled_homes(&a, &mut sender, &mut users, &mut nonce);
    for (id, client) in users.iter_mut() {
        nonce += 1;
        let hops = requests_for_send(&[&a, &c], &mut sender, client, *id, nonce);
        let home_on_c = home_of_user(&[ga, gc], "users", *id) == 1;
        assert_eq!(hops, [0, 1 + u64::from(home_on_c)], "user {id} without b");
    }

    // b runs again on its address: it is these values' home again, and c
    // tells it of them.
    let b = start_node("b", gb, &[ga], SECRET, down_after);
    for (server, other) in [(&a, "b"), (&c, "b"), (&b, "a"), (&b, "c")] {
        wait_until(&format!("links to {other} again"), JOIN, || {
            alive(server, other) && linked(server, other)
        });
    }
    wait_for_settled_homes(&a, &mut sender, &mut users, &mut nonce);
    for (id, client) in users.iter_mut() {
        nonce += 1;
        let hops = requests_for_send(&[&a, &b, &c], &mut sender, client, *id, nonce);
        assert_eq!(hops, [0, 1, 1], "user {id}: homed on the new b");
    }
    sender.expect_nothing(Duration::from_millis(100));
}
