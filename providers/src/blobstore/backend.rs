//! Which store a component's blobstore calls reach, and the operations every backend offers.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::AsyncRead;

use super::fs::FsStore;
use super::nats::{NatsSettings, NatsStore};

/// A stream of object bytes (a whole object or a range of it).
pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Errors are the WIT's `error` type: a message for the guest.
pub(crate) type BlobResult<T> = Result<T, String>;

/// What `object-info` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectMeta {
    /// Seconds since the Unix epoch (0 when the backend does not know).
    pub created_at: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The storage a link resolves to.
#[derive(Clone)]
pub(crate) enum Store {
    /// A JetStream object store per container, on the lattice's NATS (boxed: it is large).
    Nats(Box<NatsStore>),
    /// A directory per container under a root directory.
    Fs(FsStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Nats(_) => f.write_str("Store::Nats"),
            Store::Fs(fs) => write!(f, "Store::Fs({})", fs.root().display()),
        }
    }
}

/// The backend kinds a provider image or the `backend` setting can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// NATS JetStream object store.
    Nats,
    /// A local directory.
    Fs,
}

/// The backend a provider image implies: `blobstore-fs` and `blobstore-nats` by name,
/// nothing for `trellis+builtin://blobstore`.
pub(crate) fn kind_from_image_ref(image_ref: &str) -> Option<BackendKind> {
    let lower = image_ref.to_ascii_lowercase();
    if lower.contains("blobstore-fs") {
        Some(BackendKind::Fs)
    } else if lower.contains("blobstore-nats") {
        Some(BackendKind::Nats)
    } else {
        None
    }
}

