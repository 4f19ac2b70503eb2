//! Talking to a registry: resolve a manifest, download a blob under a cap with its digest
//! checked, push a component artifact. Every failure becomes a [`PullError`] that names the
//! registry and the ref and says what to do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::artifact::{
    self, ComponentInterfaces, WasmConfig, ACCEPTED_MANIFEST_MEDIA_TYPES, OCI_MANIFEST_MEDIA_TYPE,
    WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
};
use super::auth::{registry_env_suffix, CredentialLookup, CredentialSource};
use super::cache::sha256_digest;
use super::reference::{normalize_registry, registry_of};

/// How long connecting to a registry may take before it counts as unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a registry may stay silent in the middle of a response.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries (`host[:port]`) reached over plain HTTP; every other one over HTTPS.
    pub allowed_insecure: Vec<String>,
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Where credentials are found.
    pub credentials: CredentialLookup,
}

/// What kind of failure a [`PullError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullErrorKind {
    /// The registry could not be reached (refused, timed out, TLS failed) or answered 5xx.
    Unreachable,
    /// 401/403: credentials missing or refused.
    Unauthorized,
    /// 404: no such repository, tag or digest.
    NotFound,
    /// Content did not match its digest.
    Integrity,
    /// Over the component size cap.
    TooLarge,
    /// The artifact is not a component this host can run (wrong layers, an index...).
    Invalid,
    /// Anything else.
    Other,
}

/// A failed registry operation; its text names the registry and the ref and says what to do.
#[derive(Debug, Clone)]
pub struct PullError {
    /// What went wrong.
    pub kind: PullErrorKind,
    /// The registry involved.
    pub registry: String,
    message: String,
}

impl PullError {
    pub(crate) fn new(kind: PullErrorKind, registry: &str, message: String) -> Self {
        Self {
            kind,
            registry: registry.to_string(),
            message,
        }
    }

    /// The error with `more` appended to its text.
    pub fn with_note(mut self, more: &str) -> Self {
        self.message.push_str(more);
        self
    }
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PullError {}

/// A manifest as the registry served it, its digest checked.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// The sha256 digest of the raw manifest.
    pub digest: String,
    /// The raw manifest bytes.
    pub raw: Vec<u8>,
    /// The parsed manifest.
    pub manifest: OciImageManifest,
}

/// A component pulled from a registry.
#[derive(Debug, Clone)]
pub struct PulledArtifact {
    /// The manifest, its digest checked.
    pub manifest: ResolvedManifest,
    /// The wasm layer's descriptor.
    pub layer: OciDescriptor,
    /// The wasm bytes, their digest checked.
    pub wasm: Vec<u8>,
}

/// What a push wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushOutcome {
    /// The ref pushed to.
    pub reference: String,
    /// The manifest's digest (`REF@DIGEST` pins exactly this push).
    pub manifest_digest: String,
    /// The wasm layer's digest.
    pub layer_digest: String,
    /// The config blob's digest.
    pub config_digest: String,
    /// The wasm layer's size in bytes.
    pub size: u64,
}

/// One registry client setup, shared by every operation (each operation gets a fresh
/// `oci-client` client, so changed credentials take effect at once).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    allowed_insecure: Vec<String>,
    ca_certificates: Vec<Vec<u8>>,
    credentials: CredentialLookup,
}

/// One reference being worked on: the client, its credentials and where they came from.
struct Session<'a> {
    client: Client,
    reference: &'a Reference,
    registry: String,
    auth: RegistryAuth,
    source: Option<CredentialSource>,
    insecure: bool,
}

impl RegistryClient {
    /// A client; fails when the CA file cannot be read.
    pub fn new(options: ClientOptions) -> anyhow::Result<Self> {
        let ca_certificates = match &options.ca_file {
            Some(path) => vec![std::fs::read(path)
                .with_context(|| format!("cannot read the registry CA file {}", path.display()))?],
            None => Vec::new(),
        };
        Ok(Self {
            allowed_insecure: options
                .allowed_insecure
                .iter()
                .map(|r| normalize_registry(r))
                .filter(|r| !r.is_empty())
                .collect(),
            ca_certificates,
            credentials: options.credentials,
        })
    }

