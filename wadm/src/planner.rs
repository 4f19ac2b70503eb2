//! The planner: a pure function from the desired state (deployed manifests) and the observed
//! lattice to the commands that close the gap, and to each application's status.
//!
//! Ordering inside one plan: configs, then starts and scale-ups, then links; cleanup (stops,
//! link and config deletions) comes last and, for an application still converging, waits for a
//! later plan, so an upgrade brings the new version's work up before tearing the old one down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use trellis_protocol::ctl::{
    DeleteLinkRequest, Link, LinkKey, ScaleComponentCommand, StartProviderCommand,
    StopProviderCommand,
};

use crate::api::types::{ScalerStatus, Status, StatusInfo, StatusType};
use crate::lattice::{
    owning_app, FailureKey, LatticeState, ObservedHost, APPSPEC_ANNOTATION, MANAGED_BY_ANNOTATION,
    MANAGED_BY_VALUE,
};
use crate::model::{
    config_name, lattice_config_name, Component, ConfigProperty, Manifest, ScalerProperties,
    SecretProperty, Spread, Trait, SECRET_POLICY_TYPE,
};
use trellis_protocol::secrets::{self, SecretPolicy, SecretReference};

/// Why configs and links wait: hosts answer `config.put` and `link.put`.
const NO_HOSTS: &str = "no host in the lattice yet to store it";

/// One application as the planner sees it.
#[derive(Debug, Clone)]
pub struct AppView {
    /// The application name.
    pub name: String,
    /// The deployed version's manifest, if deployed.
    pub deployed: Option<Manifest>,
    /// Every stored version (deployed or not); used to recognise links and configs the
    /// application may have created in earlier versions.
    pub versions: Vec<Manifest>,
}

/// One control-interface command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `config.put.{name}`.
    PutConfig {
        /// The config name.
        name: String,
        /// Its values.
        values: BTreeMap<String, String>,
    },
    /// `component.scale.{host}` (count 0 stops).
    ScaleComponent(ScaleComponentCommand),
    /// `provider.start.{host}`.
    StartProvider(StartProviderCommand),
    /// `provider.stop.{host}`.
    StopProvider(StopProviderCommand),
    /// `link.put`.
    PutLink(Link),
    /// `link.del`.
    DeleteLink(DeleteLinkRequest),
    /// `config.del.{name}`.
    DeleteConfig {
        /// The config name.
        name: String,
    },
}

/// What to do now, and how each application stands.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Commands in the order to issue them.
    pub commands: Vec<Command>,
    /// Status of every application of the input, by name.
    pub statuses: BTreeMap<String, Status>,
}

/// Instances per spread: spreads sorted by weight (heaviest first, stable), each gets
/// `floor(instances * weight / total)`, and the remainder goes one each from the first.
/// Returns `(index into spreads, count)` in that sorted order.
pub fn spread_counts(instances: u32, spreads: &[Spread]) -> Vec<(usize, u32)> {
    let mut order: Vec<usize> = (0..spreads.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(spreads[i].effective_weight()));
    let total: u64 = spreads
        .iter()
        .map(|s| u64::from(s.effective_weight()))
        .sum();
    if total == 0 {
        return order.into_iter().map(|i| (i, 0)).collect();
    }
    let mut counts: Vec<(usize, u32)> = order
        .iter()
        .map(|&i| {
            let share = u64::from(instances) * u64::from(spreads[i].effective_weight()) / total;
            (i, u32::try_from(share).unwrap_or(u32::MAX))
        })
        .collect();
    let assigned: u32 = counts.iter().map(|(_, c)| *c).sum();
    let mut remainder = instances.saturating_sub(assigned);
    let mut k = 0;
    let len = counts.len();
    while remainder > 0 && len > 0 {
        counts[k % len].1 += 1;
        remainder -= 1;
        k += 1;
    }
    counts
}

/// Splits `count` over `hosts` (already in preference order): at most one share per host,
/// shares as even as possible with the larger ones first. Returns `(host, share)`.
pub fn distribute(count: u32, hosts: &[&str]) -> Vec<(String, u32)> {
    if count == 0 || hosts.is_empty() {
        return Vec::new();
    }
    let used = hosts.len().min(count as usize);
    let used_u32 = u32::try_from(used).unwrap_or(u32::MAX);
    let base = count / used_u32;
    let extra = count % used_u32;
    hosts[..used]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let bonus = u32::from((i as u32) < extra);
            (h.to_string(), base + bonus)
        })
        .collect()
}

