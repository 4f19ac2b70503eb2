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

// Unknown fields: accepted with a warning where wadm (wadm-types) ignores them, refused where
// its types are `deny_unknown_fields` or its validation refuses the result.

/// A valid manifest: component `a`, and provider `http` linking to `a`. `extra_*` lines are
/// inserted (already indented) into `metadata`, component `a`, `a`'s properties, the link's
/// properties, its `target` and its `source`.
fn wadm_manifest(
    metadata: &str,
    component: &str,
    properties: &str,
    link: &str,
    target: &str,
    source: &str,
) -> String {
    format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: compat\n{metadata}spec:\n  components:\n    - name: a\n      type: component\n{component}      properties:\n        image: file:///a.wasm\n{properties}      traits:\n        - type: spreadscaler\n          properties:\n            instances: 1\n    - name: http\n      type: capability\n      properties:\n        image: ghcr.io/wasmcloud/http-server:0.27.0\n      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            package: http\n            interfaces: [incoming-handler]\n{link}            target:\n              name: a\n{target}            source:\n              config: []\n{source}"
    )
}

/// Parses `yaml`, which must be accepted, and returns its ignored-field warnings as text.
fn ignored_of(yaml: &str) -> Vec<String> {
    let parsed = parse_manifest(yaml.as_bytes())
        .unwrap_or_else(|e| panic!("should be accepted: {e}\n{yaml}"));
    assert!(
        parsed
            .ignored
            .iter()
            .all(|d| d.severity == crate::validation::Severity::Warning),
        "{:?}",
        parsed.ignored
    );
    parsed.ignored.iter().map(ToString::to_string).collect()
}

/// Asserts `yaml` is refused with an error whose path and message contain the fragments.
fn refused_at(yaml: &str, path: &str, message: &str) {
    let err = match parse_manifest(yaml.as_bytes()) {
        Ok(p) => panic!("accepted, warnings {:?}\n{yaml}", p.ignored),
        Err(e) => e,
    };
    assert!(
        err.diagnostics
            .iter()
            .any(|d| d.severity == crate::validation::Severity::Error
                && d.path.contains(path)
                && d.message.contains(message)),
        "no error at `{path}` with `{message}`: {err}"
    );
}

#[test]
fn the_compat_manifest_itself_has_no_ignored_fields() {
    assert_eq!(
        ignored_of(&wadm_manifest("", "", "", "", "", "")),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_key_in_a_link_target_is_ignored_with_a_warning() {
    let yaml = wadm_manifest("", "", "", "", "              foo: bar\n", "");
    let warnings = ignored_of(&yaml);
    assert_eq!(
        warnings,
        vec!["warning: spec.components[1].traits[0].properties.target.foo: unknown field `foo`, ignored (wadm ignores it too); remove it, or check its spelling if you meant a known field".to_string()]
    );
}

#[test]
fn unknown_key_in_a_link_source_is_ignored_with_a_warning() {
    let yaml = wadm_manifest("", "", "", "", "", "              secretz: []\n");
    let warnings = ignored_of(&yaml);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(
            "spec.components[1].traits[0].properties.source.secretz: unknown field `secretz`"
        ),
        "{warnings:?}"
    );
}

#[test]
fn unknown_key_in_link_properties_is_ignored_with_a_warning() {
    let yaml = wadm_manifest("", "", "", "            weight: 3\n", "", "");
    let warnings = ignored_of(&yaml);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .contains("spec.components[1].traits[0].properties.weight: unknown field `weight`"),
        "{warnings:?}"
    );
}

#[test]
fn unknown_keys_of_lenient_blocks_are_each_named() {
    // metadata, a component entry, a shared-application reference, a secret and its
    // properties, a policy, spec, and a link target's secret: wadm ignores unknown keys in all.
    let yaml = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: lenient
  namespace: default
spec:
  replicas: 2
  policies:
    - name: vault
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties: {backend: nats-kv}
      description: the vault
  components:
    - name: a
      type: component
      owner: team-a
      properties:
        image: file:///a.wasm
        secrets:
          - name: s
            mount: /run/s
            properties: {policy: vault, key: k, ttl: 5}
    - name: shared
      type: component
      properties:
        application: {name: base, component: c, region: eu}
    - name: kv
      type: capability
      properties:
        image: ghcr.io/wasmcloud/keyvalue-nats:0.3.1
      traits:
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store]
            target:
              name: a
              secrets:
                - name: t
                  properties: {policy: vault, key: k2, path: x}
"#;
    let warnings = ignored_of(yaml);
    let expected = [
        "metadata.namespace",
        "spec.replicas",
        "spec.policies[0].description",
        "spec.components[0].owner",
        "spec.components[0].properties.secrets[0].mount",
        "spec.components[0].properties.secrets[0].properties.ttl",
        "spec.components[1].properties.application.region",
        "spec.components[2].traits[0].properties.target.secrets[0].properties.path",
    ];
    for path in expected {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("{path}: unknown field"))),
            "no warning for {path}: {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
}

