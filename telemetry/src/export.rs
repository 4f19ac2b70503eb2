//! The HTTP client the OTLP exporters send with: hyper on the process's tokio runtime.
//!
//! The SDK's batch processors call the exporter from threads of their own; each request is
//! spawned onto the runtime and awaited from there, so no export ever runs on (or blocks) a
//! request-serving task. Failures (collector down, non-2xx answers) are logged at most once
//! a minute per signal, with the number of failures in between.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};

/// Bound of one export request, connecting included (OTLP's default timeout).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the collector's answer body, read only to be dropped.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// At most one warning per signal in this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An `opentelemetry_http::HttpClient` sending on a tokio runtime (HTTP and HTTPS, the
/// system's CA certificates).
#[derive(Debug, Clone)]
pub struct TokioHttpClient {
    handle: tokio::runtime::Handle,
    pool: Arc<OnceLock<Pool>>,
    warnings: Arc<crate::log_limit::LogLimiter>,
    signal: &'static str,
}

impl TokioHttpClient {
    /// A client running its requests on `handle`, warning about `signal` (`traces`...).
    pub fn new(handle: tokio::runtime::Handle, signal: &'static str) -> Self {
        Self {
            handle,
            pool: Arc::default(),
            warnings: Arc::new(crate::log_limit::LogLimiter::new(WARN_INTERVAL)),
            signal,
        }
    }

    fn pool(&self) -> Pool {
        self.pool.get_or_init(build_pool).clone()
    }

    fn warn(&self, what: &str) {
        if let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(
                target: "trellis_telemetry::export",
                signal = self.signal,
                suppressed,
                "cannot export telemetry to the OTLP collector: {what} (telemetry is dropped \
                 until it answers; next warning in a minute at the earliest)"
            );
        }
    }
}

fn build_pool() -> Pool {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = rustls_native_certs::load_native_certs() {
        roots.add_parsable_certificates(certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // ring supports the default versions; this arm is unreachable in practice.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(EXPORT_TIMEOUT));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(https)
}

#[async_trait]
impl HttpClient for TokioHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let pool = self.pool();
        let task = self.handle.spawn(async move {
            tokio::time::timeout(EXPORT_TIMEOUT, async move {
                let response = pool.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            })
            .await
        });
        let result = match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("no answer within {} s", EXPORT_TIMEOUT.as_secs()).into()),
            Err(join) => Err(format!("the export task ended: {join}").into()),
        };
        match &result {
            Ok(response) if !response.status().is_success() => {
                self.warn(&format!("the collector answered {}", response.status()));
            }
            Ok(_) => {}
            Err(error) => self.warn(&error_chain(error.as_ref())),
        }
        result
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_collector_is_an_error_not_a_hang() {
        // A port nothing listens on: bind, read the address, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = TokioHttpClient::new(tokio::runtime::Handle::current(), "traces");
        let request = Request::post(format!("http://{addr}/v1/traces"))
            .body(Bytes::from_static(b""))
            .unwrap();
        let started = Instant::now();
        // From a plain thread, as the SDK's batch processor calls it.
        let result = tokio::task::spawn_blocking(move || {
            futures_executor_block_on(client.send_bytes(request))
        })
        .await
        .unwrap();
        assert!(result.is_err());
        assert!(started.elapsed() < EXPORT_TIMEOUT);
    }

    /// A minimal block_on (the SDK uses futures-executor; tests need no extra crate).
    fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(future)
    }
}
