//! One TCP listener: HTTP/1.1 with keep-alive, requests routed by its (live-updatable) route
//! table, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::dispatch::{dispatch, text_response, ResponseBody};
use super::routes::RouteTable;
use super::Shared;

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
    // Owned here: dropping this task's future aborts every connection.
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let routes = routes.clone();
                let shared = shared.clone();
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let table = routes.read().unwrap_or_else(|p| p.into_inner()).clone();
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(serve(&shared, &table, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = watched.await {
                        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                    }
                });
            }
        }
    };
    drop(tcp);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::debug!(open = connections.len(), "grace period over; closing remaining connections");
        }
    }
    connections.shutdown().await;
}

async fn serve(
    shared: &Shared,
    table: &RouteTable,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    match table.resolve(request.uri().path(), request.headers()) {
        Ok(route) => dispatch(shared, &route.target, request).await,
        Err(no_route) => text_response(hyper::StatusCode::NOT_FOUND, no_route.0),
    }
}
