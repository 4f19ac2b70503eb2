//! Semantic checks on a parsed manifest: errors reject a put, warnings do not.
//!
//! Each [`Diagnostic`] names the field path (`spec.components[1].traits[0].properties.target`)
//! and says what is wrong, so a user does not have to guess.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{
    self, ComponentType, ConfigProperty, Manifest, SecretProperty, Trait, API_VERSION, KIND,
    SECRET_POLICY_TYPE, VERSION_ANNOTATION,
};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Rejects the manifest.
    Error,
    /// Reported, but the manifest is accepted.
    Warning,
}

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The field path, e.g. `spec.components[0].properties.image`; empty for the whole document.
    pub path: String,
    /// The 1-based line, when the parser knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The 1-based column, when the parser knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}", self.path)?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (line {l}, column {c})")?,
            (Some(l), None) => write!(f, " (line {l})")?,
            _ => {}
        }
        if !self.path.is_empty() || self.line.is_some() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

struct Checker {
    out: Vec<Diagnostic>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path.into(), message.into());
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path.into(), message.into());
    }
    fn push(&mut self, severity: Severity, path: String, message: String) {
        self.out.push(Diagnostic {
            severity,
            path,
            line: None,
            column: None,
            message,
        });
    }
}

/// Packages (and their interfaces) of the namespaces the host knows; a link naming an unknown
/// interface of one of these namespaces is probably a typo and gets a warning.
const KNOWN_INTERFACES: &[(&str, &str, &[&str])] = &[
    ("wasi", "http", &["incoming-handler", "outgoing-handler"]),
    (
        "wasi",
        "keyvalue",
        &["store", "atomics", "batch", "watcher"],
    ),
    ("wasi", "blobstore", &["blobstore", "container", "types"]),
    ("wasi", "config", &["runtime", "store"]),
    ("wasi", "logging", &["logging"]),
    ("wasmcloud", "messaging", &["handler", "consumer", "types"]),
    ("wasmcloud", "bus", &["lattice"]),
    ("wasmcloud", "secrets", &["store", "reveal"]),
];

/// Most characters of an application name: it is part of NATS subjects and KV keys.
pub const MAX_APP_NAME_LEN: usize = 128;
/// Most characters of a version: every version is listed in the model's stored index.
pub const MAX_VERSION_LEN: usize = 128;
/// Most characters of a link name.
pub const MAX_LINK_NAME_LEN: usize = 256;

