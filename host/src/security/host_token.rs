//! The host's own wascap JWT (`Claims<Host>`), which it shows secrets backends as its identity.
//!
//! wasmCloud hosts sign theirs with a cluster key; a Trellis host does the same with a cluster
//! key it makes at start (`C...`), subject its host id (`N...`). Backends check the signature
//! and dates; they trust hosts because hosts are authenticated NATS users of the lattice.

use std::collections::BTreeMap;

use nkeys::KeyPair;
use serde::Serialize;

use super::claims::{now_secs, sign_jwt};

/// How long a host token is valid; a host running longer makes a new one on restart.
const VALIDITY_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Serialize)]
struct HostClaims<'a> {
    exp: u64,
    jti: String,
    iat: u64,
    iss: String,
    sub: &'a str,
    nbf: u64,
    wascap: HostMetadata<'a>,
    wascap_revision: u32,
}

#[derive(Serialize)]
struct HostMetadata<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

/// A signed host JWT.
#[derive(Clone)]
pub struct HostToken {
    /// The token.
    pub jwt: String,
    /// The cluster key that signed it (public).
    pub issuer: String,
}

impl std::fmt::Debug for HostToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostToken")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl HostToken {
    /// A token for `host_id` (friendly `name`, `labels`), signed by a fresh cluster key.
    pub fn issue(
        host_id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let cluster = KeyPair::new_cluster();
        let now = now_secs();
        let claims = HostClaims {
            exp: now + VALIDITY_SECS,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            iss: cluster.public_key(),
            sub: host_id,
            nbf: now,
            wascap: HostMetadata { name, labels },
            wascap_revision: 3,
        };
        Ok(Self {
            jwt: sign_jwt(&claims, &cluster)?,
            issuer: cluster.public_key(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::claims::decode_unverified;

    #[test]
    fn a_host_token_names_the_host_and_is_signed_by_a_cluster_key() {
        let host = KeyPair::new_server();
        let labels = BTreeMap::from([("zone".to_string(), "edge".to_string())]);
        let token = HostToken::issue(&host.public_key(), "calm-otter-1", &labels).expect("token");
        assert!(token.issuer.starts_with('C'));
        let body: serde_json::Value = decode_unverified(&token.jwt).expect("decodes");
        assert_eq!(body["sub"], host.public_key().as_str());
        assert_eq!(body["wascap"]["name"], "calm-otter-1");
        assert_eq!(body["wascap"]["labels"]["zone"], "edge");
        // The signature covers header.body with the issuer's key.
        let parts: Vec<&str> = token.jwt.split('.').collect();
        let signature =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[2])
                .expect("base64");
        let issuer = KeyPair::from_public_key(&token.issuer).expect("key");
        issuer
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("signature verifies");
    }
}
