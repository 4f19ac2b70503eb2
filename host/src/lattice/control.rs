//! The control interface: wasmCloud 1.x's subjects and `{success, message, response}` replies.
//!
//! Every request is parsed defensively: an unknown operation, a body that is not JSON, a missing
//! or mistyped field, an oversized body, or a field over its limit ([`trellis_protocol::limits`])
//! gets `success: false` with a message that names the problem. Handlers run concurrently
//! (bounded), so one slow request never wedges the others. No reply exceeds the server's
//! `max_payload`: lists that grow with the lattice page ([`super::paging`]), and any other reply
//! too big to send becomes an error saying so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use trellis_protocol::ctl::{
    ComponentAuctionAck, ComponentAuctionRequest, CtlResponse, DeleteLinkRequest, HostLabel,
    HostLabelIdentifier, Link, ProviderAuctionAck, ProviderAuctionRequest, ProviderDescription,
    RegistryCredential, ScaleComponentCommand, StartProviderCommand, StopHostCommand,
    StopProviderCommand, UpdateComponentCommand,
};
use trellis_protocol::events::names;
use trellis_protocol::limits;
use trellis_protocol::subjects::{CtlSubjects, CTL_QUEUE_GROUP};

use crate::components::RunningComponent;
use crate::host::{Host, DEFAULT_STOP_TIMEOUT};
use crate::lattice::connection;
use crate::lattice::paging;
use crate::lattice::store::{ConfigMap, LinkRefused};
use crate::providers::{ProviderSpec, RunningProvider};
use crate::runtime::{ComponentLimits, ComponentSpec};

/// The largest control request accepted. Control bodies are small JSON documents; anything
/// bigger is a mistake or an attack and is refused before parsing.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// How many control requests are handled at once.
const CONCURRENT_REQUESTS: usize = 64;

/// The control-interface subscriptions of one host.
pub struct ControlServer {
    host: Arc<Host>,
    subjects: CtlSubjects,
    messages: stream::SelectAll<async_nats::Subscriber>,
}

impl ControlServer {
    /// Subscribes to every control subject this host answers.
    pub async fn subscribe(host: Arc<Host>) -> anyhow::Result<Self> {
        let s = CtlSubjects::new(&host.lattice);
        let id = host.identity.host_id.clone();
        let client = &host.client;
        let mut subs = Vec::new();
        // Every host answers these.
        for subject in [
            s.host_ping(),
            s.component_auction(),
            s.provider_auction(),
            s.registry_put(),
        ] {
            subs.push(client.subscribe(subject).await?);
        }
        // Commands addressed to this host: `{base}.{resource}.{verb}.{host_id}`.
        subs.push(client.subscribe(s.op(&format!("*.*.{id}"))).await?);
        // Lattice-wide state: one host answers (queue group); the state is in KV.
        for subject in [s.op("link.*"), s.op("config.*.*"), s.claims_get()] {
            subs.push(
                client
                    .queue_subscribe(subject, CTL_QUEUE_GROUP.to_string())
                    .await?,
            );
        }
        // Make sure the server has the subscriptions before anyone is told we exist.
        client.flush().await.context("cannot reach NATS")?;
        Ok(Self {
            host,
            subjects: s,
            messages: stream::select_all(subs),
        })
    }

    /// Serves requests until dropped.
    pub async fn run(self) {
        let Self {
            host,
            subjects,
            messages,
        } = self;
        let prefix = format!("{}.", subjects.base());
        messages
            .for_each_concurrent(CONCURRENT_REQUESTS, |msg| {
                let host = host.clone();
                let prefix = prefix.clone();
                async move {
                    let op = msg
                        .subject
                        .as_str()
                        .strip_prefix(&prefix)
                        .unwrap_or_default()
                        .to_string();
                    if trellis_telemetry::traces_enabled() {
                        // `component.scale.<host>` -> `component.scale` (bounded span names).
                        let operation: String = op.split('.').take(2).collect::<Vec<_>>().join(".");
                        let traceparent = msg
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("traceparent"))
                            .map(|v| v.as_str().to_owned());
                        let span =
                            trellis_telemetry::spans::control(&operation, traceparent.as_deref());
                        tracing::Instrument::instrument(handle(&host, &op, msg), span).await;
                    } else {
                        handle(&host, &op, msg).await;
                    }
                }
            })
            .await;
    }
}