/// Where one scaler wants its work, and whether it could be placed.
struct Placement {
    /// `host -> count` (providers: count 1).
    per_host: BTreeMap<String, u32>,
    /// Why it could not be fully placed, when it could not.
    waiting: Option<String>,
}

fn fmt_requirements(req: &BTreeMap<String, String>) -> String {
    if req.is_empty() {
        "no requirements".to_string()
    } else {
        req.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Hosts eligible for `requirements`, best first: hosts already running `id` (more instances
/// first), then the least loaded, then by id. Hosts backing off from a failure of `id` with
/// `image` go last.
fn ranked_hosts<'a>(
    lattice: &'a LatticeState,
    requirements: &BTreeMap<String, String>,
    id: &str,
    image: &str,
    now: Instant,
) -> Vec<&'a ObservedHost> {
    let mut hosts: Vec<&ObservedHost> = lattice
        .hosts
        .values()
        .filter(|h| h.matches(requirements))
        .collect();
    hosts.sort_by_key(|h| {
        let backing_off = in_backoff(lattice, &h.id, id, image, now);
        // Commands in flight count as placed, so a pass before the hosts confirm them places
        // the same way.
        let running = lattice.intended_count(h, id, now);
        (
            backing_off,
            std::cmp::Reverse(running),
            lattice.intended_load(h, now),
            h.id.clone(),
        )
    });
    hosts
}

fn in_backoff(lattice: &LatticeState, host: &str, id: &str, image: &str, now: Instant) -> bool {
    lattice
        .failures
        .get(&FailureKey::Workload {
            host_id: host.to_string(),
            id: id.to_string(),
        })
        .is_some_and(|f| f.image_ref == image && f.retry_at > now)
}

fn implicit_spread() -> Vec<Spread> {
    vec![Spread {
        name: "default".to_string(),
        requirements: BTreeMap::new(),
        weight: None,
    }]
}

/// Places a spreadscaler of a component (`provider` false: counts split over hosts) or of a
/// provider (`provider` true: one per host, on `count` hosts).
fn place_spread(
    lattice: &LatticeState,
    props: &ScalerProperties,
    id: &str,
    image: &str,
    provider: bool,
    now: Instant,
) -> Placement {
    let spreads = if props.spread.is_empty() {
        implicit_spread()
    } else {
        props.spread.clone()
    };
    let mut per_host: BTreeMap<String, u32> = BTreeMap::new();
    let mut waiting = Vec::new();
    for (idx, count) in spread_counts(props.instances, &spreads) {
        if count == 0 {
            continue;
        }
        let spread = &spreads[idx];
        let hosts = ranked_hosts(lattice, &spread.requirements, id, image, now);
        if hosts.is_empty() {
            waiting.push(format!(
                "no host matches spread `{}` ({})",
                spread.name,
                fmt_requirements(&spread.requirements)
            ));
            continue;
        }
        if provider {
            let free: Vec<&str> = hosts
                .iter()
                .map(|h| h.id.as_str())
                .filter(|h| !per_host.contains_key(*h))
                .collect();
            let take = free.len().min(count as usize);
            for h in &free[..take] {
                per_host.insert((*h).to_string(), 1);
            }
            if take < count as usize {
                waiting.push(format!(
                    "spread `{}` wants {count} hosts, only {take} eligible ({})",
                    spread.name,
                    fmt_requirements(&spread.requirements)
                ));
            }
        } else {
            let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
            for (h, share) in distribute(count, &ids) {
                *per_host.entry(h).or_insert(0) += share;
            }
        }
    }
    Placement {
        per_host,
        waiting: (!waiting.is_empty()).then(|| waiting.join("; ")),
    }
}

/// Places a daemonscaler: `instances` (components) or one provider on every eligible host.
fn place_daemon(lattice: &LatticeState, props: &ScalerProperties, provider: bool) -> Placement {
    let spreads = if props.spread.is_empty() {
        implicit_spread()
    } else {
        props.spread.clone()
    };
    let per_host: BTreeMap<String, u32> = lattice
        .hosts
        .values()
        .filter(|h| spreads.iter().any(|s| h.matches(&s.requirements)))
        .map(|h| (h.id.clone(), if provider { 1 } else { props.instances }))
        .filter(|(_, n)| *n > 0)
        .collect();
    let waiting = (per_host.is_empty() && props.instances > 0).then(|| {
        format!(
            "no host matches any spread ({})",
            spreads
                .iter()
                .map(|s| format!("{}: {}", s.name, fmt_requirements(&s.requirements)))
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    Placement { per_host, waiting }
}

/// Resolves the lattice id of a component of `manifest`, following `application` references
/// to deployed shared applications.
fn resolve_id(manifest: &Manifest, component: &str, apps: &[AppView]) -> Result<String, String> {
    let comp = manifest
        .spec
        .components
        .iter()
        .find(|c| c.name == component)
        .ok_or_else(|| format!("no component `{component}`"))?;
    match &comp.properties.application {
        None => Ok(manifest.id_of(comp)),
        Some(shared) => {
            let app = apps
                .iter()
                .find(|a| a.name == shared.name)
                .and_then(|a| a.deployed.as_ref())
                .ok_or_else(|| format!("shared application `{}` is not deployed", shared.name))?;
            if !app.is_shared() {
                return Err(format!(
                    "application `{}` is not marked shared",
                    shared.name
                ));
            }
            app.component_id(&shared.component).ok_or_else(|| {
                format!(
                    "shared application `{}` has no component `{}`",
                    shared.name, shared.component
                )
            })
        }
    }
}

fn annotations(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            MANAGED_BY_ANNOTATION.to_string(),
            MANAGED_BY_VALUE.to_string(),
        ),
        (APPSPEC_ANNOTATION.to_string(), app.to_string()),
    ])
}

/// Every config a manifest defines (with properties), and a reference config for each secret
/// it names: lattice name -> values.
pub fn defined_configs(manifest: &Manifest) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut add = |cfg: &ConfigProperty| {
        if let Some(props) = &cfg.properties {
            out.insert(config_name(manifest.name(), &cfg.name), props.clone());
        }
    };
    for comp in &manifest.spec.components {
        comp.properties.config.iter().for_each(&mut add);
        for tr in &comp.traits {
            if let Trait::Link(link) = tr {
                link.source_configs().into_iter().for_each(&mut add);
                link.target_configs().into_iter().for_each(&mut add);
            }
        }
    }
    for secret in all_secrets(manifest) {
        if let Some(reference) = secret_reference(manifest, secret) {
            out.insert(
                secrets::reference_config_name(manifest.name(), &secret.name),
                reference.to_config_map(),
            );
        }
    }
    out
}

