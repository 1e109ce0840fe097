//! A real third-party client: singyeong-py 1.0.1 from PyPI, unchanged,
//! connects, updates metadata, sends and receives through the server
//! (tests/python/interop.py does the talking).
//!
//! The client pins websockets 8.1, which passes `loop=` to asyncio and so
//! fails on Python 3.10+; tests/python/sitecustomize.py, put on PYTHONPATH
//! here, drops that keyword. The virtualenv is built under target/ on first
//! use and reused after.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;

const PACKAGES: &[&str] = &["singyeong.py==1.0.1", "msgpack==1.1.0"];

/// Builds the virtualenv once per test process (the tests here share it).
fn venv() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(build_venv).clone()
}

fn build_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("python-interop-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".installed");
    if ready.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PACKAGES));
    std::fs::write(&ready, PACKAGES.join("\n")).unwrap();
    python
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (python3 with venv and pip is required)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn interop(shards: &str) {
    let python = venv();
    let server = Server::start(&["--shards", shards]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python");
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
