//! `trellis scale`, `trellis start`, `trellis stop`: run and stop components, providers and
//! hosts directly, without the reconciler.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use trellis_protocol::ctl::{
    ComponentAuctionAck, ComponentAuctionRequest, CtlResponse, ProviderAuctionAck,
    ProviderAuctionRequest, ScaleComponentCommand, StartProviderCommand, StopHostCommand,
    StopProviderCommand,
};
use trellis_protocol::events::CloudEvent;

use super::{pairs_to_map, parse_key_value};
use crate::lattice_client::{ConnectArgs, LatticeClient};
use crate::output::{print_json, OutputFormat};
use crate::progress::Progress;

/// Flags of `trellis scale`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis scale component brave-otter file:///tmp/hello.wasm hello --count 4
  trellis scale component --auto file:///tmp/hello.wasm hello --count 1
  trellis scale component NABC file:///tmp/hello.wasm hello --count 0   # stop it")]
pub struct ScaleArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    what: ScaleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ScaleCommand {
    /// Run COUNT max instances of a component on a host (0 stops it)
    Component(ScaleComponentArgs),
}

#[derive(Debug, clap::Args)]
struct ScaleComponentArgs {
    /// HOST REF ID, or REF ID with --auto (HOST: id, unique id prefix or friendly name)
    #[arg(num_args = 2..=3, required = true, value_name = "[HOST] REF ID")]
    positionals: Vec<String>,
    /// Let the hosts bid (component auction) instead of naming one
    #[arg(long)]
    auto: bool,
    /// Most concurrent instances; 0 stops the component
    #[arg(long, alias = "max-instances", value_name = "N")]
    count: u32,
    /// With --auto: only hosts with this label bid (repeatable)
    #[arg(long, value_parser = parse_key_value, value_name = "KEY=VALUE")]
    constraint: Vec<(String, String)>,
    /// Named config the component reads (repeatable)
    #[arg(long, value_name = "NAME")]
    config: Vec<String>,
    /// Annotation to record with the component (repeatable)
    #[arg(long, value_parser = parse_key_value, value_name = "KEY=VALUE")]
    annotation: Vec<(String, String)>,
    /// Replace the code of a running component with this id when REF differs
    #[arg(long)]
    update: bool,
}

/// Which host a scale goes to and what it runs.
#[derive(Debug, PartialEq, Eq)]
struct ScaleTarget {
    host: Option<String>,
    component_ref: String,
    component_id: String,
}

/// Splits `[HOST] REF ID` according to `--auto`.
fn scale_target(positionals: &[String], auto: bool) -> anyhow::Result<ScaleTarget> {
    match (positionals, auto) {
        ([host, r, id], false) => Ok(ScaleTarget {
            host: Some(host.clone()),
            component_ref: r.clone(),
            component_id: id.clone(),
        }),
        ([r, id], true) => Ok(ScaleTarget {
            host: None,
            component_ref: r.clone(),
            component_id: id.clone(),
        }),
        (_, false) => bail!("expected HOST REF ID (or REF ID with --auto to let the hosts bid)"),
        (_, true) => bail!("with --auto, give only REF ID (the hosts bid for the work)"),
    }
}

