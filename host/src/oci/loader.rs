//! [`OciLoader`]: the host's loader, OCI refs through the cache and the registries, everything
//! else through [`DefaultLoader`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use oci_client::Reference;

use super::cache::BlobCache;
use super::reference::{
    check_floating_tag, normalize_registry, parse_reference, registry_of, with_registry,
};
use super::registry::{ClientOptions, PullError, PullErrorKind, RegistryClient};
use super::{artifact, CredentialLookup, OciConfig, DEFAULT_OCI_CACHE_MAX_BYTES};
use crate::runtime::{classify_image_ref, ComponentLoader, DefaultLoader, ImageRefKind};

/// The longest one pull from one source may take, manifest and layer together.
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Loads components from OCI registries (see the module docs of [`crate::oci`]):
///
/// - a digest-pinned ref (`...@sha256:...`) found in the cache is served from it without
///   contacting any registry;
/// - a tag ref is resolved at the registry every time (mirrors first); when every source is
///   unreachable, the digest the tag last resolved to is served from the cache, with one
///   warning naming the ref and the age of that resolution;
/// - `:latest` and untagged refs are refused unless `allow_latest`;
/// - downloads are capped at the file loader's `max_component_bytes`, and every manifest and
///   blob is checked against its digest before it is cached or run.
pub struct OciLoader {
    files: DefaultLoader,
    client: RegistryClient,
    cache: Arc<BlobCache>,
    allow_latest: bool,
    mirrors: Vec<(String, String)>,
}

impl std::fmt::Debug for OciLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciLoader")
            .field("cache", &self.cache.dir())
            .field("allow_latest", &self.allow_latest)
            .field("mirrors", &self.mirrors)
            .finish_non_exhaustive()
    }
}

impl OciLoader {
    /// A loader with `config`, handing file refs to `files` (whose `max_component_bytes` caps
    /// downloads too). `default_cache_dir` is used when `config.cache_dir` is `None`. Fails
    /// when the CA file cannot be read.
    pub fn new(
        config: &OciConfig,
        files: DefaultLoader,
        default_cache_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let client = RegistryClient::new(ClientOptions {
            allowed_insecure: config.allowed_insecure.clone(),
            ca_file: config.ca_file.clone(),
            credentials: CredentialLookup {
                docker_config: config.docker_config.clone(),
            },
        })?;
        let cache = BlobCache::new(
            config.cache_dir.clone().unwrap_or(default_cache_dir),
            config
                .cache_max_bytes
                .unwrap_or(DEFAULT_OCI_CACHE_MAX_BYTES),
        );
        Ok(Self {
            files,
            client,
            cache: Arc::new(cache),
            allow_latest: config.allow_latest,
            mirrors: config
                .mirrors
                .iter()
                .map(|(r, m)| (normalize_registry(r), normalize_registry(m)))
                .collect(),
        })
    }

