//! Publishing lattice events (CloudEvents 1.0 JSON on `wasmbus.evt.{lattice}.{name}`).

use serde::Serialize;
use trellis_protocol::events::CloudEvent;
use trellis_protocol::subjects;

/// Publishes this host's events. Cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    client: async_nats::Client,
    lattice: String,
    host_id: String,
}

impl EventPublisher {
    /// A publisher for `host_id` in `lattice`.
    pub fn new(client: async_nats::Client, lattice: &str, host_id: &str) -> Self {
        Self {
            client,
            lattice: lattice.to_string(),
            host_id: host_id.to_string(),
        }
    }

    /// Publishes event `name` with `data`. Events are fire-and-forget: a failure (NATS down) is
    /// logged, never returned, because state lives in KV and heartbeats, not in events.
    pub async fn publish(&self, name: &str, data: impl Serialize) {
        if let Some(payload) = self.encode(name, data) {
            self.publish_encoded(name, payload).await;
        }
    }

    /// The CloudEvent `name` with `data` as it goes on the wire (to check its size before
    /// publishing); `None` (logged) when it cannot be encoded.
    pub fn encode(&self, name: &str, data: impl Serialize) -> Option<Vec<u8>> {
        let data = match serde_json::to_value(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(event = name, error = %e, "cannot encode event data");
                return None;
            }
        };
        let event = CloudEvent::new(name, &self.host_id, data);
        match serde_json::to_vec(&event) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(event = name, error = %e, "cannot encode event");
                None
            }
        }
    }

    /// Publishes an event encoded by [`EventPublisher::encode`].
    pub async fn publish_encoded(&self, name: &str, payload: Vec<u8>) {
        let subject = subjects::event(&self.lattice, name);
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::warn!(event = name, error = %e, "cannot publish event");
        }
    }

    /// Waits until published events have reached the server (used before exiting).
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "cannot flush events to NATS");
        }
    }
}