/// Every secret a manifest names: on components and providers, and on links' sources and
/// targets.
fn all_secrets(manifest: &Manifest) -> impl Iterator<Item = &SecretProperty> {
    manifest.spec.components.iter().flat_map(|comp| {
        comp.properties.secrets.iter().chain(
            comp.traits
                .iter()
                .filter_map(|tr| match tr {
                    Trait::Link(link) => Some(link),
                    _ => None,
                })
                .flat_map(|link| {
                    link.source
                        .iter()
                        .flat_map(|s| s.secrets.iter())
                        .chain(link.target.secrets.iter())
                }),
        )
    })
}

/// The reference a secret is stored as: its policy's backend and the policy's other
/// properties, never a value. `None` when its policy is missing or has no backend (validation
/// refuses such manifests).
fn secret_reference(manifest: &Manifest, secret: &SecretProperty) -> Option<SecretReference> {
    let policy = manifest
        .spec
        .policies
        .iter()
        .find(|p| p.name == secret.properties.policy && p.policy_type == SECRET_POLICY_TYPE)?;
    let backend = policy.properties.get("backend")?.clone();
    let properties = policy
        .properties
        .iter()
        .filter(|(k, _)| k.as_str() != "backend")
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(SecretReference {
        name: secret.name.clone(),
        backend,
        key: secret.properties.key.clone(),
        field: secret.properties.field.clone(),
        version: secret.properties.version.clone(),
        policy: serde_json::to_string(&SecretPolicy::new(properties)).ok()?,
    })
}

/// The reference config names of `secrets`, as components and links name them.
fn secret_config_names(manifest: &Manifest, secrets: &[SecretProperty]) -> Vec<String> {
    secrets
        .iter()
        .map(|s| secrets::reference_config_name(manifest.name(), &s.name))
        .collect()
}

