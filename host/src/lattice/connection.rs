//! The host's NATS connection: authentication, TLS, and reconnecting forever.

use std::time::Duration;

use tokio::sync::mpsc;
use trellis_protocol::nats::NatsAuth;

/// How to reach and authenticate to NATS. Its `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct NatsOptions {
    /// Server URL, e.g. `nats://127.0.0.1:4222` (a `user:password@` in it is used, and never
    /// shown: see [`trellis_protocol::nats::redact_url`]).
    pub url: String,
    /// Authentication and TLS, shared by every Trellis process.
    pub auth: NatsAuth,
    /// The client name shown by the server.
    pub client_name: String,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &trellis_protocol::nats::redact_url(&self.url))
            .field("auth", &self.auth)
            .field("client_name", &self.client_name)
            .finish()
    }
}

/// Connection state changes the host reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// (Re)connected to a server.
    Connected,
    /// Lost the connection; the client keeps trying.
    Disconnected,
}

/// Connects with unlimited reconnects, so a NATS restart never kills the host. Connection state
/// changes arrive on the returned receiver.
pub async fn connect(
    opts: &NatsOptions,
) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<ConnectionEvent>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    // A `Connected` after a `Disconnected` is a reconnection (counted in the metrics).
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, options) = opts.auth.connect_options(&opts.url).await?;
    let options = options
        .name(&opts.client_name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        // A short, capped back-off: a restarted NATS server is rejoined within a second or two.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(1_000))
        })
        .event_callback(move |event| {
            let tx = tx.clone();
            let lost = lost.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
                            trellis_telemetry::metrics::record_nats_reconnect();
                        }
                        tracing::info!("connected to NATS");
                        let _ = tx.send(ConnectionEvent::Connected);
                    }
                    async_nats::Event::Disconnected => {
                        lost.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!("lost the NATS connection; reconnecting");
                        let _ = tx.send(ConnectionEvent::Disconnected);
                    }
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        });
    let client = options.connect(trellis_protocol::nats::server_list(&url)).await.map_err(|e| {
        trellis_protocol::nats::connect_error(
            &opts.url,
            e,
            ": is nats-server running there? (start one with `nats-server -js`, or use `trellis up`)",
        )
    })?;
    Ok((client, rx))
}

/// What NATS' `max_payload` is when the server has not said yet: the server default, 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The largest message the connected server accepts (its `max_payload`), or
/// [`DEFAULT_MAX_PAYLOAD`] before the server has said.
pub fn max_payload(client: &async_nats::Client) -> usize {
    match client.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        max => max,
    }
}
