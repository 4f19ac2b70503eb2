//! Size and shape limits of what a control request may carry, and the checks that apply them.
//!
//! Everything a host keeps and reports back (labels, annotations, configs, links) ends up in
//! NATS messages (heartbeats, `host.ping`/`host.get` replies, events) or in NATS subjects (KV
//! keys). NATS refuses a payload over the server's `max_payload` (1 MiB by default) and closes
//! a connection whose control line is over 4 KiB, so unbounded input would make a host drop its
//! own heartbeats or lose its connection. These limits keep every such message far below those
//! bounds. Each check returns a message that names the field, the limit and what to do.

use std::collections::{BTreeMap, HashMap};

use crate::ctl::{Link, LinkKey};

/// Longest id (component, provider, link source or target), config name or lattice name. It
/// is one NATS subject token, so it also bounds the subjects and KV keys built from it.
pub const MAX_ID_BYTES: usize = 256;
/// Longest link name.
pub const MAX_LINK_NAME_BYTES: usize = 128;
/// Longest WIT namespace, package or interface name in a link.
pub const MAX_WIT_NAME_BYTES: usize = 128;
/// Most interfaces one link may list.
pub const MAX_LINK_INTERFACES: usize = 64;
/// Most named configs a link (each side), a scale or a provider start may list.
pub const MAX_CONFIG_NAMES: usize = 64;

/// Most user labels a host may carry (the built-in `hostcore.*` labels do not count).
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_BYTES: usize = 128;
/// Longest label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// Most annotations a component or provider may be started with; keys and values follow the
/// label limits.
pub const MAX_ANNOTATIONS: usize = 64;

/// Longest key of a named config.
pub const MAX_CONFIG_KEY_BYTES: usize = 256;
/// Longest value of a named config.
pub const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
/// Largest named config, measured as the JSON it is stored and sent as.
pub const MAX_CONFIG_BYTES: usize = 512 * 1024;

/// Longest image reference (`component_ref`, `provider_ref`): the longest Linux path.
pub const MAX_IMAGE_REF_BYTES: usize = 4096;

/// Shows at most the first 64 characters of `value`, so an error about a huge value stays small.
pub fn preview(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}… ({} bytes)", &value[..cut], value.len()),
        None => value.to_string(),
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "field `{field}` is {} bytes long; the limit is {max} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Checks that `value` can stand as one NATS subject token of at most `max` bytes: not empty,
/// no `.`, no wildcard (`*`, `>`), no whitespace or control characters.
pub fn check_token(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("field `{field}` must not be empty"));
    }
    check_len(field, value, max)?;
    if let Some(bad) = value
        .chars()
        .find(|&c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        let what = match bad {
            '*' | '>' => format!("the NATS wildcard `{bad}`"),
            '.' => "`.`".to_string(),
            _ => format!("the character {bad:?}"),
        };
        return Err(format!(
            "field `{field}` is `{}`, which contains {what}: use letters, digits, `-` or `_` \
             (no `.`, spaces or the wildcards `*` and `>`)",
            preview(value)
        ));
    }
    Ok(())
}

/// Checks a component or provider id (or a link's source or target).
pub fn check_id(field: &str, value: &str) -> Result<(), String> {
    check_token(field, value, MAX_ID_BYTES)
}

/// Checks a config name, as used in `config.*` subjects and in KV keys.
pub fn check_config_name(field: &str, name: &str) -> Result<(), String> {
    check_token(field, name, MAX_ID_BYTES)
}

/// Checks a list of config names (a scale's, a provider start's or one side of a link).
pub fn check_config_names(field: &str, names: &[String]) -> Result<(), String> {
    if names.len() > MAX_CONFIG_NAMES {
        return Err(format!(
            "field `{field}` lists {} configs; the limit is {MAX_CONFIG_NAMES}",
            names.len()
        ));
    }
    names
        .iter()
        .try_for_each(|name| check_config_name(field, name))
}

/// Checks a WIT namespace, package or interface name: a subject token that also has none of
/// the separators of `namespace:package/interface@version`.
fn check_wit_name(field: &str, value: &str) -> Result<(), String> {
    check_token(field, value, MAX_WIT_NAME_BYTES)?;
    if let Some(bad) = value.chars().find(|c| matches!(c, ':' | '/' | '@')) {
        return Err(format!(
            "field `{field}` is `{}`, which contains `{bad}`: give the bare name (e.g. \
             `wasi`, `keyvalue`, `store`), not `namespace:package/interface@version`",
            preview(value)
        ));
    }
    Ok(())
}

