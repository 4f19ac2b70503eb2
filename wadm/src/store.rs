//! Durable state in one JetStream KV bucket per lattice (`TRELLIS_WADM_{lattice}`):
//!
//! - `model.{name}`: a [`StoredModel`] (all versions, in creation order, and which is deployed),
//!   changed only by revision-checked updates so concurrent API servers never lose a write;
//! - `status.{name}`: the last [`Status`] the leading reconciler computed;
//! - `lease`: the leader lease ([`Lease`]).
//!
//! Why a lease rather than a work queue: planning needs the whole lattice at once (a provider
//! shared by two apps, spreads over the same hosts), so splitting work items between
//! processes would still need a global view and could double-schedule. One leader plans and
//! issues commands; every process serves the API (queue group) and tracks the lattice, so a
//! standby takes over within one lease TTL with a warm view.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::api::types::Status;
use crate::model::Manifest;

const BUCKET_DESCRIPTION: &str = "Trellis reconciler: models, statuses, leader lease";

/// Key prefix of models.
pub const MODEL_PREFIX: &str = "model.";
/// Key prefix of statuses.
pub const STATUS_PREFIX: &str = "status.";
/// Key of the leader lease.
pub const LEASE_KEY: &str = "lease";
/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

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

/// One stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// The version string (immutable once stored).
    pub version: String,
    /// The manifest, with its `version` annotation set.
    pub manifest: Manifest,
}

/// A model: every version and which is deployed.
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
    /// Store this.
    Put(StoredModel),
    /// Delete the model.
    Delete,
    /// Leave it as it is.
    Keep,
}

/// Handle on the bucket.
#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
}

impl Store {
    /// Opens (creating if needed) the bucket of `lattice`.
    pub async fn open(js: &jetstream::Context, lattice: &str) -> Result<Self> {
        let bucket = bucket_name(lattice);
        if let Ok(kv) = js.get_key_value(&bucket).await {
            return Ok(Self { kv });
        }
        let created = js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: BUCKET_DESCRIPTION.into(),
                history: 1,
                ..Default::default()
            })
            .await;
        if let Ok(kv) = created {
            return Ok(Self { kv });
        }
        // `create_key_value` first reads the account info, which async-nats 0.51 cannot parse
        // from nats-server 2.9 (Debian's): it lacks `reserved_memory`. Creating the backing
        // stream with the KV settings directly works on every 2.9+ server.
        let stream = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(BUCKET_DESCRIPTION.into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        if let Err(e) = js.create_stream(stream).await {
            tracing::debug!(error = %e, "creating the KV stream (another reconciler may have)");
        }
        let kv = js
            .get_key_value(&bucket)
            .await
            .with_context(|| format!("opening the KV bucket {bucket}"))?;
        Ok(Self { kv })
    }

    /// The underlying KV store.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// Reads a model and its revision (`None` when absent).
    pub async fn get_model(&self, name: &str) -> Result<Option<(StoredModel, u64)>> {
        let entry = self
            .kv
            .entry(format!("{MODEL_PREFIX}{name}"))
            .await
            .with_context(|| format!("reading model {name}"))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let model: StoredModel = serde_json::from_slice(&e.value)
                    .with_context(|| format!("decoding stored model {name}"))?;
                Ok(Some((model, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Reads every model.
    pub async fn list_models(&self) -> Result<Vec<StoredModel>> {
        let mut keys = self.kv.keys().await.context("listing models")?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.context("listing models")?;
            if let Some(name) = key.strip_prefix(MODEL_PREFIX) {
                names.push(name.to_string());
            }
        }
        let mut out = Vec::new();
        for name in names {
            if let Some((m, _)) = self.get_model(&name).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Read-modify-write of model `name`, retried on a concurrent write. `change` sees the
    /// current model and returns what to do plus a result to hand back.
    pub async fn update_model<T>(
        &self,
        name: &str,
        mut change: impl FnMut(Option<&StoredModel>) -> (ModelChange, T),
    ) -> Result<T> {
        let key = format!("{MODEL_PREFIX}{name}");
        for _ in 0..10 {
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .with_context(|| format!("reading model {name}"))?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    Some(
                        serde_json::from_slice::<StoredModel>(&e.value)
                            .with_context(|| format!("decoding stored model {name}"))?,
                    ),
                    Some(e.revision),
                ),
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let (what, result) = change(current.as_ref());
            let outcome = match what {
                ModelChange::Keep => return Ok(result),
                ModelChange::Put(model) => {
                    let bytes = serde_json::to_vec(&model).context("encoding model")?;
                    match revision {
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
                    }
                }
                ModelChange::Delete => {
                    if current.is_none() {
                        return Ok(result);
                    }
                    self.kv
                        .delete_expect_revision(&key, revision)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            match outcome {
                Ok(()) => return Ok(result),
                Err(e) => {
                    tracing::debug!(model = name, error = %e, "concurrent model update; retrying")
                }
            }
        }
        anyhow::bail!("model {name} is being changed concurrently; try again")
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
