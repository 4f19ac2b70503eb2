//! Loading component bytes from an image reference.
//!
//! [`ComponentLoader`] is the seam: the runtime only asks a loader for the bytes of an
//! `image_ref`. [`DefaultLoader`] serves local files (plain paths and `file://` refs, only when
//! file loading is allowed) and rejects OCI references with a clear error;
//! [`crate::oci::OciLoader`] pulls OCI references and delegates file refs to [`DefaultLoader`]
//! (the runtime uses it when an OCI config is set, as `trellis host` does); any other loader is
//! passed in [`super::RuntimeConfig::loader`].
//!
//! Files are read with [`read_component_file`]: only regular files (never a device such as
//! `/dev/zero`, a FIFO or a directory), and never more than the size cap plus one byte, so a
//! hostile reference cannot make the host read without bound.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures::future::BoxFuture;

/// The default cap on a component file: 128 MiB, far above any real component (tens of MiB at
/// most) and far below what would hurt a host.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 128 * 1024 * 1024;

/// How the cap is raised, for error messages.
const RAISE_CAP: &str =
    "raise the cap with `trellis host --max-component-size-mb` (env TRELLIS_MAX_COMPONENT_SIZE_MB)";

/// Reads a component (or any code) file of at most `max_bytes`: refuses anything that is not a
/// regular file before reading it, and never reads more than `max_bytes + 1` bytes (a file
/// growing while it is read is refused too). Blocking: call it from `spawn_blocking`.
pub fn read_component_file(path: &Path, max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    // Look before opening: opening a FIFO waits for a writer, and opening a device can have
    // side effects.
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read component file {}", path.display()))?;
    check_regular(path, &metadata, max_bytes)?;
    // O_NONBLOCK: if the path was swapped for a FIFO since the check, opening does not wait.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("cannot open component file {}", path.display()))?
    };
    // Check what was actually opened.
    let metadata = file
        .metadata()
        .with_context(|| format!("cannot inspect component file {}", path.display()))?;
    check_regular(path, &metadata, max_bytes)?;
    let expected = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
    let mut bytes = Vec::with_capacity(expected);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read component file {}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        bail!(
            "component file {} grew past the {max_bytes}-byte cap while it was read; {RAISE_CAP}",
            path.display()
        );
    }
    Ok(bytes)
}

fn check_regular(path: &Path, metadata: &std::fs::Metadata, max_bytes: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        bail!(
            "{} is {what}; a component must be a regular .wasm file: point the image ref at one",
            path.display()
        );
    }
    if metadata.len() > max_bytes {
        bail!(
            "component file {} is {} bytes, over the {max_bytes}-byte cap on component files; {RAISE_CAP}",
            path.display(),
            metadata.len()
        );
    }
    Ok(())
}

/// Fetches the bytes of a component from its image reference.
pub trait ComponentLoader: Send + Sync {
    /// Returns the raw component (.wasm) bytes for `image_ref`, or an error meant for the
    /// operator (say what was wrong with the reference and how to fix it).
    fn load<'a>(&'a self, image_ref: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<u8>>>;
}

/// What kind of reference an image ref is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRefKind {
    /// A local file (from a `file://` URL or a plain path).
    File(PathBuf),
    /// An OCI registry reference such as `ghcr.io/org/component:0.1.0` or `oci://...`.
    Oci(String),
    /// A URL with a scheme no loader knows.
    UnsupportedScheme(String),
}

/// Classifies an image reference.
///
/// `file://...` is a file; other `scheme://` URLs are OCI (`oci://`) or unsupported; a string
/// starting with `/`, `./`, `../`, `~/` or ending in `.wasm` is a plain path; anything else
/// (e.g. `ghcr.io/org/name:tag`, `localhost:5000/name:tag`) is an OCI reference.
pub fn classify_image_ref(image_ref: &str) -> ImageRefKind {
    let trimmed = image_ref.trim();
    if let Some(path) = trimmed.strip_prefix("file://") {
        return ImageRefKind::File(PathBuf::from(path));
    }
    if let Some((scheme, _)) = trimmed.split_once("://") {
        return if scheme.eq_ignore_ascii_case("oci") {
            ImageRefKind::Oci(trimmed.to_string())
        } else {
            ImageRefKind::UnsupportedScheme(scheme.to_string())
        };
    }
    let looks_like_path = trimmed.starts_with('/')
        || trimmed.starts_with("./")
        || trimmed.starts_with("../")
        || trimmed.ends_with(".wasm");
    if let Some(rest) = trimmed.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return ImageRefKind::File(PathBuf::from(home).join(rest));
        }
    }
    if looks_like_path {
        ImageRefKind::File(PathBuf::from(trimmed))
    } else {
        ImageRefKind::Oci(trimmed.to_string())
    }
}