/// Why `name` cannot be a link name, or `None` when it can. Link names are matched and stored
/// on the lattice; NATS wildcards, blanks and control characters in them are refused.
pub fn link_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the link name is empty; omit `name` for the default link".to_string());
    }
    if name.chars().count() > MAX_LINK_NAME_LEN {
        return Some(format!(
            "the link name is longer than {MAX_LINK_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
    {
        let what = match c {
            '*' | '>' => format!("`{c}` is a NATS wildcard"),
            _ => format!("{c:?} is a blank or control character"),
        };
        return Some(format!(
            "`{name}` is not a valid link name: {what}; use letters, digits, `-` and `_` (e.g. `default`)"
        ));
    }
    None
}

/// True for a name matching `^[-\w]+$` with ASCII word characters: names end up in NATS
/// subjects and KV keys, which take ASCII only.
pub fn is_valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_APP_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// True for a label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 characters, alphanumeric at both ends with `-`, `_`, `.` inside.
pub fn is_valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > 253 {
            return false;
        }
        let labels_ok = prefix.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if !labels_ok {
            return false;
        }
    }
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Checks `manifest` against every rule; returns errors and warnings (empty when all is well).
pub fn validate(manifest: &Manifest) -> Vec<Diagnostic> {
    let mut c = Checker { out: Vec::new() };
    let name = &manifest.metadata.name;

    if manifest.api_version != API_VERSION {
        c.error(
            "apiVersion",
            format!(
                "unsupported apiVersion `{}`, expected `{API_VERSION}`",
                manifest.api_version
            ),
        );
    }
    if manifest.kind != KIND {
        c.error(
            "kind",
            format!("unsupported kind `{}`, expected `{KIND}`", manifest.kind),
        );
    }
    if name.len() > MAX_APP_NAME_LEN {
        c.error(
            "metadata.name",
            format!(
                "the name is {} bytes long; at most {MAX_APP_NAME_LEN} are allowed",
                name.len()
            ),
        );
    } else if !is_valid_app_name(name) {
        c.error(
            "metadata.name",
            format!("`{name}` is not a valid name: use letters, digits, `_` and `-` only"),
        );
    } else if name.len() > MAX_APP_NAME_LEN {
        c.error(
            "metadata.name",
            format!(
                "the name is {} characters long; at most {MAX_APP_NAME_LEN} are allowed",
                name.len()
            ),
        );
    }
    if let Some(version) = manifest.metadata.annotations.get(VERSION_ANNOTATION) {
        if version == "latest" {
            c.error(
                "metadata.annotations.version",
                "`latest` is reserved (it means the newest version); choose another version",
            );
        } else if version.is_empty() || version.chars().any(|ch| ch.is_whitespace()) {
            c.error(
                "metadata.annotations.version",
                format!("`{version}` is not a valid version: it must be non-empty without spaces"),
            );
        } else if version.chars().count() > MAX_VERSION_LEN {
            c.error(
                "metadata.annotations.version",
                format!(
                    "the version is longer than {MAX_VERSION_LEN} characters; use a shorter one"
                ),
            );
        }
    }
    for key in manifest.metadata.annotations.keys() {
        if !is_valid_label_key(key) {
            c.error(
                format!("metadata.annotations.{key}"),
                format!("`{key}` is not a valid annotation key (optional DNS prefix `/` then a name of at most 63 characters)"),
            );
        }
    }
    for key in manifest.metadata.labels.keys() {
        if !is_valid_label_key(key) {
            c.error(
                format!("metadata.labels.{key}"),
                format!("`{key}` is not a valid label key (optional DNS prefix `/` then a name of at most 63 characters)"),
            );
        }
    }

    // Policies. A secret policy without `backend` is an error only for the secrets that refer
    // to it (see `check_secrets`), as in wadm; unused, it is only worth a warning.
    let referenced = referenced_policies(manifest);
    let mut policies: HashMap<&str, PolicyInfo> = HashMap::new();
    for (i, policy) in manifest.spec.policies.iter().enumerate() {
        let path = format!("spec.policies[{i}]");
        let info = PolicyInfo {
            policy_type: &policy.policy_type,
            has_backend: policy.properties.contains_key("backend"),
            index: i,
        };
        if policies.insert(&policy.name, info).is_some() {
            c.error(
                format!("{path}.name"),
                format!("duplicate policy name `{}`", policy.name),
            );
        }
        if policy.policy_type == SECRET_POLICY_TYPE
            && !info.has_backend
            && !referenced.contains(policy.name.as_str())
        {
            c.warn(
                format!("{path}.properties"),
                format!(
                    "secret policy `{}` has no `backend` property; no secret refers to it yet, \
                     but one that does will be refused: add `backend` (e.g. `nats-kv`)",
                    policy.name
                ),
            );
        }
    }

    // Components: names, ids, image/application.
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, comp) in manifest.spec.components.iter().enumerate() {
        let path = format!("spec.components[{i}]");
        if let Some(first) = names.insert(&comp.name, i) {
            c.error(
                format!("{path}.name"),
                format!(
                    "duplicate component name `{}` (also spec.components[{first}])",
                    comp.name
                ),
            );
        }
        if comp.name.is_empty() {
            c.error(format!("{path}.name"), "the component name is empty");
        }
        if comp.properties.application.is_none() {
            let id = manifest.id_of(comp);
            if let Some(first) = ids.insert(id.clone(), i) {
                c.error(
                    format!("{path}.properties.id"),
                    format!("duplicate component id `{id}` (also spec.components[{first}])"),
                );
            }
            if !trellis_protocol::subjects::is_valid_token(&id) {
                c.error(
                    format!("{path}.properties.id"),
                    format!("`{id}` is not a valid id: no dots, wildcards or spaces"),
                );
            }
        }
        match (&comp.properties.image, &comp.properties.application) {
            (Some(_), Some(_)) => c.error(
                format!("{path}.properties"),
                "set exactly one of `image` and `application`, not both",
            ),
            (None, None) => c.error(
                format!("{path}.properties"),
                "set exactly one of `image` and `application` (neither is set)",
            ),
            (Some(image), None) if image.trim().is_empty() => {
                c.error(format!("{path}.properties.image"), "the image is empty")
            }
            _ => {}
        }
        if comp.component_type == ComponentType::Actor {
            c.warn(
                format!("{path}.type"),
                "`actor` is deprecated; use `component`",
            );
        }
        check_configs(
            &mut c,
            &format!("{path}.properties.config"),
            &comp.properties.config,
        );
        check_secrets(
            &mut c,
            &format!("{path}.properties.secrets"),
            &comp.properties.secrets,
            &policies,
        );
    }

    // Traits.
    let mut link_keys: HashMap<(String, String, String, String, String), String> = HashMap::new();
    let mut defined_configs: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    for (i, comp) in manifest.spec.components.iter().enumerate() {
        for cfg in &comp.properties.config {
            record_config(
                &mut c,
                &mut defined_configs,
                cfg,
                format!("spec.components[{i}].properties.config"),
            );
        }
        let mut scalers = 0;
        for (j, tr) in comp.traits.iter().enumerate() {
            let path = format!("spec.components[{i}].traits[{j}].properties");
            match tr {
                Trait::SpreadScaler(props) | Trait::DaemonScaler(props) => {
                    scalers += 1;
                    if scalers == 2 {
                        c.error(
                            format!("spec.components[{i}].traits[{j}]"),
                            format!("component `{}` has more than one scaler trait", comp.name),
                        );
                    }
                    if comp.properties.application.is_some() {
                        c.error(
                            format!("spec.components[{i}].traits[{j}]"),
                            "a component taken from a shared application is scaled by that application; remove this scaler",
                        );
                    }
                    let mut spread_names = HashSet::new();
                    for (k, spread) in props.spread.iter().enumerate() {
                        if !spread_names.insert(spread.name.as_str()) {
                            c.error(
                                format!("{path}.spread[{k}].name"),
                                format!("duplicate spread name `{}`", spread.name),
                            );
                        }
                    }
                    if matches!(tr, Trait::SpreadScaler(_))
                        && !props.spread.is_empty()
                        && props.spread.iter().all(|s| s.effective_weight() == 0)
                    {
                        c.error(
                            format!("{path}.spread"),
                            "all spread weights are 0: at least one must be positive",
                        );
                    }
                }
                Trait::Custom(custom) => check_custom_trait(&mut c, &path, custom),
                Trait::Link(link) => {
                    if link.namespace.is_empty() || link.package.is_empty() {
                        c.error(
                            path.clone(),
                            "a link needs a non-empty `namespace` and `package`",
                        );
                    }
                    if link.interfaces.is_empty() {
                        c.error(
                            format!("{path}.interfaces"),
                            "a link needs at least one interface",
                        );
                    }
                    if link.target.name == comp.name {
                        c.error(
                            format!("{path}.target.name"),
                            format!(
                                "component `{}` links to itself: a link goes from one component to another; target a different component",
                                comp.name
                            ),
                        );
                    } else if !manifest
                        .spec
                        .components
                        .iter()
                        .any(|other| other.name == link.target.name)
                    {
                        c.error(
                            format!("{path}.target.name"),
                            format!(
                                "link target `{}` is not a component of this manifest",
                                link.target.name
                            ),
                        );
                    }
                    if let Some(problem) = link.name.as_deref().and_then(link_name_problem) {
                        c.error(format!("{path}.name"), problem);
                    }
                    for iface in &link.interfaces {
                        let key = (
                            comp.name.clone(),
                            link.link_name().to_string(),
                            link.namespace.clone(),
                            link.package.clone(),
                            iface.clone(),
                        );
                        if let Some(other) = link_keys.insert(key, path.clone()) {
                            c.error(
                                format!("{path}.interfaces"),
                                format!(
                                    "duplicate link from `{}` on {}:{}/{} named `{}` (also at {other})",
                                    comp.name,
                                    link.namespace,
                                    link.package,
                                    iface,
                                    link.link_name()
                                ),
                            );
                        }
                    }
                    if let Some((ns_known, ifaces)) = known_package(&link.namespace, &link.package)
                    {
                        match ifaces {
                            Some(ifaces) => {
                                for iface in &link.interfaces {
                                    if !ifaces.contains(&iface.as_str()) {
                                        c.warn(
                                            format!("{path}.interfaces"),
                                            format!(
                                                "unknown interface `{}:{}/{iface}` (known: {})",
                                                link.namespace,
                                                link.package,
                                                ifaces.join(", ")
                                            ),
                                        );
                                    }
                                }
                            }
                            None if ns_known => c.warn(
                                format!("{path}.package"),
                                format!("unknown package `{}:{}`", link.namespace, link.package),
                            ),
                            None => {}
                        }
                    }
                    if link.source_config.is_some() {
                        c.warn(
                            format!("{path}.source_config"),
                            "`source_config` is deprecated; use `source.config`",
                        );
                    }
                    if link.target_config.is_some() {
                        c.warn(
                            format!("{path}.target_config"),
                            "`target_config` is deprecated; use `target.config`",
                        );
                    }
                    let source_cfgs: Vec<ConfigProperty> =
                        link.source_configs().into_iter().cloned().collect();
                    let target_cfgs: Vec<ConfigProperty> =
                        link.target_configs().into_iter().cloned().collect();
                    check_configs(&mut c, &format!("{path}.source.config"), &source_cfgs);
                    check_configs(&mut c, &format!("{path}.target.config"), &target_cfgs);
                    for cfg in source_cfgs.iter() {
                        record_config(
                            &mut c,
                            &mut defined_configs,
                            cfg,
                            format!("{path}.source.config"),
                        );
                    }
                    for cfg in target_cfgs.iter() {
                        record_config(
                            &mut c,
                            &mut defined_configs,
                            cfg,
                            format!("{path}.target.config"),
                        );
                    }
                    if let Some(source) = &link.source {
                        check_secrets(
                            &mut c,
                            &format!("{path}.source.secrets"),
                            &source.secrets,
                            &policies,
                        );
                    }
                    check_secrets(
                        &mut c,
                        &format!("{path}.target.secrets"),
                        &link.target.secrets,
                        &policies,
                    );
                }
            }
        }
    }
    for config_name in defined_configs.keys() {
        let full = model::config_name(name, config_name);
        if !trellis_protocol::subjects::is_valid_token(&full) {
            c.error(
                "spec",
                format!("config name `{full}` is not valid: no dots, wildcards or spaces"),
            );
        }
    }
    c.out
}

