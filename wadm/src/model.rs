//! The OAM `Application` manifest (`core.oam.dev/v1beta1`) as wadm accepts it, in YAML or JSON.
//!
//! Every struct rejects unknown fields, so a typo is an error that names the field and where it
//! is instead of a silently ignored setting. [`parse_manifest`] reads either format and reports
//! the field path (and the line, when the parser knows it) of what is wrong.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::validation::{self, Diagnostic, Severity};

/// The only accepted `apiVersion`.
pub const API_VERSION: &str = "core.oam.dev/v1beta1";
/// The only accepted `kind`.
pub const KIND: &str = "Application";
/// Annotation holding the manifest's version.
pub const VERSION_ANNOTATION: &str = "version";
/// Annotation holding the manifest's description.
pub const DESCRIPTION_ANNOTATION: &str = "description";
/// Annotation marking an application whose components other applications may link to.
pub const SHARED_ANNOTATION: &str = "experimental.wasmcloud.dev/shared";
/// The policy type secrets must refer to.
pub const SECRET_POLICY_TYPE: &str = "policy.secret.wasmcloud.dev/v1alpha1";

/// A whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `core.oam.dev/v1beta1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `Application`.
    pub kind: String,
    /// Name, version and other metadata.
    pub metadata: Metadata,
    /// What to run.
    pub spec: Specification,
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The application name, unique per lattice.
    pub name: String,
    /// Annotations: `version`, `description`, `experimental.wasmcloud.dev/shared`, others.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Free labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Specification {
    /// Components and capability providers.
    pub components: Vec<Component>,
    /// Policies, such as secret backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}

/// `spec.policies[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The name secrets refer to.
    pub name: String,
    /// The policy type, e.g. `policy.secret.wasmcloud.dev/v1alpha1`.
    #[serde(rename = "type")]
    pub policy_type: String,
    /// Type-specific settings (`backend` for secret policies).
    #[serde(default, deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
}

/// `spec.components[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Name, unique in the manifest.
    pub name: String,
    /// Component or capability provider.
    #[serde(rename = "type")]
    pub component_type: ComponentType,
    /// Image, id, config and secrets.
    pub properties: ComponentProperties,
    /// Scalers and links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traits: Vec<Trait>,
}

/// What kind of thing a component entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComponentType {
    /// A WebAssembly component.
    #[serde(rename = "component")]
    Component,
    /// The wasmCloud 0.x name for a component (deprecated, accepted with a warning).
    #[serde(rename = "actor")]
    Actor,
    /// A capability provider.
    #[serde(rename = "capability")]
    Capability,
}

impl ComponentType {
    /// True for providers.
    pub fn is_provider(self) -> bool {
        self == ComponentType::Capability
    }
}

/// `spec.components[].properties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentProperties {
    /// Where the code comes from (exactly one of `image` and `application`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A component of a shared application (exactly one of `image` and `application`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<SharedApplicationComponent>,
    /// An explicit id; derived from the names when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Named configs given to the component or provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigProperty>,
    /// Secrets given to the component or provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretProperty>,
}

/// `application: {name, component}`: a component of another, shared, application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedApplicationComponent {
    /// The shared application's name.
    pub name: String,
    /// The component's name in that application.
    pub component: String,
}

/// A config entry: with `properties` it is created as `{manifest}-{name}`; without, it names an
/// existing config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigProperty {
    /// The config name.
    pub name: String,
    /// The values, when the manifest defines the config.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_string_map"
    )]
    pub properties: Option<BTreeMap<String, String>>,
}

/// A secret entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretProperty {
    /// The name the component reads the secret under.
    pub name: String,
    /// Where the secret comes from.
    pub properties: SecretSourceProperty,
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSourceProperty {
    /// The secret policy (by name) that says which backend to ask.
    pub policy: String,
    /// The key in the backend.
    pub key: String,
    /// A field of the stored value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A version of the stored value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `traits[]`: `{type, properties}`, the shape of `properties` chosen by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "properties", deny_unknown_fields)]
pub enum Trait {
    /// `spreadscaler`: `instances` spread over hosts by weighted requirements.
    #[serde(rename = "spreadscaler")]
    SpreadScaler(ScalerProperties),
    /// `daemonscaler`: `instances` on every eligible host.
    #[serde(rename = "daemonscaler")]
    DaemonScaler(ScalerProperties),
    /// `link`: calls from this component on an interface go to a target.
    #[serde(rename = "link")]
    Link(Box<LinkProperties>),
}

impl Trait {
    /// The trait's `type` as written in manifests.
    pub fn type_name(&self) -> &'static str {
        match self {
            Trait::SpreadScaler(_) => "spreadscaler",
            Trait::DaemonScaler(_) => "daemonscaler",
            Trait::Link(_) => "link",
        }
    }
}

