//! Lattice-wide state in JetStream KV: named configs (`CONFIGDATA_{lattice}`) and links
//! (`LATTICEDATA_{lattice}`).
//!
//! KV is the source of truth, so every host (and a restarted one) sees the same state. Each host
//! also keeps an in-memory copy, refreshed by watching the buckets, for the invocation path:
//! routing a call must not cost a KV round trip, and `link.get` lists links from it (as
//! wasmCloud hosts answer from memory) so a lattice of 100,000 links is listed without 100,000
//! KV reads. The copy is loaded when the host connects (and after a reconnect) by reading every
//! key once, then kept current by one watch of new changes per bucket: at start-up a bucket of
//! N keys costs N reads (a single watch with history would avoid them; an attempt lost links
//! for a moment while it reloaded, see `watch_once`).
//!
//! The buckets live in the JetStream domain `--js-domain` names (a hub's, for a host on a leaf
//! node), created with `--kv-replicas` replicas. When they cannot be reached at start-up and
//! the host has a snapshot ([`crate::lattice::snapshot`]), the copy starts from the snapshot and
//! the buckets are opened as soon as they answer.
//!
//! Every link and config is checked against [`trellis_protocol::limits`] before any KV key is
//! built from it: an over-long id would make a subject longer than the NATS server accepts,
//! and the server would close the host's connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use trellis_protocol::ctl::{Link, LinkKey};
use trellis_protocol::jetstream::JetStreamPlacement;
use trellis_protocol::{limits, subjects};

/// A named config: string keys to string values.
pub type ConfigMap = HashMap<String, String>;

/// How long one KV operation may take before the request that needed it fails.
const KV_TIMEOUT: Duration = Duration::from_secs(5);
const LINK_KEY_PREFIX: &str = "LINKDEF_";

/// A change to lattice state, as seen by this host's watchers.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChange {
    /// The links changed (any link).
    Links,
    /// The named config changed or was deleted.
    Config(String),
}

/// Why a link put was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkRefused {
    /// The link is malformed or names a missing config.
    #[error("{0}")]
    Invalid(String),
    /// KV could not be reached.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// The in-memory copy of the lattice's links, indexed for routing.
#[derive(Debug, Default)]
pub struct LinkTable {
    links: BTreeMap<LinkKey, Link>,
    /// The identity of each link by its KV key: a deletion names only the key, which cannot be
    /// decoded back.
    by_storage_key: HashMap<String, LinkKey>,
}

impl LinkTable {
    /// The link a call from `source_id` to `namespace:package/interface` under `name` follows.
    pub fn route(
        &self,
        source_id: &str,
        namespace: &str,
        package: &str,
        interface: &str,
        name: &str,
    ) -> Option<&Link> {
        let key = LinkKey {
            source_id: source_id.to_string(),
            wit_namespace: namespace.to_string(),
            wit_package: package.to_string(),
            name: name.to_string(),
        };
        self.links
            .get(&key)
            .filter(|l| l.interfaces.iter().any(|i| i == interface))
    }

    /// Every link, in key order (the same order on every host, so pages line up).
    pub fn all(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    /// How many links there are.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// True when there are no links.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Stores `link`; true when that changed anything.
    pub(crate) fn insert(&mut self, key: LinkKey, link: Link) -> bool {
        self.by_storage_key.insert(key.storage_key(), key.clone());
        self.links.insert(key, link.clone()).as_ref() != Some(&link)
    }

    /// Removes the link `key`; true when it was there.
    fn remove(&mut self, key: &LinkKey) -> bool {
        self.by_storage_key.remove(&key.storage_key());
        self.links.remove(key).is_some()
    }

    /// Links whose target is `target_id` (e.g. an HTTP server learning which components to serve).
    pub fn targeting<'a>(&'a self, target_id: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links.values().filter(move |l| l.target == target_id)
    }

    /// Links whose source is `source_id`.
    pub fn from_source<'a>(&'a self, source_id: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links
            .values()
            .filter(move |l| l.source_id == source_id)
    }
}

