//! Request and response bodies of the wadm API (`wadm.api.{lattice}.model.{op}[.{name}]`), in
//! wadm's JSON shapes. The CLI reuses these to talk to any wadm-compatible reconciler.

use serde::{Deserialize, Serialize};

/// The subject prefix of the API of `lattice`: `wadm.api.{lattice}`.
pub fn api_prefix(lattice: &str) -> String {
    format!("wadm.api.{lattice}")
}

/// The subject of API operation `op` (`put`, `get`, `versions`, `del`, `deploy`, `undeploy`,
/// `status`, `list`) on model `name` (omit it for `put`, `list` and the list form of `get`).
pub fn api_subject(lattice: &str, op: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("wadm.api.{lattice}.model.{op}.{name}"),
        None => format!("wadm.api.{lattice}.model.{op}"),
    }
}

/// The subject status updates of application `name` are published on.
pub fn status_subject(lattice: &str, name: &str) -> String {
    format!("wadm.status.{lattice}.{name}")
}

/// The queue group the reconcilers of a lattice serve the API in.
pub const API_QUEUE_GROUP: &str = "wadm_api";

/// Outcome of `put`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PutResult {
    /// A new model was stored.
    Created,
    /// A new version of an existing model was stored.
    NewVersion,
    /// Nothing was stored; `message` says why.
    Error,
}

/// Reply to `put`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutModelResponse {
    /// The outcome.
    pub result: PutResult,
    /// How many versions the model has now.
    #[serde(default)]
    pub total_versions: usize,
    /// The version just stored.
    #[serde(default)]
    pub current_version: String,
    /// What happened (warnings included), or what was wrong.
    #[serde(default)]
    pub message: String,
    /// The model name.
    #[serde(default)]
    pub name: String,
}

/// Body of `get.{name}`, `del.{name}` and `deploy.{name}`: an optional version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionRequest {
    /// The version; absent (or `latest` for deploy and get) means the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Optional body of the list form of `get` (and `list`) and of `versions.{name}`: where the
/// page starts. wadm's clients send no body and get the first page, which is everything
/// unless the reply would exceed the NATS max payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// Start after this model name (list) or version (versions): a reply's `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Outcome of `get`, `versions` and the list form of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GetResult {
    /// Found.
    Success,
    /// No such model or version.
    NotFound,
    /// Failed; `message` says why.
    Error,
}

/// Reply to `get.{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetModelResponse {
    /// The outcome.
    pub result: GetResult,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// The manifest, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
}

/// Reply to the list form of `get` (and `list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListModelsResponse {
    /// The outcome.
    pub result: GetResult,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// One summary per model, sorted by name.
    #[serde(default)]
    pub models: Vec<ModelSummary>,
    /// True when `models` stops early because one reply cannot carry more (NATS max payload);
    /// omitted when the list is complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// When truncated: ask again with `{"after": next}` for the following page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One model in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model name.
    pub name: String,
    /// Its newest version.
    pub version: String,
    /// Its description annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The deployed version, if deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_version: Option<String>,
    /// The current status, scalers included.
    pub detailed_status: Status,
    /// The status message of the application as a whole.
    #[serde(default)]
    pub status_message: String,
}

/// Reply to `versions.{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionsResponse {
    /// The outcome.
    pub result: GetResult,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// Versions in creation order.
    #[serde(default)]
    pub versions: Vec<VersionInfo>,
    /// True when `versions` stops early because one reply cannot carry more (NATS max
    /// payload); omitted when the list is complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// When truncated: ask again with `{"after": next}` for the following page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One version of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version string.
    pub version: String,
    /// Whether this version is the deployed one.
    pub deployed: bool,
}

/// Outcome of `del`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteResult {
    /// Deleted.
    Deleted,
    /// Nothing to delete.
    Noop,
    /// Failed; `message` says why.
    Error,
}

/// Reply to `del.{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteModelResponse {
    /// The outcome.
    pub result: DeleteResult,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// Whether the deletion also undeployed the application.
    #[serde(default)]
    pub undeploy: bool,
}

/// Outcome of `deploy` and `undeploy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployResult {
    /// Recorded; the reconciler acts on it.
    Acknowledged,
    /// No such model or version.
    NotFound,
    /// Failed; `message` says why.
    Error,
}

/// Reply to `deploy.{name}` and `undeploy.{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployModelResponse {
    /// The outcome.
    pub result: DeployResult,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// The model name.
    #[serde(default)]
    pub name: String,
    /// The version deployed (absent for undeploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Outcome of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusResult {
    /// Found.
    Ok,
    /// No such model.
    NotFound,
    /// Failed; `message` says why.
    Error,
}

/// Reply to `status.{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// The outcome.
    pub result: StatusResult,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// The error reply any operation may give: `{"result":"error","message":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Always `error`.
    pub result: String,
    /// What was wrong.
    pub message: String,
}

impl ErrorResponse {
    /// An error reply.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            result: "error".to_string(),
            message: message.into(),
        }
    }
}

