//! One TCP listener: HTTP/1.1 with keep-alive, requests routed by its (live-updatable) route
//! table, a cap on open connections (`max_connections`: over it, 503 at once), the
//! header-read and idle timeouts ([`super::connection`]), graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use trellis_host::log_limit::LogLimiter;

use super::connection::{Clock, Timeouts, TrackedBody, TrackedIo};
use super::dispatch::{dispatch, text_response, ResponseBody};
use super::routes::RouteTable;
use super::Shared;

/// Connections over the cap being answered 503 at once; past this they are closed unanswered.
const REFUSALS_IN_FLIGHT: usize = 64;
/// Longest a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Most request bytes read (and thrown away) from a refused connection.
const REFUSAL_DRAIN_MAX: usize = 64 * 1024;

/// At most one warning per this interval about refused connections.
static AT_CAP: LogLimiter = LogLimiter::new(Duration::from_secs(10));
/// At most one warning per this interval about failing accepts.
static ACCEPT_FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// A bound listener and the task serving it.
pub(crate) struct Listener {
    routes: Arc<RwLock<Arc<RouteTable>>>,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // A listener dropped without `shutdown` stops at once.
        self.task.abort();
    }
}

impl Listener {
    /// Binds `addr` and starts serving with `routes`.
    pub async fn bind(
        addr: SocketAddr,
        routes: RouteTable,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let routes = Arc::new(RwLock::new(Arc::new(routes)));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(tcp, routes.clone(), shared, stop_rx));
        tracing::info!(%addr, "http-server listening");
        Ok(Self {
            routes,
            stop: Some(stop),
            task,
        })
    }

    /// Replaces the route table (links changed); connections pick it up on their next request.
    pub fn set_routes(&self, routes: RouteTable) {
        let mut guard = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if **guard != routes {
            *guard = Arc::new(routes);
        }
    }

    /// Stops accepting, lets requests in flight finish for up to `grace`, then closes.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let task = &mut self.task;
        if tokio::time::timeout(grace + Duration::from_millis(200), task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(!shared.settings.disable_keepalive);
    let timeouts = Timeouts {
        header_read: shared.settings.header_read_timeout,
        idle: shared.settings.idle_timeout,
    };
    let max_connections = shared.settings.max_connections;
    let refusal = refusal_response(max_connections);
    let addr = tcp.local_addr().ok();
    // Owned here: dropping this task's future aborts every connection.
    let mut connections = JoinSet::new();
    let mut refusals = JoinSet::new();
    let grace = loop {
        tokio::select! {
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: do not spin.
                        if let Some(suppressed) = ACCEPT_FAILED.allow() {
                            tracing::warn!(?addr, %error, suppressed, "accepting a connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                if connections.len() >= max_connections {
                    if let Some(suppressed) = AT_CAP.allow() {
                        tracing::warn!(?addr, max_connections, suppressed, "the listener is at its connection cap: answering new connections 503 (raise config `max_connections` if this load is legitimate)");
                    }
                    refuse(stream, &refusal, &mut refusals);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let clock = Arc::new(Clock::new());
                let routes = routes.clone();
                let shared = shared.clone();
                let service_clock = clock.clone();
                let addrs = super::wagi::ConnectionAddrs { local: addr, peer };
                let service = service_fn(move |mut request: hyper::Request<Incoming>| {
                    service_clock.request_started();
                    request.extensions_mut().insert(addrs);
                    let table = routes.read().unwrap_or_else(|p| p.into_inner()).clone();
                    let shared = shared.clone();
                    let clock = service_clock.clone();
                    async move {
                        let response = serve(&shared, &table, request).await;
                        Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, clock)))
                    }
                });
                let io = TokioIo::new(TrackedIo::new(stream, clock.clone()));
                let connection = builder.serve_connection(io, service);
                let watched = graceful.watch(connection);
                connections.spawn(async move {
                    tokio::select! {
                        served = watched => if let Err(error) = served {
                            tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                        },
                        expired = clock.watch(timeouts) => {
                            tracing::debug!(%peer, ?expired, "closing an HTTP connection that outlasted its header-read or idle timeout");
                        }
                    }
                });
            }
        }
    };
    drop(tcp);
    refusals.shutdown().await;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::debug!(open = connections.len(), "grace period over; closing remaining connections");
        }
    }
    connections.shutdown().await;
}

/// The bytes sent to a connection over the cap.
fn refusal_response(max_connections: usize) -> Bytes {
    let message = format!(
        "this server is at its limit of {max_connections} open connections (config `max_connections`); retry later\n"
    );
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{message}",
        message.len()
    ))
}

/// Answers a connection over the cap with `refusal` and closes it. The request is read and
/// thrown away for a moment so that closing does not reset the connection before the client
/// has read the answer; at most [`REFUSALS_IN_FLIGHT`] such goodbyes run at once, beyond that
/// the connection is closed at once.
fn refuse(mut stream: TcpStream, refusal: &Bytes, refusals: &mut JoinSet<()>) {
    while refusals.try_join_next().is_some() {}
    if refusals.len() >= REFUSALS_IN_FLIGHT {
        return;
    }
    let refusal = refusal.clone();
    refusals.spawn(async move {
        let goodbye = async {
            stream.write_all(&refusal).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < REFUSAL_DRAIN_MAX {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, goodbye).await;
    });
}

async fn serve(
    shared: &Shared,
    table: &RouteTable,
    mut request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let telemetry = trellis_telemetry::traces_enabled() || trellis_telemetry::metrics_enabled();
    let started = telemetry.then(std::time::Instant::now);
    let route = match table.resolve(request.uri().path(), request.headers()) {
        Ok(route) => route,
        Err(no_route) => {
            if let Some(started) = started {
                trellis_telemetry::metrics::record_http_request(
                    request.method().as_str(),
                    404,
                    started.elapsed(),
                );
            }
            return text_response(hyper::StatusCode::NOT_FOUND, no_route.0);
        }
    };
    let Some(started) = started else {
        return dispatch_route(shared, route, request).await;
    };
    // The server span of the request (a child of the client's `traceparent`, if any); its own
    // context replaces that header, so the component's invocation (here or on the host the
    // request is forwarded to) is its child.
    let method = request.method().clone();
    let span = trellis_telemetry::spans::http_server(
        method.as_str(),
        request.uri().path(),
        request.headers(),
        &route.target,
    );
    if let Some(traceparent) = trellis_telemetry::propagation::traceparent_of(&span) {
        if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
            request.headers_mut().insert("traceparent", value);
        }
    }
    let response =
        tracing::Instrument::instrument(dispatch_route(shared, route, request), span.clone()).await;
    let status = response.status().as_u16();
    trellis_telemetry::spans::record_http_status(&span, status);
    trellis_telemetry::metrics::record_http_request(method.as_str(), status, started.elapsed());
    response
}

/// Serves `request` the way its route asks: `wasi:http` (here or over the lattice), or Wagi.
async fn dispatch_route(
    shared: &Shared,
    route: &super::routes::Route,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    if route.wagi {
        super::wagi::serve(shared, route, request).await
    } else {
        dispatch(shared, &route.target, request).await
    }
}
