//! A real third-party client: singyeong-py 1.0.1 from PyPI, unchanged,
//! connects, updates metadata, sends and receives through the server
//! (tests/python/interop.py does the talking).
//!
//! The client pins websockets 8.1, which passes `loop=` to asyncio and so
//! fails on Python 3.10+; tests/python/sitecustomize.py, put on PYTHONPATH
//! here, drops that keyword. The virtualenv (tests/common/python.rs) is
//! built under target/ on first use and reused after.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use common::python::{scripts_dir, venv_python};

fn interop(shards: &str) {
    let python = venv_python();
    let server = Server::start(&["--shards", shards]);
    let dir = scripts_dir();
    let started = Instant::now();
    let out = Command::new(python)
        .arg(dir.join("interop.py"))
        .env("PYTHONPATH", &dir)
        .env("SG_PORT", server.addr().port().to_string())
        .output()
        .expect("run interop.py");
    assert!(started.elapsed() < Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("interop ok"),
        "singyeong-py interop failed\nstdout: {stdout}\nstderr: {stderr}\nserver log: {}",
        server.log_tail()
    );
}

#[test]
fn singyeong_py_talks_to_the_server() {
    interop("1");
}

#[test]
fn singyeong_py_talks_across_shards() {
    interop("3");
}
