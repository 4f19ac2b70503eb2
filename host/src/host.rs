//! A host's lifecycle: join the lattice, serve the control interface, heartbeat, and stop
//! cleanly (drain, say goodbye, exit).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_protocol::ctl::{Host as HostInfo, HostInventory};
use trellis_protocol::events::names;
use trellis_protocol::jetstream::JetStreamPlacement;
use trellis_protocol::limits;

use crate::components::ComponentRegistry;
use crate::identity::{builtin_labels, human_uptime, HostIdentity};
use crate::invocation::direct::{DirectListener, DirectPeers};
use crate::lattice::connection::{self, NatsOptions};
use crate::lattice::events::EventPublisher;
use crate::lattice::snapshot::Snapshot;
use crate::lattice::store::LatticeStore;
use crate::lattice::{control, heartbeat};
use crate::providers::{ProviderLauncher, ProviderRegistry};
use crate::runtime::{Capability, Runtime, RuntimeConfig};

/// The default heartbeat interval.
///
/// wasmCloud heartbeats every 30 s, so its reconciler needs 35 to 70 s to notice a dead host.
/// Trellis heartbeats every 2 s: a reconciler that allows three missed beats declares a host
/// dead after about 6 s, which leaves room inside the 10 s healing budget to reschedule. A
/// heartbeat is one small JSON message per host, so even a thousand hosts cost NATS only a few
/// hundred messages a second.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long in-flight invocations may drain on stop when the request gives no timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping host waits to stop its providers and publish `host_stopped` once its
/// invocations drained: a host that cannot reach NATS exits after this rather than never.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything needed to start a host.
#[derive(Clone)]
pub struct HostConfig {
    /// How to reach NATS.
    pub nats: NatsOptions,
    /// The lattice to join.
    pub lattice: String,
    /// User labels (the `hostcore.*` ones are added by the host).
    pub labels: BTreeMap<String, String>,
    /// The nkeys server seed; a fresh identity is generated when absent.
    pub host_seed: Option<String>,
    /// How often to publish `host_heartbeat`.
    pub heartbeat_interval: Duration,
    /// Whether `file://` refs and plain paths may be loaded.
    pub allow_file_load: bool,
    /// Directories components may mount through their `mounts` config (`--allow-mount`);
    /// empty: components get no directories.
    pub mount_roots: Vec<crate::runtime::MountRoot>,
    /// The largest component file loaded, in bytes (default
    /// [`crate::runtime::DEFAULT_MAX_COMPONENT_BYTES`]).
    pub max_component_bytes: u64,
    /// Where compiled code is cached (a per-user default when absent).
    pub cache_dir: Option<PathBuf>,
    /// Starts capability providers; without one, `provider.start` is refused.
    pub provider_launcher: Option<Arc<dyn ProviderLauncher>>,
    /// Host functions (keyvalue, messaging, logging, config...) added to every component.
    pub capabilities: Vec<Arc<dyn Capability>>,
    /// Filled with the running host once it exists, for capabilities built before it.
    pub host_slot: HostSlot,
    /// Whether calls to a link target running on this host go in-process (default true);
    /// `false` sends every component-to-component call over NATS.
    pub colocation: bool,
    /// Where to listen for direct calls from peer hosts (see
    /// [`crate::invocation::direct`]); default `127.0.0.1:0`, which serves peers on this
    /// machine. `None` turns the direct path off both ways: every remote call goes through
    /// NATS.
    pub direct_listen: Option<SocketAddr>,
    /// The `host:port` peers should dial; defaults to the bound address. Needed when
    /// `direct_listen` is a wildcard address such as `0.0.0.0:7100`.
    pub direct_advertise: Option<String>,
    /// Which signed (or unsigned) components this host admits (`--require-signed`,
    /// `--allowed-issuer`); embedded claims are verified in any case.
    pub claims_policy: crate::security::ClaimsPolicy,
    /// wasmCloud's policy service, asked before components and providers start and before
    /// lattice calls reach a component (`--policy-topic`); `None` permits everything.
    pub policy: Option<crate::security::PolicyConfig>,
    /// The subject prefix of secrets backends (`--secrets-topic`, default `wasmcloud.secrets`).
    pub secrets_topic: String,
    /// Which JetStream domain holds the lattice's state and how many replicas new buckets get
    /// (`--js-domain`, `--kv-replicas`).
    pub jetstream: JetStreamPlacement,
    /// Where the host keeps its snapshot (`--data-dir`); none is kept when absent. See
    /// [`crate::lattice::snapshot`].
    pub data_dir: Option<PathBuf>,
}

