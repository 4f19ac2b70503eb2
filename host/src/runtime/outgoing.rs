//! Outgoing HTTP policy: a component may only call the hosts listed in its `allowed_hosts`
//! config key.

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
        Self { entries }
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
}

/// Lower-cases and strips IPv6 brackets.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// `wasi:http` hooks of one instance: enforces [`AllowedHosts`] before sending.
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
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme() == Some(&Scheme::HTTPS) {
                443
            } else {
                80
            });
        if !self.allowed.allows(&host, port) {
            tracing::warn!(
                component_id = &*self.component_id,
                host,
                port,
                "denied outgoing HTTP request: host is not in the component's allowed_hosts config"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        drop(fut);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}