    /// Whether `registry` is reached over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.allowed_insecure
            .contains(&normalize_registry(registry))
    }

    async fn session<'a>(&self, reference: &'a Reference) -> Session<'a> {
        let registry = registry_of(reference);
        let mut insecure: Vec<String> = self.allowed_insecure.clone();
        // oci-client compares the name it connects to.
        insecure.push(reference.resolve_registry().to_string());
        let is_insecure = self.is_insecure(&registry);
        let config = ClientConfig {
            protocol: if is_insecure {
                ClientProtocol::HttpsExcept(insecure)
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: self
                .ca_certificates
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // Components are single-platform: an index is refused with a clear message.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            use_monolithic_push: true,
            ..Default::default()
        };
        // Off the executor: the lookup reads files and may run a credential helper.
        let lookup = self.credentials.clone();
        let name = registry.clone();
        let found = tokio::task::spawn_blocking(move || lookup.lookup(&name))
            .await
            .ok()
            .flatten();
        let (auth, source) = match found {
            Some((creds, source)) => (creds.to_registry_auth(), Some(source)),
            None => (RegistryAuth::Anonymous, None),
        };
        Session {
            client: Client::new(config),
            reference,
            registry,
            auth,
            source,
            insecure: is_insecure,
        }
    }

    /// Resolves `reference` to its manifest; checks the manifest against a pinned digest.
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedManifest, PullError> {
        let session = self.session(reference).await;
        session.resolve().await
    }

    /// Pulls the component `reference` names: its manifest, then its one wasm layer (at most
    /// `max_bytes`), every digest checked.
    pub async fn pull(
        &self,
        reference: &Reference,
        max_bytes: u64,
    ) -> Result<PulledArtifact, PullError> {
        let session = self.session(reference).await;
        let manifest = session.resolve().await?;
        let layer = session.wasm_layer(&manifest, max_bytes)?;
        let wasm = session.blob(&layer, max_bytes).await?;
        Ok(PulledArtifact {
            manifest,
            layer,
            wasm,
        })
    }

    /// The one wasm layer of `manifest`, checked: a sha256 digest, a declared size within
    /// `max_bytes`.
    pub fn wasm_layer(
        &self,
        reference: &Reference,
        manifest: &ResolvedManifest,
        max_bytes: u64,
    ) -> Result<OciDescriptor, PullError> {
        checked_wasm_layer(reference, manifest, max_bytes)
    }

    /// Downloads blob `descriptor` of `reference`'s repository (at most `max_bytes`), its
    /// digest checked.
    pub async fn blob(
        &self,
        reference: &Reference,
        descriptor: &OciDescriptor,
        max_bytes: u64,
    ) -> Result<Vec<u8>, PullError> {
        let session = self.session(reference).await;
        session
            .client
            .store_auth_if_needed(reference.resolve_registry(), &session.auth)
            .await;
        session.blob(descriptor, max_bytes).await
    }

    /// Downloads the config blob of `manifest` (at most 1 MiB), its digest checked.
    pub async fn config_blob(
        &self,
        reference: &Reference,
        manifest: &OciImageManifest,
    ) -> Result<Vec<u8>, PullError> {
        self.blob(reference, &manifest.config, artifact::MAX_CONFIG_BYTES)
            .await
    }

    /// Pushes `wasm` as a component artifact to `reference`: one `application/wasm` layer, an
    /// `application/vnd.wasm.config.v0+json` config naming its imports and exports, and an OCI
    /// image manifest with `annotations`.
    pub async fn push_component(
        &self,
        reference: &Reference,
        wasm: Vec<u8>,
        mut annotations: BTreeMap<String, String>,
    ) -> Result<PushOutcome, PullError> {
        let session = self.session(reference).await;
        let registry = session.registry.clone();
        let info = artifact::wasm_info(&wasm).map_err(|e| {
            PullError::new(
                PullErrorKind::Invalid,
                &registry,
                format!("not pushing to {reference}: the file is not WebAssembly ({e:#})"),
            )
        })?;
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let layer_digest = sha256_digest(&wasm);
        let is_component = info.kind == "component";
        let config = WasmConfig {
            created: created.clone(),
            author: None,
            architecture: "wasm".into(),
            os: if is_component { "wasip2" } else { "wasip1" }.into(),
            layer_digests: vec![layer_digest.clone()],
            component: is_component.then(|| ComponentInterfaces {
                exports: info.exports.clone(),
                imports: info.imports.clone(),
                target: None,
            }),
        };
        let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
        let config_digest = sha256_digest(&config_bytes);
        annotations
            .entry("org.opencontainers.image.created".into())
            .or_insert(created);
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
            config: OciDescriptor {
                media_type: WASM_CONFIG_MEDIA_TYPE.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as i64,
                ..Default::default()
            },
            layers: vec![OciDescriptor {
                media_type: WASM_LAYER_MEDIA_TYPE.into(),
                digest: layer_digest.clone(),
                size: wasm.len() as i64,
                ..Default::default()
            }],
            subject: None,
            artifact_type: None,
            annotations: (!annotations.is_empty()).then_some(annotations),
        };
        let raw = serde_json::to_vec(&manifest).unwrap_or_default();
        let manifest_digest = sha256_digest(&raw);
        session
            .client
            .store_auth_if_needed(reference.resolve_registry(), &session.auth)
            .await;
        session
            .client
            .push_blob(reference, &wasm, &layer_digest)
            .await
            .map_err(|e| session.map("pushing the wasm layer of", e, false))?;
        session
            .client
            .push_blob(reference, &config_bytes, &config_digest)
            .await
            .map_err(|e| session.map("pushing the config of", e, false))?;
        session
            .client
            .push_manifest_raw(
                reference,
                raw,
                http::HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|e| session.map("pushing the manifest of", e, false))?;
        Ok(PushOutcome {
            reference: reference.whole(),
            manifest_digest,
            layer_digest,
            config_digest,
            size: wasm.len() as u64,
        })
    }
}