/// Properties of `spreadscaler` and `daemonscaler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerProperties {
    /// Instances (a concurrency count for components, a host count for providers; per eligible
    /// host for the daemonscaler).
    #[serde(alias = "replicas")]
    pub instances: u32,
    /// Weighted host requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<Spread>,
}

/// One spread: hosts whose labels match all `requirements` share `weight` of the instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// The spread's name.
    pub name: String,
    /// Labels a host must carry.
    #[serde(default, deserialize_with = "string_map")]
    pub requirements: BTreeMap<String, String>,
    /// Relative weight; 100 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// The default weight of a spread.
pub const DEFAULT_SPREAD_WEIGHT: u32 = 100;

impl Spread {
    /// The weight, with the default applied.
    pub fn effective_weight(&self) -> u32 {
        self.weight.unwrap_or(DEFAULT_SPREAD_WEIGHT)
    }
}

/// Properties of `link`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProperties {
    /// WIT namespace, e.g. `wasi`.
    pub namespace: String,
    /// WIT package, e.g. `http`.
    pub package: String,
    /// Interfaces of the package, e.g. `[incoming-handler]`.
    pub interfaces: Vec<String>,
    /// The target component (by its name in the manifest) and its config.
    pub target: LinkTarget,
    /// Config and secrets given to the source for this link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<LinkSource>,
    /// The link name; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Deprecated spelling of `source.config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_config: Option<Vec<ConfigProperty>>,
    /// Deprecated spelling of `target.config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_config: Option<Vec<ConfigProperty>>,
}

impl LinkProperties {
    /// The link name with its default.
    pub fn link_name(&self) -> &str {
        self.name.as_deref().unwrap_or("default")
    }

    /// Source configs: `source.config` followed by the deprecated `source_config`.
    pub fn source_configs(&self) -> Vec<&ConfigProperty> {
        self.source
            .iter()
            .flat_map(|s| s.config.iter())
            .chain(self.source_config.iter().flatten())
            .collect()
    }

    /// Target configs: `target.config` followed by the deprecated `target_config`.
    pub fn target_configs(&self) -> Vec<&ConfigProperty> {
        self.target
            .config
            .iter()
            .chain(self.target_config.iter().flatten())
            .collect()
    }
}

/// `source: {config, secrets}` of a link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSource {
    /// Configs for the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigProperty>,
    /// Secrets for the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretProperty>,
}

/// `target`: `{name, config, secrets}`, or the older plain `"<name>"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LinkTarget {
    /// The target component's name in the manifest.
    pub name: String,
    /// Configs for the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigProperty>,
    /// Secrets for the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretProperty>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkTargetObject {
    name: String,
    #[serde(default)]
    config: Vec<ConfigProperty>,
    #[serde(default)]
    secrets: Vec<SecretProperty>,
}

impl<'de> Deserialize<'de> for LinkTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = LinkTarget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a component name or a map {name, config, secrets}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LinkTarget, E> {
                Ok(LinkTarget {
                    name: v.to_string(),
                    ..LinkTarget::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LinkTarget, A::Error> {
                let obj =
                    LinkTargetObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LinkTarget {
                    name: obj.name,
                    config: obj.config,
                    secrets: obj.secrets,
                })
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}

/// A map of string to string that also takes numbers and booleans as values (YAML writers
/// rarely quote `port: 8080`).
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct MapVisitor;
    impl<'de> Visitor<'de> for MapVisitor {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of names to string values")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, ScalarString>()? {
                out.insert(k, v.0);
            }
            Ok(out)
        }
    }
    d.deserialize_any(MapVisitor)
}

fn optional_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    string_map(d).map(Some)
}

