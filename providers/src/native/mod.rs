//! Host-native capabilities: interfaces the host implements itself, in-process, for every
//! component, with no provider to start: `wasi:logging/logging` (guest log lines become
//! `tracing` events tagged with the component id) and `wasi:config` (`store` and `runtime`,
//! served from the component's merged named configs).
//!
//! This module also holds [`HostBinding`], the late-bound reference to the [`Host`] that the
//! capabilities which need the lattice (key-value, messaging) use, and [`capabilities`], the
//! list of every capability of this crate to hand to the runtime.
//!
//! # Wiring
//!
//! The runtime is built before the [`Host`] exists, so capabilities are given a
//! [`HostBinding`] that is bound once the host has started:
//!
//! ```ignore
//! let binding = trellis_providers::native::HostBinding::new();
//! let runtime_capabilities = trellis_providers::native::capabilities(&binding);
//! // ... RuntimeConfig { capabilities: runtime_capabilities, .. } inside HostHandle::start ...
//! let handle = HostHandle::start(config).await?;
//! binding.bind(handle.host());
//! ```

mod config;
mod logging;

use std::sync::{Arc, OnceLock, Weak};

use trellis_host::runtime::Capability;
use trellis_host::Host;

pub use config::ConfigCapability;
pub use logging::LoggingCapability;

/// A reference to the running [`Host`], set once after the host has started.
///
/// Capabilities are created before the host (the runtime is part of the host), so they hold
/// this cell and look the host up on every call. It holds a weak reference: the host owns
/// the runtime, which owns the capabilities, and a strong reference would keep the host alive
/// forever.
#[derive(Clone, Default)]
pub struct HostBinding {
    cell: Arc<OnceLock<Weak<Host>>>,
}

impl std::fmt::Debug for HostBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBinding")
            .field("bound", &self.cell.get().is_some())
            .finish()
    }
}

impl HostBinding {
    /// An unbound binding.
    pub fn new() -> Self {
        Self::default()
    }

    /// A binding already bound to `host` (for providers started with an `Arc<Host>`).
    pub fn bound(host: &Arc<Host>) -> Self {
        let binding = Self::new();
        binding.bind(host);
        binding
    }

    /// Binds the host; later calls are ignored (a binding belongs to one host).
    pub fn bind(&self, host: &Arc<Host>) {
        if self.cell.set(Arc::downgrade(host)).is_err() {
            tracing::debug!("host binding already set; ignoring a second bind");
        }
    }

    /// The host, or an error saying why it is not available.
    pub fn host(&self) -> anyhow::Result<Arc<Host>> {
        self.cell
            .get()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the host is still starting: lattice capabilities are not bound to it yet"
                )
            })?
            .upgrade()
            .ok_or_else(|| anyhow::anyhow!("the host has stopped"))
    }
}

/// Every capability this crate implements, ready for `RuntimeConfig::capabilities`:
/// `wasi:logging`, `wasi:config`, `wasi:keyvalue` (store, atomics, batch at 0.2.0-draft) and
/// `wasmcloud:messaging/consumer` (0.2.0).
pub fn capabilities(binding: &HostBinding) -> Vec<Arc<dyn Capability>> {
    vec![
        Arc::new(LoggingCapability),
        Arc::new(ConfigCapability),
        Arc::new(crate::keyvalue::KeyValueCapability::new(binding.clone())),
        Arc::new(crate::messaging::MessagingCapability::new(binding.clone())),
    ]
}
