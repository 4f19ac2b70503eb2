//! `wasmcloud:messaging@0.2.0`: components publish and make requests on NATS subjects
//! (`consumer`, served in-process by the host on its own lattice connection), and receive
//! messages through their `handler` export, delivered by a messaging provider.
//!
//! # The provider
//!
//! [`start`] (for `ghcr.io/wasmcloud/messaging-nats:*` and `trellis+builtin://messaging`)
//! watches the links whose source is the provider id, namespace `wasmcloud`, package
//! `messaging`. For each link it reads `subscriptions` (comma-separated NATS subjects,
//! wildcards allowed) and the optional `queue_group` from the link's source configs (merged
//! over the provider's own config), subscribes, and calls the target component's exported
//! `handle-message` for every message, in a fresh instance under the component's limits.
//! Link puts and deletes take effect without a restart: the provider re-reads its links
//! whenever they change (and every [`RECONCILE_INTERVAL`]).
//!
//! # Where the handler runs
//!
//! Anywhere in the lattice. When the component runs on the provider's host, the message is
//! handled in-process; otherwise it is sent over the lattice as a call of the component's
//! `wasmcloud:messaging/handler@0.2.0` `handle-message` export (the component-to-component
//! call path, see [`lattice`]), which exactly one of the hosts running the component answers
//! (they serve its exports in a queue group named after the component). As with wasmCloud's
//! messaging-nats provider, a handler that runs nowhere loses the message (logged, at most
//! once a second).
//!
//! Each message is handled once: every subscription is in a NATS queue group, by default
//! `{provider id}.{component id}`, so several hosts running the same provider share the
//! subjects instead of each handling every message. `queue_group` in the link's config names
//! another group for all its subjects; a subject written `subject|group` (wasmCloud's syntax)
//! names the group for that subject alone.
//!
//! # The consumer
//!
//! `publish` and `request` use the host's lattice connection. Subjects starting with `$`
//! (JetStream, KV, system) or `wasmbus.ctl.` (the control interface) are refused, so a
//! component cannot change the lattice through its messaging import.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use wasmtime::component::{HasSelf, Linker};

use trellis_host::invocation::{CallContext, InvocationClient};
use trellis_host::log_limit::LogLimiter;
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::runtime::{Capability, Extensions, InstanceContext, InstanceState};
use trellis_host::Host;
use trellis_protocol::ctl::Link;

use crate::native::running_host;
use trellis_host::HostSlot;

pub mod lattice;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasmcloud-messaging-0.2.0",
        world: "wasmcloud:messaging/messaging",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::wasmcloud::messaging::consumer;
pub use bindings::wasmcloud::messaging::types::BrokerMessage;

/// How often the provider re-checks its links even without a change notification.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Longest a `request` may wait, whatever timeout the guest asks for.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Config key on a link's source config: comma-separated subjects to subscribe to.
pub const SUBSCRIPTIONS_KEY: &str = "subscriptions";

/// Config key on a link's source config: the NATS queue group to subscribe in.
pub const QUEUE_GROUP_KEY: &str = "queue_group";

/// Extra time past a component's execution deadline before a handler call blocked in host
/// I/O is cancelled.
const HOST_IO_GRACE: Duration = Duration::from_millis(100);

/// Messages of one link being handled at once (in-process or over the lattice); more wait in
/// the subscription. wasmCloud's messaging-nats provider uses 75 for the same purpose. The
/// component's own `max_instances` still caps how many run at once on each host.
pub const MAX_IN_FLIGHT: usize = 75;

/// Undelivered messages are logged at most this often (per process).
static UNDELIVERED: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// Serves `wasmcloud:messaging/consumer@0.2.0` to every component.
pub struct MessagingCapability {
    slot: HostSlot,
}

impl std::fmt::Debug for MessagingCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingCapability")
            .field("slot", &self.slot)
            .finish()
    }
}

impl MessagingCapability {
    /// A capability that publishes through the host `slot` will hold.
    pub fn new(slot: HostSlot) -> Self {
        Self { slot }
    }
}

/// Per-instance state.
struct MessagingInstance {
    component_id: Arc<str>,
    slot: HostSlot,
}

