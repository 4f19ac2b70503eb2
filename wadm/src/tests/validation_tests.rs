use crate::model::parse_manifest;
use crate::validation::{is_valid_label_key, Severity};

/// A manifest with `name`, extra metadata lines, and `components` (indented list items).
fn manifest(name: &str, metadata_extra: &str, components: &str, policies: &str) -> String {
    format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: {name}\n{metadata_extra}spec:\n{policies}  components:\n{components}"
    )
}

const COMP_A: &str =
    "    - name: a\n      type: component\n      properties:\n        image: file:///a.wasm\n";

/// Asserts the manifest is rejected with an error whose path and message contain the given
/// fragments.
fn rejected(yaml: &str, path: &str, message: &str) {
    let err = match parse_manifest(yaml.as_bytes()) {
        Ok(_) => panic!("accepted but should fail on {path}: {message}\n{yaml}"),
        Err(e) => e,
    };
    assert!(
        err.diagnostics.iter().any(|d| d.severity == Severity::Error
            && d.path.contains(path)
            && d.message.contains(message)),
        "no error at `{path}` containing `{message}`: {err}"
    );
}

#[test]
fn bad_name() {
    rejected(
        &manifest("\"bad name!\"", "", COMP_A, ""),
        "metadata.name",
        "not a valid name",
    );
}

#[test]
fn version_latest() {
    rejected(
        &manifest("x", "  annotations:\n    version: latest\n", COMP_A, ""),
        "metadata.annotations.version",
        "reserved",
    );
}

#[test]
fn bad_label_and_annotation_keys() {
    rejected(
        &manifest("x", "  labels:\n    \"-bad\": v\n", COMP_A, ""),
        "metadata.labels.-bad",
        "not a valid label key",
    );
    rejected(
        &manifest(
            "x",
            "  annotations:\n    \"Bad_Prefix/ok\": v\n",
            COMP_A,
            "",
        ),
        "metadata.annotations.Bad_Prefix/ok",
        "not a valid annotation key",
    );
    assert!(is_valid_label_key("experimental.wasmcloud.dev/shared"));
    assert!(is_valid_label_key("version"));
    assert!(!is_valid_label_key(&"a".repeat(64)));
}

#[test]
fn duplicate_component_name() {
    let comps = format!("{COMP_A}{COMP_A}");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[1].name",
        "duplicate component name `a`",
    );
}

#[test]
fn duplicate_id() {
    let comps = "    - name: a\n      type: component\n      properties:\n        image: x\n        id: same\n    - name: b\n      type: component\n      properties:\n        image: y\n        id: same\n";
    rejected(
        &manifest("x", "", comps, ""),
        "spec.components[1].properties.id",
        "duplicate component id `same`",
    );
}

#[test]
fn link_target_not_in_manifest() {
    let comps = format!("{COMP_A}      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            package: http\n            interfaces: [outgoing-handler]\n            target: {{name: nowhere}}\n");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[0].traits[0].properties.target.name",
        "`nowhere` is not a component",
    );
}

#[test]
fn duplicate_link_on_same_interface() {
    let link = "        - type: link\n          properties:\n            namespace: wasi\n            package: keyvalue\n            interfaces: [store]\n            target: {name: a}\n";
    let comps = format!("{COMP_A}      traits:\n{link}{link}");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[0].traits[1].properties.interfaces",
        "duplicate link from `a` on wasi:keyvalue/store",
    );
}

#[test]
fn duplicate_link_config_names() {
    let comps = format!("{COMP_A}      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            package: keyvalue\n            interfaces: [store]\n            target: {{name: a}}\n            source:\n              config:\n                - name: c\n                  properties: {{k: v}}\n                - name: c\n                  properties: {{k: w}}\n");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[0].traits[0].properties.source.config[1].name",
        "duplicate config name `c`",
    );
}

