//! `trellis secrets serve`: run the built-in `nats-kv` secrets backend until SIGINT or SIGTERM.
//!
//! Its two keys are xkey seeds read from files (`--transit-seed-file`,
//! `--encryption-seed-file`) or from the environment (`TRELLIS_SECRETS_TRANSIT_SEED`,
//! `TRELLIS_SECRETS_ENCRYPTION_SEED`, or wasmCloud's `TRANSIT_XKEY_SEED`,
//! `ENCRYPTION_XKEY_SEED`), never from the command line, where `ps` would show them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use nkeys::XKey;
use trellis_protocol::nats::NatsAuth;
use trellis_protocol::secrets::DEFAULT_TOPIC_PREFIX;
use trellis_secrets::server::{DEFAULT_BACKEND_NAME, DEFAULT_BUCKET};
use trellis_secrets::{Backend, BackendConfig};

/// Transit seed, by value.
pub const ENV_TRANSIT_SEED: &str = "TRELLIS_SECRETS_TRANSIT_SEED";
/// Encryption seed, by value.
pub const ENV_ENCRYPTION_SEED: &str = "TRELLIS_SECRETS_ENCRYPTION_SEED";
/// wasmCloud's name of the transit seed variable.
pub const ENV_WASMCLOUD_TRANSIT_SEED: &str = "TRANSIT_XKEY_SEED";
/// wasmCloud's name of the encryption seed variable.
pub const ENV_WASMCLOUD_ENCRYPTION_SEED: &str = "ENCRYPTION_XKEY_SEED";
/// Every variable naming a backend seed or seed file: a parent clears them on a child before
/// handing down its own.
pub const SEED_ENV_VARS: [&str; 7] = [
    ENV_TRANSIT_SEED,
    ENV_ENCRYPTION_SEED,
    ENV_WASMCLOUD_TRANSIT_SEED,
    ENV_WASMCLOUD_ENCRYPTION_SEED,
    "TRELLIS_SECRETS_TRANSIT_SEED_FILE",
    "TRELLIS_SECRETS_ENCRYPTION_SEED_FILE",
    "TRELLIS_SECRETS_ADMIN_SEED_FILE",
];

/// `trellis secrets ...`.
#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SecretsCommand {
    /// Run the built-in nats-kv secrets backend (wasmCloud's secrets protocol; `trellis up`
    /// runs one)
    Serve(ServeArgs),
}

/// Flags of `trellis secrets serve`. Each has a `TRELLIS_*` environment fallback.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  TRELLIS_SECRETS_TRANSIT_SEED=SX... TRELLIS_SECRETS_ENCRYPTION_SEED=SX... \\
    trellis secrets serve --admin-xkey XA...
  trellis secrets serve --transit-seed-file transit.xk --encryption-seed-file enc.xk \\
    --admin-seed-file admin.xk --lattice edge

The encryption seed seals every stored value: back it up; without it the values are lost.
Seeds are never accepted on the command line (wasmCloud's TRANSIT_XKEY_SEED and
ENCRYPTION_XKEY_SEED variables work too).")]
pub struct ServeArgs {
    /// NATS server of the lattice.
    #[arg(
        long,
        env = "TRELLIS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Lattice whose reconciler says which applications are deployed.
    #[arg(long, env = "TRELLIS_LATTICE", default_value = "default")]
    pub lattice: String,
    /// NATS authentication and TLS (--nats-creds, --nats-seed, --nats-user...).
    #[command(flatten)]
    pub nats_auth: NatsAuth,
    /// The backend's name: the `backend` of the secret policies it serves.
    #[arg(long, env = "TRELLIS_SECRETS_BACKEND", default_value = DEFAULT_BACKEND_NAME)]
    pub name: String,
    /// Subject prefix of the secrets protocol.
    #[arg(long, env = "TRELLIS_SECRETS_TOPIC_PREFIX", default_value = DEFAULT_TOPIC_PREFIX)]
    pub topic_prefix: String,
    /// JetStream KV bucket of the sealed values.
    #[arg(long, env = "TRELLIS_SECRETS_BUCKET", default_value = DEFAULT_BUCKET)]
    pub bucket: String,
    /// File holding the transit xkey seed [else TRELLIS_SECRETS_TRANSIT_SEED or TRANSIT_XKEY_SEED]
    #[arg(long, env = "TRELLIS_SECRETS_TRANSIT_SEED_FILE", value_name = "FILE")]
    pub transit_seed_file: Option<PathBuf>,
    /// File holding the encryption xkey seed [else TRELLIS_SECRETS_ENCRYPTION_SEED or ENCRYPTION_XKEY_SEED]
    #[arg(
        long,
        env = "TRELLIS_SECRETS_ENCRYPTION_SEED_FILE",
        value_name = "FILE"
    )]
    pub encryption_seed_file: Option<PathBuf>,
    /// Public xkey (`X...`) allowed to put, list, delete and map secrets (repeatable)
    #[arg(
        long = "admin-xkey",
        env = "TRELLIS_SECRETS_ADMIN_XKEYS",
        value_delimiter = ',',
        value_name = "PUBLIC"
    )]
    pub admin_xkeys: Vec<String>,
    /// File holding an admin xkey seed; its public key is allowed as with --admin-xkey
    #[arg(long, env = "TRELLIS_SECRETS_ADMIN_SEED_FILE", value_name = "FILE")]
    pub admin_seed_file: Option<PathBuf>,
    /// How long to wait for the reconciler's answer, in milliseconds.
    #[arg(long, env = "TRELLIS_SECRETS_WADM_TIMEOUT_MS", default_value_t = 3000)]
    pub wadm_timeout_ms: u64,
}

