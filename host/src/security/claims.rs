//! wasmCloud-compatible (wascap) claims embedded in a component.
//!
//! The wire format, as wasmCloud's `wascap` crate writes and reads it:
//!
//! - The claims are a JWT in a custom section named `wasmcloud_jwt` (written) or `jwt` (the
//!   name of wascap before 0.9; both are read) at the top level of the `.wasm`.
//! - The header is `{"typ":"jwt","alg":"Ed25519"}`; the signature is Ed25519 by the issuer's
//!   key over `base64url(header).base64url(claims)`, base64url without padding.
//! - The claims: `jti`, `iat`, `iss` (account public key, `A...`), `sub` (component public key,
//!   `M...`), optional `exp`/`nbf` (seconds since the epoch), `wascap` (`name`, `hash`,
//!   `tags`, `caps`, `rev`, `ver`, `call_alias`, `prov`) and `wascap_revision` (3).
//! - `hash` is the SHA-256 (hex, upper case) of the `.wasm` with every `jwt`/`wasmcloud_jwt`
//!   custom section removed, at any nesting depth, and every section re-encoded with minimal
//!   LEB128 sizes ([`strip_jwt_sections`]), so a hash survives re-signing.
//!
//! [`sign`] embeds claims; [`verify`] checks a `.wasm`'s embedded claims (signature, key
//! kinds, module hash, expiry, not-before) and says which check failed.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The custom section wascap 0.9 and later writes the JWT to.
pub const SECTION_WASMCLOUD_JWT: &str = "wasmcloud_jwt";
/// The custom section older wascap versions wrote the JWT to (still read).
pub const SECTION_JWT: &str = "jwt";
/// The `wascap_revision` written into new claims (wascap's current internal revision).
pub const WASCAP_REVISION: u32 = 3;

const HEADER_JSON: &str = r#"{"typ":"jwt","alg":"Ed25519"}"#;
const MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";
/// Section ids a nested core module / nested component is written back with.
const CORE_MODULE_SECTION: u8 = 1;
const NESTED_COMPONENT_SECTION: u8 = 4;

/// The `wascap` part of a component's claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentMetadata {
    /// A descriptive name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 (upper-case hex) of the `.wasm` without its JWT sections.
    #[serde(rename = "hash", default)]
    pub module_hash: String,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Capability attestations (wasmCloud 0.x; kept for compatibility, unused by Trellis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<Vec<String>>,
    /// A monotonically increasing revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<i32>,
    /// A human-friendly version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<String>,
    /// A call alias (wasmCloud 0.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_alias: Option<String>,
    /// Whether this is a capability provider (always false for a component).
    #[serde(rename = "prov", default)]
    pub provider: bool,
}

/// The claims of a signed component, as in wascap's `Claims<Component>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentClaims {
    /// Expiry, in seconds since the epoch.
    #[serde(rename = "exp", default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// A unique token id.
    #[serde(rename = "jti", default)]
    pub id: String,
    /// When the token was issued, in seconds since the epoch.
    #[serde(rename = "iat", default)]
    pub issued_at: u64,
    /// The issuer: the account public key (`A...`) that signed the token.
    #[serde(rename = "iss")]
    pub issuer: String,
    /// The subject: the component's public key (`M...`).
    #[serde(rename = "sub")]
    pub subject: String,
    /// Not valid before this time, in seconds since the epoch.
    #[serde(rename = "nbf", default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// The component metadata.
    #[serde(rename = "wascap", default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ComponentMetadata>,
    /// wascap's internal revision of the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wascap_revision: Option<u32>,
    /// The token these claims were read from (not part of the JSON); secrets backends are
    /// shown it as the component's identity.
    #[serde(skip)]
    pub jwt: String,
}

impl ComponentClaims {
    /// The component's name, or `""`.
    pub fn name(&self) -> &str {
        self.metadata
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or("")
    }