#[test]
fn config_defined_twice_differently() {
    let comps = "    - name: a\n      type: component\n      properties:\n        image: x\n        config:\n          - name: shared\n            properties: {k: 1}\n    - name: b\n      type: component\n      properties:\n        image: y\n        config:\n          - name: shared\n            properties: {k: 2}\n";
    rejected(
        &manifest("x", "", comps, ""),
        "spec.components[1].properties.config",
        "defined twice",
    );
}

#[test]
fn both_or_neither_image_and_application() {
    let both = "    - name: a\n      type: component\n      properties:\n        image: x\n        application: {name: shared, component: c}\n";
    rejected(
        &manifest("x", "", both, ""),
        "spec.components[0].properties",
        "not both",
    );
    let neither = "    - name: a\n      type: component\n      properties:\n        id: foo\n";
    rejected(
        &manifest("x", "", neither, ""),
        "spec.components[0].properties",
        "neither is set",
    );
}

#[test]
fn secret_with_unknown_or_wrong_policy() {
    let comps = "    - name: a\n      type: component\n      properties:\n        image: x\n        secrets:\n          - name: s\n            properties: {policy: missing, key: k}\n";
    rejected(
        &manifest("x", "", comps, ""),
        "spec.components[0].properties.secrets[0].properties.policy",
        "not in spec.policies",
    );
    let policies =
        "  policies:\n    - name: p\n      type: policy.other/v1\n      properties: {}\n";
    let comps = "    - name: a\n      type: component\n      properties:\n        image: x\n        secrets:\n          - name: s\n            properties: {policy: p, key: k}\n";
    rejected(
        &manifest("x", "", comps, policies),
        "secrets[0].properties.policy",
        "not a secret policy",
    );
    // A secret policy without `backend`: see the two tests below.
}

#[test]
fn custom_trait_types_are_kept_with_a_warning_and_bad_trait_fields_refused() {
    // wadm accepts a trait of a type it does not know and ignores it; so does Trellis, saying so.
    let comps = format!("{COMP_A}      traits:\n        - type: autoscaler\n          properties: {{instances: 1}}\n");
    let parsed = crate::model::parse_manifest(manifest("x", "", &comps, "").as_bytes())
        .expect("a custom trait is accepted");
    assert!(
        parsed
            .warnings
            .iter()
            .any(|d| d.severity == Severity::Warning
                && d.path == "spec.components[0].traits[0]"
                && d.message.contains("`autoscaler`")),
        "{:?}",
        parsed.warnings
    );
    match &parsed.manifest.spec.components[0].traits[0] {
        crate::model::Trait::Custom(custom) => {
            assert_eq!(custom.kind, "autoscaler");
            assert_eq!(custom.properties["instances"], 1);
        }
        other => panic!("read as {other:?}"),
    }
    // It survives the round trip through the store (JSON, keys sorted or not).
    let json = serde_json::to_string(&parsed.manifest).expect("encodes");
    let again = crate::model::parse_manifest(json.as_bytes()).expect("re-reads");
    assert_eq!(again.manifest, parsed.manifest);
    // Properties before the type (key-sorted JSON) read the same, errors included.
    let sorted = r#"{"properties":{"instances":"many"},"type":"spreadscaler"}"#;
    let error = serde_json::from_str::<crate::model::Trait>(sorted).expect_err("refused");
    assert!(error.to_string().contains("properties"), "{error}");
    let sorted = r#"{"properties":{"instances":2},"type":"spreadscaler"}"#;
    assert!(matches!(
        serde_json::from_str::<crate::model::Trait>(sorted),
        Ok(crate::model::Trait::SpreadScaler(p)) if p.instances == 2
    ));
    let comps = format!("{COMP_A}      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            interfaces: [store]\n            target: a\n");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[0].traits[0].properties",
        "package",
    );
}

