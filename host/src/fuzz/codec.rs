//! Fuzz tests of the invocation codec ([`codec`]) and its JSON form ([`json`]) over generated
//! WIT signatures: round trips of generated values, arbitrary and edited bytes, truncations,
//! arbitrary JSON arguments.
//!
//! `Type`s only come from a compiled component, so each generated signature is written as a
//! component (WAT) importing one function, compiled (types only, no code), and its parameter
//! types read back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, Val};
use wasmtime::{Config, Engine};

use super::{config, edits, json_value, mutate, text};
use crate::invocation::codec::{self, MAX_DEPTH};
use crate::invocation::json;

/// A WIT type, as the generator builds it. Records, variants, enums and flags name their
/// members `f0`, `c0`, `e0`, `g0`, ... in order.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    S8,
    U8,
    S16,
    U16,
    S32,
    U32,
    S64,
    U64,
    F32,
    F64,
    Char,
    String,
    List(Box<Ty>),
    Option(Box<Ty>),
    Result(Option<Box<Ty>>, Option<Box<Ty>>),
    Tuple(Vec<Ty>),
    Record(Vec<Ty>),
    Variant(Vec<Option<Ty>>),
    Enum(usize),
    Flags(usize),
}

impl Ty {
    /// Writes the type as a WAT value type, declaring the named types it needs in `defs`.
    fn wat(&self, defs: &mut String, next: &mut usize) -> String {
        let named = |body: String, defs: &mut String, next: &mut usize| {
            let id = *next;
            *next += 1;
            // Nominal types used by an imported function must be imported (named) types.
            let _ = writeln!(defs, "  (type $t{id}' {body})");
            let _ = writeln!(defs, "  (import \"t{id}\" (type $t{id} (eq $t{id}')))");
            format!("$t{id}")
        };
        match self {
            Ty::Bool => "bool".into(),
            Ty::S8 => "s8".into(),
            Ty::U8 => "u8".into(),
            Ty::S16 => "s16".into(),
            Ty::U16 => "u16".into(),
            Ty::S32 => "s32".into(),
            Ty::U32 => "u32".into(),
            Ty::S64 => "s64".into(),
            Ty::U64 => "u64".into(),
            Ty::F32 => "f32".into(),
            Ty::F64 => "f64".into(),
            Ty::Char => "char".into(),
            Ty::String => "string".into(),
            Ty::List(t) => format!("(list {})", t.wat(defs, next)),
            Ty::Option(t) => format!("(option {})", t.wat(defs, next)),
            Ty::Result(ok, err) => {
                let mut out = "(result".to_owned();
                if let Some(ok) = ok {
                    out += &format!(" {}", ok.wat(defs, next));
                }
                if let Some(err) = err {
                    out += &format!(" (error {})", err.wat(defs, next));
                }
                out + ")"
            }
            Ty::Tuple(items) => {
                let items: Vec<String> = items.iter().map(|t| t.wat(defs, next)).collect();
                format!("(tuple {})", items.join(" "))
            }
            Ty::Record(fields) => {
                let fields: Vec<String> = fields
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("(field \"f{i}\" {})", t.wat(defs, next)))
                    .collect();
                named(format!("(record {})", fields.join(" ")), defs, next)
            }
            Ty::Variant(cases) => {
                let cases: Vec<String> = cases
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match t {
                        Some(t) => format!("(case \"c{i}\" {})", t.wat(defs, next)),
                        None => format!("(case \"c{i}\")"),
                    })
                    .collect();
                named(format!("(variant {})", cases.join(" ")), defs, next)
            }
            Ty::Enum(n) => {
                let cases: Vec<String> = (0..*n).map(|i| format!("\"e{i}\"")).collect();
                named(format!("(enum {})", cases.join(" ")), defs, next)
            }
            Ty::Flags(n) => {
                let flags: Vec<String> = (0..*n).map(|i| format!("\"g{i}\"")).collect();
                named(format!("(flags {})", flags.join(" ")), defs, next)
            }
        }
    }

    /// Whether JSON keeps every value of this type apart: it cannot tell `some(none)` of an
    /// `option<option<T>>` from `none`.
    fn json_exact(&self) -> bool {
        match self {
            Ty::Option(inner) => !matches!(**inner, Ty::Option(_)) && inner.json_exact(),
            Ty::List(t) => t.json_exact(),
            Ty::Result(ok, err) => [ok, err].into_iter().flatten().all(|t| t.json_exact()),
            Ty::Tuple(items) | Ty::Record(items) => items.iter().all(Ty::json_exact),
            Ty::Variant(cases) => cases.iter().flatten().all(Ty::json_exact),
            _ => true,
        }
    }
}

