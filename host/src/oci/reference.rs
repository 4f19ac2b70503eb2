//! OCI references: parsing, the `:latest` policy, registry names and mirrors.

use std::str::FromStr;

use anyhow::bail;
use oci_client::Reference;

/// The longest image reference accepted (the control interface's own bound).
const MAX_REFERENCE_LEN: usize = 4096;

/// Parses an OCI reference (`registry/repo:tag`, `registry/repo@sha256:...`, with or without
/// `oci://`). Errors say what a valid reference looks like.
pub fn parse_reference(image_ref: &str) -> anyhow::Result<Reference> {
    let text = strip_scheme(image_ref);
    if text.is_empty() {
        bail!("empty OCI reference: expected REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST");
    }
    if text.len() > MAX_REFERENCE_LEN {
        bail!(
            "OCI reference is {} bytes, over the {MAX_REFERENCE_LEN}-byte limit",
            text.len()
        );
    }
    Reference::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{text:?} is not a valid OCI reference ({e}): expected REGISTRY/REPOSITORY:TAG or \
             REGISTRY/REPOSITORY@sha256:DIGEST, e.g. ghcr.io/org/app:1.2.0"
        )
    })
}

/// `image_ref` without a leading `oci://` and surrounding blanks.
fn strip_scheme(image_ref: &str) -> &str {
    let trimmed = image_ref.trim();
    match trimmed.get(..6) {
        Some(prefix) if prefix.eq_ignore_ascii_case("oci://") => &trimmed[6..],
        _ => trimmed,
    }
}

/// The tag written in `image_ref`, if any (the parser fills in `latest` for untagged refs, so
/// the text is read instead).
fn explicit_tag(image_ref: &str) -> Option<&str> {
    let text = strip_scheme(image_ref);
    let name = text.split('@').next().unwrap_or(text);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Refuses `:latest` and untagged refs unless `allow_latest`: what they name changes under a
/// running lattice, so two hosts can run different code under one id. A digest-pinned ref is
/// always accepted.
pub fn check_floating_tag(
    image_ref: &str,
    reference: &Reference,
    allow_latest: bool,
) -> anyhow::Result<()> {
    if allow_latest || reference.digest().is_some() {
        return Ok(());
    }
    match explicit_tag(image_ref) {
        None => bail!(
            "{image_ref:?} has no tag, which means :latest: pin a version tag (e.g. :1.2.0) or a \
             digest (@sha256:...), or start the host with --allow-latest"
        ),
        Some("latest") => bail!(
            "{image_ref:?} uses the :latest tag, which can name different code from one pull to \
             the next: pin a version tag or a digest (@sha256:...), or start the host with \
             --allow-latest"
        ),
        Some(_) => Ok(()),
    }
}

/// A registry name as compared with flags, credentials and Docker config keys: lowercase
/// `host[:port]`, without a scheme or path; Docker Hub's aliases become `docker.io`.
pub fn normalize_registry(registry: &str) -> String {
    let text = registry.trim();
    let text = text.split_once("://").map(|(_, rest)| rest).unwrap_or(text);
    let host = text.split('/').next().unwrap_or(text).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// Parses `--registry-mirror REGISTRY=MIRROR` into normalized `(registry, mirror)`.
pub fn parse_mirror(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((registry, mirror)) if !registry.trim().is_empty() && !mirror.trim().is_empty() => {
            let registry = normalize_registry(registry);
            let mirror = normalize_registry(mirror);
            if registry == mirror {
                return Err(format!("mirror `{text}` names the registry itself"));
            }
            Ok((registry, mirror))
        }
        _ => Err(format!(
            "mirror `{text}` must look like REGISTRY=MIRROR, e.g. ghcr.io=mirror.local:5000"
        )),
    }
}

/// `reference` with its registry replaced by `registry` (same repository, tag and digest).
pub(crate) fn with_registry(reference: &Reference, registry: &str) -> Reference {
    let repository = reference.repository().to_string();
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
            registry.to_string(),
            repository,
            tag.to_string(),
            digest.to_string(),
        ),
        (None, Some(digest)) => {
            Reference::with_digest(registry.to_string(), repository, digest.to_string())
        }
        (tag, None) => Reference::with_tag(
            registry.to_string(),
            repository,
            tag.unwrap_or("latest").to_string(),
        ),
    }
}

/// The registry `reference` is fetched from, normalized.
pub(crate) fn registry_of(reference: &Reference) -> String {
    normalize_registry(reference.registry())
}
