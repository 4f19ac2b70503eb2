//! Client side of the reconciler's model API (`wadm.api.{lattice}.model.*`).
//!
//! The reply shapes are read leniently (results as strings, every field defaulted) so the CLI
//! keeps working with wadm itself and with older or newer Trellis reconcilers.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lattice_client::{Answerer, LatticeClient};

/// The subject of model operation `op` (`put`, `get`, `deploy.NAME`, ...) in `lattice`.
pub fn model_subject(lattice: &str, op: &str) -> String {
    format!("wadm.api.{lattice}.model.{op}")
}

/// The subject the reconciler publishes an app's status on.
pub fn status_subject(lattice: &str, name: &str) -> String {
    format!("wadm.status.{lattice}.{name}")
}

/// Reply to `model.put`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutReply {
    /// `created`, `newversion` or `error`.
    #[serde(default)]
    pub result: String,
    /// How many versions the model has now.
    #[serde(default)]
    pub total_versions: usize,
    /// The version just stored.
    #[serde(default)]
    pub current_version: String,
    /// What went wrong, or a note.
    #[serde(default)]
    pub message: String,
    /// The model name.
    #[serde(default)]
    pub name: String,
}

/// Reply to `model.get.{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetReply {
    /// `success`, `notfound` or `error`.
    #[serde(default)]
    pub result: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// The manifest as JSON.
    #[serde(default)]
    pub manifest: Option<Value>,
}

/// Reply to `model.get` (the list).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListReply {
    /// `success` or `error`.
    #[serde(default)]
    pub result: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// One summary per stored model.
    #[serde(default)]
    pub models: Vec<ModelSummary>,
    /// True when the reconciler cut the list to fit one message; `next` continues it.
    #[serde(default)]
    pub truncated: bool,
    /// The cursor of the next page, sent as `{"after": next}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One model in the list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model name.
    #[serde(default)]
    pub name: String,
    /// Its newest version.
    #[serde(default)]
    pub version: String,
    /// Its description annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The version deployed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_version: Option<String>,
    /// The app status (`{status: {type, message}, scalers}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detailed_status: Option<Value>,
    /// Older servers' flat status type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Older servers' flat status message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

impl ModelSummary {
    /// The status type (`deployed`, `failed`, ...), from whichever field the server filled.
    pub fn status_type(&self) -> String {
        self.detailed_status
            .as_ref()
            .and_then(|d| {
                d.pointer("/status/type")
                    .or_else(|| d.pointer("/info/type"))
                    .or_else(|| d.get("type"))
            })
            .or(self.status.as_ref())
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string()
    }
}

/// Reply to `model.versions.{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionsReply {
    /// `success`, `notfound` or `error`.
    #[serde(default)]
    pub result: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// Versions in creation order.
    #[serde(default)]
    pub versions: Vec<VersionInfo>,
    /// True when the reconciler cut the list to fit one message; `next` continues it.
    #[serde(default)]
    pub truncated: bool,
    /// The cursor of the next page, sent as `{"after": next}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One stored version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version string.
    #[serde(default)]
    pub version: String,
    /// Whether it is the deployed one.
    #[serde(default)]
    pub deployed: bool,
}

/// Reply to `model.del.{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeleteReply {
    /// `deleted`, `noop` or `error`.
    #[serde(default)]
    pub result: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// Whether the delete also undeployed the app.
    #[serde(default)]
    pub undeploy: bool,
}

/// Reply to `model.deploy.{name}` and `model.undeploy.{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployReply {
    /// `acknowledged`, `notfound` or `error`.
    #[serde(default)]
    pub result: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// The model name.
    #[serde(default)]
    pub name: String,
    /// The version being deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Reply to `model.status.{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReply {
    /// `ok`, `notfound` or `error`.
    #[serde(default)]
    pub result: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AppStatus>,
}

/// An app's status: the overall one and one per scaler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    /// The overall status (the worst of the scalers).
    #[serde(default, alias = "info")]
    pub status: StatusInfo,
    /// Per-scaler status.
    #[serde(default)]
    pub scalers: Vec<ScalerStatus>,
    /// The deployed version the status describes (empty from reconcilers that do not say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// A status type with an optional explanation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// `waiting`, `undeployed`, `reconciling`, `deployed`, `failed` or `unhealthy`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Why, when not deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One scaler's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalerStatus {
    /// The scaler id.
    #[serde(default)]
    pub id: String,
    /// Its kind (`SpreadScaler`, `LinkScaler`, ...).
    #[serde(default)]
    pub kind: String,
    /// What it manages.
    #[serde(default)]
    pub name: String,
    /// Its status.
    #[serde(default)]
    pub status: StatusInfo,
}

/// A reply whose list the reconciler may cut into pages (Trellis does when one message cannot
/// carry it all; wadm never does, and then there is one page).
trait Paged: DeserializeOwned {
    /// The `(truncated, next)` cursor of this page.
    fn cursor(&self) -> (bool, Option<&str>);
    /// Appends `page`'s items; false when it had none.
    fn append(&mut self, page: Self) -> bool;
}

impl Paged for ListReply {
    fn cursor(&self) -> (bool, Option<&str>) {
        (self.truncated, self.next.as_deref())
    }
    fn append(&mut self, page: Self) -> bool {
        let grew = !page.models.is_empty();
        self.models.extend(page.models);
        self.truncated = page.truncated;
        self.next = page.next;
        self.message = format!("{} models", self.models.len());
        grew
    }
}

