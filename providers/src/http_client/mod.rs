//! Outgoing HTTP for components (`wasi:http/outgoing-handler`), granted by a link to the
//! http-client provider as in wasmCloud 1.x.
//!
//! # Who may send
//!
//! A component may send HTTP requests when it has a link named `default` from itself
//! (source) on `wasi:http/outgoing-handler` (namespace `wasi`, package `http`, interface
//! `outgoing-handler`) to an http-client provider (target), which is how wasmCloud 1.x
//! manifests express it:
//!
//! ```yaml
//! - type: link
//!   properties:
//!     target: httpclient          # a ghcr.io/wasmcloud/http-client:* provider
//!     namespace: wasi
//!     package: http
//!     interfaces: [outgoing-handler]
//! ```
//!
//! - Without that link the request fails at once with `internal-error` and a message that
//!   names the missing link (wasmCloud fails such a call too: there is no target to forward
//!   it to). That holds whether or not the component sets `allowed_hosts`: that key no
//!   longer grants anything on a host that serves this capability.
//! - With the link, `allowed_hosts` in the component's config, when set, still restricts the
//!   destinations (`HTTP-request-denied` for the others; see
//!   [`trellis_host::runtime::AllowedHosts`]); without it every destination is allowed, as in
//!   wasmCloud.
//! - Link puts and deletes apply to the next request: the link table is the host's
//!   in-memory mirror of the lattice's links.
//!
//! # Where the request is sent from
//!
//! The host running the component sends the request itself, in-process, over one pool of
//! connections per host ([`client::PooledClient`]: HTTP/1.1, keep-alive, idle connections
//! closed after [`client::IDLE_TIMEOUT`]); nothing crosses NATS. The provider is honoured as
//! configuration, like the keyvalue provider: the settings of a request are the config of
//! the provider when it runs on the component's host, then the link's target configs (later
//! wins), keys in any letter case:
//!
//! - `timeout_ms`: the longest wait for the response head (connecting included) and between
//!   two body chunks, in milliseconds; default [`DEFAULT_TIMEOUT`], at most [`MAX_TIMEOUT`].
//!   The guest's own request options can only shorten it.
//! - `ssl_certs_file`: a PEM file of extra CA certificates to trust (on the component's host).
//! - `load_native_certs` (default `true`): whether the system's CA certificates are trusted.
//!
//! HTTPS uses rustls with the system's CA certificates (`rustls-native-certs`, the
//! `ca-certificates` bundle on Linux).
//!
//! [`start`] is what `provider.start` runs for `ghcr.io/wasmcloud/http-client:*` and
//! `wasmcloud+builtin://http-client`: it checks the provider's config (a bad `timeout_ms` or
//! an unreadable `ssl_certs_file` fails the start with the reason) and records it for the
//! links that target the provider on this host.

pub mod client;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use trellis_host::lattice::store::ConfigMap;
use trellis_host::log_limit::LogLimiter;
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::runtime::{
    Capability, Extensions, InstanceContext, InstanceState, OutgoingHttpHandler,
    OutgoingHttpSender, OutgoingIo, OutgoingResponse,
};
use trellis_host::{Host, HostSlot};
use trellis_protocol::ctl::Link;

use crate::http_server::settings::{get_ci, is_truthy};
use client::{PooledClient, TrustSettings};

/// The provider's name in inventories.
pub const NAME: &str = "http-client";

/// The link name a component's outgoing HTTP follows.
pub const LINK_NAME: &str = "default";

/// Setting: the request timeout in milliseconds (see the module docs).
pub const TIMEOUT_MS_KEY: &str = "timeout_ms";

/// Setting: a PEM file of extra CA certificates to trust.
pub const SSL_CERTS_FILE_KEY: &str = "ssl_certs_file";

/// Setting: whether the system's CA certificates are trusted (default `true`).
pub const LOAD_NATIVE_CERTS_KEY: &str = "load_native_certs";

