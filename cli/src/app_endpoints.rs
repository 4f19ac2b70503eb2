//! The HTTP URLs an application serves, read from its manifest.
//!
//! An app exposes HTTP through an http-server capability linked (`wasi:http`) to a component.
//! Each link listens on the `address` of its source config, else on the provider's
//! `default_address`, else on 0.0.0.0:8000, as wasmCloud's http-server does.

use serde_json::Value;

/// The address the http-server listens on when nothing says otherwise.
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:8000";

/// Parses manifest text (YAML or JSON) into a JSON value.
pub fn parse_manifest(text: &str) -> anyhow::Result<Value> {
    // JSON is valid YAML, so one parser reads both.
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The manifest's `metadata.name`, if present.
pub fn manifest_name(manifest: &Value) -> Option<&str> {
    manifest.pointer("/metadata/name").and_then(Value::as_str)
}

/// The manifest's `metadata.annotations.version`, if present.
pub fn manifest_version(manifest: &Value) -> Option<&str> {
    manifest
        .pointer("/metadata/annotations/version")
        .and_then(Value::as_str)
}

/// Every `http://HOST:PORT/` URL the app serves, in manifest order, without duplicates.
pub fn http_urls(manifest: &Value) -> Vec<String> {
    let mut urls = Vec::new();
    let components = manifest
        .pointer("/spec/components")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for component in components {
        if !is_http_server(component) {
            continue;
        }
        let default_address =
            config_property(component.pointer("/properties/config"), "default_address");
        for link in link_traits(component) {
            if !is_wasi_http(link) {
                continue;
            }
            let source_config = link
                .pointer("/properties/source/config")
                .or_else(|| link.pointer("/properties/source_config"));
            let address = config_property(source_config, "address")
                .or_else(|| default_address.clone())
                .unwrap_or_else(|| DEFAULT_HTTP_ADDRESS.to_string());
            let path = config_property(source_config, "path").unwrap_or_default();
            let url = format!(
                "http://{}/{}",
                reachable_address(&address),
                path.trim_start_matches('/')
            );
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

/// True for a capability whose image is an http-server provider.
fn is_http_server(component: &Value) -> bool {
    let kind = component.get("type").and_then(Value::as_str).unwrap_or("");
    let image = component
        .pointer("/properties/image")
        .and_then(Value::as_str)
        .unwrap_or("");
    kind == "capability" && image.contains("http-server")
}

fn link_traits(component: &Value) -> impl Iterator<Item = &Value> {
    component
        .get("traits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("link"))
}

fn is_wasi_http(link: &Value) -> bool {
    let namespace = link
        .pointer("/properties/namespace")
        .and_then(Value::as_str);
    let package = link.pointer("/properties/package").and_then(Value::as_str);
    namespace == Some("wasi") && package == Some("http")
}

/// The first value of `key` (case-insensitive, as the http-server reads keys) among the
/// inline properties of a config list `[{name, properties}]`.
fn config_property(configs: Option<&Value>, key: &str) -> Option<String> {
    configs?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("properties").and_then(Value::as_object))
        .flat_map(|props| props.iter())
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .and_then(|(_, v)| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// The address a local client dials for a listen address: a wildcard bind becomes loopback.
pub fn reachable_address(listen: &str) -> String {
    let listen = listen.trim();
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        return format!("127.0.0.1:{port}");
    }
    if let Some(port) = listen.strip_prefix("[::]:") {
        return format!("[::1]:{port}");
    }
    if let Some(port) = listen.strip_prefix(':') {
        return format!("127.0.0.1:{port}");
    }
    listen.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: hello
  annotations:
    version: v0.1.0
spec:
  components:
    - name: http-component
      type: component
      properties:
        image: file://./hello.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
      traits:
        - type: link
          properties:
            target: http-component
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    address: 0.0.0.0:8080
"#;

    #[test]
    fn link_address_gives_loopback_url() {
        let m = parse_manifest(HELLO).unwrap();
        assert_eq!(http_urls(&m), vec!["http://127.0.0.1:8080/"]);
        assert_eq!(manifest_name(&m), Some("hello"));
        assert_eq!(manifest_version(&m), Some("v0.1.0"));
    }

    #[test]
    fn default_address_then_builtin_default() {
        let m = parse_manifest(
            r#"{"metadata":{"name":"a"},"spec":{"components":[
              {"name":"s","type":"capability","properties":{"image":"wasmcloud+builtin://http-server",
                "config":[{"name":"c","properties":{"DEFAULT_ADDRESS":"10.0.0.5:9000"}}]},
               "traits":[{"type":"link","properties":{"namespace":"wasi","package":"http","target":"x","interfaces":["incoming-handler"]}}]},
              {"name":"t","type":"capability","properties":{"image":"trellis+builtin://http-server"},
               "traits":[{"type":"link","properties":{"namespace":"wasi","package":"http","target":"y","interfaces":["incoming-handler"],
                 "source_config":[{"name":"old","properties":{"address":"[::]:7000"}}]}},
                 {"type":"link","properties":{"namespace":"wasi","package":"http","target":"z","interfaces":["incoming-handler"]}}]}
            ]}}"#,
        )
        .unwrap();
        assert_eq!(
            http_urls(&m),
            vec![
                "http://10.0.0.5:9000/",
                "http://[::1]:7000/",
                "http://127.0.0.1:8000/"
            ]
        );
    }

    #[test]
    fn non_http_links_and_components_are_ignored() {
        let m = parse_manifest(
            r#"{"spec":{"components":[
              {"name":"kv","type":"capability","properties":{"image":"ghcr.io/wasmcloud/keyvalue-nats:1"},
               "traits":[{"type":"link","properties":{"namespace":"wasi","package":"keyvalue","target":"x","interfaces":["store"]}}]},
              {"name":"c","type":"component","properties":{"image":"http-server.wasm"}}
            ]}}"#,
        )
        .unwrap();
        assert!(http_urls(&m).is_empty());
        assert!(http_urls(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn path_is_appended() {
        let m = parse_manifest(
            r#"{"spec":{"components":[{"name":"s","type":"capability","properties":{"image":"http-server"},
               "traits":[{"type":"link","properties":{"namespace":"wasi","package":"http","target":"x",
                 "source":{"config":[{"name":"p","properties":{"address":"127.0.0.1:8001","path":"/api"}}]}}}]}]}}"#,
        )
        .unwrap();
        assert_eq!(http_urls(&m), vec!["http://127.0.0.1:8001/api"]);
    }

    #[test]
    fn wildcard_addresses_become_loopback() {
        assert_eq!(reachable_address("0.0.0.0:80"), "127.0.0.1:80");
        assert_eq!(reachable_address(":81"), "127.0.0.1:81");
        assert_eq!(reachable_address("192.168.1.2:82"), "192.168.1.2:82");
    }
}
