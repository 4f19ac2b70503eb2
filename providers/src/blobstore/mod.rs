//! `wasi:blobstore@0.2.0-draft` (containers, streaming object reads and writes, listing, copy
//! and move) for components, and the blobstore "provider" that links point at.
//!
//! # Where the work happens
//!
//! As for key-value, the host functions run in the host that runs the calling component; a
//! wasmCloud deployment's provider and link are honoured as configuration:
//!
//! - The component's link `source = component id`, `wasi:blobstore`, name `default`, names the
//!   target provider and its named configs (`target_config`). Without it every call fails with
//!   an error naming the missing link.
//! - Settings are the local provider's own config (when the target provider runs on this
//!   host) overlaid by the link's target configs, keys in any letter case. The backend is
//!   `backend` = `nats` | `fs` when set; else what the provider image implies
//!   (`ghcr.io/wasmcloud/blobstore-nats`, `ghcr.io/wasmcloud/blobstore-fs`); else `fs` when a
//!   `root` is set; else NATS (the default, as `trellis+builtin://blobstore`).
//! - **NATS**: each container is a JetStream object store on the lattice's own connection;
//!   wasmCloud's storage keys apply to new containers (`max_age` seconds, `storage_type`
//!   `file` | `memory`, `num_replicas`, `compression`, `js_domain`). `cluster_uri` is ignored.
//! - **fs**: each container is a directory under `root` (wasmCloud's `ROOT`; default, as in
//!   wasmCloud, `{temp dir}/{component id}`); names can never leave it (see `fs.rs`).
//!
//! # Streaming
//!
//! `outgoing-value-write-body` hands the guest an output stream feeding a bounded pipe
//! (`pipe.rs`); `container.write-data` starts the upload that drains it, and
//! `outgoing-value.finish` ends the data and waits for the store's answer. `get-data` opens the
//! object (a range of it: `start` and `end` are inclusive, clamped to the object's size) and
//! `incoming-value-consume-async` wraps it as an input stream, so objects of any size pass
//! through a few hundred KiB of host memory. `incoming-value-consume-sync` returns the bytes at
//! once and is refused above [`MAX_SYNC_BYTES`] (use the stream).
//!
//! [`start`] is what `provider.start` runs for the blobstore images: it validates and records
//! the provider's config as defaults for the links that target it, and serves nothing itself.

mod backend;
mod fs;
mod nats;
mod pipe;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use trellis_host::lattice::store::ConfigMap;
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::runtime::{Capability, Extensions, InstanceContext, InstanceState};
use trellis_host::{Host, HostSlot};

use crate::native::running_host;
use backend::{kind_from_image_ref, normalized, BackendKind, BlobResult, Reader, Store};
use pipe::Pipe;

/// The link name a component's blobstore calls follow.
pub const DEFAULT_LINK_NAME: &str = "default";

/// The largest object `incoming-value-consume-sync` returns in one piece.
pub const MAX_SYNC_BYTES: u64 = 64 << 20;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasi-blobstore-0.2.0-draft",
        world: "wasi:blobstore/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:blobstore/container.container": super::ContainerHandle,
            "wasi:blobstore/container.stream-object-names": super::ObjectNames,
            "wasi:blobstore/types.outgoing-value": super::OutgoingValue,
            "wasi:blobstore/types.incoming-value": super::IncomingValue,
        },
    });
}

use bindings::wasi::blobstore::{blobstore, container, types};

/// An open container (the `container` resource's host side).
pub struct ContainerHandle {
    name: String,
    store: Store,
}

/// The rest of a listing (the `stream-object-names` resource's host side).
pub struct ObjectNames {
    names: VecDeque<String>,
}

/// An object being written (the `outgoing-value` resource's host side).
pub struct OutgoingValue {
    pipe: Pipe,
    body_taken: bool,
    /// The running upload, once `write-data` started it.
    upload: Option<tokio::task::JoinHandle<BlobResult<u64>>>,
    finished: bool,
}

impl Drop for OutgoingValue {
    fn drop(&mut self) {
        if !self.finished {
            self.pipe.abort();
        }
    }
}

/// An object (or a range of it) being read (the `incoming-value` resource's host side).
pub struct IncomingValue {
    reader: Reader,
    size: u64,
}