/// Desired links of a manifest, or per link the reason it cannot be built yet.
fn desired_links(manifest: &Manifest, apps: &[AppView]) -> Vec<(String, Result<Link, String>)> {
    let mut out = Vec::new();
    for comp in &manifest.spec.components {
        for tr in &comp.traits {
            let Trait::Link(props) = tr else { continue };
            let label = format!(
                "{} -> {} ({}:{}/{}, {})",
                comp.name,
                props.target.name,
                props.namespace,
                props.package,
                props.interfaces.join(","),
                props.link_name()
            );
            let link = resolve_id(manifest, &comp.name, apps).and_then(|source| {
                let target = resolve_id(manifest, &props.target.name, apps)?;
                let mut interfaces = props.interfaces.clone();
                interfaces.sort();
                interfaces.dedup();
                Ok(Link {
                    source_id: source,
                    target,
                    name: props.link_name().to_string(),
                    wit_namespace: props.namespace.clone(),
                    wit_package: props.package.clone(),
                    interfaces,
                    source_config: props
                        .source_configs()
                        .into_iter()
                        .map(|c| lattice_config_name(manifest.name(), c))
                        .chain(secret_config_names(
                            manifest,
                            props.source.as_ref().map(|s| &s.secrets[..]).unwrap_or(&[]),
                        ))
                        .collect(),
                    target_config: props
                        .target_configs()
                        .into_iter()
                        .map(|c| lattice_config_name(manifest.name(), c))
                        .chain(secret_config_names(manifest, &props.target.secrets))
                        .collect(),
                })
            });
            out.push((label, link));
        }
    }
    out
}

fn links_equal(a: &Link, b: &Link) -> bool {
    let mut ai = a.interfaces.clone();
    let mut bi = b.interfaces.clone();
    ai.sort();
    bi.sort();
    a.target == b.target
        && ai == bi
        && a.source_config == b.source_config
        && a.target_config == b.target_config
}

/// The scaler trait of a component, with capabilities defaulting to one instance.
fn scaler_of(comp: &Component) -> Option<(&'static str, ScalerProperties)> {
    for tr in &comp.traits {
        match tr {
            Trait::SpreadScaler(p) => return Some(("SpreadScaler", p.clone())),
            Trait::DaemonScaler(p) => return Some(("DaemonScaler", p.clone())),
            Trait::Link(_) | Trait::Custom(_) => {}
        }
    }
    comp.component_type.is_provider().then(|| {
        (
            "SpreadScaler",
            ScalerProperties {
                instances: 1,
                spread: Vec::new(),
            },
        )
    })
}

/// How far the hosts have confirmed one scaler's work, for its status.
#[derive(Debug, Default)]
struct Progress {
    /// Instances (providers: hosts) the scaler wants.
    wanted: u32,
    /// Of those, how many live, speaking hosts confirmed.
    confirmed: u32,
    /// Some wanted work is not in the hosts' confirmed state.
    missing: bool,
    /// Hosts that acknowledged a command and have not confirmed its outcome yet.
    unconfirmed: Vec<String>,
    /// Chosen hosts unheard of for longer than the silence threshold, with how long.
    silent: Vec<(String, Duration)>,
}

impl Progress {
    /// Deployed only when every wanted instance is confirmed by a host that is speaking and
    /// nothing is in flight.
    fn is_complete(&self) -> bool {
        !self.missing
            && self.unconfirmed.is_empty()
            && self.silent.is_empty()
            && self.confirmed == self.wanted
    }

    /// What a `reconciling` status waits for, e.g.
    /// `4 of 5 instances confirmed; host H silent for 3 s`.
    fn describe(&self, extra: bool) -> String {
        let mut parts = vec![format!(
            "{} of {} instances confirmed",
            self.confirmed, self.wanted
        )];
        for (host, quiet) in &self.silent {
            parts.push(format!("host {host} silent for {} s", quiet.as_secs()));
        }
        if !self.unconfirmed.is_empty() {
            parts.push(format!(
                "waiting for {} to confirm",
                list_hosts(&self.unconfirmed)
            ));
        }
        if extra {
            parts.push("removing instances from hosts no longer chosen".to_string());
        }
        parts.join("; ")
    }
}

