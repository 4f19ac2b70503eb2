//! `trellis`: one binary for the whole product (host, reconciler, providers, operator CLI),
//! which keeps installs on edge devices to a single file.

mod host_cmd;
mod wadm_cmd;

use clap::{Parser, Subcommand};

/// Trellis: a lattice host for WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a host: join a lattice over NATS and run components and providers.
    Host(host_cmd::HostArgs),
    /// Run the reconciler: keep deployed OAM applications in their declared state.
    Wadm(wadm_cmd::WadmArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Host(args) => host_cmd::run(args).await,
            Command::Wadm(args) => wadm_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
