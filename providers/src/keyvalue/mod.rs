//! `wasi:keyvalue` (store, atomics, batch at `0.2.0-draft` and `0.2.0-draft2`) for components, and the keyvalue
//! "provider" that links point at.
//!
//! # Where the work happens
//!
//! The host functions run in-process in the host that runs the calling component: there is
//! no provider process and no extra network hop between a component and its store. What a
//! wasmCloud deployment expresses with a keyvalue provider and a link is honoured as
//! configuration:
//!
//! - The component's link `source = component id`, `wasi:keyvalue`, name `default`, names the
//!   target provider and the target's named configs (`target_config`). A component without
//!   that link gets a clear error from `open`, naming the missing link.
//! - The backend is chosen from the merged settings: the local provider's own config (when
//!   the target provider runs on this host), then the link's target configs (later wins):
//!   `backend` = `nats` | `redis` | `memory` when set; otherwise the provider ref implies it
//!   (`keyvalue-redis`, `keyvalue-nats`); otherwise a `URL` starting with `redis://` means
//!   Redis; otherwise NATS JetStream KV on the lattice's own connection (durable).
//! - The bucket is the `bucket` setting when present, else the identifier passed to `open`
//!   (`default` when empty). On NATS it is a JetStream KV bucket of that name (created on
//!   first use; the lattice's own buckets are refused); in memory a map scoped to the link
//!   target. On Redis it is, as with wasmCloud's keyvalue-redis, not part of the key: keys are
//!   stored exactly as the component names them, in the database the URL selects (e.g.
//!   `redis://host:6379/2`), so a Redis that a wasmCloud application used reads the same.
//! - `key_prefix` (Redis only; default empty): text put before every Redis key, with
//!   `{bucket}` standing for the bucket name. `key_prefix={bucket}:` keeps each bucket's keys
//!   apart; it is also the layout Trellis used before it followed wasmCloud's (every key was
//!   `{bucket}:{key}`), so data written then stays readable with that setting, or can be
//!   renamed once in Redis (see `docs/keyvalue.md`).
//! - The Redis URL is the `URL` setting, in any letter case (`redis://127.0.0.1:6379` when
//!   absent).
//!
//! [`start`] is what `provider.start` runs for `ghcr.io/wasmcloud/keyvalue-nats:*`,
//! `keyvalue-redis` and `trellis+builtin://keyvalue`: it validates and records the
//! provider's config as defaults for the links that target it, and serves nothing itself.
//!
//! Keys on NATS must be valid NATS KV keys (letters, digits, `-/_=.`). Counters
//! (`increment`) are stored as decimal text, so `get` on a counter returns e.g. `b"42"`.
//!
//! # Increments under contention
//!
//! On Redis `increment` is one `INCRBY` (atomic in Redis). NATS KV has no increment, only
//! compare-and-set on a key's revision: concurrent increments of one key on one host are
//! combined into one compare-and-set of their sum, each caller still getting its own result,
//! and conflicts with other hosts are retried after a random pause until a deadline
//! (the `combiner` module).

mod backend;
mod combiner;
mod draft2;

pub use draft2::CasHandle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use wasmtime::component::{HasSelf, Linker, Resource};

use trellis_host::lattice::store::ConfigMap;
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::runtime::{Capability, Extensions, InstanceContext, InstanceState};
use trellis_host::Host;

use crate::native::running_host;
use backend::{
    kind_from_image_ref, resolve_target, timed, BackendPool, CounterRange, OpenBucket, StorageError,
};
use trellis_host::HostSlot;

/// The link name a component's keyvalue calls follow.
pub const DEFAULT_LINK_NAME: &str = "default";

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasi-keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::BucketHandle,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// A bucket opened by a guest (the `bucket` resource's host side).
pub struct BucketHandle {
    name: String,
    bucket: OpenBucket,
}

impl std::fmt::Debug for BucketHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketHandle")
            .field("name", &self.name)
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// Serves `wasi:keyvalue/{store,atomics,batch}` at `0.2.0-draft` and `0.2.0-draft2` to every
/// component.
pub struct KeyValueCapability {
    slot: HostSlot,
    pool: Arc<BackendPool>,
}

impl std::fmt::Debug for KeyValueCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValueCapability")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl KeyValueCapability {
    /// A capability that resolves links through the host `slot` will hold.
    pub fn new(slot: HostSlot) -> Self {
        Self {
            slot,
            pool: Arc::new(BackendPool::default()),
        }
    }
}

/// Per-instance state: who is calling, and where to find the host and the shared pool.
struct KeyValueInstance {
    component_id: Arc<str>,
    slot: HostSlot,
    pool: Arc<BackendPool>,
}

