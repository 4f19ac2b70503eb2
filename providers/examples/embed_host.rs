//! Embedding a Trellis host in another Rust program: the `trellis-host` crate runs the host,
//! `trellis-providers` brings the built-in capabilities and providers (leave them out, or
//! add your own, as your program needs).
//!
//! ```text
//! cargo run --example embed_host -- nats://127.0.0.1:4222 default
//! ```
//!
//! It joins the lattice (NATS with JetStream, e.g. `nats-server -js`), prints its host id on
//! stdout, and runs until Ctrl-C, a line on stdin, or stdin closing. Meanwhile the host takes
//! control commands like any other (`trellis` CLI, wadm). See docs/extending.md.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;
use trellis_host::lattice::connection::NatsOptions;
use trellis_host::{HostConfig, HostHandle};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let nats_url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    let lattice = args.next().unwrap_or_else(|| "default".to_string());

    let mut config = HostConfig {
        nats: NatsOptions {
            url: nats_url,
            client_name: "embedded-trellis-host".to_string(),
            ..Default::default()
        },
        lattice,
        labels: [("embedded".to_string(), "true".to_string())].into(),
        // Components may be loaded from local files (`file://...`), as in development.
        allow_file_load: true,
        ..HostConfig::default()
    };
    // Host functions every component can import (logging, config, keyvalue, messaging,
    // blobstore, outgoing HTTP, secrets). A capability of your own is one more
    // `Arc<dyn trellis_host::runtime::Capability>` in this list.
    config.capabilities = trellis_providers::native::capabilities(&config.host_slot);
    // What `provider.start` may start (HTTP server, timer, ...).
    config.provider_launcher = Some(Arc::new(trellis_providers::Launcher::new()));

    let handle = HostHandle::start(config).await?;
    println!("host {} started", handle.host().identity.host_id);
    // Components here answer HTTP requests that an http-server on another host forwards.
    let lattice_http = tokio::spawn(trellis_providers::serve_components_over_lattice(
        handle.host().clone(),
    ));

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin.next_line() => {}
    }
    lattice_http.abort();
    handle.stop(Duration::from_secs(5)).await;
    println!("host stopped");
    Ok(())
}
