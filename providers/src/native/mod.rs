//! Host-native capabilities: interfaces the host implements itself, in-process, for every
//! component, with no provider to start: `wasi:logging/logging` (guest log lines become
//! `tracing` events tagged with the component id) and `wasi:config` (`store` and `runtime`,
//! served from the component's merged named configs).
//!
//! [`capabilities`] lists every capability of this crate, to hand to the host.
//!
//! # Wiring
//!
//! The runtime is built before the host exists, so the capabilities that need the lattice
//! (key-value, messaging) hold the config's [`HostSlot`], which the host fills as it starts:
//!
//! ```ignore
//! let mut config = HostConfig { /* ... */ ..Default::default() };
//! config.capabilities = trellis_providers::native::capabilities(&config.host_slot);
//! config.provider_launcher = Some(Arc::new(trellis_providers::Launcher::new()));
//! let handle = HostHandle::start(config).await?;
//! ```

mod config;
mod logging;

use std::sync::Arc;

use trellis_host::runtime::Capability;
use trellis_host::{Host, HostSlot};

pub use config::ConfigCapability;
pub use logging::LoggingCapability;

/// Every capability this crate implements, ready for `RuntimeConfig::capabilities`:
/// `wasi:logging`, `wasi:config`, `wasi:keyvalue` (store, atomics, batch at 0.2.0-draft),
/// `wasmcloud:messaging/consumer` (0.2.0), outgoing `wasi:http` through an http-client link and
/// `wasmcloud:secrets` (0.1.0-draft; no secrets granted, so every `get` is `not-found`).
pub fn capabilities(slot: &HostSlot) -> Vec<Arc<dyn Capability>> {
    vec![
        Arc::new(LoggingCapability),
        Arc::new(ConfigCapability),
        Arc::new(crate::keyvalue::KeyValueCapability::new(slot.clone())),
        Arc::new(crate::messaging::MessagingCapability::new(slot.clone())),
        Arc::new(crate::blobstore::BlobstoreCapability::new(slot.clone())),
        Arc::new(crate::http_client::HttpClientCapability::new(slot.clone())),
        Arc::new(crate::secrets::SecretsCapability::for_host(
            slot,
            Arc::new(crate::secrets::NoSecrets),
        )),
    ]
}

/// The host in `slot`, or an error saying why there is none (still starting, or stopped).
pub(crate) fn running_host(slot: &HostSlot) -> anyhow::Result<Arc<Host>> {
    slot.get().ok_or_else(|| {
        anyhow::anyhow!("the host is not running (still starting or already stopped)")
    })
}