/// A reply body ready to send, plus work to do after replying (scale, stop).
struct Outcome {
    reply: Option<Bytes>,
    after: Option<AfterReply>,
}

enum AfterReply {
    StartProvider(StartProviderCommand),
    StopProvider(ProviderDescription, Box<dyn RunningProvider>),
    Scale(ScaleComponentCommand),
    Update(UpdateComponentCommand),
    Stop(Duration),
}

impl Outcome {
    fn raw(bytes: Vec<u8>) -> Self {
        Self {
            reply: Some(bytes.into()),
            after: None,
        }
    }
    fn reply<T: Serialize>(response: CtlResponse<T>) -> Self {
        let bytes = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!(r#"{{"success":false,"message":"cannot encode reply: {e}"}}"#).into_bytes()
        });
        Self {
            reply: Some(bytes.into()),
            after: None,
        }
    }
    fn error(message: impl Into<String>) -> Self {
        Self::reply(CtlResponse::<()>::error(message))
    }
    fn silent() -> Self {
        Self {
            reply: None,
            after: None,
        }
    }
    fn then(mut self, after: AfterReply) -> Self {
        self.after = Some(after);
        self
    }
}

async fn handle(host: &Arc<Host>, op: &str, msg: async_nats::Message) {
    let outcome = if msg.payload.len() > MAX_REQUEST_BYTES {
        Outcome::error(format!(
            "request body is {} bytes; the control interface accepts at most {} bytes",
            msg.payload.len(),
            MAX_REQUEST_BYTES
        ))
    } else {
        dispatch(host, op, &msg.payload).await
    };
    if let (Some(reply_to), Some(mut body)) = (msg.reply.clone(), outcome.reply) {
        let max_payload = connection::max_payload(&host.client);
        if body.len() > max_payload {
            // NATS would refuse it and the requester would wait in vain: say so instead.
            body = Outcome::error(format!(
                "{op}: the reply is {} bytes, more than one NATS message carries (max_payload \
                 {max_payload} bytes)",
                body.len()
            ))
            .reply
            .unwrap_or_default();
        }
        if let Err(e) = host.client.publish(reply_to, body).await {
            tracing::warn!(op, error = %e, "cannot send control reply");
        }
    }
    match outcome.after {
        Some(AfterReply::Scale(cmd)) => scale_component(host, cmd).await,
        Some(AfterReply::Update(cmd)) => update_component(host, cmd).await,
        Some(AfterReply::Stop(timeout)) => host.request_stop(timeout),
        Some(AfterReply::StartProvider(cmd)) => start_provider(host, cmd).await,
        Some(AfterReply::StopProvider(description, running)) => {
            running.stop().await;
            host.events
                .publish(
                    names::PROVIDER_STOPPED,
                    provider_event(host, &description, "stop requested"),
                )
                .await;
        }
        None => {}
    }
}

/// Parses a JSON body into `T`, naming the offending field on failure.
pub(crate) fn parse<T: DeserializeOwned>(op: &str, body: &[u8]) -> Result<T, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(format!(
            "{op}: the request body is empty; expected a JSON object"
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            format!("{op}: invalid request body: {inner}")
        } else {
            format!("{op}: invalid field `{path}`: {inner}")
        }
    })?;
    de.end()
        .map_err(|e| format!("{op}: trailing data after the JSON body: {e}"))?;
    Ok(value)
}

macro_rules! parse_or_reply {
    ($op:expr, $body:expr) => {
        match parse($op, $body) {
            Ok(v) => v,
            Err(message) => return Outcome::error(message),
        }
    };
}

