//! The HTTP server capability provider: the source side of `wasi:http/incoming-handler`.
//!
//! Links whose source is this provider's id and whose WIT package is `wasi:http` decide which
//! component serves which requests, per the provider's `routing_mode` (see
//! [`settings::Settings`]): `address` (one listener per link at the `address` of the link's
//! source config), `path` (one listener, route by the link's `path`) or `host` (one listener,
//! route by the link's `host` against a header). Link and config changes are applied live:
//! listeners open and close without a restart.
//!
//! A request goes to the component directly when it runs on this host (the co-location fast
//! path, no NATS), else over NATS to whichever host runs it ([`lattice`], [`wire`]). Bodies
//! stream both ways; larger than `max_content_len` gets 413, past `timeout_ms` 504, a component
//! that runs nowhere 503, a trap 500, each with a plain message. A response that fails after
//! it started (the component traps mid-body, the request body passes the limit, the lattice
//! transfer breaks) is aborted: the connection closes without the final chunk, so the client
//! sees an incomplete message, never a complete-looking truncated one.
//!
//! A link whose source config has `executor=wagi` is served the CGI way instead, by a
//! component exporting `wasi:cli/run` ([`wagi`]).
//!
//! Every listener bounds its connections ([`settings::Settings`]: `header_read_timeout_ms`,
//! `idle_timeout_ms`, `max_connections`).

pub mod lattice;
pub mod process;
pub mod settings;
pub mod wagi;
pub mod wire;

mod connection;
mod dispatch;
mod listener;
mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use trellis_host::lattice::store::{LatticeStore, StoreChange};
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::runtime::PreparedComponent;
use trellis_host::Host;

use listener::Listener;
use routes::{desired_listeners, http_links, RouteTable};
pub use settings::Settings;

/// The provider's name, as inventories show it.
pub const NAME: &str = "http-server";
/// How long requests in flight may finish when the provider stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often listeners that failed to bind (address in use) are retried.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Where the provider reads lattice state and finds co-located components.
enum EnvState {
    /// Inside a host: its store, and its components for the fast path.
    Host(Arc<Host>),
    /// In its own process: a store of its own, no local components.
    Standalone(Box<LatticeStore>),
}

/// What the server needs from the lattice.
pub(crate) struct LatticeEnv {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// The lattice name.
    pub lattice: String,
    /// This provider's id (the source id of its links).
    pub provider_id: String,
    state: EnvState,
}

impl LatticeEnv {
    /// The lattice's links and configs.
    pub fn store(&self) -> &LatticeStore {
        match &self.state {
            EnvState::Host(host) => &host.store,
            EnvState::Standalone(store) => store,
        }
    }

    /// The component `id`, when it runs in this process and serves HTTP.
    pub fn local_component(&self, id: &str) -> Option<Arc<PreparedComponent>> {
        match &self.state {
            EnvState::Host(host) => host
                .components
                .get(id)
                .map(|c| c.prepared.clone())
                .filter(|p| p.exports_http()),
            EnvState::Standalone(_) => None,
        }
    }
}

/// State shared by the listeners.
pub(crate) struct Shared {
    pub env: LatticeEnv,
    pub settings: Settings,
}

/// A running http-server provider. [`RunningProvider::stop`] stops accepting and lets requests
/// in flight finish briefly; dropping it stops at once.
pub struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunningProvider for HttpServer {
    fn name(&self) -> &str {
        NAME
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let task = &mut self.task;
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                self.task.abort();
            }
        })
    }
}

/// Starts the provider inside `host` (co-location fast path on unless disabled).
pub async fn start(
    host: Arc<Host>,
    spec: ProviderSpec,
) -> anyhow::Result<Box<dyn RunningProvider>> {
    let settings = Settings::from_config(&spec.config)?;
    let env = LatticeEnv {
        client: host.client.clone(),
        lattice: host.lattice.clone(),
        provider_id: spec.id.clone(),
        state: EnvState::Host(host),
    };
    Ok(Box::new(HttpServer::start(env, settings).await))
}

/// Starts the provider outside any host (its own process): every request goes over NATS.
pub async fn start_standalone(
    client: async_nats::Client,
    lattice: &str,
    placement: &trellis_protocol::jetstream::JetStreamPlacement,
    provider_id: &str,
    config: &std::collections::HashMap<String, String>,
) -> anyhow::Result<HttpServer> {
    let settings = Settings::from_config(config)?;
    let store = LatticeStore::open(client.clone(), lattice, placement, None).await?;
    let env = LatticeEnv {
        client,
        lattice: lattice.to_string(),
        provider_id: provider_id.to_string(),
        state: EnvState::Standalone(Box::new(store)),
    };
    Ok(HttpServer::start(env, settings).await)
}

impl HttpServer {
    /// Opens the listeners the current links call for, then follows link changes.
    async fn start(env: LatticeEnv, settings: Settings) -> Self {
        tracing::info!(provider_id = %env.provider_id, ?settings, "starting the http-server provider");
        let changes = env.store().subscribe();
        let shared = Arc::new(Shared { env, settings });
        let mut listeners = BTreeMap::new();
        let complete = reconcile(&shared, &mut listeners).await;
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(follow_links(shared, listeners, changes, stop_rx, complete));
        Self {
            stop: Some(stop),
            task,
        }
    }
}

async fn follow_links(
    shared: Arc<Shared>,
    mut listeners: BTreeMap<SocketAddr, Listener>,
    mut changes: broadcast::Receiver<StoreChange>,
    mut stop: oneshot::Receiver<()>,
    mut complete: bool,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            change = changes.recv() => match change {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    complete = reconcile(&shared, &mut listeners).await;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The store is gone (host stopping): wait for the stop.
                    let _ = (&mut stop).await;
                    break;
                }
            },
            () = tokio::time::sleep(BIND_RETRY), if !complete => {
                complete = reconcile(&shared, &mut listeners).await;
            }
        }
    }
    futures::future::join_all(listeners.into_values().map(|l| l.shutdown(STOP_GRACE))).await;
    tracing::info!(provider_id = %shared.env.provider_id, "http-server provider stopped");
}

/// Makes the listeners match the links. Returns false when some listener could not be opened
/// (to be retried).
async fn reconcile(shared: &Arc<Shared>, listeners: &mut BTreeMap<SocketAddr, Listener>) -> bool {
    let links = http_links(&shared.env, &shared.env.provider_id).await;
    let desired: BTreeMap<SocketAddr, RouteTable> = desired_listeners(&links, &shared.settings);
    let removed: Vec<SocketAddr> = listeners
        .keys()
        .filter(|addr| !desired.contains_key(addr))
        .copied()
        .collect();
    let mut closing = Vec::new();
    for addr in removed {
        if let Some(listener) = listeners.remove(&addr) {
            tracing::info!(%addr, "no link uses this address any more; closing the listener");
            closing.push(listener.shutdown(STOP_GRACE));
        }
    }
    // Close first so an address that moved between links can be bound again.
    futures::future::join_all(closing).await;
    let mut complete = true;
    for (addr, table) in desired {
        if let Some(listener) = listeners.get(&addr) {
            listener.set_routes(table);
            continue;
        }
        match Listener::bind(addr, table, shared.clone()).await {
            Ok(listener) => {
                listeners.insert(addr, listener);
            }
            Err(error) => {
                complete = false;
                tracing::error!(%addr, error = %format!("{error:#}"), "cannot open a listener for a link; retrying");
            }
        }
    }
    complete
}