/// The component model's types live in an engine; one serves every test.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).expect("engine")
    })
}

/// The wasmtime types of a signature of `params`, compiled once per signature (shrinking
/// revisits the same signatures often).
fn types_of(params: &[Ty]) -> Vec<Type> {
    thread_local! {
        static CACHE: RefCell<HashMap<String, Vec<Type>>> = RefCell::new(HashMap::new());
    }
    let mut defs = String::new();
    let mut next = 0;
    let mut func = String::from("  (import \"f\" (func");
    for (i, ty) in params.iter().enumerate() {
        let wat = ty.wat(&mut defs, &mut next);
        let _ = write!(func, " (param \"p{i}\" {wat})");
    }
    func.push_str("))\n");
    let wat = format!("(component\n{defs}{func})\n");
    CACHE.with(|cache| {
        if let Some(types) = cache.borrow().get(&wat) {
            return types.clone();
        }
        let component = Component::new(engine(), &wat)
            .unwrap_or_else(|e| panic!("generated WAT does not compile: {e:#}\n{wat}"));
        let types: Vec<Type> = match component
            .component_type()
            .get_import(engine(), "f")
            .map(|e| e.ty)
        {
            Some(ComponentItem::ComponentFunc(func)) => func.params().map(|(_, ty)| ty).collect(),
            other => panic!("the generated import is not a function: {other:?}"),
        };
        let mut cache = cache.borrow_mut();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(wat, types.clone());
        types
    })
}

fn ty() -> impl Strategy<Value = Ty> {
    let leaf = prop_oneof![
        Just(Ty::Bool),
        Just(Ty::S8),
        Just(Ty::U8),
        Just(Ty::S16),
        Just(Ty::U16),
        Just(Ty::S32),
        Just(Ty::U32),
        Just(Ty::S64),
        Just(Ty::U64),
        Just(Ty::F32),
        Just(Ty::F64),
        Just(Ty::Char),
        Just(Ty::String),
        (1usize..5).prop_map(Ty::Enum),
        // Up to 32 flags: one to four bytes, with unused high bits.
        (1usize..=32).prop_map(Ty::Flags),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let boxed = || inner.clone().prop_map(Box::new);
        prop_oneof![
            boxed().prop_map(Ty::List),
            boxed().prop_map(Ty::Option),
            (proptest::option::of(boxed()), proptest::option::of(boxed()))
                .prop_map(|(ok, err)| Ty::Result(ok, err)),
            vec(inner.clone(), 1..4).prop_map(Ty::Tuple),
            vec(inner.clone(), 1..4).prop_map(Ty::Record),
            vec(proptest::option::of(inner.clone()), 1..4).prop_map(Ty::Variant),
        ]
    })
}

fn payload(ty: Option<&Ty>) -> BoxedStrategy<Option<Box<Val>>> {
    match ty {
        None => Just(None).boxed(),
        Some(ty) => val(ty).prop_map(|v| Some(Box::new(v))).boxed(),
    }
}

