//! `trellis get ...`: read the lattice's state.

use std::collections::HashMap;

use anyhow::Context;
use trellis_protocol::ctl::{HostInventory, Link};

use crate::lattice_client::{short_id, ConnectArgs, LatticeClient};
use crate::output::{print_json, user_labels, OutputFormat, Table};

/// Flags of `trellis get`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis get hosts
  trellis get inventory              # every host
  trellis get inventory brave-otter  # one host, by friendly name or id prefix
  trellis get links -o json
  trellis get config my-config")]
pub struct GetArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    what: GetCommand,
}

#[derive(Debug, clap::Subcommand)]
enum GetCommand {
    /// Hosts that answer a ping
    Hosts,
    /// Components and providers running on one host, or on every host
    #[command(alias = "inv")]
    Inventory {
        /// Host id, unique id prefix or friendly name [default: every host]
        host: Option<String>,
    },
    /// Links stored in the lattice
    Links,
    /// One named config
    Config {
        /// Config name
        name: String,
    },
}

/// Runs `trellis get ...`.
pub async fn run_get(args: GetArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    let client = LatticeClient::connect(&args.connect).await?;
    match args.what {
        GetCommand::Hosts => get_hosts(&client, output).await,
        GetCommand::Inventory { host } => get_inventory(&client, host.as_deref(), output).await,
        GetCommand::Links => get_links(&client, output).await,
        GetCommand::Config { name } => get_config(&client, &name, output).await,
    }
}

async fn get_hosts(client: &LatticeClient, output: OutputFormat) -> anyhow::Result<()> {
    let hosts = client.ping_hosts().await?;
    if output == OutputFormat::Json {
        return print_json(&hosts);
    }
    if hosts.is_empty() {
        println!(
            "no hosts in lattice {} at {}: is `trellis up` running?",
            client.lattice(),
            client.nats_url()
        );
        return Ok(());
    }
    let mut table = Table::new(["ID", "NAME", "UPTIME", "VERSION", "LABELS"]);
    for h in &hosts {
        table.row([
            h.id.clone(),
            h.friendly_name.clone(),
            h.uptime_human
                .clone()
                .unwrap_or_else(|| format!("{}s", h.uptime_seconds)),
            h.version.clone().unwrap_or_default(),
            user_labels(&h.labels),
        ]);
    }
    table.print();
    Ok(())
}

async fn get_inventory(
    client: &LatticeClient,
    host: Option<&str>,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let hosts = match host {
        Some(query) => vec![client.resolve_host(query).await?],
        None => client.require_hosts().await?,
    };
    let mut inventories = Vec::with_capacity(hosts.len());
    for h in &hosts {
        let inventory: HostInventory = client
            .inventory(&h.id)
            .await
            .with_context(|| format!("cannot get the inventory of {}", h.friendly_name))?
            .with_context(|| format!("host {} answered without an inventory", h.friendly_name))?;
        inventories.push(inventory);
    }
    if output == OutputFormat::Json {
        return if host.is_some() {
            print_json(&inventories[0])
        } else {
            print_json(&inventories)
        };
    }
    let mut table = Table::new(["HOST", "KIND", "ID", "REF", "MAX", "APP"]);
    for inv in &inventories {
        let host_name = if inv.friendly_name.is_empty() {
            short_id(&inv.host_id).to_string()
        } else {
            inv.friendly_name.clone()
        };
        for c in &inv.components {
            table.row([
                host_name.clone(),
                "component".to_string(),
                c.id.clone(),
                c.image_ref.clone(),
                c.max_instances.to_string(),
                app_of(c.annotations.as_ref()),
            ]);
        }
        for p in &inv.providers {
            table.row([
                host_name.clone(),
                "provider".to_string(),
                p.id.clone(),
                p.image_ref.clone().unwrap_or_default(),
                String::new(),
                app_of(p.annotations.as_ref()),
            ]);
        }
    }
    if table.is_empty() {
        let names: Vec<&str> = inventories
            .iter()
            .map(|i| i.friendly_name.as_str())
            .collect();
        println!(
            "nothing runs on {}: deploy an app with `trellis app deploy FILE`",
            names.join(", ")
        );
    } else {
        table.print();
    }
    Ok(())
}

/// The app a piece of work belongs to, from the reconciler's annotation.
fn app_of(annotations: Option<&std::collections::BTreeMap<String, String>>) -> String {
    annotations
        .and_then(|a| a.get("wasmcloud.dev/appspec"))
        .cloned()
        .unwrap_or_default()
}

async fn get_links(client: &LatticeClient, output: OutputFormat) -> anyhow::Result<()> {
    let links: Vec<Link> = client.links().await?;
    if output == OutputFormat::Json {
        return print_json(&links);
    }
    if links.is_empty() {
        println!("no links in lattice {}", client.lattice());
        return Ok(());
    }
    let mut table = Table::new([
        "SOURCE",
        "TARGET",
        "INTERFACES",
        "NAME",
        "SOURCE CONFIG",
        "TARGET CONFIG",
    ]);
    for l in &links {
        table.row([
            l.source_id.clone(),
            l.target.clone(),
            format!(
                "{}:{}/{}",
                l.wit_namespace,
                l.wit_package,
                l.interfaces.join(",")
            ),
            l.name.clone(),
            l.source_config.join(","),
            l.target_config.join(","),
        ]);
    }
    table.print();
    Ok(())
}

async fn get_config(
    client: &LatticeClient,
    name: &str,
    output: OutputFormat,
) -> anyhow::Result<()> {
    if !trellis_protocol::subjects::is_valid_token(name) {
        anyhow::bail!("invalid config name {name:?}: no '.', '*', '>' or spaces");
    }
    let config: Option<HashMap<String, String>> = client
        .ctl(client.subjects().config_get(name), &serde_json::json!({}))
        .await?;
    let mut entries: Vec<(String, String)> = config.unwrap_or_default().into_iter().collect();
    entries.sort();
    if output == OutputFormat::Json {
        let map: std::collections::BTreeMap<_, _> = entries.into_iter().collect();
        return print_json(&map);
    }
    if entries.is_empty() {
        println!("config {name} is empty or does not exist; create it with `trellis config put {name} KEY=VALUE`");
        return Ok(());
    }
    let mut table = Table::new(["KEY", "VALUE"]);
    for (k, v) in entries {
        table.row([k, v]);
    }
    table.print();
    Ok(())
}
