//! The component runtime: wasmtime with the component model, one fresh instance per invocation.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::collections::HashMap;
//! use trellis_host::runtime::{ComponentLimits, ComponentSpec, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig { allow_file_load: true, ..Default::default() })?;
//! let component = runtime
//!     .prepare(ComponentSpec {
//!         id: "hello".into(),
//!         image_ref: "file:///path/to/http_hello.wasm".into(),
//!         max_instances: 4,
//!         limits: ComponentLimits::from_map(&HashMap::new())?,
//!         config: HashMap::new(),
//!     })
//!     .await?;
//! # use http_body_util::BodyExt;
//! let request = http::Request::get("http://localhost/").body(
//!     http_body_util::Empty::<bytes::Bytes>::new()
//!         .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} }),
//! )?;
//! let response = component.handle_http(request).await?;
//! component.set_max_instances(10); // scale
//! # Ok(()) }
//! ```
//!
//! # What it guarantees
//!
//! - **Isolation**: [`Runtime::prepare`] loads, compiles (or reads the disk cache) and
//!   pre-instantiates once; every invocation then gets a fresh instance from the pooling
//!   allocator. A trap, a deadline or running out of memory fails only that invocation
//!   ([`InvocationError`]).
//! - **Limits** ([`ComponentLimits`], from the `component_limits` map): `max_memory_mb`
//!   (default 64) caps the linear memory of one instance; `max_execution_time_ms` (default
//!   10 000) caps one invocation, enforced by epoch interruption (a ticker thread owned by the
//!   runtime, stopped when the last clone of the runtime and of its components is dropped),
//!   and also how long a request waits for a free instance; `max_queued_requests` bounds the
//!   wait queue (default 1000 per instance, at most 10 000).
//! - **Concurrency** (wasmCloud 1.x semantics): at most `max_instances` instances of a
//!   component run at once ([`PreparedComponent::set_max_instances`] changes it live). A
//!   request that finds none free waits for one, in arrival order, up to its
//!   `max_execution_time_ms` ([`InvocationError::NoFreeInstance`], HTTP 504, past that); it
//!   is refused at once ([`InvocationError::Busy`], HTTP 503 with `Retry-After`) only when
//!   the wait queue is at its bound. Instances are created outside any lock, so one stuck
//!   instance never delays the creation of the others. Refusals and failures are logged at
//!   most once a second per component, with how many there were.
//! - **Compiled-code cache**: keyed by the sha256 of the .wasm and the engine's compatibility
//!   fingerprint, written atomically, in [`RuntimeConfig::cache_dir`] (default
//!   [`default_cache_dir`]). A restart does not recompile.
//! - **WASI 0.2**: cli (guest stdout/stderr go to the host's logs, tagged with `component_id`),
//!   clocks, random, io; filesystem with only the directories the component's `mounts` config
//!   asks for and [`RuntimeConfig::mount_roots`] allows (read-only unless both say `rw`;
//!   see [`MOUNTS_KEY`]), empty environment, no sockets;
//!   `wasi:http` incoming handler, and outgoing HTTP only to the hosts in the component's
//!   `allowed_hosts` config (`host`, `host:port`, or `*`; others get `HTTP-request-denied`),
//!   unless a capability takes outgoing HTTP over with an [`OutgoingHttpHandler`] (the
//!   http-client provider: a link grants it, `allowed_hosts` still restricts it).
//! - **Linking**: a component importing an interface nobody provides fails to prepare with an
//!   error naming the import.
//!
//! # Extending it
//!
//! - **Loading**: [`ComponentLoader`] fetches bytes for an image ref. [`DefaultLoader`] serves
//!   `file://` refs and plain paths when [`RuntimeConfig::allow_file_load`] is set (regular
//!   files only, at most [`RuntimeConfig::max_component_bytes`]); OCI refs go through
//!   [`crate::oci::OciLoader`] when [`RuntimeConfig::oci`] (or the process-wide OCI config that
//!   `trellis host` installs) is set, and are refused otherwise; any other loader plugs in
//!   through [`RuntimeConfig::loader`].
//! - **Capabilities** (keyvalue, messaging, logging, config...): implement [`Capability`] and
//!   pass it in [`RuntimeConfig::capabilities`]. `add_to_linker` registers host functions on the
//!   shared `Linker<InstanceState>`; `new_instance_state` puts per-instance state in the
//!   store's [`Extensions`] type map, which host functions read back with
//!   [`InstanceState::extension_mut`]. No runtime file needs editing.

