//! `trellis host`: run one host until SIGINT, SIGTERM or a `host.stop` request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use trellis_host::lattice::connection::NatsOptions;
use trellis_host::{HostConfig, HostHandle};

/// Flags of `trellis host`. Each has a `TRELLIS_*` environment fallback.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis host --nats-url nats://127.0.0.1:4222 --allow-file-load
  trellis host --allow-mount /srv/sites --allow-mount /var/lib/uploads:rw   # directory mounts
  trellis host --lattice edge --label region=eu-west --label arch=arm64
  TRELLIS_LABEL_zone=a trellis host          # labels from the environment too
  trellis host --allowed-insecure registry.local:5000 --registry-mirror ghcr.io=registry.local:5000
  trellis host --nats-url nats://127.0.0.1:4223 --js-domain hub --data-dir /var/lib/trellis   # on a leaf node

OCI credentials (never on the command line): TRELLIS_OCI_AUTH_<REGISTRY>=user:password or
TRELLIS_OCI_TOKEN_<REGISTRY>=token, <REGISTRY> being host:port upper-cased with other characters
as `_` (TRELLIS_OCI_AUTH_GHCR_IO), else the Docker config's `auths` (~/.docker/config.json).")]
pub struct HostArgs {
    /// NATS server to join.
    #[arg(
        long,
        env = "TRELLIS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Lattice name: hosts, links and configs of one lattice never see another's.
    #[arg(long, env = "TRELLIS_LATTICE", default_value = "default")]
    pub lattice: String,
    /// A label `key=value` (repeatable). `TRELLIS_LABELS=a=1,b=2` and `TRELLIS_LABEL_<key>=value`
    /// work too; flags win.
    #[arg(short = 'l', long = "label", env = "TRELLIS_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Allow loading components from local paths and `file://` URLs.
    #[arg(long, env = "TRELLIS_ALLOW_FILE_LOAD")]
    pub allow_file_load: bool,
    /// Let components mount DIR, or a directory under it, through their `mounts` config
    /// (repeatable; see docs/static-files.md). Mounts are read-only unless the root is given
    /// as `DIR:rw` and the component asks for `:rw`. Without this flag no component gets a
    /// directory.
    #[arg(
        long = "allow-mount",
        env = "TRELLIS_ALLOW_MOUNTS",
        value_delimiter = ',',
        value_name = "DIR[:rw]",
        value_parser = trellis_host::runtime::MountRoot::parse
    )]
    pub allow_mounts: Vec<trellis_host::runtime::MountRoot>,
    /// Grant the contents of file PATH to every component on this host as the
    /// `wasmcloud:secrets` secret NAME (repeatable, `NAME=PATH`). Secrets a manifest references
    /// come from secrets backends instead (--secrets-topic). Values are never logged.
    #[arg(long = "secret-file", env = "TRELLIS_SECRET_FILES", value_delimiter = ',', value_parser = trellis_providers::secrets::parse_secret_file, value_name = "NAME=PATH")]
    pub secret_files: Vec<(String, PathBuf)>,
    /// The subject prefix secrets backends answer under (wasmCloud's `--secrets-topic`):
    /// a backend named B answers `<prefix>.v1alpha1.B.get`.
    #[arg(
        long = "secrets-topic",
        env = "TRELLIS_SECRETS_TOPIC",
        default_value = trellis_protocol::secrets::DEFAULT_TOPIC_PREFIX,
        value_name = "PREFIX"
    )]
    pub secrets_topic: String,
    /// The largest component file the host loads, in MiB; bigger files (and anything that is
    /// not a regular file, such as /dev/zero) are refused before they are read.
    #[arg(
        long,
        env = "TRELLIS_MAX_COMPONENT_SIZE_MB",
        default_value_t = DEFAULT_MAX_COMPONENT_SIZE_MB,
        value_parser = clap::value_parser!(u64).range(1..=4096),
        value_name = "MIB"
    )]
    pub max_component_size_mb: u64,
    /// The host's nkeys server seed (`SN...`); a fresh identity is made when absent.
    #[arg(long, env = "TRELLIS_HOST_SEED", hide_env_values = true)]
    pub host_seed: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "TRELLIS_HEARTBEAT_INTERVAL_MS", default_value_t = 2000)]
    pub heartbeat_interval_ms: u64,
    /// NATS authentication and TLS (--nats-creds, --nats-seed, --nats-user, --nats-tls-ca...).
    #[command(flatten)]
    pub nats_auth: trellis_protocol::nats::NatsAuth,
    /// Where the lattice's state lives in JetStream (--js-domain, --kv-replicas).
    #[command(flatten)]
    pub jetstream: trellis_protocol::jetstream::JetStreamPlacement,
    /// Directory for this host's own state: its identity (`host.nk`, kept across restarts)
    /// and its snapshot of what it serves, which it serves from when restarted while the
    /// lattice's JetStream is unreachable (see docs/edge.md). Nothing is kept when absent.
    #[arg(long, env = "TRELLIS_HOST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory for compiled components (defaults to the user's cache directory).
    #[arg(long, env = "TRELLIS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Send every component-to-component call over NATS, even when the target runs on this
    /// host (by default such calls go in-process).
    #[arg(long, env = "TRELLIS_DISABLE_COLOCATION")]
    pub disable_colocation: bool,
    /// Where to listen for calls sent straight from other hosts, which skip the NATS server
    /// once a NATS reply has told them where a component runs. The default serves hosts on
    /// this machine; for hosts on other machines, listen on a reachable address.
    #[arg(long, env = "TRELLIS_DIRECT_LISTEN", default_value = "127.0.0.1:0")]
    pub direct_listen: std::net::SocketAddr,
    /// The HOST:PORT other hosts should dial for direct calls (default: the listen address;
    /// required when listening on 0.0.0.0).
    #[arg(long, env = "TRELLIS_DIRECT_ADVERTISE")]
    pub direct_advertise: Option<String>,
    /// Send every call to another host through NATS, and accept none directly.
    #[arg(long, env = "TRELLIS_NO_DIRECT_CALLS", conflicts_with_all = ["direct_listen", "direct_advertise"])]
    pub no_direct_calls: bool,
    /// OCI registry settings (boxed: they are many, and the command enum stays small).
    #[command(flatten)]
    pub oci: Box<OciArgs>,
    /// Which signed components run (see docs/signing.md).
    #[command(flatten)]
    pub signing: Box<crate::claims_cmds::HostSigningArgs>,
    /// Traces, metrics and logs (see docs/observability.md).
    #[command(flatten)]
    pub telemetry: Box<crate::telemetry_args::TelemetryArgs>,
}

