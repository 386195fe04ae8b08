//! Helpers of the diag tests, shared by `tests/diag.rs` and `tests/gpu_fake.rs`. dpcoord and
//! NVTX read their environment once per process, so every case runs an `#[ignore]`d test of
//! the same binary in a fresh process with the environment it needs.

// Each including crate uses a different part.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The variables that switch dpcoord's diagnostics on; removed from every child unless set.
const DIAG_VARS: [&str; 3] = [
    "DPCOORD_DEBUG",
    "DPCOORD_DEBUG_FILE",
    "NVTX_INJECTION64_PATH",
];

/// An empty directory of its own for `name` in this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dpcoord-diag-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the ignored test `test` of this binary alone, in a fresh process with `env` (and
/// none of [`DIAG_VARS`] otherwise); fails unless the child passed.
pub fn rerun<V: AsRef<OsStr>>(test: &str, env: &[(&str, V)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for var in DIAG_VARS {
        cmd.env_remove(var);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{test} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Builds `tests/diag_nvtx_tool.c` into `dir`: a stand-in for nsys's NVTX injection library
/// that records every domain, push and pop into `$DPCOORD_TEST_NVTX_OUT`.
pub fn build_nvtx_tool(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = dir.join("libnvtx_tool.so");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg("-I")
        .arg(root.join("third_party/nvtx/include"))
        .arg(root.join("tests/diag_nvtx_tool.c"))
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed to build the NVTX tool");
    lib
}
