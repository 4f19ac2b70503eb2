//! wasmCloud's policy service, asked over NATS (`trellis host --policy-topic`).
//!
//! Before a component starts (`startComponent`), and before a call from the lattice reaches a
//! component's export (`performInvocation`), the host sends a wasmCloud v1 policy request on
//! the policy topic and honours the answer:
//!
//! ```json
//! {"requestId": "...", "kind": "startComponent", "version": "v1",
//!  "request": {"componentId": "...", "imageRef": "...", "maxInstances": 1,
//!              "annotations": {...},
//!              "claims": {"publicKey": "M...", "issuer": "A...", "issuedAt": "1700000000",
//!                         "expiresAt": null, "expired": false}},
//!  "host": {"publicKey": "N...", "lattice": "default", "labels": {...}}}
//! ```
//!
//! A `performInvocation` request carries `{"interface", "function", "target": {...}}`, the
//! target being the same component information. The answer is
//! `{"requestId": "...", "permitted": bool, "message": "..."}`.
//!
//! Decisions are cached per kind and component id + image ref (+ interface and function for
//! calls), as wasmCloud does; a decision published later on the changes topic
//! (`--policy-changes-topic`, same shape as an answer, matched by `requestId`) replaces the
//! cached one. No answer within the timeout, or an answer that is not a decision, denies (and
//! is not cached), so a missing policy service never lets everything through.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::claims::{now_secs, ComponentClaims};

/// The version of the policy request body wasmCloud sends.
pub const POLICY_TYPE_VERSION: &str = "v1";
/// The default time to wait for a decision.
pub const DEFAULT_POLICY_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach the policy service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The NATS subject policy requests are sent to.
    pub topic: String,
    /// The subject updated decisions arrive on, if any.
    pub changes_topic: Option<String>,
    /// How long to wait for a decision.
    pub timeout: Duration,
}

/// The claims part of a policy request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyClaims {
    /// The component's public key (`M...`).
    #[serde(rename = "publicKey")]
    pub public_key: String,
    /// The issuer (`A...`).
    pub issuer: String,
    /// When the claims were issued, seconds since the epoch, as a string.
    #[serde(rename = "issuedAt")]
    pub issued_at: String,
    /// Expiry, if any.
    #[serde(rename = "expiresAt")]
    pub expires_at: Option<u64>,
    /// Whether they have expired.
    pub expired: bool,
}

impl From<&ComponentClaims> for PolicyClaims {
    fn from(claims: &ComponentClaims) -> Self {
        Self {
            public_key: claims.subject.clone(),
            issuer: claims.issuer.clone(),
            issued_at: claims.issued_at.to_string(),
            expires_at: claims.expires,
            expired: claims.expires.is_some_and(|e| now_secs() > e),
        }
    }
}

/// What a policy request says about a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentInformation {
    /// The component id.
    #[serde(rename = "componentId")]
    pub component_id: String,
    /// Its image ref.
    #[serde(rename = "imageRef")]
    pub image_ref: String,
    /// Requested instances (0 for calls).
    #[serde(rename = "maxInstances")]
    pub max_instances: u32,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its verified claims, when signed.
    pub claims: Option<PolicyClaims>,
}

/// The host asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// The host's public key (`N...`).
    #[serde(rename = "publicKey")]
    pub public_key: String,
    /// Its lattice.
    pub lattice: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// The kind of decision requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RequestKind {
    /// May this component start here?
    #[serde(rename = "startComponent")]
    StartComponent,
    /// May this provider start here?
    #[serde(rename = "startProvider")]
    StartProvider,
    /// May this call reach this component?
    #[serde(rename = "performInvocation")]
    PerformInvocation,
}

#[derive(Serialize)]
struct Request<'a, B: Serialize> {
    #[serde(rename = "requestId")]
    request_id: &'a str,
    kind: RequestKind,
    version: &'a str,
    request: &'a B,
    host: &'a HostInfo,
}

