//! The wadm API over NATS: `wadm.api.{lattice}.model.{op}[.{name}]`, served in a queue group so
//! several reconcilers can share a lattice. Handlers only touch the KV store; the reconciler
//! acts on what they record.
//!
//! Bounds: a manifest is checked against [`ManifestLimits`] before parsing, then parsed on a
//! blocking thread (at most [`PARSE_CONCURRENCY`] at once) within a deadline, so a hostile
//! manifest never stalls other requests or the reconciler. No reply exceeds the server's
//! `max_payload`: lists that would are cut into pages (see [`types::PageRequest`]).

pub mod types;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::limits::{BoundsError, ManifestLimits, PARSE_DEADLINE};
use crate::model::{
    parse_manifest_with, Manifest, ManifestError, ParsedManifest, VERSION_ANNOTATION,
};
use crate::store::{IndexEntry, ModelChange, ModelIndex, Store, MAX_VERSIONS_PER_MODEL};
use crate::validation::{is_valid_app_name, shared_component_problems, Severity};
use types::*;

/// How many manifests are parsed at once, each on a blocking thread. A parse that outlives
/// its deadline keeps its slot until it ends, so abandoned parses cannot pile up.
pub const PARSE_CONCURRENCY: usize = 2;

/// Bytes of a list reply kept for its envelope (result, message, cursor).
const ENVELOPE_RESERVE: usize = 2048;

/// A unique, sortable version: a ULID (48-bit milliseconds then 80 random bits, Crockford
/// base32).
pub fn generate_version() -> String {
    crate::store::ulid()
}

/// Serves the API of one lattice.
#[derive(Clone)]
pub struct ApiServer {
    store: Store,
    lattice: String,
    limits: ManifestLimits,
    parse_deadline: Duration,
    parsers: Arc<Semaphore>,
}

fn json(value: &impl Serialize) -> Bytes {
    serde_json::to_vec(value)
        .unwrap_or_else(|e| {
            format!(r#"{{"result":"error","message":"cannot encode reply: {e}"}}"#).into_bytes()
        })
        .into()
}

fn version_request(payload: &[u8]) -> Result<VersionRequest, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(VersionRequest::default());
    }
    serde_json::from_slice(payload).map_err(|e| format!("invalid request body: {e}"))
}

/// The page a list request asks for. Lenient: wadm clients send nothing, `{}` or other
/// bodies, and all of those mean the first page.
pub(crate) fn page_request(payload: &[u8]) -> PageRequest {
    serde_json::from_slice(payload).unwrap_or_default()
}

fn put_error(message: String, name: String) -> Bytes {
    json(&PutModelResponse {
        result: PutResult::Error,
        total_versions: 0,
        current_version: String::new(),
        message,
        name,
    })
}

/// The items of one reply: as many as fit in a byte budget.
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    used: usize,
    budget: usize,
}

impl<T: Serialize> Page<T> {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            items: Vec::new(),
            used: ENVELOPE_RESERVE,
            budget,
        }
    }

    /// Adds `item` when it fits; gives it back when it does not.
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        let size = serde_json::to_vec(&item).map_or(usize::MAX, |v| v.len() + 1);
        if self.used.saturating_add(size) > self.budget {
            return Err(item);
        }
        self.used += size;
        self.items.push(item);
        Ok(())
    }

    /// The reply message: the count, and when the page is cut, how to ask for the rest.
    pub(crate) fn message(&self, what: &str, total: usize, next: Option<&str>) -> String {
        match next {
            None => format!("{} {what}", self.items.len()),
            Some(last) => format!(
                "{} of {total} {what}: one reply carries at most {} bytes (the NATS server's \
                 max_payload less headroom); ask again with {{\"after\":\"{last}\"}} for the next page",
                self.items.len(),
                self.budget
            ),
        }
    }
}