/// Any value of `ty`, floats as any bit pattern (NaN payloads included).
fn val(ty: &Ty) -> BoxedStrategy<Val> {
    match ty {
        Ty::Bool => any::<bool>().prop_map(Val::Bool).boxed(),
        Ty::S8 => any::<i8>().prop_map(Val::S8).boxed(),
        Ty::U8 => any::<u8>().prop_map(Val::U8).boxed(),
        Ty::S16 => any::<i16>().prop_map(Val::S16).boxed(),
        Ty::U16 => any::<u16>().prop_map(Val::U16).boxed(),
        Ty::S32 => any::<i32>().prop_map(Val::S32).boxed(),
        Ty::U32 => any::<u32>().prop_map(Val::U32).boxed(),
        Ty::S64 => any::<i64>().prop_map(Val::S64).boxed(),
        Ty::U64 => any::<u64>().prop_map(Val::U64).boxed(),
        Ty::F32 => any::<u32>()
            .prop_map(|b| Val::Float32(f32::from_bits(b)))
            .boxed(),
        Ty::F64 => any::<u64>()
            .prop_map(|b| Val::Float64(f64::from_bits(b)))
            .boxed(),
        Ty::Char => any::<char>().prop_map(Val::Char).boxed(),
        Ty::String => text(12).prop_map(Val::String).boxed(),
        Ty::List(t) => vec(val(t), 0..4).prop_map(Val::List).boxed(),
        Ty::Option(t) => proptest::option::of(val(t))
            .prop_map(|v| Val::Option(v.map(Box::new)))
            .boxed(),
        Ty::Result(ok, err) => prop_oneof![
            payload(ok.as_deref()).prop_map(|p| Val::Result(Ok(p))),
            payload(err.as_deref()).prop_map(|p| Val::Result(Err(p))),
        ]
        .boxed(),
        Ty::Tuple(items) => items
            .iter()
            .map(val)
            .collect::<Vec<_>>()
            .prop_map(Val::Tuple)
            .boxed(),
        Ty::Record(fields) => fields
            .iter()
            .map(val)
            .collect::<Vec<_>>()
            .prop_map(|values| {
                Val::Record(
                    values
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (format!("f{i}"), v))
                        .collect(),
                )
            })
            .boxed(),
        Ty::Variant(cases) => {
            let cases: Vec<BoxedStrategy<Val>> = cases
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    payload(t.as_ref())
                        .prop_map(move |p| Val::Variant(format!("c{i}"), p))
                        .boxed()
                })
                .collect();
            proptest::strategy::Union::new(cases).boxed()
        }
        Ty::Enum(n) => (0..*n).prop_map(|i| Val::Enum(format!("e{i}"))).boxed(),
        Ty::Flags(n) => vec(any::<bool>(), *n)
            .prop_map(|bits| {
                let set = bits.iter().enumerate().filter(|(_, on)| **on);
                Val::Flags(set.map(|(i, _)| format!("g{i}")).collect())
            })
            .boxed(),
    }
}

/// A signature of one to three parameters.
fn signature() -> impl Strategy<Value = Vec<Ty>> {
    vec(ty(), 1..4)
}

/// A signature and a value for each of its parameters.
fn signature_and_values() -> impl Strategy<Value = (Vec<Ty>, Vec<Val>)> {
    signature().prop_flat_map(|tys| {
        let values: Vec<BoxedStrategy<Val>> = tys.iter().map(val).collect();
        (Just(tys), values)
    })
}

/// Decodes `bytes`; whatever decodes must encode back to exactly `bytes` (the encoding is
/// canonical: one byte string per value list).
fn decode_canonically(bytes: &[u8], types: &[Type]) -> Result<(), TestCaseError> {
    if let Ok(values) = codec::decode_values(bytes, types) {
        let again = codec::encode_values(&values, types)
            .map_err(|e| TestCaseError::fail(format!("re-encoding {values:?}: {e}")))?;
        prop_assert_eq!(again, bytes.to_vec());
    }
    Ok(())
}

/// Keys that name generated parameters, fields, cases and flags, for arbitrary JSON.
const JSON_KEYS: &[&str] = &[
    "p0", "p1", "p2", "f0", "f1", "f2", "c0", "c1", "c2", "ok", "err",
];

