//! The pre-parse bounds: size, and a nesting count that never falls below the parser's.

use rand::{Rng, SeedableRng};

use crate::limits::{check_manifest_text, nesting_depth, BoundsError, ManifestLimits};
use crate::model::{parse_manifest, parse_manifest_with};
use crate::tests::EXAMPLE_YAML;

fn too_deep(text: &str) -> bool {
    matches!(
        check_manifest_text(text, &ManifestLimits::default()),
        Err(BoundsError::TooDeep { .. })
    )
}

#[test]
fn nested_flow_collections_are_refused_before_parsing() {
    for text in [
        "[".repeat(200_000),
        "{".repeat(200_000),
        format!("a: {}", "[".repeat(100)),
        format!("{{\"a\": {}", "[".repeat(100)),
        format!("{}1{}", "[".repeat(65), "]".repeat(65)),
    ] {
        let err = parse_manifest(text.as_bytes()).expect_err("refused");
        let message = err.to_string();
        assert!(
            message.contains("more than 64 levels deep") && message.contains("line 1"),
            "{message}"
        );
    }
}

#[test]
fn deep_block_nesting_is_refused() {
    let dashes = "- ".repeat(100_000);
    assert!(too_deep(&dashes));
    let mut indented = String::new();
    for i in 0..70 {
        indented.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
    }
    assert!(too_deep(&indented));
    // A sequence written at its key's column nests as deeply as an indented one.
    let mut indentless = String::new();
    for i in 0..40 {
        indentless.push_str(&format!("{}- k{i}:\n", " ".repeat(2 * i)));
    }
    assert!(too_deep(&indentless), "{}", nesting_depth(&indentless));
}

#[test]
fn brackets_in_text_do_not_count() {
    let brackets = "[".repeat(100);
    let text = format!(
        "apiVersion: core.oam.dev/v1beta1\n\
         kind: Application # {brackets}\n\
         metadata:\n  name: x\n  annotations:\n\
         \x20   description: \"{brackets}\"\n\
         \x20   a: '{brackets} '' {brackets}'\n\
         \x20   b: plain {brackets} text\n\
         \x20   c: |\n      {brackets}\n      {brackets}\n\n      \"{brackets}\n\
         \x20   d: >-\n      {brackets}\n\
         \x20   e: multi-line\n      {brackets} plain\n\
         spec:\n  components:\n    - name: a\n      type: component\n      properties:\n        image: x\n"
    );
    assert!(nesting_depth(&text) <= 5, "{}", nesting_depth(&text));
    let parsed = parse_manifest(text.as_bytes()).expect("valid");
    let annotations = &parsed.manifest.metadata.annotations;
    assert!(annotations["c"].starts_with(&brackets), "{annotations:?}");
    assert!(annotations["e"].ends_with("plain"), "{annotations:?}");
}

#[test]
fn brackets_after_text_that_ends_count() {
    let deep = "[".repeat(70);
    for text in [
        // A quote inside a plain scalar is text; the next line is a new key.
        format!("a: x \"\nb: {deep}"),
        // In flow context a continuation line starting with a quote is still plain text.
        format!("[a\n\"x, {deep}"),
        // Unicode line breaks end comments.
        format!("# c\u{85}{deep}"),
        format!("# c\u{2028}{deep}"),
        // A block scalar ends at the first line indented less than its content.
        format!("a: |\n  text\nb: {deep}"),
        format!("- |2\n   text\n- {deep}"),
        // A plain scalar ends at a line indented at its mapping's column.
        format!("- a: x\n  {deep}"),
        // An anchor name ends at the first character that cannot be in it.
        format!("a: &x{deep}"),
    ] {
        assert!(too_deep(&text), "not refused: {text:?}");
    }
}

#[test]
fn real_manifests_pass() {
    assert!(check_manifest_text(EXAMPLE_YAML, &ManifestLimits::default()).is_ok());
    let depth = nesting_depth(EXAMPLE_YAML);
    assert!((8..=16).contains(&depth), "{depth}");
    let parsed = parse_manifest(EXAMPLE_YAML.as_bytes()).expect("valid");
    let json = serde_json::to_string(&parsed.manifest).expect("json");
    // The JSON root may also be a mapping key as far as the scan can tell: one level more.
    let json_depth = nesting_depth(&json);
    assert!(
        (depth..=depth + 1).contains(&json_depth),
        "{json_depth} vs {depth}"
    );
    let manifests = crate::tests::repo_manifests();
    assert!(!manifests.is_empty());
    for (path, text) in manifests {
        assert!(
            check_manifest_text(&text, &ManifestLimits::default()).is_ok(),
            "{path}"
        );
    }
}

#[test]
fn size_limit_names_itself_and_its_flag() {
    let limits = ManifestLimits {
        max_bytes: 100,
        ..Default::default()
    };
    let text = format!("# {}\n", "x".repeat(200));
    let err = parse_manifest_with(text.as_bytes(), &limits).expect_err("too large");
    let message = err.to_string();
    assert!(
        message.contains("203 bytes")
            && message.contains("limit of 100 bytes")
            && message.contains("--max-manifest-bytes"),
        "{message}"
    );
}

/// The depth of a parsed YAML value (collections only, aliases not followed: the text has them
/// once).
fn value_depth(v: &serde_norway::Value) -> usize {
    use serde_norway::Value;
    match v {
        Value::Sequence(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Mapping(map) => {
            1 + map
                .iter()
                .map(|(k, v)| value_depth(k).max(value_depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => value_depth(&t.value),
        _ => 0,
    }
}

/// `name` from the environment, else `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Random YAML built from the tokens that change how text is read: wherever libyaml parses it,
/// the pre-scan must count at least the nesting the parser built. Run it longer with
/// `SCAN_N=2000000 SCAN_LEN=40 SCAN_SEED=7 cargo test -p trellis-wadm --lib scan_never`.
#[test]
fn scan_never_counts_less_than_the_parser() {
    const TOKENS: &[&str] = &[
        "[", "]", "{", "}", ", ", ",", "\"", "'", "''", "\\\"", "# ", "#", "| ", "|\n", ">-\n",
        "|2\n", "- ", "-", ": ", ":", "? ", "\n", "\n  ", "\n    ", "\n- ", "\r\n", " ", "  ", "a",
        "bc", "1", "&x ", "!t ", "\t", "---\n", "...\n", "%", "\u{85}", "\u{2028}",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(env_or("SCAN_SEED", 18));
    let mut parsed = 0;
    for _ in 0..env_or("SCAN_N", 200_000) {
        let len = rng.gen_range(1..env_or("SCAN_LEN", 24));
        let text: String = (0..len)
            .map(|_| TOKENS[rng.gen_range(0..TOKENS.len())])
            .collect();
        let Ok(value) = serde_norway::from_str::<serde_norway::Value>(&text) else {
            continue;
        };
        parsed += 1;
        let real = value_depth(&value);
        let counted = nesting_depth(&text);
        assert!(
            counted >= real,
            "the scan counted {counted} levels, the parser built {real}: {text:?}"
        );
    }
    assert!(parsed > 10_000, "only {parsed} inputs parsed");
}
