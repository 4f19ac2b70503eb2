//! Components from OCI registries: pull, push, a content-addressed cache, credentials and
//! mirrors. See `docs/distribution.md` for the operator's view.
//!
//! - [`OciLoader`] is the host's [`ComponentLoader`](crate::runtime::ComponentLoader) for OCI
//!   refs (`ghcr.io/org/app:1.2.0`, `registry:5000/team/api@sha256:...`, `oci://...`); it hands
//!   `file://` refs and plain paths to [`DefaultLoader`](crate::runtime::DefaultLoader).
//! - [`RegistryClient`] talks to one registry at a time (through the `oci-client` crate): it
//!   resolves manifests, downloads blobs under a size cap and verifies every digest, and pushes
//!   component artifacts in the layout wasmCloud and wash read.
//! - [`BlobCache`] keeps manifests and wasm layers by digest on disk, shared by every host of a
//!   machine, bounded in size with least-recently-used eviction; it remembers which digest each
//!   tag last resolved to, so a host whose registry is unreachable still starts its components.
//! - [`CredentialLookup`] finds credentials per registry: `TRELLIS_OCI_*` variables, then the
//!   Docker config file (`auths`). Credentials are never logged, never put in events, and never
//!   taken from command lines.
//! - [`artifact`] knows the media types and reads a component's imports, exports and claims.

pub mod artifact;
mod auth;
mod cache;
mod loader;
mod reference;
mod registry;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use auth::{
    put_registry_credentials, registry_env_suffix, CredentialLookup, CredentialSource, Credentials,
};
pub use cache::{
    default_oci_cache_dir, sha256_digest, BlobCache, TagRecord, DEFAULT_OCI_CACHE_MAX_BYTES,
};
pub use loader::OciLoader;
pub use reference::{check_floating_tag, normalize_registry, parse_mirror, parse_reference};
pub use registry::{
    ClientOptions, PullError, PullErrorKind, PulledArtifact, PushOutcome, RegistryClient,
    ResolvedManifest,
};

/// How a host pulls components from OCI registries (the `trellis host` flags of the same
/// names).
#[derive(Debug, Clone, Default)]
pub struct OciConfig {
    /// Accept `:latest` and untagged refs (`--allow-latest`); refused by default because what
    /// they name changes under a running lattice.
    pub allow_latest: bool,
    /// Registries (`host[:port]`) reached over plain HTTP (`--allowed-insecure`).
    pub allowed_insecure: Vec<String>,
    /// `(registry, mirror)` pairs (`--registry-mirror registry=mirror`): pulls from `registry`
    /// try `mirror` first and fall back to the origin.
    pub mirrors: Vec<(String, String)>,
    /// A PEM file of extra CA certificates trusted for registries (`--oci-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Where pulled artifacts are cached; `None` means `<compiled cache dir>/oci` when the
    /// host's `--cache-dir` is set, else [`default_oci_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// The cache's size bound in bytes; `None` means [`DEFAULT_OCI_CACHE_MAX_BYTES`].
    pub cache_max_bytes: Option<u64>,
    /// Where the Docker config file is read; `None` means `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

static PROCESS_CONFIG: OnceLock<OciConfig> = OnceLock::new();

/// Makes `config` the OCI settings of every [`crate::runtime::Runtime`] this process builds
/// without its own loader or [`crate::runtime::RuntimeConfig::oci`]. `trellis host` calls it
/// once before starting the host, which turns OCI pulls on. Returns `false` (and changes
/// nothing) if a config was already installed.
pub fn install_process_config(config: OciConfig) -> bool {
    PROCESS_CONFIG.set(config).is_ok()
}

/// The config installed with [`install_process_config`], if any.
pub fn process_config() -> Option<OciConfig> {
    PROCESS_CONFIG.get().cloned()
}