async fn dispatch(host: &Arc<Host>, op: &str, body: &[u8]) -> Outcome {
    let me = host.identity.host_id.as_str();
    let tokens: Vec<&str> = op.split('.').collect();
    match tokens.as_slice() {
        ["host", "ping"] => Outcome::reply(CtlResponse::ok(host.info())),
        ["host", "get", id] if *id == me => {
            let max_payload = connection::max_payload(&host.client);
            match paging::parse_page_request("host.get", body).and_then(|request| {
                paging::inventory_reply(host.inventory(), request, max_payload)
            }) {
                Ok(reply) => Outcome::raw(reply),
                Err(message) => Outcome::error(message),
            }
        }
        ["host", "stop", id] if *id == me => {
            let cmd: StopHostCommand = if body.iter().all(|b| b.is_ascii_whitespace()) {
                StopHostCommand::default()
            } else {
                parse_or_reply!("host.stop", body)
            };
            let timeout = cmd
                .timeout
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_STOP_TIMEOUT);
            Outcome::reply(CtlResponse::success("host is stopping"))
                .then(AfterReply::Stop(timeout))
        }
        ["component", "scale", id] if *id == me => {
            let cmd: ScaleComponentCommand = parse_or_reply!("component.scale", body);
            if let Err(message) = check_component_id(&cmd.component_id)
                .and_then(|()| limits::check_image_ref("component_ref", &cmd.component_ref))
                .and_then(|()| check_annotations(cmd.annotations.as_ref()))
                .and_then(|()| limits::check_config_names("config", &cmd.config))
            {
                return Outcome::error(format!("component.scale: {message}"));
            }
            if cmd.max_instances > 0 && cmd.component_ref.trim().is_empty() {
                return Outcome::error(
                    "component.scale: field `component_ref` must name the component's code (an OCI reference such as ghcr.io/org/app:1.0, or a file:// path) when count > 0",
                );
            }
            if let Some(limits) = &cmd.component_limits {
                if let Err(e) = ComponentLimits::from_map(limits) {
                    return Outcome::error(format!(
                        "component.scale: invalid field `component_limits`: {e:#}"
                    ));
                }
            }
            Outcome::reply(CtlResponse::success("")).then(AfterReply::Scale(cmd))
        }
        ["component", "update", id] if *id == me => {
            let cmd: UpdateComponentCommand = parse_or_reply!("component.update", body);
            if let Err(message) = check_component_id(&cmd.component_id)
                .and_then(|()| {
                    limits::check_image_ref("new_component_ref", &cmd.new_component_ref)
                })
                .and_then(|()| check_annotations(cmd.annotations.as_ref()))
            {
                return Outcome::error(format!("component.update: {message}"));
            }
            if cmd.new_component_ref.trim().is_empty() {
                return Outcome::error(
                    "component.update: field `new_component_ref` must not be empty",
                );
            }
            if host.components.get(&cmd.component_id).is_none() {
                return Outcome::error(format!(
                    "component.update: component {} is not running on this host",
                    cmd.component_id
                ));
            }
            Outcome::reply(CtlResponse::success("")).then(AfterReply::Update(cmd))
        }
        ["provider", "start", id] if *id == me => {
            let cmd: StartProviderCommand = parse_or_reply!("provider.start", body);
            if let Err(message) = limits::check_id("provider_id", &cmd.provider_id)
                .and_then(|()| limits::check_image_ref("provider_ref", &cmd.provider_ref))
                .and_then(|()| check_annotations(cmd.annotations.as_ref()))
                .and_then(|()| limits::check_config_names("config", &cmd.config))
            {
                return Outcome::error(format!("provider.start: {message}"));
            }
            if cmd.provider_ref.trim().is_empty() {
                return Outcome::error("provider.start: field `provider_ref` must not be empty");
            }
            if host.provider_launcher.is_none() {
                return Outcome::error(
                    "provider.start: this host was started without provider support",
                );
            }
            if host.providers.contains(&cmd.provider_id) {
                return Outcome::reply(CtlResponse::success(format!(
                    "provider {} is already running on this host",
                    cmd.provider_id
                )));
            }
            Outcome::reply(CtlResponse::success("")).then(AfterReply::StartProvider(cmd))
        }
        ["provider", "stop", id] if *id == me => {
            let cmd: StopProviderCommand = parse_or_reply!("provider.stop", body);
            match host.providers.remove(&cmd.provider_id) {
                Some((description, running)) => {
                    Outcome::reply(CtlResponse::success("")).then(AfterReply::StopProvider(
                        description,
                        running,
                    ))
                }
                None => Outcome::error(format!(
                    "provider.stop: provider {} is not running on this host",
                    cmd.provider_id
                )),
            }
        }
        ["label", "put", id] if *id == me => {
            let label: HostLabel = parse_or_reply!("label.put", body);
            match host.put_label(&label.key, &label.value) {
                Ok(()) => {
                    publish_labels_changed(host).await;
                    Outcome::reply(CtlResponse::success(""))
                }
                Err(message) => Outcome::error(format!("label.put: {message}")),
            }
        }
        ["label", "del", id] if *id == me => {
            let label: HostLabelIdentifier = parse_or_reply!("label.del", body);
            match host.delete_label(&label.key) {
                Ok(true) => {
                    publish_labels_changed(host).await;
                    Outcome::reply(CtlResponse::success(""))
                }
                Ok(false) => Outcome::reply(CtlResponse::success(format!(
                    "label {} was not set on this host",
                    label.key
                ))),
                Err(message) => Outcome::error(format!("label.del: {message}")),
            }
        }
        ["component", "auction"] => {
            let req: ComponentAuctionRequest = parse_or_reply!("component.auction", body);
            if !labels_match(host, &req.constraints) {
                return Outcome::silent();
            }
            Outcome::reply(CtlResponse::ok(ComponentAuctionAck {
                component_ref: req.component_ref,
                component_id: req.component_id,
                host_id: me.to_string(),
                constraints: req.constraints,
            }))
        }
        ["provider", "auction"] => {
            let req: ProviderAuctionRequest = parse_or_reply!("provider.auction", body);
            if !labels_match(host, &req.constraints) {
                return Outcome::silent();
            }
            Outcome::reply(CtlResponse::ok(ProviderAuctionAck {
                host_id: me.to_string(),
                provider_ref: req.provider_ref,
                provider_id: req.provider_id,
                constraints: req.constraints,
            }))
        }
        ["config", verb @ ("put" | "get" | "del"), name] => config_op(host, verb, name, body).await,
        ["link", "put"] => {
            let link: Link = parse_or_reply!("link.put", body);
            match host.store.put_link(&link).await {
                Ok(()) => {
                    host.events.publish(names::LINKDEF_SET, &link).await;
                    Outcome::reply(CtlResponse::success(""))
                }
                Err(LinkRefused::Invalid(message)) => {
                    host.events
                        .publish(
                            names::LINKDEF_SET_FAILED,
                            serde_json::json!({ "link": link, "error": message }),
                        )
                        .await;
                    Outcome::error(format!("link.put: {message}"))
                }
                Err(LinkRefused::Store(e)) => Outcome::error(format!("link.put: {e:#}")),
            }
        }
        ["link", "del"] => {
            let req: DeleteLinkRequest = parse_or_reply!("link.del", body);
            match host.store.delete_link(&req.key()).await {
                Ok(true) => {
                    host.events.publish(names::LINKDEF_DELETED, &req).await;
                    Outcome::reply(CtlResponse::success(""))
                }
                Ok(false) => Outcome::reply(CtlResponse::success("no such link")),
                Err(e) => Outcome::error(format!("link.del: {e:#}")),
            }
        }
        ["link", "get"] => link_get(host, body).await,
        ["registry", "put"] => registry_put(body),
        ["claims", "get"] => {
            // The verified claims of the signed components running here, as wasmCloud's
            // string maps (unsigned components have none).
            let claims: Vec<HashMap<String, String>> = host
                .components
                .all()
                .iter()
                .filter_map(|c| c.prepared.claims().map(|c| c.to_wasmcloud_map()))
                .collect();
            Outcome::reply(CtlResponse::ok(claims))
        }
        _ => Outcome::error(format!(
            "unknown control operation `{op}`: see the wasmCloud 1.x control interface for the supported subjects"
        )),
    }
}

