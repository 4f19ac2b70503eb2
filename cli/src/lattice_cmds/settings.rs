//! `trellis link`, `trellis config`, `trellis label`: the lattice's links, named configs and
//! host labels.

use anyhow::bail;
use trellis_protocol::ctl::{DeleteLinkRequest, HostLabel, HostLabelIdentifier, Link};
use trellis_protocol::subjects::is_valid_token;

use super::{pairs_to_map, parse_key_value, parse_wit_package};
use crate::lattice_client::{short_id, ConnectArgs, LatticeClient};
use crate::output::{print_json, OutputFormat};

/// Flags of `trellis link`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis link put http-server hello wasi:http --interface incoming-handler --source-config http-8080
  trellis link put hello kv wasi:keyvalue --interface store --interface atomics --name cache
  trellis link del hello wasi:keyvalue --name cache")]
pub struct LinkArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: LinkCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LinkCommand {
    /// Link calls from SOURCE on NAMESPACE:PACKAGE interfaces to TARGET
    Put {
        /// The calling component or provider id
        source: String,
        /// The answering component or provider id
        target: String,
        /// WIT package, e.g. wasi:http or wasi:keyvalue
        #[arg(value_name = "NAMESPACE:PACKAGE")]
        package: String,
        /// Interface of the package the link covers (repeatable, at least one)
        #[arg(long = "interface", required = true, value_name = "INTERFACE")]
        interfaces: Vec<String>,
        /// Link name
        #[arg(long, default_value = "default")]
        name: String,
        /// Named config given to the source for this link (repeatable)
        #[arg(long, value_name = "CONFIG")]
        source_config: Vec<String>,
        /// Named config given to the target for this link (repeatable)
        #[arg(long, value_name = "CONFIG")]
        target_config: Vec<String>,
    },
    /// Delete SOURCE's link on NAMESPACE:PACKAGE
    Del {
        /// The calling component or provider id
        source: String,
        /// WIT package, e.g. wasi:keyvalue
        #[arg(value_name = "NAMESPACE:PACKAGE")]
        package: String,
        /// Link name
        #[arg(long, default_value = "default")]
        name: String,
    },
}

/// Runs `trellis link ...`.
pub async fn run_link(args: LinkArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    match args.command {
        LinkCommand::Put {
            source,
            target,
            package,
            interfaces,
            name,
            source_config,
            target_config,
        } => {
            let (wit_namespace, wit_package) =
                parse_wit_package(&package).map_err(anyhow::Error::msg)?;
            let link = Link {
                source_id: source,
                target,
                name,
                wit_namespace,
                wit_package,
                interfaces,
                source_config,
                target_config,
            };
            let client = LatticeClient::connect(&args.connect).await?;
            let message = client.ctl_ack(client.subjects().link_put(), &link).await?;
            done(output, &message, || {
                format!(
                    "linked {} -> {} on {}:{}/{} (name {})",
                    link.source_id,
                    link.target,
                    link.wit_namespace,
                    link.wit_package,
                    link.interfaces.join(","),
                    link.name
                )
            })
        }
        LinkCommand::Del {
            source,
            package,
            name,
        } => {
            let (wit_namespace, wit_package) =
                parse_wit_package(&package).map_err(anyhow::Error::msg)?;
            let request = DeleteLinkRequest {
                source_id: source,
                name,
                wit_namespace,
                wit_package,
            };
            let client = LatticeClient::connect(&args.connect).await?;
            let message = client
                .ctl_ack(client.subjects().link_del(), &request)
                .await?;
            done(output, &message, || {
                format!(
                    "deleted link {} on {}:{} (name {})",
                    request.source_id, request.wit_namespace, request.wit_package, request.name
                )
            })
        }
    }
}

/// Flags of `trellis config`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis config put http-8080 address=0.0.0.0:8080
  trellis get config http-8080
  trellis config del http-8080")]
pub struct ConfigArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Store a named config (replaces the whole map)
    Put {
        /// Config name
        name: String,
        /// Entries
        #[arg(required = true, value_parser = parse_key_value, value_name = "KEY=VALUE")]
        entries: Vec<(String, String)>,
    },
    /// Delete a named config
    Del {
        /// Config name
        name: String,
    },
}

/// Runs `trellis config ...`.
pub async fn run_config(args: ConfigArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    match args.command {
        ConfigCommand::Put { name, entries } => {
            check_config_name(&name)?;
            let map = pairs_to_map(&entries)?;
            let client = LatticeClient::connect(&args.connect).await?;
            let message = client
                .ctl_ack(client.subjects().config_put(&name), &map)
                .await?;
            done(output, &message, || {
                format!("stored config {name} ({} entries)", map.len())
            })
        }
        ConfigCommand::Del { name } => {
            check_config_name(&name)?;
            let client = LatticeClient::connect(&args.connect).await?;
            let message = client
                .ctl_ack(client.subjects().config_del(&name), &serde_json::json!({}))
                .await?;
            done(output, &message, || format!("deleted config {name}"))
        }
    }
}

fn check_config_name(name: &str) -> anyhow::Result<()> {
    if !is_valid_token(name) {
        bail!(
            "invalid config name {name:?}: it may not be empty or contain '.', '*', '>' or spaces"
        );
    }
    Ok(())
}

/// Flags of `trellis label`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis label put brave-otter zone=us-east
  trellis label del brave-otter zone")]
pub struct LabelArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: LabelCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LabelCommand {
    /// Set a label on a host
    Put {
        /// Host id, unique id prefix or friendly name
        host: String,
        /// The label
        #[arg(value_parser = parse_key_value, value_name = "KEY=VALUE")]
        label: (String, String),
    },
    /// Remove a label from a host
    Del {
        /// Host id, unique id prefix or friendly name
        host: String,
        /// Label key
        key: String,
    },
}

/// Runs `trellis label ...`.
pub async fn run_label(args: LabelArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    let client = LatticeClient::connect(&args.connect).await?;
    match args.command {
        LabelCommand::Put {
            host,
            label: (key, value),
        } => {
            let host = client.resolve_host(&host).await?;
            let message = client
                .ctl_ack(
                    client.subjects().label_put(&host.id),
                    &HostLabel {
                        key: key.clone(),
                        value: value.clone(),
                    },
                )
                .await?;
            done(output, &message, || {
                format!(
                    "{} ({}) has label {key}={value}",
                    host.friendly_name,
                    short_id(&host.id)
                )
            })
        }
        LabelCommand::Del { host, key } => {
            let host = client.resolve_host(&host).await?;
            let message = client
                .ctl_ack(
                    client.subjects().label_del(&host.id),
                    &HostLabelIdentifier { key: key.clone() },
                )
                .await?;
            done(output, &message, || {
                format!(
                    "removed label {key} from {} ({})",
                    host.friendly_name,
                    short_id(&host.id)
                )
            })
        }
    }
}

fn done(output: OutputFormat, message: &str, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if output == OutputFormat::Json {
        return print_json(&serde_json::json!({ "success": true, "message": message }));
    }
    println!("{}", text());
    Ok(())
}