/// A scalar read as a string.
struct ScalarString(String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

impl Manifest {
    /// The application name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The `version` annotation, if set.
    pub fn version(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(VERSION_ANNOTATION)
            .map(String::as_str)
    }

    /// The `description` annotation, if set.
    pub fn description(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(DESCRIPTION_ANNOTATION)
            .map(String::as_str)
    }

    /// True when the manifest is a shared application.
    pub fn is_shared(&self) -> bool {
        self.metadata
            .annotations
            .get(SHARED_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    /// The lattice id of component `component` of this manifest: its explicit `id`, else the
    /// derived `{manifest}-{component}` id. `None` when no component has that name.
    pub fn component_id(&self, component: &str) -> Option<String> {
        self.spec
            .components
            .iter()
            .find(|c| c.name == component)
            .map(|c| self.id_of(c))
    }

    /// The lattice id of `component`, a component of this manifest.
    pub fn id_of(&self, component: &Component) -> String {
        component
            .properties
            .id
            .clone()
            .unwrap_or_else(|| derived_id(&self.metadata.name, &component.name))
    }
}

/// `{manifest}-{component}` with each part lowercased and every non-alphanumeric character
/// replaced by `_` (e.g. `rust-hello-world`, `http-component` -> `rust_hello_world-http_component`).
pub fn derived_id(manifest: &str, component: &str) -> String {
    format!(
        "{}-{}",
        normalize_id_part(manifest),
        normalize_id_part(component)
    )
}

fn normalize_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The lattice name of a config the manifest defines (one with properties).
pub fn config_name(manifest: &str, config: &str) -> String {
    format!("{manifest}-{config}")
}

/// The name a config entry is referred to by on the lattice: `{manifest}-{name}` when the
/// manifest defines it, the name itself when it names an existing config.
pub fn lattice_config_name(manifest: &str, config: &ConfigProperty) -> String {
    if config.properties.is_some() {
        config_name(manifest, &config.name)
    } else {
        config.name.clone()
    }
}

/// A manifest that parsed and passed validation, with the warnings it raised.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// Problems that do not reject it (deprecated fields, unknown interfaces).
    pub warnings: Vec<Diagnostic>,
}

/// Why a manifest was rejected: every error found, each with its field path.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ManifestError {
    /// The errors (never empty) followed by any warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        write!(f, "invalid manifest: {}", errors.join("; "))
    }
}

impl ManifestError {
    fn single(path: String, line: Option<usize>, column: Option<usize>, message: String) -> Self {
        Self {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                path,
                line,
                column,
                message,
            }],
        }
    }
}

/// Parses a manifest in YAML or JSON (JSON when the first non-blank character is `{`) and
/// validates it. Errors name the field path and, when known, the line and column.
pub fn parse_manifest(input: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let manifest = deserialize_manifest(input)?;
    let diagnostics = validation::validate(&manifest);
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(ManifestError { diagnostics });
    }
    Ok(ParsedManifest {
        manifest,
        warnings: diagnostics,
    })
}

/// Deserializes without semantic validation (field shapes and unknown fields only).
pub fn deserialize_manifest(input: &[u8]) -> Result<Manifest, ManifestError> {
    let text = std::str::from_utf8(input).map_err(|e| {
        ManifestError::single(
            String::new(),
            None,
            None,
            format!("the manifest is not UTF-8 text: {e}"),
        )
    })?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(ManifestError::single(
            String::new(),
            None,
            None,
            "the manifest is empty".to_string(),
        ));
    }
    if trimmed.starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        let manifest = serde_path_to_error::deserialize::<_, Manifest>(&mut de).map_err(|e| {
            let path = display_path(e.path());
            let inner = e.inner();
            ManifestError::single(
                path,
                Some(inner.line()),
                Some(inner.column()),
                strip_json_position(&inner.to_string()),
            )
        })?;
        // Anything but whitespace after the document is a mistake (two documents, a paste).
        de.end().map_err(|e| {
            ManifestError::single(
                String::new(),
                Some(e.line()),
                Some(e.column()),
                "unexpected text after the JSON manifest; send one JSON object".to_string(),
            )
        })?;
        Ok(manifest)
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize::<_, Manifest>(de).map_err(|e| {
            let path = display_path(e.path());
            let inner = e.inner();
            let location = inner.location();
            let message = strip_yaml_position(&inner.to_string(), &path);
            ManifestError::single(
                path,
                location.as_ref().map(|l| l.line()),
                location.as_ref().map(|l| l.column()),
                message,
            )
        })
    }
}

/// `spec.components[0].traits` from serde_path_to_error's path; empty for the root.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_json_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// serde_norway prefixes the path (or its parent) and appends " at line L column C"; we report
/// those separately.
fn strip_yaml_position(msg: &str, path: &str) -> String {
    let without_pos = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    match without_pos.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => rest.to_string(),
        _ => without_pos.to_string(),
    }
}