impl ApiServer {
    /// A server on `store` for `lattice`, with the default [`ManifestLimits`].
    pub fn new(store: Store, lattice: impl Into<String>) -> Self {
        Self {
            store,
            lattice: lattice.into(),
            limits: ManifestLimits::default(),
            parse_deadline: PARSE_DEADLINE,
            parsers: Arc::new(Semaphore::new(PARSE_CONCURRENCY)),
        }
    }

    /// Uses `limits` for manifests put from now on.
    pub fn with_limits(mut self, limits: ManifestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Answers requests until the subscription ends; up to 16 at a time.
    pub async fn serve(&self, client: async_nats::Client) -> Result<()> {
        let subject = format!("{}.model.>", api_prefix(&self.lattice));
        let sub = client
            .queue_subscribe(subject.clone(), API_QUEUE_GROUP.to_string())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to {subject}: {e}"))?;
        sub.for_each_concurrent(16, |msg| {
            let client = client.clone();
            async move {
                let Some(reply) = msg.reply.clone() else {
                    return;
                };
                let mut body = self.handle(&msg.subject, &msg.payload).await;
                let max_payload = self.store.max_payload();
                if body.len() > max_payload {
                    body = json(&ErrorResponse::new(format!(
                        "the reply would be {} bytes, over the NATS server's max_payload of \
                         {max_payload} bytes; this is a bug in the reconciler, please report it",
                        body.len()
                    )));
                }
                if let Err(e) = client.publish(reply, body).await {
                    tracing::warn!(error = %e, "cannot send API reply");
                }
            }
        })
        .await;
        Ok(())
    }

    /// Handles one request on `subject`; returns the JSON reply.
    pub async fn handle(&self, subject: &str, payload: &[u8]) -> Bytes {
        let prefix = format!("{}.model.", api_prefix(&self.lattice));
        let Some(rest) = subject.strip_prefix(&prefix) else {
            return json(&ErrorResponse::new(format!("unknown subject {subject}")));
        };
        let (op, name) = match rest.split_once('.') {
            Some((op, name)) => (op, Some(name)),
            None => (rest, None),
        };
        if let Some(name) = name {
            if !is_valid_app_name(name) {
                return json(&ErrorResponse::new(format!(
                    "`{name}` is not a valid model name"
                )));
            }
        }
        let result = match (op, name) {
            ("put", _) => self.put(payload).await,
            ("get", Some(name)) => self.get(name, payload).await,
            ("get" | "list", None) => self.list(payload).await,
            ("versions", Some(name)) => self.versions(name, payload).await,
            ("del", Some(name)) => self.delete(name, payload).await,
            ("deploy", Some(name)) => self.deploy(name, payload).await,
            ("undeploy", Some(name)) => self.undeploy(name).await,
            ("status", Some(name)) => self.status(name).await,
            _ => Ok(json(&ErrorResponse::new(format!(
                "unknown operation `{rest}`: use put, get, list, versions, del, deploy, undeploy or status"
            )))),
        };
        result.unwrap_or_else(|e| json(&ErrorResponse::new(format!("{e:#}"))))
    }

    /// Parses and validates `payload` on a blocking thread within the parse deadline.
    async fn parse(&self, payload: &[u8]) -> Result<ParsedManifest, String> {
        let deadline = tokio::time::Instant::now() + self.parse_deadline;
        let secs = self.parse_deadline.as_secs_f64();
        if payload.len() > self.limits.max_bytes {
            // Refused without copying it or waiting for a parser.
            let e = BoundsError::TooLarge {
                size: payload.len(),
                limit: self.limits.max_bytes,
            };
            return Err(ManifestError::from(e).to_string());
        }
        let permit =
            match tokio::time::timeout_at(deadline, self.parsers.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err("the reconciler is shutting down".to_string()),
                Err(_) => {
                    return Err(format!(
                        "the reconciler is still parsing other manifests after {secs} s; try again"
                    ))
                }
            };
        let input = payload.to_vec();
        let limits = self.limits;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            parse_manifest_with(&input, &limits)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(parsed)) => parsed.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("parsing the manifest failed: {e}")),
            Err(_) => Err(format!(
                "invalid manifest: parsing it took longer than {secs} s and was abandoned; \
                 simplify it (fewer nested collections, anchors and aliases)"
            )),
        }
    }

    async fn put(&self, payload: &[u8]) -> Result<Bytes> {
        let parsed = match self.parse(payload).await {
            Ok(p) => p,
            Err(message) => return Ok(put_error(message, String::new())),
        };
        let mut warnings: Vec<String> = parsed
            .all_warnings()
            .filter(|d| d.severity == Severity::Warning)
            .map(ToString::to_string)
            .collect();
        let mut manifest = parsed.manifest;
        let name = manifest.name().to_string();
        let version = match manifest.version() {
            Some(v) => v.to_string(),
            None => {
                let v = generate_version();
                manifest
                    .metadata
                    .annotations
                    .insert(VERSION_ANNOTATION.to_string(), v.clone());
                v
            }
        };
        // As in wadm, missing shared components do not refuse a put (only a deploy), but the
        // reply says which.
        if let Some(note) = self.shared_note(&manifest).await {
            warnings.push(note);
        }
        // The manifest goes to its own key first; the index names it only once it is stored.
        let manifest_json = serde_json::to_vec(&manifest)?;
        let id = match self
            .store
            .put_manifest(&name, &version, manifest_json)
            .await
        {
            Ok(id) => id,
            Err(e) => return Ok(put_error(format!("{e:#}"), name)),
        };
        let response = self
            .store
            .update_model(&name, |current| {
                let mut index = current.cloned().unwrap_or_else(|| ModelIndex::new(&name));
                let refuse = |message: String| {
                    (
                        ModelChange::Keep,
                        PutModelResponse {
                            result: PutResult::Error,
                            total_versions: index.versions.len(),
                            current_version: version.clone(),
                            message,
                            name: name.clone(),
                        },
                    )
                };
                if index.has(&version) {
                    return refuse(format!(
                        "version {version} of {name} already exists; versions are immutable, put a new version"
                    ));
                }
                if index.versions.len() >= MAX_VERSIONS_PER_MODEL {
                    return refuse(format!(
                        "{name} already has {} versions, the most one model keeps; delete old \
                         ones (`trellis app delete {name} --version V`, or model.del.{name} with \
                         {{\"version\":\"V\"}}) and put again",
                        index.versions.len()
                    ));
                }
                index.versions.push(IndexEntry {
                    version: version.clone(),
                    id: Some(id.clone()),
                    manifest: None,
                });
                let created = current.is_none();
                let mut message = format!("stored {name} version {version}");
                if !warnings.is_empty() {
                    message.push_str("; ");
                    message.push_str(&warnings.join("; "));
                }
                let response = PutModelResponse {
                    result: if created {
                        PutResult::Created
                    } else {
                        PutResult::NewVersion
                    },
                    total_versions: index.versions.len(),
                    current_version: version.clone(),
                    message,
                    name: name.clone(),
                };
                (ModelChange::Put(index), response)
            })
            .await;
        match response {
            Ok(response) => {
                if response.result == PutResult::Error {
                    self.store.remove_manifests(&name, [id.as_str()]).await;
                }
                Ok(json(&response))
            }
            Err(e) => {
                self.store.remove_manifests(&name, [id.as_str()]).await;
                Ok(put_error(format!("{e:#}"), name))
            }
        }
    }

    async fn get(&self, name: &str, payload: &[u8]) -> Result<Bytes> {
        let req = match version_request(payload) {
            Ok(r) => r,
            Err(e) => return Ok(json(&ErrorResponse::new(e))),
        };
        let not_found = |message: String| {
            json(&GetModelResponse {
                result: GetResult::NotFound,
                message,
                manifest: None,
            })
        };
        let Some((index, _)) = self.store.get_index(name).await? else {
            return Ok(not_found(format!("no model named {name}")));
        };
        let Some(entry) = index.version(req.version.as_deref()) else {
            return Ok(not_found(format!(
                "{name} has no version {}",
                req.version.unwrap_or_default()
            )));
        };
        Ok(match self.store.get_manifest(name, entry).await? {
            Some(manifest) => json(&GetModelResponse {
                result: GetResult::Success,
                message: format!("{name} version {}", entry.version),
                manifest: Some(serde_json::to_value(&manifest)?),
            }),
            None => not_found(format!(
                "{name} version {} was deleted meanwhile",
                entry.version
            )),
        })
    }

    async fn list(&self, payload: &[u8]) -> Result<Bytes> {
        let after = page_request(payload).after;
        let names = self.store.model_names().await?;
        let total = names.len();
        let start = match &after {
            Some(after) => names.partition_point(|n| n <= after),
            None => 0,
        };
        let mut page = Page::new(self.store.value_limit());
        let mut next = None;
        for name in &names[start..] {
            let Some((index, _)) = self.store.get_index(name).await? else {
                continue;
            };
            let Some(latest) = index.latest() else {
                continue;
            };
            let description = self
                .store
                .get_manifest(name, latest)
                .await?
                .and_then(|m| m.description().map(str::to_string));
            let status = self.current_status(&index).await?;
            let summary = ModelSummary {
                name: name.clone(),
                version: latest.version.clone(),
                description,
                deployed_version: index.deployed_version.clone(),
                status_message: status.status.message.clone(),
                detailed_status: status,
            };
            let summary = match page.push(summary) {
                Ok(()) => continue,
                Err(summary) => summary,
            };
            // A summary too large for an empty page goes in without its details.
            if page.items.is_empty() && page.push(brief_summary(summary)).is_ok() {
                continue;
            }
            next = page.items.last().map(|s| s.name.clone());
            break;
        }
        Ok(json(&ListModelsResponse {
            result: GetResult::Success,
            message: page.message("models", total, next.as_deref()),
            truncated: next.is_some(),
            next,
            models: page.items,
        }))
    }

    async fn current_status(&self, index: &ModelIndex) -> Result<Status> {
        if index.deployed_version.is_none() {
            return Ok(Status::undeployed());
        }
        let deployed = index.deployed_version.clone().unwrap_or_default();
        // A status stored for another version (the previous deploy) says nothing of this one.
        Ok(self
            .store
            .get_status(&index.name)
            .await?
            .filter(|status| status.version.is_empty() || status.version == deployed)
            .unwrap_or_else(|| Status {
                status: StatusInfo::new(
                    StatusType::Reconciling,
                    format!("version {deployed} deployed; waiting for the reconciler's first pass"),
                ),
                scalers: Vec::new(),
                version: deployed,
            }))
    }

    async fn versions(&self, name: &str, payload: &[u8]) -> Result<Bytes> {
        let after = page_request(payload).after;
        let Some((index, _)) = self.store.get_index(name).await? else {
            return Ok(json(&VersionsResponse {
                result: GetResult::NotFound,
                message: format!("no model named {name}"),
                versions: Vec::new(),
                truncated: false,
                next: None,
            }));
        };
        let start = match &after {
            None => 0,
            Some(after) => match index.versions.iter().position(|v| &v.version == after) {
                Some(i) => i + 1,
                None => {
                    return Ok(json(&ErrorResponse::new(format!(
                        "{name} has no version {after} to list after"
                    ))))
                }
            },
        };
        let mut page = Page::new(self.store.value_limit());
        let mut next = None;
        for v in &index.versions[start..] {
            let info = VersionInfo {
                version: v.version.clone(),
                deployed: index.deployed_version.as_deref() == Some(v.version.as_str()),
            };
            if page.push(info).is_err() {
                next = page.items.last().map(|v| v.version.clone());
                break;
            }
        }
        Ok(json(&VersionsResponse {
            result: GetResult::Success,
            message: page.message("versions", index.versions.len(), next.as_deref()),
            truncated: next.is_some(),
            next,
            versions: page.items,
        }))
    }

    async fn delete(&self, name: &str, payload: &[u8]) -> Result<Bytes> {
        let req = match version_request(payload) {
            Ok(r) => r,
            Err(e) => return Ok(json(&ErrorResponse::new(e))),
        };
        let response = self
            .store
            .update_model(name, |current| {
                let noop = |message: String| DeleteModelResponse {
                    result: DeleteResult::Noop,
                    message,
                    undeploy: false,
                };
                let Some(index) = current else {
                    return (ModelChange::Keep, noop(format!("no model named {name}")));
                };
                match req.version.as_deref() {
                    None | Some("") => {
                        let undeploy = index.deployed_version.is_some();
                        (
                            ModelChange::Delete,
                            DeleteModelResponse {
                                result: DeleteResult::Deleted,
                                message: format!("deleted every version of {name}"),
                                undeploy,
                            },
                        )
                    }
                    Some(v) => {
                        if !index.has(v) {
                            return (
                                ModelChange::Keep,
                                noop(format!("{name} has no version {v}")),
                            );
                        }
                        let mut index = index.clone();
                        index.versions.retain(|s| s.version != v);
                        let undeploy = index.deployed_version.as_deref() == Some(v);
                        if undeploy {
                            index.deployed_version = None;
                        }
                        let change = if index.versions.is_empty() {
                            ModelChange::Delete
                        } else {
                            ModelChange::Put(index)
                        };
                        (
                            change,
                            DeleteModelResponse {
                                result: DeleteResult::Deleted,
                                message: format!("deleted {name} version {v}"),
                                undeploy,
                            },
                        )
                    }
                }
            })
            .await?;
        Ok(json(&response))
    }

    /// The deployed manifests of every model but `except`.
    async fn deployed_manifests(&self, except: &str) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for name in self.store.model_names().await? {
            if name == except {
                continue;
            }
            let Some((index, _)) = self.store.get_index(&name).await? else {
                continue;
            };
            let Some(deployed) = index.deployed_version.as_deref() else {
                continue;
            };
            if let Some(entry) = index.versions.iter().find(|v| v.version == deployed) {
                if let Some(manifest) = self.store.get_manifest(&name, entry).await? {
                    out.push(manifest);
                }
            }
        }
        Ok(out)
    }

    /// Why `manifest`'s components from shared applications cannot be resolved now; empty
    /// when it has none or all resolve. Reading the store may fail.
    async fn shared_problems(&self, manifest: &Manifest) -> Result<Vec<String>> {
        if manifest
            .spec
            .components
            .iter()
            .all(|c| c.properties.application.is_none())
        {
            return Ok(Vec::new());
        }
        let deployed = self.deployed_manifests(manifest.name()).await?;
        let deployed: Vec<&Manifest> = deployed.iter().collect();
        Ok(shared_component_problems(manifest, &deployed)
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// The put reply's note about shared components that are not deployed, if any.
    async fn shared_note(&self, manifest: &Manifest) -> Option<String> {
        match self.shared_problems(manifest).await {
            Ok(problems) if problems.is_empty() => None,
            Ok(problems) => Some(format!(
                "some shared components are not deployed, so a deploy is refused until they are: {}",
                problems.join("; ")
            )),
            Err(e) => Some(format!(
                "could not check the shared components against deployed applications: {e:#}"
            )),
        }
    }

    /// Refuses a deploy of `name` at `version` (as requested) whose components from shared
    /// applications are not deployed, as wadm does. `None` when the deploy may go on (or the
    /// model or version does not exist: the deploy itself says so).
    async fn refuse_unresolved_shared(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<DeployModelResponse>> {
        let Some((index, _)) = self.store.get_index(name).await? else {
            return Ok(None);
        };
        let Some(entry) = index.version(version) else {
            return Ok(None);
        };
        let Some(manifest) = self.store.get_manifest(name, entry).await? else {
            return Ok(None);
        };
        let problems = self.shared_problems(&manifest).await?;
        if problems.is_empty() {
            return Ok(None);
        }
        Ok(Some(DeployModelResponse {
            result: DeployResult::Error,
            message: format!(
                "cannot deploy {name} version {}: it contains shared components that are not \
                 deployed in other applications: {}",
                entry.version,
                problems.join("; ")
            ),
            name: name.to_string(),
            version: Some(entry.version.clone()),
        }))
    }

    async fn deploy(&self, name: &str, payload: &[u8]) -> Result<Bytes> {
        let req = match version_request(payload) {
            Ok(r) => r,
            Err(e) => return Ok(json(&ErrorResponse::new(e))),
        };
        if let Some(refused) = self
            .refuse_unresolved_shared(name, req.version.as_deref())
            .await?
        {
            return Ok(json(&refused));
        }
        let response = self
            .store
            .update_model(name, |current| {
                let not_found = |message: String| DeployModelResponse {
                    result: DeployResult::NotFound,
                    message,
                    name: name.to_string(),
                    version: None,
                };
                let Some(index) = current else {
                    return (
                        ModelChange::Keep,
                        not_found(format!("no model named {name}")),
                    );
                };
                let Some(version) = index.version(req.version.as_deref()) else {
                    return (
                        ModelChange::Keep,
                        not_found(format!(
                            "{name} has no version {}",
                            req.version.clone().unwrap_or_default()
                        )),
                    );
                };
                let version = version.version.clone();
                let mut index = index.clone();
                index.deployed_version = Some(version.clone());
                (
                    ModelChange::Put(index),
                    DeployModelResponse {
                        result: DeployResult::Acknowledged,
                        message: format!("deploying {name} version {version}"),
                        name: name.to_string(),
                        version: Some(version),
                    },
                )
            })
            .await?;
        Ok(json(&response))
    }

    async fn undeploy(&self, name: &str) -> Result<Bytes> {
        let response = self
            .store
            .update_model(name, |current| {
                let Some(index) = current else {
                    return (
                        ModelChange::Keep,
                        DeployModelResponse {
                            result: DeployResult::NotFound,
                            message: format!("no model named {name}"),
                            name: name.to_string(),
                            version: None,
                        },
                    );
                };
                let mut index = index.clone();
                let was = index.deployed_version.take();
                let response = DeployModelResponse {
                    result: DeployResult::Acknowledged,
                    message: match &was {
                        Some(v) => format!("undeploying {name} version {v}"),
                        None => format!("{name} was not deployed"),
                    },
                    name: name.to_string(),
                    version: None,
                };
                let change = if was.is_some() {
                    ModelChange::Put(index)
                } else {
                    ModelChange::Keep
                };
                (change, response)
            })
            .await?;
        Ok(json(&response))
    }

    async fn status(&self, name: &str) -> Result<Bytes> {
        let Some((index, _)) = self.store.get_index(name).await? else {
            return Ok(json(&StatusResponse {
                result: StatusResult::NotFound,
                message: format!("no model named {name}"),
                status: None,
            }));
        };
        let status = self.current_status(&index).await?;
        Ok(json(&StatusResponse {
            result: StatusResult::Ok,
            message: format!("status of {name}"),
            status: Some(status),
        }))
    }
}

/// `summary` without what makes it large (scaler details, a long description), saying so.
pub(crate) fn brief_summary(mut summary: ModelSummary) -> ModelSummary {
    const KEEP: usize = 200;
    if let Some(d) = &mut summary.description {
        truncate_chars(d, KEEP);
    }
    summary.detailed_status.scalers.clear();
    let status = &mut summary.detailed_status.status;
    truncate_chars(&mut status.message, KEEP);
    status.message.push_str(&format!(
        " (scaler details left out to fit one reply: ask model.status.{})",
        summary.name
    ));
    summary.status_message = status.message.clone();
    summary
}
