//! Control-interface bodies, field for field as wasmCloud 1.x puts them on the wire.
//!
//! Defaults and aliases follow the `wasmcloud-control-interface` crate so its clients interoperate:
//! a field that crate marks as defaulted is defaulted here too; fields it requires are required.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The envelope of every control-interface reply: `{success, message, response}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtlResponse<T> {
    /// Whether the request was carried out (or, for async operations, accepted).
    pub success: bool,
    /// A human-readable message; says what was wrong when `success` is false.
    #[serde(default)]
    pub message: String,
    /// The payload, when the operation returns one (a missing field reads as `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<T>,
}

impl<T> CtlResponse<T> {
    /// A success carrying `response`.
    pub fn ok(response: T) -> Self {
        Self {
            success: true,
            message: String::new(),
            response: Some(response),
        }
    }

    /// A failure with a message saying what was wrong.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            success: false,
            message: message.into(),
            response: None,
        }
    }
}

impl CtlResponse<()> {
    /// A success without payload.
    pub fn success(message: impl Into<String>) -> Self {
        Self {
            success: true,
            message: message.into(),
            response: None,
        }
    }
}

/// A host as answered to `host.ping`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// The host id: an nkeys server public key (`N...`).
    #[serde(default)]
    pub id: String,
    /// A readable random name such as `brave-otter-1234`.
    #[serde(default)]
    pub friendly_name: String,
    /// The host's labels, built-in `hostcore.*` ones included.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The lattice this host belongs to.
    #[serde(default)]
    pub lattice: String,
    /// The NATS server the control connection uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctl_host: Option<String>,
    /// The NATS server the data-plane connection uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_host: Option<String>,
    /// The JetStream domain, if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js_domain: Option<String>,
    /// Seconds since the host started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// The uptime as a person reads it (`1h 2m 3s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_human: Option<String>,
    /// The host software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Everything a host runs, as answered to `host.get` and sent in `host_heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInventory {
    /// Running components.
    #[serde(default, alias = "actors")]
    pub components: Vec<ComponentDescription>,
    /// Running providers.
    #[serde(default)]
    pub providers: Vec<ProviderDescription>,
    /// The host id.
    #[serde(default)]
    pub host_id: String,
    /// The host's friendly name.
    #[serde(default)]
    pub friendly_name: String,
    /// The host's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host software version.
    #[serde(default)]
    pub version: String,
    /// The uptime as a person reads it.
    #[serde(default)]
    pub uptime_human: String,
    /// Seconds since the host started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Trellis extension: true when `components` and `providers` do not list everything the
    /// host runs, because the whole inventory does not fit one NATS message (a heartbeat then
    /// lists nothing and gives the counts) or because this is one page of a paged `host.get`.
    /// Absent (false) in a complete inventory, as wasmCloud sends it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inventory_truncated: bool,
    /// Trellis extension: how many components the host runs, when the lists are truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_count: Option<usize>,
    /// Trellis extension: how many providers the host runs, when the lists are truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_count: Option<usize>,
    /// Trellis extension: in a page of a paged `host.get`, the offset of the next page
    /// (components first, then providers); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// Trellis extension: the body of a paged `link.get` or `host.get`.
///
/// An empty body (or `{}`) asks for everything in one reply, as wasmCloud does; a host refuses
/// that with a message saying how to page when everything would not fit one NATS message.
/// With `offset` or `limit` the reply is one page: at most `limit` items from `offset`, cut
/// short where the reply would exceed the server's `max_payload`, with the offset of the next
/// page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRequest {
    /// The first item to return (0 is the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// The most items to return; as many as fit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl PageRequest {
    /// The first page: as many items as fit.
    pub fn first() -> Self {
        Self {
            offset: Some(0),
            limit: None,
        }
    }

    /// True when this asks for a page rather than for everything.
    pub fn is_paged(&self) -> bool {
        self.offset.is_some() || self.limit.is_some()
    }
}

/// Trellis extension: one page of links, the reply to a paged `link.get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkPage {
    /// The links of this page, in the lattice's stable link order.
    pub links: Vec<Link>,
    /// The offset of the first link of this page.
    pub offset: usize,
    /// How many links the lattice holds.
    pub total: usize,
    /// The offset of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// A running component in an inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentDescription {
    /// The component id, unique in the lattice.
    #[serde(default)]
    pub id: String,
    /// Where its code came from (`file://...`, a path, an OCI ref).
    #[serde(default)]
    pub image_ref: String,
    /// `sha256:<hex>` of the component's bytes as the host loaded them (for an OCI image, the
    /// digest of its wasm layer). A Trellis addition; absent from other hosts' inventories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A readable name, when the component declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Annotations given when it was scaled (the reconciler tags its own work here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Bumped each time the component is updated in place.
    #[serde(default)]
    pub revision: i32,
    /// The most instances that may run at once.
    #[serde(default)]
    pub max_instances: u32,
    /// The limits in force (`max_memory_mb`, `max_execution_time_ms`).
    #[serde(default)]
    pub limits: Option<HashMap<String, String>>,
}

