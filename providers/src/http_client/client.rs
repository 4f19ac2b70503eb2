//! The pooled HTTP/1.1 client behind `wasi:http/outgoing-handler`: one connection pool per
//! host and trust setting, TLS by rustls with the system's CA certificates, a deadline for
//! the response head and one between body chunks, and errors mapped to the `error-code`s
//! of `wasi:http/types`.

use std::error::Error as StdError;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// Longest wait for a TCP connection (the guest's own connect timeout cannot lengthen it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept (wasmCloud's http-client uses 90 s too).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per destination (`scheme://host:port`).
pub const MAX_IDLE_PER_HOST: usize = 32;

/// Which CA certificates HTTPS destinations are checked against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustSettings {
    /// Whether the system's CA certificates (the `ca-certificates` bundle on Linux) are
    /// trusted.
    pub system_roots: bool,
    /// A PEM file of more CA certificates to trust.
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for TrustSettings {
    fn default() -> Self {
        Self {
            system_roots: true,
            extra_ca_file: None,
        }
    }
}

impl TrustSettings {
    /// Builds the rustls root store these settings describe. Fails when the extra CA file
    /// cannot be read or holds no certificate; an unreadable system store only warns (HTTPS
    /// then fails per request with a certificate error).
    pub fn root_store(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        if self.system_roots {
            match rustls_native_certs::load_native_certs() {
                Ok(certs) => {
                    let (added, ignored) = roots.add_parsable_certificates(certs);
                    tracing::debug!(added, ignored, "loaded the system's CA certificates");
                }
                Err(error) => tracing::warn!(
                    %error,
                    "cannot read the system's CA certificates: HTTPS requests will fail unless \
                     `ssl_certs_file` names a CA bundle (or install the ca-certificates package)"
                ),
            }
        }
        if let Some(file) = &self.extra_ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .with_context(|| format!("cannot read the CA file {}", file.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("{} is not a PEM file of certificates", file.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                file.display()
            );
            let (added, ignored) = roots.add_parsable_certificates(certs);
            anyhow::ensure!(
                added > 0,
                "none of the {ignored} certificates in {} is a usable CA certificate",
                file.display()
            );
        }
        if roots.is_empty() {
            tracing::warn!(
                "no CA certificate is trusted: every HTTPS request will fail with a certificate error"
            );
        }
        Ok(roots)
    }
}

/// One connection pool (HTTP and HTTPS) shared by every component of a host that uses the
/// same trust settings. Cheap to clone.
#[derive(Clone)]
pub struct PooledClient {
    client: Client<HttpsConnector<HttpConnector>, WasiBody>,
}

impl std::fmt::Debug for PooledClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledClient").finish_non_exhaustive()
    }
}

impl PooledClient {
    /// A client trusting what `trust` says. Reads certificate files: call it off the async
    /// threads (`spawn_blocking`) when it may be slow.
    pub fn new(trust: &TrustSettings) -> anyhow::Result<Self> {
        let roots = trust.root_store()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .build(https);
        Ok(Self { client })
    }

    /// Sends `request` (absolute URI) over a pooled connection. `timeout` bounds the wait for
    /// the response head (connecting included) and each wait between body chunks; the guest's
    /// `options` can only shorten those waits.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        timeout: Duration,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let (head_limit, idle_limit) = limits(options, timeout);
        let uri = request.uri().clone();
        let response = match tokio::time::timeout(head_limit, self.client.request(request)).await {
            Err(_elapsed) => {
                tracing::debug!(%uri, limit_ms = head_limit.as_millis() as u64, "outgoing HTTP request timed out");
                return Err(HttpError::HttpResponseTimeout);
            }
            Ok(Err(error)) => {
                let code = client_error_code(&error);
                tracing::debug!(%uri, error = %error_chain(&error), ?code, "outgoing HTTP request failed");
                return Err(code);
            }
            Ok(Ok(response)) => response,
        };
        Ok(response.map(|incoming| TimedBody::new(incoming, idle_limit).boxed_unsync()))
    }
}

/// The wait for the response head and the wait between body chunks: `timeout`, shortened by
/// the guest's first-byte timeout (plus its connect timeout) and between-bytes timeout.
pub fn limits(options: Option<RequestOptions>, timeout: Duration) -> (Duration, Duration) {
    let options = options.unwrap_or_default();
    let head = match options.first_byte_timeout {
        Some(first_byte) => timeout
            .min(first_byte.saturating_add(options.connect_timeout.unwrap_or(CONNECT_TIMEOUT))),
        None => timeout,
    };
    let idle = options
        .between_bytes_timeout
        .map_or(timeout, |between| timeout.min(between));
    // Tokio timers cannot be zero-length in a useful way; a zero limit still fails fast.
    (
        head.max(Duration::from_millis(1)),
        idle.max(Duration::from_millis(1)),
    )
}

