//! What the fuzz tests share: the run configuration and input generators.
//!
//! Also compiled into `wadm/tests/manifest_fuzz.rs` (by path), so it uses nothing of the host
//! crate.

#![allow(dead_code)]

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use serde_json::Value;

/// The environment variable that sets the number of cases per property for a longer run.
pub(crate) const CASES_VAR: &str = "TRELLIS_FUZZ_CASES";

/// The seed of the default (short) run, so CI explores the same inputs every time.
const DEFAULT_SEED: u64 = 0x7e11_15f0_2215;

/// The proptest configuration of one property: `default_cases` cases from a fixed seed, or
/// [`CASES_VAR`] cases from a random seed (`PROPTEST_RNG_SEED` replays a given seed).
/// Failures are kept in `regressions`, relative to the package (cargo runs tests there), and
/// replayed first on every run.
pub(crate) fn config(default_cases: u32, regressions: &'static str) -> Config {
    let base = Config::default();
    let longer = std::env::var(CASES_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    let seed_given = std::env::var_os("PROPTEST_RNG_SEED").is_some();
    Config {
        cases: longer.unwrap_or(default_cases),
        rng_seed: if longer.is_none() && !seed_given {
            RngSeed::Fixed(DEFAULT_SEED)
        } else {
            base.rng_seed
        },
        // Shrinking a failure may take a while in a long run, but never forever.
        max_shrink_iters: 4096,
        // proptest's default location cannot find a workspace member's sources.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..base
    }
}

/// Any text of up to `max` characters, including the empty string, control characters and
/// astral planes.
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> + Clone {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// A JSON scalar: null, boolean, integer (signed and unsigned extremes), finite float, text.
fn json_scalar() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text(12).prop_map(Value::String),
    ]
}

/// Any JSON document up to `depth` levels of arrays and objects, whose object keys are often
/// one of `keys` (so typed decoders get past their first field).
pub(crate) fn json_value(keys: &'static [&'static str], depth: u32) -> BoxedStrategy<Value> {
    let key =
        prop_oneof![3 => proptest::sample::select(keys).prop_map(str::to_owned), 1 => text(8)];
    json_scalar()
        .prop_recursive(depth, 48, 6, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                vec((key.clone(), inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Byte-level mutations of `seed`: flips, insertions, deletions and truncation, each applied
/// at positions the strategy picks (so shrinking finds the smallest damaging edit).
pub(crate) fn mutate(seed: &[u8], edits: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for &(op, at, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % bytes.len()
        };
        match op % 4 {
            0 if !bytes.is_empty() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            _ => {}
        }
    }
    bytes
}

/// Edits for [`mutate`].
pub(crate) fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6)
}