/// Runs `trellis scale ...`.
pub async fn run_scale(args: ScaleArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    let client = LatticeClient::connect(&args.connect).await?;
    let ScaleCommand::Component(scale) = args.what;
    let target = scale_target(&scale.positionals, scale.auto)?;
    let constraints = pairs_to_map(&scale.constraint)?;
    let host_id = match &target.host {
        Some(query) => client.resolve_host(query).await?.id,
        None => {
            let bids: Vec<CtlResponse<ComponentAuctionAck>> = client
                .gather(
                    client.subjects().component_auction(),
                    &ComponentAuctionRequest {
                        component_ref: target.component_ref.clone(),
                        component_id: target.component_id.clone(),
                        constraints: constraints.clone(),
                    },
                )
                .await?;
            first_bid(
                bids.into_iter()
                    .filter_map(|b| b.response.map(|a| a.host_id)),
            )
            .with_context(|| no_bid_message(client.lattice(), &constraints))?
        }
    };
    let annotations = pairs_to_map(&scale.annotation)?;
    let command = ScaleComponentCommand {
        component_ref: target.component_ref.clone(),
        component_id: target.component_id.clone(),
        annotations: (!annotations.is_empty()).then_some(annotations),
        max_instances: scale.count,
        component_limits: None,
        host_id: host_id.clone(),
        config: scale.config.clone(),
        allow_update: scale.update,
    };
    let mut events = subscribe_events(&client).await?;
    let message = client
        .ctl_ack(client.subjects().component_scale(&host_id), &command)
        .await?;
    let id = target.component_id.clone();
    let outcome = await_event(
        &mut events,
        &format!("scaling {id} to {} on {}", scale.count, short(&host_id)),
        client.timeout(),
        output,
        |ev| {
            let same = ev.data.get("component_id").and_then(|v| v.as_str()) == Some(id.as_str())
                && ev.source == host_id;
            match ev.name() {
                "component_scaled" if same => Some(Ok(())),
                "component_scale_failed" if same => Some(Err(event_error(ev))),
                _ => None,
            }
        },
    )
    .await;
    report(output, outcome, &message, || {
        if scale.count == 0 {
            format!("stopped component {id} on {}", short(&host_id))
        } else {
            format!(
                "component {id} runs on {} with up to {} instances",
                short(&host_id),
                scale.count
            )
        }
    })
}

/// Flags of `trellis start`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis start provider trellis+builtin://http-server http-server
  trellis start provider ghcr.io/wasmcloud/keyvalue-nats:0.3.1 kv brave-otter --config kv-settings")]
pub struct StartArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    what: StartCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StartCommand {
    /// Start a capability provider on a host (the hosts bid when HOST is omitted)
    Provider {
        /// Provider reference: trellis+builtin://NAME, wasmcloud+builtin://NAME or a known image
        provider_ref: String,
        /// Provider id, unique in the lattice
        provider_id: String,
        /// Host id, unique id prefix or friendly name [default: the first host that bids]
        host: Option<String>,
        /// Named config given to the provider (repeatable)
        #[arg(long, value_name = "NAME")]
        config: Vec<String>,
        /// Without HOST: only hosts with this label bid (repeatable)
        #[arg(long, value_parser = parse_key_value, value_name = "KEY=VALUE")]
        constraint: Vec<(String, String)>,
    },
}

/// Runs `trellis start ...`.
pub async fn run_start(args: StartArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    let client = LatticeClient::connect(&args.connect).await?;
    let StartCommand::Provider {
        provider_ref,
        provider_id,
        host,
        config,
        constraint,
    } = args.what;
    let constraints = pairs_to_map(&constraint)?;
    let host_id = match host {
        Some(query) => client.resolve_host(&query).await?.id,
        None => {
            let bids: Vec<CtlResponse<ProviderAuctionAck>> = client
                .gather(
                    client.subjects().provider_auction(),
                    &ProviderAuctionRequest {
                        provider_ref: provider_ref.clone(),
                        provider_id: provider_id.clone(),
                        constraints: constraints.clone(),
                    },
                )
                .await?;
            first_bid(
                bids.into_iter()
                    .filter_map(|b| b.response.map(|a| a.host_id)),
            )
            .with_context(|| no_bid_message(client.lattice(), &constraints))?
        }
    };
    let command = StartProviderCommand {
        provider_id: provider_id.clone(),
        provider_ref,
        host_id: host_id.clone(),
        config,
        annotations: None,
    };
    let mut events = subscribe_events(&client).await?;
    let message = client
        .ctl_ack(client.subjects().provider_start(&host_id), &command)
        .await?;
    let outcome = await_event(
        &mut events,
        &format!("starting provider {provider_id} on {}", short(&host_id)),
        client.timeout(),
        output,
        |ev| {
            let same = ev.data.get("provider_id").and_then(|v| v.as_str())
                == Some(provider_id.as_str())
                && ev.source == host_id;
            match ev.name() {
                "provider_started" if same => Some(Ok(())),
                "provider_start_failed" if same => Some(Err(event_error(ev))),
                _ => None,
            }
        },
    )
    .await;
    report(output, outcome, &message, || {
        format!("provider {provider_id} runs on {}", short(&host_id))
    })
}