/// `link.get`: every link (from this host's copy, as wasmCloud answers it) or one page.
async fn link_get(host: &Host, body: &[u8]) -> Outcome {
    let request = match paging::parse_page_request("link.get", body) {
        Ok(request) => request,
        Err(message) => return Outcome::error(message),
    };
    if !host.store.wait_links_loaded(Duration::from_secs(5)).await {
        return Outcome::error(
            "link.get: this host is still loading the lattice's links from JetStream KV; retry in a moment",
        );
    }
    let max_payload = connection::max_payload(&host.client);
    match host
        .store
        .with_links(|links| paging::link_get_reply(links, request, max_payload))
    {
        Ok(reply) => Outcome::raw(reply),
        Err(message) => Outcome::error(message),
    }
}

async fn config_op(host: &Arc<Host>, verb: &str, name: &str, body: &[u8]) -> Outcome {
    if let Err(message) = limits::check_config_name("config name", name) {
        return Outcome::error(format!("config.{verb}: {message}"));
    }
    match verb {
        "put" => {
            let values: ConfigMap = parse_or_reply!("config.put", body);
            match host.store.put_config(name, &values).await {
                Ok(()) => {
                    host.events
                        .publish(
                            names::CONFIG_SET,
                            serde_json::json!({ "config_name": name }),
                        )
                        .await;
                    Outcome::reply(CtlResponse::success(""))
                }
                Err(e) => Outcome::error(format!("config.put: {e:#}")),
            }
        }
        "get" => match host.store.get_config(name).await {
            Ok(Some(values)) => Outcome::reply(CtlResponse::ok(values)),
            Ok(None) => Outcome::reply(CtlResponse::<()>::success(format!(
                "config {name} does not exist"
            ))),
            Err(e) => Outcome::error(format!("config.get: {e:#}")),
        },
        _ => match host.store.delete_config(name).await {
            Ok(existed) => {
                if existed {
                    host.events
                        .publish(
                            names::CONFIG_DELETED,
                            serde_json::json!({ "config_name": name }),
                        )
                        .await;
                }
                Outcome::reply(CtlResponse::success(if existed {
                    String::new()
                } else {
                    format!("config {name} did not exist")
                }))
            }
            Err(e) => Outcome::error(format!("config.del: {e:#}")),
        },
    }
}

