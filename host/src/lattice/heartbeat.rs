//! Heartbeats: the whole inventory every interval, and at once after a reconnect so the
//! lattice relearns this host's state as soon as NATS is back.
//!
//! A heartbeat never exceeds the server's `max_payload` (NATS would refuse it, and the lattice
//! would take this live host for dead): when the whole inventory does not fit, the heartbeat
//! carries the inventory without its component and provider lists, flagged
//! `inventory_truncated` with their counts, and a warning is logged (at most every
//! [`OVERSIZE_WARN_INTERVAL`]). Readers then keep what they knew and page `host.get`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trellis_protocol::events::names;

use crate::host::Host;
use crate::lattice::connection::{self, ConnectionEvent};

/// The shortest time between two warnings about an oversized inventory.
pub const OVERSIZE_WARN_INTERVAL: Duration = Duration::from_secs(600);

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
    let mut oversize = OversizeWarning::default();
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
        if let Some(payload) = heartbeat_payload(&host, &mut oversize) {
            host.events
                .publish_encoded(names::HOST_HEARTBEAT, payload)
                .await;
        }
    }
}

/// The heartbeat to publish: the whole inventory when it fits one message, else the summary.
fn heartbeat_payload(host: &Host, oversize: &mut OversizeWarning) -> Option<Vec<u8>> {
    let max = connection::max_payload(&host.client);
    let full = host
        .events
        .encode(names::HOST_HEARTBEAT, host.inventory())?;
    if full.len() <= max {
        if oversize.fits_again() {
            tracing::info!("the heartbeat carries this host's whole inventory again");
        }
        return Some(full);
    }
    let summary = host
        .events
        .encode(names::HOST_HEARTBEAT, host.inventory_summary())?;
    let fits = summary.len() <= max;
    if oversize.should_warn(Instant::now()) {
        if fits {
            tracing::warn!(
                inventory_bytes = full.len(),
                max_payload = max,
                "this host's inventory ({} bytes) does not fit one NATS message (max_payload {max}): \
                 heartbeats carry counts only (inventory_truncated); page `host.get` with \
                 {{\"offset\":0}} to list it, or raise the server's max_payload",
                full.len()
            );
        } else {
            tracing::error!(
                summary_bytes = summary.len(),
                max_payload = max,
                "even a heartbeat without the inventory lists is {} bytes, over the NATS \
                 max_payload {max}: no heartbeat is sent, so the lattice will take this host for \
                 dead; raise the server's max_payload",
                summary.len()
            );
        }
    }
    fits.then_some(summary)
}

/// Rate-limits the warning about an inventory too big for one heartbeat.
#[derive(Debug, Default)]
struct OversizeWarning {
    last: Option<Instant>,
}

impl OversizeWarning {
    /// True when the warning should be logged now (first time, or after the interval).
    fn should_warn(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= OVERSIZE_WARN_INTERVAL);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// Records that the inventory fits again; true when it did not before.
    fn fits_again(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_warnings_are_rate_limited() {
        let mut w = OversizeWarning::default();
        let t0 = Instant::now();
        assert!(w.should_warn(t0));
        assert!(!w.should_warn(t0 + Duration::from_secs(1)));
        assert!(w.should_warn(t0 + OVERSIZE_WARN_INTERVAL));
        assert!(w.fits_again());
        assert!(!w.fits_again());
        assert!(w.should_warn(t0 + OVERSIZE_WARN_INTERVAL + Duration::from_secs(1)));
    }
}
