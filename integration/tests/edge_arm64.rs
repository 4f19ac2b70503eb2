//! The arm64 edge binary serves hello: `scripts/edge-smoke.sh` runs the aarch64 `trellis host`
//! under qemu-user against a real nats-server and curls the hello app (docs/edge-binaries.md).
//!
//! Runs only when an arm64 binary is there (`scripts/build-edge.sh` builds it) and
//! qemu-aarch64-static is installed (`scripts/install-deps.sh --edge`); otherwise it prints why
//! and passes, so `scripts/test.sh` never builds the cross binary. The reconciler and the CLI
//! are this workspace's native `trellis`.

use std::path::{Path, PathBuf};
use std::process::Command;

use trellis_integration::{guest, repo_root, trellis_bin};

/// Where the arm64 binary is: `TRELLIS_EDGE_ARM64_BIN`, else the edge build of
/// scripts/build-edge.sh in `CARGO_TARGET_DIR` or in the target dir of this test executable.
fn arm64_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TRELLIS_EDGE_ARM64_BIN") {
        return Some(PathBuf::from(path));
    }
    let mut target_dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.push(PathBuf::from(dir));
    }
    // Test executables live in <target>/<profile>/deps.
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .and_then(Path::parent)
    {
        target_dirs.push(dir.to_path_buf());
    }
    target_dirs.iter().find_map(|dir| {
        ["aarch64-unknown-linux-musl", "aarch64-unknown-linux-gnu"]
            .iter()
            .map(|triple| dir.join(triple).join("edge").join("trellis"))
            .find(|path| path.is_file())
    })
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

#[test]
fn the_arm64_host_under_qemu_serves_hello() {
    let Some(arm64) = arm64_binary() else {
        eprintln!(
            "skipped: no arm64 trellis (build it with scripts/build-edge.sh, or set \
             TRELLIS_EDGE_ARM64_BIN)"
        );
        return;
    };
    if !on_path("qemu-aarch64-static") {
        eprintln!("skipped: qemu-aarch64-static is missing (scripts/install-deps.sh --edge)");
        return;
    }
    // Built here, as every test does, so the script finds it.
    let hello = guest("http_hello");
    assert!(hello.is_file());

    let output = Command::new("bash")
        .arg(repo_root().join("scripts/edge-smoke.sh"))
        .arg("--arm64")
        .arg(&arm64)
        .arg("--native")
        .arg(trellis_bin())
        .env_remove("TRELLIS_NATS_URL")
        .env_remove("TRELLIS_LATTICE")
        .output()
        .expect("cannot run scripts/edge-smoke.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "scripts/edge-smoke.sh failed for {}:\n{stdout}\n{stderr}",
        arm64.display()
    );
    assert!(
        stdout.contains("edge smoke test passed"),
        "unexpected output:\n{stdout}\n{stderr}"
    );
}
