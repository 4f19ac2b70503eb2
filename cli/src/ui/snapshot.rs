//! The lattice as the page shows it: one JSON document gathered from the hosts (ping,
//! inventories, links, configs) and the reconciler (apps, statuses, manifests).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;
use trellis_protocol::ctl::{HostInventory, Link};

use crate::app_endpoints::http_urls;
use crate::lattice_client::LatticeClient;
use crate::wadm_api::{ScalerStatus, WadmClient};

/// The annotation the reconciler tags its work with.
const APP_ANNOTATION: &str = "wasmcloud.dev/appspec";
/// What a redacted config value reads as.
pub const REDACTED: &str = "•••• (redacted)";

/// Everything the page shows, at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// The lattice name.
    pub lattice: String,
    /// The NATS server (without credentials).
    pub nats_url: String,
    /// When it was taken, in milliseconds since the Unix epoch (server clock).
    pub taken_at_ms: u64,
    /// Hosts that answered the ping.
    pub hosts: Vec<HostView>,
    /// Apps the reconciler stores.
    pub apps: Vec<AppView>,
    /// Components and providers, each with where it runs.
    pub workloads: Vec<WorkloadView>,
    /// Every link.
    pub links: Vec<Link>,
    /// Configs named by links or found in the config store.
    pub configs: Vec<ConfigView>,
    /// What could not be read (e.g. no reconciler); the rest is still shown.
    pub problems: Vec<String>,
    /// Whether per-component rates are available (a metrics endpoint is configured).
    pub metrics_enabled: bool,
}

/// One host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostView {
    /// The host id.
    pub id: String,
    /// Its friendly name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its software version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Milliseconds since its last heartbeat or start event, when one was seen.
    pub heartbeat_age_ms: Option<u64>,
    /// Components it runs: `(id, max instances)`.
    pub components: Vec<(String, u32)>,
    /// Providers it runs (ids).
    pub providers: Vec<String>,
}

/// One app.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppView {
    /// The app name.
    pub name: String,
    /// The deployed version, if any.
    pub deployed_version: Option<String>,
    /// The newest stored version.
    pub latest_version: String,
    /// Its description.
    pub description: Option<String>,
    /// Overall status (`deployed`, `failed`, ...).
    pub status: String,
    /// Why, when not deployed.
    pub message: Option<String>,
    /// Per-scaler status with the reconciler's reasons.
    pub scalers: Vec<ScalerStatus>,
    /// The deployed (else newest) manifest as YAML.
    pub manifest: Option<String>,
    /// The HTTP URLs it serves.
    pub urls: Vec<String>,
}

/// A component or provider, across hosts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadView {
    /// `component` or `provider`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Its readable name, when it has one.
    pub name: Option<String>,
    /// The image reference it runs from.
    pub image_ref: String,
    /// The content digest, when the reference pins one (`@sha256:...`).
    pub digest: Option<String>,
    /// The app it belongs to, when the reconciler manages it.
    pub app: Option<String>,
    /// Where it runs.
    pub placements: Vec<Placement>,
    /// The instances the app's manifest asks for, when known.
    pub requested: Option<u64>,
    /// Provider health from the last health event: `healthy`, `unhealthy` or absent.
    pub health: Option<String>,
    /// Requests per second over the last interval (needs a metrics endpoint).
    pub rps: Option<f64>,
    /// Share of those requests that failed, 0..1.
    pub error_rate: Option<f64>,
}

/// One host running a workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Placement {
    /// The host id.
    pub host_id: String,
    /// The host's friendly name.
    pub host_name: String,
    /// Most concurrent instances on that host (components; 1 for providers).
    pub max_instances: u32,
}

/// One named config.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigView {
    /// The config name.
    pub name: String,
    /// Its values, secret-looking ones redacted.
    pub values: BTreeMap<String, String>,
}

/// Manifests already fetched, by `(app, version)`: a stored version never changes.
pub type ManifestCache = HashMap<(String, String), Value>;

