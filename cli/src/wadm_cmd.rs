//! `trellis wadm`: run the reconciler.

/// Flags of `trellis wadm`.
#[derive(Debug, clap::Args)]
pub struct WadmArgs {}

/// Runs the reconciler until it is told to stop.
pub async fn run(_args: WadmArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