/// Checks the identity of a link (what `link.del` names): source, namespace, package, name.
pub fn check_link_key(key: &LinkKey) -> Result<(), String> {
    check_id("source_id", &key.source_id)?;
    check_token("name", &key.name, MAX_LINK_NAME_BYTES)?;
    check_wit_name("wit_namespace", &key.wit_namespace)?;
    check_wit_name("wit_package", &key.wit_package)
}

/// Checks a whole link before anything is built from it: every field's shape and length, the
/// interface and config lists, and that it does not link a component to itself.
pub fn check_link(link: &Link) -> Result<(), String> {
    check_link_key(&link.key())?;
    check_id("target", &link.target)?;
    if link.source_id == link.target {
        return Err(format!(
            "the link's source and target are both `{}`: a component cannot link to itself; \
             name another component or provider as `target`",
            preview(&link.source_id)
        ));
    }
    if link.interfaces.is_empty() {
        return Err("field `interfaces` must list at least one interface name".into());
    }
    if link.interfaces.len() > MAX_LINK_INTERFACES {
        return Err(format!(
            "field `interfaces` lists {} interfaces; the limit is {MAX_LINK_INTERFACES}",
            link.interfaces.len()
        ));
    }
    for interface in &link.interfaces {
        check_wit_name("interfaces", interface)?;
    }
    check_config_names("source_config", &link.source_config)?;
    check_config_names("target_config", &link.target_config)
}

/// Checks a label key: not empty, short, no control characters, not in the host's own
/// `hostcore.` namespace.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("label keys must not be empty".into());
    }
    if key.len() > MAX_LABEL_KEY_BYTES {
        return Err(format!(
            "label key `{}` is {} bytes long; the limit is {MAX_LABEL_KEY_BYTES} bytes",
            preview(key),
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(format!(
            "label key {:?} contains control characters",
            preview(key)
        ));
    }
    if key.starts_with("hostcore.") {
        return Err(format!(
            "label `{key}` is set by the host itself and cannot be changed"
        ));
    }
    Ok(())
}

/// Checks a label (key and value).
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    check_label_key(key)?;
    check_value("label", key, value)
}

/// Checks the labels a host starts with: each label, and their number.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels were given; a host carries at most {MAX_LABELS}",
            labels.len()
        ));
    }
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

fn check_value(what: &str, key: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(format!(
            "the value of {what} `{}` is {} bytes long; the limit is {MAX_LABEL_VALUE_BYTES} bytes",
            preview(key),
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "the value of {what} `{}` contains control characters",
            preview(key)
        ));
    }
    Ok(())
}

/// Checks the annotations of a scale or provider start (they are reported in every heartbeat).
pub fn check_annotations(annotations: &BTreeMap<String, String>) -> Result<(), String> {
    if annotations.len() > MAX_ANNOTATIONS {
        return Err(format!(
            "field `annotations` has {} entries; the limit is {MAX_ANNOTATIONS}",
            annotations.len()
        ));
    }
    for (key, value) in annotations {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(format!(
                "annotation key `{}` must be 1 to {MAX_LABEL_KEY_BYTES} bytes without control characters",
                preview(key)
            ));
        }
        check_value("annotation", key, value)?;
    }
    Ok(())
}

/// Checks an image reference's length (`component_ref`, `provider_ref`, `new_component_ref`).
pub fn check_image_ref(field: &str, image_ref: &str) -> Result<(), String> {
    check_len(field, image_ref, MAX_IMAGE_REF_BYTES)
}