mod cache;
mod component;
mod concurrency;
mod engine;
mod guest_log;
mod http_body;
mod limits;
mod loader;
mod mounts;
mod outgoing;
mod state;
mod throttle;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use anyhow::Context;
use tokio::task::JoinSet;
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use cache::{default_cache_dir, CompileSource};
pub use component::{Invocation, InvocationError, PreparedComponent, RETRY_AFTER_SECS};
pub use http_body::HttpResponseBody;
pub use limits::{
    ComponentLimits, DEFAULT_MAX_EXECUTION_TIME_MS, DEFAULT_MAX_MEMORY_MB, DEFAULT_MAX_QUEUE_CAP,
    DEFAULT_QUEUED_PER_INSTANCE, MAX_EXECUTION_TIME_MS_KEY, MAX_MEMORY_MB_KEY,
    MAX_QUEUED_REQUESTS_KEY,
};
pub use loader::{
    classify_image_ref, read_component_file, ComponentLoader, DefaultLoader, ImageRefKind,
    DEFAULT_MAX_COMPONENT_BYTES,
};
pub use mounts::{parse_mounts, Mount, MountRequest, MountRoot, MOUNTS_KEY};
pub use outgoing::{
    AllowedHosts, OutgoingHttpHandler, OutgoingHttpSender, OutgoingIo, OutgoingResponse,
    ALLOWED_HOSTS_KEY,
};
pub use state::{Capability, Extensions, ImportResolver, InstanceContext, InstanceState};

/// How to build a [`Runtime`].
#[derive(Clone, Default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` means [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Whether `file://` refs and plain paths may be loaded (the host's `--allow-file-load`).
    /// Ignored when [`RuntimeConfig::loader`] is set.
    pub allow_file_load: bool,
    /// Concurrent instances the pooling allocator reserves room for; `None` derives it from
    /// the machine's available memory (16 MiB per slot, between 16 and 1000 slots).
    pub pool_slots: Option<u32>,
    /// The largest component file the default loader reads, in bytes; `None` means
    /// [`DEFAULT_MAX_COMPONENT_BYTES`]. Ignored when [`RuntimeConfig::loader`] is set.
    pub max_component_bytes: Option<u64>,
    /// Loader for image refs; `None` means [`crate::oci::OciLoader`] (when [`RuntimeConfig::oci`]
    /// or [`crate::oci::process_config`] is set) in front of [`DefaultLoader`] with
    /// `allow_file_load` and `max_component_bytes`, else that [`DefaultLoader`] alone.
    pub loader: Option<Arc<dyn ComponentLoader>>,
    /// OCI pull settings; `None` means those installed with
    /// [`crate::oci::install_process_config`] (which `trellis host` does), if any. Ignored when
    /// [`RuntimeConfig::loader`] is set.
    pub oci: Option<crate::oci::OciConfig>,
    /// Host capabilities added to every component's linker.
    pub capabilities: Vec<Arc<dyn Capability>>,
    /// Which signed (or unsigned) components are admitted; embedded claims are always
    /// verified before a component is compiled.
    pub claims_policy: crate::security::ClaimsPolicy,
    /// Directories components may mount (the host's `--allow-mount`); empty: no mounts.
    pub mount_roots: Vec<MountRoot>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("cache_dir", &self.cache_dir)
            .field("allow_file_load", &self.allow_file_load)
            .field("max_component_bytes", &self.max_component_bytes)
            .field("pool_slots", &self.pool_slots)
            .field("custom_loader", &self.loader.is_some())
            .field("oci", &self.oci)
            .field("claims_policy", &self.claims_policy)
            .field("mount_roots", &self.mount_roots)
            .field(
                "capabilities",
                &self
                    .capabilities
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What to run: one component as described by a scale/update command.
#[derive(Debug, Clone, Default)]
pub struct ComponentSpec {
    /// The component id.
    pub id: String,
    /// Where to load it from (`file:///...`, a path, or later an OCI ref).
    pub image_ref: String,
    /// Cap on concurrent instances (the scale command's `count`).
    pub max_instances: u32,
    /// Per-instance limits.
    pub limits: ComponentLimits,
    /// The component's merged named configs (e.g. `allowed_hosts`).
    pub config: HashMap<String, String>,
}

/// The component runtime: one wasmtime engine, its linker, the compiled-code cache and the
/// epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.inner.cache_dir)
            .field("pool_slots", &self.inner.pool_slots)
            .finish_non_exhaustive()
    }
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<InstanceState>,
    cache: cache::CompiledCache,
    cache_dir: PathBuf,
    loader: Arc<dyn ComponentLoader>,
    capabilities: Vec<Arc<dyn Capability>>,
    claims_policy: crate::security::ClaimsPolicy,
    mount_roots: Vec<MountRoot>,
    pool_slots: Option<u32>,
    /// Caps the instances made ahead of their call, across every component.
    spares: Arc<concurrency::SpareBudget>,
    /// Provides imports the shared linker lacks (e.g. forwarding them over the lattice); set
    /// once, late, by the host (see [`Runtime::set_import_resolver`]).
    import_resolver: OnceLock<Arc<dyn ImportResolver>>,
    /// Compiled code of every component in use, by digest: many ids running the same .wasm
    /// (replicas, tenants) share one copy of the code instead of one each. Weak, so code is
    /// freed when its last component stops.
    shared_code: Mutex<HashMap<String, Weak<Component>>>,
    // Dropped with the runtime: stops the epoch thread.
    _ticker: engine::EpochTicker,
}