impl Capability for MessagingCapability {
    fn name(&self) -> &str {
        "wasmcloud:messaging"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        consumer::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        Ok(())
    }

    fn new_instance_state(
        &self,
        ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        extensions.insert(MessagingInstance {
            component_id: ctx.component_id.clone(),
            slot: self.slot.clone(),
        });
        Ok(())
    }
}

/// Checks a subject a guest wants to send to.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty()
        || subject.chars().any(|c| c.is_whitespace())
        || subject.starts_with('.')
        || subject.ends_with('.')
        || subject.contains("..")
    {
        return Err(format!("`{subject}` is not a valid NATS subject"));
    }
    if subject.contains('*') || subject.contains('>') {
        return Err(format!(
            "cannot send to `{subject}`: wildcards are for subscriptions"
        ));
    }
    if subject.starts_with('$') || subject.starts_with("wasmbus.ctl.") {
        return Err(format!(
            "subject `{subject}` is reserved for the lattice and NATS; components cannot send to it"
        ));
    }
    Ok(())
}

fn instance_parts(state: &InstanceState) -> Result<(Arc<str>, Arc<Host>), String> {
    let instance = state
        .extension::<MessagingInstance>()
        .ok_or_else(|| "wasmcloud:messaging is not set up for this instance".to_string())?;
    let host = running_host(&instance.slot).map_err(|e| format!("{e:#}"))?;
    Ok((instance.component_id.clone(), host))
}

impl consumer::Host for InstanceState {
    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<BrokerMessage, String> {
        check_subject(&subject)?;
        let (component_id, host) = instance_parts(self)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms)).min(MAX_REQUEST_TIMEOUT);
        tracing::debug!(component_id = &*component_id, subject, "messaging request");
        let span = trellis_telemetry::spans::messaging_publish(&subject, &component_id);
        let headers = trace_headers(&span);
        let request = async {
            match headers {
                Some(headers) => {
                    host.client
                        .request_with_headers(subject.clone(), headers, body.into())
                        .await
                }
                None => host.client.request(subject.clone(), body.into()).await,
            }
        };
        let reply = tracing::Instrument::instrument(tokio::time::timeout(timeout, request), span)
            .await
            .map_err(|_| format!("no reply on `{subject}` within {} ms", timeout.as_millis()))?
            .map_err(|e| format!("request on `{subject}` failed: {e}"))?;
        Ok(BrokerMessage {
            subject: reply.subject.to_string(),
            body: reply.payload.to_vec(),
            reply_to: reply.reply.map(|r| r.to_string()),
        })
    }

    async fn publish(&mut self, msg: BrokerMessage) -> Result<(), String> {
        check_subject(&msg.subject)?;
        let (component_id, host) = instance_parts(self)?;
        tracing::debug!(
            component_id = &*component_id,
            subject = msg.subject,
            "messaging publish"
        );
        // The publisher's span context rides in the message's `traceparent` header, so the
        // handler's invocation joins the trace.
        let span = trellis_telemetry::spans::messaging_publish(&msg.subject, &component_id);
        let headers = trace_headers(&span);
        let publish = async {
            match (msg.reply_to, headers) {
                (Some(reply), headers) => {
                    check_subject(&reply).map_err(PublishFailure::Refused)?;
                    match headers {
                        Some(headers) => {
                            host.client
                                .publish_with_reply_and_headers(
                                    msg.subject.clone(),
                                    reply,
                                    headers,
                                    msg.body.into(),
                                )
                                .await
                        }
                        None => {
                            host.client
                                .publish_with_reply(msg.subject.clone(), reply, msg.body.into())
                                .await
                        }
                    }
                    .map_err(PublishFailure::Nats)
                }
                (None, Some(headers)) => host
                    .client
                    .publish_with_headers(msg.subject.clone(), headers, msg.body.into())
                    .await
                    .map_err(PublishFailure::Nats),
                (None, None) => host
                    .client
                    .publish(msg.subject.clone(), msg.body.into())
                    .await
                    .map_err(PublishFailure::Nats),
            }
        };
        let result = match tracing::Instrument::instrument(publish, span).await {
            Err(PublishFailure::Refused(why)) => return Err(why),
            Err(PublishFailure::Nats(e)) => Err(e),
            Ok(()) => Ok(()),
        };
        result.map_err(|e| format!("publishing on `{}` failed: {e}", msg.subject))
    }
}