/// Serves `wasi:blobstore@0.2.0-draft` to every component.
pub struct BlobstoreCapability {
    slot: HostSlot,
}

impl std::fmt::Debug for BlobstoreCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobstoreCapability")
            .field("slot", &self.slot)
            .finish()
    }
}

impl BlobstoreCapability {
    /// A capability that resolves links through the host `slot` will hold.
    pub fn new(slot: HostSlot) -> Self {
        Self { slot }
    }
}

/// Per-instance state: who is calling and where to find the host.
struct BlobstoreInstance {
    component_id: Arc<str>,
    slot: HostSlot,
}

impl Capability for BlobstoreCapability {
    fn name(&self) -> &str {
        "wasi:blobstore"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        types::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        container::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        blobstore::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        Ok(())
    }

    fn new_instance_state(
        &self,
        ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        extensions.insert(BlobstoreInstance {
            component_id: ctx.component_id.clone(),
            slot: self.slot.clone(),
        });
        Ok(())
    }
}

/// Defaults recorded by a blobstore provider started on this host.
#[derive(Debug, Clone)]
struct ProviderDefaults {
    implied: Option<BackendKind>,
    config: ConfigMap,
}

type ProviderKey = (String, String);

/// Blobstore providers running in this process, by (host id, provider id).
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

/// Finds the component's blobstore link and builds the store it points at.
async fn resolve_store(host: &Host, component_id: &str) -> BlobResult<Store> {
    let link = host
        .store
        .with_links(|table| {
            table
                .from_source(component_id)
                .find(|l| {
                    l.wit_namespace == "wasi"
                        && l.wit_package == "blobstore"
                        && l.name == DEFAULT_LINK_NAME
                })
                .cloned()
        })
        .ok_or_else(|| {
            format!(
                "component {component_id} has no wasi:blobstore link named `{DEFAULT_LINK_NAME}`: \
                 put a link from {component_id} (wasi:blobstore, interface blobstore) to a \
                 blobstore provider (e.g. ghcr.io/wasmcloud/blobstore-nats or blobstore-fs)"
            )
        })?;
    let local = local_provider(&host.identity.host_id, &link.target);
    let mut settings: HashMap<String, String> = local
        .as_ref()
        .map(|d| normalized(&d.config))
        .unwrap_or_default();
    for name in &link.target_config {
        let values = match host.store.cached_config(name) {
            Some(values) => values,
            None => host
                .store
                .get_config(name)
                .await
                .map_err(|e| format!("cannot read config {name}: {e:#}"))?
                .ok_or_else(|| {
                    format!(
                        "the wasi:blobstore link of {component_id} names config `{name}`, which \
                         does not exist: put it with config.put or remove it from the link"
                    )
                })?,
        };
        settings.extend(normalized(&values));
    }
    backend::open_store(
        &host.client,
        &settings,
        local.and_then(|d| d.implied),
        component_id,
    )
    .await
}

/// Who is calling, cloned out of the instance so no borrow of it lives across an await.
fn caller(state: &InstanceState) -> BlobResult<(Arc<str>, HostSlot)> {
    state
        .extension::<BlobstoreInstance>()
        .map(|b| (b.component_id.clone(), b.slot.clone()))
        .ok_or_else(|| "wasi:blobstore is not set up for this instance".to_string())
}

/// The store the calling instance's link points at, resolved now.
/// Runs one blobstore operation in a client span (one branch when tracing is off).
async fn traced<T>(
    operation: &'static str,
    operation_future: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    if !trellis_telemetry::traces_enabled() {
        return operation_future.await;
    }
    let span = trellis_telemetry::spans::capability("wasi:blobstore", operation);
    let result = tracing::Instrument::instrument(operation_future, span.clone()).await;
    if let Err(error) = &result {
        trellis_telemetry::spans::record_error(&span, error);
    }
    result
}

async fn store_of(caller: BlobResult<(Arc<str>, HostSlot)>) -> BlobResult<Store> {
    let (component_id, slot) = caller?;
    let host = running_host(&slot).map_err(|e| format!("{e:#}"))?;
    resolve_store(&host, &component_id).await
}