impl Capability for KeyValueCapability {
    fn name(&self) -> &str {
        "wasi:keyvalue"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        store::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        atomics::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        batch::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        draft2::add_to_linker(linker)?;
        Ok(())
    }

    fn new_instance_state(
        &self,
        ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        extensions.insert(KeyValueInstance {
            component_id: ctx.component_id.clone(),
            slot: self.slot.clone(),
            pool: self.pool.clone(),
        });
        Ok(())
    }
}

impl From<StorageError> for store::Error {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::NoSuchStore => store::Error::NoSuchStore,
            StorageError::AccessDenied(why) => {
                tracing::debug!(why, "wasi:keyvalue access denied");
                store::Error::AccessDenied
            }
            StorageError::Other(message) => store::Error::Other(message),
        }
    }
}

/// Defaults recorded by a keyvalue provider started on this host: the backend its ref
/// implies and its config.
#[derive(Debug, Clone)]
struct ProviderDefaults {
    implied: Option<&'static str>,
    config: ConfigMap,
}

type ProviderKey = (String, String);

/// Keyvalue providers running in this process, by (host id, provider id).
fn local_providers() -> &'static Mutex<HashMap<ProviderKey, ProviderDefaults>> {
    static PROVIDERS: OnceLock<Mutex<HashMap<ProviderKey, ProviderDefaults>>> = OnceLock::new();
    PROVIDERS.get_or_init(Default::default)
}

fn local_provider(host_id: &str, provider_id: &str) -> Option<ProviderDefaults> {
    let guard = match local_providers().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    guard
        .get(&(host_id.to_string(), provider_id.to_string()))
        .cloned()
}

/// Finds the component's keyvalue link and turns it into a bucket to open.
async fn resolve_bucket(
    host: &Host,
    component_id: &str,
    identifier: &str,
) -> Result<backend::BucketTarget, StorageError> {
    let link = host
        .store
        .with_links(|table| {
            table
                .from_source(component_id)
                .find(|l| {
                    l.wit_namespace == "wasi"
                        && l.wit_package == "keyvalue"
                        && l.name == DEFAULT_LINK_NAME
                })
                .cloned()
        })
        .ok_or_else(|| {
            StorageError::Other(format!(
                "component {component_id} has no wasi:keyvalue link named `{DEFAULT_LINK_NAME}`: \
                 put a link from {component_id} (wasi:keyvalue, interfaces store, atomics, batch) \
                 to a keyvalue provider"
            ))
        })?;
    let local = local_provider(&host.identity.host_id, &link.target);
    let mut settings: HashMap<String, String> =
        local.as_ref().map(|d| d.config.clone()).unwrap_or_default();
    for name in &link.target_config {
        let values = match host.store.cached_config(name) {
            Some(values) => values,
            None => timed("reading the link's config", async {
                host.store
                    .get_config(name)
                    .await
                    .map_err(|e| StorageError::other(&format!("cannot read config {name}"), e))
            })
            .await?
            .ok_or_else(|| {
                StorageError::Other(format!(
                    "the wasi:keyvalue link of {component_id} names config `{name}`, which does not exist: put it with config.put or remove it from the link"
                ))
            })?,
        };
        settings.extend(values);
    }
    resolve_target(
        &settings,
        local.and_then(|d| d.implied),
        &link.target,
        identifier,
    )
}

/// What host functions need from the instance, cloned so no borrow lives across an await.
fn instance_parts(
    state: &InstanceState,
) -> Result<(Arc<str>, HostSlot, Arc<BackendPool>), StorageError> {
    state
        .extension::<KeyValueInstance>()
        .map(|k| (k.component_id.clone(), k.slot.clone(), k.pool.clone()))
        .ok_or_else(|| StorageError::Other("wasi:keyvalue is not set up for this instance".into()))
}

/// The open bucket behind a guest handle (cheap clone).
fn bucket_of(
    state: &mut InstanceState,
    handle: &Resource<BucketHandle>,
) -> Result<(String, OpenBucket), StorageError> {
    state
        .table()
        .get(handle)
        .map(|b| (b.name.clone(), b.bucket.clone()))
        .map_err(|e| StorageError::other("invalid bucket handle", e))
}