/// Why a publish failed: a subject the guest may not use, or NATS.
enum PublishFailure {
    Refused(String),
    Nats(async_nats::PublishError),
}

/// NATS headers carrying `span`'s trace context, when tracing.
fn trace_headers(span: &tracing::Span) -> Option<async_nats::HeaderMap> {
    let traceparent = trellis_telemetry::propagation::traceparent_of(span)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent.as_str());
    Some(headers)
}

/// Calls `handle-message` of component `component_id` running on `host`, in a fresh
/// instance, under the component's concurrency cap (`max_instances`, bounded queue) and its
/// execution deadline, like every other invocation.
pub async fn deliver(host: &Host, component_id: &str, msg: BrokerMessage) -> anyhow::Result<()> {
    if !trellis_telemetry::traces_enabled() && !trellis_telemetry::metrics_enabled() {
        return deliver_untraced(host, component_id, msg).await;
    }
    let span = trellis_telemetry::spans::invocation(
        component_id,
        lattice::HANDLER_INTERFACE,
        lattice::HANDLE_MESSAGE,
        None,
    );
    let started = std::time::Instant::now();
    let result =
        tracing::Instrument::instrument(deliver_untraced(host, component_id, msg), span.clone())
            .await;
    if let Err(error) = &result {
        trellis_telemetry::spans::record_error(&span, &format!("{error:#}"));
    }
    trellis_telemetry::metrics::record_invocation(
        component_id,
        lattice::HANDLER_INTERFACE,
        lattice::HANDLE_MESSAGE,
        started.elapsed(),
        result.is_ok(),
    );
    result
}

async fn deliver_untraced(
    host: &Host,
    component_id: &str,
    msg: BrokerMessage,
) -> anyhow::Result<()> {
    let running = host
        .components
        .get(component_id)
        .with_context(|| format!("component {component_id} does not run on this host"))?;
    let prepared = running.prepared.clone();
    let mut invocation = prepared.instantiate().await?;
    let handler = bindings::Messaging::new(&mut invocation.store, &invocation.instance)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!("component {component_id} does not export wasmcloud:messaging/handler@0.2.0")
        })?;
    let limit = prepared.limits().max_execution_time();
    let call = handler
        .wasmcloud_messaging_handler()
        .call_handle_message(&mut invocation.store, &msg);
    let outcome = match tokio::time::timeout(limit + HOST_IO_GRACE, call).await {
        Err(_elapsed) => anyhow::bail!(
            "component {component_id} exceeded its execution deadline of {} ms",
            limit.as_millis()
        ),
        Ok(Err(error)) => {
            let error = invocation.error(error);
            return Err(anyhow::Error::from(error))
                .with_context(|| format!("component {component_id} failed handling a message"));
        }
        Ok(Ok(outcome)) => outcome,
    };
    outcome.map_err(|message| {
        anyhow::anyhow!("component {component_id} rejected the message: {message}")
    })
}

/// What one handler link asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Subscription {
    component_id: String,
    /// The provider id (the caller, for lattice calls).
    provider_id: String,
    /// The link name (for lattice calls).
    link_name: String,
    /// (subject, queue group) pairs.
    subjects: Vec<(String, String)>,
}

/// Parses a `subscriptions` value: comma-separated subjects, each optionally `subject|group`;
/// the others get `default_group`.
fn parse_subscriptions(value: &str, default_group: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|entry| {
            let (subject, group) = match entry.split_once('|') {
                Some((subject, group)) if !group.trim().is_empty() => {
                    (subject.trim(), group.trim())
                }
                Some((subject, _)) => (subject.trim(), default_group),
                None => (entry, default_group),
            };
            (!subject.is_empty()).then(|| (subject.to_string(), group.to_string()))
        })
        .collect()
}