#[derive(Default)]
struct Caches {
    links: LinkTable,
    configs: HashMap<String, ConfigMap>,
}

/// The lattice's shared state, backed by JetStream KV and mirrored in memory.
pub struct LatticeStore {
    /// The two buckets, once JetStream answered (at once, unless the host started from a
    /// snapshot while the lattice's JetStream was unreachable).
    buckets: Arc<OnceLock<Buckets>>,
    placement: JetStreamPlacement,
    caches: Arc<RwLock<Caches>>,
    changes: broadcast::Sender<StoreChange>,
    /// True once the link cache holds everything KV held when the watch started.
    links_loaded: watch::Receiver<bool>,
    /// Opens the buckets when they were unreachable, then keeps both caches in step.
    supervisor: JoinHandle<()>,
}

#[derive(Clone)]
struct Buckets {
    config: kv::Store,
    data: kv::Store,
}

/// Links and configs to serve from when the lattice's JetStream cannot be reached at start-up
/// (a host restarted during a partition): what [`LatticeStore::links_and_configs`] returned
/// before, kept by [`crate::lattice::snapshot`].
#[derive(Debug, Clone, Default)]
pub struct StoreSeed {
    /// Every link.
    pub links: Vec<Link>,
    /// Every named config.
    pub configs: BTreeMap<String, ConfigMap>,
}

impl Drop for LatticeStore {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

async fn open_bucket(
    js: &jetstream::Context,
    placement: &JetStreamPlacement,
    bucket: &str,
) -> anyhow::Result<kv::Store> {
    let config = kv::Config {
        bucket: bucket.to_string(),
        description: "Trellis lattice state".to_string(),
        history: 1,
        ..Default::default()
    };
    tokio::time::timeout(KV_TIMEOUT * 2, placement.open_or_create_kv(js, config))
        .await
        .with_context(|| {
            format!(
                "timed out opening the bucket {bucket} in {}: is JetStream enabled (`nats-server -js`)?",
                placement.describe()
            )
        })?
}

async fn open_buckets(
    js: &jetstream::Context,
    placement: &JetStreamPlacement,
    lattice: &str,
) -> anyhow::Result<Buckets> {
    Ok(Buckets {
        config: open_bucket(js, placement, &subjects::config_data_bucket(lattice)).await?,
        data: open_bucket(js, placement, &subjects::lattice_data_bucket(lattice)).await?,
    })
}

impl LatticeStore {
    /// Opens (creating when needed) the lattice's buckets in `placement`'s JetStream domain,
    /// starts watching them, and waits (boundedly) until the caches hold what KV holds, so a
    /// starting host routes calls and lists links right away.
    ///
    /// When the buckets cannot be reached and a `seed` is given (the host's last snapshot),
    /// the caches start from the seed and the buckets are opened in the background as soon as
    /// JetStream answers: a host restarted during a partition serves from what it knew.
    /// Without a seed, an unreachable JetStream is an error.
    pub async fn open(
        client: async_nats::Client,
        lattice: &str,
        placement: &JetStreamPlacement,
        seed: Option<StoreSeed>,
    ) -> anyhow::Result<Self> {
        let js = placement.context(&client);
        let first = match open_buckets(&js, placement, lattice).await {
            Ok(buckets) => Some(buckets),
            Err(e) => match &seed {
                Some(_) => {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "the lattice's state in {} cannot be reached; serving from this host's snapshot until it can",
                        placement.describe()
                    );
                    None
                }
                None => return Err(e),
            },
        };
        let caches = Arc::new(RwLock::new(Caches::default()));
        let (changes, _) = broadcast::channel(256);
        let (configs_loaded_tx, mut configs_loaded) = watch::channel(false);
        let (links_loaded_tx, links_loaded) = watch::channel(false);
        let online = first.is_some();
        if let (false, Some(seed)) = (online, seed) {
            for link in seed.links {
                apply(
                    &caches,
                    &changes,
                    Applied::Link(link.key(), Some(Box::new(link))),
                );
            }
            for (name, values) in seed.configs {
                apply(&caches, &changes, Applied::Config(name, Some(values)));
            }
            configs_loaded_tx.send_replace(true);
            links_loaded_tx.send_replace(true);
        }
        let buckets = Arc::new(OnceLock::new());
        let supervisor = tokio::spawn(supervise(
            js,
            placement.clone(),
            lattice.to_string(),
            first,
            buckets.clone(),
            caches.clone(),
            changes.clone(),
            (configs_loaded_tx, links_loaded_tx),
        ));
        let store = Self {
            buckets,
            placement: placement.clone(),
            caches,
            changes,
            links_loaded,
            supervisor,
        };
        if online {
            let loaded = tokio::time::timeout(KV_TIMEOUT * 2, async {
                let _ = configs_loaded.wait_for(|loaded| *loaded).await;
                store.wait_links_loaded(KV_TIMEOUT * 2).await
            })
            .await;
            if !matches!(loaded, Ok(true)) {
                tracing::warn!(
                    "the lattice's links and configs are not loaded yet; they will be as KV answers"
                );
            }
        }
        Ok(store)
    }

