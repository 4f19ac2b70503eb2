//! `trellis secret ...`: administer a `nats-kv` secrets backend (put, list, delete, map).
//!
//! Every request is sealed with the backend's admin xkey: `--admin-seed-file`, else
//! `TRELLIS_SECRETS_ADMIN_SEED`, else the admin seed of the running `trellis up` (recorded in
//! its `up.json`) when talking to its NATS. Nothing here prints a value.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use nkeys::XKey;
use serde::Serialize;
use trellis_protocol::secrets::{DEFAULT_TOPIC_PREFIX, MAX_SECRET_BYTES};
use trellis_secrets::server::DEFAULT_BACKEND_NAME;
use trellis_secrets::{AdminClient, SecretValue};

use crate::lattice_client::{connect_nats, ConnectArgs};
use crate::output::{print_json, OutputFormat};

/// The admin seed, by value.
pub const ENV_ADMIN_SEED: &str = "TRELLIS_SECRETS_ADMIN_SEED";

/// `trellis secret ...`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis secret put db-password --file ./db-password.txt
  printf %s \"$TOKEN\" | trellis secret put api-token --stdin
  trellis secret get-names
  trellis secret add-mapping MABC... --secret db-password --secret api-token
  trellis secret del db-password

A running `trellis up` is found with no flags, its admin key too. Values are never printed.")]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
    #[command(flatten)]
    connect: ConnectArgs,
    /// The backend to administer
    #[arg(long, global = true, env = "TRELLIS_SECRETS_BACKEND", default_value = DEFAULT_BACKEND_NAME)]
    backend: String,
    /// Subject prefix of the secrets protocol
    #[arg(long, global = true, env = "TRELLIS_SECRETS_TOPIC_PREFIX", default_value = DEFAULT_TOPIC_PREFIX)]
    topic_prefix: String,
    /// File holding the backend's admin xkey seed [default: TRELLIS_SECRETS_ADMIN_SEED, else the one of a running `trellis up`]
    #[arg(
        long,
        global = true,
        env = "TRELLIS_SECRETS_ADMIN_SEED_FILE",
        value_name = "FILE"
    )]
    admin_seed_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum SecretCommand {
    /// Store a secret (a new revision when it exists); the value from VALUE, --file or --stdin
    Put {
        /// The secret's name (its key in the backend)
        name: String,
        /// The value (shows in shell history and `ps`: prefer --file or --stdin)
        #[arg(conflicts_with_all = ["file", "stdin"], required_unless_present_any = ["file", "stdin"])]
        value: Option<String>,
        /// Read the value from this file (at most 64 KiB)
        #[arg(long, value_name = "PATH", conflicts_with = "stdin")]
        file: Option<PathBuf>,
        /// Read the value from standard input (at most 64 KiB)
        #[arg(long)]
        stdin: bool,
    },
    /// List the stored secrets' names (never values)
    GetNames,
    /// Delete a secret and its history
    #[command(alias = "delete")]
    Del {
        /// The secret's name
        name: String,
    },
    /// Allow a component or provider (its public key, M... or V...) to read secrets; once any
    /// mapping names a secret, only mapped entities may read it
    AddMapping(MappingArgs),
    /// Withdraw secrets from a component or provider
    RemoveMapping(MappingArgs),
}

#[derive(Debug, clap::Args)]
struct MappingArgs {
    /// The entity's public key (a signed component's M..., a provider's V...)
    entity: String,
    /// A secret name (repeatable)
    #[arg(long = "secret", required = true, value_name = "NAME")]
    secrets: Vec<String>,
}

#[derive(Serialize)]
struct PutOutput<'a> {
    name: &'a str,
    revision: u64,
}

#[derive(Serialize)]
struct MappingOutput<'a> {
    entity: &'a str,
    secrets: Vec<String>,
}