    /// The artifact cache.
    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    /// Returns the wasm bytes `image_ref` names (an OCI ref).
    pub async fn load_oci(&self, image_ref: &str) -> anyhow::Result<Vec<u8>> {
        let reference = parse_reference(image_ref)?;
        check_floating_tag(image_ref, &reference, self.allow_latest)?;
        tracing::debug!(reference = %reference, "loading a component from its OCI ref");
        let max_bytes = self.files.max_component_bytes;
        if let Some(pinned) = reference.digest() {
            if let Some(bytes) = self.cached(pinned.to_string()).await {
                tracing::debug!(reference = %reference, "component served from the OCI cache");
                return Ok(bytes);
            }
            return Ok(self.fetch(&reference, max_bytes).await?.1);
        }
        match self.fetch(&reference, max_bytes).await {
            Ok((digest, bytes)) => {
                let cache = self.cache.clone();
                let whole = reference.whole();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = cache.put_tag(&whole, &digest) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot record a tag in the OCI cache");
                    }
                })
                .await;
                Ok(bytes)
            }
            Err(error) if error.kind == PullErrorKind::Unreachable => {
                let cache = self.cache.clone();
                let whole = reference.whole();
                let record = tokio::task::spawn_blocking(move || cache.tag(&whole))
                    .await
                    .ok()
                    .flatten();
                if let Some(record) = record {
                    if let Some(bytes) = self.cached(record.digest.clone()).await {
                        tracing::warn!(
                            reference = %reference,
                            digest = %record.digest,
                            age = %crate::identity::human_uptime(record.age().as_secs()),
                            error = %error,
                            "registry unreachable: running the cached copy of this tag, resolved {} ago",
                            crate::identity::human_uptime(record.age().as_secs())
                        );
                        return Ok(bytes);
                    }
                }
                Err(error
                    .with_note("; no cached copy of this ref either")
                    .into())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The wasm bytes of the manifest `digest` from the cache, if it and its layer are there.
    async fn cached(&self, digest: String) -> Option<Vec<u8>> {
        let cache = self.cache.clone();
        let max_bytes = self.files.max_component_bytes;
        tokio::task::spawn_blocking(move || {
            let raw = cache.manifest(&digest)?;
            let manifest = artifact::parse_manifest(&raw).ok()?;
            let layer = artifact::wasm_layer(&manifest).ok()?;
            cache.blob(&layer.digest, max_bytes)
        })
        .await
        .ok()
        .flatten()
    }

    /// Pulls from the mirrors of the ref's registry, then from the registry itself; caches what
    /// it got. Returns the manifest digest and the wasm bytes.
    async fn fetch(
        &self,
        reference: &Reference,
        max_bytes: u64,
    ) -> Result<(String, Vec<u8>), PullError> {
        let registry = registry_of(reference);
        let mirrors: Vec<Reference> = self
            .mirrors
            .iter()
            .filter(|(origin, _)| *origin == registry)
            .map(|(_, mirror)| with_registry(reference, mirror))
            .collect();
        let mut mirror_errors = Vec::new();
        for mirror in &mirrors {
            match self.fetch_from(mirror, max_bytes).await {
                Ok(fetched) => return Ok(fetched),
                Err(error) => {
                    tracing::warn!(reference = %reference, mirror = %error.registry, error = %error, "mirror failed; trying the next source");
                    mirror_errors.push(error.to_string());
                }
            }
        }
        match self.fetch_from(reference, max_bytes).await {
            Ok(fetched) => {
                if !mirror_errors.is_empty() {
                    tracing::info!(reference = %reference, "pulled from the origin after its mirrors failed");
                }
                Ok(fetched)
            }
            Err(error) if mirror_errors.is_empty() => Err(error),
            Err(error) => Err(error.with_note(&format!(
                " (its mirrors failed first: {})",
                mirror_errors.join("; ")
            ))),
        }
    }

    /// Pulls from one source within [`PULL_TIMEOUT`] (a registry that sends a trickle cannot
    /// hold a scale forever; it counts as unreachable).
    async fn fetch_from(
        &self,
        source: &Reference,
        max_bytes: u64,
    ) -> Result<(String, Vec<u8>), PullError> {
        tokio::time::timeout(PULL_TIMEOUT, self.fetch_from_inner(source, max_bytes))
            .await
            .unwrap_or_else(|_| {
                let registry = registry_of(source);
                Err(PullError::new(
                    PullErrorKind::Unreachable,
                    &registry,
                    format!(
                        "pulling {source} from registry {registry} took longer than {} s: is \
                         the registry overloaded or the link very slow?",
                        PULL_TIMEOUT.as_secs()
                    ),
                ))
            })
    }

    /// Pulls from one source and caches the result (a cache that cannot be written is logged:
    /// the component still runs).
    async fn fetch_from_inner(
        &self,
        source: &Reference,
        max_bytes: u64,
    ) -> Result<(String, Vec<u8>), PullError> {
        let started = std::time::Instant::now();
        let manifest = self.client.resolve(source).await?;
        let layer = self.client.wasm_layer(source, &manifest, max_bytes)?;
        let cache = self.cache.clone();
        let digest = layer.digest.clone();
        let cached = tokio::task::spawn_blocking(move || cache.blob(&digest, max_bytes))
            .await
            .ok()
            .flatten();
        let from_cache = cached.is_some();
        let wasm = match cached {
            Some(bytes) => bytes,
            None => self.client.blob(source, &layer, max_bytes).await?,
        };
        tracing::info!(
            reference = %source,
            digest = %manifest.digest,
            bytes = wasm.len(),
            layer_cached = from_cache,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "component pulled"
        );
        let cache = self.cache.clone();
        let manifest_digest = manifest.digest.clone();
        let raw = manifest.raw;
        let layer_digest = layer.digest;
        let (wasm, stored) = tokio::task::spawn_blocking(move || {
            let stored = if from_cache {
                Ok(())
            } else {
                cache.put_blob(&layer_digest, &wasm)
            }
            .and_then(|()| cache.put_manifest(&manifest_digest, &raw));
            (wasm, stored)
        })
        .await
        .map_err(|e| {
            PullError::new(
                PullErrorKind::Other,
                &registry_of(source),
                format!("the cache-writing task failed: {e}"),
            )
        })?;
        if let Err(e) = stored {
            tracing::warn!(error = %format!("{e:#}"), "cannot write to the OCI cache; the component runs, but a restart will need the registry");
        }
        Ok((manifest.digest, wasm))
    }
}

impl ComponentLoader for OciLoader {
    fn load<'a>(&'a self, image_ref: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<u8>>> {
        Box::pin(async move {
            match classify_image_ref(image_ref) {
                ImageRefKind::Oci(reference) => self
                    .load_oci(&reference)
                    .await
                    .with_context(|| format!("pulling {reference}")),
                _ => self.files.load_ref(image_ref).await,
            }
        })
    }
}
