//! Fuzz tests of the manifest parser and validator: YAML and JSON text -> model -> validation,
//! on arbitrary bytes, YAML-looking text, edits of the manifests in `manifests/`, generated
//! manifests (which must round-trip), and deeply nested or oversized documents.
//!
//! Short fixed-seed runs by default; `TRELLIS_FUZZ_CASES=N` for a longer run (see
//! `docs/fuzzing.md`).

#[path = "../../host/src/fuzz/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use support::{config, edits, json_value, mutate, text};
use trellis_wadm::model::{
    deserialize_manifest, parse_manifest, Component, ComponentProperties, ComponentType,
    ConfigProperty, LinkProperties, LinkSource, LinkTarget, Manifest, Metadata, Policy,
    ScalerProperties, SecretProperty, SecretSourceProperty, SharedApplicationComponent,
    Specification, Spread, Trait, API_VERSION, KIND, SECRET_POLICY_TYPE,
};
use trellis_wadm::validation::{validate, Severity};

/// The manifests shipped in `manifests/`, by file name.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "json")
        })
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path.display().to_string(), bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no manifests in {}", dir.display());
    seeds
}

/// Parses `input` and checks the outcome is coherent: an accepted manifest has no errors and
/// is exactly what validation says; a refusal has at least one error, each with a message.
fn parse_coherently(input: &[u8]) -> Result<Option<Manifest>, TestCaseError> {
    match parse_manifest(input) {
        Ok(parsed) => {
            prop_assert!(parsed
                .warnings
                .iter()
                .all(|d| d.severity == Severity::Warning));
            prop_assert_eq!(validate(&parsed.manifest), parsed.warnings.clone());
            Ok(Some(parsed.manifest))
        }
        Err(error) => {
            prop_assert!(error
                .diagnostics
                .iter()
                .any(|d| d.severity == Severity::Error));
            prop_assert!(error.diagnostics.iter().all(|d| !d.message.is_empty()));
            prop_assert!(!error.to_string().is_empty());
            Ok(None)
        }
    }
}

/// Names as users write them, and sometimes anything at all.
fn name() -> BoxedStrategy<String> {
    prop_oneof![4 => "[a-z][a-z0-9-]{0,10}", 1 => text(10)].boxed()
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(name(), text(12), 0..3)
}

fn configs() -> impl Strategy<Value = Vec<ConfigProperty>> {
    vec(
        (name(), proptest::option::of(string_map()))
            .prop_map(|(name, properties)| ConfigProperty { name, properties }),
        0..3,
    )
}

fn secrets() -> impl Strategy<Value = Vec<SecretProperty>> {
    vec(
        (
            name(),
            name(),
            name(),
            proptest::option::of(name()),
            proptest::option::of(name()),
        )
            .prop_map(|(name, policy, key, field, version)| SecretProperty {
                name,
                properties: SecretSourceProperty {
                    policy,
                    key,
                    field,
                    version,
                },
            }),
        0..2,
    )
}

fn scaler() -> impl Strategy<Value = ScalerProperties> {
    (
        any::<u32>(),
        vec(
            (name(), string_map(), proptest::option::of(any::<u32>())).prop_map(
                |(name, requirements, weight)| Spread {
                    name,
                    requirements,
                    weight,
                },
            ),
            0..3,
        ),
    )
        .prop_map(|(instances, spread)| ScalerProperties { instances, spread })
}

fn link() -> impl Strategy<Value = LinkProperties> {
    (
        (
            prop_oneof![Just("wasi".to_owned()), name()],
            name(),
            vec(name(), 0..3),
        ),
        (name(), configs(), secrets()),
        proptest::option::of((configs(), secrets())),
        proptest::option::of(name()),
        proptest::option::of(configs()),
        proptest::option::of(configs()),
    )
        .prop_map(
            |(
                (namespace, package, interfaces),
                target,
                source,
                name,
                source_config,
                target_config,
            )| {
                LinkProperties {
                    namespace,
                    package,
                    interfaces,
                    target: LinkTarget {
                        name: target.0,
                        config: target.1,
                        secrets: target.2,
                    },
                    source: source.map(|(config, secrets)| LinkSource { config, secrets }),
                    name,
                    source_config,
                    target_config,
                }
            },
        )
}

