//! What the reconciler knows of the lattice: live hosts and what they run, links, the configs it
//! put, recent failures with their back-off, and commands in flight.
//!
//! Fed by lattice events and start-up queries (see [`crate::reconciler`]); read by the pure
//! planner ([`crate::planner::plan`]). Nothing here does I/O, so tests build states directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use trellis_protocol::ctl::{HostInventory, Link, LinkKey};
use trellis_protocol::events::{names, CloudEvent};

/// Annotation marking what the reconciler started.
pub const MANAGED_BY_ANNOTATION: &str = "wasmcloud.dev/managed-by";
/// The value of [`MANAGED_BY_ANNOTATION`].
pub const MANAGED_BY_VALUE: &str = "wadm";
/// Annotation naming the application something was started for.
pub const APPSPEC_ANNOTATION: &str = "wasmcloud.dev/appspec";

/// How long a host has to confirm a command it acknowledged (by an event or its inventory)
/// before the reconciler issues it again. Generous: confirmation normally comes within
/// milliseconds, and a heartbeat's inventory confirms within one interval even when the event
/// was missed; what takes long is a host fetching and compiling a large component.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(30);
/// A host unheard of this long is reported "silent" (its work is not counted as confirmed)
/// until it speaks again or is declared dead. The default, 3 s, is one missed 2 s heartbeat
/// plus a margin; the reconciler uses half of its dead-host delay.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(3);
/// A silent host is asked directly at most this often.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A host is never probed sooner than this after it was last heard from.
pub const MIN_PROBE_AFTER: Duration = Duration::from_millis(250);
/// Heartbeat gaps longer than this are taken as this (a host back from a partition).
const MAX_HEARTBEAT_GAP: Duration = Duration::from_secs(30);
/// First back-off after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest back-off between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A component as running on one host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedComponent {
    /// Where its code came from.
    pub image_ref: String,
    /// Max concurrent instances.
    pub count: u32,
    /// Annotations it was scaled with.
    pub annotations: BTreeMap<String, String>,
}

/// A provider as running on one host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedProvider {
    /// The reference it was started from.
    pub image_ref: String,
    /// Annotations it was started with.
    pub annotations: BTreeMap<String, String>,
}

