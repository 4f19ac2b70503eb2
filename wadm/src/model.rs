//! The OAM `Application` manifest (`core.oam.dev/v1beta1`) as wadm accepts it, in YAML or JSON.
//!
//! Unknown fields are handled as wadm (`wadm-types`) handles them, struct by struct: where wadm
//! refuses them (`Manifest`, component `properties`, config entries, traits, scaler properties
//! and spreads), so does Trellis, naming the field and where it is; where wadm silently ignores
//! them (`metadata`, `spec`, policies, components, shared-application references, secrets, link
//! properties and a link's `source` and `target`), Trellis accepts the manifest too, but reports
//! each ignored field as a warning with its path (see [`ParsedManifest::ignored`]).
//! [`parse_manifest`] reads either format and reports the field path (and the line, when the
//! parser knows it) of what is wrong.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::{check_manifest_text, BoundsError, ManifestLimits};
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

/// A whole manifest. Unknown keys are refused (wadm refuses them).
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

/// `metadata`. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `spec`. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Specification {
    /// Components and capability providers.
    pub components: Vec<Component>,
    /// Policies, such as secret backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}

/// `spec.policies[]`. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `spec.components[]`. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `spec.components[].properties`. Unknown keys are refused (wadm refuses them).
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
/// Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedApplicationComponent {
    /// The shared application's name.
    pub name: String,
    /// The component's name in that application.
    pub component: String,
}

/// A config entry: with `properties` it is created as `{manifest}-{name}`; without, it names an
/// existing config. Unknown keys are refused (wadm refuses them).
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

/// A secret entry. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretProperty {
    /// The name the component reads the secret under.
    pub name: String,
    /// Where the secret comes from.
    pub properties: SecretSourceProperty,
}

/// Where a secret comes from. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `traits[]`: `{type, properties}`, the shape of `properties` chosen by `type`. Other keys
/// are refused (wadm refuses them). A `type` other than the three below is kept as a
/// [`Trait::Custom`] (wadm accepts and ignores such traits).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "properties")]
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
    /// A trait of another type (a custom trait): accepted, as wadm accepts it, and ignored.
    #[serde(untagged)]
    Custom(CustomTrait),
}

/// A trait whose `type` neither wadm nor Trellis acts on. Kept as written so the stored manifest
/// round-trips; the reconciler ignores it and validation warns about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomTrait {
    /// The trait's `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its properties, unread.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub properties: serde_json::Value,
}

/// The trait types Trellis acts on.
const TRAIT_TYPES: &[&str] = &["spreadscaler", "daemonscaler", "link"];

impl<'de> Deserialize<'de> for Trait {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TraitVisitor)
    }
}

/// Reads `{type, properties}` in either order. When `type` comes first (as manifests are
/// written) the properties are read straight into their type, so errors keep their path and
/// line; when they come first (key-sorted JSON) they are held as JSON until the type is known.
struct TraitVisitor;

impl TraitVisitor {
    fn typed<E: de::Error>(kind: String, properties: serde_json::Value) -> Result<Trait, E> {
        let fail = |e: serde_json::Error| E::custom(format!("properties: {e}"));
        Ok(match kind.as_str() {
            "spreadscaler" => {
                Trait::SpreadScaler(serde_json::from_value(properties).map_err(fail)?)
            }
            "daemonscaler" => {
                Trait::DaemonScaler(serde_json::from_value(properties).map_err(fail)?)
            }
            "link" => Trait::Link(Box::new(serde_json::from_value(properties).map_err(fail)?)),
            _ => Trait::Custom(CustomTrait { kind, properties }),
        })
    }
}

impl<'de> Visitor<'de> for TraitVisitor {
    type Value = Trait;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a trait: `type` and `properties`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Trait, A::Error> {
        let mut kind: Option<String> = None;
        let mut held: Option<serde_json::Value> = None;
        let mut read: Option<Trait> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    if kind.is_some() {
                        return Err(de::Error::duplicate_field("type"));
                    }
                    kind = Some(map.next_value()?);
                }
                "properties" => {
                    if held.is_some() || read.is_some() {
                        return Err(de::Error::duplicate_field("properties"));
                    }
                    match kind.as_deref() {
                        Some("spreadscaler") => read = Some(Trait::SpreadScaler(map.next_value()?)),
                        Some("daemonscaler") => read = Some(Trait::DaemonScaler(map.next_value()?)),
                        Some("link") => read = Some(Trait::Link(Box::new(map.next_value()?))),
                        _ => held = Some(map.next_value()?),
                    }
                }
                other => return Err(de::Error::unknown_field(other, &["type", "properties"])),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        if let Some(read) = read {
            return Ok(read);
        }
        match held {
            Some(properties) => Self::typed(kind, properties),
            None if TRAIT_TYPES.contains(&kind.as_str()) => {
                Err(de::Error::missing_field("properties"))
            }
            None => Ok(Trait::Custom(CustomTrait {
                kind,
                properties: serde_json::Value::Null,
            })),
        }
    }
}

