//! The timer trigger (`trellis+builtin://timer`): calls `on-tick` of the
//! `trellis:timer/handler@0.1.0` export (`wit/trellis-timer`) of each linked component, on
//! a fixed interval or a cron schedule, once per tick across the whole lattice.
//!
//! # Links
//!
//! A link from the provider (source id = provider id) to a component, WIT namespace
//! `trellis`, package `timer`, interface `handler`. Its source configs (merged over the
//! provider's own config) say when it fires: `interval` (`500ms`, `10s`, `5m`, `1h`) or
//! `cron` (UTC; 5 fields, or 6 with seconds), plus an optional `payload` (text handed to every
//! tick). Link puts and deletes apply without a restart.
//!
//! # Once per tick across the lattice
//!
//! The provider may run on several hosts (for availability). Every host numbers the ticks
//! alike from the wall clock ([`schedule`]), and a host fires tick `n` of a link only after
//! claiming it with a create-only put of `{link}.{n}` in the lattice's JetStream KV bucket
//! `TIMERS_{lattice}`: exactly one put succeeds, so exactly one host fires each tick. Claims
//! expire after [`CLAIM_TTL`]. A host that cannot reach the bucket does not fire (a missed
//! tick is better than a doubled one); another host that can, will.
//!
//! # No pile-up
//!
//! A host whose previous call for a link is still running waits [`busy_grace`] before
//! claiming the next tick, so a free host takes it first. When the busy host wins anyway (no
//! free host claimed it), the tick is skipped, counted and reported as a
//! [`EVENT_TICK_SKIPPED`] event: calls never queue up behind a slow handler.
//!
//! # Where the handler runs
//!
//! In-process when the component runs on the claiming host, else over the lattice (the
//! component-to-component call path) on a host that runs it. A failed call (an error
//! returned by `on-tick`, a trap, the deadline, no host running it) is reported as a
//! [`EVENT_TICK_FAILED`] event on the lattice's event subject.

pub mod schedule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use trellis_host::invocation::{CallContext, InvocationClient, InvocationError};
use trellis_host::log_limit::LogLimiter;
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::Host;

use schedule::{Schedule, Tick, PAYLOAD_KEY};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/trellis-timer",
        world: "trellis:timer/timer-handler",
        exports: { default: async },
    });
}

use bindings::exports::trellis::timer::handler::TickInfo;

/// The interface timer-triggered components export.
pub const HANDLER_INTERFACE: &str = "trellis:timer/handler@0.1.0";
/// The function called on every tick.
pub const ON_TICK: &str = "on-tick";
/// Event published when a tick's call failed.
pub const EVENT_TICK_FAILED: &str = "timer_tick_failed";
/// Event published when a tick was skipped because the previous call was still running.
pub const EVENT_TICK_SKIPPED: &str = "timer_tick_skipped";
/// How long a claimed tick is remembered: hosts whose clocks are further apart than this
/// could fire a tick twice.
pub const CLAIM_TTL: Duration = Duration::from_secs(3600);
/// How often the provider re-reads its links without a change notification, and retries
/// opening the claims bucket.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// The longest a claim may take before the tick is given up.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time past a component's execution deadline before a call blocked in host I/O is
/// cancelled.
const HOST_IO_GRACE: Duration = Duration::from_millis(100);

/// Claims and failed calls are logged at most this often (per process).
static CLAIM_TROUBLE: LogLimiter = LogLimiter::new(Duration::from_secs(5));
static CALL_FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// The JetStream KV bucket holding a lattice's tick claims.
pub fn claims_bucket(lattice: &str) -> String {
    format!("TIMERS_{lattice}")
}

/// How long a host still busy with a link's previous call waits before claiming a tick, so
/// that a free host claims it first: a quarter of the interval, at most 250 ms.
pub fn busy_grace(schedule: &Schedule) -> Duration {
    match schedule {
        Schedule::Interval(interval) => (*interval / 4).min(Duration::from_millis(250)),
        Schedule::Cron(_) => Duration::from_millis(250),
    }
}

/// What one timer link asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TimerLink {
    provider_id: String,
    link_name: String,
    component_id: String,
    schedule: Schedule,
    payload: Vec<u8>,
}