/// At most this many registries in one `registry.put`.
const MAX_REGISTRIES_PER_PUT: usize = 64;
/// The longest registry name, user name, password or token a `registry.put` may carry.
const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// `registry.put`: credentials for pulling from registries, kept in this process's memory
/// (never written, logged or echoed) and consulted before every other source. The whole
/// request is checked before any of it is taken.
fn registry_put(body: &[u8]) -> Outcome {
    let registries: HashMap<String, RegistryCredential> = parse_or_reply!("registry.put", body);
    if registries.len() > MAX_REGISTRIES_PER_PUT {
        return Outcome::error(format!(
            "registry.put: {} registries in one request; the limit is {MAX_REGISTRIES_PER_PUT}",
            registries.len()
        ));
    }
    let mut accepted = Vec::with_capacity(registries.len());
    for (registry, credential) in registries {
        if registry.trim().is_empty() {
            return Outcome::error(
                "registry.put: a registry name is empty; name each registry by its host (and port)",
            );
        }
        let fields = [
            ("registry name", Some(&registry)),
            ("username", credential.username.as_ref()),
            ("password", credential.password.as_ref()),
            ("token", credential.token.as_ref()),
        ];
        if let Some((field, value)) = fields.into_iter().find_map(|(field, value)| {
            value
                .filter(|v| v.len() > MAX_CREDENTIAL_BYTES)
                .map(|v| (field, v))
        }) {
            return Outcome::error(format!(
                "registry.put: registry `{}`: the {field} is {} bytes long; the limit is {MAX_CREDENTIAL_BYTES} bytes",
                limits::preview(&registry),
                value.len()
            ));
        }
        if !credential.registry_type.eq_ignore_ascii_case("oci") {
            return Outcome::error(format!(
                "registry.put: registry {registry}: registryType `{}` is not supported; use `oci`",
                credential.registry_type
            ));
        }
        let credentials = match (credential.token, credential.username, credential.password) {
            (Some(token), _, _) => crate::oci::Credentials::Bearer(token),
            (None, Some(username), Some(password)) => {
                crate::oci::Credentials::Basic { username, password }
            }
            _ => {
                return Outcome::error(format!(
                    "registry.put: registry {registry}: give a `token`, or a `username` and a `password`"
                ))
            }
        };
        accepted.push((registry, credentials));
    }
    let names: Vec<&str> = accepted.iter().map(|(r, _)| r.as_str()).collect();
    tracing::info!(registries = ?names, "registry credentials set by registry.put");
    for (registry, credentials) in accepted {
        crate::oci::put_registry_credentials(&registry, credentials);
    }
    Outcome::reply(CtlResponse::success(""))
}

