//! Trellis capability providers, built in: the HTTP server, the HTTP client, key-value,
//! messaging, blobstore, secrets and the timer trigger.
//!
//! [`Launcher`] is the host's [`ProviderLauncher`]: it maps provider references to the
//! built-in implementations. The HTTP server can also run as its own supervised process
//! ([`run_provider_process`] is the child side, `trellis provider http-server`), and every host
//! runs [`serve_components_over_lattice`] so requests reach components on other hosts.

pub mod blobstore;
pub mod http_client;
pub mod http_server;
pub mod keyvalue;
pub mod messaging;
pub mod native;
pub mod secrets;
pub mod timer;

use std::sync::Arc;

use futures::future::BoxFuture;
use trellis_host::providers::{ProviderLauncher, ProviderSpec, RunningProvider};
use trellis_host::Host;

pub use http_server::lattice::serve_components_over_lattice;
pub use http_server::process::run_provider_process;

/// The built-in providers a reference can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `wasi:http` incoming-handler source (an HTTP server).
    HttpServer,
    /// `wasi:http/outgoing-handler` target (outgoing HTTP for linked components).
    HttpClient,
    /// `wasi:keyvalue` (NATS or Redis backed).
    Keyvalue,
    /// `wasmcloud:messaging` over NATS.
    Messaging,
    /// `wasi:blobstore` (NATS object store or a directory).
    Blobstore,
    /// The timer trigger: calls `trellis:timer/handler` of linked components.
    Timer,
}

/// What a provider reference resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedRef {
    /// Which implementation.
    pub builtin: Builtin,
    /// Whether it runs as a separate, supervised process.
    pub process: bool,
}

/// The references [`resolve_ref`] accepts, for error messages.
pub const SUPPORTED_REFS: &str = "trellis+builtin://http-server, trellis+builtin://http-client, \
trellis+builtin://keyvalue, trellis+builtin://messaging, trellis+builtin://blobstore, \
trellis+builtin://timer (also \
wasmcloud+builtin://NAME), trellis+process://http-server, and the images \
ghcr.io/wasmcloud/http-server, ghcr.io/wasmcloud/http-client, ghcr.io/wasmcloud/keyvalue-nats, \
ghcr.io/wasmcloud/keyvalue-redis, ghcr.io/wasmcloud/messaging-nats, \
ghcr.io/wasmcloud/blobstore-nats, ghcr.io/wasmcloud/blobstore-fs (any tag, with or without the registry host)";

fn builtin_by_name(name: &str) -> Option<Builtin> {
    match name.trim().to_ascii_lowercase().as_str() {
        "http-server" | "http_server" | "httpserver" => Some(Builtin::HttpServer),
        "http-client" | "http_client" | "httpclient" => Some(Builtin::HttpClient),
        "keyvalue" | "keyvalue-nats" | "keyvalue-redis" | "kv" => Some(Builtin::Keyvalue),
        "messaging" | "messaging-nats" => Some(Builtin::Messaging),
        "blobstore" | "blobstore-nats" | "blobstore-fs" => Some(Builtin::Blobstore),
        "timer" => Some(Builtin::Timer),
        _ => None,
    }
}

/// Resolves a provider reference: `trellis+builtin://NAME`, `wasmcloud+builtin://NAME`,
/// `trellis+process://NAME`, or a well-known wasmCloud image (tag and digest ignored, registry
/// host optional). `None` for anything else.
pub fn resolve_ref(image_ref: &str) -> Option<ResolvedRef> {
    let image_ref = image_ref.trim();
    for (scheme, process) in [
        ("trellis+builtin://", false),
        ("wasmcloud+builtin://", false),
        ("trellis+process://", true),
    ] {
        if let Some(name) = image_ref.strip_prefix(scheme) {
            let builtin = builtin_by_name(name.trim_end_matches('/'))?;
            return Some(ResolvedRef { builtin, process });
        }
    }
    if image_ref.contains("://") {
        return None;
    }
    // An OCI reference: drop the digest, then the tag (a `:` after the last `/`).
    let without_digest = image_ref.split('@').next().unwrap_or(image_ref);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let repository = match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    let mut segments: Vec<&str> = repository.split('/').collect();
    // A first segment with a dot, a port or `localhost` is a registry host.
    if segments.len() > 2
        || segments
            .first()
            .is_some_and(|s| s.contains('.') || s.contains(':') || *s == "localhost")
    {
        segments.remove(0);
    }
    let builtin = match segments.as_slice() {
        ["wasmcloud", "http-server"] => Builtin::HttpServer,
        ["wasmcloud", "http-client"] => Builtin::HttpClient,
        ["wasmcloud", "keyvalue-nats"] | ["wasmcloud", "keyvalue-redis"] => Builtin::Keyvalue,
        ["wasmcloud", "messaging-nats"] => Builtin::Messaging,
        ["wasmcloud", "blobstore-nats"] | ["wasmcloud", "blobstore-fs"] => Builtin::Blobstore,
        _ => return None,
    };
    Some(ResolvedRef {
        builtin,
        process: false,
    })
}

