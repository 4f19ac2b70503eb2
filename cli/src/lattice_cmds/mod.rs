//! Lattice commands over the control interface: inspect hosts, run and stop work, manage
//! links, configs and labels.

mod get;
mod settings;
mod workload;

use std::collections::BTreeMap;

use anyhow::bail;

pub use get::{run_get, GetArgs};
pub use settings::{run_config, run_label, run_link, ConfigArgs, LabelArgs, LinkArgs};
pub(crate) use workload::{await_event, event_error, subscribe_events, EventOutcome};
pub use workload::{
    run_scale, run_start, run_stop, run_stop_host, ScaleArgs, StartArgs, StopArgs, StopHostArgs,
};

/// Parses `k=v` into its two halves; the value may contain `=`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Collects `k=v` pairs into a map, refusing a key given twice with different values.
pub fn pairs_to_map(pairs: &[(String, String)]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if let Some(previous) = map.insert(k.clone(), v.clone()) {
            if &previous != v {
                bail!("{k} is given twice ({previous:?} and {v:?})");
            }
        }
    }
    Ok(map)
}

/// Parses `namespace:package` (an optional `/interface` suffix is rejected: use --interface).
pub fn parse_wit_package(s: &str) -> Result<(String, String), String> {
    let (ns, pkg) = s
        .split_once(':')
        .ok_or_else(|| format!("expected NAMESPACE:PACKAGE such as wasi:http, got {s:?}"))?;
    if ns.is_empty() || pkg.is_empty() || pkg.contains('/') || pkg.contains(':') {
        return Err(format!(
            "expected NAMESPACE:PACKAGE such as wasi:http (interfaces go in --interface), got {s:?}"
        ));
    }
    // A version suffix (`wasi:http@0.2.0`) is not part of a link's identity.
    let pkg = pkg.split('@').next().unwrap_or(pkg);
    Ok((ns.to_string(), pkg.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_on_first_equals() {
        assert_eq!(
            parse_key_value("url=redis://a?b=c").unwrap(),
            ("url".to_string(), "redis://a?b=c".to_string())
        );
        assert_eq!(parse_key_value("k=").unwrap().1, "");
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn duplicate_keys_with_different_values_are_refused() {
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "1".to_string()),
        ];
        assert_eq!(pairs_to_map(&pairs).unwrap().len(), 1);
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        assert!(pairs_to_map(&pairs).is_err());
    }

    #[test]
    fn wit_packages_parse() {
        assert_eq!(
            parse_wit_package("wasi:keyvalue").unwrap(),
            ("wasi".to_string(), "keyvalue".to_string())
        );
        assert_eq!(parse_wit_package("wasi:http@0.2.0").unwrap().1, "http");
        assert!(parse_wit_package("wasi").is_err());
        assert!(parse_wit_package("wasi:http/incoming-handler").is_err());
    }
}