/// OCI flags of `trellis host`.
#[derive(Debug, clap::Args)]
pub struct OciArgs {
    /// Accept `:latest` and untagged OCI refs (refused by default: what they name can change
    /// between two hosts' pulls).
    #[arg(long, env = "TRELLIS_ALLOW_LATEST")]
    pub allow_latest: bool,
    /// Registries (`host:port`, comma-separated or repeated) reached over plain HTTP instead
    /// of HTTPS.
    #[arg(
        long,
        env = "TRELLIS_ALLOWED_INSECURE",
        value_delimiter = ',',
        value_name = "REGISTRY"
    )]
    pub allowed_insecure: Vec<String>,
    /// Pull from MIRROR before REGISTRY, falling back to REGISTRY (repeatable), e.g.
    /// `ghcr.io=mirror.local:5000`.
    #[arg(
        long = "registry-mirror",
        env = "TRELLIS_REGISTRY_MIRRORS",
        value_delimiter = ',',
        value_name = "REGISTRY=MIRROR",
        value_parser = trellis_host::oci::parse_mirror
    )]
    pub registry_mirrors: Vec<(String, String)>,
    /// PEM file of extra CA certificates trusted for OCI registries.
    #[arg(long, env = "TRELLIS_OCI_CA_FILE", value_name = "PEM")]
    pub oci_ca_file: Option<PathBuf>,
    /// Directory of pulled components, shared by the hosts of this machine (default:
    /// `<--cache-dir>/oci` when --cache-dir is set, else ~/.cache/trellis/oci).
    #[arg(long, env = "TRELLIS_OCI_CACHE_DIR", value_name = "DIR")]
    pub oci_cache_dir: Option<PathBuf>,
    /// Size bound of that directory in MiB; the least recently used components go first.
    #[arg(
        long,
        env = "TRELLIS_OCI_CACHE_MAX_MB",
        default_value_t = DEFAULT_OCI_CACHE_MAX_MB,
        value_parser = clap::value_parser!(u64).range(1..),
        value_name = "MIB"
    )]
    pub oci_cache_max_mb: u64,
}

/// The default of `--oci-cache-max-mb`.
const DEFAULT_OCI_CACHE_MAX_MB: u64 =
    trellis_host::oci::DEFAULT_OCI_CACHE_MAX_BYTES / (1024 * 1024);

/// The default of `--max-component-size-mb`: the host's default cap, in MiB.
const DEFAULT_MAX_COMPONENT_SIZE_MB: u64 =
    trellis_host::runtime::DEFAULT_MAX_COMPONENT_BYTES / (1024 * 1024);

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("label `{s}` must look like key=value")),
    }
}

