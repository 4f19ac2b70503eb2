//! The filesystem backend (wasmCloud's `blobstore-fs`): each container is a directory under a
//! root directory, each object a file in it (object names with `/` are files in
//! subdirectories).
//!
//! Nothing a guest names can leave the root: container names are one path segment, object
//! names are relative paths whose segments are never empty, `.` or `..`; backslashes, NUL and
//! absolute paths are refused; every existing path component below the root is checked with
//! `lstat` and a symbolic link anywhere is refused (the root itself may be a link: it is
//! resolved once, when the store opens). Uploads go to a temporary file in the container that
//! is renamed over the object only when the data ended cleanly, so readers never see a partial
//! object.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::backend::{missing_object, range_len, unix_seconds, BlobResult, ObjectMeta, Reader};

/// Prefix of in-progress uploads; object names cannot use it and listings skip it.
const UPLOAD_PREFIX: &str = ".trellis-upload-";

/// Longest name of one path segment.
const MAX_SEGMENT: usize = 255;

/// Longest object name.
const MAX_OBJECT_NAME: usize = 1024;

/// Checks one path segment (a container name, a component id, a part of an object name).
pub(crate) fn check_segment(what: &str, name: &str) -> BlobResult<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` would leave the directory")
    } else if name.contains('/') || name.contains('\\') {
        Some("it contains a path separator")
    } else if name.contains('\0') {
        Some("it contains a NUL character")
    } else if name.len() > MAX_SEGMENT {
        Some("it is longer than 255 bytes")
    } else if name.starts_with(UPLOAD_PREFIX) {
        Some("names starting with `.trellis-upload-` are reserved for uploads in progress")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!(
            "{what} `{}` is refused by the blobstore-fs backend: {why}; names must stay inside \
             the store's root directory",
            name.escape_debug()
        )),
        None => Ok(()),
    }
}

/// Checks an object name and splits it into its segments.
fn object_segments(name: &str) -> BlobResult<Vec<&str>> {
    if name.starts_with('/') {
        return Err(format!(
            "object name `{}` is refused by the blobstore-fs backend: it is an absolute path; \
             names must stay inside the container",
            name.escape_debug()
        ));
    }
    if name.len() > MAX_OBJECT_NAME {
        return Err(format!(
            "object name `{}...` is refused by the blobstore-fs backend: it is longer than \
             {MAX_OBJECT_NAME} bytes",
            name.chars().take(40).collect::<String>().escape_debug()
        ));
    }
    let segments: Vec<&str> = name.split('/').collect();
    for segment in &segments {
        check_segment("object name segment", segment)
            .map_err(|e| format!("object name `{}`: {e}", name.escape_debug()))?;
    }
    Ok(segments)
}

/// Refuses a container or object name that could leave the root.
pub(crate) fn check_names(container: &str, object: &str) -> BlobResult<()> {
    check_segment("container name", container)?;
    object_segments(object).map(|_| ())
}

/// Refuses `path` if it is a symbolic link; `Ok(None)` when it does not exist.
async fn lstat_no_link(path: &Path) -> BlobResult<Option<std::fs::Metadata>> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "`{}` is a symbolic link; the blobstore-fs backend never follows links, so nothing \
             can point outside its root directory",
            path.display()
        )),
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot inspect `{}`: {e}", path.display())),
    }
}

/// A distinct name for each upload of this process.
fn upload_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{UPLOAD_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Containers as directories under a root.
#[derive(Clone)]
pub(crate) struct FsStore {
    root: Arc<PathBuf>,
}

impl FsStore {
    /// Opens (creating it if needed) the root directory.
    pub(crate) async fn open(root: PathBuf) -> BlobResult<Self> {
        if !root.is_absolute() {
            return Err(format!(
                "the blobstore-fs root `{}` must be an absolute path (set `root` in the link's \
                 target config)",
                root.display()
            ));
        }
        tokio::fs::create_dir_all(&root).await.map_err(|e| {
            format!(
                "cannot create the blobstore-fs root directory `{}`: {e}; set `root` to a \
                 directory the host can write",
                root.display()
            )
        })?;
        let root = tokio::fs::canonicalize(&root).await.map_err(|e| {
            format!(
                "cannot resolve the blobstore-fs root `{}`: {e}",
                root.display()
            )
        })?;
        Ok(Self {
            root: Arc::new(root),
        })
    }

    /// The resolved root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The container's directory (checked: one segment, not a link).
    async fn container_dir(&self, name: &str) -> BlobResult<(PathBuf, Option<std::fs::Metadata>)> {
        check_segment("container name", name)?;
        let dir = self.root.join(name);
        let meta = lstat_no_link(&dir).await?;
        Ok((dir, meta))
    }

    /// The container's directory, which must exist.
    async fn existing_container(&self, name: &str) -> BlobResult<PathBuf> {
        match self.container_dir(name).await? {
            (dir, Some(meta)) if meta.is_dir() => Ok(dir),
            _ => Err(format!(
                "container `{name}` does not exist: create it with create-container first"
            )),
        }
    }

    /// The object's path, every existing component checked; `create_parents` makes the
    /// directories of a nested name.
    async fn object_path(
        &self,
        container: &str,
        object: &str,
        create_parents: bool,
    ) -> BlobResult<PathBuf> {
        let segments = object_segments(object)?;
        let mut path = self.existing_container(container).await?;
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            path.push(segment);
            let meta = lstat_no_link(&path).await?;
            if i < last {
                match meta {
                    Some(meta) if meta.is_dir() => {}
                    Some(_) => {
                        return Err(format!(
                            "object name `{object}`: `{segment}` is an object, not a directory"
                        ))
                    }
                    None if create_parents => match tokio::fs::create_dir(&path).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            lstat_no_link(&path).await?;
                        }
                        Err(e) => return Err(format!("cannot create `{}`: {e}", path.display())),
                    },
                    None => return Err(missing_object(container, object)),
                }
            }
        }
        // Belt and braces: whatever exists of the path resolves inside the root.
        let existing = if tokio::fs::symlink_metadata(&path).await.is_ok() {
            Some(path.clone())
        } else {
            path.parent().map(Path::to_path_buf)
        };
        if let Some(existing) = existing {
            if let Ok(resolved) = tokio::fs::canonicalize(&existing).await {
                if !resolved.starts_with(self.root.as_path()) {
                    return Err(format!(
                        "object name `{object}` resolves outside the blobstore-fs root; refused"
                    ));
                }
            }
        }
        Ok(path)
    }

    pub(crate) async fn create_container(&self, name: &str) -> BlobResult<()> {
        let (dir, meta) = self.container_dir(name).await?;
        match meta {
            Some(meta) if meta.is_dir() => Ok(()),
            Some(_) => Err(format!(
                "cannot create container `{name}`: a file of that name is in the root directory"
            )),
            None => match tokio::fs::create_dir(&dir).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(format!(
                    "cannot create container `{name}` at `{}`: {e}",
                    dir.display()
                )),
            },
        }
    }

    pub(crate) async fn container_exists(&self, name: &str) -> BlobResult<bool> {
        Ok(matches!(self.container_dir(name).await?, (_, Some(meta)) if meta.is_dir()))
    }

    pub(crate) async fn delete_container(&self, name: &str) -> BlobResult<()> {
        match self.container_dir(name).await? {
            (_, None) => Ok(()),
            // remove_dir_all removes links themselves, never what they point to.
            (dir, Some(_)) => tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(|e| format!("cannot delete container `{name}`: {e}")),
        }
    }

    pub(crate) async fn container_created_at(&self, name: &str) -> BlobResult<u64> {
        let dir = self.existing_container(name).await?;
        let meta = tokio::fs::metadata(&dir)
            .await
            .map_err(|e| format!("cannot read container `{name}`: {e}"))?;
        Ok(unix_seconds(meta.created().or_else(|_| meta.modified())))
    }

    pub(crate) async fn read(
        &self,
        container: &str,
        object: &str,
        start: u64,
        end: u64,
    ) -> BlobResult<(Reader, u64)> {
        let path = self.object_path(container, object, false).await?;
        match lstat_no_link(&path).await? {
            Some(meta) if meta.is_file() => {}
            _ => return Err(missing_object(container, object)),
        }
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("cannot open object `{object}` in `{container}`: {e}"))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| format!("cannot read object `{object}` in `{container}`: {e}"))?
            .len();
        let len = range_len(size, start, end);
        if len == 0 {
            return Ok((Box::new(tokio::io::empty()), 0));
        }
        file.seek(io::SeekFrom::Start(start))
            .await
            .map_err(|e| format!("cannot seek in object `{object}`: {e}"))?;
        Ok((Box::new(file.take(len)), len))
    }

    pub(crate) async fn write(
        &self,
        container: &str,
        object: &str,
        data: &mut (dyn AsyncRead + Send + Unpin),
    ) -> BlobResult<u64> {
        let path = self.object_path(container, object, true).await?;
        if let Some(meta) = lstat_no_link(&path).await? {
            if meta.is_dir() {
                return Err(format!(
                    "cannot write object `{object}`: a directory of objects has that name"
                ));
            }
        }
        let dir = self.existing_container(container).await?;
        let temp = dir.join(upload_name());
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .await
                .map_err(|e| format!("cannot create `{}`: {e}", temp.display()))?;
            let written = tokio::io::copy(data, &mut file)
                .await
                .map_err(|e| format!("object `{object}` was not stored: {e}"))?;
            file.flush()
                .await
                .map_err(|e| format!("object `{object}` was not stored: {e}"))?;
            drop(file);
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(|e| format!("object `{object}` was not stored: {e}"))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    pub(crate) async fn list(&self, container: &str) -> BlobResult<Vec<String>> {
        let dir = self.existing_container(container).await?;
        let mut names = Vec::new();
        let mut pending = vec![(dir, String::new())];
        while let Some((dir, prefix)) = pending.pop() {
            let mut entries = tokio::fs::read_dir(&dir)
                .await
                .map_err(|e| format!("cannot list container `{container}`: {e}"))?;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| format!("cannot list container `{container}`: {e}"))?
            {
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // not UTF-8: not a name a component can have written
                };
                if name.starts_with(UPLOAD_PREFIX) {
                    continue;
                }
                let Ok(kind) = entry.file_type().await else {
                    continue;
                };
                let full = format!("{prefix}{name}");
                if kind.is_dir() {
                    pending.push((entry.path(), format!("{full}/")));
                } else if kind.is_file() {
                    names.push(full);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    pub(crate) async fn delete_object(&self, container: &str, object: &str) -> BlobResult<()> {
        let path = match self.object_path(container, object, false).await {
            Ok(path) => path,
            Err(e) if e == missing_object(container, object) => return Ok(()),
            Err(e) => return Err(e),
        };
        match lstat_no_link(&path).await? {
            Some(meta) if meta.is_file() => tokio::fs::remove_file(&path)
                .await
                .map_err(|e| format!("cannot delete object `{object}`: {e}")),
            Some(_) => Err(format!(
                "cannot delete `{object}`: it is a directory of objects, not an object"
            )),
            None => Ok(()),
        }
    }

    pub(crate) async fn object_meta(
        &self,
        container: &str,
        object: &str,
    ) -> BlobResult<Option<ObjectMeta>> {
        let path = match self.object_path(container, object, false).await {
            Ok(path) => path,
            Err(e) if e == missing_object(container, object) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match lstat_no_link(&path).await? {
            Some(meta) if meta.is_file() => Some(ObjectMeta {
                created_at: unix_seconds(meta.created().or_else(|_| meta.modified())),
                size: meta.len(),
            }),
            _ => None,
        })
    }

    pub(crate) async fn clear(&self, container: &str) -> BlobResult<()> {
        let dir = self.existing_container(container).await?;
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| format!("cannot clear container `{container}`: {e}"))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| format!("cannot clear container `{container}`: {e}"))?
        {
            let path = entry.path();
            let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
            let removed = if is_dir {
                tokio::fs::remove_dir_all(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            };
            removed.map_err(|e| format!("cannot clear container `{container}`: {e}"))?;
        }
        Ok(())
    }

    pub(crate) async fn copy(&self, src: (&str, &str), dest: (&str, &str)) -> BlobResult<()> {
        let (mut reader, _) = self.read(src.0, src.1, 0, u64::MAX).await?;
        self.write(dest.0, dest.1, &mut reader).await.map(|_| ())
    }

    pub(crate) async fn rename(&self, src: (&str, &str), dest: (&str, &str)) -> BlobResult<()> {
        let from = self.object_path(src.0, src.1, false).await?;
        match lstat_no_link(&from).await? {
            Some(meta) if meta.is_file() => {}
            _ => return Err(missing_object(src.0, src.1)),
        }
        let to = self.object_path(dest.0, dest.1, true).await?;
        if lstat_no_link(&to).await?.is_some_and(|m| m.is_dir()) {
            return Err(format!(
                "cannot move onto `{}`: a directory of objects has that name",
                dest.1
            ));
        }
        tokio::fs::rename(&from, &to)
            .await
            .map_err(|e| format!("cannot move `{}` to `{}`: {e}", src.1, dest.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in ["..", ".", "", "a/b", "a\\b", "a\0b", ".trellis-upload-1"] {
            assert!(check_segment("container name", bad).is_err(), "{bad:?}");
        }
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a//b",
            "a/./b",
            "x\0",
            "a\\..\\b",
            "a/",
        ] {
            assert!(object_segments(bad).is_err(), "{bad:?}");
        }
        assert_eq!(object_segments("a/b.txt").ok(), Some(vec!["a", "b.txt"]));
        assert!(object_segments("..data").is_ok());
    }

    #[tokio::test]
    async fn round_trip_and_no_escape_through_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(dir.path().join("root")).await.expect("open");
        store.create_container("c").await.expect("create");
        let mut data: &[u8] = b"0123456789";
        assert_eq!(store.write("c", "d/x.txt", &mut data).await, Ok(10));
        assert_eq!(store.list("c").await, Ok(vec!["d/x.txt".to_string()]));
        let (mut reader, len) = store.read("c", "d/x.txt", 2, 4).await.expect("read");
        let mut out = String::new();
        reader.read_to_string(&mut out).await.expect("read");
        assert_eq!((len, out.as_str()), (3, "234"));

        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(&outside, store.root().join("c").join("link")).expect("link");
        std::os::unix::fs::symlink(&outside, store.root().join("evil")).expect("link");
        let error = store
            .read("c", "link/secret", 0, 10)
            .await
            .err()
            .expect("refused");
        assert!(error.contains("symbolic link"), "{error}");
        let error = store.list("evil").await.expect_err("refused");
        assert!(error.contains("symbolic link"), "{error}");
        let mut data: &[u8] = b"x";
        assert!(store.write("c", "link/new", &mut data).await.is_err());
        assert!(!outside.join("new").exists());
        assert!(store
            .list("c")
            .await
            .expect("list")
            .iter()
            .all(|n| !n.starts_with("link")));
    }
}
