//! NATS subjects of the control interface and of lattice events.
//!
//! Control subjects are `{prefix}.v1.{lattice}.{operation}` with the default prefix
//! `wasmbus.ctl`; events are published on `wasmbus.evt.{lattice}.{event_name}`.

/// The default control-interface subject prefix, as in wasmCloud 1.x.
pub const DEFAULT_CTL_PREFIX: &str = "wasmbus.ctl";
/// The default lattice name.
pub const DEFAULT_LATTICE: &str = "default";
/// The queue group that spreads lattice-wide requests (links, config, claims) over hosts.
pub const CTL_QUEUE_GROUP: &str = "trellis-ctl";

/// Builds control-interface subjects for one lattice.
#[derive(Debug, Clone)]
pub struct CtlSubjects {
    base: String,
}

impl CtlSubjects {
    /// Subjects for `lattice` under the default prefix.
    pub fn new(lattice: &str) -> Self {
        Self::with_prefix(DEFAULT_CTL_PREFIX, lattice)
    }

    /// Subjects for `lattice` under a custom prefix.
    pub fn with_prefix(prefix: &str, lattice: &str) -> Self {
        Self {
            base: format!("{prefix}.v1.{lattice}"),
        }
    }

    /// `{prefix}.v1.{lattice}`: every control subject starts with this.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A subject for an operation such as `host.ping` or `component.scale.{host}`.
    pub fn op(&self, operation: &str) -> String {
        format!("{}.{operation}", self.base)
    }

    /// `host.ping`, answered by every host.
    pub fn host_ping(&self) -> String {
        self.op("host.ping")
    }
    /// `host.get.{host}`: one host's inventory.
    pub fn host_get(&self, host_id: &str) -> String {
        self.op(&format!("host.get.{host_id}"))
    }
    /// `host.stop.{host}`.
    pub fn host_stop(&self, host_id: &str) -> String {
        self.op(&format!("host.stop.{host_id}"))
    }
    /// `component.scale.{host}`.
    pub fn component_scale(&self, host_id: &str) -> String {
        self.op(&format!("component.scale.{host_id}"))
    }
    /// `component.update.{host}`.
    pub fn component_update(&self, host_id: &str) -> String {
        self.op(&format!("component.update.{host_id}"))
    }
    /// `component.auction`, answered by every host whose labels match.
    pub fn component_auction(&self) -> String {
        self.op("component.auction")
    }
    /// `provider.auction`, answered by every host whose labels match.
    pub fn provider_auction(&self) -> String {
        self.op("provider.auction")
    }
    /// `provider.start.{host}`.
    pub fn provider_start(&self, host_id: &str) -> String {
        self.op(&format!("provider.start.{host_id}"))
    }
    /// `provider.stop.{host}`.
    pub fn provider_stop(&self, host_id: &str) -> String {
        self.op(&format!("provider.stop.{host_id}"))
    }
    /// `label.put.{host}`.
    pub fn label_put(&self, host_id: &str) -> String {
        self.op(&format!("label.put.{host_id}"))
    }
    /// `label.del.{host}`.
    pub fn label_del(&self, host_id: &str) -> String {
        self.op(&format!("label.del.{host_id}"))
    }
    /// `config.put.{name}`.
    pub fn config_put(&self, name: &str) -> String {
        self.op(&format!("config.put.{name}"))
    }
    /// `config.get.{name}`.
    pub fn config_get(&self, name: &str) -> String {
        self.op(&format!("config.get.{name}"))
    }
    /// `config.del.{name}`.
    pub fn config_del(&self, name: &str) -> String {
        self.op(&format!("config.del.{name}"))
    }
    /// `link.put`.
    pub fn link_put(&self) -> String {
        self.op("link.put")
    }
    /// `link.del`.
    pub fn link_del(&self) -> String {
        self.op("link.del")
    }
    /// `link.get`.
    pub fn link_get(&self) -> String {
        self.op("link.get")
    }
    /// `claims.get`.
    pub fn claims_get(&self) -> String {
        self.op("claims.get")
    }
    /// `registry.put`: every host takes the registry credentials it carries.
    pub fn registry_put(&self) -> String {
        self.op("registry.put")
    }
}

/// The subject an event named `event_name` is published on in `lattice`.
pub fn event(lattice: &str, event_name: &str) -> String {
    format!("wasmbus.evt.{lattice}.{event_name}")
}

/// A wildcard subject matching every event of `lattice`.
pub fn all_events(lattice: &str) -> String {
    format!("wasmbus.evt.{lattice}.>")
}

/// The JetStream KV bucket holding links (and, as in wasmCloud, component specs) of a lattice.
pub fn lattice_data_bucket(lattice: &str) -> String {
    format!("LATTICEDATA_{lattice}")
}

/// The JetStream KV bucket holding the named configs of a lattice.
pub fn config_data_bucket(lattice: &str) -> String {
    format!("CONFIGDATA_{lattice}")
}

/// True when `token` can stand as one NATS subject token of at most
/// [`crate::limits::MAX_ID_BYTES`]: not empty, no `.`, `*`, `>` or whitespace. Host ids, config
/// names and lattice names all must pass this ([`crate::limits::check_token`] says why not).
pub fn is_valid_token(token: &str) -> bool {
    crate::limits::check_token("token", token, crate::limits::MAX_ID_BYTES).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_wasmcloud_layout() {
        let s = CtlSubjects::new("default");
        assert_eq!(s.host_ping(), "wasmbus.ctl.v1.default.host.ping");
        assert_eq!(
            s.component_scale("NABC"),
            "wasmbus.ctl.v1.default.component.scale.NABC"
        );
        assert_eq!(s.config_get("c1"), "wasmbus.ctl.v1.default.config.get.c1");
        assert_eq!(
            event("default", "host_started"),
            "wasmbus.evt.default.host_started"
        );
    }

    #[test]
    fn tokens_reject_wildcards_and_dots() {
        assert!(is_valid_token("my-config_1"));
        assert!(!is_valid_token(""));
        assert!(!is_valid_token("a.b"));
        assert!(!is_valid_token("a*"));
        assert!(!is_valid_token(">"));
        assert!(!is_valid_token("a b"));
    }
}