impl Session<'_> {
    async fn resolve(&self) -> Result<ResolvedManifest, PullError> {
        let (raw, _) = self
            .client
            .pull_manifest_raw(self.reference, &self.auth, ACCEPTED_MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.map("resolving", e, true))?;
        let digest = sha256_digest(&raw);
        if let Some(pinned) = self.reference.digest() {
            if pinned != digest {
                return Err(self.error(
                    PullErrorKind::Integrity,
                    &format!(
                        "the registry served a manifest whose digest is {digest}, not the pinned \
                         {pinned}: it or something between altered it; nothing was cached or run"
                    ),
                ));
            }
        }
        let manifest = artifact::parse_manifest(&raw)
            .map_err(|e| self.error(PullErrorKind::Invalid, &format!("{e:#}")))?;
        Ok(ResolvedManifest {
            digest,
            raw,
            manifest,
        })
    }

    fn wasm_layer(
        &self,
        manifest: &ResolvedManifest,
        max_bytes: u64,
    ) -> Result<OciDescriptor, PullError> {
        checked_wasm_layer(self.reference, manifest, max_bytes)
    }

    /// Downloads one blob into memory, never more than `max_bytes`, and checks its digest.
    async fn blob(&self, layer: &OciDescriptor, max_bytes: u64) -> Result<Vec<u8>, PullError> {
        let mut sink = CappedSink {
            bytes: Vec::new(),
            max_bytes,
            exceeded: false,
        };
        let result = self
            .client
            .pull_blob(self.reference, layer, &mut sink)
            .await;
        if sink.exceeded {
            return Err(self.error(PullErrorKind::TooLarge, &too_large(-1, max_bytes)));
        }
        result.map_err(|e| self.map(&format!("downloading blob {} of", layer.digest), e, true))?;
        let actual = sha256_digest(&sink.bytes);
        if actual != layer.digest {
            return Err(self.error(
                PullErrorKind::Integrity,
                &format!(
                    "blob {} does not match its digest (its content hashes to {actual}): the \
                     registry or something between served altered content; nothing was cached or run",
                    layer.digest
                ),
            ));
        }
        Ok(sink.bytes)
    }

    fn error(&self, kind: PullErrorKind, what: &str) -> PullError {
        error_at(self.reference, kind, what)
    }

    /// Turns an `oci-client` error into a [`PullError`] that says what to do.
    fn map(&self, doing: &str, error: OciDistributionError, pulling: bool) -> PullError {
        let registry = &self.registry;
        let reference = self.reference;
        let detail = chain(&error);
        let (kind, advice) = match classify(&error) {
            PullErrorKind::Unauthorized => (
                PullErrorKind::Unauthorized,
                match &self.source {
                    Some(source) => format!(
                        "401 Unauthorized: the registry refused the credentials from {source}; \
                         fix the credentials for {registry}"
                    ),
                    None => format!(
                        "401 Unauthorized: the registry needs credentials and none were found \
                         for {registry}; set TRELLIS_OCI_AUTH_{}=user:password in the environment, or \
                         add {registry} to the Docker config's `auths` (`docker login {registry}`)",
                        registry_env_suffix(registry)
                    ),
                },
            ),
            PullErrorKind::NotFound => (
                PullErrorKind::NotFound,
                if pulling {
                    format!(
                        "404 Not Found: {registry} has no {reference} (the repository, tag or \
                         digest does not exist); check the ref, or push it first (`trellis push \
                         {reference} FILE.wasm`)"
                    )
                } else {
                    format!("404 Not Found ({detail})")
                },
            ),
            PullErrorKind::Unreachable if is_server_error(&error) => (
                PullErrorKind::Unreachable,
                format!(
                    "the registry failed with a server error ({detail}); try again, or check \
                     the registry's own logs"
                ),
            ),
            PullErrorKind::Unreachable => (
                PullErrorKind::Unreachable,
                if self.insecure {
                    format!(
                        "cannot reach the registry over plain HTTP ({detail}); is the registry \
                         up at {registry}?"
                    )
                } else {
                    format!(
                        "cannot reach the registry over HTTPS ({detail}); is the registry up at \
                         {registry}? If it serves plain HTTP, list it in --allowed-insecure \
                         (TRELLIS_ALLOWED_INSECURE)"
                    )
                },
            ),
            PullErrorKind::Integrity => (
                PullErrorKind::Integrity,
                format!(
                    "content does not match its digest ({detail}): the registry or something \
                     between served altered content; nothing was cached or run"
                ),
            ),
            kind => (kind, detail),
        };
        PullError::new(
            kind,
            registry,
            format!("{doing} {reference} on registry {registry} failed: {advice}"),
        )
    }
}

