//! `POST /api/v1/proxy` to an `https://` upstream: rustls with the trust
//! anchors of `--proxy-ca-file`. The upstream is Python's http.server over
//! ssl (`proxy/https_upstream.py`) with a certificate for 127.0.0.1 signed
//! by a throwaway CA that `openssl` makes for the test.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

struct Upstream {
    child: Child,
    port: u16,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for IP 127.0.0.1 signed by it.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("singyeong-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=singyeong test CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    dir
}

fn start_upstream(dir: &Path) -> Upstream {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy/https_upstream.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    // The port line, waited for at most STEP.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(STEP) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the https upstream printed no port within {STEP:?}");
        }
    };
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("upstream printed {line:?}"));
    Upstream { child, port }
}

#[test]
fn https_upstream_through_rustls() {
    let dir = certificates();
    let up = start_upstream(&dir);
    let ca = dir.join("ca.pem");
    let ip = format!("https://127.0.0.1:{}/base", up.port);
    let request = json!({"method": "GET", "route": "/x?y=1", "query": query("app")});
    let headers = [("Content-Type", "application/json")];

    let server = Server::start(&["--proxy-ca-file", ca.to_str().unwrap()]);
    let _c = Client::ready_with(&server, Json, "app", "c", json!({ "ip": ip }));
    for _ in 0..3 {
        let r = server.http(
            "POST",
            "/api/v1/proxy",
            &headers,
            Some(&request.to_string()),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["tls"], json!(true));
        assert_eq!(body["path"], json!("/base/x?y=1"));
        assert_eq!(body["host"], json!(format!("127.0.0.1:{}", up.port)));
    }

    // Without the CA, the certificate is not trusted: 502, saying why.
    let server = Server::start(&[]);
    let _c = Client::ready_with(&server, Json, "app", "c", json!({ "ip": ip }));
    let r = server.http(
        "POST",
        "/api/v1/proxy",
        &headers,
        Some(&request.to_string()),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    let text = r.json()["errors"][0].as_str().unwrap().to_string();
    assert!(text.contains("TLS handshake"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