/// Checks a named config: key and value lengths and the whole config's size as JSON.
pub fn check_config(values: &HashMap<String, String>) -> Result<(), String> {
    for (key, value) in values {
        if key.len() > MAX_CONFIG_KEY_BYTES {
            return Err(format!(
                "config key `{}` is {} bytes long; the limit is {MAX_CONFIG_KEY_BYTES} bytes",
                preview(key),
                key.len()
            ));
        }
        if value.len() > MAX_CONFIG_VALUE_BYTES {
            return Err(format!(
                "the value of config key `{}` is {} bytes long; the limit is \
                 {MAX_CONFIG_VALUE_BYTES} bytes: keep large data in a blob or key-value store \
                 and put its location in the config",
                preview(key),
                value.len()
            ));
        }
    }
    let size = serde_json::to_vec(values)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_CONFIG_BYTES {
        return Err(format!(
            "the config is {size} bytes as JSON; the limit is {MAX_CONFIG_BYTES} bytes: split it \
             into several named configs"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        serde_json::from_value(serde_json::json!({
            "source_id": "app-caller", "target": "app-kv", "wit_namespace": "wasi",
            "wit_package": "keyvalue", "interfaces": ["store", "atomics"],
            "source_config": ["caller-cfg"], "target_config": []
        }))
        .unwrap()
    }

    #[test]
    fn valid_links_pass() {
        check_link(&link()).unwrap();
        let mut l = link();
        l.name = "my_link-2".into();
        l.source_id = "MBCFOPM6JW2APJLXJD3Z5O4CN7CPYJ2B4FTKLJUR5YR5MITIU7HD3WD5".into();
        check_link(&l).unwrap();
    }

    #[test]
    fn long_source_id_is_refused_naming_the_limit() {
        let mut l = link();
        l.source_id = "a".repeat(5000);
        let e = check_link(&l).unwrap_err();
        assert!(
            e.contains("source_id") && e.contains("5000") && e.contains("256"),
            "{e}"
        );
        // The message itself stays small.
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn self_links_and_wildcard_names_are_refused() {
        let mut l = link();
        l.target = l.source_id.clone();
        assert!(check_link(&l)
            .unwrap_err()
            .contains("cannot link to itself"));
        for name in ["*", ">", "a.b", "a b", ""] {
            let mut l = link();
            l.name = name.into();
            let e = check_link(&l).unwrap_err();
            assert!(e.contains("`name`"), "{name:?}: {e}");
        }
        let mut l = link();
        l.name = "*".into();
        assert!(check_link(&l).unwrap_err().contains("wildcard `*`"));
    }

    #[test]
    fn wit_fields_and_lists_are_checked() {
        let mut l = link();
        l.wit_package = "keyvalue/store".into();
        assert!(check_link(&l).unwrap_err().contains("wit_package"));
        let mut l = link();
        l.interfaces = vec![];
        assert!(check_link(&l).unwrap_err().contains("interfaces"));
        let mut l = link();
        l.interfaces = (0..=MAX_LINK_INTERFACES).map(|i| format!("i{i}")).collect();
        assert!(check_link(&l).unwrap_err().contains("limit is 64"));
        let mut l = link();
        l.interfaces = vec!["store@v2".into()];
        assert!(check_link(&l).unwrap_err().contains("`@`"));
        let mut l = link();
        l.target_config = vec!["x".repeat(MAX_ID_BYTES + 1)];
        assert!(check_link(&l).unwrap_err().contains("target_config"));
        let key = LinkKey {
            source_id: "a".into(),
            wit_namespace: "wasi".into(),
            wit_package: "http".into(),
            name: ">".into(),
        };
        assert!(check_link_key(&key).is_err());
    }

    #[test]
    fn labels_are_bounded() {
        check_label("zone", "eu-west").unwrap();
        let e = check_label("k", &"v".repeat(MAX_LABEL_VALUE_BYTES + 1)).unwrap_err();
        assert!(e.contains("1024"), "{e}");
        let e = check_label(&"k".repeat(MAX_LABEL_KEY_BYTES + 1), "v").unwrap_err();
        assert!(e.contains("128"), "{e}");
        assert!(check_label("hostcore.os", "x").is_err());
        assert!(check_label("a\nb", "x").is_err());
        assert!(check_label("a", "x\u{0}").is_err());
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(check_labels(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn annotations_are_bounded() {
        let mut a = BTreeMap::from([("wasmcloud.dev/appspec".to_string(), "app".to_string())]);
        check_annotations(&a).unwrap();
        a.insert("big".into(), "x".repeat(MAX_LABEL_VALUE_BYTES + 1));
        assert!(check_annotations(&a).unwrap_err().contains("1024"));
    }

    #[test]
    fn configs_are_bounded() {
        let ok = HashMap::from([("url".to_string(), "redis://127.0.0.1".to_string())]);
        check_config(&ok).unwrap();
        let long_key = HashMap::from([("k".repeat(MAX_CONFIG_KEY_BYTES + 1), String::new())]);
        assert!(check_config(&long_key).unwrap_err().contains("256"));
        let long_value = HashMap::from([("k".to_string(), "v".repeat(MAX_CONFIG_VALUE_BYTES + 1))]);
        assert!(check_config(&long_value).unwrap_err().contains("65536"));
        let total: HashMap<String, String> = (0..9)
            .map(|i| (format!("k{i}"), "v".repeat(MAX_CONFIG_VALUE_BYTES)))
            .collect();
        assert!(check_config(&total).unwrap_err().contains("524288"));
    }

    #[test]
    fn previews_are_short() {
        assert_eq!(preview("short"), "short");
        let p = preview(&"é".repeat(100));
        assert!(
            p.starts_with(&"é".repeat(64)) && p.contains("200 bytes"),
            "{p}"
        );
    }
}