/// Returns `(namespace known, interfaces of the package when known)` for a known namespace.
fn known_package(
    namespace: &str,
    package: &str,
) -> Option<(bool, Option<&'static [&'static str]>)> {
    if !KNOWN_INTERFACES.iter().any(|(ns, _, _)| *ns == namespace) {
        return None;
    }
    let ifaces = KNOWN_INTERFACES
        .iter()
        .find(|(ns, pkg, _)| *ns == namespace && *pkg == package)
        .map(|(_, _, ifaces)| *ifaces);
    Some((true, ifaces))
}

fn check_configs(c: &mut Checker, path: &str, configs: &[ConfigProperty]) {
    let mut seen = HashSet::new();
    for (k, cfg) in configs.iter().enumerate() {
        if cfg.name.is_empty() {
            c.error(format!("{path}[{k}].name"), "the config name is empty");
        }
        if !seen.insert(cfg.name.as_str()) {
            c.error(
                format!("{path}[{k}].name"),
                format!("duplicate config name `{}`", cfg.name),
            );
        }
    }
}

/// Configs with properties become `{manifest}-{name}`: two definitions of one name with
/// different values would overwrite each other.
fn record_config(
    c: &mut Checker,
    defined: &mut BTreeMap<String, (String, BTreeMap<String, String>)>,
    cfg: &ConfigProperty,
    path: String,
) {
    let Some(props) = &cfg.properties else {
        return;
    };
    match defined.get(&cfg.name) {
        Some((first_path, first)) if first != props => c.error(
            path,
            format!(
                "config `{}` is defined twice with different properties (also at {first_path})",
                cfg.name
            ),
        ),
        Some(_) => {}
        None => {
            defined.insert(cfg.name.clone(), (path, props.clone()));
        }
    }
}