#[test]
fn two_scalers_and_zero_weights() {
    let comps = format!("{COMP_A}      traits:\n        - type: spreadscaler\n          properties: {{instances: 1}}\n        - type: daemonscaler\n          properties: {{instances: 1}}\n");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[0].traits[1]",
        "more than one scaler",
    );
    let comps = format!("{COMP_A}      traits:\n        - type: spreadscaler\n          properties:\n            instances: 1\n            spread:\n              - name: s\n                weight: 0\n");
    rejected(
        &manifest("x", "", &comps, ""),
        "spec.components[0].traits[0].properties.spread",
        "weights are 0",
    );
}

#[test]
fn wrong_api_version_and_kind() {
    let yaml = manifest("x", "", COMP_A, "")
        .replace("core.oam.dev/v1beta1", "v2")
        .replace("Application", "Deployment");
    rejected(&yaml, "apiVersion", "unsupported apiVersion");
    rejected(&yaml, "kind", "unsupported kind");
}

#[test]
fn unknown_interface_is_a_warning_not_an_error() {
    let comps = format!("{COMP_A}      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            package: http\n            interfaces: [foo]\n            target: b\n{COMP_B}");
    let parsed = parse_manifest(manifest("x", "", &comps, "").as_bytes()).expect("accepted");
    assert!(parsed
        .warnings
        .iter()
        .any(|w| w.severity == Severity::Warning
            && w.message.contains("unknown interface `wasi:http/foo`")));
}

const COMP_B: &str =
    "    - name: b\n      type: component\n      properties:\n        image: file:///b.wasm\n";

fn link_from_a(target: &str, name: Option<&str>) -> String {
    let name = name.map_or(String::new(), |n| format!("            name: {n}\n"));
    format!("{COMP_A}      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            package: keyvalue\n            interfaces: [store]\n            target: {{name: {target}}}\n{name}{COMP_B}")
}

#[test]
fn self_link() {
    rejected(
        &manifest("x", "", &link_from_a("a", None), ""),
        "spec.components[0].traits[0].properties.target.name",
        "component `a` links to itself",
    );
    assert!(parse_manifest(manifest("x", "", &link_from_a("b", None), "").as_bytes()).is_ok());
}

#[test]
fn wildcard_and_blank_link_names() {
    for (name, why) in [
        ("\"*\"", "`*` is a NATS wildcard"),
        ("\">\"", "`>` is a NATS wildcard"),
        ("\"a.*\"", "`*` is a NATS wildcard"),
        ("\"two words\"", "blank or control character"),
        ("\"\"", "the link name is empty"),
    ] {
        rejected(
            &manifest("x", "", &link_from_a("b", Some(name)), ""),
            "spec.components[0].traits[0].properties.name",
            why,
        );
    }
    let ok = manifest("x", "", &link_from_a("b", Some("backup-store_2")), "");
    assert!(parse_manifest(ok.as_bytes()).is_ok());
}

#[test]
fn overlong_name_and_version() {
    rejected(
        &manifest(&"n".repeat(129), "", COMP_A, ""),
        "metadata.name",
        "at most 128",
    );
    assert!(parse_manifest(manifest(&"n".repeat(128), "", COMP_A, "").as_bytes()).is_ok());
    rejected(
        &manifest(
            "x",
            &format!("  annotations:\n    version: {}\n", "v".repeat(129)),
            COMP_A,
            "",
        ),
        "metadata.annotations.version",
        "longer than 128",
    );
}

const SECRET_POLICY_NO_BACKEND: &str = "  policies:\n    - name: p\n      type: policy.secret.wasmcloud.dev/v1alpha1\n      properties: {}\n";

