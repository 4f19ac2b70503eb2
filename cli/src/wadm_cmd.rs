//! `trellis wadm`: run the reconciler until SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context;
use trellis_wadm::WadmOptions;

/// Flags of `trellis wadm`. Each has a `TRELLIS_*` environment fallback.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis wadm --nats-url nats://127.0.0.1:4222 --lattice default
  TRELLIS_LATTICE=edge trellis wadm        # several may run: one leads, all serve the API")]
pub struct WadmArgs {
    /// NATS server of the lattice.
    #[arg(
        long,
        env = "TRELLIS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Lattice to reconcile.
    #[arg(long, env = "TRELLIS_LATTICE", default_value = "default")]
    pub lattice: String,
    /// NATS authentication and TLS (--nats-creds, --nats-seed, --nats-user...).
    #[command(flatten)]
    pub nats_auth: trellis_protocol::nats::NatsAuth,
    /// Control-interface subject prefix.
    #[arg(long, env = "TRELLIS_CTL_PREFIX", default_value = "wasmbus.ctl")]
    pub ctl_prefix: String,
    /// A host silent this many milliseconds is considered gone and its work moves elsewhere
    /// (three missed 2 s heartbeats by default).
    #[arg(long, env = "TRELLIS_HOST_DEAD_AFTER_MS", default_value_t = 6000)]
    pub host_dead_after_ms: u64,
    /// Period of the reconcile tick in milliseconds.
    #[arg(long, env = "TRELLIS_RECONCILE_TICK_MS", default_value_t = 500)]
    pub tick_ms: u64,
    /// Largest manifest `model.put` accepts, in bytes. What can be stored is also bounded by
    /// the NATS server's max_payload (1 MiB by default).
    #[arg(
        long,
        env = "TRELLIS_WADM_MAX_MANIFEST_BYTES",
        default_value_t = trellis_wadm::limits::DEFAULT_MAX_MANIFEST_BYTES
    )]
    pub max_manifest_bytes: usize,
    /// Where the manifests live in JetStream (--js-domain, --kv-replicas).
    #[command(flatten)]
    pub jetstream: trellis_protocol::jetstream::JetStreamPlacement,
    /// Traces, metrics and logs (see docs/observability.md).
    #[command(flatten)]
    pub telemetry: crate::telemetry_args::TelemetryArgs,
}

/// Runs the reconciler until SIGINT or SIGTERM.
pub async fn run(args: WadmArgs) -> anyhow::Result<()> {
    // Flushed and stopped when dropped, after the reconciler has stopped.
    let _telemetry = trellis_telemetry::init(args.telemetry.config("trellis-wadm"), "info").await?;

    let mut opts = WadmOptions::new(args.nats_url, args.lattice);
    opts.nats_auth = args.nats_auth;
    opts.ctl_prefix = args.ctl_prefix;
    opts.host_dead_after = Duration::from_millis(args.host_dead_after_ms.max(100));
    opts.tick = Duration::from_millis(args.tick_ms.max(50));
    opts.manifest_limits.max_bytes = args.max_manifest_bytes;
    opts.jetstream = args.jetstream;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    trellis_wadm::run(opts, shutdown).await
}
