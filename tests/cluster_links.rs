//! The links' settings over real processes: with a certificate pair and a
//! cluster CA given by the user, nodes whose certificates the CA signed
//! link up, and a node with the secret but a certificate from elsewhere
//! gossips yet gets no link; a pair that is incomplete, unreadable or
//! mismatched refuses the start with a message naming what is wrong; a
//! fixed link port range is used as given, and a taken port refuses the
//! start.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{
    ANY, DataDir, SECRET, cluster, gossip_of, linked, node, wait_linked, wait_until,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// The name every link certificate carries (what a dialer asks for).
const LINK_NAME: &str = "singyeong-node";

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes a certificate for [`LINK_NAME`] signed by `ca`, and its key, in
/// `dir`; returns their paths.
fn node_pair(dir: &Path, tag: &str, ca: &CertifiedIssuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![LINK_NAME.to_string()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn nodes_the_cluster_ca_signed_link_up_and_a_stranger_does_not() {
    let dir = DataDir::new("tls");
    std::fs::create_dir_all(dir.path()).unwrap();
    let dir = Path::new(dir.path());
    let ours = ca();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ours.pem()).unwrap();
    let (a_cert, a_key) = node_pair(dir, "a", &ours);
    let (b_cert, b_key) = node_pair(dir, "b", &ours);
    let (c_cert, c_key) = node_pair(dir, "c", &ca());

    let with = |cert: &Path, key: &Path| {
        vec![
            "--no-durable".to_string(),
            "--cluster-cert".to_string(),
            s(cert).to_string(),
            "--cluster-key".to_string(),
            s(key).to_string(),
            "--cluster-ca".to_string(),
            s(&ca_path).to_string(),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let (a_args, b_args, c_args) = (
        with(&a_cert, &a_key),
        with(&b_cert, &b_key),
        with(&c_cert, &c_key),
    );
    let a = node("a", ANY, &[], &args(&a_args));
    let ga = gossip_of(&a);
    let b = node("b", ANY, &[ga], &args(&b_args));
    wait_linked(&[(&a, "a"), (&b, "b")]);

    // The stranger knows the secret, so it gossips; its links never come
    // up, and the failed handshakes are counted.
    let c = node("c", ANY, &[ga], &args(&c_args));
    wait_until("c gossips with a", Duration::from_secs(10), || {
        cluster(&a)["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "c" && m["state"] == "alive")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!linked(&a, "c") && !linked(&c, "a") && !linked(&b, "c"));
    assert!(linked(&a, "b") && linked(&b, "a"));
}

#[test]
fn an_incomplete_or_unusable_pair_refuses_to_start() {
    let dir = DataDir::new("tls-bad");
    std::fs::create_dir_all(dir.path()).unwrap();
    let dir = Path::new(dir.path());
    let authority = ca();
    let (cert, key) = node_pair(dir, "n", &authority);
    let (_, other_key) = node_pair(dir, "o", &authority);
    let missing = dir.join("missing.pem");
    let cluster_args = ["--cluster-addr", "127.0.0.1:0", "--cluster-secret", SECRET];
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--cluster-cert", s(&cert)], "cluster_key"),
        (vec!["--cluster-key", s(&key)], "cluster_cert"),
        (vec!["--cluster-ca", s(&cert)], "needs --cluster-cert"),
        (
            vec!["--cluster-cert", s(&missing), "--cluster-key", s(&key)],
            "missing.pem",
        ),
        (
            vec!["--cluster-cert", s(&cert), "--cluster-key", s(&other_key)],
            "does not fit its key",
        ),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_singyeong"))
            .env_clear()
            .args(["--bind", "127.0.0.1", "--port", "0", "--no-durable"])
            .args(cluster_args)
            .args(&args)
            .output()
            .expect("run singyeong");
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn links_listen_on_the_fixed_ports_given() {
    // Two free ports in a row, found by asking the kernel.
    let base = (0..50)
        .find_map(|_| {
            let first = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let port = first.local_addr().ok()?.port().checked_add(1)?;
            std::net::UdpSocket::bind(("127.0.0.1", port)).ok()?;
            Some(port - 1)
        })
        .expect("two free ports in a row");
    let base_arg = base.to_string();
    let a = node(
        "a",
        ANY,
        &[],
        &[
            "--no-durable",
            "--shards",
            "2",
            "--cluster-link-port",
            &base_arg,
        ],
    );
    assert_eq!(
        cluster(&a)["node"]["link_ports"],
        serde_json::json!([base, base + 1])
    );
    let b = node("b", ANY, &[gossip_of(&a)], &["--no-durable"]);
    wait_linked(&[(&a, "a"), (&b, "b")]);
    // Each link shows its round trip, backlog, window and losses.
    let view = cluster(&b);
    let link = &view["members"][0]["links"][0];
    assert!(
        link["rtt_us"].is_u64() && link["lost_packets"].is_u64(),
        "{link}"
    );
    assert_eq!(link["queued_bytes"], serde_json::json!(0), "{link}");
    assert!(link["cwnd"].as_u64().is_some_and(|w| w > 0), "{link}");

    // Taken (by a's first shard): refused before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_singyeong"))
        .env_clear()
        .args(["--bind", "127.0.0.1", "--port", "0", "--no-durable"])
        .args(["--cluster-addr", "127.0.0.1:0", "--cluster-secret", SECRET])
        .args(["--cluster-link-port", &base_arg])
        .output()
        .expect("run singyeong");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind a link socket on 127.0.0.1:{base}")),
        "{stderr}"
    );
}
