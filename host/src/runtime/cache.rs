//! On-disk cache of compiled components.
//!
//! A cache entry is named `<sha256 of the .wasm>-<engine fingerprint>.cwasm`: the digest of the
//! component bytes guarantees a different .wasm never gets another one's code, and the engine
//! fingerprint (wasmtime's `precompile_compatibility_hash`: wasmtime version, target, compiler
//! settings) guarantees code compiled by an incompatible engine is never loaded. Entries are
//! written to a temporary file and renamed into place, so readers never see a partial file.
//!
//! Loading an entry maps native code into the process: the cache directory must be writable
//! only by the user running the host (it is created with the user's default permissions under
//! the user's own cache directory).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Default cache directory: `$XDG_CACHE_HOME/trellis/compiled`, else `~/.cache/trellis/compiled`,
/// else a directory under the system temp dir.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("trellis").join("compiled")
}

/// Hex-encoded sha256 of the component bytes.
pub(crate) fn component_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Feeds `Hash` output into sha256 so the fingerprint is stable across processes and Rust
/// versions (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Unused: the digest is read with `finalize` below.
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Short hex fingerprint of everything that makes compiled code (in)compatible with `engine`.
pub(crate) fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    hex(&digest[..8])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// How a component's compiled code was obtained: from the on-disk cache or compiled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Deserialized from the on-disk cache.
    Cache,
    /// Compiled now (and stored in the cache if possible).
    Compiled,
}

/// The on-disk cache of compiled components for one engine.
pub(crate) struct CompiledCache {
    dir: PathBuf,
    fingerprint: String,
}

impl CompiledCache {
    /// A cache in `dir` for code compiled by `engine`. The directory is created lazily.
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        Self {
            dir,
            fingerprint: engine_fingerprint(engine),
        }
    }

    /// Path of the cache entry for a component with this digest.
    pub(crate) fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.fingerprint))
    }

    /// Loads the compiled form of `bytes` from the cache, or compiles it and stores it.
    /// Blocking (compilation is CPU-heavy): call it from `spawn_blocking`.
    /// Cache failures are logged and never fail the load: compiling always works.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        component_id: &str,
        digest: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, CompileSource)> {
        let path = self.entry_path(digest);
        if path.is_file() {
            // SAFETY: the file was produced by `Component::serialize` of a compatible engine (the
            // name carries the engine fingerprint, and wasmtime re-checks compatibility in the
            // header) and is written atomically into a directory owned by this user.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CompileSource::Cache)),
                Err(error) => tracing::warn!(
                    component_id,
                    path = %path.display(),
                    error = %format!("{error:#}"),
                    "ignoring an unusable compiled-code cache entry; recompiling"
                ),
            }
        }
        let component = Component::new(engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling component {component_id}"))?;
        if let Err(error) = self.store(&path, &component) {
            tracing::warn!(
                component_id,
                dir = %self.dir.display(),
                error = %format!("{error:#}"),
                "could not write the compiled-code cache; the component will be recompiled next time"
            );
        }
        Ok((component, CompileSource::Compiled))
    }

    /// Serializes `component` to `path` atomically (temp file in the same dir + rename).
    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache directory {}", self.dir.display()))?;
        let serialized = component
            .serialize()
            .map_err(anyhow::Error::from)
            .context("serializing compiled component")?;
        let (temp_path, mut file) = tempfile_in(&self.dir)?;
        let written = file
            .write_all(&serialized)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", temp_path.display()))
            .and_then(|()| {
                drop(file);
                std::fs::rename(&temp_path, path).with_context(|| {
                    format!("renaming {} to {}", temp_path.display(), path.display())
                })
            });
        if written.is_err() {
            // Leave no stray temp file behind.
            let _ = std::fs::remove_file(&temp_path);
        }
        written
    }
}

/// Creates a uniquely named temporary file in `dir`.
fn tempfile_in(dir: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".tmp-{}-{}.cwasm",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok((path, file))
}