fn component() -> impl Strategy<Value = Component> {
    let component_type = prop_oneof![
        Just(ComponentType::Component),
        Just(ComponentType::Actor),
        Just(ComponentType::Capability),
    ];
    let properties = (
        proptest::option::of(text(20)),
        proptest::option::of(
            (name(), name())
                .prop_map(|(name, component)| SharedApplicationComponent { name, component }),
        ),
        proptest::option::of(name()),
        configs(),
        secrets(),
    )
        .prop_map(
            |(image, application, id, config, secrets)| ComponentProperties {
                image,
                application,
                id,
                config,
                secrets,
            },
        );
    let traits = vec(
        prop_oneof![
            scaler().prop_map(Trait::SpreadScaler),
            scaler().prop_map(Trait::DaemonScaler),
            link().prop_map(|l| Trait::Link(Box::new(l))),
        ],
        0..3,
    );
    (name(), component_type, properties, traits).prop_map(
        |(name, component_type, properties, traits)| Component {
            name,
            component_type,
            properties,
            traits,
        },
    )
}

/// Manifests of every shape the model holds, valid or not.
fn manifest() -> impl Strategy<Value = Manifest> {
    let policy = (
        name(),
        prop_oneof![Just(SECRET_POLICY_TYPE.to_owned()), name()],
        string_map(),
    )
        .prop_map(|(name, policy_type, properties)| Policy {
            name,
            policy_type,
            properties,
        });
    (
        prop_oneof![4 => Just(API_VERSION.to_owned()), 1 => name()],
        prop_oneof![4 => Just(KIND.to_owned()), 1 => name()],
        (name(), string_map(), string_map()),
        vec(component(), 0..4),
        vec(policy, 0..2),
    )
        .prop_map(
            |(api_version, kind, (name, annotations, labels), components, policies)| Manifest {
                api_version,
                kind,
                metadata: Metadata {
                    name,
                    annotations,
                    labels,
                },
                spec: Specification {
                    components,
                    policies,
                },
            },
        )
}

/// Line-level edits of YAML: delete, duplicate, indent, dedent, swap.
fn edit_lines(text: &str, edits: &[(u8, usize, usize)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for &(op, a, b) in edits {
        if lines.is_empty() {
            break;
        }
        let (a, b) = (a % lines.len(), b % lines.len());
        match op % 5 {
            0 => {
                lines.remove(a);
            }
            1 => lines.insert(a, lines[a].clone()),
            2 => lines[a].insert_str(0, "  "),
            3 => lines[a] = lines[a].trim_start().to_owned(),
            _ => lines.swap(a, b),
        }
    }
    lines.join("\n")
}

/// Keys of manifests, for arbitrary JSON documents that get past the first fields.
const MANIFEST_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "annotations",
    "labels",
    "spec",
    "components",
    "policies",
    "type",
    "properties",
    "image",
    "application",
    "component",
    "id",
    "config",
    "secrets",
    "traits",
    "instances",
    "replicas",
    "spread",
    "requirements",
    "weight",
    "namespace",
    "package",
    "interfaces",
    "target",
    "source",
    "source_config",
    "target_config",
    "policy",
    "key",
    "field",
    "version",
    "backend",
];

