//! The Trellis host: runs WebAssembly components on a NATS lattice.
//!
//! - [`runtime`]: wasmtime, the component runtime (instances, limits, compile cache, WASI).
//! - [`lattice`]: the lattice connection (control interface, events, heartbeats, shared state).
//! - [`components`] and [`providers`]: what this host runs.
//! - [`oci`]: components from OCI registries (pull, push, cache, credentials, mirrors).
//! - [`log_limit`]: rate-limited logging for events a peer can repeat at will.
//! - [`routing`]: component-to-component calls (imports forwarded to link targets, exports
//!   served on the lattice, co-located calls in-process).
//! - [`security`]: signed components (wascap claims) and what a host admits.
//! - [`host`]: the lifecycle tying them together.

pub mod components;
pub mod host;
pub mod identity;
pub mod invocation;
pub mod lattice;
/// Rate-limited logging (lives in `trellis-telemetry`, shared with the crates below the host).
pub use trellis_telemetry::log_limit;
pub mod oci;
pub mod providers;
pub mod routing;
pub mod runtime;
pub mod secrets;
pub mod security;

#[cfg(test)]
mod fuzz;

pub use host::{Host, HostConfig, HostHandle, HostSlot};

/// The host software version reported in inventories and events.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The repository's `components/` directory, for tests that build guests. Cargo sets
/// `CARGO_MANIFEST_DIR` when it runs a test, which wins over the directory this crate was
/// compiled in (a shared target dir can hold test binaries built from another checkout).
#[cfg(test)]
pub(crate) fn components_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../components")
}
