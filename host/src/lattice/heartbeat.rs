//! Heartbeats: the whole inventory every interval, and at once after a reconnect so the
//! lattice relearns this host's state as soon as NATS is back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use trellis_protocol::events::names;

use crate::host::Host;
use crate::lattice::connection::ConnectionEvent;

/// Publishes `host_heartbeat` every `interval` and after every reconnect, until dropped.
pub async fn run(
    host: Arc<Host>,
    interval: Duration,
    mut connection: mpsc::UnboundedReceiver<ConnectionEvent>,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection_open = true;
    // The first `Connected` is the initial connection, not a reconnect.
    let mut was_disconnected = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            event = connection.recv(), if connection_open => match event {
                Some(ConnectionEvent::Connected) if was_disconnected => {
                    was_disconnected = false;
                    tracing::info!("reconnected to NATS; republishing host state");
                    ticker.reset();
                }
                Some(ConnectionEvent::Connected) => continue,
                Some(ConnectionEvent::Disconnected) => {
                    was_disconnected = true;
                    continue;
                }
                None => { connection_open = false; continue; }
            },
        }
        host.events
            .publish(names::HOST_HEARTBEAT, host.inventory())
            .await;
    }
}
