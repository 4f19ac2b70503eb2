//! The wadm API over NATS: `wadm.api.{lattice}.model.{op}[.{name}]`, served in a queue group so
//! several reconcilers can share a lattice. Handlers only touch the KV store; the reconciler
//! acts on what they record.

pub mod types;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;

use crate::model::{parse_manifest, VERSION_ANNOTATION};
use crate::store::{unix_ms, ModelChange, Store, StoredModel, StoredVersion};
use crate::validation::{is_valid_app_name, Severity};
use types::*;

/// A unique, sortable version: a ULID (48-bit milliseconds then 80 random bits, Crockford
/// base32).
pub fn generate_version() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let time = u128::from(unix_ms() & 0xFFFF_FFFF_FFFF);
    let random: u128 = rand::thread_rng().gen::<u128>() & ((1u128 << 80) - 1);
    let value = (time << 80) | random;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Serves the API of one lattice.
#[derive(Clone)]
pub struct ApiServer {
    store: Store,
    lattice: String,
}

fn json(value: &impl serde::Serialize) -> Bytes {
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

impl ApiServer {
    /// A server on `store` for `lattice`.
    pub fn new(store: Store, lattice: impl Into<String>) -> Self {
        Self {
            store,
            lattice: lattice.into(),
        }
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
                let body = self.handle(&msg.subject, &msg.payload).await;
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
            ("get" | "list", None) => self.list().await,
            ("versions", Some(name)) => self.versions(name).await,
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

    async fn put(&self, payload: &[u8]) -> Result<Bytes> {
        let parsed = match parse_manifest(payload) {
            Ok(p) => p,
            Err(e) => {
                return Ok(json(&PutModelResponse {
                    result: PutResult::Error,
                    total_versions: 0,
                    current_version: String::new(),
                    message: e.to_string(),
                    name: String::new(),
                }))
            }
        };
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
        let warnings: Vec<String> = parsed
            .warnings
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .map(ToString::to_string)
            .collect();
        let response = self
            .store
            .update_model(&name, |current| {
                let mut model = current.cloned().unwrap_or_else(|| StoredModel {
                    name: name.clone(),
                    versions: Vec::new(),
                    deployed_version: None,
                });
                if model.versions.iter().any(|v| v.version == version) {
                    return (
                        ModelChange::Keep,
                        PutModelResponse {
                            result: PutResult::Error,
                            total_versions: model.versions.len(),
                            current_version: version.clone(),
                            message: format!(
                                "version {version} of {name} already exists; versions are immutable, put a new version"
                            ),
                            name: name.clone(),
                        },
                    );
                }
                model.versions.push(StoredVersion {
                    version: version.clone(),
                    manifest: manifest.clone(),
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
                    total_versions: model.versions.len(),
                    current_version: version.clone(),
                    message,
                    name: name.clone(),
                };
                (ModelChange::Put(model), response)
            })
            .await?;
        Ok(json(&response))
    }

    async fn get(&self, name: &str, payload: &[u8]) -> Result<Bytes> {
        let req = match version_request(payload) {
            Ok(r) => r,
            Err(e) => return Ok(json(&ErrorResponse::new(e))),
        };
        let Some((model, _)) = self.store.get_model(name).await? else {
            return Ok(json(&GetModelResponse {
                result: GetResult::NotFound,
                message: format!("no model named {name}"),
                manifest: None,
            }));
        };
        Ok(match model.version(req.version.as_deref()) {
            Some(v) => json(&GetModelResponse {
                result: GetResult::Success,
                message: format!("{name} version {}", v.version),
                manifest: Some(serde_json::to_value(&v.manifest)?),
            }),
            None => json(&GetModelResponse {
                result: GetResult::NotFound,
                message: format!("{name} has no version {}", req.version.unwrap_or_default()),
                manifest: None,
            }),
        })
    }

    async fn list(&self) -> Result<Bytes> {
        let models = self.store.list_models().await?;
        let mut summaries = Vec::new();
        for model in models {
            let Some(latest) = model.latest() else {
                continue;
            };
            let status = self.current_status(&model).await?;
            summaries.push(ModelSummary {
                name: model.name.clone(),
                version: latest.version.clone(),
                description: latest.manifest.description().map(str::to_string),
                deployed_version: model.deployed_version.clone(),
                status_message: status.status.message.clone(),
                detailed_status: status,
            });
        }
        Ok(json(&ListModelsResponse {
            result: GetResult::Success,
            message: format!("{} models", summaries.len()),
            models: summaries,
        }))
    }

    async fn current_status(&self, model: &StoredModel) -> Result<Status> {
        if model.deployed_version.is_none() {
            return Ok(Status::undeployed());
        }
        Ok(self
            .store
            .get_status(&model.name)
            .await?
            .unwrap_or_else(|| Status {
                status: StatusInfo::new(
                    StatusType::Reconciling,
                    "deployed; waiting for the reconciler's first pass",
                ),
                scalers: Vec::new(),
            }))
    }

    async fn versions(&self, name: &str) -> Result<Bytes> {
        let Some((model, _)) = self.store.get_model(name).await? else {
            return Ok(json(&VersionsResponse {
                result: GetResult::NotFound,
                message: format!("no model named {name}"),
                versions: Vec::new(),
            }));
        };
        Ok(json(&VersionsResponse {
            result: GetResult::Success,
            message: format!("{} versions", model.versions.len()),
            versions: model
                .versions
                .iter()
                .map(|v| VersionInfo {
                    version: v.version.clone(),
                    deployed: model.deployed_version.as_deref() == Some(v.version.as_str()),
                })
                .collect(),
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
                let Some(model) = current else {
                    return (ModelChange::Keep, noop(format!("no model named {name}")));
                };
                match req.version.as_deref() {
                    None | Some("") => {
                        let undeploy = model.deployed_version.is_some();
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
                        if !model.versions.iter().any(|s| s.version == v) {
                            return (
                                ModelChange::Keep,
                                noop(format!("{name} has no version {v}")),
                            );
                        }
                        let mut model = model.clone();
                        model.versions.retain(|s| s.version != v);
                        let undeploy = model.deployed_version.as_deref() == Some(v);
                        if undeploy {
                            model.deployed_version = None;
                        }
                        let change = if model.versions.is_empty() {
                            ModelChange::Delete
                        } else {
                            ModelChange::Put(model)
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

    async fn deploy(&self, name: &str, payload: &[u8]) -> Result<Bytes> {
        let req = match version_request(payload) {
            Ok(r) => r,
            Err(e) => return Ok(json(&ErrorResponse::new(e))),
        };
        let response = self
            .store
            .update_model(name, |current| {
                let not_found = |message: String| DeployModelResponse {
                    result: DeployResult::NotFound,
                    message,
                    name: name.to_string(),
                    version: None,
                };
                let Some(model) = current else {
                    return (
                        ModelChange::Keep,
                        not_found(format!("no model named {name}")),
                    );
                };
                let Some(version) = model.version(req.version.as_deref()) else {
                    return (
                        ModelChange::Keep,
                        not_found(format!(
                            "{name} has no version {}",
                            req.version.clone().unwrap_or_default()
                        )),
                    );
                };
                let version = version.version.clone();
                let mut model = model.clone();
                model.deployed_version = Some(version.clone());
                (
                    ModelChange::Put(model),
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
                let Some(model) = current else {
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
                let mut model = model.clone();
                let was = model.deployed_version.take();
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
                    ModelChange::Put(model)
                } else {
                    ModelChange::Keep
                };
                (change, response)
            })
            .await?;
        Ok(json(&response))
    }

    async fn status(&self, name: &str) -> Result<Bytes> {
        let Some((model, _)) = self.store.get_model(name).await? else {
            return Ok(json(&StatusResponse {
                result: StatusResult::NotFound,
                message: format!("no model named {name}"),
                status: None,
            }));
        };
        let status = self.current_status(&model).await?;
        Ok(json(&StatusResponse {
            result: StatusResult::Ok,
            message: format!("status of {name}"),
            status: Some(status),
        }))
    }
}