/// Status kinds, ordered from best to worst as wadm aggregates them (an application's status is
/// the worst of its scalers').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusType {
    /// Everything declared runs.
    Deployed,
    /// Running but not healthy.
    Unhealthy,
    /// Commands issued, waiting for the lattice to catch up.
    Reconciling,
    /// Nothing can be done yet (no eligible host, say); the message says why.
    Waiting,
    /// Not deployed.
    Undeployed,
    /// A host refused the work; the message carries its error.
    Failed,
}

impl StatusType {
    /// Severity rank: higher is worse (failed > undeployed > waiting > reconciling > unhealthy >
    /// deployed).
    pub fn rank(self) -> u8 {
        match self {
            StatusType::Deployed => 0,
            StatusType::Unhealthy => 1,
            StatusType::Reconciling => 2,
            StatusType::Waiting => 3,
            StatusType::Undeployed => 4,
            StatusType::Failed => 5,
        }
    }
}

/// A status and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The kind.
    #[serde(rename = "type")]
    pub status_type: StatusType,
    /// Why, for anything but `deployed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl StatusInfo {
    /// A status with a message.
    pub fn new(status_type: StatusType, message: impl Into<String>) -> Self {
        Self {
            status_type,
            message: message.into(),
        }
    }
}

/// One scaler's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalerStatus {
    /// A stable id of the scaler within the application.
    pub id: String,
    /// `SpreadScaler`, `DaemonScaler`, `LinkScaler` or `ConfigScaler`.
    pub kind: String,
    /// What it scales (component name, link description or config name).
    pub name: String,
    /// Its status.
    pub status: StatusInfo,
}

/// An application's status: the aggregate and each scaler's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The worst of the scalers' statuses (or `undeployed`).
    pub status: StatusInfo,
    /// Per scaler.
    #[serde(default)]
    pub scalers: Vec<ScalerStatus>,
    /// The deployed version this status describes (empty when undeployed), so a client that
    /// just deployed a new version does not take the previous version's status for its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

impl Status {
    /// The status of an application that is not deployed.
    pub fn undeployed() -> Self {
        Self {
            status: StatusInfo::new(StatusType::Undeployed, "the application is not deployed"),
            scalers: Vec::new(),
            version: String::new(),
        }
    }

    /// This status within `max_bytes` of JSON. Messages over [`MAX_STATUS_MESSAGE_CHARS`] are
    /// cut (ending in `…`); if that is not enough, the worst scalers are kept, the rest left out,
    /// and the application's message says how many. The aggregate type never changes, so a
    /// fitted status never looks better than the whole one.
    pub fn fit(mut self, max_bytes: usize) -> Self {
        if json_len(&self) <= max_bytes {
            return self;
        }
        truncate_chars(&mut self.status.message, MAX_STATUS_MESSAGE_CHARS);
        for s in &mut self.scalers {
            truncate_chars(&mut s.status.message, MAX_STATUS_MESSAGE_CHARS);
        }
        if json_len(&self) <= max_bytes {
            return self;
        }
        let total = self.scalers.len();
        // Room for the note below.
        let mut used = json_len(&Status {
            status: self.status.clone(),
            scalers: Vec::new(),
            version: self.version.clone(),
        }) + 200;
        let mut order: Vec<usize> = (0..total).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.scalers[i].status.status_type.rank()));
        let mut keep = vec![false; total];
        for i in order {
            let size = json_len(&self.scalers[i]) + 1;
            if used + size <= max_bytes {
                used += size;
                keep[i] = true;
            }
        }
        let mut index = 0;
        self.scalers.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        let left_out = total - self.scalers.len();
        if !self.status.message.is_empty() {
            self.status.message.push(' ');
        }
        self.status.message.push_str(&format!(
            "({left_out} of {total} scalers left out: a status is stored in at most {max_bytes} bytes)"
        ));
        self
    }

    /// Aggregates scaler statuses: the worst wins, and its message (with the scaler's name)
    /// becomes the application's. With no scalers the application counts as deployed.
    pub fn aggregate(scalers: Vec<ScalerStatus>) -> Self {
        let worst = scalers
            .iter()
            .max_by_key(|s| s.status.status_type.rank())
            .map(|s| s.status.status_type)
            .unwrap_or(StatusType::Deployed);
        let message = if worst == StatusType::Deployed {
            String::new()
        } else {
            scalers
                .iter()
                .filter(|s| s.status.status_type == worst)
                .map(|s| format!("{}: {}", s.name, s.status.message))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Self {
            status: StatusInfo::new(worst, message),
            scalers,
            version: String::new(),
        }
    }

    /// This status, marked as describing deployed version `version`.
    pub fn for_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }
}

/// Most characters of one status message kept by [`Status::fit`].
pub const MAX_STATUS_MESSAGE_CHARS: usize = 1024;

fn json_len(value: &impl Serialize) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Cuts `s` to `max` characters, ending in `…` when anything was cut.
pub fn truncate_chars(s: &mut String, max: usize) {
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
        s.push('…');
    }
}