impl TimerLink {
    /// The claim key prefix: a digest of the link's identity (ids may hold characters KV
    /// keys cannot), so every host running the provider uses the same keys.
    fn claim_prefix(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut digest = Sha256::new();
        for part in [&self.provider_id, &self.link_name, &self.component_id] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        digest
            .finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The timer links of provider `provider_id`: the valid ones by `{component}/{link name}`,
/// and why each invalid one is refused.
fn desired_links(
    host: &Host,
    provider_id: &str,
    provider_config: &HashMap<String, String>,
) -> (HashMap<String, TimerLink>, HashMap<String, String>) {
    let links: Vec<_> = host.store.with_links(|table| {
        table
            .from_source(provider_id)
            .filter(|l| {
                l.wit_namespace == "trellis"
                    && l.wit_package == "timer"
                    && l.interfaces.iter().any(|i| i == "handler")
            })
            .cloned()
            .collect()
    });
    let mut valid = HashMap::new();
    let mut refused = HashMap::new();
    for link in links {
        let key = format!("{}/{}", link.target, link.name);
        let mut settings = provider_config.clone();
        for name in &link.source_config {
            if let Some(values) = host.store.cached_config(name) {
                settings.extend(values);
            }
        }
        match Schedule::from_settings(&settings) {
            Ok(schedule) => {
                let payload = settings
                    .get(PAYLOAD_KEY)
                    .map(|p| p.as_bytes().to_vec())
                    .unwrap_or_default();
                valid.insert(
                    key,
                    TimerLink {
                        provider_id: provider_id.to_string(),
                        link_name: link.name.clone(),
                        component_id: link.target.clone(),
                        schedule,
                        payload,
                    },
                );
            }
            Err(why) => {
                refused.insert(key, why);
            }
        }
    }
    (valid, refused)
}

/// Outcome of trying to claim a tick.
enum Claim {
    /// This host has the tick.
    Won,
    /// Another host has it, or the bucket could not be reached.
    NotOurs,
}

async fn claim(claims: &kv::Store, key: &str, record: &str) -> Claim {
    match tokio::time::timeout(CLAIM_TIMEOUT, claims.create(key, record.to_string().into())).await {
        Ok(Ok(_)) => Claim::Won,
        Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Claim::NotOurs,
        outcome => {
            if let Some(suppressed) = CLAIM_TROUBLE.allow() {
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", CLAIM_TIMEOUT.as_millis()),
                };
                tracing::warn!(
                    key,
                    error,
                    suppressed,
                    "cannot claim a timer tick; not firing it here"
                );
            }
            Claim::NotOurs
        }
    }
}

/// Clears the link's "call running" flag when the call ends, however it ends.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Fires one link's ticks on this host until dropped.
async fn run_link(host: Arc<Host>, claims: kv::Store, link: TimerLink) {
    let link = Arc::new(link);
    let prefix = link.claim_prefix();
    let running = Arc::new(AtomicBool::new(false));
    let skipped = AtomicU64::new(0);
    let client = {
        let client = InvocationClient::new(host.client.clone(), host.lattice.clone());
        match &host.direct_peers {
            Some(peers) => client.with_direct_peers(peers.clone()),
            None => client,
        }
    };
    tracing::info!(
        component_id = link.component_id,
        link_name = link.link_name,
        schedule = link.schedule.describe(),
        "timer link active"
    );
    let mut last: Option<Tick> = None;
    loop {
        // Never the same tick twice, even when the sleep ended a little early.
        let after = last.map_or(0, |t| t.scheduled_ms).max(now_ms());
        let Some(tick) = link.schedule.next_after(after) else {
            tracing::info!(
                component_id = link.component_id,
                "the timer's cron expression matches no future time; it stops"
            );
            return;
        };
        last = Some(tick);
        tokio::time::sleep(Duration::from_millis(
            tick.scheduled_ms.saturating_sub(now_ms()),
        ))
        .await;
        if running.load(Ordering::SeqCst) {
            tokio::time::sleep(busy_grace(&link.schedule)).await;
        }
        let busy = running.load(Ordering::SeqCst);
        let outcome = if busy { "skipped" } else { "fired" };
        let record = format!("{} {outcome}", host.identity.host_id);
        let key = format!("{prefix}.{}", tick.number);
        if let Claim::NotOurs = claim(&claims, &key, &record).await {
            continue;
        }
        if busy {
            let count = skipped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(
                component_id = link.component_id,
                tick = tick.number,
                "timer tick skipped"
            );
            host.events
                .publish(
                    EVENT_TICK_SKIPPED,
                    event_data(
                        &host,
                        &link,
                        tick,
                        "the previous call is still running",
                        count,
                    ),
                )
                .await;
            continue;
        }
        running.store(true, Ordering::SeqCst);
        let guard = RunningGuard(running.clone());
        let (host, client, link) = (host.clone(), client.clone(), link.clone());
        let skipped_so_far = skipped.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(error) = fire(&host, &client, &link, tick).await {
                let error = format!("{error:#}");
                if let Some(suppressed) = CALL_FAILED.allow() {
                    tracing::info!(
                        component_id = link.component_id,
                        tick = tick.number,
                        error,
                        suppressed,
                        "timer tick failed"
                    );
                }
                host.events
                    .publish(
                        EVENT_TICK_FAILED,
                        event_data(&host, &link, tick, &error, skipped_so_far),
                    )
                    .await;
            }
        });
    }
}