/// What secrets need to know of a policy.
#[derive(Clone, Copy)]
struct PolicyInfo<'a> {
    policy_type: &'a str,
    has_backend: bool,
    index: usize,
}

/// Names of the policies some secret (of a component, or of a link's source or target) refers to.
fn referenced_policies(manifest: &Manifest) -> HashSet<&str> {
    let mut lists: Vec<&[SecretProperty]> = Vec::new();
    for comp in &manifest.spec.components {
        lists.push(&comp.properties.secrets);
        for tr in &comp.traits {
            if let Trait::Link(link) = tr {
                lists.push(&link.target.secrets);
                if let Some(source) = &link.source {
                    lists.push(&source.secrets);
                }
            }
        }
    }
    lists
        .into_iter()
        .flatten()
        .map(|s| s.properties.policy.as_str())
        .collect()
}

fn check_secrets(
    c: &mut Checker,
    path: &str,
    secrets: &[SecretProperty],
    policies: &HashMap<&str, PolicyInfo>,
) {
    let mut seen = HashSet::new();
    for (k, secret) in secrets.iter().enumerate() {
        if !seen.insert(secret.name.as_str()) {
            c.error(
                format!("{path}[{k}].name"),
                format!("duplicate secret name `{}`", secret.name),
            );
        }
        match policies.get(secret.properties.policy.as_str()) {
            None => c.error(
                format!("{path}[{k}].properties.policy"),
                format!(
                    "secret `{}` refers to policy `{}`, which is not in spec.policies",
                    secret.name, secret.properties.policy
                ),
            ),
            Some(info) if info.policy_type != SECRET_POLICY_TYPE => c.error(
                format!("{path}[{k}].properties.policy"),
                format!(
                    "secret `{}` refers to policy `{}` of type `{}`, not a secret policy (`{SECRET_POLICY_TYPE}`)",
                    secret.name, secret.properties.policy, info.policy_type
                ),
            ),
            Some(info) if !info.has_backend => c.error(
                format!("{path}[{k}].properties.policy"),
                format!(
                    "secret `{}` refers to policy `{}`, which has no `backend` property: add \
                     `backend` (e.g. `nats-kv`) to spec.policies[{}].properties",
                    secret.name, secret.properties.policy, info.index
                ),
            ),
            Some(_) => {}
        }
    }
}