    /// The map wasmCloud's `claims.get` answers for a component (both the long and the legacy
    /// short key names, tags comma-joined).
    pub fn to_wasmcloud_map(&self) -> std::collections::HashMap<String, String> {
        let meta = self.metadata.clone().unwrap_or_default();
        let revision = meta.rev.unwrap_or_default().to_string();
        [
            ("call_alias", meta.call_alias.unwrap_or_default()),
            ("iss", self.issuer.clone()),
            ("issuer", self.issuer.clone()),
            ("name", meta.name.unwrap_or_default()),
            ("rev", revision.clone()),
            ("revision", revision),
            ("sub", self.subject.clone()),
            ("subject", self.subject.clone()),
            ("tags", meta.tags.unwrap_or_default().join(",")),
            ("version", meta.ver.unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Which check a component's claims failed; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// The JWT section is not a well-formed wascap JWT.
    #[error("its embedded claims are malformed ({0}); re-sign it with `trellis claims sign`")]
    Malformed(String),
    /// The header is not `typ: jwt, alg: Ed25519`.
    #[error("its claims use an unsupported JWT header ({0}); only Ed25519 JWTs are accepted")]
    BadHeader(String),
    /// The issuer is not an account key or the subject not a module (component) key.
    #[error("its claims have a bad {what} key `{key}` (expected {expected}); re-sign it")]
    BadKey {
        /// `issuer` or `subject`.
        what: &'static str,
        /// The key found.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The signature does not verify with the issuer's key.
    #[error("signature check failed: the claims were not signed by their issuer {issuer} (altered JWT?); re-sign it")]
    BadSignature {
        /// The claimed issuer.
        issuer: String,
    },
    /// The code changed after it was signed.
    #[error("module hash check failed: the code was changed after it was signed (signed hash {signed}, actual {actual}); rebuild and re-sign it")]
    HashMismatch {
        /// The hash in the claims.
        signed: String,
        /// The hash of the code.
        actual: String,
    },
    /// The claims expired.
    #[error("expiry check failed: its claims expired at {expires} (unix seconds, now {now}); re-sign it with a later --expires")]
    Expired {
        /// `exp`.
        expires: u64,
        /// Now.
        now: u64,
    },
    /// The claims are not valid yet.
    #[error("not-before check failed: its claims are not valid before {not_before} (unix seconds, now {now}); wait or re-sign it")]
    NotYetValid {
        /// `nbf`.
        not_before: u64,
        /// Now.
        now: u64,
    },
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Whether a custom section of this name holds wascap claims (`wasmcloud_jwt` or `jwt`).
pub fn is_jwt_section(name: &str) -> bool {
    name == SECTION_JWT || name == SECTION_WASMCLOUD_JWT
}

fn push_leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn push_section(out: &mut Vec<u8>, id: u8, data: &[u8]) {
    out.push(id);
    push_leb128(out, data.len());
    out.extend_from_slice(data);
}

/// The `.wasm` without its `jwt`/`wasmcloud_jwt` custom sections (at any depth), each section
/// re-encoded with a minimal size, exactly as wascap does before hashing and signing.
pub fn strip_jwt_sections(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut output: Vec<u8> = Vec::new();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.context("not a valid WebAssembly binary")?;
        match &payload {
            Payload::Version { encoding, .. } => {
                output.extend_from_slice(match encoding {
                    Encoding::Component => &COMPONENT_HEADER,
                    Encoding::Module => &MODULE_HEADER,
                });
                continue;
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                stack.push(std::mem::take(&mut output));
                continue;
            }
            Payload::End(_) => {
                let Some(mut parent) = stack.pop() else {
                    break;
                };
                let id = if output.starts_with(&COMPONENT_HEADER) {
                    NESTED_COMPONENT_SECTION
                } else {
                    CORE_MODULE_SECTION
                };
                push_section(&mut parent, id, &output);
                output = parent;
                continue;
            }
            Payload::CustomSection(c) if is_jwt_section(c.name()) => continue,
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            let data = wasm
                .get(range)
                .context("a section runs past the end of the file")?;
            push_section(&mut output, id, data);
        }
    }
    Ok(output)
}

/// The wascap module hash of a `.wasm`: SHA-256, upper-case hex, of [`strip_jwt_sections`].
pub fn module_hash(wasm: &[u8]) -> anyhow::Result<String> {
    let stripped = strip_jwt_sections(wasm)?;
    Ok(hex_upper(&Sha256::digest(&stripped)))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The embedded JWT (from `wasmcloud_jwt` or `jwt` at the top level), if any.
///
/// Bytes that are not a WebAssembly binary (the runtime also accepts the text format), or
/// that stop parsing before a JWT section, have none: they are unsigned, and the compiler
/// reports what is wrong with them.
pub fn embedded_jwt(wasm: &[u8]) -> anyhow::Result<Option<String>> {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else {
            return Ok(None);
        };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::CustomSection(c) if depth == 0 && is_jwt_section(c.name()) => {
                let text = std::str::from_utf8(c.data())
                    .context("the JWT section is not UTF-8")?
                    .trim()
                    .to_string();
                return Ok(Some(text));
            }
            _ => {}
        }
    }
    Ok(None)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Encodes and signs claims as a wascap JWT with the issuer's (account) key.
pub fn encode_jwt(claims: &ComponentClaims, issuer: &KeyPair) -> anyhow::Result<String> {
    sign_jwt(claims, issuer)
}

/// Encodes any wascap claims body (component, host, ...) as a JWT signed by `issuer`.
pub fn sign_jwt<T: Serialize>(claims: &T, issuer: &KeyPair) -> anyhow::Result<String> {
    let body = serde_json::to_vec(claims).context("cannot encode the claims")?;
    let signed = format!("{}.{}", b64().encode(HEADER_JSON), b64().encode(body));
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot sign the claims: {e}"))?;
    Ok(format!("{signed}.{}", b64().encode(signature)))
}

/// Decodes a wascap JWT and checks its header, key kinds and signature (not the dates or the
/// hash: see [`verify`]).
pub fn decode_jwt(jwt: &str) -> Result<ComponentClaims, ClaimsError> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [header, body, signature] = parts[..] else {
        return Err(ClaimsError::Malformed(format!(
            "a JWT has 3 dot-separated parts, this one has {}",
            parts.len()
        )));
    };
    let decode = |part: &str, what: &str| {
        b64()
            .decode(part.trim_end_matches('='))
            .map_err(|e| ClaimsError::Malformed(format!("{what} is not base64url: {e}")))
    };
    let header_json: serde_json::Value = serde_json::from_slice(&decode(header, "the header")?)
        .map_err(|e| ClaimsError::Malformed(format!("the header is not JSON: {e}")))?;
    if header_json["alg"] != "Ed25519" {
        return Err(ClaimsError::BadHeader(header_json.to_string()));
    }
    let claims: ComponentClaims = serde_json::from_slice(&decode(body, "the claims")?)
        .map_err(|e| ClaimsError::Malformed(format!("the claims are not wascap claims: {e}")))?;
    if !claims.issuer.starts_with('A') {
        return Err(ClaimsError::BadKey {
            what: "issuer",
            key: claims.issuer,
            expected: "an account key A...",
        });
    }
    if !claims.subject.starts_with('M') {
        return Err(ClaimsError::BadKey {
            what: "subject",
            key: claims.subject,
            expected: "a component (module) key M...",
        });
    }
    let issuer = KeyPair::from_public_key(&claims.issuer).map_err(|_| ClaimsError::BadKey {
        what: "issuer",
        key: claims.issuer.clone(),
        expected: "a valid nkeys account public key",
    })?;
    let signature = decode(signature, "the signature")?;
    let signed_part = &jwt.trim()[..header.len() + 1 + body.len()];
    issuer
        .verify(signed_part.as_bytes(), &signature)
        .map_err(|_| ClaimsError::BadSignature {
            issuer: claims.issuer.clone(),
        })?;
    Ok(claims)
}

/// The claims of a JWT decoded without any check, for display (`trellis inspect`, or when a
/// check failed): as [`ComponentClaims`] or as any other shape, such as raw JSON.
pub fn decode_unverified<T: serde::de::DeserializeOwned>(jwt: &str) -> Option<T> {
    let body = jwt.trim().split('.').nth(1)?;
    let bytes = b64().decode(body.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Checks the claims embedded in `wasm` at time `now`: signature, key kinds, module hash,
/// expiry and not-before, in that order. `Ok(None)` when the `.wasm` is unsigned.
pub fn verify(wasm: &[u8], now: u64) -> Result<Option<ComponentClaims>, ClaimsError> {
    let jwt = embedded_jwt(wasm).map_err(|e| ClaimsError::Malformed(format!("{e:#}")))?;
    let Some(jwt) = jwt else {
        return Ok(None);
    };
    let mut claims = decode_jwt(&jwt)?;
    claims.jwt = jwt.trim().to_string();
    let signed = claims
        .metadata
        .as_ref()
        .map(|m| m.module_hash.clone())
        .unwrap_or_default();
    let actual = module_hash(wasm).map_err(|e| ClaimsError::Malformed(format!("{e:#}")))?;
    // wascap skips the hash check for revisions before 3; Trellis never does: an unhashed
    // signature would let anyone swap the code under it.
    if signed != actual {
        return Err(ClaimsError::HashMismatch { signed, actual });
    }
    if let Some(expires) = claims.expires {
        if now >= expires {
            return Err(ClaimsError::Expired { expires, now });
        }
    }
    if let Some(not_before) = claims.not_before {
        if now < not_before {
            return Err(ClaimsError::NotYetValid { not_before, now });
        }
    }
    Ok(Some(claims))
}

/// What to put into new claims (the hash, keys and dates are filled by [`sign`]).
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// The component's name.
    pub name: Option<String>,
    /// Its version.
    pub ver: Option<String>,
    /// Its revision.
    pub rev: Option<i32>,
    /// Tags.
    pub tags: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires: Option<u64>,
    /// Not before, seconds since the epoch.
    pub not_before: Option<u64>,
}

/// Signs `wasm`: removes any JWT it carries, hashes it, and appends a `wasmcloud_jwt` section
/// with claims issued by `account` (an `A...` key with its seed) about `component` (`M...`).
pub fn sign(
    wasm: &[u8],
    options: &SignOptions,
    account: &KeyPair,
    component: &KeyPair,
) -> anyhow::Result<(Vec<u8>, ComponentClaims)> {
    anyhow::ensure!(
        account.public_key().starts_with('A'),
        "the issuer key must be an account key (A...)"
    );
    anyhow::ensure!(
        component.public_key().starts_with('M'),
        "the subject key must be a module/component key (M...)"
    );
    let mut out = strip_jwt_sections(wasm)?;
    let hash = hex_upper(&Sha256::digest(&out));
    let mut jti = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut jti[..]);
    let claims = ComponentClaims {
        expires: options.expires,
        id: hex_upper(&jti),
        issued_at: now_secs(),
        issuer: account.public_key(),
        subject: component.public_key(),
        not_before: options.not_before,
        metadata: Some(ComponentMetadata {
            name: options.name.clone(),
            module_hash: hash,
            tags: Some(options.tags.clone()),
            caps: None,
            rev: options.rev,
            ver: options.ver.clone(),
            call_alias: None,
            provider: false,
        }),
        wascap_revision: Some(WASCAP_REVISION),
        jwt: String::new(),
    };
    let jwt = encode_jwt(&claims, account)?;
    let mut section = Vec::new();
    push_leb128(&mut section, SECTION_WASMCLOUD_JWT.len());
    section.extend_from_slice(SECTION_WASMCLOUD_JWT.as_bytes());
    section.extend_from_slice(jwt.as_bytes());
    push_section(&mut out, 0, &section);
    Ok((out, ComponentClaims { jwt, ..claims }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny core module: header plus an empty type section.
    fn module() -> Vec<u8> {
        let mut wasm = MODULE_HEADER.to_vec();
        push_section(&mut wasm, 1, &[0]);
        wasm
    }

    fn keys() -> (KeyPair, KeyPair) {
        (KeyPair::new_account(), KeyPair::new_module())
    }

    #[test]
    fn signed_module_verifies_and_resigning_keeps_the_hash() {
        let (account, component) = keys();
        let options = SignOptions {
            name: Some("hello".into()),
            ver: Some("0.1.0".into()),
            rev: Some(2),
            tags: vec!["a".into()],
            ..Default::default()
        };
        let (signed, claims) = sign(&module(), &options, &account, &component).unwrap();
        let got = verify(&signed, now_secs()).unwrap().unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.issuer, account.public_key());
        assert_eq!(got.subject, component.public_key());
        assert_eq!(got.name(), "hello");
        let hash = module_hash(&module()).unwrap();
        assert_eq!(module_hash(&signed).unwrap(), hash);
        let (resigned, _) = sign(&signed, &options, &account, &component).unwrap();
        assert_eq!(module_hash(&resigned).unwrap(), hash);
        assert!(verify(&module(), now_secs()).unwrap().is_none());
        // The older `jwt` section name (wascap < 0.9) is read too.
        let jwt = embedded_jwt(&signed).unwrap().unwrap();
        let mut legacy = module();
        let mut section = Vec::new();
        push_leb128(&mut section, SECTION_JWT.len());
        section.extend_from_slice(SECTION_JWT.as_bytes());
        section.extend_from_slice(jwt.as_bytes());
        push_section(&mut legacy, 0, &section);
        assert_eq!(verify(&legacy, now_secs()).unwrap().unwrap(), claims);
        // Text format and broken binaries are unsigned; the compiler judges them.
        assert!(verify(b"(component)", now_secs()).unwrap().is_none());
        assert!(verify(b"\0asm\x01\0\0\0\x01\xff", now_secs())
            .unwrap()
            .is_none());
    }

    #[test]
    fn each_check_says_what_failed() {
        let (account, component) = keys();
        let now = now_secs();
        let (signed, _) = sign(&module(), &SignOptions::default(), &account, &component).unwrap();
        // Code changed after signing.
        let mut tampered = signed.clone();
        push_section(&mut tampered, 0, b"\x03evl");
        assert!(matches!(
            verify(&tampered, now),
            Err(ClaimsError::HashMismatch { .. })
        ));
        // Expired and not yet valid.
        let expired = SignOptions {
            expires: Some(now - 10),
            ..Default::default()
        };
        let (wasm, _) = sign(&module(), &expired, &account, &component).unwrap();
        assert!(matches!(
            verify(&wasm, now),
            Err(ClaimsError::Expired { .. })
        ));
        let later = SignOptions {
            not_before: Some(now + 3600),
            ..Default::default()
        };
        let (wasm, _) = sign(&module(), &later, &account, &component).unwrap();
        let err = verify(&wasm, now).unwrap_err();
        assert!(matches!(err, ClaimsError::NotYetValid { .. }));
        assert!(err.to_string().contains("not-before check failed"), "{err}");
        // A JWT whose claims were edited (issuer swapped) fails the signature check.
        let jwt = embedded_jwt(&signed).unwrap().unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut body: serde_json::Value =
            serde_json::from_slice(&b64().decode(parts[1]).unwrap()).unwrap();
        body["wascap"]["name"] = "evil".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64().encode(body.to_string()),
            parts[2]
        );
        assert!(matches!(
            decode_jwt(&forged),
            Err(ClaimsError::BadSignature { .. })
        ));
        // Wrong key kinds are refused when signing.
        assert!(sign(&module(), &SignOptions::default(), &component, &account).is_err());
    }

    #[test]
    fn nested_sections_are_stripped_and_reencoded() {
        // A component holding a core module that carries a `jwt` section.
        let mut inner = MODULE_HEADER.to_vec();
        let mut custom = Vec::new();
        push_leb128(&mut custom, 3);
        custom.extend_from_slice(b"jwt");
        custom.extend_from_slice(b"x.y.z");
        push_section(&mut inner, 0, &custom);
        let mut outer = COMPONENT_HEADER.to_vec();
        push_section(&mut outer, CORE_MODULE_SECTION, &inner);
        let stripped = strip_jwt_sections(&outer).unwrap();
        let mut expected = COMPONENT_HEADER.to_vec();
        push_section(&mut expected, CORE_MODULE_SECTION, &MODULE_HEADER);
        assert_eq!(stripped, expected);
    }
}
