//! Which secrets an application may read: the keys its *deployed* manifest declares for this
//! backend, asked of the reconciler over its API (`wadm.api.{lattice}.model.versions.{app}`
//! to find the deployed version, then `model.get.{app}` with that version).
//!
//! Answers that grant are kept for [`CACHE_TTL`] so a host starting many instances does not
//! ask the reconciler for each; refusals are never cached, so a freshly deployed application is
//! served at once, and an undeployed one loses its secrets within [`CACHE_TTL`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use trellis_wadm::api::types::{
    api_subject, GetModelResponse, GetResult, PageRequest, VersionRequest, VersionsResponse,
};
use trellis_wadm::model::{Manifest, SecretProperty, Trait, SECRET_POLICY_TYPE};
use trellis_wadm::validation::is_valid_app_name;

/// How long a granting answer of the reconciler is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// The most applications whose answers are kept at once.
const CACHE_MAX: usize = 1024;
/// The most pages of `versions` read to find the deployed version (a model keeps at most 500
/// versions, which fit in far fewer pages).
const MAX_VERSION_PAGES: usize = 64;

/// The keys the deployed manifest of an application declares for one backend.
pub struct Grants {
    client: async_nats::Client,
    lattice: String,
    backend: String,
    timeout: Duration,
    cache: Mutex<HashMap<String, (Instant, BTreeSet<String>)>>,
}

impl Grants {
    /// Asks the reconciler of `lattice` on `client`, for secrets of backend `backend`, waiting
    /// at most `timeout` for each answer.
    pub fn new(
        client: async_nats::Client,
        lattice: impl Into<String>,
        backend: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            lattice: lattice.into(),
            backend: backend.into(),
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether application `app`'s deployed manifest declares secret `key` under a secret
    /// policy naming this backend. `Err` when the reconciler cannot be asked (the message is
    /// safe to return to the requester).
    pub async fn allows(&self, app: &str, key: &str) -> Result<bool, String> {
        if !is_valid_app_name(app) {
            return Ok(false);
        }
        if let Some(keys) = self.cached(app) {
            if keys.contains(key) {
                return Ok(true);
            }
        }
        let keys = match self.deployed_manifest(app).await? {
            Some(manifest) => declared_keys(&manifest, &self.backend),
            None => BTreeSet::new(),
        };
        let allowed = keys.contains(key);
        if !keys.is_empty() {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(app.to_string(), (Instant::now(), keys));
            }
        }
        Ok(allowed)
    }

    fn cached(&self, app: &str) -> Option<BTreeSet<String>> {
        let cache = self.cache.lock().ok()?;
        let (at, keys) = cache.get(app)?;
        (at.elapsed() < CACHE_TTL).then(|| keys.clone())
    }

    /// The deployed manifest of `app`, `None` when it does not exist or is not deployed.
    async fn deployed_manifest(&self, app: &str) -> Result<Option<Manifest>, String> {
        let Some(version) = self.deployed_version(app).await? else {
            return Ok(None);
        };
        let body = serde_json::to_vec(&VersionRequest {
            version: Some(version),
        })
        .map_err(|e| format!("cannot encode a reconciler request: {e}"))?;
        let reply: GetModelResponse = self
            .request(api_subject(&self.lattice, "get", Some(app)), body)
            .await?;
        match (reply.result, reply.manifest) {
            (GetResult::Success, Some(manifest)) => {
                serde_json::from_value(manifest).map(Some).map_err(|e| {
                    format!("the reconciler answered an unreadable manifest for {app}: {e}")
                })
            }
            // Deleted or undeployed meanwhile.
            (GetResult::NotFound, _) => Ok(None),
            (_, _) => Err(format!(
                "the reconciler could not read {app}: {}",
                reply.message
            )),
        }
    }