#[test]
fn the_shipped_manifests_parse_and_round_trip() {
    for (path, bytes) in seeds() {
        let parsed = parse_manifest(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        let json = serde_json::to_vec(&parsed.manifest).expect("to JSON");
        let from_json = parse_manifest(&json).unwrap_or_else(|e| panic!("{path} as JSON: {e}"));
        assert_eq!(from_json.manifest, parsed.manifest, "{path}");
        let yaml = serde_norway::to_string(&parsed.manifest).expect("to YAML");
        let from_yaml =
            parse_manifest(yaml.as_bytes()).unwrap_or_else(|e| panic!("{path} as YAML: {e}"));
        assert_eq!(from_yaml.manifest, parsed.manifest, "{path}");
    }
}

proptest! {
    #![proptest_config(config(256, "proptest-regressions/manifest_fuzz.txt"))]

    /// Arbitrary bytes are refused with errors (or, by chance, accepted coherently).
    #[test]
    fn any_bytes_parse_or_are_refused(bytes in vec(any::<u8>(), 0..1024)) {
        parse_coherently(&bytes)?;
    }

    /// YAML-looking text (indentation, flow collections, anchors, tags, quotes, block
    /// scalars, documents) is parsed or refused.
    #[test]
    fn yaml_like_text_parses_or_is_refused(
        text in r##"(( {0,4}(- )?[a-zA-Z_]{0,8}: ?|[\[\]\{\},&*!|>'"#%@`?:~\-]|[a-z0-9 .]{0,6}|\n|---\n|\.\.\.\n)){0,48}"##,
    ) {
        parse_coherently(text.as_bytes())?;
    }

    /// Byte edits of the shipped manifests are parsed or refused.
    #[test]
    fn edited_manifests_parse_or_are_refused(seed in any::<proptest::sample::Index>(), edits in edits()) {
        let seeds = seeds();
        let (_, bytes) = &seeds[seed.index(seeds.len())];
        parse_coherently(&mutate(bytes, &edits))?;
    }

    /// Line edits (deleted, duplicated, re-indented, swapped lines) of the shipped manifests
    /// are parsed or refused.
    #[test]
    fn reshaped_manifests_parse_or_are_refused(
        seed in any::<proptest::sample::Index>(),
        edits in vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..5),
    ) {
        let seeds = seeds();
        let (_, bytes) = &seeds[seed.index(seeds.len())];
        let text = String::from_utf8_lossy(bytes);
        parse_coherently(edit_lines(&text, &edits).as_bytes())?;
    }

    /// Arbitrary JSON documents with manifest keys are parsed or refused.
    #[test]
    fn any_json_parses_or_is_refused(value in json_value(MANIFEST_KEYS, 5)) {
        let body = serde_json::to_vec(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        parse_coherently(&body)?;
    }

    /// Generated manifests come back unchanged from their JSON form (as the store keeps them)
    /// and their YAML form, and validation agrees with the parser.
    #[test]
    fn generated_manifests_round_trip(manifest in manifest()) {
        let json = serde_json::to_vec(&manifest).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_json = deserialize_manifest(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_json, &manifest);
        let yaml = serde_norway::to_string(&manifest).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_yaml = deserialize_manifest(yaml.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&from_yaml, &manifest, "{}", yaml);
        let accepted = parse_coherently(yaml.as_bytes())?.is_some();
        let errors = validate(&manifest).iter().any(|d| d.severity == Severity::Error);
        prop_assert_eq!(accepted, !errors);
    }

    /// A JSON manifest with anything but whitespace after it is refused, like a control
    /// request with trailing data.
    #[test]
    fn trailing_data_after_a_json_manifest_is_refused(
        manifest in manifest(),
        junk in "[a-z0-9\\{\\}\\[\\],\"]{1,4}",
    ) {
        let mut json = serde_json::to_vec(&manifest).map_err(|e| TestCaseError::fail(e.to_string()))?;
        json.extend_from_slice(b" \n");
        prop_assert!(deserialize_manifest(&json).is_ok());
        json.extend_from_slice(junk.as_bytes());
        prop_assert!(deserialize_manifest(&json).is_err(), "accepted trailing {:?}", junk);
    }

    /// Nesting within serde's and the parsers' limits, in any field, is parsed or refused.
    #[test]
    fn nested_values_in_any_field_parse_or_are_refused(
        depth in 0usize..64,
        key in proptest::sample::select(MANIFEST_KEYS),
        flow in any::<bool>(),
    ) {
        let (open, close) = if flow { ("[", "]") } else { ("{\"a\":", "}") };
        let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let yaml = format!("apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: n\n  {key}: {nested}\nspec:\n  components: []\n");
        parse_coherently(yaml.as_bytes())?;
        let json = format!("{{\"apiVersion\":\"{API_VERSION}\",\"kind\":\"{KIND}\",\"metadata\":{{\"name\":\"n\",\"{key}\":{nested}}},\"spec\":{{\"components\":[]}}}}");
        parse_coherently(json.as_bytes())?;
    }
}

/// Deep JSON nesting is refused at once, not recursed into.
#[test]
fn deeply_nested_json_is_refused() {
    for depth in [200, 100_000] {
        let json = format!(
            "{{\"apiVersion\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        // Refused by the nesting pre-check, or at the first bracket (every field has a type);
        // nothing recurses.
        let error = parse_manifest(json.as_bytes())
            .expect_err("accepted")
            .to_string();
        assert!(
            error.contains("apiVersion") || error.contains("nests"),
            "{error}"
        );
    }
}

/// Many components, long names and long values: refused or accepted with the right verdict,
/// within a bounded size.
#[test]
fn oversized_manifests_are_parsed_or_refused() {
    let mut yaml = format!(
        "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: big\nspec:\n  components:\n"
    );
    for i in 0..2000 {
        yaml.push_str(&format!(
            "    - name: c{i}\n      type: component\n      properties:\n        image: file:///c{i}.wasm\n"
        ));
    }
    let parsed = parse_manifest(yaml.as_bytes()).expect("2000 components");
    assert_eq!(parsed.manifest.spec.components.len(), 2000);

    // A name that would not fit a NATS subject is refused, without echoing all of it.
    let long = "x".repeat(1 << 20);
    let yaml = format!("apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: {long}\nspec:\n  components: []\n");
    let error = match parse_manifest(yaml.as_bytes()) {
        Ok(_) => panic!("a 1 MiB name was accepted"),
        Err(error) => error.to_string(),
    };
    // Refused by the manifest size limit before the name is looked at, or by the name's.
    assert!(
        (error.contains("metadata.name") && error.contains("at most"))
            || error.contains("over the limit"),
        "{}",
        &error[..error.len().min(300)]
    );
    assert!(error.len() < 1000, "the error echoes the name");

    // Long values are fine where nothing but the manifest size limit (512 KiB) bounds them.
    let long = "x".repeat(256 * 1024);
    let yaml = format!("apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: n\n  annotations:\n    description: {long}\nspec:\n  components: []\n");
    let parsed = parse_manifest(yaml.as_bytes()).map_err(|e| e.to_string().len());
    assert_eq!(
        parsed.map(|p| p.manifest.description().map(str::len)),
        Ok(Some(256 * 1024))
    );
}

/// YAML aliases that expand exponentially ("billion laughs") are refused, not expanded.
#[test]
fn exponential_yaml_aliases_are_refused() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    yaml.push_str(&format!(
        "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: n\n  labels: *a11\nspec:\n  components: []\n"
    ));
    assert!(parse_manifest(yaml.as_bytes()).is_err());
}

/// Deeply nested YAML: the YAML parser recurses once per level and would take seconds on a
/// document nested thousands deep; the depth pre-scan refuses it before any parser sees it.
#[test]
fn deeply_nested_yaml_is_refused() {
    for depth in [200, 100_000] {
        let yaml = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: n\n  labels: {}1{}\nspec:\n  components: []\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(parse_manifest(yaml.as_bytes()).is_err(), "depth {depth}");
    }
}