#[test]
fn an_unused_secret_policy_without_backend_is_only_a_warning() {
    let parsed = parse_manifest(manifest("x", "", COMP_A, SECRET_POLICY_NO_BACKEND).as_bytes())
        .unwrap_or_else(|e| panic!("accepted as wadm does: {e}"));
    assert!(
        parsed
            .warnings
            .iter()
            .any(|d| d.severity == Severity::Warning
                && d.path == "spec.policies[0].properties"
                && d.message.contains("no `backend`")),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn a_secret_using_a_policy_without_backend_is_refused() {
    let comps = "    - name: a\n      type: component\n      properties:\n        image: x\n        secrets:\n          - name: s\n            properties: {policy: p, key: k}\n";
    rejected(
        &manifest("x", "", comps, SECRET_POLICY_NO_BACKEND),
        "spec.components[0].properties.secrets[0].properties.policy",
        "has no `backend` property",
    );
    // A link target's secret counts too; the policy gets no extra warning then.
    let comps = format!("{COMP_A}    - name: kv\n      type: capability\n      properties:\n        image: y\n      traits:\n        - type: link\n          properties:\n            namespace: wasi\n            package: keyvalue\n            interfaces: [store]\n            target:\n              name: a\n              secrets:\n                - name: t\n                  properties: {{policy: p, key: k}}\n");
    let err = parse_manifest(manifest("x", "", &comps, SECRET_POLICY_NO_BACKEND).as_bytes())
        .expect_err("refused");
    assert!(
        err.diagnostics.iter().any(|d| d.severity == Severity::Error
            && d.path
                == "spec.components[1].traits[0].properties.target.secrets[0].properties.policy"
            && d.message.contains("add `backend`")),
        "{err}"
    );
    assert!(
        !err.diagnostics
            .iter()
            .any(|d| d.path == "spec.policies[0].properties"),
        "{err}"
    );
}

mod shared {
    use crate::model::{parse_manifest, Manifest};
    use crate::validation::{shared_component_problems, Severity};

    fn app(name: &str, annotations: &str, components: &str) -> Manifest {
        let yaml = format!("apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: {name}\n{annotations}spec:\n  components:\n{components}");
        parse_manifest(yaml.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .manifest
    }

    const SHARED: &str = "  annotations:\n    experimental.wasmcloud.dev/shared: \"true\"\n";
    const BASE_COMPONENTS: &str = "    - name: httpserver\n      type: capability\n      properties:\n        image: ghcr.io/wasmcloud/http-server:0.27.0\n    - name: c\n      type: component\n      properties:\n        image: file:///c.wasm\n";

    fn user(component: &str, kind: &str) -> Manifest {
        app(
            "user",
            "",
            &format!("    - name: dep\n      type: {kind}\n      properties:\n        application: {{name: base, component: {component}}}\n"),
        )
    }

    fn problems(user: &Manifest, deployed: &[&Manifest]) -> Vec<String> {
        let out = shared_component_problems(user, deployed);
        assert!(out.iter().all(|d| d.severity == Severity::Error
            && d.path == "spec.components[0].properties.application"));
        out.iter().map(|d| d.message.clone()).collect()
    }

    #[test]
    fn resolved_shared_components_have_no_problem() {
        let base = app("base", SHARED, BASE_COMPONENTS);
        assert!(problems(&user("httpserver", "capability"), &[&base]).is_empty());
        assert!(problems(&user("c", "component"), &[&base]).is_empty());
    }

    #[test]
    fn each_reason_is_named() {
        let base = app("base", SHARED, BASE_COMPONENTS);
        let unshared = app("base", "", BASE_COMPONENTS);
        let u = user("httpserver", "capability");
        let p = problems(&u, &[]);
        assert!(
            p.len() == 1 && p[0].contains("`base`, which is not deployed"),
            "{p:?}"
        );
        let p = problems(&u, &[&unshared]);
        assert!(p.len() == 1 && p[0].contains("not marked shared"), "{p:?}");
        let p = problems(&user("missing", "capability"), &[&base]);
        assert!(
            p.len() == 1 && p[0].contains("has no component `missing`"),
            "{p:?}"
        );
        let p = problems(&user("httpserver", "component"), &[&base]);
        assert!(
            p.len() == 1
                && p[0].contains("is a capability provider, but `dep` is declared as a component"),
            "{p:?}"
        );
    }
}