/// Flags of `trellis stop`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis stop provider http-server brave-otter
  trellis stop component hello NABC
  trellis stop host brave-otter --timeout 5000")]
pub struct StopArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    what: StopCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StopCommand {
    /// Stop a provider on a host
    Provider {
        /// Provider id
        provider_id: String,
        /// Host id, unique id prefix or friendly name
        host: String,
    },
    /// Stop a component on a host (the same as scaling it to 0)
    Component {
        /// Component id
        component_id: String,
        /// Host id, unique id prefix or friendly name
        host: String,
    },
    /// Stop a host: it drains its work and leaves the lattice
    Host(StopHostArgs),
}

/// Flags of `trellis stop host` and `trellis host stop`.
#[derive(Debug, clap::Args)]
pub struct StopHostArgs {
    /// Host id, unique id prefix or friendly name
    pub host: String,
    /// How long in-flight work may drain, in milliseconds
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `trellis stop ...`.
pub async fn run_stop(args: StopArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    match args.what {
        StopCommand::Host(mut stop) => {
            // Flags given before `host` belong to `stop`; merge them.
            if stop.connect.nats_url.is_none() {
                stop.connect.nats_url = args.connect.nats_url.clone();
            }
            if stop.connect.lattice.is_none() {
                stop.connect.lattice = args.connect.lattice.clone();
            }
            run_stop_host(stop).await
        }
        StopCommand::Provider { provider_id, host } => {
            let client = LatticeClient::connect(&args.connect).await?;
            let host_id = client.resolve_host(&host).await?.id;
            let mut events = subscribe_events(&client).await?;
            let message = client
                .ctl_ack(
                    client.subjects().provider_stop(&host_id),
                    &StopProviderCommand {
                        host_id: host_id.clone(),
                        provider_id: provider_id.clone(),
                    },
                )
                .await?;
            let outcome = await_event(
                &mut events,
                &format!("stopping provider {provider_id}"),
                client.timeout(),
                output,
                |ev| {
                    let same = ev.data.get("provider_id").and_then(|v| v.as_str())
                        == Some(provider_id.as_str())
                        && ev.source == host_id;
                    (ev.name() == "provider_stopped" && same).then_some(Ok(()))
                },
            )
            .await;
            report(output, outcome, &message, || {
                format!("stopped provider {provider_id} on {}", short(&host_id))
            })
        }
        StopCommand::Component { component_id, host } => {
            let client = LatticeClient::connect(&args.connect).await?;
            let host_id = client.resolve_host(&host).await?.id;
            let message = client
                .ctl_ack(
                    client.subjects().component_scale(&host_id),
                    &ScaleComponentCommand {
                        component_id: component_id.clone(),
                        host_id: host_id.clone(),
                        max_instances: 0,
                        ..Default::default()
                    },
                )
                .await?;
            report(output, Ok(EventOutcome::Confirmed), &message, || {
                format!("stopping component {component_id} on {}", short(&host_id))
            })
        }
    }
}

/// Runs `trellis stop host` / `trellis host stop`.
pub async fn run_stop_host(args: StopHostArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    let client = LatticeClient::connect(&args.connect).await?;
    let host = client.resolve_host(&args.host).await?;
    let message = client
        .ctl_ack(
            client.subjects().host_stop(&host.id),
            &StopHostCommand {
                host_id: host.id.clone(),
                timeout: args.timeout,
            },
        )
        .await?;
    report(output, Ok(EventOutcome::Confirmed), &message, || {
        format!(
            "host {} ({}) is stopping",
            host.friendly_name,
            short(&host.id)
        )
    })
}

/// How an acked request ended.
#[derive(Debug)]
pub(crate) enum EventOutcome {
    /// The host published the event confirming it.
    Confirmed,
    /// The request was accepted but no confirming event came in time.
    Unconfirmed,
}

pub(crate) async fn subscribe_events(
    client: &LatticeClient,
) -> anyhow::Result<async_nats::Subscriber> {
    client
        .nats()
        .subscribe(trellis_protocol::subjects::all_events(client.lattice()))
        .await
        .context("cannot subscribe to lattice events")
}

/// Waits for the first event `judge` decides on, showing progress meanwhile.
pub(crate) async fn await_event(
    events: &mut async_nats::Subscriber,
    doing: &str,
    timeout: Duration,
    output: OutputFormat,
    mut judge: impl FnMut(&CloudEvent) -> Option<anyhow::Result<()>>,
) -> anyhow::Result<EventOutcome> {
    let progress = Progress::start(doing.to_string(), output == OutputFormat::Json);
    let deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(msg)) => {
                let Ok(event) = serde_json::from_slice::<CloudEvent>(&msg.payload) else {
                    continue;
                };
                if let Some(verdict) = judge(&event) {
                    break verdict.map(|()| EventOutcome::Confirmed);
                }
            }
            Ok(None) | Err(_) => break Ok(EventOutcome::Unconfirmed),
        }
    };
    progress.finish();
    result
}