/// Runs `trellis secrets ...`.
pub async fn run(args: SecretsArgs) -> anyhow::Result<()> {
    match args.command {
        SecretsCommand::Serve(args) => serve(args).await,
    }
}

/// A seed from `file`, else the first variable of `vars` that is set; `what` names the key in
/// errors, which never show a seed.
fn load_seed(file: Option<&PathBuf>, vars: [&str; 2], what: &str) -> anyhow::Result<XKey> {
    if let Some(file) = file {
        let (key, _) = crate::seed_files::read_or_generate_xkey(file, false)?;
        return Ok(key);
    }
    for var in vars {
        if let Some(value) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            return XKey::from_seed(value.trim())
                .map_err(|_| anyhow::anyhow!("{var} does not hold a valid xkey seed (SX...)"));
        }
    }
    bail!(
        "no {what} xkey seed: give --{what}-seed-file FILE, or set {} (or {}); make one with \
         `trellis up` (it keeps them in <data-dir>/auth) or any xkey tool",
        vars[0],
        vars[1]
    )
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();

    let transit = load_seed(
        args.transit_seed_file.as_ref(),
        [ENV_TRANSIT_SEED, ENV_WASMCLOUD_TRANSIT_SEED],
        "transit",
    )?;
    let encryption = load_seed(
        args.encryption_seed_file.as_ref(),
        [ENV_ENCRYPTION_SEED, ENV_WASMCLOUD_ENCRYPTION_SEED],
        "encryption",
    )?;
    let mut admin_keys = BTreeSet::new();
    for key in args
        .admin_xkeys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
    {
        if XKey::from_public_key(key).is_err() {
            bail!("--admin-xkey {key:?} is not a public xkey (X...)");
        }
        admin_keys.insert(key.to_string());
    }
    if let Some(file) = &args.admin_seed_file {
        let (key, _) = crate::seed_files::read_or_generate_xkey(file, false)?;
        admin_keys.insert(key.public_key());
    }
    if admin_keys.is_empty() {
        tracing::warn!(
            "no admin xkey configured (--admin-xkey or --admin-seed-file): every put, delete \
             and mapping request will be refused"
        );
    }

    let (url, options) = args.nats_auth.connect_options(&args.nats_url).await?;
    let client = options
        .name(format!("trellis-secrets-{}", args.name))
        .connect(trellis_protocol::nats::server_list(&url))
        .await
        .map_err(|e| trellis_protocol::nats::connect_error(&args.nats_url, e, ""))?;
    let backend = Backend::new(
        client,
        BackendConfig {
            name: args.name,
            topic_prefix: args.topic_prefix,
            bucket: args.bucket,
            lattice: args.lattice,
            transit,
            encryption,
            admin_keys,
            wadm_timeout: Duration::from_millis(args.wadm_timeout_ms.max(100)),
        },
    )
    .await
    .context("cannot start the secrets backend")?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    backend.serve(shutdown).await
}