#[derive(Serialize)]
struct InvocationRequest<'a> {
    interface: &'a str,
    function: &'a str,
    target: &'a ComponentInformation,
}

#[derive(Serialize)]
struct ProviderInformation<'a> {
    #[serde(rename = "providerId")]
    provider_id: &'a str,
    #[serde(rename = "imageRef")]
    image_ref: &'a str,
    annotations: &'a BTreeMap<String, String>,
    claims: Option<PolicyClaims>,
}

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The id of the request it answers.
    #[serde(rename = "requestId", default)]
    pub request_id: String,
    /// Whether the action is permitted.
    pub permitted: bool,
    /// Why (mostly for denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Decision {
    /// The policy's message, or a default.
    pub fn reason(&self) -> &str {
        self.message.as_deref().unwrap_or("no reason given")
    }
}

type CacheKey = (RequestKind, String);

/// Asks the policy service and remembers its decisions. Dropping it stops following the
/// changes topic.
pub struct PolicyClient {
    client: async_nats::Client,
    config: PolicyConfig,
    cache: Arc<Mutex<Cache>>,
    changes: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Cache {
    decisions: HashMap<CacheKey, Decision>,
    by_request: HashMap<String, CacheKey>,
}

impl std::fmt::Debug for PolicyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for PolicyClient {
    fn drop(&mut self) {
        if let Some(task) = self.changes.take() {
            task.abort();
        }
    }
}

fn lock(cache: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

impl PolicyClient {
    /// Connects the policy client: subscribes to the changes topic when one is set.
    pub async fn new(client: async_nats::Client, config: PolicyConfig) -> anyhow::Result<Self> {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let changes = match &config.changes_topic {
            None => None,
            Some(topic) => {
                let mut sub = client.subscribe(topic.clone()).await.with_context(|| {
                    format!("cannot subscribe to the policy changes topic {topic}")
                })?;
                let cache = cache.clone();
                Some(tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        match serde_json::from_slice::<Decision>(&msg.payload) {
                            Ok(decision) => {
                                let mut cache = lock(&cache);
                                match cache.by_request.get(&decision.request_id).cloned() {
                                    Some(key) => {
                                        tracing::info!(
                                            request_id = decision.request_id,
                                            permitted = decision.permitted,
                                            "policy decision changed"
                                        );
                                        cache.decisions.insert(key, decision);
                                    }
                                    None => tracing::debug!(
                                        request_id = decision.request_id,
                                        "policy change for a request this host never made"
                                    ),
                                }
                            }
                            Err(error) => {
                                // Anyone who may publish on the topic can repeat this at will.
                                static NOT_A_DECISION: crate::log_limit::LogLimiter =
                                    crate::log_limit::LogLimiter::new(Duration::from_secs(10));
                                if let Some(suppressed) = NOT_A_DECISION.allow() {
                                    tracing::warn!(
                                        %error,
                                        suppressed,
                                        "ignoring a policy change that is not a decision"
                                    );
                                }
                            }
                        }
                    }
                }))
            }
        };
        Ok(Self {
            client,
            config,
            cache,
            changes,
        })
    }

    /// May `component` start on `host`?
    pub async fn start_component(
        &self,
        host: &HostInfo,
        component: &ComponentInformation,
    ) -> Decision {
        let key = format!("{}_{}", component.component_id, component.image_ref);
        self.decide(RequestKind::StartComponent, key, host, component)
            .await
    }

    /// May a provider start on `host`?
    pub async fn start_provider(
        &self,
        host: &HostInfo,
        provider_id: &str,
        image_ref: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Decision {
        let key = format!("{provider_id}_{image_ref}");
        let body = ProviderInformation {
            provider_id,
            image_ref,
            annotations,
            claims: None,
        };
        self.decide(RequestKind::StartProvider, key, host, &body)
            .await
    }

    /// May a call to `interface.function` reach `target` on `host`?
    pub async fn perform_invocation(
        &self,
        host: &HostInfo,
        target: &ComponentInformation,
        interface: &str,
        function: &str,
    ) -> Decision {
        let key = format!(
            "{}_{}_{interface}_{function}",
            target.component_id, target.image_ref
        );
        let body = InvocationRequest {
            interface,
            function,
            target,
        };
        self.decide(RequestKind::PerformInvocation, key, host, &body)
            .await
    }

    async fn decide<B: Serialize>(
        &self,
        kind: RequestKind,
        key: String,
        host: &HostInfo,
        body: &B,
    ) -> Decision {
        let key = (kind, key);
        if let Some(cached) = lock(&self.cache).decisions.get(&key) {
            return cached.clone();
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        match self.ask(kind, &request_id, host, body).await {
            Ok(mut decision) => {
                // Changes name the id this host sent, whatever the service echoed.
                decision.request_id = request_id.clone();
                let mut cache = lock(&self.cache);
                cache.by_request.insert(request_id, key.clone());
                cache.decisions.insert(key, decision.clone());
                decision
            }
            Err(error) => Decision {
                request_id,
                permitted: false,
                message: Some(format!("{error:#}")),
            },
        }
    }

    async fn ask<B: Serialize>(
        &self,
        kind: RequestKind,
        request_id: &str,
        host: &HostInfo,
        body: &B,
    ) -> anyhow::Result<Decision> {
        let payload = serde_json::to_vec(&Request {
            request_id,
            kind,
            version: POLICY_TYPE_VERSION,
            request: body,
            host,
        })
        .context("cannot encode the policy request")?;
        let topic = &self.config.topic;
        let timeout = self.config.timeout;
        let reply =
            tokio::time::timeout(timeout, self.client.request(topic.clone(), payload.into()))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                "the policy service on {topic} did not answer within {} ms (denied until it does)",
                timeout.as_millis()
            )
                })?
                .map_err(|e| {
                    anyhow::anyhow!("no policy service answers on {topic} ({e}); denied")
                })?;
        serde_json::from_slice(&reply.payload).map_err(|e| {
            anyhow::anyhow!("the policy service on {topic} answered something that is not a decision ({e}); denied")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_wasmclouds_shape() {
        let host = HostInfo {
            public_key: "NHOST".into(),
            lattice: "default".into(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        };
        let target = ComponentInformation {
            component_id: "hello".into(),
            image_ref: "file:///hello.wasm".into(),
            max_instances: 2,
            annotations: BTreeMap::new(),
            claims: Some(PolicyClaims {
                public_key: "MKEY".into(),
                issuer: "AKEY".into(),
                issued_at: "1".into(),
                expires_at: None,
                expired: false,
            }),
        };
        let value = serde_json::to_value(Request {
            request_id: "r1",
            kind: RequestKind::StartComponent,
            version: POLICY_TYPE_VERSION,
            request: &target,
            host: &host,
        })
        .unwrap();
        assert_eq!(value["kind"], "startComponent");
        assert_eq!(value["version"], "v1");
        assert_eq!(value["requestId"], "r1");
        assert_eq!(value["request"]["componentId"], "hello");
        assert_eq!(value["request"]["maxInstances"], 2);
        assert_eq!(value["request"]["claims"]["publicKey"], "MKEY");
        assert_eq!(value["request"]["claims"]["issuedAt"], "1");
        assert_eq!(value["host"]["publicKey"], "NHOST");
        assert_eq!(value["host"]["labels"]["zone"], "a");
        let call = serde_json::to_value(InvocationRequest {
            interface: "i",
            function: "f",
            target: &target,
        })
        .unwrap();
        assert_eq!(call["target"]["componentId"], "hello");
        let decision: Decision =
            serde_json::from_str(r#"{"requestId":"r1","permitted":false,"message":"no"}"#).unwrap();
        assert!(!decision.permitted);
        assert_eq!(decision.reason(), "no");
    }
}
