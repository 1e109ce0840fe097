//! The Python virtualenv the interop tests share: built under target/ on
//! first use (pip needs only the package registry), reused after.
//!
//! One venv holds every package any test needs, so tests of different
//! binaries never rebuild it under each other; a marker file lists what was
//! installed, and a changed list reinstalls into the same venv.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything installed: singyeong-py and its msgpack for the client
/// interop test, prometheus_client for parsing /metrics.
const PACKAGES: &[&str] = &[
    "singyeong.py==1.0.1",
    "msgpack==1.1.0",
    "prometheus_client==0.26.0",
];

/// The venv's python, built once per test process.
pub fn venv_python() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(build_venv).clone()
}

/// tests/python, where the scripts live.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
}

fn build_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("python-interop-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".installed");
    let wanted = PACKAGES.join("\n");
    if std::fs::read_to_string(&ready).is_ok_and(|have| have == wanted) {
        return python;
    }
    if !python.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PACKAGES));
    std::fs::write(&ready, wanted).unwrap();
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