/// Labels from `TRELLIS_LABEL_<key>=value` variables.
fn env_labels() -> BTreeMap<String, String> {
    std::env::vars()
        .filter_map(|(k, v)| {
            k.strip_prefix("TRELLIS_LABEL_")
                .filter(|key| !key.is_empty())
                .map(|key| (key.to_string(), v))
        })
        .collect()
}

/// Runs a host until it is told to stop, then stops it cleanly.
pub async fn run(args: HostArgs) -> anyhow::Result<()> {
    // Flushed and stopped when dropped, after the host has stopped.
    let _telemetry = trellis_telemetry::init(args.telemetry.config("trellis-host"), "info").await?;
    let mut labels = env_labels();
    labels.extend(args.labels.iter().cloned());
    let mut host_seed = args.host_seed.clone();
    if let (None, Some(dir)) = (&host_seed, &args.data_dir) {
        let (key, created) = crate::seed_files::read_or_generate(
            &dir.join("host.nk"),
            Some(nkeys::KeyPair::new_server),
        )
        .context("cannot keep this host's identity in its data directory (--data-dir)")?;
        if created {
            tracing::info!(host_id = %key.public_key(), "made a new host identity, kept in {}", dir.display());
        }
        host_seed = Some(key.seed().context("cannot read the host's seed")?);
    }
    let mut config = HostConfig {
        nats: NatsOptions {
            url: args.nats_url.clone(),
            auth: args.nats_auth.clone(),
            client_name: String::new(),
        },
        lattice: args.lattice.clone(),
        labels,
        host_seed,
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms.max(100)),
        allow_file_load: args.allow_file_load,
        mount_roots: args.allow_mounts.clone(),
        max_component_bytes: args.max_component_size_mb * 1024 * 1024,
        cache_dir: args.cache_dir.clone(),
        colocation: !args.disable_colocation,
        direct_listen: (!args.no_direct_calls).then_some(args.direct_listen),
        direct_advertise: args.direct_advertise.clone(),
        claims_policy: args.signing.claims_policy(),
        policy: args.signing.policy(),
        secrets_topic: args.secrets_topic.clone(),
        jetstream: args.jetstream.clone(),
        data_dir: args.data_dir.clone(),
        ..HostConfig::default()
    };
    // OCI pulls (registries, cache, mirrors) for every runtime this process builds.
    trellis_host::oci::install_process_config(trellis_host::oci::OciConfig {
        allow_latest: args.oci.allow_latest,
        allowed_insecure: args.oci.allowed_insecure.clone(),
        mirrors: args.oci.registry_mirrors.clone(),
        ca_file: args.oci.oci_ca_file.clone(),
        cache_dir: args.oci.oci_cache_dir.clone(),
        cache_max_bytes: Some(args.oci.oci_cache_max_mb.saturating_mul(1024 * 1024)),
        docker_config: None,
    });
    // Built-in capabilities (logging, config, keyvalue, messaging) and providers.
    config.capabilities = trellis_providers::native::capabilities(&config.host_slot);
    if !args.secret_files.is_empty() {
        // Files add to what manifests' references bring (those are looked up first).
        let secrets = trellis_providers::secrets::StaticSecrets::from_files(&args.secret_files)?;
        config
            .capabilities
            .retain(|capability| capability.name() != "wasmcloud:secrets");
        config.capabilities.push(Arc::new(
            trellis_providers::secrets::SecretsCapability::for_host(
                &config.host_slot,
                Arc::new(secrets),
            ),
        ));
    }
    config.provider_launcher = Some(Arc::new(trellis_providers::Launcher::new()));
    let mut handle = HostHandle::start(config)
        .await
        .context("the host could not start")?;
    // Components on this host answer HTTP requests forwarded over the lattice; the task stops
    // with the host (aborted before the clean stop below).
    let lattice_http = tokio::spawn(trellis_providers::serve_components_over_lattice(
        handle.host().clone(),
    ));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let timeout = tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received; stopping");
            trellis_host::host::DEFAULT_STOP_TIMEOUT
        }
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM received; stopping");
            trellis_host::host::DEFAULT_STOP_TIMEOUT
        }
        timeout = handle.stop_requested() => {
            tracing::info!(?timeout, "stop requested over the control interface");
            timeout
        }
    };
    lattice_http.abort();
    handle.stop(timeout).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("zone=a").unwrap(),
            ("zone".to_string(), "a".to_string())
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
    }
}