fn event_data(
    host: &Host,
    link: &TimerLink,
    tick: Tick,
    reason: &str,
    skipped_total: u64,
) -> serde_json::Value {
    serde_json::json!({
        "host_id": host.identity.host_id,
        "provider_id": link.provider_id,
        "link_name": link.link_name,
        "component_id": link.component_id,
        "tick": tick.number,
        "scheduled_ms": tick.scheduled_ms,
        "reason": reason,
        "skipped_total": skipped_total,
    })
}

/// Calls `on-tick` for `tick`: in-process when the component runs here, else over the
/// lattice.
async fn fire(
    host: &Host,
    client: &InvocationClient,
    link: &TimerLink,
    tick: Tick,
) -> anyhow::Result<()> {
    let info = TickInfo {
        number: tick.number,
        scheduled_ms: tick.scheduled_ms,
        payload: link.payload.clone(),
    };
    let outcome = match host.components.get(&link.component_id) {
        Some(_) => call_local(host, &link.component_id, &info).await?,
        None => call_over_lattice(client, link, &info).await?,
    };
    outcome.map_err(|message| {
        anyhow::anyhow!(
            "component {} returned an error from on-tick: {message}",
            link.component_id
        )
    })
}

/// Calls `on-tick` of component `component_id` running on `host`, in a fresh instance under
/// the component's concurrency cap and execution deadline.
async fn call_local(
    host: &Host,
    component_id: &str,
    info: &TickInfo,
) -> anyhow::Result<Result<(), String>> {
    let running = host
        .components
        .get(component_id)
        .with_context(|| format!("component {component_id} does not run on this host"))?;
    let prepared = running.prepared.clone();
    let mut invocation = prepared.instantiate().await?;
    let handler = bindings::TimerHandler::new(&mut invocation.store, &invocation.instance)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component {component_id} does not export {HANDLER_INTERFACE}"))?;
    let limit = prepared.limits().max_execution_time();
    let call = handler
        .trellis_timer_handler()
        .call_on_tick(&mut invocation.store, info);
    match tokio::time::timeout(limit + HOST_IO_GRACE, call).await {
        Err(_elapsed) => anyhow::bail!(
            "component {component_id} exceeded its execution deadline of {} ms",
            limit.as_millis()
        ),
        Ok(Err(error)) => Err(anyhow::Error::from(invocation.error(error)))
            .with_context(|| format!("component {component_id} failed in on-tick")),
        Ok(Ok(outcome)) => Ok(outcome),
    }
}

