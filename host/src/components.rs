//! The components a host runs, keyed by component id.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use trellis_protocol::ctl::ComponentDescription;

use crate::runtime::PreparedComponent;

/// One running component and what it was started with.
pub struct RunningComponent {
    /// The compiled, pre-instantiated code; each invocation gets a fresh instance from it.
    pub prepared: Arc<PreparedComponent>,
    /// Annotations from the scale command (the reconciler tags its work here).
    pub annotations: BTreeMap<String, String>,
    /// Named configs the component reads, in merge order.
    pub config_names: Vec<String>,
    /// The limits requested (`max_memory_mb`, `max_execution_time_ms`).
    pub limits: HashMap<String, String>,
    /// Bumped on each in-place update.
    pub revision: i32,
}

impl RunningComponent {
    /// The component as inventories describe it.
    pub fn describe(&self) -> ComponentDescription {
        ComponentDescription {
            id: self.prepared.id().to_string(),
            image_ref: self.prepared.image_ref().to_string(),
            digest: Some(format!("sha256:{}", self.prepared.digest())),
            name: None,
            annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
            revision: self.revision,
            max_instances: self.prepared.max_instances(),
            limits: Some(self.limits.clone()),
        }
    }
}

/// The host's running components. Lookups are lock-cheap: the invocation path reads it on
/// every call.
pub struct ComponentRegistry {
    running: RwLock<HashMap<String, Arc<RunningComponent>>>,
    /// Bumped on every insert or removal, for parts that follow the set of components.
    generation: tokio::sync::watch::Sender<u64>,
    /// One lock per component id, so scale and update commands for one id apply in order while
    /// different ids proceed in parallel.
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for ComponentRegistry {
    fn default() -> Self {
        Self {
            running: RwLock::default(),
            generation: tokio::sync::watch::channel(0).0,
            op_locks: Mutex::default(),
        }
    }
}

impl ComponentRegistry {
    /// A receiver that changes whenever a component starts, stops or is replaced; call
    /// [`ComponentRegistry::all`] after each change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The running component `id`, if any.
    pub fn get(&self, id: &str) -> Option<Arc<RunningComponent>> {
        self.read().get(id).cloned()
    }

    /// Adds or replaces component `id`.
    pub fn insert(&self, component: RunningComponent) -> Arc<RunningComponent> {
        let component = Arc::new(component);
        self.write()
            .insert(component.prepared.id().to_string(), component.clone());
        self.bump();
        component
    }

    /// Removes component `id`, returning it when it was running.
    pub fn remove(&self, id: &str) -> Option<Arc<RunningComponent>> {
        let removed = self.write().remove(id);
        if removed.is_some() {
            self.bump();
        }
        removed
    }

    /// Every running component, sorted by id.
    pub fn all(&self) -> Vec<Arc<RunningComponent>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.prepared.id().cmp(b.prepared.id()));
        all
    }

    /// Invocations running or queued across all components.
    pub fn in_flight(&self) -> usize {
        self.read().values().map(|c| c.prepared.in_flight()).sum()
    }

    /// The lock that orders lifecycle operations on component `id`.
    pub fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.op_locks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        locks.entry(id.to_string()).or_default().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<RunningComponent>>> {
        match self.running.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<RunningComponent>>> {
        match self.running.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}