fn check_component_id(id: &str) -> Result<(), String> {
    limits::check_id("component_id", id)
}

fn check_annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), String> {
    annotations.map_or(Ok(()), limits::check_annotations)
}

/// The data of provider events.
pub fn provider_event(
    host: &Host,
    description: &ProviderDescription,
    reason: &str,
) -> serde_json::Value {
    serde_json::json!({
        "provider_id": description.id,
        "image_ref": description.image_ref,
        "host_id": host.identity.host_id,
        "annotations": description.annotations.clone().unwrap_or_default(),
        "reason": reason,
    })
}

/// Starts a provider after the command was acknowledged; the outcome is an event.
pub(crate) async fn start_provider(host: &Arc<Host>, cmd: StartProviderCommand) {
    let Some(launcher) = host.provider_launcher.clone() else {
        return;
    };
    let annotations = cmd.annotations.clone().unwrap_or_default();
    let result = async {
        if let Some(policy) = &host.policy {
            let decision = policy
                .start_provider(
                    &host.policy_host_info(),
                    &cmd.provider_id,
                    &cmd.provider_ref,
                    &annotations,
                )
                .await;
            if !decision.permitted {
                anyhow::bail!(
                    "policy denied starting provider {}: {}",
                    cmd.provider_id,
                    decision.reason()
                );
            }
        }
        let (plain_config, secret_references) = crate::secrets::split_config_names(&cmd.config);
        if !secret_references.is_empty() {
            tracing::warn!(
                provider_id = %cmd.provider_id,
                references = ?secret_references,
                "secret references are not passed to providers yet; ignoring them"
            );
        }
        let config = host.store.merged_config(&plain_config).await?;
        let spec = ProviderSpec {
            id: cmd.provider_id.clone(),
            image_ref: cmd.provider_ref.clone(),
            config,
            config_names: plain_config.clone(),
            annotations: annotations.clone(),
        };
        let running = launcher.start(host.clone(), spec.clone()).await?;
        Ok::<_, anyhow::Error>((spec, running))
    }
    .await;
    match result {
        Ok((spec, running)) => {
            host.providers.insert(&spec, running);
            host.events
                .publish(
                    names::PROVIDER_STARTED,
                    serde_json::json!({
                        "provider_id": spec.id,
                        "image_ref": spec.image_ref,
                        "host_id": host.identity.host_id,
                        "annotations": spec.annotations,
                    }),
                )
                .await;
        }
        Err(e) => {
            let error = format!("{e:#}");
            tracing::warn!(provider_id = %cmd.provider_id, %error, "provider start failed");
            host.events
                .publish(
                    names::PROVIDER_START_FAILED,
                    serde_json::json!({
                        "provider_id": cmd.provider_id,
                        "provider_ref": cmd.provider_ref,
                        "image_ref": cmd.provider_ref,
                        "host_id": host.identity.host_id,
                        "annotations": annotations,
                        "error": error,
                    }),
                )
                .await;
        }
    }
}

