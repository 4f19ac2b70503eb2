//! Durable state in one JetStream KV bucket per lattice (`TRELLIS_WADM_{lattice}`):
//!
//! - `model.{name}`: the model's [`ModelIndex`]: its versions in creation order, each naming
//!   the key of its manifest, and which is deployed; changed only by revision-checked updates
//!   so concurrent API servers never lose a write;
//! - `manifest.{name}.{id}`: one version's manifest as JSON, written before the index names it
//!   and never changed, removed after the index stops naming it;
//! - `status.{name}`: the last [`Status`] the leading reconciler computed;
//! - `lease`: the leader lease ([`Lease`]).
//!
//! Every value is one NATS message, and a server drops a connection that sends a message over
//! its `max_payload` (1 MiB by default). So each value is checked against
//! [`Store::value_limit`] before it is sent, and a model keeps at most
//! [`MAX_VERSIONS_PER_MODEL`] versions so its index stays small.
//!
//! Earlier releases kept every manifest inside `model.{name}`; such a model still reads, and
//! the next change to it moves each manifest to its own key.
//!
//! Why a lease rather than a work queue: planning needs the whole lattice at once (a provider
//! shared by two apps, spreads over the same hosts), so splitting work items between
//! processes would still need a global view and could double-schedule. One leader plans and
//! issues commands; every process serves the API (queue group) and tracks the lattice, so a
//! standby takes over within one lease TTL with a warm view.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use futures::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::api::types::Status;
use crate::model::Manifest;
use trellis_protocol::jetstream::JetStreamPlacement;

const BUCKET_DESCRIPTION: &str = "Trellis reconciler: models, statuses, leader lease";

/// Key prefix of model indexes.
pub const MODEL_PREFIX: &str = "model.";
/// Key prefix of stored manifests (`manifest.{name}.{id}`).
pub const MANIFEST_PREFIX: &str = "manifest.";
/// Key prefix of statuses.
pub const STATUS_PREFIX: &str = "status.";
/// Key of the leader lease.
pub const LEASE_KEY: &str = "lease";
/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// Most versions one model keeps; a put beyond it is refused until old versions are deleted.
pub const MAX_VERSIONS_PER_MODEL: usize = 500;
/// Used when the server did not announce its `max_payload` (NATS' default).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Bytes of each message left for headers and reply envelopes.
pub const PAYLOAD_HEADROOM: usize = 4096;

/// The bucket of `lattice` (characters KV bucket names do not allow become `_`).
pub fn bucket_name(lattice: &str) -> String {
    let safe: String = lattice
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("TRELLIS_WADM_{safe}")
}

/// A unique, sortable id: a ULID (48-bit milliseconds then 80 random bits, Crockford base32).
pub fn ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let time = u128::from(unix_ms() & 0xFFFF_FFFF_FFFF);
    let random: u128 = rand::thread_rng().gen::<u128>() & ((1u128 << 80) - 1);
    let value = (time << 80) | random;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// The most bytes one value (or reply) may have when the server carries `max_payload` bytes
/// per message: [`PAYLOAD_HEADROOM`] less, or half for tiny payload limits.
pub fn value_limit_for(max_payload: usize) -> usize {
    max_payload - PAYLOAD_HEADROOM.min(max_payload / 2)
}

/// One version in a [`ModelIndex`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The version string (immutable once stored).
    pub version: String,
    /// The id of its manifest key, `manifest.{name}.{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The manifest itself, in models stored by earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
}

/// The value of `model.{name}`: versions and which is deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIndex {
    /// The model name.
    pub name: String,
    /// Versions in creation order.
    pub versions: Vec<IndexEntry>,
    /// The deployed version, if any.
    #[serde(default)]
    pub deployed_version: Option<String>,
}

impl ModelIndex {
    /// An index without versions.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            versions: Vec::new(),
            deployed_version: None,
        }
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&IndexEntry> {
        self.versions.last()
    }

    /// Version `v`, or the newest for `None`, `""` or `latest`.
    pub fn version(&self, v: Option<&str>) -> Option<&IndexEntry> {
        match v {
            None | Some("latest") | Some("") => self.latest(),
            Some(v) => self.versions.iter().find(|s| s.version == v),
        }
    }

    /// True when version `v` is stored.
    pub fn has(&self, v: &str) -> bool {
        self.versions.iter().any(|s| s.version == v)
    }

    fn manifest_ids(&self) -> BTreeSet<&str> {
        self.versions
            .iter()
            .filter_map(|v| v.id.as_deref())
            .collect()
    }
}

