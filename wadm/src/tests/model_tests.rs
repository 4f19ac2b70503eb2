use crate::model::*;
use crate::tests::EXAMPLE_YAML;

#[test]
fn parses_the_reference_example_in_yaml() {
    let parsed = parse_manifest(EXAMPLE_YAML.as_bytes()).expect("valid manifest");
    let m = parsed.manifest;
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(m.name(), "rust-hello-world");
    assert_eq!(m.version(), Some("v0.0.1"));
    assert_eq!(m.description(), Some("HTTP hello world"));
    assert_eq!(m.metadata.labels["team"], "edge");
    assert_eq!(m.spec.policies[0].properties["backend"], "nats-kv");
    let comp = &m.spec.components[0];
    assert_eq!(comp.component_type, ComponentType::Component);
    let cfg = comp.properties.config[0]
        .properties
        .as_ref()
        .expect("props");
    assert_eq!(cfg["port"], "8080", "numbers read as strings");
    assert!(comp.properties.config[1].properties.is_none());
    assert_eq!(
        comp.properties.secrets[0].properties.field.as_deref(),
        Some("value")
    );
    match &comp.traits[0] {
        Trait::SpreadScaler(p) => {
            assert_eq!(p.instances, 10, "replicas is an alias of instances");
            assert_eq!(p.spread[0].weight, Some(80));
            assert_eq!(p.spread[1].requirements["zone"], "us-west-1");
        }
        other => panic!("unexpected trait {other:?}"),
    }
    let provider = &m.spec.components[1];
    assert!(provider.component_type.is_provider());
    match &provider.traits[0] {
        Trait::Link(l) => {
            assert_eq!(l.link_name(), "default");
            assert_eq!(l.target.name, "http-component");
            assert_eq!(l.source_configs()[0].name, "default-http");
            assert_eq!(l.target_configs()[0].name, "target-cfg");
        }
        other => panic!("unexpected trait {other:?}"),
    }
    assert!(matches!(provider.traits[1], Trait::DaemonScaler(_)));
    assert_eq!(m.id_of(provider), "http-server");
    assert_eq!(
        m.component_id("http-component").as_deref(),
        Some("rust_hello_world-http_component")
    );
}

#[test]
fn parses_json_and_round_trips() {
    let parsed = parse_manifest(EXAMPLE_YAML.as_bytes()).expect("valid");
    let json = serde_json::to_vec(&parsed.manifest).expect("encode");
    let back = parse_manifest(&json).expect("JSON parses");
    assert_eq!(back.manifest, parsed.manifest);
}

#[test]
fn old_link_target_form_and_deprecated_fields_parse_with_warnings() {
    let yaml = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: old}
spec:
  components:
    - name: a
      type: actor
      properties: {image: file:///a.wasm}
    - name: kv
      type: capability
      properties: {image: ghcr.io/wasmcloud/keyvalue-redis:0.28.1}
      traits:
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store]
            target: a
            source_config:
              - name: redis
                properties: {URL: "redis://127.0.0.1:6379"}
"#;
    let parsed = parse_manifest(yaml.as_bytes()).expect("accepted");
    let text: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        text.iter().any(|w| w.contains("`actor` is deprecated")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|w| w.contains("spec.components[1].traits[0].properties.source_config")),
        "{text:?}"
    );
    match &parsed.manifest.spec.components[1].traits[0] {
        Trait::Link(l) => {
            assert_eq!(l.target.name, "a");
            assert_eq!(l.source_configs()[0].name, "redis");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn derived_ids_lowercase_and_replace() {
    assert_eq!(
        derived_id("rust-hello-world", "http-component"),
        "rust_hello_world-http_component"
    );
    assert_eq!(derived_id("My.App", "Comp 1"), "my_app-comp_1");
    assert_eq!(config_name("hello", "default-http"), "hello-default-http");
}

#[test]
fn unknown_field_names_the_path_and_line() {
    let yaml = "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: x\nspec:\n  components:\n    - name: a\n      type: component\n      properties:\n        image: x\n        imagee: y\n";
    let err = parse_manifest(yaml.as_bytes()).expect_err("rejected");
    let d = &err.diagnostics[0];
    assert_eq!(d.path, "spec.components[0].properties.imagee");
    assert_eq!(d.line, Some(11));
    assert!(
        d.message.contains("unknown field `imagee`"),
        "{}",
        d.message
    );
}

#[test]
fn wrong_trait_shape_says_which_field() {
    let yaml = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: x}
spec:
  components:
    - name: a
      type: component
      properties: {image: x}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spreads: []
"#;
    let err = parse_manifest(yaml.as_bytes()).expect_err("rejected");
    let text = err.to_string();
    assert!(
        text.contains("spec.components[0].traits[0].properties"),
        "{text}"
    );
    assert!(text.contains("spreads"), "{text}");
    assert!(err.diagnostics[0].line.is_some(), "{text}");
}

#[test]
fn json_errors_carry_path_and_line() {
    let json = "{\n \"apiVersion\": \"core.oam.dev/v1beta1\",\n \"kind\": \"Application\",\n \"metadata\": {\"name\": 5},\n \"spec\": {\"components\": []}\n}";
    let err = parse_manifest(json.as_bytes()).expect_err("rejected");
    let d = &err.diagnostics[0];
    assert_eq!(d.path, "metadata.name");
    assert_eq!(d.line, Some(4));
}

#[test]
fn empty_and_garbage_input_say_so() {
    let err = parse_manifest(b"   ").expect_err("rejected");
    assert!(err.to_string().contains("empty"));
    let err = parse_manifest(b"- a\n- b\n").expect_err("rejected");
    assert!(!err.to_string().is_empty());
}

#[test]
fn json_with_trailing_data_is_refused() {
    let json = serde_json::to_string(
        &parse_manifest(EXAMPLE_YAML.as_bytes())
            .expect("valid")
            .manifest,
    )
    .expect("json");
    assert!(parse_manifest(json.as_bytes()).is_ok());
    assert!(parse_manifest(format!("{json}\n  \n").as_bytes()).is_ok());
    for garbage in ["x", "{}", "]", "\n{\"a\":1}"] {
        let err = parse_manifest(format!("{json}{garbage}").as_bytes()).expect_err("trailing");
        let message = err.to_string();
        assert!(
            message.contains("unexpected data after the JSON document"),
            "{message}"
        );
        assert!(err.diagnostics[0].line.is_some(), "{message}");
    }
}