impl Trait {
    /// The trait's `type` as written in manifests.
    pub fn type_name(&self) -> &str {
        match self {
            Trait::SpreadScaler(_) => "spreadscaler",
            Trait::DaemonScaler(_) => "daemonscaler",
            Trait::Link(_) => "link",
            Trait::Custom(custom) => &custom.kind,
        }
    }
}

/// Properties of `spreadscaler` and `daemonscaler`. Unknown keys are refused (wadm refuses them).
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
/// Unknown keys are refused (wadm refuses them).
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

/// Properties of `link`. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `source: {config, secrets}` of a link. Unknown keys are accepted with a warning (wadm ignores them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkSource {
    /// Configs for the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigProperty>,
    /// Secrets for the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretProperty>,
}

/// `target`: `{name, config, secrets}`, or the older plain `"<name>"`.
/// Unknown keys are accepted with a warning (wadm ignores them).
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

/// The map form of [`LinkTarget`]; unknown keys are ignored, as wadm's `TargetConfig` does.
#[derive(Deserialize)]
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
    /// Problems that do not reject it (deprecated fields, unknown interfaces): exactly what
    /// [`validation::validate`] says of `manifest`.
    pub warnings: Vec<Diagnostic>,
    /// One warning per field the text sets that wadm ignores (an unknown key where wadm's
    /// types do not refuse it), with its path. Kept apart from `warnings` because the parsed
    /// [`Manifest`] no longer holds these fields; [`ParsedManifest::all_warnings`] gives both.
    pub ignored: Vec<Diagnostic>,
}

impl ParsedManifest {
    /// Every warning: validation's, then the ignored fields.
    pub fn all_warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.warnings.iter().chain(self.ignored.iter())
    }
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

impl From<BoundsError> for ManifestError {
    fn from(e: BoundsError) -> Self {
        let (line, column) = match e {
            BoundsError::TooDeep { line, column, .. } => (Some(line), Some(column)),
            BoundsError::TooLarge { .. } => (None, None),
        };
        Self::single(String::new(), line, column, e.to_string())
    }
}

/// Parses a manifest in YAML or JSON (JSON when the first non-blank character is `{`) within
/// the default [`ManifestLimits`] and validates it. Errors name the field path and, when known,
/// the line and column.
pub fn parse_manifest(input: &[u8]) -> Result<ParsedManifest, ManifestError> {
    parse_manifest_with(input, &ManifestLimits::default())
}

/// [`parse_manifest`] within `limits`: text too large or nested too deeply is refused before
/// any parser sees it.
pub fn parse_manifest_with(
    input: &[u8],
    limits: &ManifestLimits,
) -> Result<ParsedManifest, ManifestError> {
    let (manifest, text) = read_manifest(input, limits)?;
    let ignored = ignored_fields(text);
    let mut diagnostics = validation::validate(&manifest);
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        diagnostics.extend(ignored);
        return Err(ManifestError { diagnostics });
    }
    Ok(ParsedManifest {
        manifest,
        warnings: diagnostics,
        ignored,
    })
}

/// Deserializes within the default [`ManifestLimits`] without semantic validation (field shapes
/// and unknown fields only).
pub fn deserialize_manifest(input: &[u8]) -> Result<Manifest, ManifestError> {
    deserialize_manifest_with(input, &ManifestLimits::default())
}

/// [`deserialize_manifest`] within `limits`.
pub fn deserialize_manifest_with(
    input: &[u8],
    limits: &ManifestLimits,
) -> Result<Manifest, ManifestError> {
    read_manifest(input, limits).map(|(manifest, _)| manifest)
}