/// An error about `reference` that is not the registry's answer (what the artifact holds).
fn error_at(reference: &Reference, kind: PullErrorKind, what: &str) -> PullError {
    let registry = registry_of(reference);
    PullError::new(
        kind,
        &registry,
        format!("cannot use {reference} from registry {registry}: {what}"),
    )
}

/// The one wasm layer of `manifest`, with a sha256 digest and a declared size within
/// `max_bytes`.
fn checked_wasm_layer(
    reference: &Reference,
    manifest: &ResolvedManifest,
    max_bytes: u64,
) -> Result<OciDescriptor, PullError> {
    let layer = artifact::wasm_layer(&manifest.manifest)
        .map_err(|e| error_at(reference, PullErrorKind::Invalid, &format!("{e:#}")))?;
    if !layer.digest.starts_with("sha256:") {
        return Err(error_at(
            reference,
            PullErrorKind::Invalid,
            &format!(
                "the wasm layer's digest {} is not sha256, the only algorithm this host verifies",
                layer.digest
            ),
        ));
    }
    if layer.size < 0 || layer.size as u64 > max_bytes {
        return Err(error_at(
            reference,
            PullErrorKind::TooLarge,
            &too_large(layer.size, max_bytes),
        ));
    }
    Ok(layer.clone())
}

fn too_large(size: i64, max_bytes: u64) -> String {
    let size = if size < 0 {
        "larger than".to_string()
    } else {
        format!("{size} bytes, over")
    };
    format!(
        "the wasm layer is {size} the {max_bytes}-byte cap on components; raise the cap with \
         `trellis host --max-component-size-mb` (env TRELLIS_MAX_COMPONENT_SIZE_MB)"
    )
}

/// Whether the registry answered with a 5xx or 429 (it is there, but failing).
fn is_server_error(error: &OciDistributionError) -> bool {
    use OciDistributionError as E;
    match error {
        E::RequestError(e) => e.status().is_some_and(|s| s.is_server_error()),
        E::ServerError { code, .. } => *code >= 500,
        E::RegistryError { .. } => true,
        _ => false,
    }
}

/// What kind of failure an `oci-client` error is.
fn classify(error: &OciDistributionError) -> PullErrorKind {
    use OciDistributionError as E;
    match error {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => PullErrorKind::Unauthorized,
        E::ImageManifestNotFoundError(_) => PullErrorKind::NotFound,
        E::DigestError(_) => PullErrorKind::Integrity,
        E::RequestError(e) if e.is_connect() || e.is_timeout() => PullErrorKind::Unreachable,
        E::RequestError(e) => match e.status().map(|s| s.as_u16()) {
            Some(401 | 403) => PullErrorKind::Unauthorized,
            Some(404) => PullErrorKind::NotFound,
            Some(500..=599) => PullErrorKind::Unreachable,
            _ => PullErrorKind::Other,
        },
        E::ServerError { code, .. } => match code {
            401 | 403 => PullErrorKind::Unauthorized,
            404 => PullErrorKind::NotFound,
            500..=599 => PullErrorKind::Unreachable,
            _ => PullErrorKind::Other,
        },
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                PullErrorKind::Unauthorized
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                PullErrorKind::NotFound
            } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                PullErrorKind::Unreachable
            } else {
                PullErrorKind::Other
            }
        }
        _ => PullErrorKind::Other,
    }
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Collects a download in memory and fails it once it passes `max_bytes`.
struct CappedSink {
    bytes: Vec<u8>,
    max_bytes: u64,
    exceeded: bool,
}

impl tokio::io::AsyncWrite for CappedSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.max_bytes {
            self.exceeded = true;
            return Poll::Ready(Err(std::io::Error::other(
                "the download is over the component size cap",
            )));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