/// Late access to the running host, for parts (capabilities) that must be built before the
/// host exists but need it at call time. Holds a weak reference: it never keeps a host alive.
#[derive(Clone, Default)]
pub struct HostSlot(Arc<OnceLock<Weak<Host>>>);

impl HostSlot {
    /// The host, once started and while it runs.
    pub fn get(&self) -> Option<Arc<Host>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

impl std::fmt::Debug for HostSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostSlot")
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field(
                "nats_url",
                &trellis_protocol::nats::redact_url(&self.nats.url),
            )
            .field("lattice", &self.lattice)
            .field("labels", &self.labels)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("allow_file_load", &self.allow_file_load)
            .field("mount_roots", &self.mount_roots)
            .field("max_component_bytes", &self.max_component_bytes)
            .field("cache_dir", &self.cache_dir)
            .field("providers", &self.provider_launcher.is_some())
            .field("direct_listen", &self.direct_listen)
            .field("claims_policy", &self.claims_policy)
            .field("policy", &self.policy)
            .field("secrets_topic", &self.secrets_topic)
            .field("jetstream", &self.jetstream)
            .field("data_dir", &self.data_dir)
            .field(
                "capabilities",
                &self
                    .capabilities
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            nats: NatsOptions {
                url: "nats://127.0.0.1:4222".into(),
                ..Default::default()
            },
            lattice: trellis_protocol::subjects::DEFAULT_LATTICE.into(),
            labels: BTreeMap::new(),
            host_seed: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            allow_file_load: false,
            mount_roots: Vec::new(),
            max_component_bytes: crate::runtime::DEFAULT_MAX_COMPONENT_BYTES,
            cache_dir: None,
            provider_launcher: None,
            capabilities: Vec::new(),
            host_slot: HostSlot::default(),
            colocation: true,
            direct_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            direct_advertise: None,
            claims_policy: crate::security::ClaimsPolicy::default(),
            policy: None,
            secrets_topic: trellis_protocol::secrets::DEFAULT_TOPIC_PREFIX.to_string(),
            jetstream: JetStreamPlacement::default(),
            data_dir: None,
        }
    }
}

/// The state every part of a running host shares.
pub struct Host {
    /// Who this host is.
    pub identity: HostIdentity,
    /// The lattice it belongs to.
    pub lattice: String,
    /// The NATS connection (control, events and data plane share it).
    pub client: async_nats::Client,
    /// Publishes this host's events.
    pub events: EventPublisher,
    /// Config and links, shared through KV.
    pub store: LatticeStore,
    /// The wasmtime runtime.
    pub runtime: Runtime,
    /// Running components.
    pub components: ComponentRegistry,
    /// Answers direct calls from peer hosts, when the direct path is on.
    pub direct_listener: Option<DirectListener>,
    /// Where this host's calls may go directly, when the direct path is on.
    pub direct_peers: Option<Arc<DirectPeers>>,
    /// Running providers.
    pub providers: ProviderRegistry,
    /// Starts providers, when this host can.
    pub provider_launcher: Option<Arc<dyn ProviderLauncher>>,
    /// Whether `file://` refs may be loaded.
    pub allow_file_load: bool,
    /// The policy service client, when `--policy-topic` is set.
    pub policy: Option<Arc<crate::security::PolicyClient>>,
    /// Secrets fetched for running components (the `wasmcloud:secrets` capability reads them).
    pub secrets: crate::secrets::ComponentSecrets,
    /// Resolves secret references through their backends.
    pub secret_fetcher: crate::secrets::SecretFetcher,
    /// Where the lattice's state lives in JetStream (domain, replicas); providers that open
    /// buckets follow it.
    pub jetstream: JetStreamPlacement,
    labels: RwLock<BTreeMap<String, String>>,
    started: Instant,
    /// How this host reached NATS, for the provider processes it starts.
    nats: NatsOptions,
    stop_request: watch::Sender<Option<Duration>>,
}

