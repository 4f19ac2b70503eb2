//! The reconciler process: the thin I/O layer around the pure [`crate::planner`].
//!
//! [`run`] connects to NATS, serves the API, watches models in KV, follows lattice events,
//! queries hosts at start-up, and (while it holds the leader lease) plans on every relevant
//! change and on a short tick, issuing the planned control-interface commands. Everything runs
//! inside the returned future: dropping it, or resolving `shutdown`, stops it all.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use futures::StreamExt;
use trellis_protocol::ctl::{CtlResponse, Host, HostInventory, Link};
use trellis_protocol::events::CloudEvent;
use trellis_protocol::jetstream::JetStreamPlacement;
use trellis_protocol::nats::NatsAuth;
use trellis_protocol::subjects::{self, CtlSubjects};

use crate::api::types::{status_subject, Status};
use crate::api::ApiServer;
use crate::lattice::{Expected, FailureKey, LatticeState};
use crate::limits::ManifestLimits;
use crate::planner::{self, AppView, Command};
use crate::store::{ModelIndex, Store, StoredModel, MODEL_PREFIX};

/// Settings of a reconciler.
#[derive(Debug, Clone)]
pub struct WadmOptions {
    /// NATS server URL.
    pub nats_url: String,
    /// Lattice name.
    pub lattice: String,
    /// NATS authentication and TLS, shared by every Trellis process.
    pub nats_auth: NatsAuth,
    /// Control-interface subject prefix.
    pub ctl_prefix: String,
    /// A host silent this long is considered gone (default 6 s: three missed 2 s heartbeats).
    pub host_dead_after: Duration,
    /// Period of the reconcile tick.
    pub tick: Duration,
    /// How long to wait for a control-interface reply.
    pub ctl_timeout: Duration,
    /// How long to gather `host.ping` replies at start-up (at most; discovery ends sooner once
    /// the hosts that answered go quiet).
    pub ping_wait: Duration,
    /// Size and nesting bounds of manifests put through the API.
    pub manifest_limits: ManifestLimits,
    /// Which JetStream domain holds the manifests and how many replicas a new bucket gets.
    pub jetstream: JetStreamPlacement,
}

impl WadmOptions {
    /// Defaults for `nats_url` and `lattice`.
    pub fn new(nats_url: impl Into<String>, lattice: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            lattice: lattice.into(),
            nats_auth: NatsAuth::default(),
            ctl_prefix: subjects::DEFAULT_CTL_PREFIX.to_string(),
            host_dead_after: Duration::from_secs(6),
            tick: Duration::from_millis(500),
            ctl_timeout: Duration::from_secs(5),
            ping_wait: Duration::from_millis(750),
            manifest_limits: ManifestLimits::default(),
            jetstream: JetStreamPlacement::default(),
        }
    }
}

/// Connects to NATS as the options say.
pub async fn connect(opts: &WadmOptions) -> Result<async_nats::Client> {
    let (url, connect) = opts.nats_auth.connect_options(&opts.nats_url).await?;
    connect
        .name(format!("trellis-wadm-{}", opts.lattice))
        .connection_timeout(Duration::from_secs(5))
        .connect(trellis_protocol::nats::server_list(&url))
        .await
        .map_err(|e| trellis_protocol::nats::connect_error(&opts.nats_url, e, ""))
}

/// Runs a reconciler until `shutdown` resolves (or the returned future is dropped).
pub async fn run(opts: WadmOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let client = connect(&opts).await?;
    run_with_client(client, opts, shutdown).await
}

/// Like [`run`] on an existing connection (for `trellis up`, which shares one).
pub async fn run_with_client(
    client: async_nats::Client,
    opts: WadmOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let store = Store::open(&client, &opts.lattice, &opts.jetstream).await?;
    let api = ApiServer::new(store.clone(), opts.lattice.clone()).with_limits(opts.manifest_limits);
    let mut reconciler = Reconciler::new(client.clone(), store.clone(), opts.clone());
    tracing::info!(lattice = %opts.lattice, id = %reconciler.instance_id, "reconciler starting");

    let api_fut = api.serve(client.clone());
    let reconcile_fut = reconciler.run_loop();
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = api_fut => r.context("API server stopped"),
        r = reconcile_fut => r,
        _ = &mut shutdown => Ok(()),
    };
    if let Err(e) = store.release_lease(&reconciler.instance_id).await {
        tracing::debug!(error = %e, "could not release the lease");
    }
    let _ = client.flush().await;
    tracing::info!("reconciler stopped");
    result
}