fn labels_match(host: &Host, constraints: &std::collections::BTreeMap<String, String>) -> bool {
    let labels = host.labels();
    constraints.iter().all(|(k, v)| labels.get(k) == Some(v))
}

async fn publish_labels_changed(host: &Host) {
    host.events
        .publish(
            names::LABELS_CHANGED,
            serde_json::json!({ "host_id": host.identity.host_id, "labels": host.labels() }),
        )
        .await;
}

fn component_event(host: &Host, component: &RunningComponent) -> serde_json::Value {
    serde_json::json!({
        "component_id": component.prepared.id(),
        "public_key": component.prepared.id(),
        "image_ref": component.prepared.image_ref(),
        "host_id": host.identity.host_id,
        "max_instances": component.prepared.max_instances(),
        "annotations": component.annotations,
        "claims": component.prepared.claims().map(|c| c.to_wasmcloud_map()),
    })
}

async fn scale_failed(host: &Host, cmd: &ScaleComponentCommand, image_ref: &str, error: String) {
    tracing::warn!(component_id = %cmd.component_id, %error, "component scale failed");
    host.events
        .publish(
            names::COMPONENT_SCALE_FAILED,
            serde_json::json!({
                "component_id": cmd.component_id,
                "public_key": cmd.component_id,
                "image_ref": image_ref,
                "host_id": host.identity.host_id,
                "max_instances": cmd.max_instances,
                "annotations": cmd.annotations.clone().unwrap_or_default(),
                "claims": null,
                "error": error,
            }),
        )
        .await;
}