/// The request timeout when none is configured: long enough for slow APIs, short enough that
/// a dead upstream does not hold an instance for minutes (the component's own execution
/// deadline, 10 s by default, usually ends the wait first).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest configurable request timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Distinct trust settings (each has its own pool) a host keeps at once.
const MAX_POOLS: usize = 16;

/// How long reading a link's config from the lattice may take.
const CONFIG_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Refusals for a missing link are logged at most this often.
static REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// What one request is sent with, from the merged provider and link settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSettings {
    /// See [`TIMEOUT_MS_KEY`].
    pub timeout: Duration,
    /// See [`SSL_CERTS_FILE_KEY`] and [`LOAD_NATIVE_CERTS_KEY`].
    pub trust: TrustSettings,
}

impl RequestSettings {
    /// Reads the settings from a merged config map; the error says which key is wrong and
    /// what it should be.
    pub fn from_config(config: &HashMap<String, String>) -> Result<Self, String> {
        let timeout = match get_ci(config, TIMEOUT_MS_KEY) {
            None | Some("") => DEFAULT_TIMEOUT,
            Some(value) => {
                let ms: u64 = value.parse().map_err(|_| {
                    format!(
                        "`{TIMEOUT_MS_KEY}` is `{value}`: give a whole number of milliseconds, \
                         from 1 to {}",
                        MAX_TIMEOUT.as_millis()
                    )
                })?;
                let timeout = Duration::from_millis(ms);
                if timeout.is_zero() || timeout > MAX_TIMEOUT {
                    return Err(format!(
                        "`{TIMEOUT_MS_KEY}` is {ms}: it must be from 1 to {} milliseconds",
                        MAX_TIMEOUT.as_millis()
                    ));
                }
                timeout
            }
        };
        let system_roots = get_ci(config, LOAD_NATIVE_CERTS_KEY).is_none_or(is_truthy);
        let extra_ca_file = get_ci(config, SSL_CERTS_FILE_KEY)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            timeout,
            trust: TrustSettings {
                system_roots,
                extra_ca_file,
            },
        })
    }
}

/// The configs of http-client providers running in this process, by (host id, provider id).
fn local_providers() -> &'static Mutex<HashMap<(String, String), ConfigMap>> {
    static PROVIDERS: OnceLock<Mutex<HashMap<(String, String), ConfigMap>>> = OnceLock::new();
    PROVIDERS.get_or_init(Default::default)
}

fn local_provider_config(host_id: &str, provider_id: &str) -> Option<ConfigMap> {
    let guard = local_providers()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard
        .get(&(host_id.to_string(), provider_id.to_string()))
        .cloned()
}

/// Serves outgoing HTTP to the components of one host: put one in the host's capabilities
/// (`native::capabilities` does). Components without the link get a clear error.
pub struct HttpClientCapability {
    sender: Arc<LinkedSender>,
}

impl std::fmt::Debug for HttpClientCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClientCapability")
            .finish_non_exhaustive()
    }
}

impl HttpClientCapability {
    /// A capability that resolves links through the host `slot` will hold.
    pub fn new(slot: HostSlot) -> Self {
        Self {
            sender: Arc::new(LinkedSender {
                slot,
                pools: Arc::default(),
            }),
        }
    }
}

impl Capability for HttpClientCapability {
    fn name(&self) -> &str {
        "wasi:http/outgoing-handler (http-client)"
    }

    fn add_to_linker(&self, _linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        // The runtime links `wasi:http` itself; this capability only decides and sends.
        Ok(())
    }

    fn new_instance_state(
        &self,
        ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        let sender: Arc<dyn OutgoingHttpSender> = self.sender.clone();
        extensions.insert(OutgoingHttpHandler::new(ctx.component_id.clone(), sender));
        Ok(())
    }
}

/// Checks links and sends over the host's pools.
struct LinkedSender {
    slot: HostSlot,
    pools: Arc<Pools>,
}

/// One pool per distinct trust setting (almost always just the default one).
#[derive(Default)]
struct Pools {
    by_trust: Mutex<HashMap<TrustSettings, PooledClient>>,
}