/// Loads local files (when allowed) and explains what is not supported.
#[derive(Debug, Clone)]
pub struct DefaultLoader {
    /// Whether `file://` refs and plain paths may be loaded (the host's `--allow-file-load`).
    pub allow_file_load: bool,
    /// The largest component file loaded, in bytes (see [`read_component_file`]).
    pub max_component_bytes: u64,
}

impl Default for DefaultLoader {
    fn default() -> Self {
        Self {
            allow_file_load: false,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

impl DefaultLoader {
    /// Reads the file behind `image_ref` (see [`classify_image_ref`]).
    pub async fn load_ref(&self, image_ref: &str) -> anyhow::Result<Vec<u8>> {
        match classify_image_ref(image_ref) {
            ImageRefKind::File(path) => {
                if !self.allow_file_load {
                    bail!(
                        "loading components from files is disabled (image ref {image_ref:?}): \
                         start the host with --allow-file-load"
                    );
                }
                let max_bytes = self.max_component_bytes;
                tokio::task::spawn_blocking(move || read_component_file(&path, max_bytes))
                    .await
                    .context("the file-reading task failed")?
            }
            ImageRefKind::Oci(reference) => bail!(
                "this runtime has no OCI settings, so it cannot pull {reference:?}: run it through `trellis host` (which pulls from registries) or set RuntimeConfig::oci, or use a file:// path"
            ),
            ImageRefKind::UnsupportedScheme(scheme) => bail!(
                "unsupported image reference scheme {scheme:?} in {image_ref:?}: use a file:// path"
            ),
        }
    }
}

impl ComponentLoader for DefaultLoader {
    fn load<'a>(&'a self, image_ref: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<u8>>> {
        Box::pin(self.load_ref(image_ref))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        std::fs::write(&path, b"\0asm\x0d\0\x01\0").unwrap();
        assert_eq!(read_component_file(&path, 8).unwrap().len(), 8);
    }

    #[test]
    fn refuses_files_over_the_cap_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.wasm");
        // Sparse: no disk space used, nothing read.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(2 * 1024 * 1024)
            .unwrap();
        let e = format!("{:#}", read_component_file(&path, 1024 * 1024).unwrap_err());
        assert!(
            e.contains("2097152 bytes") && e.contains("1048576-byte cap"),
            "{e}"
        );
        assert!(e.contains("--max-component-size-mb"), "{e}");
    }

    #[test]
    fn refuses_devices_fifos_and_directories() {
        let e = format!(
            "{:#}",
            read_component_file(Path::new("/dev/zero"), 1024).unwrap_err()
        );
        assert!(e.contains("/dev/zero is a device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", read_component_file(dir.path(), 1024).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        let fifo = dir.path().join("pipe.wasm");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Would block forever if the loader opened it without looking.
        let e = format!("{:#}", read_component_file(&fifo, 1024).unwrap_err());
        assert!(e.contains("is a FIFO"), "{e}");
    }

    #[tokio::test]
    async fn the_default_loader_applies_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let loader = DefaultLoader {
            allow_file_load: true,
            max_component_bytes: 99,
        };
        let e = format!(
            "{:#}",
            loader
                .load_ref(&format!("file://{}", path.display()))
                .await
                .unwrap_err()
        );
        assert!(e.contains("99-byte cap"), "{e}");
        let e = format!(
            "{:#}",
            loader.load_ref("file:///dev/zero").await.unwrap_err()
        );
        assert!(e.contains("device"), "{e}");
    }
}
