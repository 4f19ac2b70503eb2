//! The secrets wire contract, as wasmCloud 1.x defines it (`wasmcloud-secrets-types`).
//!
//! Three parties use it:
//! - the reconciler stores a *reference* per manifest secret as a named config whose name starts
//!   with [`REFERENCE_PREFIX`] and whose values are [`SecretReference::to_config_map`];
//! - a host that starts a component naming such a config asks the reference's backend for the
//!   value over NATS: it fetches the backend's public xkey on [`server_xkey_subject`], then sends
//!   a [`SecretRequest`] sealed for that key on [`get_subject`], with its own (fresh) public xkey
//!   in the [`HOST_XKEY_HEADER`] header; the backend answers a [`SecretResponse`] sealed for the
//!   host, with its sealing key in [`RESPONSE_XKEY_HEADER`] (or, on error, in the clear);
//! - a backend (Trellis' built-in `nats-kv`, or wasmCloud's `secrets-nats-kv`) answers.
//!
//! Nothing here holds an opened value except [`Secret`], whose `Debug` prints no value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version segment of every secrets subject.
pub const API_VERSION: &str = "v1alpha1";
/// The subject prefix hosts and backends use unless told otherwise (wasmCloud's canonical one).
pub const DEFAULT_TOPIC_PREFIX: &str = "wasmcloud.secrets";
/// Request header: the requester's public xkey, which the request is sealed with and the reply
/// is sealed for.
pub const HOST_XKEY_HEADER: &str = "WasmCloud-Host-Xkey";
/// Reply header: the public xkey the backend sealed the reply with.
pub const RESPONSE_XKEY_HEADER: &str = "Server-Response-Xkey";
/// `type` of a stored secret reference.
pub const SECRET_REFERENCE_TYPE: &str = "secret.wasmcloud.dev/v1alpha1";
/// `type` of the policy carried inside a reference.
pub const POLICY_PROPERTIES_TYPE: &str = "properties.secret.wasmcloud.dev/v1alpha1";
/// Named configs whose name starts with this are secret references, not configuration.
pub const REFERENCE_PREFIX: &str = "SECRET_";
/// The largest secret value a backend stores or a host accepts (64 KiB).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// `{prefix}.v1alpha1.{backend}.get`: where hosts ask a backend for a secret.
pub fn get_subject(prefix: &str, backend: &str) -> String {
    format!("{prefix}.{API_VERSION}.{backend}.get")
}

/// `{prefix}.v1alpha1.{backend}.server_xkey`: where a backend answers its public xkey.
pub fn server_xkey_subject(prefix: &str, backend: &str) -> String {
    format!("{prefix}.{API_VERSION}.{backend}.server_xkey")
}

/// `{prefix}.v1alpha1.{backend}`: the root of every subject one backend serves.
pub fn backend_subject(prefix: &str, backend: &str) -> String {
    format!("{prefix}.{API_VERSION}.{backend}")
}

/// Whether a named config is a secret reference.
pub fn is_reference_name(name: &str) -> bool {
    name.starts_with(REFERENCE_PREFIX)
}

/// The config name wadm stores a manifest secret's reference under:
/// `SECRET_<app>-<secret>`, each part lower-cased with anything but ASCII letters and digits
/// turned into `_`.
pub fn reference_config_name(app: &str, secret_name: &str) -> String {
    fn clean(s: &str) -> String {
        s.to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }
    format!("{REFERENCE_PREFIX}{}-{}", clean(app), clean(secret_name))
}

/// A request for one secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretRequest {
    /// The secret's key in the backend.
    pub key: String,
    /// One field of a structured secret, if the backend has fields.
    #[serde(default)]
    pub field: Option<String>,
    /// The version to read; the latest when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// Who is asking.
    pub context: RequestContext,
}

/// Who asks for a secret: the entity (component or provider) and the host it runs on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestContext {
    /// The entity's embedded wascap JWT; empty for an unsigned component.
    #[serde(default)]
    pub entity_jwt: String,
    /// The host's wascap host JWT.
    #[serde(default)]
    pub host_jwt: String,
    /// The application the entity belongs to and the policy the reference carries.
    #[serde(default)]
    pub application: Application,
}

/// The application an entity belongs to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Application {
    /// The application's name (from the `wasmcloud.dev/appspec` annotation).
    #[serde(default)]
    pub name: Option<String>,
    /// The reference's policy, as a JSON string ([`SecretPolicy`]).
    #[serde(default)]
    pub policy: String,
}

/// A backend's answer: a secret or an error.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SecretResponse {
    /// The secret, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Why not, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<GetSecretError>,
}

