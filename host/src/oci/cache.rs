//! The on-disk cache of pulled artifacts, content-addressed and shared by the hosts of a
//! machine.
//!
//! Layout under the cache directory:
//! - `blobs/sha256/<hex>`: wasm layers, named by their digest;
//! - `manifests/sha256/<hex>`: the raw manifests, named by their digest;
//! - `tags/<sha256 of the reference>.json`: the digest a tag ref last resolved to, and when.
//!
//! Every file is written to a temporary name and renamed into place, so a reader (another host
//! included) never sees a partial file. Every read checks the content against its digest: a
//! damaged or altered entry is deleted and treated as a miss. Blobs are bounded in total size;
//! when a write goes over the bound the least recently used blobs (by modification time, which
//! every hit refreshes) are deleted first.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The default bound on cached blobs: 2 GiB.
pub const DEFAULT_OCI_CACHE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The largest manifest or tag record read from the cache.
const MAX_SMALL_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// `$XDG_CACHE_HOME/trellis/oci`, else `~/.cache/trellis/oci`, else under the temp dir.
pub fn default_oci_cache_dir() -> PathBuf {
    crate::runtime::default_cache_dir()
        .parent()
        .map(|p| p.join("oci"))
        .unwrap_or_else(|| std::env::temp_dir().join("trellis-oci"))
}

/// What a tag resolved to the last time the registry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The reference as resolved (normalized by the parser).
    pub reference: String,
    /// The manifest digest it resolved to.
    pub digest: String,
    /// When, in seconds since the Unix epoch.
    pub resolved_at: u64,
}

impl TagRecord {
    /// How long ago the tag was resolved.
    pub fn age(&self) -> Duration {
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(self.resolved_at);
        SystemTime::now().duration_since(then).unwrap_or_default()
    }
}

/// The artifact cache (see the module docs). Blocking: call it from `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl BlobCache {
    /// A cache in `dir` (created on first write) holding at most `max_bytes` of blobs.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The wasm blob with `digest`, if cached, intact and at most `max_bytes`.
    pub fn blob(&self, digest: &str, max_bytes: u64) -> Option<Vec<u8>> {
        let path = self.dir.join("blobs").join(digest_path(digest).ok()?);
        let bytes = read_verified(&path, digest, max_bytes)?;
        // Mark it recently used (LRU); failing to is harmless.
        if let Ok(file) = std::fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Stores a blob under its digest (checked), then evicts the least recently used blobs
    /// until the cache is within its bound again (never the blob just stored).
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join("blobs").join(digest_path(digest)?);
        check_digest(digest, bytes)?;
        write_atomic(&path, bytes)?;
        self.evict(&path);
        Ok(())
    }

    /// The raw manifest with `digest`, if cached and intact.
    pub fn manifest(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.dir.join("manifests").join(digest_path(digest).ok()?);
        read_verified(&path, digest, MAX_SMALL_FILE_BYTES)
    }

    /// Stores a raw manifest under its digest (checked).
    pub fn put_manifest(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join("manifests").join(digest_path(digest)?);
        check_digest(digest, bytes)?;
        write_atomic(&path, bytes)
    }

    /// What tag ref `reference` last resolved to, if known.
    pub fn tag(&self, reference: &str) -> Option<TagRecord> {
        let path = self.tag_path(reference);
        let file = std::fs::File::open(path).ok()?;
        let mut text = Vec::new();
        file.take(MAX_SMALL_FILE_BYTES)
            .read_to_end(&mut text)
            .ok()?;
        let record: TagRecord = serde_json::from_slice(&text).ok()?;
        (record.reference == reference).then_some(record)
    }

    /// Records that tag ref `reference` resolved to `digest` now.
    pub fn put_tag(&self, reference: &str, digest: &str) -> anyhow::Result<()> {
        let record = TagRecord {
            reference: reference.to_string(),
            digest: digest.to_string(),
            resolved_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        };
        write_atomic(&self.tag_path(reference), &serde_json::to_vec(&record)?)
    }

    fn tag_path(&self, reference: &str) -> PathBuf {
        self.dir.join("tags").join(format!(
            "{}.json",
            hex(&Sha256::digest(reference.as_bytes()))
        ))
    }

    /// Total size of the cached blobs, in bytes.
    pub fn blob_bytes(&self) -> u64 {
        self.blob_entries().iter().map(|(_, len, _)| len).sum()
    }

    fn blob_entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let dir = self.dir.join("blobs").join("sha256");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        e.path(),
                        meta.len(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    )
                })
            })
            .collect()
    }

    /// Deletes least recently used blobs until the total is within the bound, sparing `keep`.
    fn evict(&self, keep: &Path) {
        let mut entries = self.blob_entries();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort_by_key(|(_, _, used)| *used);
        for (path, len, _) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total = total.saturating_sub(len);
                    tracing::info!(blob = %path.display(), bytes = len, "evicted from the OCI cache (least recently used)");
                }
                // Another host evicted it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    total = total.saturating_sub(len)
                }
                Err(e) => {
                    tracing::warn!(blob = %path.display(), error = %e, "cannot evict from the OCI cache")
                }
            }
        }
    }
}

/// `sha256/<hex>` for a `sha256:<64 hex>` digest; anything else is refused (it becomes a path).
fn digest_path(digest: &str) -> anyhow::Result<PathBuf> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(Path::new("sha256").join(hex))
        }
        _ => bail!("unsupported digest {digest:?}: only sha256:<64 lowercase hex> is cached"),
    }
}

fn check_digest(digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let actual = sha256_digest(bytes);
    if actual != digest {
        bail!("content does not match its digest {digest} (it is {actual})");
    }
    Ok(())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads `path` (at most `max_bytes`) and returns it if it matches `digest`; a damaged entry is
/// deleted.
fn read_verified(path: &Path, digest: &str, max_bytes: u64) -> Option<Vec<u8>> {
    let bytes = crate::runtime::read_component_file(path, max_bytes).ok()?;
    if sha256_digest(&bytes) == digest {
        Some(bytes)
    } else {
        tracing::warn!(entry = %path.display(), %digest, "OCI cache entry does not match its digest; deleting it");
        let _ = std::fs::remove_file(path);
        None
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path without a directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the OCI cache directory {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