/// Why the components `manifest` takes from shared applications cannot be found among
/// `deployed`, the deployed manifests of the other applications of the lattice: one error per
/// such component whose application is not deployed, is not marked shared
/// (`experimental.wasmcloud.dev/shared: "true"`), lacks the component, or has it as the other
/// kind (component vs capability provider). Empty when every reference resolves.
///
/// As in wadm, a put is accepted anyway (its reply notes these) and a deploy is refused.
pub fn shared_component_problems(manifest: &Manifest, deployed: &[&Manifest]) -> Vec<Diagnostic> {
    let mut c = Checker { out: Vec::new() };
    for (i, comp) in manifest.spec.components.iter().enumerate() {
        let Some(shared) = &comp.properties.application else {
            continue;
        };
        let path = format!("spec.components[{i}].properties.application");
        let Some(app) = deployed.iter().find(|m| m.name() == shared.name) else {
            c.error(
                path,
                format!(
                    "component `{}` comes from application `{}`, which is not deployed: deploy `{}` first",
                    comp.name, shared.name, shared.name
                ),
            );
            continue;
        };
        if !app.is_shared() {
            c.error(
                path,
                format!(
                    "component `{}` comes from application `{}`, which is not marked shared: add the annotation `{}: \"true\"` to `{}` and deploy it again",
                    comp.name,
                    shared.name,
                    model::SHARED_ANNOTATION,
                    shared.name
                ),
            );
            continue;
        }
        match app
            .spec
            .components
            .iter()
            .find(|other| other.name == shared.component)
        {
            None => c.error(
                path,
                format!(
                    "component `{}` comes from shared application `{}`, which has no component `{}`",
                    comp.name, shared.name, shared.component
                ),
            ),
            Some(other)
                if other.component_type.is_provider() != comp.component_type.is_provider() =>
            {
                let kind = |t: ComponentType| {
                    if t.is_provider() {
                        "a capability provider"
                    } else {
                        "a component"
                    }
                };
                c.error(
                    path,
                    format!(
                        "`{}` of shared application `{}` is {}, but `{}` is declared as {}: make the types agree",
                        shared.component,
                        shared.name,
                        kind(other.component_type),
                        comp.name,
                        kind(comp.component_type)
                    ),
                )
            }
            Some(_) => {}
        }
    }
    c.out
}

/// A trait of a type Trellis does not act on. wadm keeps such custom traits and ignores them;
/// Trellis does the same, with a warning naming the type.
fn check_custom_trait(c: &mut Checker, path: &str, custom: &model::CustomTrait) {
    c.warn(
        path.trim_end_matches(".properties").to_string(),
        format!(
            "trait type `{}` is not one wadm or Trellis acts on (spreadscaler, daemonscaler, link): it is kept and ignored, as wadm does",
            custom.kind
        ),
    );
}