proptest! {
    #![proptest_config(config(256, "proptest-regressions/fuzz/codec.txt"))]

    /// Generated values encode, decode to themselves, and re-encode to the same bytes (float
    /// bits included); every strict prefix of the encoding fails and so does one byte more.
    #[test]
    fn values_round_trip((tys, values) in signature_and_values()) {
        let types = types_of(&tys);
        let bytes = codec::encode_values(&values, &types).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = codec::decode_values(&bytes, &types).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &values);
        let again = codec::encode_values(&decoded, &types).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &bytes);
        for cut in 0..bytes.len() {
            prop_assert!(codec::decode_values(&bytes[..cut], &types).is_err(), "a prefix of {} bytes decoded", cut);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let error = codec::decode_values(&longer, &types).expect_err("one byte more decoded");
        prop_assert!(error.message().contains("unexpected bytes"), "{}", error);
    }

    /// Arbitrary bytes against generated signatures: an error or a canonical value list.
    #[test]
    fn any_bytes_decode_canonically_or_fail(tys in signature(), bytes in vec(any::<u8>(), 0..96)) {
        decode_canonically(&bytes, &types_of(&tys))?;
    }

    /// Edited valid encodings (deeper into the structure than random bytes get): an error or
    /// a canonical value list.
    #[test]
    fn edited_encodings_decode_canonically_or_fail(
        (tys, values) in signature_and_values(),
        edits in edits(),
    ) {
        let types = types_of(&tys);
        let bytes = codec::encode_values(&values, &types).map_err(|e| TestCaseError::fail(e.to_string()))?;
        decode_canonically(&mutate(&bytes, &edits), &types)?;
    }

    /// Values survive their JSON form (as `trellis call` prints and reads them), through
    /// text too; exactly, except `some(none)` of a nested option, which JSON cannot tell from
    /// `none`.
    #[test]
    fn values_round_trip_through_json((tys, values) in signature_and_values()) {
        let types = types_of(&tys);
        for ((value, wit), ty) in values.iter().zip(&types).zip(&tys) {
            let json = json::val_to_json(value, wit).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = serde_json::to_string(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let reread: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&reread, &json, "through text: {}", text);
            let back = json::json_to_val(&json, wit).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            if ty.json_exact() {
                prop_assert_eq!(&back, value, "{}", json);
            }
            let again = json::val_to_json(&back, wit).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, json);
        }
    }

    /// Arbitrary JSON arguments convert to parameters or are refused; whatever converts
    /// encodes and round-trips.
    #[test]
    fn any_json_arguments_convert_or_are_refused(
        tys in signature(),
        args in json_value(JSON_KEYS, 4),
    ) {
        let types = types_of(&tys);
        let names: Vec<String> = (0..types.len()).map(|i| format!("p{i}")).collect();
        let params: Vec<(&str, Type)> = names.iter().map(String::as_str).zip(types.iter().cloned()).collect();
        if let Ok(values) = json::json_to_params(&args, &params) {
            let bytes = codec::encode_values(&values, &types).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(codec::decode_values(&bytes, &types).ok(), Some(values));
        }
    }
}

/// Values nested deeper than [`MAX_DEPTH`] are refused with an error, not a stack overflow, by
/// every converter that takes the depth from its input (the encoder, JSON in both directions);
/// just within the limit they round-trip. The binary decoder follows the WIT type, which the
/// host compiled from the component, not the peer's bytes: it decodes as deep as the type goes
/// and refuses bytes that claim more.
#[test]
fn nesting_past_the_limit_is_refused() {
    let nest = |depth: usize| {
        let mut ty = Ty::U8;
        let mut value = Val::U8(7);
        for _ in 0..depth {
            ty = Ty::List(Box::new(ty));
            value = Val::List(vec![value]);
        }
        (types_of(&[ty]), value)
    };
    let (types, value) = nest(MAX_DEPTH);
    let bytes = codec::encode_values(std::slice::from_ref(&value), &types).expect("encodes");
    assert_eq!(
        codec::decode_values(&bytes, &types).expect("decodes"),
        vec![value]
    );

    let (types, value) = nest(MAX_DEPTH + 1);
    let error = codec::encode_values(std::slice::from_ref(&value), &types).expect_err("encoded");
    assert!(error.message().contains("nest deeper"), "{error}");
    // Bytes of a list nested one deeper than the limit decode against a type that deep ...
    let mut bytes = vec![1u8; MAX_DEPTH + 1];
    bytes.push(7);
    let decoded = codec::decode_values(&bytes, &types);
    assert!(
        decoded
            .as_ref()
            .is_ok_and(|values| values == std::slice::from_ref(&value))
            || decoded
                .as_ref()
                .is_err_and(|e| e.message().contains("nest deeper")),
        "{decoded:?}"
    );
    // ... and are refused against a shallower type, without recursing past it.
    let (shallow, _) = nest(MAX_DEPTH);
    assert!(codec::decode_values(&bytes, &shallow).is_err());
    let error = json::val_to_json(&value, &types[0]).expect_err("converted");
    assert!(error.message().contains("nest deeper"), "{error}");
    let mut json = Value::from(7);
    for _ in 0..=MAX_DEPTH {
        json = Value::Array(vec![json]);
    }
    let error = json::json_to_val(&json, &types[0]).expect_err("converted");
    assert!(error.message().contains("nest deeper"), "{error}");
}
