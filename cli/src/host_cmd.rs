//! `trellis host`: run one host.

/// Flags of `trellis host`.
#[derive(Debug, clap::Args)]
pub struct HostArgs {}

/// Runs a host until it is told to stop.
pub async fn run(_args: HostArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