/// Deserializes `input` within `limits`; returns the manifest and the text it was read from.
fn read_manifest<'a>(
    input: &'a [u8],
    limits: &ManifestLimits,
) -> Result<(Manifest, &'a str), ManifestError> {
    if input.len() > limits.max_bytes {
        return Err(BoundsError::TooLarge {
            size: input.len(),
            limit: limits.max_bytes,
        }
        .into());
    }
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
    check_manifest_text(text, limits)?;
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
        de.end().map_err(|e| {
            ManifestError::single(
                String::new(),
                Some(e.line()),
                Some(e.column()),
                "unexpected data after the JSON document: a manifest is exactly one JSON \
                 object; remove what follows its closing `}`"
                    .to_string(),
            )
        })?;
        Ok((manifest, text))
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        let manifest = serde_path_to_error::deserialize::<_, Manifest>(de).map_err(|e| {
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
        })?;
        Ok((manifest, text))
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

// ---------------------------------------------------------------------------------------------
// Fields wadm ignores.
//
// The typed parse above already refused unknown keys where wadm refuses them; where wadm
// ignores them, serde skipped them silently. To name each one, the accepted text is read a
// second time as a plain tree and walked along the shape of the wadm manifest. (Collecting
// ignored keys during the typed parse cannot work for a trait whose `properties` come before
// its `type`: serde buffers those properties and their keys lose their path.)
// ---------------------------------------------------------------------------------------------

/// At most this many ignored fields are reported one by one; the rest are counted.
pub const MAX_IGNORED_FIELD_WARNINGS: usize = 20;
/// Characters of a key shown in a warning; longer keys are cut.
const MAX_SHOWN_KEY_CHARS: usize = 64;

/// A document as a plain tree: only what the walk needs (keys, nesting and scalar text).
enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Scalar(String),
}

impl Node {
    fn entries(&self) -> &[(String, Node)] {
        match self {
            Node::Map(entries) => entries,
            _ => &[],
        }
    }

    fn items(&self) -> &[Node] {
        match self {
            Node::Seq(items) => items,
            _ => &[],
        }
    }

    fn get(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML or JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar(String::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar(String::new()))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<Node, Node>()? {
                    let key = match key {
                        Node::Scalar(text) => text,
                        Node::Map(_) => "<map>".to_string(),
                        Node::Seq(_) => "<list>".to_string(),
                    };
                    entries.push((key, value));
                }
                Ok(Node::Map(entries))
            }
            fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
                // A YAML tag (`!tag value`): the tagged value is what counts.
                use de::VariantAccess;
                let (_tag, variant) = data.variant::<de::IgnoredAny>()?;
                variant.newtype_variant::<Node>()
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

/// Paths of the keys the walk found ignored, in document order.
#[derive(Default)]
struct IgnoredWalk {
    found: Vec<(String, String)>,
}

impl IgnoredWalk {
    /// The entries of map `node` at `path` whose keys are `known`. Other keys are recorded as
    /// ignored when `ignores_unknown` (wadm ignores them there); where wadm refuses unknown
    /// keys the typed parse already did, so they are not looked at again.
    fn known<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
        ignores_unknown: bool,
    ) -> Vec<(&'n str, &'n Node, String)> {
        let mut out = Vec::new();
        for (key, value) in node.entries() {
            let child = join_path(path, key);
            if known.contains(&key.as_str()) {
                out.push((key.as_str(), value, child));
            } else if ignores_unknown {
                self.found.push((child, key.clone()));
            }
        }
        out
    }

    /// The whole document (`Manifest`: wadm refuses unknown keys).
    fn manifest(&mut self, doc: &Node) {
        for (key, value, path) in
            self.known(doc, "", &["apiVersion", "kind", "metadata", "spec"], false)
        {
            match key {
                "metadata" => {
                    self.known(value, &path, &["name", "annotations", "labels"], true);
                }
                "spec" => self.spec(value, &path),
                _ => {}
            }
        }
    }