impl Host {
    /// Who is asking, as policy requests say it.
    pub fn policy_host_info(&self) -> crate::security::policy::HostInfo {
        crate::security::policy::HostInfo {
            public_key: self.identity.host_id.clone(),
            lattice: self.lattice.clone(),
            labels: self.labels(),
        }
    }

    /// The host's labels now.
    pub fn labels(&self) -> BTreeMap<String, String> {
        match self.labels.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Sets a label within the limits of [`trellis_protocol::limits`] (key and value length,
    /// number of labels); `hostcore.*` labels belong to the host and are refused.
    pub fn put_label(&self, key: &str, value: &str) -> Result<(), String> {
        limits::check_label(key, value)?;
        let mut labels = match self.labels.write() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let user_labels = labels.keys().filter(|k| !is_builtin_label(k)).count();
        if !labels.contains_key(key) && user_labels >= limits::MAX_LABELS {
            return Err(format!(
                "this host already carries {user_labels} labels, the most allowed ({}): \
                 delete one with label.del first",
                limits::MAX_LABELS
            ));
        }
        labels.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Removes a label; true when it was set.
    pub fn delete_label(&self, key: &str) -> Result<bool, String> {
        limits::check_label_key(key)?;
        let mut labels = match self.labels.write() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        Ok(labels.remove(key).is_some())
    }

    /// The NATS URL this host joined without any credentials in it: what a child is handed
    /// along with [`Host::child_nats_env`].
    pub fn nats_url_bare(&self) -> String {
        trellis_protocol::nats::strip_url_credentials(&self.nats.url)
    }

    /// The environment variables that give a child process (a provider) this host's own NATS
    /// credentials and TLS settings. Secret: set them on the child's environment (after
    /// removing [`trellis_protocol::nats::ENV_VARS`]), never on its command line or in logs.
    pub fn child_nats_env(&self) -> Vec<(&'static str, String)> {
        self.nats.auth.child_env(&self.nats.url)
    }

    /// Seconds since start.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// This host as `host.ping` answers it.
    pub fn info(&self) -> HostInfo {
        let uptime = self.uptime_seconds();
        HostInfo {
            id: self.identity.host_id.clone(),
            friendly_name: self.identity.friendly_name.clone(),
            labels: self.labels(),
            lattice: self.lattice.clone(),
            ctl_host: Some(trellis_protocol::nats::redact_url(&self.nats.url)),
            rpc_host: Some(trellis_protocol::nats::redact_url(&self.nats.url)),
            js_domain: self.jetstream.js_domain.clone(),
            uptime_seconds: uptime,
            uptime_human: Some(human_uptime(uptime)),
            version: Some(crate::VERSION.to_string()),
        }
    }

    /// This host's inventory without the component and provider lists, flagged as truncated
    /// and with their counts: what a heartbeat carries when the whole inventory does not fit
    /// one NATS message.
    pub fn inventory_summary(&self) -> HostInventory {
        let mut inventory = self.inventory();
        inventory.component_count = Some(std::mem::take(&mut inventory.components).len());
        inventory.provider_count = Some(std::mem::take(&mut inventory.providers).len());
        inventory.inventory_truncated = true;
        inventory
    }

    /// Everything this host runs.
    pub fn inventory(&self) -> HostInventory {
        let uptime = self.uptime_seconds();
        HostInventory {
            components: self.components.all().iter().map(|c| c.describe()).collect(),
            providers: self.providers.describe(),
            host_id: self.identity.host_id.clone(),
            friendly_name: self.identity.friendly_name.clone(),
            labels: self.labels(),
            version: crate::VERSION.to_string(),
            uptime_human: human_uptime(uptime),
            uptime_seconds: uptime,
            ..Default::default()
        }
    }

    /// Asks the host to stop, letting in-flight work drain for `timeout`.
    pub fn request_stop(&self, timeout: Duration) {
        self.stop_request.send_replace(Some(timeout));
    }
}

/// True for the labels the host sets itself (`hostcore.*`).
fn is_builtin_label(key: &str) -> bool {
    key.starts_with("hostcore.")
}

/// A started host. Dropping it stops its tasks abruptly; call [`HostHandle::stop`] to stop
/// cleanly.
pub struct HostHandle {
    host: Arc<Host>,
    stop_rx: watch::Receiver<Option<Duration>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HostHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl HostHandle {
    /// Joins the lattice: connects, opens the shared state, starts the runtime, the control
    /// interface and heartbeats, and announces `host_started`.
    pub async fn start(config: HostConfig) -> anyhow::Result<Self> {
        if !trellis_protocol::subjects::is_valid_token(&config.lattice) {
            anyhow::bail!(
                "lattice name `{}` is not valid: use letters, digits, `-` or `_` (no dots, spaces or wildcards)",
                config.lattice
            );
        }
        let mut labels = builtin_labels();
        let mut user_labels = BTreeMap::new();
        for (k, v) in &config.labels {
            if is_builtin_label(k) {
                tracing::warn!(label = %k, "ignoring a user label in the reserved hostcore. namespace");
                continue;
            }
            user_labels.insert(k.clone(), v.clone());
        }
        limits::check_labels(&user_labels)
            .map_err(|e| anyhow::anyhow!("invalid host labels (--label): {e}"))?;
        labels.extend(user_labels);
        let identity = HostIdentity::from_seed(config.host_seed.as_deref())?;
        let mut nats = config.nats.clone();
        if nats.client_name.is_empty() {
            nats.client_name = format!("trellis-host {}", identity.host_id);
        }
        let (client, conn_events) = connection::connect(&nats).await?;
        let snapshot_path = config
            .data_dir
            .as_ref()
            .map(|dir| Snapshot::path(dir, &config.lattice));
        let snapshot = snapshot_path
            .as_ref()
            .and_then(|path| Snapshot::load(path, &config.lattice));
        let store = LatticeStore::open(
            client.clone(),
            &config.lattice,
            &config.jetstream,
            snapshot.as_ref().map(Snapshot::store_seed),
        )
        .await?;
        // Replayed only when the lattice cannot say what to run (see `snapshot`).
        let replay = snapshot.filter(|_| !store.is_online());
        let policy = match &config.policy {
            Some(policy) => Some(Arc::new(
                crate::security::PolicyClient::new(client.clone(), policy.clone()).await?,
            )),
            None => None,
        };
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: config.cache_dir.clone(),
            allow_file_load: config.allow_file_load,
            max_component_bytes: Some(config.max_component_bytes),
            capabilities: config.capabilities.clone(),
            claims_policy: config.claims_policy.clone(),
            mount_roots: config.mount_roots.clone(),
            ..Default::default()
        })
        .context("cannot start the WebAssembly runtime")?;
        let direct_listener = match config.direct_listen {
            Some(listen) => Some(
                DirectListener::bind(listen, config.direct_advertise.clone())
                    .await
                    .context(
                        "cannot start the listener for direct calls from other hosts: choose another \
                         address (--direct-listen) or turn direct calls off (--no-direct-calls)",
                    )?,
            ),
            None => None,
        };
        let direct_peers = direct_listener
            .as_ref()
            .map(|_| Arc::new(DirectPeers::default()));
        let host_token =
            crate::security::HostToken::issue(&identity.host_id, &identity.friendly_name, &labels)?;
        let secret_fetcher = crate::secrets::SecretFetcher::new(
            client.clone(),
            &config.secrets_topic,
            host_token.jwt,
        );
        let (stop_request, stop_rx) = watch::channel(None);
        let host = Arc::new(Host {
            events: EventPublisher::new(client.clone(), &config.lattice, &identity.host_id),
            identity,
            lattice: config.lattice.clone(),
            client,
            store,
            runtime,
            components: ComponentRegistry::default(),
            direct_listener,
            direct_peers,
            providers: ProviderRegistry::default(),
            provider_launcher: config.provider_launcher.clone(),
            allow_file_load: config.allow_file_load,
            policy,
            secrets: crate::secrets::ComponentSecrets::default(),
            secret_fetcher,
            jetstream: config.jetstream.clone(),
            labels: RwLock::new(labels),
            started: Instant::now(),
            nats: config.nats.clone(),
            stop_request,
        });
        let _ = config.host_slot.0.set(Arc::downgrade(&host));
        telemetry::register_host(&host);
        let control = control::ControlServer::subscribe(host.clone()).await?;
        let mut tasks = vec![
            // First: installs the import resolver before any component can be started.
            crate::routing::start(&host, config.colocation),
            tokio::spawn(control.run()),
            tokio::spawn(heartbeat::run(
                host.clone(),
                config.heartbeat_interval,
                conn_events,
            )),
        ];
        host.events
            .publish(names::HOST_STARTED, host_started_data(&host))
            .await;
        if let Some(snapshot) = &replay {
            crate::lattice::snapshot::replay(&host, snapshot).await;
        }
        if let Some(path) = snapshot_path {
            // After any replay, so the snapshot is not overwritten before it was used.
            tasks.push(tokio::spawn(crate::lattice::snapshot::keep_written(
                host.clone(),
                path,
            )));
        }
        tracing::info!(
            host_id = %host.identity.host_id,
            friendly_name = %host.identity.friendly_name,
            lattice = %host.lattice,
            "host started: {} ({}) on lattice {}",
            host.identity.friendly_name,
            host.identity.host_id,
            host.lattice
        );
        match &host.direct_listener {
            Some(listener) => tracing::info!(
                address = %listener.local_addr(),
                "accepting direct calls from other hosts on {}",
                listener.local_addr()
            ),
            None => tracing::info!("direct calls are off: calls to other hosts go through NATS"),
        }
        Ok(Self {
            host,
            stop_rx,
            tasks,
        })
    }

    /// The shared host state, for subsystems (HTTP server, providers) that run beside it.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Resolves when a `host.stop` request arrives (or [`Host::request_stop`] is called),
    /// with the drain timeout it asked for.
    pub async fn stop_requested(&mut self) -> Duration {
        loop {
            if let Some(timeout) = *self.stop_rx.borrow_and_update() {
                return timeout;
            }
            if self.stop_rx.changed().await.is_err() {
                return DEFAULT_STOP_TIMEOUT;
            }
        }
    }

    /// Stops cleanly: no new control commands, in-flight invocations drain for at most
    /// `timeout`, `host_stopped` is published, and the connection is flushed.
    pub async fn stop(mut self, timeout: Duration) {
        // Stop taking commands and heartbeating first.
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let in_flight = self.host.components.in_flight();
            if in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight,
                    "stop timeout reached with invocations still running"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Saying goodbye needs NATS; a host cut off from it (the case `systemctl stop` meets on
        // flaky links) must still exit, so every step that may wait for NATS is bounded.
        let host = &self.host;
        let goodbye = async {
            for (description, running) in host.providers.drain() {
                running.stop().await;
                host.events
                    .publish(
                        names::PROVIDER_STOPPED,
                        crate::lattice::control::provider_event(
                            host,
                            &description,
                            "host stopping",
                        ),
                    )
                    .await;
            }
            host.events
                .publish(
                    names::HOST_STOPPED,
                    serde_json::json!({ "labels": host.labels() }),
                )
                .await;
            host.events.flush().await;
        };
        if tokio::time::timeout(GOODBYE_TIMEOUT, goodbye)
            .await
            .is_err()
        {
            tracing::warn!(
                "NATS did not take the host's goodbye within {GOODBYE_TIMEOUT:?} (is it reachable?); stopping without it"
            );
        }
        tracing::info!(host_id = %self.host.identity.host_id, "host stopped");
    }
}

fn host_started_data(host: &Host) -> serde_json::Value {
    serde_json::json!({
        "labels": host.labels(),
        "friendly_name": host.identity.friendly_name,
        "uptime_seconds": 0,
        "version": crate::VERSION,
    })
}

/// Telemetry of a started host: its id on spans, and its components' instance gauges.
mod telemetry {
    use std::sync::Arc;

    use super::Host;

    pub(super) fn register_host(host: &Arc<Host>) {
        trellis_telemetry::set_host_id(&host.identity.host_id);
        if !trellis_telemetry::metrics_enabled() {
            return;
        }
        let weak = Arc::downgrade(host);
        trellis_telemetry::metrics::add_load_source(Arc::new(move || {
            let Some(host) = weak.upgrade() else {
                return Vec::new();
            };
            host.components
                .all()
                .iter()
                .map(|running| trellis_telemetry::metrics::ComponentLoad {
                    component_id: running.prepared.id().to_string(),
                    in_use: running.prepared.in_flight() as u64,
                    waiting: running.prepared.queued() as u64,
                })
                .collect()
        }));
    }
}