    /// The version of `app` that is deployed, if any.
    async fn deployed_version(&self, app: &str) -> Result<Option<String>, String> {
        let mut after = None;
        for _ in 0..MAX_VERSION_PAGES {
            let body = serde_json::to_vec(&PageRequest {
                after: after.take(),
            })
            .map_err(|e| format!("cannot encode a reconciler request: {e}"))?;
            let reply: VersionsResponse = self
                .request(api_subject(&self.lattice, "versions", Some(app)), body)
                .await?;
            match reply.result {
                GetResult::Success => {}
                GetResult::NotFound => return Ok(None),
                GetResult::Error => {
                    return Err(format!(
                        "the reconciler could not list {app}: {}",
                        reply.message
                    ))
                }
            }
            if let Some(deployed) = reply.versions.iter().find(|v| v.deployed) {
                return Ok(Some(deployed.version.clone()));
            }
            match reply.next {
                Some(next) if reply.truncated => after = Some(next),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn request<R: serde::de::DeserializeOwned>(
        &self,
        subject: String,
        body: Vec<u8>,
    ) -> Result<R, String> {
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => format!(
                    "no reconciler answers for lattice {} (is `trellis wadm` running?)",
                    self.lattice
                ),
                async_nats::RequestErrorKind::TimedOut => {
                    format!("the reconciler did not answer on {subject} in time")
                }
                async_nats::RequestErrorKind::Other => format!("asking the reconciler failed: {e}"),
            })?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("the reconciler answered {subject} unreadably: {e}"))
    }
}

/// The keys of every secret `manifest` declares (on components and on links' sources and
/// targets) under a policy of type `policy.secret.wasmcloud.dev/v1alpha1` whose `backend` is
/// `backend`.
pub fn declared_keys(manifest: &Manifest, backend: &str) -> BTreeSet<String> {
    let policies: BTreeSet<&str> = manifest
        .spec
        .policies
        .iter()
        .filter(|p| {
            p.policy_type == SECRET_POLICY_TYPE
                && p.properties.get("backend").map(String::as_str) == Some(backend)
        })
        .map(|p| p.name.as_str())
        .collect();
    let mut secrets: Vec<&SecretProperty> = Vec::new();
    for component in &manifest.spec.components {
        secrets.extend(&component.properties.secrets);
        for t in &component.traits {
            if let Trait::Link(link) = t {
                secrets.extend(link.source.iter().flat_map(|s| s.secrets.iter()));
                secrets.extend(&link.target.secrets);
            }
        }
    }
    secrets
        .into_iter()
        .filter(|s| policies.contains(s.properties.policy.as_str()))
        .map(|s| s.properties.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_under_this_backends_secret_policies_count() {
        let yaml = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: app
spec:
  policies:
    - name: ours
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties:
        backend: nats-kv
    - name: theirs
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties:
        backend: vault
  components:
    - name: c
      type: component
      properties:
        image: file:///c.wasm
        secrets:
          - name: db
            properties:
              policy: ours
              key: prod/db
          - name: v
            properties:
              policy: theirs
              key: vault-key
      traits:
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store]
            target:
              name: kv
              secrets:
                - name: t
                  properties:
                    policy: ours
                    key: link-target-key
            source:
              secrets:
                - name: s
                  properties:
                    policy: ours
                    key: link-source-key
    - name: kv
      type: capability
      properties:
        image: ghcr.io/wasmcloud/keyvalue-nats:0.3.1
"#;
        let parsed = trellis_wadm::model::parse_manifest(yaml.as_bytes());
        let Ok(parsed) = parsed else {
            panic!("the test manifest does not parse: {:?}", parsed.err());
        };
        let keys = declared_keys(&parsed.manifest, "nats-kv");
        let expected: BTreeSet<String> = ["prod/db", "link-target-key", "link-source-key"]
            .into_iter()
            .map(str::to_string)
            .collect();
        assert_eq!(keys, expected);
        assert!(declared_keys(&parsed.manifest, "other").is_empty());
    }
}
