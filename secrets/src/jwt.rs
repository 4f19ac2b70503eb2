//! Checking the wascap JWTs a secret request carries (the entity's and the host's).
//!
//! The format (wasmCloud's `wascap`): three base64url parts without padding,
//! `header.claims.signature`; the header says `alg: Ed25519`; the signature is Ed25519 by the
//! issuer's nkey (`iss`) over `header.claims`; `exp` and `nbf` are seconds since the epoch.
//! This is checked here with nkeys directly rather than through the host's claims module,
//! which only reads component (`M...`) claims and would pull the whole runtime into the
//! backend. Nothing here panics on any input.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

/// The largest JWT accepted (wascap JWTs are a few hundred bytes to a few KiB).
pub const MAX_JWT_BYTES: usize = 16 * 1024;

/// The claims a secret request's JWTs are checked for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The issuer's public nkey, which signed the token.
    #[serde(rename = "iss")]
    pub issuer: String,
    /// The subject: a component (`M...`), provider (`V...`) or host (`N...`) public key.
    #[serde(rename = "sub")]
    pub subject: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "exp", default)]
    pub expires: Option<u64>,
    /// Not valid before, seconds since the epoch.
    #[serde(rename = "nbf", default)]
    pub not_before: Option<u64>,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Decodes `jwt` and checks its header, signature and dates at `now`. The error says which
/// check failed, never echoing the token.
pub fn verify(jwt: &str, now: u64) -> Result<Claims, String> {
    let jwt = jwt.trim();
    if jwt.len() > MAX_JWT_BYTES {
        return Err(format!("longer than {MAX_JWT_BYTES} bytes"));
    }
    let mut parts = jwt.split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three dot-separated parts".to_string());
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |part: &str, what: &str| {
        b64.decode(part.trim_end_matches('='))
            .map_err(|_| format!("its {what} is not base64url"))
    };
    let header_json: serde_json::Value = serde_json::from_slice(&decode(header, "header")?)
        .map_err(|_| "its header is not JSON".to_string())?;
    if header_json.get("alg").and_then(|a| a.as_str()) != Some("Ed25519") {
        return Err("its header does not say alg Ed25519".to_string());
    }
    let claims: Claims = serde_json::from_slice(&decode(body, "claims")?)
        .map_err(|_| "its claims are not wascap claims (iss, sub)".to_string())?;
    let issuer = nkeys::KeyPair::from_public_key(&claims.issuer)
        .map_err(|_| "its issuer is not an nkey public key".to_string())?;
    let signature = decode(signature, "signature")?;
    // Both parts are slices of `jwt` joined by one '.', so this is their exact text.
    let signed = jwt.get(..header.len() + 1 + body.len()).unwrap_or_default();
    issuer
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "its signature does not verify with its issuer's key".to_string())?;
    if let Some(exp) = claims.expires {
        if now >= exp {
            return Err(format!("it expired at {exp} (now {now})"));
        }
    }
    if let Some(nbf) = claims.not_before {
        if now < nbf {
            return Err(format!("it is not valid before {nbf} (now {now})"));
        }
    }
    Ok(claims)
}

/// A wascap-style JWT of `claims` signed by `issuer` (for tools and tests: hosts and
/// `trellis claims sign` make the real ones).
pub fn sign(issuer: &nkeys::KeyPair, claims: &serde_json::Value) -> anyhow::Result<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!(
        "{}.{}",
        b64.encode(r#"{"typ":"jwt","alg":"Ed25519"}"#),
        b64.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    Ok(format!("{signed}.{}", b64.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(issuer: &nkeys::KeyPair, claims: &serde_json::Value) -> String {
        super::sign(issuer, claims).unwrap_or_default()
    }

    #[test]
    fn valid_tokens_pass_and_each_check_fails_alone() {
        let account = nkeys::KeyPair::new_account();
        let module = nkeys::KeyPair::new_module().public_key();
        let claims = serde_json::json!({"iss": account.public_key(), "sub": module, "iat": 1});
        let jwt = sign(&account, &claims);
        assert_eq!(verify(&jwt, 100).map(|c| c.subject), Ok(module.clone()));

        let other = nkeys::KeyPair::new_account();
        let forged = sign(&other, &claims);
        assert!(verify(&forged, 100).unwrap_err().contains("signature"));

        let expired = sign(
            &account,
            &serde_json::json!({"iss": account.public_key(), "sub": module, "exp": 50}),
        );
        assert!(verify(&expired, 100).unwrap_err().contains("expired"));
        let early = sign(
            &account,
            &serde_json::json!({"iss": account.public_key(), "sub": module, "nbf": 500}),
        );
        assert!(verify(&early, 100)
            .unwrap_err()
            .contains("not valid before"));

        // Altered claims keep the old signature: refused.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[1] = b64
            .encode(serde_json::json!({"iss": account.public_key(), "sub": "MOTHER"}).to_string());
        assert!(verify(&parts.join("."), 100).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "ééé.ééé.ééé",
            "e30.e30.e30",
            &"x".repeat(MAX_JWT_BYTES + 1),
        ] {
            assert!(verify(bad, 0).is_err(), "{bad:?}");
        }
    }
}