/// A running provider in an inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderDescription {
    /// The provider id, unique in the lattice.
    #[serde(default)]
    pub id: String,
    /// The reference it was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// A readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bumped each time the provider is updated.
    #[serde(default)]
    pub revision: i32,
    /// Annotations given when it was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `component.scale.{host}`: run `count` max instances of a component; 0 stops it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleComponentCommand {
    /// Where to load the component from.
    #[serde(default)]
    pub component_ref: String,
    /// The component id (required).
    pub component_id: String,
    /// Annotations to record with the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Most concurrent instances; 0 stops the component.
    #[serde(default, alias = "max_instances", rename = "count")]
    pub max_instances: u32,
    /// Per-component limits: `max_memory_mb`, `max_execution_time_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_limits: Option<HashMap<String, String>>,
    /// The host addressed (informational; the subject decides).
    #[serde(default)]
    pub host_id: String,
    /// Named configs the component reads.
    #[serde(default)]
    pub config: Vec<String>,
    /// Whether a different `component_ref` for a running id may replace it.
    #[serde(default)]
    pub allow_update: bool,
}

/// `component.update.{host}`: replace a running component's code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateComponentCommand {
    /// The running component to update.
    #[serde(default)]
    pub component_id: String,
    /// Annotations to record with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The host addressed.
    #[serde(default)]
    pub host_id: String,
    /// The new code reference.
    #[serde(default)]
    pub new_component_ref: String,
}

/// `provider.start.{host}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartProviderCommand {
    /// The provider id (required).
    pub provider_id: String,
    /// What to start: `trellis+builtin://NAME`, `wasmcloud+builtin://NAME` or a known image.
    #[serde(default)]
    pub provider_ref: String,
    /// The host addressed.
    #[serde(default)]
    pub host_id: String,
    /// Named configs merged left to right and given to the provider.
    #[serde(default)]
    pub config: Vec<String>,
    /// Annotations to record with the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `provider.stop.{host}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopProviderCommand {
    /// The host addressed.
    #[serde(default)]
    pub host_id: String,
    /// The provider to stop.
    #[serde(default, alias = "provider_ref")]
    pub provider_id: String,
}

/// `host.stop.{host}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopHostCommand {
    /// The host addressed.
    #[serde(default)]
    pub host_id: String,
    /// How long in-flight work may drain, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `label.put.{host}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLabel {
    /// Label key.
    pub key: String,
    /// Label value.
    pub value: String,
}

/// `label.del.{host}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLabelIdentifier {
    /// Label key.
    pub key: String,
}

/// `component.auction`: which hosts could run this component?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentAuctionRequest {
    /// What would be run.
    #[serde(default)]
    pub component_ref: String,
    /// The id it would run under.
    pub component_id: String,
    /// Labels a host must carry, all of them, to bid.
    pub constraints: BTreeMap<String, String>,
}

/// A host's bid in a component auction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentAuctionAck {
    /// Echo of the request's ref.
    #[serde(default)]
    pub component_ref: String,
    /// Echo of the request's id.
    #[serde(default)]
    pub component_id: String,
    /// The bidding host.
    #[serde(default)]
    pub host_id: String,
    /// Echo of the constraints.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
}

/// `provider.auction`: which hosts could run this provider?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderAuctionRequest {
    /// What would be run.
    #[serde(default)]
    pub provider_ref: String,
    /// The id it would run under.
    pub provider_id: String,
    /// Labels a host must carry to bid.
    pub constraints: BTreeMap<String, String>,
}

/// A host's bid in a provider auction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderAuctionAck {
    /// The bidding host.
    #[serde(default)]
    pub host_id: String,
    /// Echo of the request's ref.
    #[serde(default)]
    pub provider_ref: String,
    /// Echo of the request's id.
    #[serde(default)]
    pub provider_id: String,
    /// Echo of the constraints.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
}

fn default_link_name() -> String {
    "default".to_string()
}

/// A link: calls from `source_id` on `wit_namespace:wit_package/{interfaces}` under link `name`
/// go to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The calling component or provider.
    pub source_id: String,
    /// The component or provider that answers.
    pub target: String,
    /// The link name; `default` unless set.
    #[serde(default = "default_link_name")]
    pub name: String,
    /// WIT namespace, e.g. `wasi`.
    pub wit_namespace: String,
    /// WIT package, e.g. `keyvalue`.
    pub wit_package: String,
    /// Interfaces of the package this link covers, e.g. `["store", "atomics"]`.
    pub interfaces: Vec<String>,
    /// Named configs given to the source for this link.
    #[serde(default)]
    pub source_config: Vec<String>,
    /// Named configs given to the target for this link.
    #[serde(default)]
    pub target_config: Vec<String>,
}