/// Spare instances allowed at once: an eighth of the pool (at least one), or 32 when
/// instances are allocated on demand.
fn spare_budget(pool_slots: Option<u32>) -> usize {
    pool_slots.map_or(32, |slots| (slots as usize / 8).max(1))
}

impl RuntimeInner {
    /// The compiled code for `digest` if a running component already uses it.
    fn code_in_use(&self, digest: &str) -> Option<Arc<Component>> {
        let map = self.shared_code.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest).and_then(Weak::upgrade)
    }

    /// Records `component` as the code for `digest` (dropping entries whose code was freed).
    fn share_code(&self, digest: &str, component: Component) -> Arc<Component> {
        let mut map = self.shared_code.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(digest).and_then(Weak::upgrade) {
            // Another prepare of the same .wasm won the race; use its copy.
            return existing;
        }
        map.retain(|_, code| code.strong_count() > 0);
        let code = Arc::new(component);
        map.insert(digest.to_string(), Arc::downgrade(&code));
        code
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator sized from memory, or on-demand as a fallback), the
    /// linker with WASI 0.2, wasi:http and the configured capabilities, and starts the epoch
    /// ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let setup = engine::build_engine(config.pool_slots)?;
        let engine = setup.engine;
        let mut linker = Linker::<InstanceState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("adding WASI 0.2 to the linker")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("adding wasi:http to the linker")?;
        for capability in &config.capabilities {
            capability.add_to_linker(&mut linker).with_context(|| {
                format!("adding capability {} to the linker", capability.name())
            })?;
        }
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let cache = cache::CompiledCache::new(cache_dir.clone(), &engine);
        let loader: Arc<dyn ComponentLoader> = match config.loader.clone() {
            Some(loader) => loader,
            None => {
                let files = DefaultLoader {
                    allow_file_load: config.allow_file_load,
                    max_component_bytes: config
                        .max_component_bytes
                        .unwrap_or(DEFAULT_MAX_COMPONENT_BYTES),
                };
                match config.oci.clone().or_else(crate::oci::process_config) {
                    Some(oci) => {
                        // Beside the compiled code when its directory was chosen, else the
                        // per-user default shared by the machine's hosts.
                        let oci_dir = config
                            .cache_dir
                            .as_ref()
                            .map(|dir| dir.join("oci"))
                            .unwrap_or_else(crate::oci::default_oci_cache_dir);
                        Arc::new(crate::oci::OciLoader::new(&oci, files, oci_dir)?)
                    }
                    None => Arc::new(files),
                }
            }
        };
        let ticker = engine::EpochTicker::start(engine.clone())?;
        tracing::debug!(
            pool_slots = ?setup.pool_slots,
            cache_dir = %cache_dir.display(),
            "component runtime ready"
        );
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                claims_policy: config.claims_policy.clone(),
                mount_roots: config.mount_roots.clone(),
                cache_dir,
                loader,
                capabilities: config.capabilities,
                pool_slots: setup.pool_slots,
                spares: concurrency::SpareBudget::new(spare_budget(setup.pool_slots)),
                import_resolver: OnceLock::new(),
                shared_code: Mutex::default(),
                _ticker: ticker,
            }),
        })
    }

    /// The wasmtime engine (for callers that compile or link other things against it).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Pooled instance slots, or `None` if instances are allocated on demand.
    pub fn pool_slots(&self) -> Option<u32> {
        self.inner.pool_slots
    }

    /// Installs the resolver consulted when a component imports something the shared linker
    /// does not provide. Only the first call has an effect; returns whether it was installed.
    /// Components prepared before it is installed are not affected.
    pub fn set_import_resolver(&self, resolver: Arc<dyn ImportResolver>) -> bool {
        self.inner.import_resolver.set(resolver).is_ok()
    }

    /// The compiled-code cache directory.
    pub fn cache_dir(&self) -> &std::path::Path {
        &self.inner.cache_dir
    }

    /// Loads, compiles (or reads from the disk cache), links and pre-instantiates a component.
    /// Fails with a clear error if the ref cannot be loaded, the bytes are not a component,
    /// it imports something this host does not provide, or it asks for a directory mount
    /// ([`MOUNTS_KEY`]) this host does not allow.
    pub async fn prepare(&self, spec: ComponentSpec) -> anyhow::Result<Arc<PreparedComponent>> {
        let inner = self.inner.clone();
        // Mounts first: a component asking for a directory it may not have is refused before
        // anything is loaded.
        let mounts = Arc::new(mounts::from_config(
            &spec.id,
            &spec.config,
            &inner.mount_roots,
        )?);
        let bytes =
            inner.loader.load(&spec.image_ref).await.with_context(|| {
                format!("loading component {} from {}", spec.id, spec.image_ref)
            })?;
        // Claims first: a refused component is never compiled.
        let claims = inner.claims_policy.admit(&spec.id, &bytes)?;
        let digest = cache::component_digest(&bytes);
        let (code, compile_source) = match inner.code_in_use(&digest) {
            Some(code) => (code, CompileSource::Cache),
            None => {
                let (component, compile_source) = {
                    let inner = inner.clone();
                    let digest = digest.clone();
                    let id = spec.id.clone();
                    tokio::task::spawn_blocking(move || {
                        inner
                            .cache
                            .load_or_compile(&inner.engine, &id, &digest, &bytes)
                    })
                    .await
                    .context("the compilation task failed")??
                };
                (inner.share_code(&digest, component), compile_source)
            }
        };
        let component: &Component = &code;
        // The shared linker serves most components as is. When it lacks an import, the import
        // resolver (if any) defines it in a per-component copy of the linker.
        let instance_pre = match inner.linker.instantiate_pre(component) {
            Ok(pre) => pre,
            Err(first_error) => match inner.import_resolver.get() {
                None => Err(first_error),
                Some(resolver) => {
                    let mut linker = inner.linker.clone();
                    resolver
                        .resolve_imports(&mut linker, &spec.id, component)
                        .with_context(|| {
                            format!("providing the imports of component {}", spec.id)
                        })?;
                    linker.instantiate_pre(component)
                }
            }
            .map_err(|error| {
                anyhow::Error::from(error).context(format!(
                    "component {} imports something this host does not provide",
                    spec.id
                ))
            })?,
        };
        let proxy_pre = ProxyPre::new(instance_pre.clone()).ok();
        tracing::info!(
            component_id = spec.id,
            image_ref = spec.image_ref,
            digest,
            from_cache = compile_source == CompileSource::Cache,
            exports_http = proxy_pre.is_some(),
            "component prepared"
        );
        let id: Arc<str> = Arc::from(spec.id.as_str());
        let allowed_hosts = Arc::new(
            spec.config
                .get(ALLOWED_HOSTS_KEY)
                .map(|value| AllowedHosts::parse(value))
                .unwrap_or_default(),
        );
        let gate = concurrency::InstanceGate::new(
            spec.max_instances,
            spec.limits.queue_bound(spec.max_instances),
        );
        let spare_budget = inner.spares.clone();
        let http_labels = trellis_telemetry::metrics::InvocationLabels::new(
            &id,
            component::HTTP_INTERFACE,
            component::HTTP_FUNCTION,
        );
        Ok(Arc::new(PreparedComponent {
            id,
            http_labels,
            image_ref: spec.image_ref,
            digest,
            compile_source,
            limits: spec.limits,
            config: Arc::new(spec.config),
            allowed_hosts,
            mounts,
            instance_pre,
            proxy_pre,
            gate,
            capabilities: inner.capabilities.clone(),
            claims,
            _code: code,
            _runtime: inner,
            tasks: Mutex::new(JoinSet::new()),
            spare: Mutex::new(None),
            spare_budget,
            failures: Arc::new(throttle::FailureLog::new()),
        }))
    }
}