/// `host A`, `hosts A, B` or `hosts A, B, C and 4 more`.
fn list_hosts(hosts: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown = hosts[..hosts.len().min(SHOWN)].join(", ");
    match hosts.len() {
        1 => format!("host {shown}"),
        n if n <= SHOWN => format!("hosts {shown}"),
        n => format!("hosts {shown} and {} more", n - SHOWN),
    }
}

/// Computes the plan. Pure: the same inputs give the same commands.
pub fn plan(apps: &[AppView], lattice: &LatticeState, now: Instant) -> Plan {
    let mut desired_components: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut desired_providers: BTreeSet<(String, String)> = BTreeSet::new();
    let mut desired_links_all: BTreeMap<LinkKey, Link> = BTreeMap::new();
    let mut desired_configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut scalers: BTreeMap<String, Vec<ScalerStatus>> = BTreeMap::new();
    // Per app: apply commands (configs, scale-ups, starts, links).
    let mut apply: BTreeMap<String, Vec<Command>> = BTreeMap::new();

    for app in apps {
        let Some(manifest) = &app.deployed else {
            continue;
        };
        let app_scalers = scalers.entry(app.name.clone()).or_default();
        let app_apply = apply.entry(app.name.clone()).or_default();

        // Configs.
        let configs = defined_configs(manifest);
        let mut changed_configs = BTreeSet::new();
        for (name, values) in &configs {
            let failure = lattice.failures.get(&FailureKey::Config(name.clone()));
            let status = if lattice.applied_configs.get(name) == Some(values) {
                StatusInfo::new(StatusType::Deployed, "")
            } else {
                changed_configs.insert(name.clone());
                if lattice.hosts.is_empty() {
                    StatusInfo::new(StatusType::Waiting, NO_HOSTS)
                } else if failure.is_some_and(|f| f.retry_at > now) {
                    StatusInfo::new(
                        StatusType::Failed,
                        failure.map(|f| f.error.clone()).unwrap_or_default(),
                    )
                } else {
                    app_apply.push(Command::PutConfig {
                        name: name.clone(),
                        values: values.clone(),
                    });
                    StatusInfo::new(StatusType::Reconciling, "putting config")
                }
            };
            app_scalers.push(ScalerStatus {
                id: format!("config-{name}"),
                kind: "ConfigScaler".to_string(),
                name: name.clone(),
                status,
            });
            desired_configs.insert(name.clone(), values.clone());
        }

        // Workloads.
        for comp in &manifest.spec.components {
            let Some(image) = comp.properties.image.clone() else {
                continue;
            };
            let Some((kind, props)) = scaler_of(comp) else {
                continue;
            };
            let id = manifest.id_of(comp);
            let provider = comp.component_type.is_provider();
            let placement = if kind == "DaemonScaler" {
                place_daemon(lattice, &props, provider)
            } else {
                place_spread(lattice, &props, &id, &image, provider, now)
            };
            let config: Vec<String> = comp
                .properties
                .config
                .iter()
                .map(|c| lattice_config_name(manifest.name(), c))
                .chain(secret_config_names(manifest, &comp.properties.secrets))
                .collect();
            let mut progress = Progress::default();
            let mut failed: Vec<String> = Vec::new();
            for (host, count) in &placement.per_host {
                let key = (host.clone(), id.clone());
                let observed = lattice.hosts.get(host);
                let observed_ok = observed.is_some_and(|h| {
                    if provider {
                        h.providers.contains_key(&id)
                    } else {
                        h.components
                            .get(&id)
                            .is_some_and(|c| c.count == *count && c.image_ref == image)
                    }
                });
                let wanted = if provider { 1 } else { *count };
                progress.wanted += wanted;
                let silence = observed.and_then(|h| lattice.silence(h, now));
                if let Some(quiet) = silence {
                    progress.silent.push((host.clone(), quiet));
                } else if observed_ok {
                    progress.confirmed += wanted;
                }
                let pending = lattice.is_pending(host, &id, now);
                if pending {
                    progress.unconfirmed.push(host.clone());
                }
                if !observed_ok {
                    progress.missing = true;
                    if let Some(f) = lattice.failures.get(&FailureKey::Workload {
                        host_id: host.clone(),
                        id: id.clone(),
                    }) {
                        if f.image_ref == image || f.image_ref.is_empty() {
                            failed.push(format!("{host}: {}", f.error));
                        }
                    }
                    // A command the host acknowledged is not sent again until it confirms,
                    // fails, or the confirmation is overdue.
                    if !pending && !in_backoff(lattice, host, &id, &image, now) {
                        app_apply.push(if provider {
                            Command::StartProvider(StartProviderCommand {
                                provider_id: id.clone(),
                                provider_ref: image.clone(),
                                host_id: host.clone(),
                                config: config.clone(),
                                annotations: Some(annotations(&app.name)),
                            })
                        } else {
                            Command::ScaleComponent(ScaleComponentCommand {
                                component_ref: image.clone(),
                                component_id: id.clone(),
                                annotations: Some(annotations(&app.name)),
                                max_instances: *count,
                                component_limits: None,
                                host_id: host.clone(),
                                config: config.clone(),
                                allow_update: true,
                            })
                        });
                    }
                }
                if provider {
                    desired_providers.insert(key);
                } else {
                    let entry = desired_components.entry(key).or_insert(0);
                    *entry = (*entry).max(*count);
                }
            }
            // Work of this scaler running where it is no longer wanted.
            let extra = lattice.hosts.values().any(|h| {
                !placement.per_host.contains_key(&h.id)
                    && if provider {
                        h.providers
                            .get(&id)
                            .is_some_and(|p| owning_app(&p.annotations) == Some(&app.name))
                    } else {
                        h.components
                            .get(&id)
                            .is_some_and(|c| owning_app(&c.annotations) == Some(&app.name))
                    }
            });
            let status = if !failed.is_empty() {
                StatusInfo::new(StatusType::Failed, failed.join("; "))
            } else if let Some(why) = &placement.waiting {
                StatusInfo::new(StatusType::Waiting, why.clone())
            } else if progress.is_complete() && !extra {
                StatusInfo::new(StatusType::Deployed, "")
            } else {
                StatusInfo::new(StatusType::Reconciling, progress.describe(extra))
            };
            app_scalers.push(ScalerStatus {
                id: format!("{}-{}", kind.to_ascii_lowercase(), comp.name),
                kind: kind.to_string(),
                name: comp.name.clone(),
                status,
            });
        }

        // Links.
        for (label, link) in desired_links(manifest, apps) {
            let status = match link {
                Err(why) => StatusInfo::new(StatusType::Waiting, why),
                Ok(link) => {
                    let key = link.key();
                    let observed = lattice.links.get(&key);
                    let config_changed = link
                        .source_config
                        .iter()
                        .chain(link.target_config.iter())
                        .any(|c| changed_configs.contains(c));
                    let ok = observed.is_some_and(|o| links_equal(o, &link)) && !config_changed;
                    let failure = lattice
                        .failures
                        .get(&FailureKey::Link(key.clone()))
                        .filter(|f| f.retry_at > now);
                    let status = if ok {
                        StatusInfo::new(StatusType::Deployed, "")
                    } else if lattice.hosts.is_empty() {
                        StatusInfo::new(StatusType::Waiting, NO_HOSTS)
                    } else if let Some(f) = failure {
                        StatusInfo::new(StatusType::Failed, f.error.clone())
                    } else {
                        if observed.is_some_and(|o| o.target != link.target) {
                            // A link to another target is refused until the old one is gone.
                            app_apply.push(Command::DeleteLink(DeleteLinkRequest {
                                source_id: key.source_id.clone(),
                                name: key.name.clone(),
                                wit_namespace: key.wit_namespace.clone(),
                                wit_package: key.wit_package.clone(),
                            }));
                        }
                        app_apply.push(Command::PutLink(link.clone()));
                        StatusInfo::new(StatusType::Reconciling, "putting link")
                    };
                    desired_links_all.insert(key, link);
                    status
                }
            };
            app_scalers.push(ScalerStatus {
                id: format!("link-{label}"),
                kind: "LinkScaler".to_string(),
                name: label,
                status,
            });
        }
    }

    // Cleanup, attributed to the owning application.
    let mut cleanup: BTreeMap<String, Vec<Command>> = BTreeMap::new();
    for host in lattice.hosts.values() {
        for (id, c) in &host.components {
            if desired_components.contains_key(&(host.id.clone(), id.clone()))
                || lattice.is_pending(&host.id, id, now)
            {
                continue;
            }
            if let Some(owner) = owning_app(&c.annotations) {
                cleanup
                    .entry(owner.to_string())
                    .or_default()
                    .push(Command::ScaleComponent(ScaleComponentCommand {
                        component_ref: c.image_ref.clone(),
                        component_id: id.clone(),
                        annotations: Some(c.annotations.clone()),
                        max_instances: 0,
                        component_limits: None,
                        host_id: host.id.clone(),
                        config: Vec::new(),
                        allow_update: false,
                    }));
            }
        }
        for (id, p) in &host.providers {
            if desired_providers.contains(&(host.id.clone(), id.clone()))
                || lattice.is_pending(&host.id, id, now)
            {
                continue;
            }
            if let Some(owner) = owning_app(&p.annotations) {
                cleanup
                    .entry(owner.to_string())
                    .or_default()
                    .push(Command::StopProvider(StopProviderCommand {
                        host_id: host.id.clone(),
                        provider_id: id.clone(),
                    }));
            }
        }
    }
    // Links and configs an application declared in some version and no deployed app wants.
    for app in apps {
        let mut owned_links: BTreeSet<LinkKey> = BTreeSet::new();
        let mut owned_configs: BTreeSet<String> = BTreeSet::new();
        for version in app.versions.iter().chain(app.deployed.iter()) {
            for (_, link) in desired_links(version, apps) {
                if let Ok(link) = link {
                    owned_links.insert(link.key());
                }
            }
            owned_configs.extend(defined_configs(version).into_keys());
        }
        let entry = cleanup.entry(app.name.clone()).or_default();
        for key in owned_links {
            if lattice.links.contains_key(&key) && !desired_links_all.contains_key(&key) {
                entry.push(Command::DeleteLink(DeleteLinkRequest {
                    source_id: key.source_id.clone(),
                    name: key.name.clone(),
                    wit_namespace: key.wit_namespace.clone(),
                    wit_package: key.wit_package.clone(),
                }));
            }
        }
        for name in owned_configs {
            if lattice.applied_configs.contains_key(&name) && !desired_configs.contains_key(&name) {
                entry.push(Command::DeleteConfig { name });
            }
        }
    }

    // Statuses; an application still converging keeps its obsolete work for now.
    let mut statuses = BTreeMap::new();
    let mut ready_cleanup: Vec<Command> = Vec::new();
    for app in apps {
        let app_cleanup = cleanup.remove(&app.name).unwrap_or_default();
        match &app.deployed {
            None => {
                ready_cleanup.extend(app_cleanup);
                statuses.insert(app.name.clone(), Status::undeployed());
            }
            Some(_) => {
                let app_scalers = scalers.remove(&app.name).unwrap_or_default();
                let converging = apply.get(&app.name).is_some_and(|c| !c.is_empty())
                    || app_scalers
                        .iter()
                        .any(|s| s.status.status_type == StatusType::Reconciling);
                if !converging {
                    ready_cleanup.extend(app_cleanup);
                }
                let version = app
                    .deployed
                    .as_ref()
                    .and_then(|m| m.version())
                    .unwrap_or_default();
                statuses.insert(
                    app.name.clone(),
                    Status::aggregate(app_scalers).for_version(version),
                );
            }
        }
    }
    // Work owned by applications no longer known at all.
    for (_, cmds) in cleanup {
        ready_cleanup.extend(cmds);
    }

    let mut commands: Vec<Command> = Vec::new();
    let mut all_apply: Vec<Command> = apply.into_values().flatten().collect();
    // Configs first, then workloads, then links: a link or scale naming a missing config is
    // refused.
    all_apply.sort_by_key(command_phase);
    dedup_into(&mut commands, all_apply);
    ready_cleanup.sort_by_key(command_phase);
    dedup_into(&mut commands, ready_cleanup);
    Plan { commands, statuses }
}

fn dedup_into(out: &mut Vec<Command>, cmds: Vec<Command>) {
    for c in cmds {
        if !out.contains(&c) {
            out.push(c);
        }
    }
}

/// The order commands go out in: configs, starts and scale-ups, link re-targeting, links,
/// stops, config deletions.
pub fn command_phase(c: &Command) -> u8 {
    match c {
        Command::PutConfig { .. } => 0,
        Command::ScaleComponent(s) if s.max_instances > 0 => 1,
        Command::StartProvider(_) => 1,
        Command::DeleteLink(_) => 2,
        Command::PutLink(_) => 3,
        Command::ScaleComponent(_) => 4,
        Command::StopProvider(_) => 4,
        Command::DeleteConfig { .. } => 5,
    }
}