/// The subscriptions the provider's links ask for now (wherever the components run).
fn desired_subscriptions(
    host: &Host,
    provider_id: &str,
    provider_config: &HashMap<String, String>,
) -> HashMap<String, Subscription> {
    let links: Vec<Link> = host.store.with_links(|table| {
        table
            .from_source(provider_id)
            .filter(|l| {
                l.wit_namespace == "wasmcloud"
                    && l.wit_package == "messaging"
                    && l.interfaces.iter().any(|i| i == "handler")
            })
            .cloned()
            .collect()
    });
    let mut desired = HashMap::new();
    for link in links {
        let mut settings = provider_config.clone();
        for name in &link.source_config {
            match host.store.cached_config(name) {
                Some(values) => settings.extend(values),
                None => tracing::warn!(
                    provider_id,
                    config = name,
                    "a messaging link names a config this host has not seen"
                ),
            }
        }
        let queue_group = settings
            .get(QUEUE_GROUP_KEY)
            .map(|g| g.trim())
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{provider_id}.{}", link.target));
        let subjects = settings
            .get(SUBSCRIPTIONS_KEY)
            .map(|s| parse_subscriptions(s, &queue_group))
            .unwrap_or_default();
        if subjects.is_empty() {
            tracing::warn!(
                provider_id,
                component_id = link.target,
                "messaging link has no `subscriptions` in its source config; nothing to deliver"
            );
            continue;
        }
        let key = format!("{}/{}", link.target, link.name);
        desired.insert(
            key,
            Subscription {
                component_id: link.target.clone(),
                provider_id: provider_id.to_string(),
                link_name: link.name.clone(),
                subjects,
            },
        );
    }
    desired
}

/// One active subscription set for one link; dropping it stops delivery.
struct ActiveSubscription {
    wanted: Subscription,
    task: JoinHandle<()>,
}

impl Drop for ActiveSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Hands `msg` to the handler: in-process when the component runs on this host, else over
/// the lattice to one of the hosts running it.
async fn dispatch(
    host: &Host,
    client: &InvocationClient,
    wanted: &Subscription,
    msg: BrokerMessage,
) -> anyhow::Result<()> {
    if host.components.get(&wanted.component_id).is_some() {
        return deliver(host, &wanted.component_id, msg).await;
    }
    deliver_over_lattice(client, wanted, &msg).await
}

/// Calls `handle-message` of `wanted.component_id` on whichever host runs it.
async fn deliver_over_lattice(
    client: &InvocationClient,
    wanted: &Subscription,
    msg: &BrokerMessage,
) -> anyhow::Result<()> {
    let component_id = &wanted.component_id;
    let params = lattice::encode_handle_message(&msg.subject, &msg.body, msg.reply_to.as_deref());
    let context = CallContext {
        source_id: Some(wanted.provider_id.clone()),
        link_name: Some(wanted.link_name.clone()),
        ..Default::default()
    };
    let reply = client
        .invoke(
            component_id,
            lattice::HANDLER_INTERFACE,
            lattice::HANDLE_MESSAGE,
            bytes::Bytes::from(params),
            context,
        )
        .await
        .map_err(|error| match error {
            trellis_host::invocation::InvocationError::NoResponders { .. } => anyhow::anyhow!(
                "component {component_id} runs on no host of the lattice: scale it up to \
                 receive messages"
            ),
            other => anyhow::Error::new(other).context(format!(
                "calling the handler of component {component_id} over the lattice"
            )),
        })?;
    match lattice::decode_handle_result(&reply) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(anyhow::anyhow!(
            "component {component_id} rejected the message: {message}"
        )),
        Err(why) => Err(anyhow::anyhow!(
            "component {component_id} answered handle-message with {why}"
        )),
    }
}