/// Opens the bucket `identifier` for the calling component (through its keyvalue link) and
/// gives the guest a handle to it; every served version of `store.open` does this.
async fn open_bucket(
    state: &mut InstanceState,
    identifier: &str,
) -> Result<Resource<BucketHandle>, StorageError> {
    let (component_id, slot, pool) = instance_parts(state)?;
    let host = running_host(&slot).map_err(|e| StorageError::Other(format!("{e:#}")))?;
    let target = resolve_bucket(&host, &component_id, identifier).await?;
    // Buckets live in the JetStream of the server the host is on (an edge site's own, on a leaf
    // node), with the lattice's replica count.
    let bucket = pool
        .open(&host.client, host.jetstream.kv_replicas, &target)
        .await?;
    tracing::debug!(component_id = &*component_id, bucket = %target.bucket, backend = ?target.kind, "wasi:keyvalue bucket opened");
    state
        .table()
        .push(BucketHandle {
            name: target.bucket,
            bucket,
        })
        .map_err(|e| StorageError::other("cannot store the bucket handle", e))
}

impl store::Host for InstanceState {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, store::Error> {
        Ok(open_bucket(self, &identifier).await?)
    }
}

impl store::HostBucket for InstanceState {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue get", open.get(&key)).await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue set", open.set(&key, value)).await?)
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue delete", open.delete(&key)).await?)
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<bool, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue exists", open.exists(&key)).await?)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        let keys = timed("keyvalue list-keys", open.keys()).await?;
        let start = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let page: Vec<String> = keys
            .iter()
            .skip(start)
            .take(backend::LIST_PAGE_SIZE)
            .cloned()
            .collect();
        let end = start.saturating_add(page.len());
        let cursor = (end < keys.len()).then_some(end as u64);
        Ok(store::KeyResponse { keys: page, cursor })
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table().delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for InstanceState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        let (name, open) = bucket_of(self, &bucket)?;
        let value = timed(
            "keyvalue increment",
            open.increment(&key, i128::from(delta), CounterRange::U64),
        )
        .await?;
        tracing::trace!(bucket = name, key, %value, "wasi:keyvalue increment");
        u64::try_from(value)
            .map_err(|_| store::Error::Other(format!("the value of `{key}` is out of range")))
    }
}

impl batch::Host for InstanceState {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        let values = timed("keyvalue get-many", async {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                let value = open.get(&key).await?;
                values.push(value.map(|v| (key, v)));
            }
            Ok(values)
        })
        .await?;
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        timed("keyvalue set-many", async {
            for (key, value) in key_values {
                open.set(&key, value).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        timed("keyvalue delete-many", async {
            for key in keys {
                open.delete(&key).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// A keyvalue provider: a registry entry whose config gives defaults to the links that
/// target it. Stopping it removes the entry.
struct KeyValueProvider {
    name: String,
    key: ProviderKey,
}

impl RunningProvider for KeyValueProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        let mut guard = match local_providers().lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.remove(&self.key);
        drop(guard);
        tracing::info!(provider_id = %self.key.1, "keyvalue provider stopped");
        Box::pin(async {})
    }
}

/// Starts a keyvalue provider (`ghcr.io/wasmcloud/keyvalue-nats:*`, `keyvalue-redis:*`,
/// `trellis+builtin://keyvalue`): checks its config and records it as defaults for the links
/// that target `spec.id`. The storage calls themselves run in the hosts of the calling
/// components (see the module docs).
pub fn start(host: Arc<Host>, spec: ProviderSpec) -> anyhow::Result<Box<dyn RunningProvider>> {
    let implied = kind_from_image_ref(&spec.image_ref);
    // Resolving with no link settings checks the provider's own config (backend name, URL).
    let target = resolve_target(&spec.config, implied, &spec.id, "default").map_err(|e| {
        anyhow::anyhow!("keyvalue provider {} has an invalid config: {e:?}", spec.id)
    })?;
    if let backend::BackendKind::Redis { url } = &target.kind {
        redis::Client::open(url.as_str()).map_err(|e| {
            anyhow::anyhow!(
                "keyvalue provider {}: the Redis URL `{}` is not valid: {e}",
                spec.id,
                backend::redacted(url)
            )
        })?;
    }
    let name = match implied {
        Some("redis") => "keyvalue-redis",
        Some("nats") => "keyvalue-nats",
        Some(_) => "keyvalue-memory",
        None => "keyvalue",
    }
    .to_string();
    let key = (host.identity.host_id.clone(), spec.id.clone());
    {
        let mut guard = match local_providers().lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.insert(
            key.clone(),
            ProviderDefaults {
                implied,
                config: spec.config.clone(),
            },
        );
    }
    tracing::info!(provider_id = %spec.id, image_ref = %spec.image_ref, backend = ?target.kind, "keyvalue provider started");
    Ok(Box::new(KeyValueProvider { name, key }))
}