/// True when `annotations` say the reconciler started it.
pub fn is_managed(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(MANAGED_BY_ANNOTATION)
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// The application `annotations` name, for things the reconciler started.
pub fn owning_app(annotations: &BTreeMap<String, String>) -> Option<&str> {
    if is_managed(annotations) {
        annotations.get(APPSPEC_ANNOTATION).map(String::as_str)
    } else {
        None
    }
}

/// A live host.
#[derive(Debug, Clone)]
pub struct ObservedHost {
    /// The host id.
    pub id: String,
    /// The host's labels.
    pub labels: BTreeMap<String, String>,
    /// Components by id.
    pub components: BTreeMap<String, ObservedComponent>,
    /// Providers by id.
    pub providers: BTreeMap<String, ObservedProvider>,
    /// When the host was last heard from.
    pub last_seen: Instant,
    /// When its last heartbeat arrived, and the gap before it: the host's heartbeat interval
    /// as observed (hosts choose their own).
    pub last_heartbeat: Option<Instant>,
    /// The gap between its last two heartbeats.
    pub heartbeat_gap: Option<Duration>,
    /// When the reconciler last asked it directly whether it is still there.
    pub last_probe: Option<Instant>,
    /// Probes in a row it let time out (a frozen process): each doubles the wait before the
    /// next, so a host that cannot answer does not stall every reconcile pass.
    pub probe_misses: u32,
}

impl ObservedHost {
    /// An empty host seen at `now`.
    pub fn new(id: impl Into<String>, labels: BTreeMap<String, String>, now: Instant) -> Self {
        Self {
            id: id.into(),
            labels,
            components: BTreeMap::new(),
            providers: BTreeMap::new(),
            last_seen: now,
            last_heartbeat: None,
            heartbeat_gap: None,
            last_probe: None,
            probe_misses: 0,
        }
    }

    /// True when the host carries every label of `requirements`.
    pub fn matches(&self, requirements: &BTreeMap<String, String>) -> bool {
        requirements
            .iter()
            .all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// How much the host runs (components and providers), for spreading new work.
    pub fn load(&self) -> usize {
        self.components.len() + self.providers.len()
    }

    /// Records a heartbeat arriving at `now`.
    pub fn note_heartbeat(&mut self, now: Instant) {
        if let Some(previous) = self.last_heartbeat {
            let gap = now.saturating_duration_since(previous);
            if !gap.is_zero() {
                self.heartbeat_gap = Some(gap.min(MAX_HEARTBEAT_GAP));
            }
        }
        self.last_heartbeat = Some(now);
        self.probe_misses = 0;
    }

    /// Whether the reconciler should ask this host directly if it is still there: it missed a
    /// heartbeat (silent for a quarter longer than its usual gap, or `fallback` while that gap
    /// is unknown), and it was not asked in the last [`PROBE_EVERY`] (doubled for each probe in
    /// a row it let time out).
    pub fn probe_due(&self, now: Instant, fallback: Duration) -> bool {
        let quiet = now.saturating_duration_since(self.last_seen);
        let after = self
            .heartbeat_gap
            .map_or(fallback, |gap| (gap + gap / 4).max(MIN_PROBE_AFTER));
        quiet > after
            && self.last_probe.is_none_or(|probed| {
                now.saturating_duration_since(probed)
                    >= PROBE_EVERY.saturating_mul(1 << self.probe_misses.min(6))
            })
    }
}

/// What a failure is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKey {
    /// A component or provider on a host.
    Workload {
        /// The host.
        host_id: String,
        /// The component or provider id.
        id: String,
    },
    /// A link.
    Link(LinkKey),
    /// A named config.
    Config(String),
}

/// A recent failure and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The image involved (a new image retries at once); empty for links and configs.
    pub image_ref: String,
    /// The host's (or the reply's) own error text.
    pub error: String,
    /// Consecutive failures.
    pub attempts: u32,
    /// No retry before this.
    pub retry_at: Instant,
}

/// Exponential back-off after `attempts` consecutive failures, capped at [`BACKOFF_MAX`].
pub fn backoff_delay(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << shift).min(BACKOFF_MAX)
}

/// What a command a host acknowledged should lead to, once the host confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The component runs this image with this count (0: it is gone).
    Component {
        /// The image it should run.
        image_ref: String,
        /// Its max concurrent instances.
        count: u32,
    },
    /// The provider runs (`true`) or is stopped (`false`).
    Provider {
        /// Whether it should run.
        running: bool,
    },
}

/// A command a host acknowledged whose outcome it has not confirmed yet.
///
/// An acknowledgement only says the host accepted the command; the outcome comes as an event
/// (`component_scaled`, `provider_started`, ...) or shows in the host's next inventory. Until
/// then the work counts as neither confirmed nor missing: the planner does not issue it again,
/// and the status says what it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// What the host should end up running.
    pub expected: Expected,
    /// When the reconciler gives up waiting and issues the command again.
    pub deadline: Instant,
}

impl Pending {
    /// True when `host`'s confirmed state shows the expected outcome for `id`.
    pub fn is_met_by(&self, host: &ObservedHost, id: &str) -> bool {
        match &self.expected {
            Expected::Component { count: 0, .. } => !host.components.contains_key(id),
            Expected::Component { image_ref, count } => host
                .components
                .get(id)
                .is_some_and(|c| c.count == *count && &c.image_ref == image_ref),
            Expected::Provider { running } => host.providers.contains_key(id) == *running,
        }
    }
}

