//! Loading component bytes from an image reference.
//!
//! [`ComponentLoader`] is the seam: the runtime only asks a loader for the bytes of an
//! `image_ref`. [`DefaultLoader`] serves local files (plain paths and `file://` refs, only when
//! file loading is allowed) and rejects OCI references with a clear error; an OCI loader can
//! later implement the trait (and delegate file refs to [`DefaultLoader`]) and be passed in
//! [`super::RuntimeConfig::loader`].

use std::path::PathBuf;

use anyhow::{bail, Context};
use futures::future::BoxFuture;

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
#[derive(Debug, Clone, Default)]
pub struct DefaultLoader {
    /// Whether `file://` refs and plain paths may be loaded (the host's `--allow-file-load`).
    pub allow_file_load: bool,
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
                tokio::fs::read(&path)
                    .await
                    .with_context(|| format!("reading component file {}", path.display()))
            }
            ImageRefKind::Oci(reference) => bail!(
                "OCI references are not supported yet: use a file:// path (got {reference:?})"
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
