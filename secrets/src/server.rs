//! The `nats-kv` backend server: wasmCloud's secrets protocol over NATS, values sealed at rest
//! in a JetStream KV bucket, grants from the reconciler's deployed manifests and from mappings.
//!
//! Subjects (under `{prefix}.v1alpha1.{name}`, served in queue group
//! `wasmcloud_secrets.{name}` as wasmCloud's backend does, so several instances share the load):
//! - `server_xkey`: the public transit xkey, as plain text;
//! - `get`: a [`SecretRequest`] sealed for the transit key by the requester's xkey (public key
//!   in `WasmCloud-Host-Xkey`), answered with a [`SecretResponse`] sealed by a fresh xkey for the
//!   requester (that key in `Server-Response-Xkey`), or on error a plain `{error}`;
//! - the admin operations of [`crate::admin`], accepted only from configured admin xkeys.
//!
//! A `get` is granted when (a) the request's application has a *deployed* manifest declaring a
//! secret with this key under a `policy.secret.wasmcloud.dev/v1alpha1` policy whose `backend`
//! is this backend, and (b) when some mapping lists the key, the entity's JWT is valid and its
//! subject is mapped to it. A host JWT must be a well-formed, well-signed JWT; an entity JWT,
//! when present, must be valid (signature and dates). Unsigned components read what their
//! application declares unless a mapping restricts the key.
//!
//! Values are stored sealed by the encryption xkey for itself; nothing logs a value, and
//! nothing a request carries can make the server panic.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use nkeys::XKey;
use serde::Serialize;
use trellis_protocol::secrets::{
    backend_subject, GetSecretError, Secret, SecretRequest, SecretResponse, HOST_XKEY_HEADER,
    MAX_SECRET_BYTES, RESPONSE_XKEY_HEADER,
};

use crate::admin::{
    is_valid_entity, is_valid_key, AdminError, AdminResponse, DeleteSecretRequest, MappingNames,
    PutSecretRequest, MAX_NAMES_PER_MAPPING, MAX_REQUEST_BYTES, OP_ADD_MAPPING, OP_DELETE_SECRET,
    OP_GET_NAMES, OP_PUT_SECRET, OP_REMOVE_MAPPING,
};
use crate::grants::Grants;
use crate::jwt;

/// The backend name unless told otherwise.
pub const DEFAULT_BACKEND_NAME: &str = "nats-kv";
/// The KV bucket holding sealed values (wasmCloud's default).
pub const DEFAULT_BUCKET: &str = "WASMCLOUD_SECRETS";
/// Revisions kept per secret (the most JetStream KV keeps), so `version` can select old ones.
pub const MAX_HISTORY: i64 = 64;
/// The queue group's base name (wasmCloud's), followed by `.{name}`.
pub const QUEUE_BASE: &str = "wasmcloud_secrets";
/// Requests handled at once.
const CONCURRENCY: usize = 16;
/// Tries of an optimistic update of a mapping before giving up.
const MAPPING_RETRIES: usize = 10;

/// The state bucket of backend `name`: entity public key -> JSON set of secret names.
pub fn state_bucket_name(name: &str) -> String {
    format!("SECRETS_{name}_state")
}

/// Whether `name` can name a backend: 1 to 64 ASCII letters, digits, `-` and `_` (a subject
/// token that is also valid in a KV bucket name).
pub fn is_valid_backend_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How one backend instance is set up.
pub struct BackendConfig {
    /// The backend's name (`nats-kv`), the policy `backend` it serves.
    pub name: String,
    /// The subject prefix (`wasmcloud.secrets`).
    pub topic_prefix: String,
    /// The KV bucket of sealed values.
    pub bucket: String,
    /// The lattice whose reconciler says which applications are deployed.
    pub lattice: String,
    /// The transit xkey: requests are sealed for it.
    pub transit: XKey,
    /// The encryption xkey: values are sealed with it at rest. Losing it loses every value.
    pub encryption: XKey,
    /// Public xkeys whose sealed requests may change secrets and mappings.
    pub admin_keys: BTreeSet<String>,
    /// How long to wait for the reconciler.
    pub wadm_timeout: Duration,
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("name", &self.name)
            .field("topic_prefix", &self.topic_prefix)
            .field("bucket", &self.bucket)
            .field("lattice", &self.lattice)
            .field("transit", &self.transit.public_key())
            .field("admin_keys", &self.admin_keys)
            .finish()
    }
}