/// The container behind a guest handle (cheap clone).
fn container_of(
    state: &mut InstanceState,
    handle: &Resource<ContainerHandle>,
) -> wasmtime::Result<(String, Store)> {
    let c = state.table().get(handle)?;
    Ok((c.name.clone(), c.store.clone()))
}

impl blobstore::Host for InstanceState {
    async fn create_container(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ContainerHandle>, String>> {
        let store = match store_of(caller(self)).await {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = traced("create-container", store.create_container(&name)).await {
            return Ok(Err(e));
        }
        tracing::debug!(component_id = self.component_id(), container = %name, store = ?store, "wasi:blobstore container created");
        Ok(Ok(self.table().push(ContainerHandle { name, store })?))
    }

    async fn get_container(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ContainerHandle>, String>> {
        let store = match store_of(caller(self)).await {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = traced("get-container", store.require_container(&name)).await {
            return Ok(Err(e));
        }
        Ok(Ok(self.table().push(ContainerHandle { name, store })?))
    }

    async fn delete_container(&mut self, name: String) -> wasmtime::Result<Result<(), String>> {
        Ok(match store_of(caller(self)).await {
            Ok(store) => traced("delete-container", store.delete_container(&name)).await,
            Err(e) => Err(e),
        })
    }

    async fn container_exists(&mut self, name: String) -> wasmtime::Result<Result<bool, String>> {
        Ok(match store_of(caller(self)).await {
            Ok(store) => traced("container-exists", store.container_exists(&name)).await,
            Err(e) => Err(e),
        })
    }

    async fn copy_object(
        &mut self,
        src: types::ObjectId,
        dest: types::ObjectId,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(match store_of(caller(self)).await {
            Ok(store) => {
                traced(
                    "copy-object",
                    store.copy(
                        (&src.container, &src.object),
                        (&dest.container, &dest.object),
                    ),
                )
                .await
            }
            Err(e) => Err(e),
        })
    }

    async fn move_object(
        &mut self,
        src: types::ObjectId,
        dest: types::ObjectId,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(match store_of(caller(self)).await {
            Ok(store) => {
                traced(
                    "move-object",
                    store.rename(
                        (&src.container, &src.object),
                        (&dest.container, &dest.object),
                    ),
                )
                .await
            }
            Err(e) => Err(e),
        })
    }
}

impl container::Host for InstanceState {}

impl container::HostContainer for InstanceState {
    async fn name(
        &mut self,
        this: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<String, String>> {
        Ok(Ok(container_of(self, &this)?.0))
    }

    async fn info(
        &mut self,
        this: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<types::ContainerMetadata, String>> {
        let (name, store) = container_of(self, &this)?;
        Ok(traced("container-info", store.container_created_at(&name))
            .await
            .map(|created_at| types::ContainerMetadata { name, created_at }))
    }

    async fn get_data(
        &mut self,
        this: Resource<ContainerHandle>,
        name: String,
        start: u64,
        end: u64,
    ) -> wasmtime::Result<Result<Resource<IncomingValue>, String>> {
        let (container, store) = container_of(self, &this)?;
        match traced("get-data", store.read(&container, &name, start, end)).await {
            Ok((reader, size)) => Ok(Ok(self.table().push(IncomingValue { reader, size })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn write_data(
        &mut self,
        this: Resource<ContainerHandle>,
        name: String,
        data: Resource<OutgoingValue>,
    ) -> wasmtime::Result<Result<(), String>> {
        let (container, store) = container_of(self, &this)?;
        {
            let value = self.table().get(&data)?;
            if value.upload.is_some() {
                return Ok(Err(
                    "write-data was already called for this outgoing-value: create a new \
                     outgoing-value for each object"
                        .to_string(),
                ));
            }
        }
        if let Err(e) = store.check_names(&container, &name) {
            return Ok(Err(e));
        }
        if let Err(e) = store.require_container(&container).await {
            return Ok(Err(e));
        }
        let value = self.table().get_mut(&data)?;
        let mut reader = value.pipe.attach_reader();
        let pipe = value.pipe.clone();
        let component_id = self.component_id().to_string();
        // The upload outlives this call; its span is made here so that it has a parent.
        let span = trellis_telemetry::spans::capability("wasi:blobstore", "write-data");
        let upload = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = store.write(&container, &name, &mut reader).await;
                match &result {
                    Ok(size) => {
                        tracing::debug!(component_id, container, object = %name, size, "wasi:blobstore object stored")
                    }
                    Err(e) => {
                        pipe.set_upload_error(e);
                        tracing::debug!(component_id, container, object = %name, error = %e, "wasi:blobstore write failed")
                    }
                }
                drop(reader);
                result
            },
            span,
        ));
        self.table().get_mut(&data)?.upload = Some(upload);
        Ok(Ok(()))
    }

    async fn list_objects(
        &mut self,
        this: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<Resource<ObjectNames>, String>> {
        let (container, store) = container_of(self, &this)?;
        match traced("list-objects", store.list(&container)).await {
            Ok(names) => Ok(Ok(self.table().push(ObjectNames {
                names: names.into(),
            })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn delete_object(
        &mut self,
        this: Resource<ContainerHandle>,
        name: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let (container, store) = container_of(self, &this)?;
        Ok(traced("delete-object", store.delete_object(&container, &name)).await)
    }

    async fn delete_objects(
        &mut self,
        this: Resource<ContainerHandle>,
        names: Vec<String>,
    ) -> wasmtime::Result<Result<(), String>> {
        let (container, store) = container_of(self, &this)?;
        for name in names {
            if let Err(e) = traced("delete-object", store.delete_object(&container, &name)).await {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    async fn has_object(
        &mut self,
        this: Resource<ContainerHandle>,
        name: String,
    ) -> wasmtime::Result<Result<bool, String>> {
        let (container, store) = container_of(self, &this)?;
        Ok(traced("object-info", store.object_meta(&container, &name))
            .await
            .map(|m| m.is_some()))
    }

    async fn object_info(
        &mut self,
        this: Resource<ContainerHandle>,
        name: String,
    ) -> wasmtime::Result<Result<types::ObjectMetadata, String>> {
        let (container, store) = container_of(self, &this)?;
        Ok(
            match traced("object-info", store.object_meta(&container, &name)).await {
                Ok(Some(meta)) => Ok(types::ObjectMetadata {
                    name,
                    container,
                    created_at: meta.created_at,
                    size: meta.size,
                }),
                Ok(None) => Err(backend::missing_object(&container, &name)),
                Err(e) => Err(e),
            },
        )
    }

    async fn clear(
        &mut self,
        this: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<(), String>> {
        let (container, store) = container_of(self, &this)?;
        Ok(traced("clear", store.clear(&container)).await)
    }

    async fn drop(&mut self, this: Resource<ContainerHandle>) -> wasmtime::Result<()> {
        self.table().delete(this)?;
        Ok(())
    }
}

impl container::HostStreamObjectNames for InstanceState {
    async fn read_stream_object_names(
        &mut self,
        this: Resource<ObjectNames>,
        len: u64,
    ) -> wasmtime::Result<Result<(Vec<String>, bool), String>> {
        let names = &mut self.table().get_mut(&this)?.names;
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(names.len());
        let page: Vec<String> = names.drain(..n).collect();
        Ok(Ok((page, names.is_empty())))
    }

    async fn skip_stream_object_names(
        &mut self,
        this: Resource<ObjectNames>,
        num: u64,
    ) -> wasmtime::Result<Result<(u64, bool), String>> {
        let names = &mut self.table().get_mut(&this)?.names;
        let n = usize::try_from(num).unwrap_or(usize::MAX).min(names.len());
        names.drain(..n);
        Ok(Ok((n as u64, names.is_empty())))
    }

    async fn drop(&mut self, this: Resource<ObjectNames>) -> wasmtime::Result<()> {
        self.table().delete(this)?;
        Ok(())
    }
}

impl types::Host for InstanceState {}

impl types::HostOutgoingValue for InstanceState {
    async fn new_outgoing_value(&mut self) -> wasmtime::Result<Resource<OutgoingValue>> {
        Ok(self.table().push(OutgoingValue {
            pipe: Pipe::new(),
            body_taken: false,
            upload: None,
            finished: false,
        })?)
    }

    async fn outgoing_value_write_body(
        &mut self,
        this: Resource<OutgoingValue>,
    ) -> wasmtime::Result<Result<Resource<DynOutputStream>, ()>> {
        let value = self.table().get_mut(&this)?;
        if value.body_taken {
            return Ok(Err(()));
        }
        value.body_taken = true;
        let stream: DynOutputStream = Box::new(value.pipe.writer());
        Ok(Ok(self.table().push_child(stream, &this)?))
    }

    async fn finish(
        &mut self,
        this: Resource<OutgoingValue>,
    ) -> wasmtime::Result<Result<(), String>> {
        let mut value = match self.table().delete(this) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Err(format!(
                    "cannot finish the outgoing-value ({e}): drop its output-stream before \
                     calling finish"
                )))
            }
        };
        value.finished = true;
        value.pipe.finish();
        let Some(upload) = value.upload.take() else {
            // As in wasmCloud: finishing a value that was never written stores nothing.
            return Ok(Ok(()));
        };
        Ok(match upload.await {
            Ok(result) => result.map(|_| ()),
            Err(e) => Err(format!("the blobstore upload failed: {e}")),
        })
    }

    async fn drop(&mut self, this: Resource<OutgoingValue>) -> wasmtime::Result<()> {
        // Dropping without `finish` aborts the upload (see `OutgoingValue`'s `Drop`).
        self.table().delete(this)?;
        Ok(())
    }
}

impl types::HostIncomingValue for InstanceState {
    async fn incoming_value_consume_sync(
        &mut self,
        this: Resource<IncomingValue>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let mut value = self.table().delete(this)?;
        if value.size > MAX_SYNC_BYTES {
            return Ok(Err(format!(
                "the value is {} bytes, more than incoming-value-consume-sync returns at once \
                 ({MAX_SYNC_BYTES}): use incoming-value-consume-async and read the stream",
                value.size
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(value.size).unwrap_or(0));
        Ok(value
            .reader
            .read_to_end(&mut bytes)
            .await
            .map(|_| bytes)
            .map_err(|e| format!("cannot read the object: {e}")))
    }

    async fn incoming_value_consume_async(
        &mut self,
        this: Resource<IncomingValue>,
    ) -> wasmtime::Result<Result<Resource<DynInputStream>, String>> {
        let value = self.table().delete(this)?;
        let stream: DynInputStream =
            Box::new(wasmtime_wasi::p2::pipe::AsyncReadStream::new(value.reader));
        Ok(Ok(self.table().push(stream)?))
    }

    async fn size(&mut self, this: Resource<IncomingValue>) -> wasmtime::Result<u64> {
        Ok(self.table().get(&this)?.size)
    }

    async fn drop(&mut self, this: Resource<IncomingValue>) -> wasmtime::Result<()> {
        self.table().delete(this)?;
        Ok(())
    }
}

/// A blobstore provider: a registry entry whose config gives defaults to the links that
/// target it. Stopping it removes the entry.
struct BlobstoreProvider {
    name: String,
    key: ProviderKey,
}

impl RunningProvider for BlobstoreProvider {
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
        tracing::info!(provider_id = %self.key.1, "blobstore provider stopped");
        Box::pin(async {})
    }
}

/// Starts a blobstore provider (`ghcr.io/wasmcloud/blobstore-nats:*`, `blobstore-fs:*`,
/// `trellis+builtin://blobstore`): checks its config and records it as defaults for the links
/// that target `spec.id`. The storage calls run in the hosts of the calling components.
pub fn start(host: Arc<Host>, spec: ProviderSpec) -> anyhow::Result<Box<dyn RunningProvider>> {
    let implied = kind_from_image_ref(&spec.image_ref);
    let settings = normalized(&spec.config);
    let kind = backend::choose_kind(&settings, implied).map_err(|e| {
        anyhow::anyhow!("blobstore provider {} has an invalid config: {e}", spec.id)
    })?;
    if kind == BackendKind::Nats {
        nats::NatsSettings::parse(&settings).map_err(|e| {
            anyhow::anyhow!("blobstore provider {} has an invalid config: {e}", spec.id)
        })?;
    }
    let name = match kind {
        BackendKind::Nats => "blobstore-nats",
        BackendKind::Fs => "blobstore-fs",
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
    tracing::info!(provider_id = %spec.id, image_ref = %spec.image_ref, backend = %name, "blobstore provider started");
    Ok(Box::new(BlobstoreProvider { name, key }))
}