/// Everything the reconciler knows of the lattice.
///
/// Hosts' components and providers are only what hosts confirmed (inventories and events); the
/// effects of commands in flight live apart, in [`LatticeState::pending`].
#[derive(Debug, Clone)]
pub struct LatticeState {
    /// Live hosts by id.
    pub hosts: BTreeMap<String, ObservedHost>,
    /// Links by identity.
    pub links: BTreeMap<LinkKey, Link>,
    /// Configs this reconciler put, with the values it put.
    pub applied_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Recent failures.
    pub failures: BTreeMap<FailureKey, Failure>,
    /// Workloads `(host, id)` changed by a command whose outcome is not confirmed yet.
    pub pending: BTreeMap<(String, String), Pending>,
    /// How long a host may be unheard of before its work stops counting as confirmed.
    pub silent_after: Duration,
}

impl Default for LatticeState {
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            links: BTreeMap::new(),
            applied_configs: BTreeMap::new(),
            failures: BTreeMap::new(),
            pending: BTreeMap::new(),
            silent_after: DEFAULT_SILENT_AFTER,
        }
    }
}

/// Data of component events.
#[derive(Debug, Deserialize)]
struct ComponentEventData {
    #[serde(default, alias = "actor_id")]
    component_id: String,
    #[serde(default)]
    image_ref: String,
    #[serde(default)]
    host_id: String,
    #[serde(default)]
    max_instances: u32,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    error: Option<String>,
}

/// Data of provider events.
#[derive(Debug, Deserialize)]
struct ProviderEventData {
    #[serde(default)]
    provider_id: String,
    // Hosts send `image_ref`, `provider_ref` or both (a serde alias would refuse both as a
    // duplicate field, and the event would be dropped).
    #[serde(default)]
    image_ref: Option<String>,
    #[serde(default)]
    provider_ref: Option<String>,
    #[serde(default)]
    host_id: String,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    error: Option<String>,
}

/// Data of `linkdef_deleted` / `linkdef_set_failed`.
#[derive(Debug, Deserialize)]
struct LinkEventData {
    source_id: String,
    #[serde(default = "default_name")]
    name: String,
    wit_namespace: String,
    wit_package: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

fn default_name() -> String {
    "default".to_string()
}

/// Data of `labels_changed`.
#[derive(Debug, Deserialize)]
struct LabelsEventData {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Data of `host_started`.
#[derive(Debug, Deserialize)]
struct HostStartedData {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl LatticeState {
    /// The host `id`, created (empty) when first heard of.
    fn host_mut(&mut self, id: &str, now: Instant) -> &mut ObservedHost {
        let host = self
            .hosts
            .entry(id.to_string())
            .or_insert_with(|| ObservedHost::new(id, BTreeMap::new(), now));
        host.last_seen = now;
        host
    }