/// A response body that fails with `connection-read-timeout` when no chunk arrives within
/// its limit.
struct TimedBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.limit;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(HttpError::from(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error and its causes, `: `-joined.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The TLS failure `error` describes, if any.
fn tls_code(error: &rustls::Error) -> HttpError {
    match error {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            HttpError::TlsCertificateError
        }
        rustls::Error::AlertReceived(alert) => HttpError::TlsAlertReceived {
            alert_id: None,
            alert_message: Some(format!("{alert:?}")),
        },
        _ => HttpError::TlsProtocolError,
    }
}

/// Maps a failed request to the `wasi:http` error code a guest can act on; the message of
/// anything unrecognised goes in `internal-error`.
pub fn client_error_code(error: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        // An `io::Error`'s `source()` skips the error it wraps (connectors nest rustls errors
        // in one or two of them): step into the wrapped error instead.
        let next = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => cause.source(),
            },
            None => cause.source(),
        };
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return HttpError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return HttpError::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof => return HttpError::ConnectionTerminated,
                _ => {}
            }
        }
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return tls_code(tls);
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() {
                return HttpError::HttpResponseIncomplete;
            }
            if hyper.is_parse() {
                return HttpError::HttpProtocolError;
            }
            if hyper.is_timeout() {
                return HttpError::HttpResponseTimeout;
            }
        }
        source = next;
    }
    let text = error_chain(error);
    if error.is_connect() && text.contains("dns error") {
        return HttpError::DnsError {
            rcode: Some(text),
            info_code: None,
        };
    }
    HttpError::InternalError(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_options_only_shorten_the_limits() {
        let timeout = Duration::from_secs(30);
        assert_eq!(limits(None, timeout), (timeout, timeout));
        let options = RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(2)),
            between_bytes_timeout: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            limits(Some(options), timeout),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
        let long = RequestOptions {
            connect_timeout: None,
            first_byte_timeout: Some(Duration::from_secs(600)),
            between_bytes_timeout: Some(Duration::from_secs(600)),
        };
        assert_eq!(limits(Some(long), timeout), (timeout, timeout));
        let zero = RequestOptions {
            first_byte_timeout: Some(Duration::ZERO),
            connect_timeout: Some(Duration::ZERO),
            between_bytes_timeout: None,
        };
        assert_eq!(limits(Some(zero), timeout).0, Duration::from_millis(1));
    }

    #[test]
    fn the_system_store_has_roots_and_a_bad_ca_file_is_refused() {
        let roots = TrustSettings::default()
            .root_store()
            .expect("the system store loads");
        assert!(
            !roots.is_empty(),
            "no system CA certificate found (is ca-certificates installed?)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error = TrustSettings {
            system_roots: false,
            extra_ca_file: Some(empty.clone()),
        }
        .root_store()
        .expect_err("a file without certificates is refused");
        assert!(
            format!("{error:#}").contains("no PEM certificate"),
            "{error:#}"
        );
        let missing = TrustSettings {
            system_roots: false,
            extra_ca_file: Some(dir.path().join("missing.pem")),
        }
        .root_store()
        .expect_err("a missing file is refused");
        assert!(
            format!("{missing:#}").contains("cannot read the CA file"),
            "{missing:#}"
        );
    }

    #[tokio::test]
    async fn refused_connections_and_timeouts_map_to_error_codes() {
        let client = PooledClient::new(&TrustSettings::default()).expect("client");
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let empty = || -> WasiBody {
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never: std::convert::Infallible| -> HttpError { match never {} })
                .boxed_unsync()
        };
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(empty())
            .expect("request");
        let error = client
            .send(request, None, Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, HttpError::ConnectionRefused), "{error:?}");

        // A server that accepts and never answers: the head deadline fires.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let request = http::Request::get(format!("http://{addr}/"))
            .body(empty())
            .expect("request");
        let started = std::time::Instant::now();
        let error = client
            .send(request, None, Duration::from_millis(300))
            .await
            .expect_err("no answer");
        assert!(matches!(error, HttpError::HttpResponseTimeout), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        silent.abort();
    }

    /// Runs `openssl` with `args` in `dir`, failing the test with its output.
    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl (install the openssl package)");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A CA and a `localhost` certificate it signed, in `dir`: `ca.pem`, `server.pem`,
    /// `server.key`.
    fn make_certificates(dir: &std::path::Path) {
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write ext.cnf");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Trellis test CA",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    }

    #[tokio::test]
    async fn https_trusts_the_configured_ca_and_refuses_unknown_ones() {
        use rustls::pki_types::PrivateKeyDer;

        let dir = tempfile::tempdir().expect("tempdir");
        make_certificates(dir.path());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.path().join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(dir.path().join("server.key")).expect("key");
        let server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"over tls")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let get = || {
            http::Request::get(format!("https://localhost:{port}/"))
                .body(
                    http_body_util::Empty::<Bytes>::new()
                        .map_err(|never: std::convert::Infallible| -> HttpError { match never {} })
                        .boxed_unsync(),
                )
                .expect("request")
        };

        let trusting = PooledClient::new(&TrustSettings {
            system_roots: true,
            extra_ca_file: Some(dir.path().join("ca.pem")),
        })
        .expect("client");
        let response = trusting
            .send(get(), None, Duration::from_secs(10))
            .await
            .expect("the CA in ssl_certs_file is trusted");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"over tls");

        let system_only = PooledClient::new(&TrustSettings::default()).expect("client");
        let error = system_only
            .send(get(), None, Duration::from_secs(10))
            .await
            .expect_err("an unknown CA is refused");
        assert!(matches!(error, HttpError::TlsCertificateError), "{error:?}");
        server.abort();
    }
}