pub(crate) fn event_error(event: &CloudEvent) -> anyhow::Error {
    let error = event
        .data
        .get("error")
        .and_then(|v| v.as_str())
        .unwrap_or("no reason given");
    anyhow::anyhow!("{error}")
}

fn report(
    output: OutputFormat,
    outcome: anyhow::Result<EventOutcome>,
    message: &str,
    done: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let outcome = outcome?;
    let confirmed = matches!(outcome, EventOutcome::Confirmed);
    if output == OutputFormat::Json {
        return print_json(&serde_json::json!({
            "success": true,
            "confirmed": confirmed,
            "message": message,
        }));
    }
    let text = done();
    if confirmed {
        println!("{text}");
    } else {
        println!("{text} (accepted; no confirmation yet: check with `trellis get inventory`)");
    }
    Ok(())
}

fn first_bid(mut hosts: impl Iterator<Item = String>) -> Option<String> {
    hosts.find(|h| !h.is_empty())
}

fn no_bid_message(lattice: &str, constraints: &BTreeMap<String, String>) -> String {
    if constraints.is_empty() {
        format!("no host in lattice {lattice} bid for the work: is `trellis up` running?")
    } else {
        let wanted: Vec<String> = constraints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "no host in lattice {lattice} has the labels {}: see `trellis get hosts`",
            wanted.join(", ")
        )
    }
}

fn short(id: &str) -> &str {
    crate::lattice_client::short_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scale_positionals_follow_auto() {
        let t = scale_target(&strings(&["h", "r", "i"]), false).unwrap();
        assert_eq!(t.host.as_deref(), Some("h"));
        assert_eq!(t.component_ref, "r");
        let t = scale_target(&strings(&["r", "i"]), true).unwrap();
        assert_eq!(t.host, None);
        assert_eq!(t.component_id, "i");
        assert!(scale_target(&strings(&["r", "i"]), false).is_err());
        assert!(scale_target(&strings(&["h", "r", "i"]), true).is_err());
    }

    #[test]
    fn no_bid_names_constraints() {
        let c: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        assert!(no_bid_message("default", &c).contains("zone=a"));
        assert!(no_bid_message("default", &BTreeMap::new()).contains("trellis up"));
    }
}