/// Runs `trellis secret ...`.
pub async fn run(args: SecretArgs) -> anyhow::Result<()> {
    let value = match &args.command {
        SecretCommand::Put {
            value, file, stdin, ..
        } => Some(read_value(value.as_deref(), file.as_deref(), *stdin)?),
        _ => None,
    };
    let (nats_url, _) = args.connect.target();
    let admin = admin_key(args.admin_seed_file.as_deref(), &nats_url)?;
    let auth = args.connect.auth_for(&nats_url)?;
    let nats = connect_nats(&nats_url, &auth, args.connect.timeout()).await?;
    let client = AdminClient::new(
        nats,
        args.topic_prefix.clone(),
        args.backend.clone(),
        admin,
        args.connect.timeout(),
    );
    let output = args.connect.output;
    match args.command {
        SecretCommand::Put { name, .. } => {
            let value = value.context("no value")?;
            let bytes = value.len();
            let revision = client.put(&name, value).await?;
            match output {
                OutputFormat::Json => print_json(&PutOutput {
                    name: &name,
                    revision,
                })?,
                OutputFormat::Table => {
                    println!("stored secret {name} ({bytes} bytes, revision {revision})")
                }
            }
        }
        SecretCommand::GetNames => {
            let names = client.get_names().await?;
            match output {
                OutputFormat::Json => print_json(&names)?,
                OutputFormat::Table if names.is_empty() => {
                    println!("no secrets in backend {}", args.backend)
                }
                OutputFormat::Table => names.iter().for_each(|n| println!("{n}")),
            }
        }
        SecretCommand::Del { name } => {
            client.delete(&name).await?;
            match output {
                OutputFormat::Json => print_json(&serde_json::json!({ "deleted": name }))?,
                OutputFormat::Table => println!("deleted secret {name}"),
            }
        }
        SecretCommand::AddMapping(m) | SecretCommand::RemoveMapping(m)
            if m.secrets.iter().any(|s| s.trim().is_empty()) =>
        {
            bail!("--secret needs a name")
        }
        SecretCommand::AddMapping(m) => {
            let names: BTreeSet<String> = m.secrets.iter().cloned().collect();
            let now = client.add_mapping(&m.entity, &names).await?;
            print_mapping(&m.entity, now, output)?;
        }
        SecretCommand::RemoveMapping(m) => {
            let names: BTreeSet<String> = m.secrets.iter().cloned().collect();
            let now = client.remove_mapping(&m.entity, &names).await?;
            print_mapping(&m.entity, now, output)?;
        }
    }
    Ok(())
}

fn print_mapping(entity: &str, secrets: Vec<String>, output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => print_json(&MappingOutput { entity, secrets }),
        OutputFormat::Table if secrets.is_empty() => {
            println!("{entity} is mapped to no secret");
            Ok(())
        }
        OutputFormat::Table => {
            println!("{entity} is mapped to: {}", secrets.join(", "));
            Ok(())
        }
    }
}

/// The value to put, from the argument, a file or stdin, at most 64 KiB.
fn read_value(
    value: Option<&str>,
    file: Option<&Path>,
    stdin: bool,
) -> anyhow::Result<SecretValue> {
    let bytes = match (value, file) {
        (Some(value), _) => {
            eprintln!(
                "note: a value on the command line shows in shell history and `ps`; prefer --file or --stdin"
            );
            value.as_bytes().to_vec()
        }
        (None, Some(path)) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            read_bounded(file).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) if stdin => read_bounded(std::io::stdin().lock())
            .context("cannot read the value from standard input")?,
        (None, None) => bail!("give the value as VALUE, --file PATH or --stdin"),
    };
    Ok(SecretValue::from_bytes(bytes))
}

/// Reads at most [`MAX_SECRET_BYTES`]; more is an error (the rest is not read).
fn read_bounded(reader: impl std::io::Read) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_SECRET_BYTES {
        bail!("the value is larger than {MAX_SECRET_BYTES} bytes, the most a secret may hold");
    }
    Ok(bytes)
}

/// The admin xkey: the file given, else the variable, else the running `trellis up`'s when
/// `nats_url` is its NATS.
fn admin_key(file: Option<&Path>, nats_url: &str) -> anyhow::Result<XKey> {
    if let Some(file) = file {
        return Ok(crate::seed_files::read_or_generate_xkey(file, false)?.0);
    }
    if let Some(seed) = std::env::var(ENV_ADMIN_SEED)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return XKey::from_seed(seed.trim()).map_err(|_| {
            anyhow::anyhow!("{ENV_ADMIN_SEED} does not hold a valid xkey seed (SX...)")
        });
    }
    if let Some(state) = crate::local_lattice::running_state() {
        if let Some(file) = state
            .secrets_admin_seed_file
            .filter(|_| state.nats_url == nats_url)
        {
            return Ok(crate::seed_files::read_or_generate_xkey(&file, false)?.0);
        }
    }
    bail!(
        "no admin key for the secrets backend: pass --admin-seed-file FILE (or set \
         {ENV_ADMIN_SEED}); a running `trellis up` is found by itself"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bounded_and_never_in_errors() {
        let big = vec![b'a'; MAX_SECRET_BYTES + 1];
        let err = read_bounded(&big[..]).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        assert!(!err.contains("aaaa"));
        let ok = read_bounded(&big[..MAX_SECRET_BYTES]).unwrap();
        assert_eq!(ok.len(), MAX_SECRET_BYTES);
        assert!(matches!(
            SecretValue::from_bytes(vec![0xff, 0x00]),
            SecretValue::Bytes(_)
        ));
        assert!(!format!("{:?}", SecretValue::from_bytes(b"hunter2".to_vec())).contains("hunter2"));
    }
}