/// A secret's value as a backend sends it: text or bytes.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Secret {
    /// The version the backend read.
    #[serde(default)]
    pub version: String,
    /// A text value.
    #[serde(default)]
    pub string_secret: Option<String>,
    /// A binary value.
    #[serde(default)]
    pub binary_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("version", &self.version)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Why a backend did not answer a secret (wasmCloud's `GetSecretError`, same JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetSecretError {
    /// The entity's JWT is missing, malformed, expired or badly signed.
    InvalidEntityJWT(String),
    /// The host's JWT is malformed, expired or badly signed.
    InvalidHostJWT(String),
    /// No secret with this key (or version).
    SecretNotFound,
    /// The request's xkey header is missing or not an xkey.
    InvalidXKey,
    /// The backend could not seal its answer.
    EncryptionError,
    /// The backend could not open the request (or its stored value).
    DecryptionError,
    /// The backend's own store failed.
    UpstreamError(String),
    /// The entity may not read this secret.
    Unauthorized,
    /// The request is not a valid secret request.
    InvalidRequest,
    /// The request body is empty or not sealed.
    InvalidPayload,
    /// The request has no headers.
    InvalidHeaders,
    /// The policy could not be evaluated.
    PolicyError(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for GetSecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidEntityJWT(e) => write!(f, "invalid entity JWT: {e}"),
            Self::InvalidHostJWT(e) => write!(f, "invalid host JWT: {e}"),
            Self::SecretNotFound => f.write_str("secret not found"),
            Self::InvalidXKey => f.write_str("invalid xkey"),
            Self::EncryptionError => f.write_str("the backend could not encrypt the secret"),
            Self::DecryptionError => f.write_str("the backend could not decrypt the request"),
            Self::UpstreamError(e) => write!(f, "backend store failed: {e}"),
            Self::Unauthorized => f.write_str("unauthorized"),
            Self::InvalidRequest => f.write_str("invalid request"),
            Self::InvalidPayload => f.write_str("invalid payload"),
            Self::InvalidHeaders => f.write_str("invalid headers"),
            Self::PolicyError(e) => write!(f, "policy error: {e}"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for GetSecretError {}

/// The policy a reference carries to its backend: the secret policy's properties without
/// `backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPolicy {
    /// Always [`POLICY_PROPERTIES_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Backend-specific settings from the manifest's policy.
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
}

impl SecretPolicy {
    /// A policy with these properties.
    pub fn new(properties: BTreeMap<String, serde_json::Value>) -> Self {
        Self {
            kind: POLICY_PROPERTIES_TYPE.to_string(),
            properties,
        }
    }
}

/// A secret reference, as stored in a named config (never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReference {
    /// The name the component asks for (`store.get(name)`).
    pub name: String,
    /// The backend to ask (`nats-kv`, ...).
    pub backend: String,
    /// The secret's key in the backend.
    pub key: String,
    /// One field of a structured secret.
    pub field: Option<String>,
    /// A pinned version.
    pub version: Option<String>,
    /// The policy, as a JSON string of [`SecretPolicy`].
    pub policy: String,
}

impl SecretReference {
    /// The named-config form wadm writes with `config.put`.
    pub fn to_config_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            ("name".to_string(), self.name.clone()),
            ("type".to_string(), SECRET_REFERENCE_TYPE.to_string()),
            ("backend".to_string(), self.backend.clone()),
            ("key".to_string(), self.key.clone()),
            ("policy".to_string(), self.policy.clone()),
        ]);
        if let Some(field) = &self.field {
            map.insert("field".to_string(), field.clone());
        }
        if let Some(version) = &self.version {
            map.insert("version".to_string(), version.clone());
        }
        map
    }

    /// Reads a reference from its named-config form; the error names what is missing.
    pub fn from_config_map(map: &BTreeMap<String, String>) -> Result<Self, String> {
        let required = |field: &str| {
            map.get(field)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| format!("the secret reference has no `{field}`"))
        };
        let kind = required("type")?;
        if kind != SECRET_REFERENCE_TYPE {
            return Err(format!(
                "the config is not a secret reference (type `{kind}`, expected `{SECRET_REFERENCE_TYPE}`)"
            ));
        }
        Ok(Self {
            name: required("name")?,
            backend: required("backend")?,
            key: required("key")?,
            field: map.get("field").cloned(),
            version: map.get("version").cloned(),
            policy: map.get("policy").cloned().unwrap_or_default(),
        })
    }

    /// The request for this reference's secret.
    pub fn request(&self, entity_jwt: &str, host_jwt: &str, app: Option<&str>) -> SecretRequest {
        SecretRequest {
            key: self.key.clone(),
            field: self.field.clone(),
            version: self.version.clone(),
            context: RequestContext {
                entity_jwt: entity_jwt.to_string(),
                host_jwt: host_jwt.to_string(),
                application: Application {
                    name: app.map(str::to_string),
                    policy: self.policy.clone(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names_follow_wadm() {
        assert_eq!(
            reference_config_name("My App", "db-pass"),
            "SECRET_my_app-db_pass"
        );
        assert!(is_reference_name("SECRET_my_app-db_pass"));
        assert!(!is_reference_name("app-config"));
    }

    #[test]
    fn references_round_trip_through_config_maps() {
        let reference = SecretReference {
            name: "db".into(),
            backend: "nats-kv".into(),
            key: "prod/db".into(),
            field: None,
            version: Some("3".into()),
            policy: serde_json::to_string(&SecretPolicy::new(BTreeMap::new())).unwrap_or_default(),
        };
        let map = reference.to_config_map();
        assert_eq!(map["type"], SECRET_REFERENCE_TYPE);
        assert_eq!(SecretReference::from_config_map(&map), Ok(reference));
        let mut plain = BTreeMap::new();
        plain.insert("type".to_string(), "something".to_string());
        let err = SecretReference::from_config_map(&plain).unwrap_err();
        assert!(err.contains("not a secret reference"), "{err}");
    }

    #[test]
    fn errors_use_wasmclouds_json() {
        let unit = serde_json::to_string(&GetSecretError::SecretNotFound).unwrap_or_default();
        assert_eq!(unit, "\"SecretNotFound\"");
        let response: SecretResponse =
            serde_json::from_str(r#"{"error":{"UpstreamError":"down"}}"#).expect("parses");
        assert_eq!(
            response.error,
            Some(GetSecretError::UpstreamError("down".into()))
        );
        let secret = Secret {
            version: "1".into(),
            string_secret: Some("hunter2".into()),
            binary_secret: None,
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
