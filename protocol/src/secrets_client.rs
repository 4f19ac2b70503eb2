//! A client of secrets backends (feature `nats`): fetches a backend's public xkey, sends a
//! sealed [`SecretRequest`] and opens the sealed answer, as wasmCloud hosts do.
//!
//! Each request is sealed with a fresh xkey, so a captured request or reply cannot be opened
//! later with a key that outlived it. Backends' public keys are cached; a backend that restarts
//! with a new key is asked again once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use nkeys::XKey;

use crate::secrets::{
    get_subject, server_xkey_subject, GetSecretError, Secret, SecretRequest, SecretResponse,
    HOST_XKEY_HEADER, MAX_SECRET_BYTES, RESPONSE_XKEY_HEADER,
};

/// Why a secret could not be fetched. Messages never contain a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Nothing answers on the backend's subjects.
    NoBackend {
        /// The backend's name.
        backend: String,
        /// The subject that had no responders.
        subject: String,
    },
    /// The backend did not answer in time.
    Timeout {
        /// The backend's name.
        backend: String,
    },
    /// The backend answered something that is not the protocol.
    Protocol {
        /// The backend's name.
        backend: String,
        /// What was wrong.
        detail: String,
    },
    /// The backend refused (not found, unauthorized, ...).
    Backend {
        /// The backend's name.
        backend: String,
        /// Its answer.
        error: GetSecretError,
    },
    /// The NATS request failed.
    Nats(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoBackend { backend, subject } => write!(
                f,
                "no secrets backend named `{backend}` answers on `{subject}`: start it (trellis up runs `nats-kv`) or fix the policy's `backend`"
            ),
            Self::Timeout { backend } => {
                write!(f, "secrets backend `{backend}` did not answer in time")
            }
            Self::Protocol { backend, detail } => {
                write!(f, "secrets backend `{backend}` answered badly: {detail}")
            }
            Self::Backend { backend, error } => {
                write!(f, "secrets backend `{backend}` refused: {error}")
            }
            Self::Nats(e) => write!(f, "NATS request failed: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Asks secrets backends for secrets over NATS.
pub struct SecretsClient {
    client: async_nats::Client,
    prefix: String,
    timeout: Duration,
    /// Backend name -> its public transit xkey.
    server_keys: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for SecretsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsClient")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl SecretsClient {
    /// A client asking backends under `prefix` (e.g. `wasmcloud.secrets`), waiting at most
    /// `timeout` for each answer.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>, timeout: Duration) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            timeout,
            server_keys: Mutex::new(HashMap::new()),
        }
    }

    /// The subject prefix this client uses.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The secret `request` names, from `backend`.
    pub async fn get(&self, backend: &str, request: &SecretRequest) -> Result<Secret, FetchError> {
        match self.get_once(backend, request).await {
            // The backend may have restarted with a new key: ask for it once more.
            Err(FetchError::Backend {
                error: GetSecretError::DecryptionError,
                ..
            }) => {
                self.forget_key(backend);
                self.get_once(backend, request).await
            }
            other => other,
        }
    }

    async fn get_once(&self, backend: &str, request: &SecretRequest) -> Result<Secret, FetchError> {
        let server_key = self.server_key(backend).await?;
        let protocol = |detail: String| FetchError::Protocol {
            backend: backend.to_string(),
            detail,
        };
        let server = XKey::from_public_key(&server_key)
            .map_err(|e| protocol(format!("its xkey is not valid: {e}")))?;
        let ours = XKey::new();
        let body = serde_json::to_vec(request)
            .map_err(|e| protocol(format!("cannot encode the request: {e}")))?;
        let sealed = ours
            .seal(&body, &server)
            .map_err(|e| protocol(format!("cannot seal the request: {e}")))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HOST_XKEY_HEADER, ours.public_key().as_str());
        let subject = get_subject(&self.prefix, backend);
        let reply = self.request(backend, &subject, headers, sealed).await?;
        // JSON may spend up to 6 bytes on one byte of value (`\u0001` in a string, `255,` in
        // a binary array), plus the envelope and the seal.
        if reply.payload.len() > MAX_SECRET_BYTES * 6 + 4096 {
            return Err(protocol(format!(
                "the answer is {} bytes, more than a secret may be",
                reply.payload.len()
            )));
        }
        let sender = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(RESPONSE_XKEY_HEADER))
            .map(|v| v.as_str().to_string());
        let response: SecretResponse = match sender {
            Some(sender) => {
                let sender = XKey::from_public_key(&sender)
                    .map_err(|e| protocol(format!("its reply key is not valid: {e}")))?;
                let opened = ours
                    .open(&reply.payload, &sender)
                    .map_err(|_| protocol("its reply cannot be opened".to_string()))?;
                serde_json::from_slice(&opened)
                    .map_err(|e| protocol(format!("its reply is not a secret response: {e}")))?
            }
            // Errors come back in the clear.
            None => serde_json::from_slice(&reply.payload)
                .map_err(|e| protocol(format!("its reply is not a secret response: {e}")))?,
        };
        if let Some(error) = response.error {
            return Err(FetchError::Backend {
                backend: backend.to_string(),
                error,
            });
        }
        let secret = response
            .secret
            .ok_or_else(|| protocol("it answered neither a secret nor an error".to_string()))?;
        if secret.string_secret.is_none() && secret.binary_secret.is_none() {
            return Err(protocol("the secret it answered has no value".to_string()));
        }
        Ok(secret)
    }

    /// The backend's public transit xkey, cached.
    pub async fn server_key(&self, backend: &str) -> Result<String, FetchError> {
        if let Some(key) = self.cached_key(backend) {
            return Ok(key);
        }
        let subject = server_xkey_subject(&self.prefix, backend);
        let reply = self
            .request(backend, &subject, async_nats::HeaderMap::new(), Vec::new())
            .await?;
        let key = std::str::from_utf8(&reply.payload)
            .ok()
            .map(str::trim)
            .filter(|k| XKey::from_public_key(k).is_ok())
            .ok_or_else(|| FetchError::Protocol {
                backend: backend.to_string(),
                detail: format!("`{subject}` did not answer a public xkey"),
            })?
            .to_string();
        if let Ok(mut keys) = self.server_keys.lock() {
            keys.insert(backend.to_string(), key.clone());
        }
        Ok(key)
    }

    fn cached_key(&self, backend: &str) -> Option<String> {
        self.server_keys.lock().ok()?.get(backend).cloned()
    }

    fn forget_key(&self, backend: &str) {
        if let Ok(mut keys) = self.server_keys.lock() {
            keys.remove(backend);
        }
    }

    async fn request(
        &self,
        backend: &str,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> Result<async_nats::Message, FetchError> {
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload.into())
            .timeout(Some(self.timeout));
        self.client
            .send_request(subject.to_string(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => FetchError::NoBackend {
                    backend: backend.to_string(),
                    subject: subject.to_string(),
                },
                async_nats::RequestErrorKind::TimedOut => FetchError::Timeout {
                    backend: backend.to_string(),
                },
                async_nats::RequestErrorKind::Other => FetchError::Nats(e.to_string()),
            })
    }
}