/// One stored version with its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// The version string (immutable once stored).
    pub version: String,
    /// The id of its manifest key (`None` for a manifest still inside an old-layout index).
    #[serde(default)]
    pub id: Option<String>,
    /// The manifest, with its `version` annotation set.
    pub manifest: Manifest,
}

/// A model with every version's manifest, as the reconciler plans with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredModel {
    /// The model name.
    pub name: String,
    /// Versions in creation order.
    pub versions: Vec<StoredVersion>,
    /// The deployed version, if any.
    #[serde(default)]
    pub deployed_version: Option<String>,
}

impl StoredModel {
    /// The newest version.
    pub fn latest(&self) -> Option<&StoredVersion> {
        self.versions.last()
    }

    /// Version `v`, or the newest for `None` or `latest`.
    pub fn version(&self, v: Option<&str>) -> Option<&StoredVersion> {
        match v {
            None | Some("latest") | Some("") => self.latest(),
            Some(v) => self.versions.iter().find(|s| s.version == v),
        }
    }

    /// The deployed manifest.
    pub fn deployed(&self) -> Option<&Manifest> {
        let v = self.deployed_version.as_deref()?;
        self.versions
            .iter()
            .find(|s| s.version == v)
            .map(|s| &s.manifest)
    }
}

/// The leader lease's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holding process.
    pub holder: String,
    /// Unix milliseconds after which others may take it.
    pub expires_at_ms: u64,
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A change to a model made by [`Store::update_model`].
pub enum ModelChange {
    /// Store this index (its new versions' manifests must already be stored).
    Put(ModelIndex),
    /// Delete the model.
    Delete,
    /// Leave it as it is.
    Keep,
}

/// Why a value cannot be stored: it is larger than one NATS message may be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is {size} bytes as stored JSON, over the {limit} bytes one stored value may have \
     (the NATS server's max_payload is {max_payload} bytes): make it smaller, or raise \
     max_payload in the nats-server configuration"
)]
pub struct TooLargeToStore {
    /// What was to be stored.
    pub what: String,
    /// Its size.
    pub size: usize,
    /// [`Store::value_limit`].
    pub limit: usize,
    /// The server's `max_payload`.
    pub max_payload: usize,
}

/// Handle on the bucket.
#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
    client: async_nats::Client,
}

impl Store {
    /// Opens (creating if needed, with `placement`'s replicas) the bucket of `lattice` in
    /// `placement`'s JetStream domain.
    pub async fn open(
        client: &async_nats::Client,
        lattice: &str,
        placement: &JetStreamPlacement,
    ) -> Result<Self> {
        let js = placement.context(client);
        let kv = placement
            .open_or_create_kv(
                &js,
                kv::Config {
                    bucket: bucket_name(lattice),
                    description: BUCKET_DESCRIPTION.into(),
                    history: 1,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Self {
            kv,
            client: client.clone(),
        })
    }

    /// The underlying KV store.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// The server's `max_payload` (as it announced on the current connection).
    pub fn max_payload(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        }
    }

    /// The most bytes one stored value (or API reply) may have.
    pub fn value_limit(&self) -> usize {
        value_limit_for(self.max_payload())
    }

    /// `Err` when `size` bytes of `what` cannot be stored.
    pub fn check_size(&self, what: &str, size: usize) -> Result<(), TooLargeToStore> {
        let limit = self.value_limit();
        if size > limit {
            return Err(TooLargeToStore {
                what: what.to_string(),
                size,
                limit,
                max_payload: self.max_payload(),
            });
        }
        Ok(())
    }