/// The lattice codec's encoding of `on-tick`'s params: the record's fields in order, `u64`s
/// as unsigned LEB128, the payload as a LEB128 length then the bytes.
fn encode_on_tick(info: &TickInfo) -> Vec<u8> {
    fn leb128(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut out = Vec::with_capacity(info.payload.len() + 24);
    leb128(&mut out, info.number);
    leb128(&mut out, info.scheduled_ms);
    leb128(&mut out, info.payload.len() as u64);
    out.extend_from_slice(&info.payload);
    out
}

async fn call_over_lattice(
    client: &InvocationClient,
    link: &TimerLink,
    info: &TickInfo,
) -> anyhow::Result<Result<(), String>> {
    let component_id = &link.component_id;
    let context = CallContext {
        source_id: Some(link.provider_id.clone()),
        link_name: Some(link.link_name.clone()),
        ..Default::default()
    };
    let reply = client
        .invoke(
            component_id,
            HANDLER_INTERFACE,
            ON_TICK,
            bytes::Bytes::from(encode_on_tick(info)),
            context,
        )
        .await
        .map_err(|error| match error {
            InvocationError::NoResponders { .. } => {
                anyhow::anyhow!("component {component_id} runs on no host of the lattice")
            }
            other => anyhow::Error::new(other).context(format!(
                "calling on-tick of component {component_id} over the lattice"
            )),
        })?;
    // `result<_, string>` has the same encoding as the messaging handler's result.
    crate::messaging::lattice::decode_handle_result(&reply)
        .map_err(|why| anyhow::anyhow!("component {component_id} answered on-tick with {why}"))
}

/// Opens the claims bucket, retrying until it opens or the provider stops.
async fn open_claims(host: &Host, stop: &mut watch::Receiver<bool>) -> Option<kv::Store> {
    loop {
        let config = kv::Config {
            bucket: claims_bucket(&host.lattice),
            description: "Trellis timer tick claims".to_string(),
            history: 1,
            max_age: CLAIM_TTL,
            ..Default::default()
        };
        let js = host.jetstream.context(&host.client);
        match host.jetstream.open_or_create_kv(&js, config).await {
            Ok(store) => return Some(store),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "timer provider cannot open its claims bucket; retrying")
            }
        }
        tokio::select! {
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

/// Keeps one task per valid timer link until the provider stops.
async fn reconcile_links(
    host: Arc<Host>,
    provider_id: String,
    provider_config: HashMap<String, String>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(claims) = open_claims(&host, &mut stop).await else {
        return;
    };
    let mut changes = host.store.subscribe();
    let mut active: HashMap<String, (TimerLink, AbortOnDrop)> = HashMap::new();
    let mut refused_before = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        let (desired, refused) = desired_links(&host, &provider_id, &provider_config);
        for (key, why) in &refused {
            if refused_before.get(key) != Some(why) {
                tracing::warn!(provider_id, link = key, why, "timer link refused");
            }
        }
        refused_before = refused;
        active.retain(|key, (current, _)| desired.get(key) == Some(current));
        for (key, wanted) in desired {
            if let std::collections::hash_map::Entry::Vacant(slot) = active.entry(key) {
                let task = tokio::spawn(run_link(host.clone(), claims.clone(), wanted.clone()));
                slot.insert((wanted, AbortOnDrop(task)));
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
            change = changes.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = change {
                    break;
                }
            }
        }
    }
    tracing::info!(provider_id, "timer provider stopped");
}

/// Aborts a task when dropped (a link removed or changed, the provider stopped).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running timer provider.
struct TimerProvider {
    stop: watch::Sender<bool>,
    task: AbortOnDrop,
}

impl RunningProvider for TimerProvider {
    fn name(&self) -> &str {
        "timer"
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        let _ = self.stop.send(true);
        Box::pin(async move {
            // The loop returns on the signal, dropping (aborting) its link tasks; a call in
            // flight finishes in its own task.
            let TimerProvider { mut task, .. } = *self;
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut task.0).await;
        })
    }
}

/// Starts a timer provider (`trellis+builtin://timer`) that fires its links' ticks (see the
/// module docs).
pub fn start(host: Arc<Host>, spec: ProviderSpec) -> anyhow::Result<Box<dyn RunningProvider>> {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reconcile_links(
        host,
        spec.id.clone(),
        spec.config.clone(),
        stop_rx,
    ));
    tracing::info!(provider_id = %spec.id, "timer provider started");
    Ok(Box::new(TimerProvider {
        stop,
        task: AbortOnDrop(task),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_tick_params_follow_the_codec_layout() {
        let info = TickInfo {
            number: 300,
            scheduled_ms: 5,
            payload: b"hi".to_vec(),
        };
        assert_eq!(encode_on_tick(&info), [0xac, 0x02, 5, 2, b'h', b'i']);
    }

    #[test]
    fn busy_hosts_wait_less_than_the_interval() {
        assert_eq!(
            busy_grace(&Schedule::Interval(Duration::from_millis(200))),
            Duration::from_millis(50)
        );
        assert_eq!(
            busy_grace(&Schedule::Interval(Duration::from_secs(60))),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn claim_keys_are_valid_kv_tokens_and_differ_per_link() {
        let link = |component: &str| TimerLink {
            provider_id: "timer".into(),
            link_name: "default".into(),
            component_id: component.into(),
            schedule: Schedule::Interval(Duration::from_secs(1)),
            payload: Vec::new(),
        };
        let a = link("a b/c").claim_prefix();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, link("other").claim_prefix());
    }
}
