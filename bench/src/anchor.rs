//! The anchor: `wasmtime serve` of the same wasmtime version as the host, serving the same
//! `.wasm`. Installed with `cargo install` into a cache directory outside the repository when
//! missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::lattice;

/// The wasmtime version the host embeds; the anchor must be the same.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The default cache: `$TRELLIS_BENCH_CACHE`, else `~/.cache/trellis-bench`.
pub fn default_cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TRELLIS_BENCH_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    Path::new(&home).join(".cache/trellis-bench")
}

fn is_right_version(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(WASMTIME_VERSION))
        .unwrap_or(false)
}

/// Finds `wasmtime` `WASMTIME_VERSION`: `explicit` (flag or `TRELLIS_BENCH_WASMTIME`), the
/// cache, or `PATH`; installs it into the cache when none fits.
pub fn locate_or_install(explicit: Option<&Path>, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(bin) = explicit {
        if is_right_version(bin) {
            return Ok(bin.to_path_buf());
        }
        bail!(
            "{} is not wasmtime {WASMTIME_VERSION} (check `{} --version`)",
            bin.display(),
            bin.display()
        );
    }
    let root = cache.join(format!("wasmtime-{WASMTIME_VERSION}"));
    let cached = root.join("bin/wasmtime");
    if is_right_version(&cached) {
        return Ok(cached);
    }
    let on_path = PathBuf::from("wasmtime");
    if is_right_version(&on_path) {
        return Ok(on_path);
    }
    eprintln!(
        "trellis-bench: the anchor (wasmtime-cli {WASMTIME_VERSION}) is not installed; installing it into {} \
         with `cargo install` - this takes tens of minutes on a small machine (once). \
         Pass --skip-anchor to measure without it.",
        root.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "wasmtime-cli",
            "--version",
            WASMTIME_VERSION,
            "--locked",
            "--root",
        ])
        .arg(&root)
        .status()
        .context("cannot run cargo install")?;
    if !status.success() || !is_right_version(&cached) {
        bail!("installing wasmtime-cli {WASMTIME_VERSION} failed ({status})");
    }
    Ok(cached)
}

/// A running `wasmtime serve`; killed on drop.
pub struct Anchor {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Anchor {
    /// Starts `wasmtime serve -O pooling-allocator -Scli` on a free port and waits until it
    /// answers.
    pub async fn start(bin: &Path, wasm: &Path) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", trellis_integration::free_port());
        let child = Command::new(bin)
            .args(["serve", "-O", "pooling-allocator", "-Scli", "--addr", &addr])
            .arg(wasm)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let anchor = Self { child, addr };
        lattice::wait_http_ok(
            &anchor.addr,
            "/",
            Duration::from_millis(20),
            Duration::from_secs(60),
        )
        .await
        .context("wasmtime serve did not answer")?;
        Ok(anchor)
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