/// A running backend: its NATS connection and its two buckets.
pub struct Backend {
    config: BackendConfig,
    client: async_nats::Client,
    secrets: kv::Store,
    state: kv::Store,
    grants: Grants,
    root: String,
}

/// What a `get` answers: headers and body.
type Reply = (HeaderMap, Bytes);

impl Backend {
    /// Opens (or creates) the buckets on `client`'s JetStream.
    pub async fn new(client: async_nats::Client, config: BackendConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            is_valid_backend_name(&config.name),
            "invalid backend name {:?}: use 1 to 64 letters, digits, '-' or '_'",
            config.name
        );
        anyhow::ensure!(
            trellis_protocol::subjects::is_valid_token(&config.lattice),
            "invalid lattice name {:?}",
            config.lattice
        );
        anyhow::ensure!(
            !config.topic_prefix.is_empty()
                && config
                    .topic_prefix
                    .split('.')
                    .all(trellis_protocol::subjects::is_valid_token),
            "invalid topic prefix {:?}",
            config.topic_prefix
        );
        let js = jetstream::new(client.clone());
        let secrets = open_or_create(
            &js,
            kv::Config {
                bucket: config.bucket.clone(),
                description: "Secrets, sealed (trellis/wasmCloud nats-kv backend)".to_string(),
                history: MAX_HISTORY,
                max_value_size: i32::try_from(MAX_SECRET_BYTES + 1024).unwrap_or(i32::MAX),
                ..Default::default()
            },
        )
        .await?;
        let state = open_or_create(
            &js,
            kv::Config {
                bucket: state_bucket_name(&config.name),
                description: "Secrets mappings: entity -> secret names".to_string(),
                ..Default::default()
            },
        )
        .await?;
        let grants = Grants::new(
            client.clone(),
            config.lattice.clone(),
            config.name.clone(),
            config.wadm_timeout,
        );
        let root = backend_subject(&config.topic_prefix, &config.name);
        Ok(Self {
            config,
            client,
            secrets,
            state,
            grants,
            root,
        })
    }

    /// The subjects served: `{prefix}.v1alpha1.{name}.>`.
    pub fn subject(&self) -> String {
        format!("{}.>", self.root)
    }

    /// Serves requests until `shutdown` completes (then finishes those in flight).
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let subject = self.subject();
        let queue = format!("{QUEUE_BASE}.{}", self.config.name);
        let sub = self
            .client
            .queue_subscribe(subject.clone(), queue)
            .await
            .with_context(|| format!("cannot subscribe to {subject}"))?;
        tracing::info!(
            %subject,
            backend = %self.config.name,
            transit_xkey = %self.config.transit.public_key(),
            admin_keys = self.config.admin_keys.len(),
            "secrets backend serving"
        );
        sub.take_until(shutdown)
            .for_each_concurrent(CONCURRENCY, |msg| self.handle(msg))
            .await;
        let _ = self.client.flush().await;
        Ok(())
    }

    async fn handle(&self, msg: Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let rest = msg
            .subject
            .as_str()
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or_default();
        let (op, arg) = match rest.split_once('.') {
            Some((op, arg)) => (op, Some(arg)),
            None => (rest, None),
        };
        let (headers, body) = match (op, arg) {
            ("server_xkey", None) => (
                HeaderMap::new(),
                Bytes::from(self.config.transit.public_key()),
            ),
            ("get", None) => match self.get(&msg).await {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(%error, "secret request refused");
                    (HeaderMap::new(), json(&SecretResponse { secret: None, error: Some(error) }))
                }
            },
            (OP_PUT_SECRET | OP_GET_NAMES | OP_DELETE_SECRET, None)
            | (OP_ADD_MAPPING | OP_REMOVE_MAPPING, Some(_)) => {
                let response = match self.admin(op, arg, &msg).await {
                    Ok(response) => response,
                    Err(error) => {
                        tracing::info!(operation = op, %error, "admin request refused");
                        AdminResponse::from(error)
                    }
                };
                (HeaderMap::new(), json(&response))
            }
            _ => (
                HeaderMap::new(),
                json(&AdminResponse::from(AdminError::InvalidRequest(format!(
                    "unknown operation {:?}: use server_xkey, get, {OP_PUT_SECRET}, {OP_GET_NAMES}, \
                     {OP_DELETE_SECRET}, {OP_ADD_MAPPING}.ENTITY or {OP_REMOVE_MAPPING}.ENTITY",
                    truncate(rest, 64)
                )))),
            ),
        };
        if let Err(e) = self.client.publish_with_headers(reply, headers, body).await {
            tracing::warn!(error = %e, "cannot send a secrets reply");
        }
    }

    /// Opens a sealed request: the requester's public xkey and the opened body.
    fn open<E>(&self, msg: &Message, errors: [E; 4]) -> Result<(XKey, Vec<u8>), E> {
        let [invalid_payload, invalid_headers, invalid_xkey, decryption] = errors;
        if msg.payload.is_empty() || msg.payload.len() > MAX_REQUEST_BYTES {
            return Err(invalid_payload);
        }
        let Some(headers) = msg.headers.as_ref() else {
            return Err(invalid_headers);
        };
        let Some(sender) = headers
            .get(HOST_XKEY_HEADER)
            .and_then(|k| XKey::from_public_key(k.as_str()).ok())
        else {
            return Err(invalid_xkey);
        };
        let opened = self
            .config
            .transit
            .open(&msg.payload, &sender)
            .map_err(|_| decryption)?;
        Ok((sender, opened))
    }

    async fn get(&self, msg: &Message) -> Result<Reply, GetSecretError> {
        let (requester, body) = self.open(
            msg,
            [
                GetSecretError::InvalidPayload,
                GetSecretError::InvalidHeaders,
                GetSecretError::InvalidXKey,
                GetSecretError::DecryptionError,
            ],
        )?;
        let request: SecretRequest =
            serde_json::from_slice(&body).map_err(|_| GetSecretError::InvalidRequest)?;
        if !is_valid_key(&request.key) {
            return Err(GetSecretError::InvalidRequest);
        }
        self.authorize(&request).await?;
        let secret = self.read(&request.key, request.version.as_deref()).await?;
        let response = serde_json::to_vec(&SecretResponse {
            secret: Some(secret),
            error: None,
        })
        .map_err(|_| GetSecretError::EncryptionError)?;
        let sealer = XKey::new();
        let sealed = sealer
            .seal(&response, &requester)
            .map_err(|_| GetSecretError::EncryptionError)?;
        let mut headers = HeaderMap::new();
        headers.insert(RESPONSE_XKEY_HEADER, sealer.public_key().as_str());
        Ok((headers, Bytes::from(sealed)))
    }

    /// The grant rules; `Ok` when `request` may read its key.
    async fn authorize(&self, request: &SecretRequest) -> Result<(), GetSecretError> {
        let now = jwt::now_secs();
        let context = &request.context;
        if context.host_jwt.trim().is_empty() {
            return Err(GetSecretError::InvalidHostJWT("no host JWT".to_string()));
        }
        jwt::verify(&context.host_jwt, now).map_err(GetSecretError::InvalidHostJWT)?;
        let entity = if context.entity_jwt.trim().is_empty() {
            None
        } else {
            let claims =
                jwt::verify(&context.entity_jwt, now).map_err(GetSecretError::InvalidEntityJWT)?;
            if !is_valid_entity(&claims.subject) {
                return Err(GetSecretError::InvalidEntityJWT(
                    "its subject is not a component (M...) or provider (V...) key".to_string(),
                ));
            }
            Some(claims.subject)
        };
        let app = context
            .application
            .name
            .as_deref()
            .filter(|a| !a.is_empty());
        let Some(app) = app else {
            tracing::info!(key = %request.key, "secret refused: the request names no application");
            return Err(GetSecretError::Unauthorized);
        };
        let declared = self
            .grants
            .allows(app, &request.key)
            .await
            .map_err(GetSecretError::UpstreamError)?;
        if !declared {
            tracing::info!(
                key = %request.key,
                app,
                "secret refused: no deployed manifest of the application declares it for this backend"
            );
            return Err(GetSecretError::Unauthorized);
        }
        let mapped = self
            .mapped_entities(&request.key)
            .await
            .map_err(GetSecretError::UpstreamError)?;
        if !mapped.is_empty() && !entity.as_ref().is_some_and(|e| mapped.contains(e)) {
            tracing::info!(
                key = %request.key,
                app,
                entity = entity.as_deref().unwrap_or("unsigned"),
                "secret refused: a mapping restricts it to other entities"
            );
            return Err(GetSecretError::Unauthorized);
        }
        Ok(())
    }

    /// The entities some mapping allows to read `key` (empty: no mapping restricts it).
    async fn mapped_entities(&self, key: &str) -> Result<BTreeSet<String>, String> {
        let upstream = |e: &dyn std::fmt::Display| format!("cannot read the mappings: {e}");
        let mut keys = self.state.keys().await.map_err(|e| upstream(&e))?;
        let mut entities = BTreeSet::new();
        while let Some(entity) = keys.next().await {
            let entity = entity.map_err(|e| upstream(&e))?;
            let names = self.mapping(&entity).await?.map(|(names, _)| names);
            if names.is_some_and(|n| n.contains(key)) {
                entities.insert(entity);
            }
        }
        Ok(entities)
    }

    /// An entity's mapped names and the entry's revision.
    async fn mapping(&self, entity: &str) -> Result<Option<(MappingNames, u64)>, String> {
        let entry = self
            .state
            .entry(entity)
            .await
            .map_err(|e| format!("cannot read the mappings: {e}"))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let names: MappingNames = serde_json::from_slice(&entry.value)
                    .map_err(|_| format!("the mapping of {entity} is not a JSON set of names"))?;
                Ok(Some((names, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// The value of `key` (at revision `version`, when given), opened.
    async fn read(&self, key: &str, version: Option<&str>) -> Result<Secret, GetSecretError> {
        let upstream = |e: &dyn std::fmt::Display| GetSecretError::UpstreamError(e.to_string());
        let entry = match version.filter(|v| !v.is_empty()) {
            None => self.secrets.entry(key).await.map_err(|e| upstream(&e))?,
            Some(v) => {
                let revision: u64 = v.parse().map_err(|_| GetSecretError::InvalidRequest)?;
                let mut history = self.secrets.history(key).await.map_err(|e| upstream(&e))?;
                let mut found = None;
                while let Some(entry) = history.next().await {
                    match entry {
                        Ok(entry) if entry.revision == revision => {
                            found = Some(entry);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => return Err(upstream(&e)),
                    }
                }
                found
            }
        };
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(GetSecretError::SecretNotFound);
        };
        let opened = self
            .config
            .encryption
            .open(&entry.value, &self.config.encryption)
            .map_err(|_| {
                tracing::error!(
                    key,
                    revision = entry.revision,
                    "a stored secret cannot be opened: is this the encryption key it was stored with?"
                );
                GetSecretError::DecryptionError
            })?;
        let mut secret = Secret {
            version: entry.revision.to_string(),
            ..Secret::default()
        };
        match String::from_utf8(opened) {
            Ok(text) => secret.string_secret = Some(text),
            Err(bytes) => secret.binary_secret = Some(bytes.into_bytes()),
        }
        Ok(secret)
    }

    async fn admin(
        &self,
        op: &str,
        arg: Option<&str>,
        msg: &Message,
    ) -> Result<AdminResponse, AdminError> {
        // Who sent it is checked before anything is opened.
        let sender = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HOST_XKEY_HEADER))
            .map(|k| k.as_str().to_string());
        if let Some(sender) = &sender {
            if XKey::from_public_key(sender).is_ok() && !self.config.admin_keys.contains(sender) {
                return Err(AdminError::Unauthorized(format!(
                    "{op} must be sealed by an admin xkey of this backend ({} configured); {sender} is not one",
                    self.config.admin_keys.len()
                )));
            }
        }
        let (_, body) = self.open(
            msg,
            [
                AdminError::InvalidPayload,
                AdminError::InvalidHeaders,
                AdminError::InvalidXKey,
                AdminError::DecryptionError,
            ],
        )?;
        match op {
            OP_PUT_SECRET => self.put_secret(&body).await,
            OP_GET_NAMES => self.get_names().await,
            OP_DELETE_SECRET => self.delete_secret(&body).await,
            _ => {
                let entity = arg.unwrap_or_default();
                if !is_valid_entity(entity) {
                    return Err(AdminError::InvalidRequest(format!(
                        "{:?} is not a component (M...) or provider (V...) public key",
                        truncate(entity, 64)
                    )));
                }
                let names: MappingNames = serde_json::from_slice(&body).map_err(|_| {
                    AdminError::InvalidRequest(
                        "the body is not a JSON array of secret names".into(),
                    )
                })?;
                if names.len() > MAX_NAMES_PER_MAPPING {
                    return Err(AdminError::InvalidRequest(format!(
                        "at most {MAX_NAMES_PER_MAPPING} names per mapping"
                    )));
                }
                if let Some(bad) = names.iter().find(|n| !is_valid_key(n)) {
                    return Err(AdminError::InvalidRequest(format!(
                        "{:?} is not a valid secret name",
                        truncate(bad, 64)
                    )));
                }
                self.change_mapping(entity, &names, op == OP_ADD_MAPPING)
                    .await
            }
        }
    }

    async fn put_secret(&self, body: &[u8]) -> Result<AdminResponse, AdminError> {
        // serde's message could quote part of the value: it is not passed on.
        let request: PutSecretRequest = serde_json::from_slice(body).map_err(|_| {
            AdminError::InvalidRequest(
                "the body is not a put_secret request {key, string_secret | binary_secret}".into(),
            )
        })?;
        if !is_valid_key(&request.key) {
            return Err(AdminError::InvalidRequest(format!(
                "{:?} is not a valid secret name (1 to 256 of A-Z a-z 0-9 - _ / = .)",
                truncate(&request.key, 64)
            )));
        }
        let value: &[u8] = match (&request.string_secret, &request.binary_secret) {
            (Some(_), Some(_)) => {
                return Err(AdminError::InvalidRequest(
                    "give string_secret or binary_secret, not both".into(),
                ))
            }
            (Some(text), None) => text.as_bytes(),
            (None, Some(bytes)) => bytes,
            (None, None) => return Err(AdminError::NoSecretProvided),
        };
        if value.len() > MAX_SECRET_BYTES {
            return Err(AdminError::InvalidRequest(format!(
                "the value is {} bytes; a secret may have at most {MAX_SECRET_BYTES}",
                value.len()
            )));
        }
        let sealed = self
            .config
            .encryption
            .seal(value, &self.config.encryption)
            .map_err(|_| AdminError::UpstreamError("cannot seal the value".into()))?;
        let revision = self
            .secrets
            .put(&request.key, sealed.into())
            .await
            .map_err(|e| AdminError::UpstreamError(e.to_string()))?;
        tracing::info!(key = %request.key, revision, bytes = value.len(), "secret stored");
        Ok(AdminResponse {
            revision,
            ..AdminResponse::default()
        })
    }

    async fn get_names(&self) -> Result<AdminResponse, AdminError> {
        let upstream = |e: &dyn std::fmt::Display| AdminError::UpstreamError(e.to_string());
        let mut keys = self.secrets.keys().await.map_err(|e| upstream(&e))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| upstream(&e))?);
        }
        names.sort();
        Ok(AdminResponse {
            names: Some(names),
            ..AdminResponse::default()
        })
    }

    async fn delete_secret(&self, body: &[u8]) -> Result<AdminResponse, AdminError> {
        let request: DeleteSecretRequest = serde_json::from_slice(body)
            .map_err(|_| AdminError::InvalidRequest("the body is not {\"key\": NAME}".into()))?;
        if !is_valid_key(&request.key) {
            return Err(AdminError::InvalidRequest(format!(
                "{:?} is not a valid secret name",
                truncate(&request.key, 64)
            )));
        }
        let upstream = |e: &dyn std::fmt::Display| AdminError::UpstreamError(e.to_string());
        let exists = self
            .secrets
            .entry(&request.key)
            .await
            .map_err(|e| upstream(&e))?
            .is_some_and(|e| e.operation == kv::Operation::Put);
        if !exists {
            return Err(AdminError::SecretNotFound);
        }
        // Purge, not delete: old revisions go too.
        self.secrets
            .purge(&request.key)
            .await
            .map_err(|e| upstream(&e))?;
        tracing::info!(key = %request.key, "secret deleted");
        Ok(AdminResponse::default())
    }

    /// Adds `names` to (or removes them from) `entity`'s mapping, retrying when another
    /// instance changed it meanwhile.
    async fn change_mapping(
        &self,
        entity: &str,
        names: &MappingNames,
        add: bool,
    ) -> Result<AdminResponse, AdminError> {
        for _ in 0..MAPPING_RETRIES {
            let current = self
                .mapping(entity)
                .await
                .map_err(AdminError::UpstreamError)?;
            let (mut set, revision) = match current {
                Some((set, revision)) => (set, Some(revision)),
                None => (MappingNames::new(), None),
            };
            if add {
                set.extend(names.iter().cloned());
                if set.len() > MAX_NAMES_PER_MAPPING {
                    return Err(AdminError::InvalidRequest(format!(
                        "an entity may be mapped to at most {MAX_NAMES_PER_MAPPING} names"
                    )));
                }
            } else {
                if revision.is_none() {
                    return Ok(AdminResponse {
                        names: Some(Vec::new()),
                        ..AdminResponse::default()
                    });
                }
                set.retain(|n| !names.contains(n));
            }
            let value =
                serde_json::to_vec(&set).map_err(|e| AdminError::UpstreamError(e.to_string()))?;
            let written = match revision {
                Some(revision) => self
                    .state
                    .update(entity, value.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => self
                    .state
                    .create(entity, value.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    }),
            };
            match written {
                Ok(()) => {
                    tracing::info!(entity, names = set.len(), add, "secret mapping changed");
                    return Ok(AdminResponse {
                        names: Some(set.into_iter().collect()),
                        ..AdminResponse::default()
                    });
                }
                Err((true, _)) => continue,
                Err((false, e)) => return Err(AdminError::UpstreamError(e)),
            }
        }
        Err(AdminError::UpstreamError(format!(
            "the mapping of {entity} kept changing; try again"
        )))
    }
}

async fn open_or_create(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    match js.get_key_value(config.bucket.clone()).await {
        Ok(store) => Ok(store),
        Err(get_error) => {
            let bucket = config.bucket.clone();
            js.create_key_value(config).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot open or create the KV bucket {bucket} (is JetStream on?): {get_error}; {e}"
                )
            })
        }
    }
}

fn json(value: &impl Serialize) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"Other":"cannot encode the reply"}}"#))
}

/// At most `max` characters of `s`, for echoing untrusted input in errors.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_truncation() {
        assert!(is_valid_backend_name("nats-kv"));
        assert!(!is_valid_backend_name("a.b"));
        assert!(!is_valid_backend_name(""));
        assert_eq!(state_bucket_name("nats-kv"), "SECRETS_nats-kv_state");
        assert_eq!(truncate("äbc", 2), "äb");
        assert_eq!(truncate("ab", 5), "ab");
    }
}