impl Paged for VersionsReply {
    fn cursor(&self) -> (bool, Option<&str>) {
        (self.truncated, self.next.as_deref())
    }
    fn append(&mut self, page: Self) -> bool {
        let grew = !page.versions.is_empty();
        self.versions.extend(page.versions);
        self.truncated = page.truncated;
        self.next = page.next;
        self.message = format!("{} versions", self.versions.len());
        grew
    }
}

/// The body asking for the page after `after`.
#[derive(Debug, Clone, Serialize)]
struct PageRequest<'a> {
    after: &'a str,
}

/// Most pages read for one list: far more than any lattice needs.
const MAX_PAGES: usize = 10_000;

/// The body of `get`, `del` and `deploy` requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionRequest {
    /// The version; absent means the newest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Typed calls to the model API.
#[derive(Debug, Clone)]
pub struct WadmClient<'a> {
    lattice: &'a LatticeClient,
}

impl<'a> WadmClient<'a> {
    /// Uses `lattice`'s connection.
    pub fn new(lattice: &'a LatticeClient) -> Self {
        Self { lattice }
    }

    fn subject(&self, op: &str) -> String {
        model_subject(self.lattice.lattice(), op)
    }

    /// Stores a manifest (YAML or JSON text) as a new version.
    pub async fn put(&self, manifest: Vec<u8>) -> anyhow::Result<PutReply> {
        self.lattice
            .request_raw(self.subject("put"), manifest, Answerer::Reconciler)
            .await
    }

    /// Fetches one version of a model (the newest when `version` is `None`).
    pub async fn get(&self, name: &str, version: Option<String>) -> anyhow::Result<GetReply> {
        self.lattice
            .request_json(
                self.subject(&format!("get.{name}")),
                &VersionRequest { version },
                Answerer::Reconciler,
            )
            .await
    }

    /// Lists every model, page after page when the reconciler cuts the list.
    pub async fn list(&self) -> anyhow::Result<ListReply> {
        self.all_pages(self.subject("get")).await
    }

    /// Lists a model's versions, page after page when the reconciler cuts the list.
    pub async fn versions(&self, name: &str) -> anyhow::Result<VersionsReply> {
        self.all_pages(self.subject(&format!("versions.{name}")))
            .await
    }

    /// Asks `subject` for the first page, then for each next one while the reply is cut.
    async fn all_pages<R: Paged>(&self, subject: String) -> anyhow::Result<R> {
        let mut reply: R = self
            .lattice
            .request_raw(subject.clone(), Vec::new(), Answerer::Reconciler)
            .await?;
        for _ in 0..MAX_PAGES {
            let after = match reply.cursor() {
                (true, Some(after)) => after.to_string(),
                _ => break,
            };
            let page: R = self
                .lattice
                .request_json(
                    subject.clone(),
                    &PageRequest { after: &after },
                    Answerer::Reconciler,
                )
                .await?;
            if !reply.append(page) || reply.cursor().1 == Some(after.as_str()) {
                break;
            }
        }
        Ok(reply)
    }

    /// Deletes one version, or every version when `version` is `None`.
    pub async fn delete(&self, name: &str, version: Option<String>) -> anyhow::Result<DeleteReply> {
        self.lattice
            .request_json(
                self.subject(&format!("del.{name}")),
                &VersionRequest { version },
                Answerer::Reconciler,
            )
            .await
    }

    /// Deploys a version (the newest when `None`).
    pub async fn deploy(&self, name: &str, version: Option<String>) -> anyhow::Result<DeployReply> {
        self.lattice
            .request_json(
                self.subject(&format!("deploy.{name}")),
                &VersionRequest { version },
                Answerer::Reconciler,
            )
            .await
    }

    /// Undeploys an app.
    pub async fn undeploy(&self, name: &str) -> anyhow::Result<DeployReply> {
        self.lattice
            .request_json(
                self.subject(&format!("undeploy.{name}")),
                &serde_json::json!({}),
                Answerer::Reconciler,
            )
            .await
    }

    /// Fetches an app's status.
    pub async fn status(&self, name: &str) -> anyhow::Result<StatusReply> {
        self.lattice
            .request_raw(
                self.subject(&format!("status.{name}")),
                Vec::new(),
                Answerer::Reconciler,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_wadm_layout() {
        assert_eq!(
            model_subject("default", "put"),
            "wadm.api.default.model.put"
        );
        assert_eq!(
            model_subject("l1", "deploy.hello"),
            "wadm.api.l1.model.deploy.hello"
        );
        assert_eq!(status_subject("l1", "hello"), "wadm.status.l1.hello");
    }

    #[test]
    fn status_reply_parses_wadm_shape() {
        let reply: StatusReply = serde_json::from_str(
            r#"{"result":"ok","message":"","status":{"status":{"type":"failed","message":"boom"},
            "scalers":[{"id":"s1","kind":"SpreadScaler","name":"c","status":{"type":"failed","message":"boom"}}]}}"#,
        )
        .unwrap();
        let status = reply.status.unwrap();
        assert_eq!(status.status.kind, "failed");
        assert_eq!(status.scalers[0].status.message.as_deref(), Some("boom"));
    }

    #[test]
    fn summary_status_reads_nested_or_flat() {
        let nested: ModelSummary = serde_json::from_str(
            r#"{"name":"a","version":"v1","detailed_status":{"status":{"type":"deployed"},"scalers":[]}}"#,
        )
        .unwrap();
        assert_eq!(nested.status_type(), "deployed");
        let flat: ModelSummary =
            serde_json::from_str(r#"{"name":"a","version":"v1","status":"undeployed"}"#).unwrap();
        assert_eq!(flat.status_type(), "undeployed");
        let none: ModelSummary = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert_eq!(none.status_type(), "unknown");
    }
}