/// Starts the built-in providers; give it to the host as its provider launcher:
/// `HostConfig { provider_launcher: Some(Arc::new(Launcher::new())), .. }`.
#[derive(Debug, Default, Clone)]
pub struct Launcher {}

impl Launcher {
    /// A launcher for every built-in provider.
    pub fn new() -> Self {
        Self {}
    }
}

impl ProviderLauncher for Launcher {
    fn start(
        &self,
        host: Arc<Host>,
        spec: ProviderSpec,
    ) -> BoxFuture<'static, anyhow::Result<Box<dyn RunningProvider>>> {
        Box::pin(async move {
            let Some(resolved) = resolve_ref(&spec.image_ref) else {
                anyhow::bail!(
                    "provider reference `{}` is not a built-in provider, and custom provider images are not supported yet; use one of: {SUPPORTED_REFS}",
                    spec.image_ref
                );
            };
            let process = resolved.process
                || http_server::settings::get_ci(&spec.config, "process")
                    .is_some_and(http_server::settings::is_truthy);
            match resolved.builtin {
                Builtin::HttpServer if process => {
                    http_server::process::start_supervised(host, spec, http_server::NAME).await
                }
                Builtin::HttpServer => http_server::start(host, spec).await,
                _ if process => anyhow::bail!(
                    "provider `{}` cannot run as a separate process; only the http-server can",
                    spec.image_ref
                ),
                Builtin::HttpClient => http_client::start(host, spec),
                Builtin::Keyvalue => keyvalue::start(host, spec),
                Builtin::Messaging => messaging::start(host, spec),
                Builtin::Blobstore => blobstore::start(host, spec),
                Builtin::Timer => timer::start(host, spec),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(r: &str) -> Option<Builtin> {
        resolve_ref(r).map(|r| r.builtin)
    }

    #[test]
    fn resolves_builtin_schemes_and_images() {
        let cases = [
            ("trellis+builtin://http-server", Some(Builtin::HttpServer)),
            (
                "wasmcloud+builtin://messaging-nats",
                Some(Builtin::Messaging),
            ),
            (
                "ghcr.io/wasmcloud/http-server:0.23.0",
                Some(Builtin::HttpServer),
            ),
            ("wasmcloud/http-server", Some(Builtin::HttpServer)),
            (
                "ghcr.io/wasmcloud/keyvalue-redis:0.28",
                Some(Builtin::Keyvalue),
            ),
            (
                "ghcr.io/wasmcloud/keyvalue-nats@sha256:ab",
                Some(Builtin::Keyvalue),
            ),
            (
                "localhost:5000/wasmcloud/messaging-nats:1",
                Some(Builtin::Messaging),
            ),
            ("trellis+process://http-server", Some(Builtin::HttpServer)),
            (
                "ghcr.io/wasmcloud/http-client:0.13.1",
                Some(Builtin::HttpClient),
            ),
            ("wasmcloud+builtin://http-client", Some(Builtin::HttpClient)),
            ("trellis+builtin://http-client", Some(Builtin::HttpClient)),
            (
                "ghcr.io/wasmcloud/blobstore-fs:0.1",
                Some(Builtin::Blobstore),
            ),
            ("trellis+builtin://timer", Some(Builtin::Timer)),
            ("ghcr.io/wasmcloud/blobstore-s3:0.1", None),
            ("ghcr.io/other/http-server:1", None),
            ("file:///x.par.gz", None),
        ];
        for (image_ref, expected) in cases {
            assert_eq!(builtin(image_ref), expected, "{image_ref}");
        }
        assert!(resolve_ref("trellis+process://http-server").is_some_and(|r| r.process));
        assert!(resolve_ref("trellis+builtin://http-server").is_some_and(|r| !r.process));
    }
}