/// Gathers a snapshot. Parts that fail are listed in `problems`; nothing here fails whole.
pub async fn gather(client: &LatticeClient, cache: &mut ManifestCache) -> Snapshot {
    let mut snapshot = Snapshot {
        lattice: client.lattice().to_string(),
        nats_url: client.nats_url().to_string(),
        taken_at_ms: now_ms(),
        ..Default::default()
    };
    let hosts = match client.ping_hosts().await {
        Ok(hosts) => hosts,
        Err(e) => {
            snapshot.problems.push(format!("hosts: {e:#}"));
            Vec::new()
        }
    };
    let mut inventories: Vec<HostInventory> = Vec::new();
    for host in &hosts {
        match client.inventory(&host.id).await {
            Ok(Some(inventory)) => inventories.push(inventory),
            Ok(None) => {}
            Err(e) => snapshot
                .problems
                .push(format!("inventory of {}: {e:#}", host.friendly_name)),
        }
    }
    for host in &hosts {
        let inventory = inventories.iter().find(|i| i.host_id == host.id);
        snapshot.hosts.push(HostView {
            id: host.id.clone(),
            name: host.friendly_name.clone(),
            labels: host.labels.clone(),
            version: host.version.clone().unwrap_or_default(),
            uptime_seconds: host.uptime_seconds,
            heartbeat_age_ms: None,
            components: inventory
                .map(|i| {
                    i.components
                        .iter()
                        .map(|c| (c.id.clone(), c.max_instances))
                        .collect()
                })
                .unwrap_or_default(),
            providers: inventory
                .map(|i| i.providers.iter().map(|p| p.id.clone()).collect())
                .unwrap_or_default(),
        });
    }
    snapshot.workloads = workloads(&inventories);

    match client.links().await {
        Ok(links) => snapshot.links = links,
        Err(e) => snapshot.problems.push(format!("links: {e:#}")),
    }

    gather_apps(client, cache, &mut snapshot).await;
    snapshot.configs = gather_configs(client, &snapshot.links, &mut snapshot.problems).await;
    snapshot
}