/// Receives messages on every subject of `wanted` and hands each to the component wherever
/// it runs, at most [`MAX_IN_FLIGHT`] at a time.
async fn run_subscription(host: Arc<Host>, wanted: Subscription) {
    let mut subscribers = Vec::new();
    for (subject, group) in &wanted.subjects {
        match host
            .client
            .queue_subscribe(subject.clone(), group.clone())
            .await
        {
            Ok(s) => subscribers.push(s),
            Err(e) => tracing::warn!(subject, error = %e, "messaging provider cannot subscribe"),
        }
    }
    tracing::info!(
        component_id = wanted.component_id,
        subjects = ?wanted.subjects,
        "messaging subscriptions active"
    );
    let client = {
        let client = InvocationClient::new(host.client.clone(), host.lattice.clone());
        match &host.direct_peers {
            Some(peers) => client.with_direct_peers(peers.clone()),
            None => client,
        }
    };
    let wanted = Arc::new(wanted);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut messages = futures::stream::select_all(subscribers);
    let mut handlers = JoinSet::new();
    while let Some(message) = messages.next().await {
        while handlers.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let host = host.clone();
        let client = client.clone();
        let wanted = wanted.clone();
        // The consumer span, a child of the publisher's when the message carries its context.
        let span = trellis_telemetry::spans::messaging_process(
            message.subject.as_str(),
            &wanted.component_id,
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .map(|v| v.as_str()),
        );
        let handler = async move {
            let _permit = permit;
            let msg = BrokerMessage {
                subject: message.subject.to_string(),
                body: message.payload.to_vec(),
                reply_to: message.reply.map(|r| r.to_string()),
            };
            let subject = msg.subject.clone();
            if let Err(error) = dispatch(&host, &client, &wanted, msg).await {
                if let Some(suppressed) = UNDELIVERED.allow() {
                    tracing::warn!(
                        component_id = wanted.component_id,
                        subject,
                        suppressed,
                        error = format!("{error:#}"),
                        "message not handled"
                    );
                }
            }
        };
        handlers.spawn(tracing::Instrument::instrument(handler, span));
    }
}

/// Keeps the provider's subscriptions equal to what its links ask for.
async fn reconcile_links(
    host: Arc<Host>,
    provider_id: String,
    provider_config: HashMap<String, String>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = host.store.subscribe();
    let mut active: HashMap<String, ActiveSubscription> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        let desired = desired_subscriptions(&host, &provider_id, &provider_config);
        active.retain(|key, current| desired.get(key) == Some(&current.wanted));
        for (key, wanted) in desired {
            if active.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(run_subscription(host.clone(), wanted.clone()));
            active.insert(key, ActiveSubscription { wanted, task });
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
    tracing::info!(provider_id, "messaging provider stopped delivering");
}

/// A running messaging provider; stopping it drops every subscription.
struct MessagingProvider {
    name: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for MessagingProvider {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl RunningProvider for MessagingProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        let _ = self.stop.send(true);
        let task = self.task.take();
        Box::pin(async move {
            if let Some(task) = task {
                // The reconcile loop drops its subscriptions (aborting them) as it returns.
                if tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .is_err()
                {
                    tracing::warn!("messaging provider did not stop within 5 s");
                }
            }
        })
    }
}

/// Starts a messaging provider (`ghcr.io/wasmcloud/messaging-nats:*`,
/// `trellis+builtin://messaging`) that delivers messages on its links' subscriptions to the
/// linked components' `handle-message` export (see the module docs).
pub fn start(host: Arc<Host>, spec: ProviderSpec) -> anyhow::Result<Box<dyn RunningProvider>> {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reconcile_links(
        host,
        spec.id.clone(),
        spec.config.clone(),
        stop_rx,
    ));
    tracing::info!(provider_id = %spec.id, image_ref = %spec.image_ref, "messaging provider started");
    Ok(Box::new(MessagingProvider {
        name: "messaging-nats".to_string(),
        stop,
        task: Some(task),
    }))
}

#[cfg(test)]
mod tests {
    use super::{check_subject, parse_subscriptions};

    #[test]
    fn subscriptions_take_a_group_per_subject_or_the_default() {
        let parsed = parse_subscriptions(" a.b , c.*|workers, d|, ,e.>", "prov.comp");
        let expected = [
            ("a.b", "prov.comp"),
            ("c.*", "workers"),
            ("d", "prov.comp"),
            ("e.>", "prov.comp"),
        ];
        assert_eq!(
            parsed,
            expected
                .iter()
                .map(|(s, g)| (s.to_string(), g.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(parse_subscriptions(" , |x", "g").is_empty());
    }

    #[test]
    fn guests_cannot_send_to_reserved_or_invalid_subjects() {
        assert!(check_subject("orders.new").is_ok());
        assert!(check_subject("_INBOX.abc").is_ok());
        assert!(check_subject("$JS.API.STREAM.DELETE.KV_x").is_err());
        assert!(check_subject("wasmbus.ctl.v1.default.host.stop").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_subject("orders.*").is_err());
        assert!(check_subject("").is_err());
    }
}
