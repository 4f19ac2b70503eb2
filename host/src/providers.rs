//! The host's side of capability providers: a registry of the providers it runs and the seam
//! ([`ProviderLauncher`]) through which the `providers` crate starts them.
//!
//! The host does not know how an HTTP server or a key-value store works; it knows how to start,
//! stop and describe a provider, and to tell the lattice about it. Each provider is one unit
//! behind [`ProviderLauncher`], whether it runs in-process or as its own process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use trellis_protocol::ctl::ProviderDescription;

use crate::host::Host;
use crate::lattice::store::ConfigMap;

/// What a provider is started with.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// The provider id, unique in the lattice.
    pub id: String,
    /// The reference it was started from (`trellis+builtin://http-server`, a wasmCloud image).
    pub image_ref: String,
    /// Its named configs, merged left to right.
    pub config: ConfigMap,
    /// The names of those configs, in merge order (what starts it again from a snapshot).
    pub config_names: Vec<String>,
    /// Annotations from the start command.
    pub annotations: BTreeMap<String, String>,
}

/// A provider that is running; dropping it must not leave anything behind, but [`stop`] is the
/// clean way (drain, close listeners, stop the process).
///
/// [`stop`]: RunningProvider::stop
pub trait RunningProvider: Send + Sync {
    /// A readable name (`http-server`).
    fn name(&self) -> &str;
    /// Stops the provider cleanly.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Starts providers from their references. The `providers` crate implements it; the host is
/// given one at start-up.
pub trait ProviderLauncher: Send + Sync {
    /// Starts the provider described by `spec` on `host`. Errors say what was wrong with the
    /// reference or config.
    fn start(
        &self,
        host: Arc<Host>,
        spec: ProviderSpec,
    ) -> BoxFuture<'static, anyhow::Result<Box<dyn RunningProvider>>>;
}

struct Entry {
    description: ProviderDescription,
    spec: ProviderSpec,
    running: Box<dyn RunningProvider>,
}

/// The providers a host runs, keyed by provider id.
pub struct ProviderRegistry {
    running: Mutex<HashMap<String, Entry>>,
    /// Bumped on every insert or removal, for parts that follow the set of providers.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for ProviderRegistry {
    fn default() -> Self {
        Self {
            running: Mutex::default(),
            generation: tokio::sync::watch::channel(0).0,
        }
    }
}

impl ProviderRegistry {
    /// A receiver that changes whenever a provider starts or stops.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// What each running provider was started with, sorted by id.
    pub fn specs(&self) -> Vec<ProviderSpec> {
        let mut specs: Vec<_> = self.lock().values().map(|e| e.spec.clone()).collect();
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        specs
    }

    /// Records a started provider.
    pub fn insert(&self, spec: &ProviderSpec, running: Box<dyn RunningProvider>) {
        let description = ProviderDescription {
            id: spec.id.clone(),
            image_ref: Some(spec.image_ref.clone()),
            name: Some(running.name().to_string()),
            revision: 0,
            annotations: (!spec.annotations.is_empty()).then(|| spec.annotations.clone()),
        };
        self.lock().insert(
            spec.id.clone(),
            Entry {
                description,
                spec: spec.clone(),
                running,
            },
        );
        self.bump();
    }

    /// True when provider `id` runs here.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Removes provider `id`, returning what is needed to stop it.
    pub fn remove(&self, id: &str) -> Option<(ProviderDescription, Box<dyn RunningProvider>)> {
        let removed = self.lock().remove(id).map(|e| (e.description, e.running));
        if removed.is_some() {
            self.bump();
        }
        removed
    }

    /// Removes every provider (on host stop).
    pub fn drain(&self) -> Vec<(ProviderDescription, Box<dyn RunningProvider>)> {
        let drained: Vec<_> = self
            .lock()
            .drain()
            .map(|(_, e)| (e.description, e.running))
            .collect();
        if !drained.is_empty() {
            self.bump();
        }
        drained
    }

    /// Inventory descriptions, sorted by id.
    pub fn describe(&self) -> Vec<ProviderDescription> {
        let mut all: Vec<_> = self
            .lock()
            .values()
            .map(|e| e.description.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}
