//! The admin side of the `nats-kv` backend: operation names, request and reply bodies, and the
//! checks every name goes through.
//!
//! Operations are subjects under `{prefix}.v1alpha1.{backend}`:
//! - `put_secret` (wasmCloud's): a [`PutSecretRequest`], answered with [`AdminResponse`]
//!   `{revision, error}`;
//! - `get_names` (Trellis): no body fields needed, answered with `{names}`;
//! - `delete_secret` (Trellis): a [`DeleteSecretRequest`];
//! - `add_mapping.{entity}` / `remove_mapping.{entity}` (wasmCloud's): a JSON set of secret
//!   names the entity (a component `M...` or provider `V...` public key) may read.
//!
//! Unlike wasmCloud's backend, every admin body must be sealed (`XKey::seal`) for the
//! backend's transit key by an *admin* xkey the backend was configured with, whose public key
//! goes in the `WasmCloud-Host-Xkey` header; anything else is refused with
//! [`AdminError::Unauthorized`]. Replies are plain JSON and never carry a value.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use trellis_protocol::secrets::MAX_SECRET_BYTES;

/// `put_secret`: store a value (a new revision of `key`).
pub const OP_PUT_SECRET: &str = "put_secret";
/// `get_names`: list the stored keys.
pub const OP_GET_NAMES: &str = "get_names";
/// `delete_secret`: remove a key and its history.
pub const OP_DELETE_SECRET: &str = "delete_secret";
/// `add_mapping.{entity}`: allow an entity to read secrets.
pub const OP_ADD_MAPPING: &str = "add_mapping";
/// `remove_mapping.{entity}`: withdraw secrets from an entity.
pub const OP_REMOVE_MAPPING: &str = "remove_mapping";

/// The longest secret key (name) accepted.
pub const MAX_KEY_LEN: usize = 256;
/// The most names one mapping request may carry (and one entity may be mapped to).
pub const MAX_NAMES_PER_MAPPING: usize = 1024;
/// The largest request body the backend opens: a 64 KiB binary value as a JSON array of
/// numbers takes up to 4 bytes per byte, plus the envelope and the seal.
pub const MAX_REQUEST_BYTES: usize = MAX_SECRET_BYTES * 4 + 16 * 1024;

/// Whether `key` is an acceptable secret key: 1 to [`MAX_KEY_LEN`] characters of ASCII
/// letters, digits and `-_/=.`, not starting or ending with `.` and without `..` (the
/// characters a JetStream KV key may hold, so every accepted key can be stored).
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_/=.".contains(&b))
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
}

/// Whether `entity` may be mapped: the public key of a component (`M...`) or a capability
/// provider (`V...`), as the subject of its wascap JWT.
pub fn is_valid_entity(entity: &str) -> bool {
    matches!(entity.as_bytes().first(), Some(b'M' | b'V'))
        && nkeys::KeyPair::from_public_key(entity).is_ok()
}

/// Body of `put_secret` (wasmCloud's `PutSecretRequest`): exactly one of the values.
#[derive(Default, Serialize, Deserialize)]
pub struct PutSecretRequest {
    /// The secret's key.
    pub key: String,
    /// Ignored (wasmCloud sends it; revisions are the versions).
    #[serde(default)]
    pub version: String,
    /// A text value.
    #[serde(default)]
    pub string_secret: Option<String>,
    /// A binary value.
    #[serde(default)]
    pub binary_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for PutSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecretRequest")
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Body of `delete_secret`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeleteSecretRequest {
    /// The key to remove, with its history.
    pub key: String,
}

/// Body of `get_names` (sealed like every admin request; it has nothing to say).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetNamesRequest {}

/// The names of a mapping request: a JSON array (a set in wasmCloud).
pub type MappingNames = BTreeSet<String>;

/// Why an admin operation was refused. wasmCloud's `PutSecretError` variants keep their JSON;
/// the others are Trellis additions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminError {
    /// The body is empty or malformed.
    InvalidPayload,
    /// The request has no headers.
    InvalidHeaders,
    /// The request's xkey header is missing or not an xkey.
    InvalidXKey,
    /// The body could not be opened with the sender's key.
    DecryptionError,
    /// A put without a value.
    NoSecretProvided,
    /// The sender's xkey is not an admin key of this backend.
    Unauthorized(String),
    /// The request is well sealed but says something unacceptable.
    InvalidRequest(String),
    /// No such secret.
    SecretNotFound,
    /// The store failed.
    UpstreamError(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidPayload => f.write_str("invalid payload"),
            Self::InvalidHeaders => f.write_str("the request has no headers"),
            Self::InvalidXKey => f.write_str("the request's xkey header is missing or invalid"),
            Self::DecryptionError => f.write_str("the backend could not open the request"),
            Self::NoSecretProvided => f.write_str("no value given"),
            Self::Unauthorized(why) => write!(f, "unauthorized: {why}"),
            Self::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Self::SecretNotFound => f.write_str("no such secret"),
            Self::UpstreamError(why) => write!(f, "the backend's store failed: {why}"),
        }
    }
}

impl std::error::Error for AdminError {}

/// The reply to every admin operation. `put_secret` fills `revision` (wasmCloud's
/// `PutSecretResponse` shape), `get_names` fills `names`, mappings fill `names` with the
/// entity's names after the change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// The revision written (`put_secret`), else 0.
    #[serde(default)]
    pub revision: u64,
    /// Names: the stored keys (`get_names`), or the entity's mapped names (mappings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Why the operation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AdminError>,
}

impl From<AdminError> for AdminResponse {
    fn from(error: AdminError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_safe_and_bounded() {
        for good in [
            "db",
            "prod/db-password",
            "a.b",
            "A_b=c",
            &"k".repeat(MAX_KEY_LEN),
        ] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a*",
            "a>",
            "ü",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(!is_valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn entities_are_component_or_provider_keys() {
        let module = nkeys::KeyPair::new_module().public_key();
        let service = nkeys::KeyPair::new_service().public_key();
        let user = nkeys::KeyPair::new_user().public_key();
        assert!(is_valid_entity(&module));
        assert!(is_valid_entity(&service));
        assert!(!is_valid_entity(&user));
        assert!(!is_valid_entity("Mnotakey"));
        assert!(!is_valid_entity(""));
    }

    #[test]
    fn put_responses_use_wasmclouds_json() {
        let ok = AdminResponse {
            revision: 3,
            ..AdminResponse::default()
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap_or_default(),
            r#"{"revision":3}"#
        );
        let refused: AdminResponse =
            serde_json::from_str(r#"{"revision":0,"error":"DecryptionError"}"#).unwrap_or_default();
        assert_eq!(refused.error, Some(AdminError::DecryptionError));
        let request = PutSecretRequest {
            key: "k".into(),
            string_secret: Some("hunter2".into()),
            ..PutSecretRequest::default()
        };
        assert!(!format!("{request:?}").contains("hunter2"));
    }
}