/// `link.del`: which link to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteLinkRequest {
    /// The calling side.
    pub source_id: String,
    /// The link name.
    #[serde(default = "default_link_name")]
    pub name: String,
    /// WIT namespace.
    pub wit_namespace: String,
    /// WIT package.
    pub wit_package: String,
}

impl Link {
    /// The identity of a link: one source has at most one target per (namespace, package, name).
    pub fn key(&self) -> LinkKey {
        LinkKey {
            source_id: self.source_id.clone(),
            wit_namespace: self.wit_namespace.clone(),
            wit_package: self.wit_package.clone(),
            name: self.name.clone(),
        }
    }
}

impl DeleteLinkRequest {
    /// The identity of the link this request deletes.
    pub fn key(&self) -> LinkKey {
        LinkKey {
            source_id: self.source_id.clone(),
            wit_namespace: self.wit_namespace.clone(),
            wit_package: self.wit_package.clone(),
            name: self.name.clone(),
        }
    }
}

/// The identity of a link: (source, namespace, package, name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    /// The calling side.
    pub source_id: String,
    /// WIT namespace.
    pub wit_namespace: String,
    /// WIT package.
    pub wit_package: String,
    /// The link name.
    pub name: String,
}

impl LinkKey {
    /// The key this link is stored under in the lattice-data KV bucket. KV keys allow
    /// `[-/_=.a-zA-Z0-9]`, so each part is escaped to stay in that set and to keep
    /// different tuples from colliding.
    pub fn storage_key(&self) -> String {
        format!(
            "LINKDEF_{}.{}.{}.{}",
            escape_kv(&self.source_id),
            escape_kv(&self.wit_namespace),
            escape_kv(&self.wit_package),
            escape_kv(&self.name)
        )
    }
}

/// Escapes a string into KV-key-safe characters: alphanumerics, `-` and `_` stay; everything
/// else becomes `=XX` hex bytes.
pub fn escape_kv(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_accepts_count_and_defaults() {
        let cmd: ScaleComponentCommand =
            serde_json::from_str(r#"{"component_id":"c","count":3}"#).unwrap();
        assert_eq!(cmd.max_instances, 3);
        assert!(cmd.config.is_empty());
        let out = serde_json::to_value(&cmd).unwrap();
        assert_eq!(out["count"], 3);
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = serde_json::from_str::<ScaleComponentCommand>(r#"{"count":1}"#).unwrap_err();
        assert!(err.to_string().contains("component_id"), "{err}");
    }

    #[test]
    fn link_name_defaults_and_keys_escape() {
        let l: Link = serde_json::from_str(
            r#"{"source_id":"a.b","target":"t","wit_namespace":"wasi","wit_package":"http","interfaces":["incoming-handler"]}"#,
        )
        .unwrap();
        assert_eq!(l.name, "default");
        assert_eq!(l.key().storage_key(), "LINKDEF_a=2Eb.wasi.http.default");
    }

    #[test]
    fn inventory_extensions_are_absent_unless_used() {
        let full = serde_json::to_value(HostInventory::default()).unwrap();
        for field in [
            "inventory_truncated",
            "component_count",
            "provider_count",
            "next_offset",
        ] {
            assert!(full.get(field).is_none(), "{field} in {full}");
        }
        let page: PageRequest = serde_json::from_str("{}").unwrap();
        assert!(!page.is_paged());
        let page: PageRequest = serde_json::from_str(r#"{"offset":10}"#).unwrap();
        assert!(page.is_paged());
        assert!(serde_json::from_str::<PageRequest>(r#"{"ofset":10}"#).is_err());
    }

    #[test]
    fn envelope_omits_absent_response() {
        let s = serde_json::to_string(&CtlResponse::<()>::error("bad")).unwrap();
        assert_eq!(s, r#"{"success":false,"message":"bad"}"#);
    }
}

/// One registry's credentials in a `registry.put` request (a map from registry host to this),
/// as wasmCloud 1.x's control interface sends them. `Debug` never shows the secrets.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// The user name, for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password, for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A bearer token, used instead of a user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The kind of registry; only `oci` is known.
    #[serde(rename = "registryType", default = "default_registry_type")]
    pub registry_type: String,
}

fn default_registry_type() -> String {
    "oci".to_string()
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("RegistryCredential")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("registry_type", &self.registry_type)
            .finish()
    }
}