/// Applies a scale command after it was acknowledged; the outcome is an event.
pub(crate) async fn scale_component(host: &Arc<Host>, cmd: ScaleComponentCommand) {
    let lock = host.components.op_lock(&cmd.component_id);
    let _guard = lock.lock().await;
    let existing = host.components.get(&cmd.component_id);
    if cmd.max_instances == 0 {
        match host.components.remove(&cmd.component_id) {
            Some(stopped) => {
                host.secrets.remove(&cmd.component_id);
                let mut data = component_event(host, &stopped);
                data["max_instances"] = 0.into();
                host.events.publish(names::COMPONENT_SCALED, data).await;
            }
            None => {
                // Scaling a missing component to zero is already true; say so as an event too,
                // so a reconciler waiting on it does not hang.
                host.events
                    .publish(
                        names::COMPONENT_SCALED,
                        serde_json::json!({
                            "component_id": cmd.component_id,
                            "image_ref": cmd.component_ref,
                            "host_id": host.identity.host_id,
                            "max_instances": 0,
                            "annotations": cmd.annotations.clone().unwrap_or_default(),
                        }),
                    )
                    .await;
            }
        }
        return;
    }
    if let Some(running) = &existing {
        let same_ref = running.prepared.image_ref() == cmd.component_ref;
        if !same_ref && !cmd.allow_update {
            let message = format!(
                "component {} already runs {} on this host; scaling it with {} needs allow_update (or use component.update)",
                cmd.component_id,
                running.prepared.image_ref(),
                cmd.component_ref
            );
            scale_failed(host, &cmd, &cmd.component_ref, message).await;
            return;
        }
        let same_settings = running.config_names == cmd.config
            && cmd
                .component_limits
                .as_ref()
                .is_none_or(|l| *l == running.limits);
        if same_ref && same_settings {
            running.prepared.set_max_instances(cmd.max_instances);
            let mut annotations = running.annotations.clone();
            if let Some(a) = &cmd.annotations {
                annotations.extend(a.clone());
            }
            let updated = host.components.insert(RunningComponent {
                prepared: running.prepared.clone(),
                annotations,
                config_names: running.config_names.clone(),
                limits: running.limits.clone(),
                revision: running.revision,
            });
            host.events
                .publish(names::COMPONENT_SCALED, component_event(host, &updated))
                .await;
            return;
        }
    }
    let revision = existing.as_ref().map(|r| r.revision + 1).unwrap_or(0);
    match start_component(
        host,
        &cmd.component_id,
        &cmd.component_ref,
        cmd.max_instances,
        cmd.component_limits.clone().unwrap_or_default(),
        cmd.config.clone(),
        cmd.annotations.clone().unwrap_or_default(),
        revision,
    )
    .await
    {
        Ok(running) => {
            host.events
                .publish(names::COMPONENT_SCALED, component_event(host, &running))
                .await;
        }
        Err(e) => scale_failed(host, &cmd, &cmd.component_ref, format!("{e:#}")).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_component(
    host: &Arc<Host>,
    id: &str,
    image_ref: &str,
    max_instances: u32,
    limits: HashMap<String, String>,
    config_names: Vec<String>,
    annotations: std::collections::BTreeMap<String, String>,
    revision: i32,
) -> anyhow::Result<Arc<RunningComponent>> {
    let (plain_config, secret_references) = crate::secrets::split_config_names(&config_names);
    let config = host.store.merged_config(&plain_config).await?;
    let parsed_limits = ComponentLimits::from_map(&limits)?;
    let prepared = host
        .runtime
        .prepare(ComponentSpec {
            id: id.to_string(),
            image_ref: image_ref.to_string(),
            max_instances,
            limits: parsed_limits.clone(),
            config,
        })
        .await?;
    // A component that links but cannot be instantiated cannot serve: say so now.
    prepared
        .check_instantiation()
        .await
        .with_context(|| format!("component {id} cannot create an instance"))?;
    if let Some(policy) = &host.policy {
        let decision = policy
            .start_component(
                &host.policy_host_info(),
                &crate::security::policy::ComponentInformation {
                    component_id: id.to_string(),
                    image_ref: image_ref.to_string(),
                    max_instances,
                    annotations: annotations.clone(),
                    claims: prepared.claims().map(Into::into),
                },
            )
            .await;
        if !decision.permitted {
            anyhow::bail!(
                "policy denied starting component {id}: {}",
                decision.reason()
            );
        }
    }
    // Secrets last: only a component that may start is shown to a backend.
    let secrets = host
        .secret_fetcher
        .fetch(
            &host.store,
            &secret_references,
            prepared.claims().map(|c| c.jwt.as_str()),
            annotations
                .get(crate::secrets::APP_ANNOTATION)
                .map(String::as_str),
        )
        .await
        .with_context(|| format!("component {id} cannot get its secrets"))?;
    host.secrets.set(id, secrets);
    Ok(host.components.insert(RunningComponent {
        prepared,
        annotations,
        config_names,
        limits: parsed_limits.to_map(),
        revision,
    }))
}

/// Replaces a running component's code, keeping its id, count, limits and config.
async fn update_component(host: &Arc<Host>, cmd: UpdateComponentCommand) {
    let lock = host.components.op_lock(&cmd.component_id);
    let _guard = lock.lock().await;
    let Some(running) = host.components.get(&cmd.component_id) else {
        return;
    };
    let mut annotations = running.annotations.clone();
    if let Some(a) = &cmd.annotations {
        annotations.extend(a.clone());
    }
    let result = start_component(
        host,
        &cmd.component_id,
        &cmd.new_component_ref,
        running.prepared.max_instances(),
        running.limits.clone(),
        running.config_names.clone(),
        annotations.clone(),
        running.revision + 1,
    )
    .await;
    match result {
        Ok(updated) => {
            host.events
                .publish(names::COMPONENT_SCALED, component_event(host, &updated))
                .await;
        }
        Err(e) => {
            let cmd = ScaleComponentCommand {
                component_ref: cmd.new_component_ref.clone(),
                component_id: cmd.component_id.clone(),
                annotations: Some(annotations),
                max_instances: running.prepared.max_instances(),
                ..Default::default()
            };
            scale_failed(host, &cmd, &cmd.component_ref, format!("{e:#}")).await;
        }
    }
}
