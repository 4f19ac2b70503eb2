//! Outgoing HTTP (`wasi:http/outgoing-handler`): who may send, and who sends.
//!
//! - **The runtime alone** (no capability taking outgoing HTTP over): a component may only
//!   call the hosts listed in its `allowed_hosts` config key; without that key nothing goes
//!   out ([`OutgoingHttpPolicy`]).
//! - **With a capability that takes it over** (the http-client provider of
//!   `trellis-providers`, which every `trellis host` installs): the capability puts an
//!   [`OutgoingHttpHandler`] in the instance's [`super::Extensions`]. The capability's
//!   [`OutgoingHttpSender`] then decides whether the component may send (in Trellis: a link on
//!   `wasi:http/outgoing-handler`, as in wasmCloud) and sends. `allowed_hosts`, when the
//!   component's config sets it, still restricts the destinations before the sender sees the
//!   request; `allowed_hosts` alone no longer grants anything.

use std::future::Future;
use std::sync::Arc;

use http::uri::Scheme;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Config key listing the hosts a component may call: comma-separated `host` or `host:port`
/// entries, `*` for any host. Absent or empty means no outgoing HTTP.
pub const ALLOWED_HOSTS_KEY: &str = "allowed_hosts";

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedHost {
    /// Any host.
    Any,
    /// This host on any port (`port: None`) or on one port.
    Host { host: String, port: Option<u16> },
}

/// The set of hosts a component may send HTTP requests to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
    /// Whether the list came from a config value (even an empty one), as opposed to the
    /// key being absent.
    configured: bool,
}

impl AllowedHosts {
    /// Parses an `allowed_hosts` value. Entries that cannot be parsed are skipped with a warning.
    pub fn parse(value: &str) -> Self {
        let mut entries = Vec::new();
        for raw in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if raw == "*" {
                entries.push(AllowedHost::Any);
                continue;
            }
            // Tolerate a scheme or a path in the entry (`https://api.example.com/`).
            let without_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
            let authority = without_scheme.split('/').next().unwrap_or_default();
            match authority.parse::<http::uri::Authority>() {
                Ok(authority) => entries.push(AllowedHost::Host {
                    host: normalize_host(authority.host()),
                    port: authority.port_u16(),
                }),
                Err(error) => {
                    tracing::warn!(entry = raw, %error, "ignoring malformed allowed_hosts entry")
                }
            }
        }
        Self {
            entries,
            configured: true,
        }
    }

    /// Whether a request to `host` on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        self.entries.iter().any(|entry| match entry {
            AllowedHost::Any => true,
            AllowedHost::Host {
                host: allowed,
                port: allowed_port,
            } => *allowed == host && allowed_port.is_none_or(|p| p == port),
        })
    }

    /// Whether the component's config set `allowed_hosts` (even to an empty list); `false`
    /// for the default value, which stands for an absent key.
    pub fn is_configured(&self) -> bool {
        self.configured
    }
}

/// Lower-cases and strips IPv6 brackets.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The host and port a request goes to (the scheme's default port when the URI has none).
fn destination<B>(request: &http::Request<B>) -> (String, u16) {
    let uri = request.uri();
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme() == Some(&Scheme::HTTPS) {
            443
        } else {
            80
        });
    (host, port)
}

/// What finishes when a response's connection I/O is done (errors there reach the guest
/// through the response body).
pub type OutgoingIo = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// The future an [`OutgoingHttpSender`] returns: the response head (with its streaming
/// body) and the connection's I/O future, or the error code the guest sees.
pub type OutgoingResponse =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, OutgoingIo), HttpError>> + Send>;

/// Sends the outgoing HTTP requests of components on behalf of a capability (in Trellis the
/// http-client provider), deciding first whether the component may send at all.
pub trait OutgoingHttpSender: Send + Sync + 'static {
    /// Sends `request` (absolute URI, `host` header set) for component `component_id`, with
    /// the guest's `options` (timeouts), or refuses it. Called on the guest's thread while it
    /// calls `outgoing-handler.handle`: do only quick, non-blocking work before returning the
    /// future. A refusal should be an error the guest can print and act on (for instance
    /// [`HttpError::InternalError`] with a message naming the missing link).
    fn send(
        &self,
        component_id: &str,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> OutgoingResponse;
}

/// Per-instance state with which a capability takes over a component's outgoing HTTP:
/// insert one with [`super::Extensions::insert`] in `Capability::new_instance_state`. The
/// runtime then sends through its [`OutgoingHttpSender`] instead of the `allowed_hosts`-only
/// policy, after checking the component's `allowed_hosts` when its config sets that key.
pub struct OutgoingHttpHandler {
    component_id: Arc<str>,
    sender: Arc<dyn OutgoingHttpSender>,
    /// The component's `allowed_hosts`, filled in by the runtime ([`Self::bind_allowed`]).
    allowed: Option<Arc<AllowedHosts>>,
}

impl std::fmt::Debug for OutgoingHttpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingHttpHandler")
            .field("component_id", &self.component_id)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl OutgoingHttpHandler {
    /// A handler sending the requests of component `component_id` through `sender`.
    pub fn new(component_id: Arc<str>, sender: Arc<dyn OutgoingHttpSender>) -> Self {
        Self {
            component_id,
            sender,
            allowed: None,
        }
    }

    /// Gives the handler the component's `allowed_hosts` (done by the runtime before each
    /// use; only the first call stores anything).
    pub(crate) fn bind_allowed(&mut self, allowed: &Arc<AllowedHosts>) {
        if self.allowed.is_none() {
            self.allowed = Some(allowed.clone());
        }
    }
}

/// Logs and returns the refusal of a destination not in `allowed_hosts`.
fn deny_destination(component_id: &str, host: &str, port: u16, why: &str) -> OutgoingResponse {
    tracing::warn!(
        component_id,
        host,
        port,
        "denied outgoing HTTP request: {why}"
    );
    Box::new(async { Err(HttpError::HttpRequestDenied) })
}

impl WasiHttpHooks for OutgoingHttpHandler {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> OutgoingResponse {
        drop(fut);
        if let Some(allowed) = self.allowed.as_ref().filter(|a| a.is_configured()) {
            let (host, port) = destination(&request);
            if !allowed.allows(&host, port) {
                return deny_destination(
                    &self.component_id,
                    &host,
                    port,
                    "the component's allowed_hosts config does not list this host",
                );
            }
        }
        self.sender.send(&self.component_id, request, options)
    }
}

/// `wasi:http` hooks of one instance when no capability took outgoing HTTP over: enforces
/// [`AllowedHosts`] and sends with wasmtime's default client.
pub(crate) struct OutgoingHttpPolicy {
    pub(crate) component_id: Arc<str>,
    pub(crate) allowed: Arc<AllowedHosts>,
}

impl WasiHttpHooks for OutgoingHttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> OutgoingResponse {
        let (host, port) = destination(&request);
        if !self.allowed.allows(&host, port) {
            return deny_destination(
                &self.component_id,
                &host,
                port,
                "host is not in the component's allowed_hosts config",
            );
        }
        drop(fut);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as OutgoingIo,
            ))
        })
    }
}