/// Groups the inventories' components and providers by id.
fn workloads(inventories: &[HostInventory]) -> Vec<WorkloadView> {
    let mut by_id: BTreeMap<(&'static str, String), WorkloadView> = BTreeMap::new();
    for inventory in inventories {
        let placement = |max_instances| Placement {
            host_id: inventory.host_id.clone(),
            host_name: inventory.friendly_name.clone(),
            max_instances,
        };
        for c in &inventory.components {
            let entry = by_id
                .entry(("component", c.id.clone()))
                .or_insert_with(|| WorkloadView {
                    kind: "component",
                    id: c.id.clone(),
                    name: c.name.clone(),
                    image_ref: c.image_ref.clone(),
                    digest: c.digest.clone().or_else(|| digest_of(&c.image_ref)),
                    app: app_of(c.annotations.as_ref()),
                    ..Default::default()
                });
            entry.placements.push(placement(c.max_instances));
        }
        for p in &inventory.providers {
            let image_ref = p.image_ref.clone().unwrap_or_default();
            let entry = by_id
                .entry(("provider", p.id.clone()))
                .or_insert_with(|| WorkloadView {
                    kind: "provider",
                    id: p.id.clone(),
                    name: p.name.clone(),
                    digest: digest_of(&image_ref),
                    image_ref,
                    app: app_of(p.annotations.as_ref()),
                    ..Default::default()
                });
            entry.placements.push(placement(1));
        }
    }
    by_id.into_values().collect()
}

fn app_of(annotations: Option<&BTreeMap<String, String>>) -> Option<String> {
    annotations.and_then(|a| a.get(APP_ANNOTATION)).cloned()
}

/// The digest a reference pins (`repo@sha256:...`), if any.
fn digest_of(image_ref: &str) -> Option<String> {
    image_ref
        .split_once('@')
        .map(|(_, digest)| digest.to_string())
        .filter(|d| d.contains(':'))
}

async fn gather_apps(client: &LatticeClient, cache: &mut ManifestCache, snapshot: &mut Snapshot) {
    let wadm = WadmClient::new(client);
    let list = match wadm.list().await {
        Ok(list) if list.result != "error" => list,
        Ok(list) => {
            snapshot.problems.push(format!("apps: {}", list.message));
            return;
        }
        Err(e) => {
            snapshot.problems.push(format!("apps: {e:#}"));
            return;
        }
    };
    for model in list.models {
        let mut app = AppView {
            name: model.name.clone(),
            deployed_version: model.deployed_version.clone(),
            latest_version: model.version.clone(),
            description: model.description.clone(),
            status: model.status_type(),
            ..Default::default()
        };
        match wadm.status(&model.name).await {
            Ok(reply) if reply.result == "ok" => {
                if let Some(status) = reply.status {
                    app.status = status.status.kind;
                    app.message = status.status.message.filter(|m| !m.is_empty());
                    app.scalers = status.scalers;
                }
            }
            Ok(_) => {}
            Err(e) => snapshot
                .problems
                .push(format!("status of {}: {e:#}", model.name)),
        }
        let version = model
            .deployed_version
            .clone()
            .unwrap_or_else(|| model.version.clone());
        let key = (model.name.clone(), version.clone());
        if !cache.contains_key(&key) {
            match wadm.get(&model.name, Some(version)).await {
                Ok(reply) => {
                    if let Some(manifest) = reply.manifest {
                        cache.insert(key.clone(), manifest);
                    }
                }
                Err(e) => snapshot
                    .problems
                    .push(format!("manifest of {}: {e:#}", model.name)),
            }
        }
        if let Some(manifest) = cache.get(&key) {
            app.manifest = serde_yaml_ng::to_string(&redact_json(manifest)).ok();
            if model.deployed_version.is_some() {
                app.urls = http_urls(manifest);
            }
            requested_instances(manifest, &model.name, &mut snapshot.workloads);
        }
        snapshot.apps.push(app);
    }
}

/// Fills `requested` of the app's workloads from its spread/daemon scalers' `instances`.
fn requested_instances(manifest: &Value, app: &str, workloads: &mut [WorkloadView]) {
    let Some(components) = manifest
        .pointer("/spec/components")
        .and_then(Value::as_array)
    else {
        return;
    };
    for component in components {
        let Some(name) = component.get("name").and_then(Value::as_str) else {
            continue;
        };
        let instances = component
            .get("traits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.pointer("/properties/instances").and_then(Value::as_u64))
            .sum::<u64>();
        let id = component
            .pointer("/properties/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| trellis_wadm::model::derived_id(app, name));
        if let Some(w) = workloads.iter_mut().find(|w| w.id == id) {
            if instances > 0 {
                w.requested = Some(instances);
            }
        }
    }
}

/// The manifest with inline config values under secret-looking keys redacted.
pub fn redact_json(manifest: &Value) -> Value {
    match manifest {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if looks_secret(k) && (v.is_string() || v.is_number()) {
                        Value::String(REDACTED.to_string())
                    } else {
                        redact_json(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        other => other.clone(),
    }
}

/// Configs named by links, plus those in the lattice's config store, with values.
async fn gather_configs(
    client: &LatticeClient,
    links: &[Link],
    problems: &mut Vec<String>,
) -> Vec<ConfigView> {
    let mut names: BTreeSet<String> = links
        .iter()
        .flat_map(|l| l.source_config.iter().chain(l.target_config.iter()))
        .cloned()
        .collect();
    names.extend(config_store_names(client).await);
    let mut out = Vec::new();
    for name in names {
        if !trellis_protocol::subjects::is_valid_token(&name) {
            continue;
        }
        let reply: anyhow::Result<Option<HashMap<String, String>>> = client
            .ctl(client.subjects().config_get(&name), &serde_json::json!({}))
            .await;
        match reply {
            Ok(values) => out.push(ConfigView {
                name,
                values: redact_values(values.unwrap_or_default()),
            }),
            Err(e) => problems.push(format!("config {name}: {e:#}")),
        }
    }
    out
}

/// The keys of the lattice's config bucket; empty when it cannot be read.
async fn config_store_names(client: &LatticeClient) -> Vec<String> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.nats().clone());
    let bucket = trellis_protocol::subjects::config_data_bucket(client.lattice());
    let Ok(store) = js.get_key_value(bucket).await else {
        return Vec::new();
    };
    let Ok(keys) = store.keys().await else {
        return Vec::new();
    };
    // A lattice with thousands of configs shows the first 500.
    keys.take(500)
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await
}

/// `values` with every secret-looking key's value replaced by [`REDACTED`].
pub fn redact_values(values: HashMap<String, String>) -> BTreeMap<String, String> {
    values
        .into_iter()
        .map(|(k, v)| {
            let v = if looks_secret(&k) {
                REDACTED.to_string()
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

/// True for keys that usually hold secrets: passwords, tokens, keys, credentials...
pub fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // A public key is meant to be seen (hosts report components' `public_key`).
    if key.contains("public") {
        return false;
    }
    [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "key",
        "credential",
        "creds",
        "auth",
        "private",
        "seed",
        "cert",
        "signature",
        "session",
        "cookie",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_redacted_others_kept() {
        let values: HashMap<String, String> = [
            ("password", "hunter2"),
            ("API_KEY", "k"),
            ("db_token", "t"),
            ("aws_secret_access", "s"),
            ("address", "0.0.0.0:8080"),
            ("public_key", "MABC"),
            ("path", "/"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let out = redact_values(values);
        for k in ["password", "API_KEY", "db_token", "aws_secret_access"] {
            assert_eq!(out[k], REDACTED, "{k}");
        }
        assert_eq!(out["address"], "0.0.0.0:8080");
        assert_eq!(out["path"], "/");
        assert_eq!(out["public_key"], "MABC");
    }

    #[test]
    fn manifests_are_redacted_in_config_properties() {
        let manifest = serde_json::json!({
            "spec": {"components": [{"properties": {"config": [{"name": "db",
                "properties": {"password": "hunter2", "host": "db.local"}}]}}]}
        });
        let text = serde_json::to_string(&redact_json(&manifest)).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("db.local"), "{text}");
    }

    #[test]
    fn digests_come_from_pinned_refs_only() {
        assert_eq!(
            digest_of("ghcr.io/a/b@sha256:abc").as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(digest_of("ghcr.io/a/b:1.0"), None);
        assert_eq!(digest_of("file:///x.wasm"), None);
    }
}