#[test]
fn ignored_fields_are_found_when_properties_precede_the_trait_type() {
    // Tools that sort JSON keys write `properties` before `type`.
    let yaml = wadm_manifest("", "", "", "", "              foo: bar\n", "");
    let mut value: serde_json::Value = serde_norway::from_str(&yaml).expect("yaml");
    let json = serde_json::to_string(&value).expect("json");
    let props_first = json
        .find("\"properties\":{\"interfaces\"")
        .expect("sorted keys");
    assert!(
        props_first < json.rfind("\"type\":\"link\"").expect("type"),
        "{json}"
    );
    let parsed = parse_manifest(json.as_bytes()).expect("accepted");
    let text: Vec<String> = parsed.ignored.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].contains("spec.components[1].traits[0].properties.target.foo"),
        "{text:?}"
    );
    // The manifest itself is the same as without the ignored key.
    value["spec"]["components"][1]["traits"][0]["properties"]["target"]
        .as_object_mut()
        .expect("target map")
        .remove("foo");
    let clean = parse_manifest(value.to_string().as_bytes()).expect("accepted");
    assert_eq!(clean.manifest, parsed.manifest);
    assert!(clean.ignored.is_empty(), "{:?}", clean.ignored);
}

#[test]
fn ignored_fields_are_warnings_of_the_put_not_of_validation() {
    let yaml = wadm_manifest("  extra: 1\n", "", "", "", "", "");
    let parsed = parse_manifest(yaml.as_bytes()).expect("accepted");
    assert_eq!(
        crate::validation::validate(&parsed.manifest),
        parsed.warnings,
        "warnings stay exactly validation's"
    );
    let all: Vec<String> = parsed.all_warnings().map(ToString::to_string).collect();
    assert!(
        all.iter()
            .any(|w| w.contains("metadata.extra: unknown field `extra`")),
        "{all:?}"
    );
}

#[test]
fn many_ignored_fields_are_counted_after_the_first_ones() {
    let extra: String = (0..30).map(|i| format!("  extra{i}: 1\n")).collect();
    let warnings = ignored_of(&wadm_manifest(&extra, "", "", "", "", ""));
    assert_eq!(
        warnings.len(),
        MAX_IGNORED_FIELD_WARNINGS + 1,
        "{warnings:?}"
    );
    assert!(
        warnings.last().is_some_and(|w| w.contains(&format!(
            "{} more unknown fields",
            30 - MAX_IGNORED_FIELD_WARNINGS
        ))),
        "{warnings:?}"
    );
}

#[test]
fn odd_ignored_keys_are_quoted_not_spliced_into_the_path() {
    let yaml = wadm_manifest("  \"a.b: c\": 1\n", "", "", "", "", "");
    let warnings = ignored_of(&yaml);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(r#"metadata["a.b: c"]: unknown field "a.b: c""#),
        "{warnings:?}"
    );
}

#[test]
fn unknown_key_in_component_properties_is_refused_as_in_wadm() {
    // wadm's ComponentProperties and CapabilityProperties are deny_unknown_fields.
    refused_at(
        &wadm_manifest("", "", "        replicas: 3\n", "", "", ""),
        "spec.components[0].properties",
        "unknown field `replicas`",
    );
}

#[test]
fn unknown_key_in_spreadscaler_properties_is_refused_as_in_wadm() {
    // wadm's SpreadScalerProperty is deny_unknown_fields: the trait then parses as a custom
    // trait, which wadm's validation refuses ("Scaler trait deserialized as custom trait").
    let yaml = wadm_manifest("", "", "", "", "", "").replace(
        "            instances: 1\n",
        "            instances: 1\n            weight: 5\n",
    );
    refused_at(&yaml, "spec.components[0].traits[0].properties", "weight");
    let spread = wadm_manifest("", "", "", "", "", "").replace(
        "            instances: 1\n",
        "            instances: 1\n            spread:\n              - name: eu\n                requirements: {zone: eu}\n                wieght: 2\n",
    );
    refused_at(&spread, "spec.components[0].traits[0].properties", "wieght");
}

#[test]
fn unknown_keys_where_wadm_denies_them_are_refused() {
    // Manifest (top level).
    let top = format!("{}status: ok\n", wadm_manifest("", "", "", "", "", ""));
    refused_at(&top, "status", "unknown field `status`");
    // Trait entry.
    let in_trait = wadm_manifest("", "", "", "", "", "").replace(
        "        - type: spreadscaler\n",
        "        - type: spreadscaler\n          enabled: true\n",
    );
    refused_at(&in_trait, "spec.components[0].traits[0]", "enabled");
    // A config entry, of a component and of a link target (ConfigProperty denies).
    refused_at(
        &wadm_manifest(
            "",
            "",
            "        config:\n          - name: c\n            propertes: {a: b}\n",
            "",
            "",
            "",
        ),
        "spec.components[0].properties.config[0]",
        "unknown field `propertes`",
    );
    refused_at(
        &wadm_manifest(
            "",
            "",
            "",
            "",
            "              config:\n                - name: c\n                  value: x\n",
            "",
        ),
        "spec.components[1].traits[0].properties",
        "value",
    );
}