/// The message a component without the link gets.
fn missing_link_message(component_id: &str) -> String {
    format!(
        "component {component_id} may not send HTTP requests: it has no link named \
         `{LINK_NAME}` on wasi:http/outgoing-handler. Put a link from {component_id} \
         (namespace wasi, package http, interfaces [outgoing-handler]) to an http-client \
         provider (ghcr.io/wasmcloud/http-client or wasmcloud+builtin://http-client)"
    )
}

impl Pools {
    /// The pool for `trust`, built on first use (reading certificate files off the async
    /// threads).
    async fn get(&self, trust: &TrustSettings) -> Result<PooledClient, HttpError> {
        if let Some(pool) = self.lock().get(trust) {
            return Ok(pool.clone());
        }
        let wanted = trust.clone();
        let built = tokio::task::spawn_blocking(move || PooledClient::new(&wanted))
            .await
            .map_err(|e| HttpError::InternalError(Some(format!("building the HTTP client: {e}"))))?
            .map_err(|e| {
                HttpError::InternalError(Some(format!(
                    "the http-client settings cannot be used: {e:#}; fix `{SSL_CERTS_FILE_KEY}` in \
                     the provider's or the link's config"
                )))
            })?;
        let mut pools = self.lock();
        if let Some(pool) = pools.get(trust) {
            return Ok(pool.clone());
        }
        if pools.len() >= MAX_POOLS {
            return Err(HttpError::InternalError(Some(format!(
                "this host already keeps {MAX_POOLS} HTTP client pools with different CA settings; \
                 use fewer distinct `{SSL_CERTS_FILE_KEY}` values"
            ))));
        }
        pools.insert(trust.clone(), built.clone());
        Ok(built)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TrustSettings, PooledClient>> {
        self.by_trust
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends `request` for `component_id` under `link`'s settings.
async fn send_linked(
    pools: Arc<Pools>,
    host: Arc<Host>,
    component_id: Arc<str>,
    link: Link,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, OutgoingIo), HttpError> {
    let config = link_settings(&host, &component_id, &link).await?;
    let settings = RequestSettings::from_config(&config).map_err(|why| {
        HttpError::InternalError(Some(format!(
            "the wasi:http/outgoing-handler link of {component_id} (to {}) has a bad setting: \
             {why}",
            link.target
        )))
    })?;
    let pool = pools.get(&settings.trust).await?;
    let response = pool.send(request, options, settings.timeout).await?;
    // The pool's own tasks drive the connection: nothing more to wait for.
    Ok((response, Box::new(async { Ok(()) }) as OutgoingIo))
}

/// The merged settings of `link`: the target provider's config when it runs on this host,
/// then the link's target configs (later wins). Keys are lower-cased as they merge, so a link's
/// `timeout_ms` overrides a provider's `TIMEOUT_MS` rather than standing beside it.
async fn link_settings(
    host: &Host,
    component_id: &str,
    link: &Link,
) -> Result<ConfigMap, HttpError> {
    let lower = |values: ConfigMap| {
        values
            .into_iter()
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect::<ConfigMap>()
    };
    let mut settings =
        lower(local_provider_config(&host.identity.host_id, &link.target).unwrap_or_default());
    for name in &link.target_config {
        let values = match host.store.cached_config(name) {
            Some(values) => values,
            None => tokio::time::timeout(CONFIG_READ_TIMEOUT, host.store.get_config(name))
                .await
                .map_err(|_| {
                    HttpError::InternalError(Some(format!(
                        "reading config `{name}` (named by the wasi:http link of \
                         {component_id}) took over {} s; is NATS reachable?",
                        CONFIG_READ_TIMEOUT.as_secs()
                    )))
                })?
                .map_err(|e| {
                    HttpError::InternalError(Some(format!("cannot read config `{name}`: {e:#}")))
                })?
                .ok_or_else(|| {
                    HttpError::InternalError(Some(format!(
                        "the wasi:http link of {component_id} names config `{name}`, which does \
                         not exist: create it (config.put) or take it out of the link"
                    )))
                })?,
        };
        settings.extend(lower(values));
    }
    Ok(settings)
}

impl OutgoingHttpSender for LinkedSender {
    fn send(
        &self,
        component_id: &str,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> OutgoingResponse {
        let Some(host) = self.slot.get() else {
            return Box::new(async {
                Err(HttpError::InternalError(Some(
                    "the host is not running (still starting or already stopped)".to_string(),
                )))
            });
        };
        let link = host.store.with_links(|links| {
            links
                .route(component_id, "wasi", "http", "outgoing-handler", LINK_NAME)
                .cloned()
        });
        let Some(link) = link else {
            let message = missing_link_message(component_id);
            if let Some(suppressed) = REFUSED.allow() {
                tracing::warn!(component_id, suppressed, "{message}");
            }
            return Box::new(async move { Err(HttpError::InternalError(Some(message))) });
        };
        let component_id: Arc<str> = Arc::from(component_id);
        Box::new(send_linked(
            self.pools.clone(),
            host,
            component_id,
            link,
            request,
            options,
        ))
    }
}

/// A running http-client provider: its config, recorded for the links that target it.
struct HttpClientProvider {
    key: (String, String),
}

impl RunningProvider for HttpClientProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        let mut guard = local_providers()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.remove(&self.key);
        tracing::info!(provider_id = %self.key.1, "http-client provider stopped");
        Box::pin(async {})
    }
}

/// Starts an http-client provider (`ghcr.io/wasmcloud/http-client:*`,
/// `wasmcloud+builtin://http-client`): checks its config and records it as the defaults of
/// the links that target it on this host (see the module docs). Requests are sent by the
/// host of each linked component.
pub fn start(host: Arc<Host>, spec: ProviderSpec) -> anyhow::Result<Box<dyn RunningProvider>> {
    let settings = RequestSettings::from_config(&spec.config).map_err(|why| {
        anyhow::anyhow!("http-client provider {} has a bad config: {why}", spec.id)
    })?;
    if settings.trust.extra_ca_file.is_some() {
        // Fail the start, not the first request, on an unreadable CA file.
        settings.trust.root_store().map_err(|e| {
            anyhow::anyhow!(
                "http-client provider {}: `{SSL_CERTS_FILE_KEY}` cannot be used: {e:#}",
                spec.id
            )
        })?;
    }
    let key = (host.identity.host_id.clone(), spec.id.clone());
    local_providers()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key.clone(), spec.config.clone());
    tracing::info!(
        provider_id = %spec.id,
        image_ref = %spec.image_ref,
        timeout_ms = settings.timeout.as_millis() as u64,
        "http-client provider started"
    );
    Ok(Box::new(HttpClientProvider { key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_have_defaults_and_explain_bad_values() {
        let defaults = RequestSettings::from_config(&HashMap::new()).expect("defaults");
        assert_eq!(defaults.timeout, DEFAULT_TIMEOUT);
        assert_eq!(defaults.trust, TrustSettings::default());

        let set = RequestSettings::from_config(&config(&[
            ("TIMEOUT_MS", "1500"),
            ("ssl_certs_file", "/etc/my-ca.pem"),
            ("load_native_certs", "false"),
        ]))
        .expect("valid");
        assert_eq!(set.timeout, Duration::from_millis(1500));
        assert_eq!(
            set.trust,
            TrustSettings {
                system_roots: false,
                extra_ca_file: Some(PathBuf::from("/etc/my-ca.pem")),
            }
        );

        for bad in ["abc", "0", "-5", "600001", "1.5"] {
            let error =
                RequestSettings::from_config(&config(&[("timeout_ms", bad)])).expect_err(bad);
            assert!(error.contains("timeout_ms"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_missing_link_message_says_what_to_do() {
        let message = missing_link_message("fetcher");
        for part in [
            "fetcher",
            "wasi:http/outgoing-handler",
            "namespace wasi, package http",
            "http-client",
        ] {
            assert!(message.contains(part), "{part} missing from: {message}");
        }
    }
}
