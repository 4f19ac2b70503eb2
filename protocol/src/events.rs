//! Lattice events: CloudEvents 1.0 in JSON, as wasmCloud 1.x publishes them.
//!
//! Each event travels on `wasmbus.evt.{lattice}.{name}` (see [`crate::subjects::event`]) with
//! `type` = `com.wasmcloud.lattice.{name}` and `source` = the publishing host's id.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `type` prefix of every lattice event.
pub const EVENT_TYPE_PREFIX: &str = "com.wasmcloud.lattice.";

/// Event names, as they appear in subjects and (after [`EVENT_TYPE_PREFIX`]) in `type`.
pub mod names {
    /// A host joined the lattice.
    pub const HOST_STARTED: &str = "host_started";
    /// A host left the lattice cleanly.
    pub const HOST_STOPPED: &str = "host_stopped";
    /// Periodic liveness, carrying the whole inventory.
    pub const HOST_HEARTBEAT: &str = "host_heartbeat";
    /// A component's instance count changed (0 means stopped).
    pub const COMPONENT_SCALED: &str = "component_scaled";
    /// Scaling a component failed; `error` says why.
    pub const COMPONENT_SCALE_FAILED: &str = "component_scale_failed";
    /// A provider started.
    pub const PROVIDER_STARTED: &str = "provider_started";
    /// A provider failed to start; `error` says why.
    pub const PROVIDER_START_FAILED: &str = "provider_start_failed";
    /// A provider stopped.
    pub const PROVIDER_STOPPED: &str = "provider_stopped";
    /// A provider health check passed after failing.
    pub const HEALTH_CHECK_PASSED: &str = "health_check_passed";
    /// A provider health check failed.
    pub const HEALTH_CHECK_FAILED: &str = "health_check_failed";
    /// Periodic provider health.
    pub const HEALTH_CHECK_STATUS: &str = "health_check_status";
    /// A link was stored.
    pub const LINKDEF_SET: &str = "linkdef_set";
    /// A link was refused.
    pub const LINKDEF_SET_FAILED: &str = "linkdef_set_failed";
    /// A link was deleted.
    pub const LINKDEF_DELETED: &str = "linkdef_deleted";
    /// A named config was stored.
    pub const CONFIG_SET: &str = "config_set";
    /// A named config was deleted.
    pub const CONFIG_DELETED: &str = "config_deleted";
    /// A host's labels changed.
    pub const LABELS_CHANGED: &str = "labels_changed";
}

/// A CloudEvents 1.0 envelope in structured JSON mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event.
    pub id: String,
    /// `com.wasmcloud.lattice.{name}`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The publishing host's id.
    pub source: String,
    /// RFC 3339 time of publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Always `application/json` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The event's data.
    #[serde(default)]
    pub data: Value,
}

impl CloudEvent {
    /// A new event named `name` (see [`names`]) from `source` carrying `data`.
    pub fn new(name: &str, source: &str, data: Value) -> Self {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        Self {
            specversion: "1.0".to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            event_type: format!("{EVENT_TYPE_PREFIX}{name}"),
            source: source.to_string(),
            time,
            datacontenttype: Some("application/json".to_string()),
            data,
        }
    }

    /// The short event name (`host_started`), or the whole type when it is not a lattice event.
    pub fn name(&self) -> &str {
        self.event_type
            .strip_prefix(EVENT_TYPE_PREFIX)
            .unwrap_or(&self.event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_with_type_field() {
        let ev = CloudEvent::new(names::HOST_STARTED, "NABC", serde_json::json!({"a": 1}));
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], "com.wasmcloud.lattice.host_started");
        assert_eq!(json["specversion"], "1.0");
        let back: CloudEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.name(), "host_started");
    }
}
