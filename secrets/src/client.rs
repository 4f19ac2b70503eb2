//! The admin client of a `nats-kv` backend: seals each request with an admin xkey for the
//! backend's transit key and reads the plain JSON reply. Errors never contain a value.

use std::time::Duration;

use anyhow::{bail, Context as _};
use nkeys::XKey;
use serde::Serialize;
use trellis_protocol::secrets::{backend_subject, server_xkey_subject, HOST_XKEY_HEADER};

use crate::admin::{
    AdminError, AdminResponse, DeleteSecretRequest, GetNamesRequest, MappingNames,
    PutSecretRequest, OP_ADD_MAPPING, OP_DELETE_SECRET, OP_GET_NAMES, OP_PUT_SECRET,
    OP_REMOVE_MAPPING,
};

/// A value to store.
pub enum SecretValue {
    /// Text (sent as `string_secret`).
    Text(String),
    /// Bytes (sent as `binary_secret`).
    Bytes(Vec<u8>),
}

impl SecretValue {
    /// Text when `bytes` is UTF-8, else bytes (stored the same way; a `get` answers UTF-8
    /// values as text, as wasmCloud's backend does).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(text) => Self::Text(text),
            Err(e) => Self::Bytes(e.into_bytes()),
        }
    }

    /// The value's size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Bytes(b) => b.len(),
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<redacted>, {} bytes)", self.len())
    }
}

/// Administers one backend.
pub struct AdminClient {
    client: async_nats::Client,
    prefix: String,
    backend: String,
    admin: XKey,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("prefix", &self.prefix)
            .field("backend", &self.backend)
            .field("admin", &self.admin.public_key())
            .finish()
    }
}

impl AdminClient {
    /// A client of backend `backend` under `prefix`, sealing with the admin key `admin`.
    pub fn new(
        client: async_nats::Client,
        prefix: impl Into<String>,
        backend: impl Into<String>,
        admin: XKey,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            backend: backend.into(),
            admin,
            timeout,
        }
    }

    /// Stores `value` as `key`; returns the new revision.
    pub async fn put(&self, key: &str, value: SecretValue) -> anyhow::Result<u64> {
        let mut request = PutSecretRequest {
            key: key.to_string(),
            ..PutSecretRequest::default()
        };
        match value {
            SecretValue::Text(text) => request.string_secret = Some(text),
            SecretValue::Bytes(bytes) => request.binary_secret = Some(bytes),
        }
        Ok(self.call(OP_PUT_SECRET, &request).await?.revision)
    }

    /// The stored keys, sorted.
    pub async fn get_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .call(OP_GET_NAMES, &GetNamesRequest::default())
            .await?
            .names
            .unwrap_or_default())
    }

    /// Removes `key` and its history.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let request = DeleteSecretRequest {
            key: key.to_string(),
        };
        self.call(OP_DELETE_SECRET, &request).await.map(|_| ())
    }

    /// Maps `names` to `entity` (a component or provider public key); returns the entity's
    /// names after the change.
    pub async fn add_mapping(
        &self,
        entity: &str,
        names: &MappingNames,
    ) -> anyhow::Result<Vec<String>> {
        let op = format!("{OP_ADD_MAPPING}.{entity}");
        Ok(self.call(&op, names).await?.names.unwrap_or_default())
    }

    /// Unmaps `names` from `entity`; returns the entity's names after the change.
    pub async fn remove_mapping(
        &self,
        entity: &str,
        names: &MappingNames,
    ) -> anyhow::Result<Vec<String>> {
        let op = format!("{OP_REMOVE_MAPPING}.{entity}");
        Ok(self.call(&op, names).await?.names.unwrap_or_default())
    }

    /// The backend's public transit xkey.
    pub async fn server_key(&self) -> anyhow::Result<XKey> {
        let subject = server_xkey_subject(&self.prefix, &self.backend);
        let reply = self
            .request(&subject, async_nats::HeaderMap::new(), Vec::new())
            .await?;
        std::str::from_utf8(&reply.payload)
            .ok()
            .and_then(|k| XKey::from_public_key(k.trim()).ok())
            .with_context(|| format!("`{subject}` did not answer a public xkey"))
    }

    /// Seals `body` and sends it as operation `op`; a refusal becomes an error.
    async fn call<B: Serialize + ?Sized>(
        &self,
        op: &str,
        body: &B,
    ) -> anyhow::Result<AdminResponse> {
        let server = self.server_key().await?;
        let body = serde_json::to_vec(body).context("cannot encode the request")?;
        let sealed = self
            .admin
            .seal(&body, &server)
            .map_err(|_| anyhow::anyhow!("cannot seal the request"))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HOST_XKEY_HEADER, self.admin.public_key().as_str());
        let subject = format!("{}.{op}", backend_subject(&self.prefix, &self.backend));
        let reply = self.request(&subject, headers, sealed).await?;
        let response: AdminResponse =
            serde_json::from_slice(&reply.payload).with_context(|| {
                format!(
                    "the secrets backend answered {op} with something else than a reply: {}",
                    String::from_utf8_lossy(&reply.payload[..reply.payload.len().min(200)])
                )
            })?;
        match response.error {
            None => Ok(response),
            Some(AdminError::Unauthorized(why)) => bail!(
                "the secrets backend `{}` refused (unauthorized): {why}; use the backend's admin seed \
                 (--admin-seed-file, or TRELLIS_SECRETS_ADMIN_SEED_FILE)",
                self.backend
            ),
            Some(error) => bail!("the secrets backend `{}` refused: {error}", self.backend),
        }
    }

    async fn request(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> anyhow::Result<async_nats::Message> {
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload.into())
            .timeout(Some(self.timeout));
        self.client
            .send_request(subject.to_string(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => anyhow::anyhow!(
                    "no secrets backend `{}` answers on {subject}: is `trellis up` (or `trellis secrets serve`) running?",
                    self.backend
                ),
                async_nats::RequestErrorKind::TimedOut => anyhow::anyhow!(
                    "the secrets backend `{}` did not answer on {subject} within {} ms",
                    self.backend,
                    self.timeout.as_millis()
                ),
                async_nats::RequestErrorKind::Other => {
                    anyhow::anyhow!("request on {subject} failed: {e}")
                }
            })
    }
}