    /// True once the lattice's buckets were reached (false while a host that started from its
    /// snapshot has not reached them yet).
    pub fn is_online(&self) -> bool {
        self.buckets.get().is_some()
    }

    /// Every link and named config this host knows now, for its snapshot.
    pub fn links_and_configs(&self) -> StoreSeed {
        let guard = match self.caches.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        StoreSeed {
            links: guard.links.all().cloned().collect(),
            configs: guard
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn buckets(&self) -> anyhow::Result<&Buckets> {
        self.buckets.get().with_context(|| {
            format!(
                "the lattice's state in {} has not been reachable since this host started \
                 (it serves from its snapshot); retry once NATS reaches it",
                self.placement.describe()
            )
        })
    }

    /// Changes seen by the watchers, for parts of the host that react to links or config.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    /// Runs `f` on the in-memory link table (never blocks on the network).
    pub fn with_links<R>(&self, f: impl FnOnce(&LinkTable) -> R) -> R {
        match self.caches.read() {
            Ok(c) => f(&c.links),
            Err(poisoned) => f(&poisoned.into_inner().links),
        }
    }

    /// Waits up to `timeout` until the link table holds every link KV held when this host
    /// started watching; false if it does not by then.
    pub async fn wait_links_loaded(&self, timeout: Duration) -> bool {
        let mut loaded = self.links_loaded.clone();
        let waited = tokio::time::timeout(timeout, loaded.wait_for(|loaded| *loaded)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// The cached value of a named config, if present.
    pub fn cached_config(&self, name: &str) -> Option<ConfigMap> {
        match self.caches.read() {
            Ok(c) => c.configs.get(name).cloned(),
            Err(poisoned) => poisoned.into_inner().configs.get(name).cloned(),
        }
    }

    /// Stores a named config after checking its name and size.
    pub async fn put_config(&self, name: &str, values: &ConfigMap) -> anyhow::Result<()> {
        limits::check_config_name("config name", name).map_err(anyhow::Error::msg)?;
        limits::check_config(values).map_err(anyhow::Error::msg)?;
        let bytes = serde_json::to_vec(values).context("cannot encode config")?;
        kv_call(self.buckets()?.config.put(name, Bytes::from(bytes)))
            .await
            .with_context(|| format!("cannot store config {name}"))?;
        self.apply_config(name, Some(values.clone()));
        Ok(())
    }

    /// Reads a named config from KV (authoritative, not the cache).
    pub async fn get_config(&self, name: &str) -> anyhow::Result<Option<ConfigMap>> {
        limits::check_config_name("config name", name).map_err(anyhow::Error::msg)?;
        let value = kv_call(self.buckets()?.config.get(name))
            .await
            .with_context(|| format!("cannot read config {name}"))?;
        match value {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("config {name} in KV is not a JSON string map")),
        }
    }

    /// Deletes a named config; true when it existed.
    pub async fn delete_config(&self, name: &str) -> anyhow::Result<bool> {
        let existed = self.get_config(name).await?.is_some();
        if existed {
            kv_call(self.buckets()?.config.delete(name))
                .await
                .with_context(|| format!("cannot delete config {name}"))?;
            self.apply_config(name, None);
        }
        Ok(existed)
    }

    /// Named configs merged left to right (later names win), as components and providers see
    /// them. A missing name is an error that names it. Secret references (`SECRET_*`) are not
    /// configuration and are skipped: [`crate::secrets`] resolves them.
    pub async fn merged_config(&self, names: &[String]) -> anyhow::Result<ConfigMap> {
        limits::check_config_names("config", names).map_err(anyhow::Error::msg)?;
        let mut merged = ConfigMap::new();
        for name in names
            .iter()
            .filter(|n| !trellis_protocol::secrets::is_reference_name(n))
        {
            let values = match self.get_config(name).await {
                Ok(values) => values,
                // KV unreachable (a partition): the watched copy is what KV last said.
                Err(e) => match self.cached_config(name) {
                    Some(cached) => {
                        tracing::debug!(config = %name, error = %format!("{e:#}"), "KV unreachable; using the cached config");
                        Some(cached)
                    }
                    None => return Err(e),
                },
            };
            let values = values.with_context(|| {
                format!("config {name} does not exist: create it with config.put first")
            })?;
            merged.extend(values);
        }
        Ok(merged)
    }

    /// Stores a link after checking it ([`limits::check_link`]), that the configs it names
    /// exist and that it does not repoint an existing (source, namespace, package, name) to
    /// another target.
    pub async fn put_link(&self, link: &Link) -> Result<(), LinkRefused> {
        limits::check_link(link).map_err(LinkRefused::Invalid)?;
        for name in link.source_config.iter().chain(&link.target_config) {
            if self.get_config(name).await?.is_none() {
                return Err(LinkRefused::Invalid(format!(
                    "the link names config `{name}`, which does not exist: put it with config.put first"
                )));
            }
        }
        let key = link.key().storage_key();
        let existing = kv_call(self.buckets()?.data.entry(key.clone()))
            .await
            .context("cannot read links")?;
        let bytes = Bytes::from(serde_json::to_vec(link).context("cannot encode link")?);
        match existing.filter(|e| e.operation == kv::Operation::Put) {
            Some(entry) => {
                if let Ok(old) = serde_json::from_slice::<Link>(&entry.value) {
                    if old.target != link.target {
                        return Err(LinkRefused::Invalid(format!(
                            "a link from {} on {}:{} named `{}` already targets {}; delete it first or use another link name",
                            link.source_id, link.wit_namespace, link.wit_package, link.name, old.target
                        )));
                    }
                }
                kv_call(self.buckets()?.data.update(&key, bytes, entry.revision))
                    .await
                    .context("the link changed concurrently; retry")?;
            }
            None => {
                kv_call(self.buckets()?.data.put(&key, bytes))
                    .await
                    .context("cannot store link")?;
            }
        }
        self.apply_link(link.key(), Some(link.clone()));
        Ok(())
    }

    /// Deletes a link after checking its identity ([`limits::check_link_key`]); true when it
    /// existed.
    pub async fn delete_link(&self, key: &LinkKey) -> anyhow::Result<bool> {
        limits::check_link_key(key).map_err(anyhow::Error::msg)?;
        let storage_key = key.storage_key();
        let existed = kv_call(self.buckets()?.data.get(storage_key.clone()))
            .await
            .context("cannot read links")?
            .is_some();
        if existed {
            kv_call(self.buckets()?.data.delete(&storage_key))
                .await
                .context("cannot delete link")?;
            self.apply_link(key.clone(), None);
        }
        Ok(existed)
    }

    fn apply_link(&self, key: LinkKey, link: Option<Link>) {
        apply(
            &self.caches,
            &self.changes,
            Applied::Link(key, link.map(Box::new)),
        );
    }

    fn apply_config(&self, name: &str, values: Option<ConfigMap>) {
        apply(
            &self.caches,
            &self.changes,
            Applied::Config(name.to_string(), values),
        );
    }
}

async fn kv_call<T, E>(fut: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(KV_TIMEOUT, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => anyhow::bail!(
            "JetStream KV did not answer within {}s (is NATS reachable?)",
            KV_TIMEOUT.as_secs()
        ),
    }
}

enum Applied {
    Link(LinkKey, Option<Box<Link>>),
    Config(String, Option<ConfigMap>),
}

/// Updates the caches and tells subscribers, unless nothing changed.
fn apply(caches: &RwLock<Caches>, changes: &broadcast::Sender<StoreChange>, applied: Applied) {
    let mut guard = match caches.write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let change = match applied {
        Applied::Link(key, link) => {
            let changed = match link {
                Some(link) => guard.links.insert(key, *link),
                None => guard.links.remove(&key),
            };
            changed.then_some(StoreChange::Links)
        }
        Applied::Config(name, values) => {
            let changed = match values {
                Some(values) => {
                    guard.configs.insert(name.clone(), values.clone()).as_ref() != Some(&values)
                }
                None => guard.configs.remove(&name).is_some(),
            };
            changed.then_some(StoreChange::Config(name))
        }
    };
    drop(guard);
    if let Some(change) = change {
        let _ = changes.send(change);
    }
}

#[derive(Clone, Copy)]
enum BucketKind {
    Config,
    LatticeData,
}

fn apply_entry(
    kind: BucketKind,
    key: &str,
    value: Option<&[u8]>,
    caches: &RwLock<Caches>,
    changes: &broadcast::Sender<StoreChange>,
) {
    match kind {
        BucketKind::Config => {
            let values = value.and_then(|v| serde_json::from_slice::<ConfigMap>(v).ok());
            apply(caches, changes, Applied::Config(key.to_string(), values));
        }
        BucketKind::LatticeData => {
            if !key.starts_with(LINK_KEY_PREFIX) {
                return;
            }
            match value {
                Some(v) => match serde_json::from_slice::<Link>(v) {
                    Ok(link) => apply(
                        caches,
                        changes,
                        Applied::Link(link.key(), Some(Box::new(link))),
                    ),
                    Err(e) => tracing::warn!(key, error = %e, "ignoring a malformed link in KV"),
                },
                None => {
                    // The key alone cannot be decoded back; drop whichever cached link maps to it.
                    let found = {
                        let guard = match caches.read() {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                        guard.links.by_storage_key.get(key).cloned()
                    };
                    if let Some(k) = found {
                        apply(caches, changes, Applied::Link(k, None));
                    }
                }
            }
        }
    }
}

/// Opens the buckets when they were not reachable at start-up (pausing longer after each
/// failure, up to 5 s), then keeps both caches in step with them for as long as the store
/// lives.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    js: jetstream::Context,
    placement: JetStreamPlacement,
    lattice: String,
    first: Option<Buckets>,
    slot: Arc<OnceLock<Buckets>>,
    caches: Arc<RwLock<Caches>>,
    changes: broadcast::Sender<StoreChange>,
    (configs_loaded, links_loaded): (watch::Sender<bool>, watch::Sender<bool>),
) {
    let buckets = match first {
        Some(buckets) => buckets,
        None => {
            let mut pause = Duration::from_millis(500);
            loop {
                match open_buckets(&js, &placement, &lattice).await {
                    Ok(buckets) => {
                        tracing::info!(
                            "reached the lattice's state in {}; following it again",
                            placement.describe()
                        );
                        break buckets;
                    }
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "lattice state still unreachable")
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    };
    let _ = slot.set(buckets.clone());
    tokio::join!(
        watch_bucket(
            buckets.config,
            caches.clone(),
            changes.clone(),
            BucketKind::Config,
            configs_loaded,
        ),
        watch_bucket(
            buckets.data,
            caches,
            changes,
            BucketKind::LatticeData,
            links_loaded,
        ),
    );
}

/// Keeps the cache of one bucket in step with KV: a watch of new changes, opened first, then a
/// snapshot of every live key, then each change as the watch delivers it; one consumer for as
/// long as the connection holds, however quiet the bucket. `loaded` turns true once the first
/// snapshot is in. When the watch breaks (NATS restarted), it starts over after a pause that
/// grows to 2 s.
async fn watch_bucket(
    store: kv::Store,
    caches: Arc<RwLock<Caches>>,
    changes: broadcast::Sender<StoreChange>,
    kind: BucketKind,
    loaded: watch::Sender<bool>,
) {
    const FIRST_PAUSE: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_PAUSE;
    loop {
        let started = tokio::time::Instant::now();
        match watch_once(&store, &caches, &changes, kind, &loaded).await {
            Ok(()) => tracing::debug!("KV watch ended; restarting it"),
            Err(e) => tracing::debug!(error = %e, "KV watch failed; retrying"),
        }
        // A watch that served for a while broke for a fresh reason: start the pauses over.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = FIRST_PAUSE;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn watch_once(
    store: &kv::Store,
    caches: &RwLock<Caches>,
    changes: &broadcast::Sender<StoreChange>,
    kind: BucketKind,
    loaded: &watch::Sender<bool>,
) -> anyhow::Result<()> {
    let before = cached_keys(kind, caches);
    // The watch of changes starts before the snapshot, so nothing written while the snapshot
    // is read is missed (a change seen by both is applied twice, in order: the last one
    // wins). It delivers only new changes (DeliverPolicy::New): async-nats ends a watch from a
    // revision at once when nothing is pending at its start, which made every idle host
    // re-read its buckets and create a consumer every 2 s.
    let mut watch = kv_call(store.watch_all()).await?;
    // Snapshot: every key, read one by one. The keys come from the stream's subject counts
    // (a stream-info request), not `Store::keys`: that creates an ordered consumer the server
    // keeps for 30 s after the listing, so every start and every restarted watch left two
    // consumers behind for half a minute. Deleted keys are listed too; `get` skips them.
    let keys: Vec<String> = kv_call(async {
        let filter = format!("{}>", store.prefix);
        let subjects = store.stream.info_with_subjects(&filter).await?;
        let subjects: Vec<_> = subjects.collect().await;
        let mut keys = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let (subject, _) = subject?;
            if let Some(key) = subject.strip_prefix(store.prefix.as_str()) {
                keys.push(key.to_string());
            }
        }
        Ok::<_, anyhow::Error>(keys)
    })
    .await?;
    let mut live = HashSet::new();
    for key in &keys {
        if let Some(value) = kv_call(store.get(key.clone())).await? {
            apply_entry(kind, key, Some(&value), caches, changes);
            live.insert(key.clone());
        }
    }
    finish_snapshot(kind, &before, &live, caches, changes);
    loaded.send_replace(true);
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
        apply_entry(kind, &entry.key, value, caches, changes);
    }
    Ok(())
}

/// The keys the cache of `kind` holds now.
fn cached_keys(kind: BucketKind, caches: &RwLock<Caches>) -> HashSet<String> {
    let guard = match caches.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match kind {
        BucketKind::Config => guard.configs.keys().cloned().collect(),
        BucketKind::LatticeData => guard.links.by_storage_key.keys().cloned().collect(),
    }
}

/// Drops cached entries that are not in KV any more (deleted while this host was not watching):
/// those the cache held `before` the snapshot that the snapshot did not find `live`.
fn finish_snapshot(
    kind: BucketKind,
    before: &HashSet<String>,
    live: &HashSet<String>,
    caches: &RwLock<Caches>,
    changes: &broadcast::Sender<StoreChange>,
) {
    let now = cached_keys(kind, caches);
    let stale: Vec<String> = before
        .iter()
        .filter(|k| !live.contains(*k) && now.contains(*k))
        .cloned()
        .collect();
    for key in stale {
        apply_entry(kind, &key, None, caches, changes);
    }
}