    /// `spec` (`Specification`: wadm ignores unknown keys).
    fn spec(&mut self, node: &Node, path: &str) {
        for (key, value, path) in self.known(node, path, &["components", "policies"], true) {
            for (i, item) in value.items().iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match key {
                    "components" => self.component(item, &item_path),
                    _ => {
                        // `Policy`: wadm ignores unknown keys; `properties` is a free map.
                        self.known(item, &item_path, &["name", "type", "properties"], true);
                    }
                }
            }
        }
    }

    /// `spec.components[]` (`Component`: wadm ignores unknown keys).
    fn component(&mut self, node: &Node, path: &str) {
        for (key, value, path) in
            self.known(node, path, &["name", "type", "properties", "traits"], true)
        {
            match key {
                "properties" => self.component_properties(value, &path),
                "traits" => {
                    for (j, item) in value.items().iter().enumerate() {
                        self.trait_entry(item, &format!("{path}[{j}]"));
                    }
                }
                _ => {}
            }
        }
    }

    /// `properties` of a component or provider (wadm refuses unknown keys).
    fn component_properties(&mut self, node: &Node, path: &str) {
        for (key, value, path) in self.known(
            node,
            path,
            &["image", "application", "id", "config", "secrets"],
            false,
        ) {
            match key {
                // `SharedApplicationComponentProperties`: wadm ignores unknown keys.
                "application" => {
                    self.known(value, &path, &["name", "component"], true);
                }
                "secrets" => self.secrets(value, &path),
                // `config` entries: wadm refuses unknown keys; `properties` is a free map.
                _ => {}
            }
        }
    }

    /// A list of secrets (`SecretProperty`, `SecretSourceProperty`: wadm ignores unknown keys).
    fn secrets(&mut self, node: &Node, path: &str) {
        for (k, item) in node.items().iter().enumerate() {
            let item_path = format!("{path}[{k}]");
            for (key, value, path) in self.known(item, &item_path, &["name", "properties"], true) {
                if key == "properties" {
                    self.known(value, &path, &["policy", "key", "field", "version"], true);
                }
            }
        }
    }

    /// `traits[]` (`Trait`: wadm refuses unknown keys). Scaler properties and spreads refuse
    /// unknown keys too; only a link's properties ignore them.
    fn trait_entry(&mut self, node: &Node, path: &str) {
        let is_link = matches!(node.get("type"), Some(Node::Scalar(t)) if t == "link");
        for (key, value, path) in self.known(node, path, &["type", "properties"], false) {
            if key == "properties" && is_link {
                self.link(value, &path);
            }
        }
    }

    /// A link's properties (wadm reads them leniently: unknown keys are ignored, and so are
    /// unknown keys of `source` (`ConfigDefinition`) and `target` (`TargetConfig`)).
    fn link(&mut self, node: &Node, path: &str) {
        for (key, value, path) in self.known(
            node,
            path,
            &[
                "namespace",
                "package",
                "interfaces",
                "target",
                "source",
                "name",
                "source_config",
                "target_config",
            ],
            true,
        ) {
            let block: &[&str] = match key {
                "target" => &["name", "config", "secrets"],
                "source" => &["config", "secrets"],
                _ => continue,
            };
            // A plain-string `target` has no keys.
            for (key, value, path) in self.known(value, &path, block, true) {
                if key == "secrets" {
                    self.secrets(value, &path);
                }
            }
        }
    }
}

/// `parent.key`, or `parent["key"]` for a key that is not a plain name (so a hostile key cannot
/// forge a path); long keys are cut.
fn join_path(parent: &str, key: &str) -> String {
    let shown = shown_key(key);
    if shown.starts_with('"') {
        format!("{parent}[{shown}]")
    } else if parent.is_empty() {
        shown
    } else {
        format!("{parent}.{shown}")
    }
}

/// `key` as shown in a path or message: as is when it is a plain name, else quoted with escapes;
/// cut after [`MAX_SHOWN_KEY_CHARS`] characters.
fn shown_key(key: &str) -> String {
    let cut: String = key.chars().take(MAX_SHOWN_KEY_CHARS).collect();
    let cut = if cut.len() < key.len() {
        format!("{cut}…")
    } else {
        cut
    };
    let plain = !key.is_empty()
        && key.len() <= MAX_SHOWN_KEY_CHARS
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        cut
    } else {
        format!("{cut:?}")
    }
}

/// One warning per key of `text` (a manifest the typed parse accepted) that wadm ignores, at
/// most [`MAX_IGNORED_FIELD_WARNINGS`] and then a count of the rest.
fn ignored_fields(text: &str) -> Vec<Diagnostic> {
    let doc = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Node>(text).map_err(|e| e.to_string())
    } else {
        serde_norway::from_str::<Node>(text).map_err(|e| e.to_string())
    };
    let doc = match doc {
        Ok(doc) => doc,
        Err(e) => {
            return vec![Diagnostic {
                severity: Severity::Warning,
                path: String::new(),
                line: None,
                column: None,
                message: format!(
                    "could not look for fields wadm ignores ({e}); unknown fields may have been \
                     ignored without a warning"
                ),
            }]
        }
    };
    let mut walk = IgnoredWalk::default();
    walk.manifest(&doc);
    let total = walk.found.len();
    let mut out: Vec<Diagnostic> = walk
        .found
        .into_iter()
        .take(MAX_IGNORED_FIELD_WARNINGS)
        .map(|(path, key)| Diagnostic {
            severity: Severity::Warning,
            path,
            line: None,
            column: None,
            message: format!(
                "unknown field {}, ignored (wadm ignores it too); remove it, or check its \
                 spelling if you meant a known field",
                quoted_key(&key)
            ),
        })
        .collect();
    if total > MAX_IGNORED_FIELD_WARNINGS {
        out.push(Diagnostic {
            severity: Severity::Warning,
            path: String::new(),
            line: None,
            column: None,
            message: format!(
                "{} more unknown fields are ignored (wadm ignores them too)",
                total - MAX_IGNORED_FIELD_WARNINGS
            ),
        });
    }
    out
}

/// `key` in backquotes, escaped when it is not a plain name.
fn quoted_key(key: &str) -> String {
    let shown = shown_key(key);
    if shown.starts_with('"') {
        shown
    } else {
        format!("`{shown}`")
    }
}