    /// Replaces a host's view with a full inventory (from `host.get` or a heartbeat), and
    /// settles the commands in flight on that host that the inventory shows done.
    ///
    /// A truncated inventory (`inventory_truncated`: a heartbeat whose lists did not fit one
    /// NATS message, or one page of `host.get`) proves the host alive and carries its labels,
    /// but not what it runs: the components and providers known so far (from earlier
    /// inventories and from events) are kept rather than taken to have vanished.
    pub fn apply_inventory(&mut self, inv: &HostInventory, now: Instant) {
        if inv.host_id.is_empty() {
            return;
        }
        if inv.inventory_truncated {
            self.host_mut(&inv.host_id, now).labels = inv.labels.clone();
            return;
        }
        let host = self.host_mut(&inv.host_id, now);
        host.labels = inv.labels.clone();
        host.components = inv
            .components
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    ObservedComponent {
                        image_ref: c.image_ref.clone(),
                        count: c.max_instances,
                        annotations: c.annotations.clone().unwrap_or_default(),
                    },
                )
            })
            .collect();
        host.providers = inv
            .providers
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    ObservedProvider {
                        image_ref: p.image_ref.clone().unwrap_or_default(),
                        annotations: p.annotations.clone().unwrap_or_default(),
                    },
                )
            })
            .collect();
        let host = &self.hosts[&inv.host_id];
        self.pending.retain(|(host_id, id), pending| {
            host_id != &inv.host_id || !pending.is_met_by(host, id)
        });
    }

    /// Forgets hosts not heard from within `dead_after`, and drops expired pending marks.
    /// Returns the ids of the hosts dropped.
    pub fn expire(&mut self, now: Instant, dead_after: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .hosts
            .values()
            .filter(|h| now.saturating_duration_since(h.last_seen) > dead_after)
            .map(|h| h.id.clone())
            .collect();
        for id in &dead {
            self.remove_host(id);
        }
        self.pending.retain(|_, pending| pending.deadline > now);
        dead
    }

    /// Forgets a host the lattice says is gone (its control subject has no responders): its
    /// work is placed elsewhere on the next pass, without waiting for the dead-host delay.
    pub fn declare_gone(&mut self, id: &str) {
        self.remove_host(id);
    }

    fn remove_host(&mut self, id: &str) {
        self.hosts.remove(id);
        self.pending.retain(|(h, _), _| h != id);
        self.failures.retain(|k, _| match k {
            FailureKey::Workload { host_id, .. } => host_id != id,
            _ => true,
        });
    }

    /// True while a command on `(host, id)` awaits confirmation.
    pub fn is_pending(&self, host_id: &str, id: &str, now: Instant) -> bool {
        self.pending_on(host_id, id, now).is_some()
    }

    /// The command in flight on `(host, id)`, if it still awaits confirmation.
    pub fn pending_on(&self, host_id: &str, id: &str, now: Instant) -> Option<&Pending> {
        self.pending
            .get(&(host_id.to_string(), id.to_string()))
            .filter(|p| p.deadline > now)
    }

    /// How long `host` has been unheard of, when that is longer than
    /// [`LatticeState::silent_after`] (its work then does not count as confirmed).
    pub fn silence(&self, host: &ObservedHost, now: Instant) -> Option<Duration> {
        let quiet = now.saturating_duration_since(host.last_seen);
        (quiet > self.silent_after).then_some(quiet)
    }

    /// How many instances of `id` the host runs or, with a command in flight, is about to run
    /// (providers count 1): what placement keeps stable from one pass to the next.
    pub fn intended_count(&self, host: &ObservedHost, id: &str, now: Instant) -> u32 {
        match self.pending_on(&host.id, id, now).map(|p| &p.expected) {
            Some(Expected::Component { count, .. }) => *count,
            Some(Expected::Provider { running }) => u32::from(*running),
            None => host
                .components
                .get(id)
                .map(|c| c.count)
                .or_else(|| host.providers.get(id).map(|_| 1))
                .unwrap_or(0),
        }
    }

    /// How much `host` runs or is about to run (components and providers), for spreading
    /// new work.
    pub fn intended_load(&self, host: &ObservedHost, now: Instant) -> usize {
        let in_flight = self
            .pending
            .range((host.id.clone(), String::new())..)
            .take_while(|((h, _), _)| h == &host.id)
            .filter(|((_, id), p)| {
                p.deadline > now
                    && !host.components.contains_key(id)
                    && !host.providers.contains_key(id)
            })
            .filter(|(_, p)| {
                !matches!(
                    p.expected,
                    Expected::Component { count: 0, .. } | Expected::Provider { running: false }
                )
            })
            .count();
        host.load() + in_flight
    }

    /// Records a failure (or another one) of `key`, pushing its retry out exponentially.
    pub fn record_failure(&mut self, key: FailureKey, image_ref: &str, error: &str, now: Instant) {
        let attempts = match self.failures.get(&key) {
            Some(f) if f.image_ref == image_ref => f.attempts.saturating_add(1),
            _ => 1,
        };
        self.failures.insert(
            key,
            Failure {
                image_ref: image_ref.to_string(),
                error: error.to_string(),
                attempts,
                retry_at: now + backoff_delay(attempts),
            },
        );
    }

    /// Records that the host acknowledged a command on `(host, id)` expected to lead to
    /// `expected`; it counts as done only once the host confirms it.
    pub fn mark_pending(&mut self, host_id: &str, id: &str, expected: Expected, now: Instant) {
        self.pending.insert(
            (host_id.to_string(), id.to_string()),
            Pending {
                expected,
                deadline: now + PENDING_TIMEOUT,
            },
        );
    }

    /// Sets a component's count on a host as a command expects it (0 removes it).
    pub fn set_component(&mut self, host_id: &str, id: &str, c: Option<ObservedComponent>) {
        if let Some(host) = self.hosts.get_mut(host_id) {
            match c {
                Some(c) if c.count > 0 => {
                    host.components.insert(id.to_string(), c);
                }
                _ => {
                    host.components.remove(id);
                }
            }
        }
    }

    /// Sets or removes a provider on a host as a command expects it.
    pub fn set_provider(&mut self, host_id: &str, id: &str, p: Option<ObservedProvider>) {
        if let Some(host) = self.hosts.get_mut(host_id) {
            match p {
                Some(p) => {
                    host.providers.insert(id.to_string(), p);
                }
                None => {
                    host.providers.remove(id);
                }
            }
        }
    }

    /// Applies one lattice event. Returns true when it may change what should be done.
    pub fn apply_event(&mut self, event: &CloudEvent, now: Instant) -> bool {
        let source = event.source.as_str();
        match event.name() {
            names::HOST_HEARTBEAT => {
                let Ok(mut inv) = serde_json::from_value::<HostInventory>(event.data.clone())
                else {
                    tracing::debug!(source, "unreadable heartbeat");
                    return false;
                };
                if inv.host_id.is_empty() {
                    inv.host_id = source.to_string();
                }
                let known = self.hosts.contains_key(&inv.host_id);
                let before = self
                    .hosts
                    .get(&inv.host_id)
                    .map(|h| (h.labels.clone(), h.components.clone(), h.providers.clone()));
                self.apply_inventory(&inv, now);
                if let Some(host) = self.hosts.get_mut(&inv.host_id) {
                    host.note_heartbeat(now);
                }
                let after = self
                    .hosts
                    .get(&inv.host_id)
                    .map(|h| (h.labels.clone(), h.components.clone(), h.providers.clone()));
                !known || before != after
            }
            names::HOST_STARTED => {
                if source.is_empty() {
                    return false;
                }
                let labels = serde_json::from_value::<HostStartedData>(event.data.clone())
                    .map(|d| d.labels)
                    .unwrap_or_default();
                let host = self.host_mut(source, now);
                if !labels.is_empty() {
                    host.labels = labels;
                }
                true
            }
            names::HOST_STOPPED => {
                self.remove_host(source);
                true
            }
            names::LABELS_CHANGED => {
                if let Ok(d) = serde_json::from_value::<LabelsEventData>(event.data.clone()) {
                    self.host_mut(source, now).labels = d.labels;
                }
                true
            }
            names::COMPONENT_SCALED | names::COMPONENT_SCALE_FAILED => {
                let Ok(d) = serde_json::from_value::<ComponentEventData>(event.data.clone()) else {
                    return false;
                };
                let host_id = if d.host_id.is_empty() {
                    source.to_string()
                } else {
                    d.host_id.clone()
                };
                self.pending
                    .remove(&(host_id.clone(), d.component_id.clone()));
                let key = FailureKey::Workload {
                    host_id: host_id.clone(),
                    id: d.component_id.clone(),
                };
                if event.name() == names::COMPONENT_SCALE_FAILED {
                    let error = d.error.unwrap_or_else(|| "scaling failed".to_string());
                    self.record_failure(key, &d.image_ref, &error, now);
                    // The host keeps whatever it ran before; its next heartbeat says what.
                    self.host_mut(&host_id, now);
                    if let Some(host) = self.hosts.get_mut(&host_id) {
                        if host
                            .components
                            .get(&d.component_id)
                            .is_some_and(|c| c.image_ref == d.image_ref)
                        {
                            host.components.remove(&d.component_id);
                        }
                    }
                } else {
                    self.failures.remove(&key);
                    self.host_mut(&host_id, now);
                    self.set_component(
                        &host_id,
                        &d.component_id,
                        Some(ObservedComponent {
                            image_ref: d.image_ref,
                            count: d.max_instances,
                            annotations: d.annotations.unwrap_or_default(),
                        }),
                    );
                }
                true
            }
            names::PROVIDER_STARTED | names::PROVIDER_STOPPED | names::PROVIDER_START_FAILED => {
                let Ok(mut d) = serde_json::from_value::<ProviderEventData>(event.data.clone())
                else {
                    tracing::debug!(source, name = event.name(), "unreadable provider event");
                    return false;
                };
                d.image_ref = d.image_ref.or(d.provider_ref.take());
                let host_id = if d.host_id.is_empty() {
                    source.to_string()
                } else {
                    d.host_id.clone()
                };
                self.pending
                    .remove(&(host_id.clone(), d.provider_id.clone()));
                self.host_mut(&host_id, now);
                let key = FailureKey::Workload {
                    host_id: host_id.clone(),
                    id: d.provider_id.clone(),
                };
                match event.name() {
                    names::PROVIDER_STARTED => {
                        self.failures.remove(&key);
                        self.set_provider(
                            &host_id,
                            &d.provider_id,
                            Some(ObservedProvider {
                                image_ref: d.image_ref.unwrap_or_default(),
                                annotations: d.annotations.unwrap_or_default(),
                            }),
                        );
                    }
                    names::PROVIDER_STOPPED => self.set_provider(&host_id, &d.provider_id, None),
                    _ => {
                        let error = d.error.unwrap_or_else(|| "provider failed to start".into());
                        self.record_failure(key, d.image_ref.as_deref().unwrap_or(""), &error, now);
                        self.set_provider(&host_id, &d.provider_id, None);
                    }
                }
                true
            }
            names::LINKDEF_SET => {
                if let Ok(link) = serde_json::from_value::<Link>(event.data.clone()) {
                    self.failures.remove(&FailureKey::Link(link.key()));
                    self.links.insert(link.key(), link);
                }
                true
            }
            names::LINKDEF_DELETED | names::LINKDEF_SET_FAILED => {
                if let Ok(d) = serde_json::from_value::<LinkEventData>(event.data.clone()) {
                    let key = LinkKey {
                        source_id: d.source_id,
                        wit_namespace: d.wit_namespace,
                        wit_package: d.wit_package,
                        name: d.name,
                    };
                    if event.name() == names::LINKDEF_SET_FAILED {
                        let error = d
                            .error
                            .or(d.message)
                            .unwrap_or_else(|| "link refused".to_string());
                        self.record_failure(FailureKey::Link(key), "", &error, now);
                    } else {
                        self.links.remove(&key);
                    }
                }
                true
            }
            names::CONFIG_DELETED => {
                // Someone deleted a config this reconciler put: put it again.
                let name = event
                    .data
                    .get("config_name")
                    .or_else(|| event.data.get("name"))
                    .and_then(|v| v.as_str());
                if let Some(name) = name {
                    self.applied_configs.remove(name);
                }
                true
            }
            names::CONFIG_SET => true,
            _ => {
                if !source.is_empty() {
                    if let Some(h) = self.hosts.get_mut(source) {
                        h.last_seen = now;
                    }
                }
                false
            }
        }
    }
}