struct Reconciler {
    client: async_nats::Client,
    store: Store,
    opts: WadmOptions,
    ctl: CtlSubjects,
    instance_id: String,
    lattice: LatticeState,
    models: BTreeMap<String, StoredModel>,
    /// Deleted models kept for a while so their links and configs get cleaned up.
    tombstones: BTreeMap<String, (StoredModel, Instant)>,
    statuses: BTreeMap<String, Status>,
    leader: bool,
}

/// When a host whose heartbeat interval is unknown is probed: a quarter more than hosts'
/// default 2 s interval.
const PROBE_UNKNOWN_INTERVAL_AFTER: Duration = Duration::from_millis(2500);

/// How long a probe of a silent host waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long discovery keeps listening after the last host answered its ping.
const PING_QUIET: Duration = Duration::from_millis(100);

const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

impl Reconciler {
    fn new(client: async_nats::Client, store: Store, opts: WadmOptions) -> Self {
        let silent_after = opts.host_dead_after / 2;
        Self {
            ctl: CtlSubjects::with_prefix(&opts.ctl_prefix, &opts.lattice),
            client,
            store,
            opts,
            instance_id: uuid::Uuid::new_v4().to_string(),
            lattice: LatticeState {
                // Half the dead-host delay: with the defaults, one missed heartbeat and a
                // margin.
                silent_after,
                ..LatticeState::default()
            },
            models: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            statuses: BTreeMap::new(),
            leader: false,
        }
    }