/// Settings with lower-cased keys (wasmCloud's providers read `ROOT`, `root`, ... alike).
pub(crate) fn normalized(settings: &HashMap<String, String>) -> HashMap<String, String> {
    settings
        .iter()
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Picks the backend: the `backend` setting (`nats` | `fs`), else the kind the provider's image
/// implies, else `fs` when a `root` is set, else NATS.
pub(crate) fn choose_kind(
    settings: &HashMap<String, String>,
    implied: Option<BackendKind>,
) -> BlobResult<BackendKind> {
    if let Some(name) = settings.get("backend") {
        return match name.trim().to_ascii_lowercase().as_str() {
            "nats" => Ok(BackendKind::Nats),
            "fs" | "file" | "filesystem" => Ok(BackendKind::Fs),
            other => Err(format!(
                "the blobstore setting backend=`{other}` is not supported: use `nats` or `fs`"
            )),
        };
    }
    if let Some(kind) = implied {
        return Ok(kind);
    }
    if settings.contains_key("root") {
        return Ok(BackendKind::Fs);
    }
    Ok(BackendKind::Nats)
}

/// Builds the store for `component_id` from merged, normalized settings.
pub(crate) async fn open_store(
    client: &async_nats::Client,
    settings: &HashMap<String, String>,
    implied: Option<BackendKind>,
    component_id: &str,
) -> BlobResult<Store> {
    match choose_kind(settings, implied)? {
        BackendKind::Nats => Ok(Store::Nats(Box::new(NatsStore::new(
            client,
            NatsSettings::parse(settings)?,
        )))),
        BackendKind::Fs => {
            let root = match settings.get("root").map(|r| r.trim()) {
                Some(root) if !root.is_empty() => PathBuf::from(root),
                // As wasmCloud's blobstore-fs: a directory named after the component in the
                // system's temporary directory.
                _ => {
                    super::fs::check_segment("component id", component_id)?;
                    std::env::temp_dir().join(component_id)
                }
            };
            Ok(Store::Fs(FsStore::open(root).await?))
        }
    }
}

impl Store {
    /// Creates a container (no error when it already exists).
    pub(crate) async fn create_container(&self, name: &str) -> BlobResult<()> {
        match self {
            Store::Nats(s) => s.create_container(name).await,
            Store::Fs(s) => s.create_container(name).await,
        }
    }

    /// Refuses names this backend cannot store, before any data moves.
    pub(crate) fn check_names(&self, container: &str, object: &str) -> BlobResult<()> {
        match self {
            Store::Nats(_) => super::nats::check_names(container, object),
            Store::Fs(_) => super::fs::check_names(container, object),
        }
    }

    /// Whether the container exists.
    pub(crate) async fn container_exists(&self, name: &str) -> BlobResult<bool> {
        match self {
            Store::Nats(s) => s.container_exists(name).await,
            Store::Fs(s) => s.container_exists(name).await,
        }
    }

    /// An error naming the container unless it exists.
    pub(crate) async fn require_container(&self, name: &str) -> BlobResult<()> {
        if self.container_exists(name).await? {
            Ok(())
        } else {
            Err(format!(
                "container `{name}` does not exist: create it with create-container first"
            ))
        }
    }

    /// Deletes a container and everything in it.
    pub(crate) async fn delete_container(&self, name: &str) -> BlobResult<()> {
        match self {
            Store::Nats(s) => s.delete_container(name).await,
            Store::Fs(s) => s.delete_container(name).await,
        }
    }

    /// The container's creation time (seconds since the Unix epoch).
    pub(crate) async fn container_created_at(&self, name: &str) -> BlobResult<u64> {
        match self {
            Store::Nats(s) => s.container_created_at(name).await,
            Store::Fs(s) => s.container_created_at(name).await,
        }
    }

    /// Bytes `start..=end` of an object (clamped to its size), and how many that is.
    pub(crate) async fn read(
        &self,
        container: &str,
        object: &str,
        start: u64,
        end: u64,
    ) -> BlobResult<(Reader, u64)> {
        if end < start {
            return Err(format!(
                "get-data on `{object}`: end ({end}) is before start ({start}); \
                 both offsets are inclusive"
            ));
        }
        match self {
            Store::Nats(s) => s.read(container, object, start, end).await,
            Store::Fs(s) => s.read(container, object, start, end).await,
        }
    }

    /// Stores everything `data` yields as `object` (replacing it), once `data` ends cleanly.
    pub(crate) async fn write(
        &self,
        container: &str,
        object: &str,
        data: &mut (dyn AsyncRead + Send + Unpin),
    ) -> BlobResult<u64> {
        match self {
            Store::Nats(s) => s.write(container, object, data).await,
            Store::Fs(s) => s.write(container, object, data).await,
        }
    }

    /// Every object name in the container, sorted.
    pub(crate) async fn list(&self, container: &str) -> BlobResult<Vec<String>> {
        match self {
            Store::Nats(s) => s.list(container).await,
            Store::Fs(s) => s.list(container).await,
        }
    }

    /// Deletes an object; no error when it did not exist.
    pub(crate) async fn delete_object(&self, container: &str, object: &str) -> BlobResult<()> {
        match self {
            Store::Nats(s) => s.delete_object(container, object).await,
            Store::Fs(s) => s.delete_object(container, object).await,
        }
    }

    /// The object's size and creation time, `None` when it does not exist.
    pub(crate) async fn object_meta(
        &self,
        container: &str,
        object: &str,
    ) -> BlobResult<Option<ObjectMeta>> {
        match self {
            Store::Nats(s) => s.object_meta(container, object).await,
            Store::Fs(s) => s.object_meta(container, object).await,
        }
    }

    /// Removes every object of the container, keeping the container.
    pub(crate) async fn clear(&self, container: &str) -> BlobResult<()> {
        match self {
            Store::Nats(s) => {
                for name in s.list(container).await? {
                    s.delete_object(container, &name).await?;
                }
                Ok(())
            }
            Store::Fs(s) => s.clear(container).await,
        }
    }

    /// Copies `src` to `dest` (replacing it); the destination container must exist.
    pub(crate) async fn copy(&self, src: (&str, &str), dest: (&str, &str)) -> BlobResult<()> {
        self.require_container(dest.0).await?;
        if src == dest {
            return match self.object_meta(src.0, src.1).await? {
                Some(_) => Ok(()),
                None => Err(missing_object(src.0, src.1)),
            };
        }
        match self {
            Store::Fs(s) => s.copy(src, dest).await,
            Store::Nats(_) => {
                let (mut reader, _) = self.read(src.0, src.1, 0, u64::MAX).await?;
                self.write(dest.0, dest.1, &mut reader).await.map(|_| ())
            }
        }
    }

    /// Moves `src` to `dest` (replacing it); the destination container must exist.
    pub(crate) async fn rename(&self, src: (&str, &str), dest: (&str, &str)) -> BlobResult<()> {
        self.require_container(dest.0).await?;
        if src == dest {
            return match self.object_meta(src.0, src.1).await? {
                Some(_) => Ok(()),
                None => Err(missing_object(src.0, src.1)),
            };
        }
        match self {
            Store::Fs(s) => s.rename(src, dest).await,
            Store::Nats(_) => {
                self.copy(src, dest).await?;
                self.delete_object(src.0, src.1).await
            }
        }
    }
}

/// The error for an object that is not there.
pub(crate) fn missing_object(container: &str, object: &str) -> String {
    format!("object `{object}` does not exist in container `{container}`")
}

/// The number of bytes `start..=end` covers in an object of `size` bytes.
pub(crate) fn range_len(size: u64, start: u64, end: u64) -> u64 {
    if start >= size {
        return 0;
    }
    end.min(size - 1) - start + 1
}

/// Seconds since the Unix epoch of a file time (0 when unknown).
pub(crate) fn unix_seconds(time: std::io::Result<std::time::SystemTime>) -> u64 {
    time.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_clamped() {
        assert_eq!(range_len(10, 0, 9), 10);
        assert_eq!(range_len(10, 0, 10), 10);
        assert_eq!(range_len(10, 0, u64::MAX), 10);
        assert_eq!(range_len(10, 2, 4), 3);
        assert_eq!(range_len(10, 10, 20), 0);
        assert_eq!(range_len(0, 0, 0), 0);
    }

    #[test]
    fn backend_choice() {
        let s = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(choose_kind(&s(&[]), None), Ok(BackendKind::Nats));
        assert_eq!(
            choose_kind(&s(&[("root", "/x")]), None),
            Ok(BackendKind::Fs)
        );
        assert_eq!(
            choose_kind(&s(&[]), Some(BackendKind::Fs)),
            Ok(BackendKind::Fs)
        );
        assert_eq!(
            choose_kind(&s(&[("backend", "nats"), ("root", "/x")]), None),
            Ok(BackendKind::Nats)
        );
        assert!(choose_kind(&s(&[("backend", "s3")]), None).is_err());
        assert_eq!(
            kind_from_image_ref("ghcr.io/wasmcloud/blobstore-fs:0.11"),
            Some(BackendKind::Fs)
        );
    }
}
