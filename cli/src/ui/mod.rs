//! `trellis ui`: a web dashboard for one lattice, served by this binary.
//!
//! The server is the only party that talks to NATS; the browser talks to the server over plain
//! HTTP (a JSON snapshot, a few POST actions) and one server-sent-events stream that carries
//! fresh snapshots and the lattice's events as they happen. The page's HTML, CSS and JS are
//! compiled into the binary ([`assets`]), so it works offline.
//!
//! Security model (docs/dashboard.md): it listens on loopback by default and then checks the
//! `Host` header (no DNS rebinding); any other address needs `--allow-remote`, and then a random
//! login token printed at start is required on every request. Mutating requests are POST with a
//! custom header (a cross-site form or fetch cannot send it without a CORS preflight, which is
//! never granted). No NATS credential ever reaches the browser; config values whose keys look
//! secret are redacted.

mod actions;
mod assets;
mod auth;
mod live;
mod locate;
mod metrics;
mod snapshot;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::lattice_client::{ConnectArgs, LatticeClient};

pub use auth::Access;

/// The address `trellis ui` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3030";
/// The largest request body accepted (a manifest): 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A response body: whole (pages, JSON) or streamed (server-sent events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Flags of `trellis ui`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis ui                                   # http://127.0.0.1:3030 for the local lattice
  trellis ui --listen 127.0.0.1:8080 --lattice prod --nats-url nats://10.0.0.2:4222
  trellis ui --listen 0.0.0.0:3030 --allow-remote   # prints a login URL with a token
  trellis ui --metrics-url http://127.0.0.1:9464/metrics   # per-component rates from a host

Listening on anything but loopback needs --allow-remote, and then every request needs the
login token printed at start. See docs/dashboard.md.")]
pub struct UiArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Address to serve the dashboard on
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
    /// Allow a non-loopback --listen address (a login token is then required and printed)
    #[arg(long)]
    allow_remote: bool,
    /// Require the login token even on loopback (for machines shared with other users)
    #[arg(long)]
    require_token: bool,
    /// A host's Prometheus endpoint (`trellis host --metrics-listen`) to read per-component
    /// request and error rates from (repeatable)
    #[arg(long = "metrics-url", value_name = "URL")]
    metrics_urls: Vec<String>,
}

/// What [`start`] needs besides the lattice connection.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Permit a non-loopback address (and require the login token).
    pub allow_remote: bool,
    /// Require the login token on loopback too.
    pub require_token: bool,
    /// Prometheus endpoints of hosts, for per-component rates.
    pub metrics_urls: Vec<String>,
}

/// A running dashboard server.
#[derive(Debug)]
pub struct UiServer {
    /// The URL to open (with `?token=` when a token is required).
    pub url: String,
    /// The accept loop; aborting it stops the server.
    pub task: tokio::task::JoinHandle<()>,
}

/// Runs `trellis ui` until Ctrl-C.
pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    let client = LatticeClient::connect(&args.connect).await?;
    let options = UiOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
        require_token: args.require_token,
        metrics_urls: args.metrics_urls,
    };
    let server = start(client, options).await?;
    println!("trellis ui: {}", server.url);
    eprintln!("press Ctrl-C to stop");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = server.task => bail!("the dashboard server stopped"),
    }
    Ok(())
}

/// Binds `options.listen` and serves the dashboard for `client`'s lattice in the background.
pub async fn start(client: LatticeClient, options: UiOptions) -> anyhow::Result<UiServer> {
    let loopback = is_loopback(options.listen.ip());
    if !loopback && !options.allow_remote {
        bail!(
            "refusing to serve the dashboard on {} (not loopback): anyone who can reach it could \
             deploy and stop work; pass --allow-remote to do it anyway (a login token is then required)",
            options.listen
        );
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let access = if loopback && !options.require_token {
        Access::Loopback
    } else {
        Access::with_token(auth::random_token())
    };
    let url = match access.token() {
        Some(token) => format!("http://{addr}/login?token={token}"),
        None => format!("http://{addr}/"),
    };
    let live = live::Live::start(client.clone(), options.metrics_urls.clone()).await?;
    let shared = Arc::new(Shared {
        client,
        access,
        live,
    });
    let task = tokio::spawn(accept_loop(listener, shared));
    Ok(UiServer { url, task })
}

/// A loopback port free right now (for a child to listen on).
pub fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// True for 127.0.0.0/8 and ::1 (and an IPv4-mapped loopback).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// State every request handler shares.
struct Shared {
    client: LatticeClient,
    access: Access,
    live: Arc<live::Live>,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("dashboard: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// Routes one request. Never panics on what a client sends; every failure is a response.
async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    if let Err(refusal) = shared.access.check_host(&request) {
        return refusal;
    }
    if request.method() == Method::GET && path == "/login" {
        return shared.access.login(&request);
    }
    if let Err(refusal) = shared.access.check_login(&request) {
        return refusal;
    }
    let method = request.method().clone();
    if method == Method::POST {
        if let Err(refusal) = auth::check_csrf(&request) {
            return refusal;
        }
    }
    match (method, path.as_str()) {
        (Method::GET, _) if assets::find(&path).is_some() => assets::serve(&path),
        (Method::GET, "/api/snapshot") => match shared.live.snapshot_now().await {
            Ok(snapshot) => json_response(StatusCode::OK, &*snapshot),
            Err(e) => error_response(StatusCode::BAD_GATEWAY, &format!("{e:#}")),
        },
        (Method::GET, "/api/events") => shared.live.stream().await,
        (Method::POST, "/api/deploy") => match read_body(request).await {
            Ok(body) => actions::deploy(&shared.client, &shared.live, body).await,
            Err(refusal) => refusal,
        },
        (Method::POST, "/api/scale") => match read_body(request).await {
            Ok(body) => actions::scale(&shared.client, &shared.live, body).await,
            Err(refusal) => refusal,
        },
        (Method::POST, p) if p.starts_with("/api/apps/") => {
            let rest = &p["/api/apps/".len()..];
            match rest.split_once('/') {
                Some((name, "undeploy")) => {
                    actions::undeploy(&shared.client, &shared.live, name).await
                }
                Some((name, "delete")) => actions::delete(&shared.client, &shared.live, name).await,
                _ => error_response(StatusCode::NOT_FOUND, "no such action"),
            }
        }
        (Method::GET | Method::POST, _) => error_response(StatusCode::NOT_FOUND, "not found"),
        _ => error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`], or the response refusing it.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request is larger than {} KiB; a manifest must be smaller",
                MAX_BODY_BYTES / 1024
            ),
        )),
        Err(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
    }
}

/// A whole body.
fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Adds the headers every response carries: no sniffing, no framing, no referrer, and a
/// content security policy that allows only this server's own scripts and styles.
fn secure(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

fn build(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    secure(response)
}

/// `value` as a JSON response.
fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => build(status, "application/json", full(bytes)),
        Err(_) => build(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            full(&br#"{"ok":false,"error":"cannot encode the reply"}"#[..]),
        ),
    }
}

/// `{"ok": false, "error": message}` with `status`.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({ "ok": false, "error": message }),
    )
}