    async fn run_loop(&mut self) -> Result<()> {
        let lattice = self.opts.lattice.clone();
        let mut events = self
            .client
            .subscribe(subjects::all_events(&lattice))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to lattice events: {e}"))?;
        // Watch first, then list, so no change between the two is missed.
        let mut watch = self
            .store
            .kv()
            .watch(format!("{MODEL_PREFIX}>"))
            .await
            .context("watching models")?;
        for model in self.store.list_models().await? {
            self.models.insert(model.name.clone(), model);
        }
        self.discover().await;

        let mut tick = tokio::time::interval(self.opts.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_pass: Option<tokio::time::Instant> = None;
        loop {
            let deadline = next_pass;
            tokio::select! {
                Some(msg) = events.next() => {
                    match serde_json::from_slice::<CloudEvent>(&msg.payload) {
                        Ok(event) => {
                            if self.lattice.apply_event(&event, Instant::now()) && next_pass.is_none() {
                                next_pass = Some(tokio::time::Instant::now() + Duration::from_millis(50));
                            }
                        }
                        Err(e) => tracing::debug!(subject = %msg.subject, error = %e, "unreadable event"),
                    }
                }
                entry = watch.next() => {
                    match entry {
                        Some(Ok(entry)) => {
                            self.apply_model_entry(entry).await;
                            // A deploy or undeploy plans at once, even when a debounced
                            // pass for earlier events is already due a little later.
                            next_pass = Some(tokio::time::Instant::now());
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "model watch error"),
                        None => anyhow::bail!("the model watch ended"),
                    }
                }
                _ = tick.tick() => {
                    self.renew_lease().await;
                    self.pass().await;
                    next_pass = None;
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.pass().await;
                    next_pass = None;
                }
            }
        }
    }

    async fn renew_lease(&mut self) {
        match self.store.acquire_lease(&self.instance_id).await {
            Ok(leader) => {
                if leader != self.leader {
                    tracing::info!(leader, "leadership changed");
                    if leader {
                        // A new leader re-puts its configs once: it does not know what the
                        // previous one put.
                        self.lattice.applied_configs.clear();
                        self.statuses.clear();
                    }
                }
                self.leader = leader;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                self.leader = false;
            }
        }
    }

    /// Takes in a changed model index, reading the manifests of versions it did not know.
    async fn apply_model_entry(&mut self, entry: kv::Entry) {
        let Some(name) = entry.key.strip_prefix(MODEL_PREFIX) else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => {
                let index = match serde_json::from_slice::<ModelIndex>(&entry.value) {
                    Ok(index) => index,
                    Err(e) => {
                        tracing::warn!(model = name, error = %e, "undecodable stored model");
                        return;
                    }
                };
                match self.store.load_model(index, self.models.get(name)).await {
                    Ok(model) => {
                        self.tombstones.remove(name);
                        self.models.insert(name.to_string(), model);
                    }
                    Err(e) => {
                        tracing::warn!(
                            model = name,
                            error = format!("{e:#}"),
                            "cannot read stored model"
                        )
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                if let Some(mut model) = self.models.remove(name) {
                    model.deployed_version = None;
                    self.tombstones
                        .insert(name.to_string(), (model, Instant::now()));
                }
            }
        }
    }

    /// Asks the lattice what runs (hosts, inventories, links) so the first plan is right
    /// before any heartbeat arrives.
    async fn discover(&mut self) {
        let hosts = self.ping_hosts().await;
        let now = Instant::now();
        for host in &hosts {
            match self
                .ctl_request::<HostInventory>(&self.ctl.host_get(&host.id), b"".to_vec())
                .await
            {
                Ok(Some(inv)) => self.apply_host_get(&host.id, inv, now),
                Ok(None) => {}
                Err(e) => tracing::warn!(host = %host.id, error = %e, "cannot get inventory"),
            }
        }
        match self
            .ctl_request::<Vec<Link>>(&self.ctl.link_get(), b"".to_vec())
            .await
        {
            Ok(Some(links)) => {
                for link in links {
                    self.lattice.links.insert(link.key(), link);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot list links"),
        }
        tracing::info!(
            hosts = hosts.len(),
            links = self.lattice.links.len(),
            "lattice discovered"
        );
    }

    async fn ping_hosts(&self) -> Vec<Host> {
        let inbox = self.client.new_inbox();
        let Ok(mut sub) = self.client.subscribe(inbox.clone()).await else {
            return Vec::new();
        };
        if let Err(e) = self
            .client
            .publish_with_reply(self.ctl.host_ping(), inbox, bytes::Bytes::new())
            .await
        {
            tracing::warn!(error = %e, "cannot ping hosts");
            return Vec::new();
        }
        let mut hosts = Vec::new();
        // Wait up to ping_wait for the first answer; once hosts answer, stop when none has for
        // PING_QUIET (hosts on one network answer within milliseconds of each other), so a
        // freshly started reconciler plans its first deploy without waiting the whole window.
        let cap = tokio::time::Instant::now() + self.opts.ping_wait;
        let mut deadline = cap;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
            deadline = cap.min(tokio::time::Instant::now() + PING_QUIET);
            if let Ok(resp) = serde_json::from_slice::<CtlResponse<serde_json::Value>>(&msg.payload)
            {
                if let Some(host) = resp
                    .response
                    .and_then(|v| serde_json::from_value::<Host>(v).ok())
                {
                    if !host.id.is_empty() {
                        hosts.push(host);
                    }
                }
            }
        }
        hosts
    }

    /// A control-interface request; `Err` carries the reply's message or the transport error.
    async fn ctl_request<T: serde::de::DeserializeOwned>(
        &self,
        subject: &str,
        body: Vec<u8>,
    ) -> Result<Option<T>, String> {
        ctl_request(&self.client, self.opts.ctl_timeout, subject, body).await
    }

    fn app_views(&mut self, now: Instant) -> Vec<AppView> {
        self.tombstones
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < TOMBSTONE_TTL);
        self.models
            .values()
            .chain(self.tombstones.values().map(|(m, _)| m))
            .map(|m| AppView {
                name: m.name.clone(),
                deployed: m.deployed().cloned(),
                versions: m.versions.iter().map(|v| v.manifest.clone()).collect(),
            })
            .collect()
    }

    /// Takes in host `id`'s answer to `host.get` (which may leave its own id out).
    fn apply_host_get(&mut self, id: &str, mut inventory: HostInventory, now: Instant) {
        if inventory.host_id.is_empty() {
            inventory.host_id = id.to_string();
        }
        self.lattice.apply_inventory(&inventory, now);
    }

    /// Asks each host that missed a heartbeat, directly, whether it is still there. A host
    /// that crashed or was killed has no subscription left, so NATS answers "no responders" at
    /// once and the host is forgotten now rather than after the dead-host delay; a host that
    /// answers is alive (its reply is a fresh inventory); one that does not answer in time (a
    /// frozen process, a congested link) stays silent until it speaks or the delay passes.
    async fn probe_silent_hosts(&mut self) {
        let now = Instant::now();
        // A host whose heartbeat interval is not known yet (heard from once, or just
        // discovered) is probed after a quarter more than the default 2 s interval.
        let fallback = self.lattice.silent_after.min(PROBE_UNKNOWN_INTERVAL_AFTER);
        let due: Vec<String> = self
            .lattice
            .hosts
            .values()
            .filter(|h| h.probe_due(now, fallback))
            .map(|h| h.id.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for id in &due {
            if let Some(host) = self.lattice.hosts.get_mut(id) {
                host.last_probe = Some(now);
            }
        }
        let probes = due.iter().map(|id| {
            let subject = self.ctl.host_get(id);
            let client = self.client.clone();
            async move {
                let reply = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    client.request(subject, bytes::Bytes::new()),
                )
                .await;
                (id.clone(), reply)
            }
        });
        for (id, reply) in futures::future::join_all(probes).await {
            match reply {
                Ok(Ok(message)) => {
                    let inventory =
                        serde_json::from_slice::<CtlResponse<HostInventory>>(&message.payload)
                            .ok()
                            .and_then(|r| r.response);
                    if let Some(inventory) = inventory {
                        self.apply_host_get(&id, inventory, Instant::now());
                    }
                }
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tracing::warn!(host = %id, "host is gone (nothing answers its control subject); its work moves elsewhere");
                    self.lattice.declare_gone(&id);
                }
                Ok(Err(e)) => tracing::debug!(host = %id, error = %e, "probe failed"),
                Err(_) => {
                    tracing::debug!(host = %id, "silent host did not answer its probe in time");
                    if let Some(host) = self.lattice.hosts.get_mut(&id) {
                        host.probe_misses = host.probe_misses.saturating_add(1);
                    }
                }
            }
        }
    }

    /// One reconcile pass: probe and expire silent hosts, plan, and (as leader) act and publish
    /// status.
    async fn pass(&mut self) {
        self.probe_silent_hosts().await;
        let now = Instant::now();
        for host in self.lattice.expire(now, self.opts.host_dead_after) {
            tracing::warn!(host = %host, "host stopped heartbeating; its work moves elsewhere");
        }
        if !self.leader {
            return;
        }
        let started = Instant::now();
        let views = self.app_views(now);
        let plan = planner::plan(&views, &self.lattice, now);
        let traced = trellis_telemetry::traces_enabled() || trellis_telemetry::metrics_enabled();
        // One span per application and pass; its commands' control requests are its children.
        let app_spans: BTreeMap<String, tracing::Span> = if trellis_telemetry::traces_enabled() {
            views
                .iter()
                .map(|view| {
                    let version = view
                        .deployed
                        .as_ref()
                        .and_then(|m| m.version())
                        .unwrap_or("");
                    (
                        view.name.clone(),
                        trellis_telemetry::spans::reconcile(&view.name, version),
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        if traced {
            for cmd in &plan.commands {
                if let Some(app) = command_app(cmd) {
                    *sent.entry(app.to_string()).or_default() += 1;
                }
            }
        }
        if !plan.commands.is_empty() {
            self.execute(plan.commands, &app_spans).await;
        }
        if traced {
            let elapsed = started.elapsed();
            for (app, status) in &plan.statuses {
                let state = status_name(status);
                let commands = sent.get(app).copied().unwrap_or(0);
                if let Some(span) = app_spans.get(app) {
                    trellis_telemetry::spans::record_reconcile(span, commands, state);
                    if status.status.status_type == crate::api::types::StatusType::Failed {
                        trellis_telemetry::spans::record_error(span, &status.status.message);
                    }
                }
                trellis_telemetry::metrics::record_reconcile(app, state, elapsed);
            }
        }
        self.publish_statuses(plan.statuses).await;
    }

    async fn execute(
        &mut self,
        commands: Vec<Command>,
        app_spans: &BTreeMap<String, tracing::Span>,
    ) {
        // Phases in order; the commands of one phase go out concurrently.
        let mut phase: Vec<Command> = Vec::new();
        let mut phases: Vec<Vec<Command>> = Vec::new();
        for cmd in commands {
            if phase
                .last()
                .is_some_and(|last| planner::command_phase(last) != planner::command_phase(&cmd))
            {
                phases.push(std::mem::take(&mut phase));
            }
            phase.push(cmd);
        }
        if !phase.is_empty() {
            phases.push(phase);
        }
        for phase in phases {
            let results = futures::future::join_all(phase.iter().map(|cmd| {
                let span = command_app(cmd)
                    .and_then(|app| app_spans.get(app))
                    .cloned()
                    .unwrap_or_else(tracing::Span::none);
                tracing::Instrument::instrument(self.send(cmd), span)
            }))
            .await;
            let now = Instant::now();
            for (cmd, result) in phase.into_iter().zip(results) {
                self.record(cmd, result, now);
            }
        }
    }

    async fn send(&self, cmd: &Command) -> Result<(), String> {
        let (subject, body) = match cmd {
            Command::PutConfig { name, values } => {
                (self.ctl.config_put(name), serde_json::to_vec(values))
            }
            Command::DeleteConfig { name } => (self.ctl.config_del(name), Ok(Vec::new())),
            Command::ScaleComponent(c) => {
                (self.ctl.component_scale(&c.host_id), serde_json::to_vec(c))
            }
            Command::StartProvider(c) => {
                (self.ctl.provider_start(&c.host_id), serde_json::to_vec(c))
            }
            Command::StopProvider(c) => (self.ctl.provider_stop(&c.host_id), serde_json::to_vec(c)),
            Command::PutLink(l) => (self.ctl.link_put(), serde_json::to_vec(l)),
            Command::DeleteLink(l) => (self.ctl.link_del(), serde_json::to_vec(l)),
        };
        let body = body.map_err(|e| format!("cannot encode command: {e}"))?;
        tracing::debug!(%subject, "issuing command");
        self.ctl_request::<serde_json::Value>(&subject, body)
            .await
            .map(|_| ())
    }

    fn record(&mut self, cmd: Command, result: Result<(), String>, now: Instant) {
        if let Err(e) = &result {
            tracing::warn!(command = ?cmd, error = %e, "command failed");
        }
        let l = &mut self.lattice;
        match (cmd, result) {
            (Command::PutConfig { name, values }, Ok(())) => {
                l.failures.remove(&FailureKey::Config(name.clone()));
                l.applied_configs.insert(name, values);
            }
            (Command::PutConfig { name, .. }, Err(e)) => {
                l.record_failure(FailureKey::Config(name), "", &e, now)
            }
            (Command::DeleteConfig { name }, Ok(())) => {
                l.applied_configs.remove(&name);
            }
            // An acknowledgement is not an outcome: the work counts once the host confirms it
            // (an event or its inventory), see `LatticeState::pending`.
            (Command::ScaleComponent(c), Ok(())) => l.mark_pending(
                &c.host_id,
                &c.component_id,
                Expected::Component {
                    image_ref: c.component_ref,
                    count: c.max_instances,
                },
                now,
            ),
            (Command::ScaleComponent(c), Err(e)) => l.record_failure(
                FailureKey::Workload {
                    host_id: c.host_id,
                    id: c.component_id,
                },
                &c.component_ref,
                &e,
                now,
            ),
            (Command::StartProvider(c), Ok(())) => l.mark_pending(
                &c.host_id,
                &c.provider_id,
                Expected::Provider { running: true },
                now,
            ),
            (Command::StartProvider(c), Err(e)) => l.record_failure(
                FailureKey::Workload {
                    host_id: c.host_id,
                    id: c.provider_id,
                },
                &c.provider_ref,
                &e,
                now,
            ),
            (Command::StopProvider(c), Ok(())) => l.mark_pending(
                &c.host_id,
                &c.provider_id,
                Expected::Provider { running: false },
                now,
            ),
            (Command::PutLink(link), Ok(())) => {
                l.failures.remove(&FailureKey::Link(link.key()));
                l.links.insert(link.key(), link);
            }
            (Command::PutLink(link), Err(e)) => {
                l.record_failure(FailureKey::Link(link.key()), "", &e, now)
            }
            (Command::DeleteLink(d), Ok(())) => {
                l.links.remove(&d.key());
            }
            // Failed stops and deletions are simply retried on a later pass.
            (Command::StopProvider(_), Err(_))
            | (Command::DeleteLink(_), Err(_))
            | (Command::DeleteConfig { .. }, Err(_)) => {}
        }
    }

    async fn publish_statuses(&mut self, statuses: BTreeMap<String, Status>) {
        for (name, status) in statuses {
            if self.statuses.get(&name) == Some(&status) {
                continue;
            }
            let deleted = !self.models.contains_key(&name);
            // Stored and published within a quarter of a value, so list replies carry several.
            let fitted = status.clone().fit(self.store.value_limit() / 4);
            let stored = if deleted {
                self.store.delete_status(&name).await
            } else {
                self.store.put_status(&name, &fitted).await
            };
            if let Err(e) = stored {
                tracing::warn!(app = %name, error = %e, "cannot store status");
                continue;
            }
            match serde_json::to_vec(&fitted) {
                Ok(body) => {
                    if let Err(e) = self
                        .client
                        .publish(status_subject(&self.opts.lattice, &name), body.into())
                        .await
                    {
                        tracing::debug!(error = %e, "cannot publish status");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode status"),
            }
            tracing::info!(app = %name, status = ?status.status.status_type, message = %status.status.message, "status");
            self.statuses.insert(name, status);
        }
    }
}

/// The application a command works for, when it says (components and providers carry the
/// app in their annotations; links and configs do not).
fn command_app(cmd: &Command) -> Option<&str> {
    let annotations = match cmd {
        Command::ScaleComponent(c) => c.annotations.as_ref(),
        Command::StartProvider(c) => c.annotations.as_ref(),
        _ => None,
    }?;
    annotations
        .get(crate::lattice::APPSPEC_ANNOTATION)
        .map(String::as_str)
}

/// An application status as a metric and span value.
fn status_name(status: &Status) -> &'static str {
    use crate::api::types::StatusType;
    match status.status.status_type {
        StatusType::Deployed => "deployed",
        StatusType::Unhealthy => "unhealthy",
        StatusType::Reconciling => "reconciling",
        StatusType::Waiting => "waiting",
        StatusType::Undeployed => "undeployed",
        StatusType::Failed => "failed",
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends a control-interface request and unwraps the `{success, message, response}` envelope.
pub async fn ctl_request<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    timeout: Duration,
    subject: &str,
    body: Vec<u8>,
) -> Result<Option<T>, String> {
    // The current span's context (a reconcile pass's) goes with the request, so the host's
    // control span joins the trace.
    let traceparent = trellis_telemetry::propagation::current_traceparent();
    let request = async {
        match traceparent {
            Some(traceparent) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("traceparent", traceparent.as_str());
                client
                    .request_with_headers(subject.to_string(), headers, body.into())
                    .await
            }
            None => client.request(subject.to_string(), body.into()).await,
        }
    };
    let reply = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("no reply on {subject} within {timeout:?}"))?
        .map_err(|e| format!("request on {subject} failed: {e}"))?;
    // Read the payload as a JSON value first: the envelope type wants `T: Default`.
    let resp: CtlResponse<serde_json::Value> = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("unreadable reply on {subject}: {e}"))?;
    if resp.success {
        match resp.response {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| format!("unreadable reply on {subject}: {e}")),
        }
    } else {
        Err(if resp.message.is_empty() {
            format!("{subject} refused without a message")
        } else {
            resp.message
        })
    }
}