    /// Reads a model's index and its revision (`None` when absent).
    pub async fn get_index(&self, name: &str) -> Result<Option<(ModelIndex, u64)>> {
        let entry = self
            .kv
            .entry(format!("{MODEL_PREFIX}{name}"))
            .await
            .with_context(|| format!("reading model {name}"))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((decode_index(name, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Stores the manifest of a new version of `name` (JSON, at most [`Self::value_limit`]
    /// bytes) under a fresh id and returns the id. The index does not name it yet.
    pub async fn put_manifest(&self, name: &str, version: &str, json: Vec<u8>) -> Result<String> {
        self.check_size(&format!("{name} version {version}"), json.len())?;
        let id = ulid();
        self.kv
            .put(manifest_key(name, &id), json.into())
            .await
            .with_context(|| format!("storing {name} version {version}"))?;
        Ok(id)
    }

    /// Removes stored manifests of `name` (best effort: a leftover costs space, not
    /// correctness, as no index names it).
    pub async fn remove_manifests(&self, name: &str, ids: impl IntoIterator<Item = &str>) {
        for id in ids {
            let subject = format!("{}{}", self.kv.prefix, manifest_key(name, id));
            if let Err(e) = self.kv.stream.purge().filter(subject).await {
                tracing::debug!(model = name, id, error = %e, "cannot remove a stored manifest");
            }
        }
    }

    /// The manifest of `entry`, a version of `name`; `None` when it was removed meanwhile.
    pub async fn get_manifest(&self, name: &str, entry: &IndexEntry) -> Result<Option<Manifest>> {
        if let Some(m) = &entry.manifest {
            return Ok(Some(m.clone()));
        }
        let Some(id) = &entry.id else {
            return Ok(None);
        };
        let value = self
            .kv
            .get(manifest_key(name, id))
            .await
            .with_context(|| format!("reading {name} version {}", entry.version))?;
        match value {
            Some(v) if !v.is_empty() => {
                Ok(Some(serde_json::from_slice(&v).with_context(|| {
                    format!("decoding stored {name} version {}", entry.version)
                })?))
            }
            _ => Ok(None),
        }
    }

    /// Every version's manifest of `index`, reusing those `known` already holds (stored
    /// manifests never change). A version whose manifest vanished (deleted meanwhile) is left
    /// out.
    pub async fn load_model(
        &self,
        index: ModelIndex,
        known: Option<&StoredModel>,
    ) -> Result<StoredModel> {
        let cached: HashMap<&str, &Manifest> = known
            .into_iter()
            .flat_map(|m| m.versions.iter())
            .filter_map(|v| Some((v.id.as_deref()?, &v.manifest)))
            .collect();
        let mut versions = Vec::with_capacity(index.versions.len());
        for entry in &index.versions {
            let cached = entry.id.as_deref().and_then(|id| cached.get(id));
            let manifest = match cached {
                Some(m) => Some((*m).clone()),
                None => self.get_manifest(&index.name, entry).await?,
            };
            match manifest {
                Some(manifest) => versions.push(StoredVersion {
                    version: entry.version.clone(),
                    id: entry.id.clone(),
                    manifest,
                }),
                None => {
                    tracing::debug!(model = %index.name, version = %entry.version, "stored manifest vanished")
                }
            }
        }
        Ok(StoredModel {
            name: index.name,
            versions,
            deployed_version: index.deployed_version,
        })
    }

    /// Names of every stored model, sorted.
    pub async fn model_names(&self) -> Result<Vec<String>> {
        let mut keys = self.kv.keys().await.context("listing models")?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.context("listing models")?;
            if let Some(name) = key.strip_prefix(MODEL_PREFIX) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Reads every model with every version's manifest.
    pub async fn list_models(&self) -> Result<Vec<StoredModel>> {
        let mut out = Vec::new();
        for name in self.model_names().await? {
            if let Some((index, _)) = self.get_index(&name).await? {
                out.push(self.load_model(index, None).await?);
            }
        }
        Ok(out)
    }

    /// Read-modify-write of model `name`'s index, retried on a concurrent write. `change` sees
    /// the current index and returns what to do plus a result to hand back. Manifests the
    /// index stops naming are removed afterwards; manifests still inside an old-layout index
    /// move to their own keys.
    pub async fn update_model<T>(
        &self,
        name: &str,
        mut change: impl FnMut(Option<&ModelIndex>) -> (ModelChange, T),
    ) -> Result<T> {
        let key = format!("{MODEL_PREFIX}{name}");
        for _ in 0..10 {
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .with_context(|| format!("reading model {name}"))?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (Some(decode_index(name, &e.value)?), Some(e.revision))
                }
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let (what, result) = change(current.as_ref());
            let mut moved = Vec::new();
            let outcome = match what {
                ModelChange::Keep => return Ok(result),
                ModelChange::Put(mut index) => {
                    moved = self.move_inline_manifests(&mut index).await?;
                    let bytes = serde_json::to_vec(&index).context("encoding model")?;
                    self.check_size(&format!("the index of model {name}"), bytes.len())?;
                    let written = match revision {
                        Some(rev) => self
                            .kv
                            .update(&key, bytes.into(), rev)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => self
                            .kv
                            .create(&key, bytes.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    };
                    written.map(|()| index)
                }
                ModelChange::Delete => {
                    if current.is_none() {
                        return Ok(result);
                    }
                    self.kv
                        .delete_expect_revision(&key, revision)
                        .await
                        .map(|()| ModelIndex::new(name))
                        .map_err(|e| e.to_string())
                }
            };
            match outcome {
                Ok(after) => {
                    if let Some(before) = &current {
                        let keep = after.manifest_ids();
                        let gone: Vec<&str> = before
                            .manifest_ids()
                            .into_iter()
                            .filter(|id| !keep.contains(id))
                            .collect();
                        self.remove_manifests(name, gone).await;
                    }
                    return Ok(result);
                }
                Err(e) => {
                    self.remove_manifests(name, moved.iter().map(String::as_str))
                        .await;
                    tracing::debug!(model = name, error = %e, "concurrent model update; retrying")
                }
            }
        }
        anyhow::bail!("model {name} is being changed concurrently; try again")
    }

    /// Moves manifests held inside `index` (the old layout) to their own keys; returns their
    /// new ids.
    async fn move_inline_manifests(&self, index: &mut ModelIndex) -> Result<Vec<String>> {
        let mut moved = Vec::new();
        for entry in &mut index.versions {
            let Some(manifest) = entry.manifest.take() else {
                continue;
            };
            let json = serde_json::to_vec(&manifest).context("encoding manifest")?;
            let id = self.put_manifest(&index.name, &entry.version, json).await?;
            entry.id = Some(id.clone());
            moved.push(id);
        }
        Ok(moved)
    }

    /// Reads the stored status of `name`.
    pub async fn get_status(&self, name: &str) -> Result<Option<Status>> {
        let value = self
            .kv
            .get(format!("{STATUS_PREFIX}{name}"))
            .await
            .with_context(|| format!("reading status of {name}"))?;
        match value {
            Some(v) if !v.is_empty() => Ok(Some(
                serde_json::from_slice(&v).with_context(|| format!("decoding status of {name}"))?,
            )),
            _ => Ok(None),
        }
    }

    /// Stores the status of `name`.
    pub async fn put_status(&self, name: &str, status: &Status) -> Result<()> {
        let bytes = serde_json::to_vec(status).context("encoding status")?;
        self.check_size(&format!("the status of {name}"), bytes.len())?;
        self.kv
            .put(format!("{STATUS_PREFIX}{name}"), bytes.into())
            .await
            .with_context(|| format!("storing status of {name}"))?;
        Ok(())
    }

    /// Deletes the status of `name`.
    pub async fn delete_status(&self, name: &str) -> Result<()> {
        self.kv
            .delete(format!("{STATUS_PREFIX}{name}"))
            .await
            .with_context(|| format!("deleting status of {name}"))
    }

    /// Takes or renews the leader lease for `holder`. Returns whether `holder` leads now.
    pub async fn acquire_lease(&self, holder: &str) -> Result<bool> {
        let now = unix_ms();
        let lease = Lease {
            holder: holder.to_string(),
            expires_at_ms: now + u64::try_from(LEASE_TTL.as_millis()).unwrap_or(5000),
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&lease).context("encoding lease")?.into();
        let entry = self.kv.entry(LEASE_KEY).await.context("reading lease")?;
        let result = match entry {
            None => self
                .kv
                .create(LEASE_KEY, bytes)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Some(e) => {
                let current = (e.operation == kv::Operation::Put)
                    .then(|| serde_json::from_slice::<Lease>(&e.value).ok())
                    .flatten();
                let free = match &current {
                    None => true,
                    Some(l) => l.holder == holder || l.expires_at_ms < now,
                };
                if !free {
                    return Ok(false);
                }
                self.kv
                    .update(LEASE_KEY, bytes, e.revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        Ok(result.is_ok())
    }

    /// Gives up the lease if `holder` has it, so a standby takes over at once.
    pub async fn release_lease(&self, holder: &str) -> Result<()> {
        if let Some(e) = self.kv.entry(LEASE_KEY).await.context("reading lease")? {
            if e.operation == kv::Operation::Put
                && serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| l.holder == holder)
            {
                self.kv
                    .delete_expect_revision(LEASE_KEY, Some(e.revision))
                    .await
                    .context("releasing lease")?;
            }
        }
        Ok(())
    }
}

/// The key of a stored manifest.
fn manifest_key(name: &str, id: &str) -> String {
    format!("{MANIFEST_PREFIX}{name}.{id}")
}

fn decode_index(name: &str, value: &[u8]) -> Result<ModelIndex> {
    serde_json::from_slice(value).with_context(|| format!("decoding stored model {name}"))
}
