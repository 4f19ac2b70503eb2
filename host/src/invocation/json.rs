//! JSON <-> component-model values, driven by the WIT types (for `trellis call` arguments and
//! for printing results).
//!
//! Mapping:
//! - `bool` <-> `true`/`false`; integers <-> numbers (64-bit ones also accepted as decimal
//!   strings, since JSON tools lose precision past 2^53); floats <-> numbers, with the strings
//!   `"NaN"`, `"inf"`, `"-inf"` for the values JSON cannot hold;
//! - `char` <-> a one-character string; `string` <-> string;
//! - `list`, `tuple`, fixed-length list <-> array; `map` <-> array of `[key, value]` pairs;
//! - `record` <-> object keyed by field name (every field required, unknown fields rejected);
//! - `variant` <-> `{"case": payload}`, or `"case"` for a case without payload;
//! - `enum` <-> the case name; `flags` <-> array of the set flag names;
//! - `option` <-> `null` or the value (so `option<option<T>>` cannot express `some(none)`);
//! - `result` <-> `{"ok": v}` / `{"err": e}` (`null` or absent payload for untyped cases).

use serde_json::{Map, Number, Value};
use wasmtime::component::types::Type;
use wasmtime::component::Val;

use super::codec::{kind_name, val_kind_name, CodecError, MAX_DEPTH};

fn expected(what: &str, found: &Value) -> CodecError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    CodecError::new(format!("expected {what}, found {found}"))
}

/// Converts JSON arguments to a parameter list. `args` is an array with one element per
/// parameter, or an object keyed by parameter name, or (for a one-parameter function) the
/// single argument itself when it is neither an array nor an object naming that parameter;
/// `null` stands for no arguments.
pub fn json_to_params(args: &Value, params: &[(&str, Type)]) -> Result<Vec<Val>, CodecError> {
    match args {
        Value::Null if params.is_empty() => Ok(Vec::new()),
        Value::Array(items) => {
            if items.len() != params.len() {
                return Err(CodecError::new(format!(
                    "the function takes {} arguments but {} were given",
                    params.len(),
                    items.len()
                )));
            }
            items
                .iter()
                .zip(params)
                .map(|(item, (name, ty))| json_to_val(item, ty).map_err(|e| e.at(*name)))
                .collect()
        }
        Value::Object(map) if params.len() != 1 || map.contains_key(params[0].0) => {
            if let Some(unknown) = map.keys().find(|k| !params.iter().any(|(n, _)| n == k)) {
                return Err(CodecError::new(format!(
                    "the function has no parameter `{unknown}`"
                )));
            }
            params
                .iter()
                .map(|(name, ty)| {
                    let item = map
                        .get(*name)
                        .ok_or_else(|| CodecError::new(format!("missing argument `{name}`")))?;
                    json_to_val(item, ty).map_err(|e| e.at(*name))
                })
                .collect()
        }
        single if params.len() == 1 => Ok(vec![
            json_to_val(single, &params[0].1).map_err(|e| e.at(params[0].0))?
        ]),
        other => Err(expected(
            &format!("an array or object of {} arguments", params.len()),
            other,
        )),
    }
}

/// Converts a result list to JSON: `null` for none, the value for one, an array for several.
pub fn results_to_json(values: &[Val], types: &[Type]) -> Result<Value, CodecError> {
    if values.len() != types.len() {
        return Err(CodecError::new(format!(
            "the signature has {} results but {} were given",
            types.len(),
            values.len()
        )));
    }
    match values {
        [] => Ok(Value::Null),
        [one] => val_to_json(one, &types[0]),
        many => many
            .iter()
            .zip(types)
            .enumerate()
            .map(|(i, (v, t))| val_to_json(v, t).map_err(|e| e.at(format!("result {i}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
    }
}

/// Converts one JSON value to a value of type `ty`.
pub fn json_to_val(json: &Value, ty: &Type) -> Result<Val, CodecError> {
    to_val(json, ty, 0)
}

/// Converts one value of type `ty` to JSON.
pub fn val_to_json(val: &Val, ty: &Type) -> Result<Value, CodecError> {
    to_json(val, ty, 0)
}

fn int<T: TryFrom<i128>>(json: &Value, what: &str) -> Result<T, CodecError> {
    let wide: i128 = match json {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i128::from(i)
            } else if let Some(u) = n.as_u64() {
                i128::from(u)
            } else {
                return Err(CodecError::new(format!("{n} is not an integer ({what})")));
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| CodecError::new(format!("\"{s}\" is not an integer ({what})")))?,
        other => return Err(expected(what, other)),
    };
    T::try_from(wide).map_err(|_| CodecError::new(format!("{wide} is out of range for {what}")))
}

fn float(json: &Value, what: &str) -> Result<f64, CodecError> {
    match json {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| CodecError::new(format!("{n} is not representable as {what}"))),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "inf" | "Infinity" | "+inf" => Ok(f64::INFINITY),
            "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(CodecError::new(format!(
                "\"{s}\" is not a number ({what}); only \"NaN\", \"inf\", \"-inf\" are accepted as strings"
            ))),
        },
        other => Err(expected(what, other)),
    }
}

fn float_json(value: f64) -> Value {
    if value.is_nan() {
        Value::String("NaN".into())
    } else if value.is_infinite() {
        Value::String(if value > 0.0 { "inf" } else { "-inf" }.into())
    } else {
        Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

fn payload_to_val(
    json: Option<&Value>,
    ty: Option<Type>,
    depth: usize,
) -> Result<Option<Box<Val>>, CodecError> {
    match (ty, json) {
        (None, None | Some(Value::Null)) => Ok(None),
        (None, Some(other)) => Err(CodecError::new(format!(
            "this case has no payload, but {other} was given"
        ))),
        (Some(ty), Some(json)) => Ok(Some(Box::new(to_val(json, &ty, depth)?))),
        (Some(ty), None) => Err(CodecError::new(format!(
            "this case needs a {} payload",
            kind_name(&ty)
        ))),
    }
}

fn to_val(json: &Value, ty: &Type, depth: usize) -> Result<Val, CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::new(format!(
            "values nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let next = depth + 1;
    Ok(match ty {
        Type::Bool => Val::Bool(json.as_bool().ok_or_else(|| expected("a boolean", json))?),
        Type::S8 => Val::S8(int(json, "s8")?),
        Type::U8 => Val::U8(int(json, "u8")?),
        Type::S16 => Val::S16(int(json, "s16")?),
        Type::U16 => Val::U16(int(json, "u16")?),
        Type::S32 => Val::S32(int(json, "s32")?),
        Type::U32 => Val::U32(int(json, "u32")?),
        Type::S64 => Val::S64(int(json, "s64")?),
        Type::U64 => Val::U64(int(json, "u64")?),
        Type::Float32 => Val::Float32(float(json, "f32")? as f32),
        Type::Float64 => Val::Float64(float(json, "f64")?),
        Type::Char => {
            let text = json
                .as_str()
                .ok_or_else(|| expected("a one-character string", json))?;
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => {
                    return Err(CodecError::new(format!(
                        "expected exactly one character, found \"{text}\""
                    )))
                }
            }
        }
        Type::String => Val::String(
            json.as_str()
                .ok_or_else(|| expected("a string", json))?
                .to_owned(),
        ),
        Type::List(list) => {
            let items = json.as_array().ok_or_else(|| expected("an array", json))?;
            let elem = list.ty();
            Val::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_val(item, &elem, next).map_err(|e| e.at(format!("[{i}]"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::FixedLengthList(list) => {
            let items = json.as_array().ok_or_else(|| expected("an array", json))?;
            if items.len() != list.len() as usize {
                return Err(CodecError::new(format!(
                    "expected {} elements, found {}",
                    list.len(),
                    items.len()
                )));
            }
            let elem = list.ty();
            Val::FixedLengthList(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_val(item, &elem, next).map_err(|e| e.at(format!("[{i}]"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Map(map) => {
            let items = json
                .as_array()
                .ok_or_else(|| expected("an array of [key, value] pairs", json))?;
            let (key_ty, value_ty) = (map.key(), map.value());
            let mut entries = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_array().map(Vec::as_slice) {
                    Some([key, value]) => entries.push((
                        to_val(key, &key_ty, next).map_err(|e| e.at(format!("[{i}].key")))?,
                        to_val(value, &value_ty, next).map_err(|e| e.at(format!("[{i}].value")))?,
                    )),
                    _ => {
                        return Err(expected("a [key, value] pair", item).at(format!("[{i}]")));
                    }
                }
            }
            Val::Map(entries)
        }
        Type::Record(record) => {
            let object = json
                .as_object()
                .ok_or_else(|| expected("an object", json))?;
            if let Some(unknown) = object
                .keys()
                .find(|key| !record.fields().any(|field| field.name == key.as_str()))
            {
                return Err(CodecError::new(format!(
                    "the record has no field `{unknown}`"
                )));
            }
            let mut fields = Vec::with_capacity(record.fields().len());
            for field in record.fields() {
                let value = object
                    .get(field.name)
                    .ok_or_else(|| CodecError::new(format!("missing field `{}`", field.name)))?;
                fields.push((
                    field.name.to_owned(),
                    to_val(value, &field.ty, next).map_err(|e| e.at(field.name))?,
                ));
            }
            Val::Record(fields)
        }
        Type::Tuple(tuple) => {
            let items = json.as_array().ok_or_else(|| expected("an array", json))?;
            if items.len() != tuple.types().len() {
                return Err(CodecError::new(format!(
                    "the tuple has {} elements but {} were given",
                    tuple.types().len(),
                    items.len()
                )));
            }
            Val::Tuple(
                items
                    .iter()
                    .zip(tuple.types())
                    .enumerate()
                    .map(|(i, (item, t))| to_val(item, &t, next).map_err(|e| e.at(format!("{i}"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Variant(variant) => {
            let (name, payload) = match json {
                Value::String(name) => (name.as_str(), None),
                Value::Object(object) if object.len() == 1 => {
                    let (name, payload) = object
                        .iter()
                        .next()
                        .ok_or_else(|| CodecError::new("empty variant object"))?;
                    (name.as_str(), Some(payload))
                }
                other => {
                    return Err(expected(
                        "a case name or an object {\"case\": payload} with one key",
                        other,
                    ))
                }
            };
            let case = variant
                .cases()
                .find(|case| case.name == name)
                .ok_or_else(|| CodecError::new(format!("the variant has no case `{name}`")))?;
            Val::Variant(
                name.to_owned(),
                payload_to_val(payload, case.ty, next).map_err(|e| e.at(name))?,
            )
        }
        Type::Enum(enum_ty) => {
            let name = json.as_str().ok_or_else(|| expected("a case name", json))?;
            if !enum_ty.names().any(|case| case == name) {
                return Err(CodecError::new(format!("the enum has no case `{name}`")));
            }
            Val::Enum(name.to_owned())
        }
        Type::Option(option) => match json {
            Value::Null => Val::Option(None),
            value => Val::Option(Some(Box::new(
                to_val(value, &option.ty(), next).map_err(|e| e.at("some"))?,
            ))),
        },
        Type::Result(result) => {
            let object = json
                .as_object()
                .filter(|o| o.len() == 1)
                .ok_or_else(|| expected("{\"ok\": value} or {\"err\": error}", json))?;
            if let Some(payload) = object.get("ok") {
                Val::Result(Ok(
                    payload_to_val(Some(payload), result.ok(), next).map_err(|e| e.at("ok"))?
                ))
            } else if let Some(payload) = object.get("err") {
                Val::Result(Err(
                    payload_to_val(Some(payload), result.err(), next).map_err(|e| e.at("err"))?
                ))
            } else {
                return Err(expected("{\"ok\": value} or {\"err\": error}", json));
            }
        }
        Type::Flags(flags) => {
            let items = json
                .as_array()
                .ok_or_else(|| expected("an array of flag names", json))?;
            let mut set = Vec::with_capacity(items.len());
            for item in items {
                let name = item.as_str().ok_or_else(|| expected("a flag name", item))?;
                if !flags.names().any(|flag| flag == name) {
                    return Err(CodecError::new(format!("the flags have no flag `{name}`")));
                }
                if !set.iter().any(|s: &String| s == name) {
                    set.push(name.to_owned());
                }
            }
            Val::Flags(set)
        }
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            return Err(CodecError::new(format!(
                "{} values are handles into one host's store: resources cannot cross the lattice",
                kind_name(ty)
            )))
        }
    })
}

fn to_json(val: &Val, ty: &Type, depth: usize) -> Result<Value, CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::new(format!(
            "values nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let next = depth + 1;
    let mismatch = || {
        CodecError::new(format!(
            "type mismatch: the signature says {} but the value is a {}",
            kind_name(ty),
            val_kind_name(val)
        ))
    };
    let payload_json =
        |payload: &Option<Box<Val>>, ty: Option<Type>| -> Result<Value, CodecError> {
            match (payload, ty) {
                (None, None) => Ok(Value::Null),
                (Some(v), Some(t)) => to_json(v, &t, next),
                _ => Err(CodecError::new("payload does not match the case's type")),
            }
        };
    Ok(match (ty, val) {
        (Type::Bool, Val::Bool(b)) => Value::Bool(*b),
        (Type::S8, Val::S8(v)) => Value::from(*v),
        (Type::U8, Val::U8(v)) => Value::from(*v),
        (Type::S16, Val::S16(v)) => Value::from(*v),
        (Type::U16, Val::U16(v)) => Value::from(*v),
        (Type::S32, Val::S32(v)) => Value::from(*v),
        (Type::U32, Val::U32(v)) => Value::from(*v),
        (Type::S64, Val::S64(v)) => Value::from(*v),
        (Type::U64, Val::U64(v)) => Value::from(*v),
        (Type::Float32, Val::Float32(v)) => float_json(f64::from(*v)),
        (Type::Float64, Val::Float64(v)) => float_json(*v),
        (Type::Char, Val::Char(c)) => Value::String(c.to_string()),
        (Type::String, Val::String(s)) => Value::String(s.clone()),
        (Type::List(list), Val::List(items)) => {
            let elem = list.ty();
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| to_json(v, &elem, next).map_err(|e| e.at(format!("[{i}]"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        (Type::FixedLengthList(list), Val::FixedLengthList(items) | Val::List(items)) => {
            let elem = list.ty();
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| to_json(v, &elem, next).map_err(|e| e.at(format!("[{i}]"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        (Type::Map(map), Val::Map(entries)) => {
            let (key_ty, value_ty) = (map.key(), map.value());
            Value::Array(
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| {
                        Ok(Value::Array(vec![
                            to_json(k, &key_ty, next).map_err(|e| e.at(format!("[{i}].key")))?,
                            to_json(v, &value_ty, next)
                                .map_err(|e| e.at(format!("[{i}].value")))?,
                        ]))
                    })
                    .collect::<Result<_, CodecError>>()?,
            )
        }
        (Type::Record(record), Val::Record(fields)) => {
            let mut object = Map::new();
            for field in record.fields() {
                let value = fields
                    .iter()
                    .find(|(name, _)| name == field.name)
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        CodecError::new(format!("the record lacks field `{}`", field.name))
                    })?;
                object.insert(
                    field.name.to_owned(),
                    to_json(value, &field.ty, next).map_err(|e| e.at(field.name))?,
                );
            }
            Value::Object(object)
        }
        (Type::Tuple(tuple), Val::Tuple(items)) if items.len() == tuple.types().len() => {
            Value::Array(
                items
                    .iter()
                    .zip(tuple.types())
                    .enumerate()
                    .map(|(i, (v, t))| to_json(v, &t, next).map_err(|e| e.at(format!("{i}"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        (Type::Variant(variant), Val::Variant(name, payload)) => {
            let case = variant
                .cases()
                .find(|case| case.name == name)
                .ok_or_else(|| CodecError::new(format!("the variant has no case `{name}`")))?;
            match payload {
                None if case.ty.is_none() => Value::String(name.clone()),
                _ => {
                    let mut object = Map::new();
                    object.insert(
                        name.clone(),
                        payload_json(payload, case.ty).map_err(|e| e.at(name.as_str()))?,
                    );
                    Value::Object(object)
                }
            }
        }
        (Type::Enum(_), Val::Enum(name)) => Value::String(name.clone()),
        (Type::Option(option), Val::Option(value)) => match value {
            None => Value::Null,
            Some(v) => to_json(v, &option.ty(), next).map_err(|e| e.at("some"))?,
        },
        (Type::Result(result), Val::Result(value)) => {
            let (key, payload) = match value {
                Ok(payload) => ("ok", payload_json(payload, result.ok())),
                Err(payload) => ("err", payload_json(payload, result.err())),
            };
            let mut object = Map::new();
            object.insert(key.to_owned(), payload.map_err(|e| e.at(key))?);
            Value::Object(object)
        }
        (Type::Flags(_), Val::Flags(set)) => {
            Value::Array(set.iter().map(|name| Value::String(name.clone())).collect())
        }
        (
            Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext,
            _,
        ) => {
            return Err(CodecError::new(format!(
                "{} values are handles into one host's store: resources cannot cross the lattice",
                kind_name(ty)
            )))
        }
        _ => return Err(mismatch()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::fixture_types::Fixture;
    use serde_json::json;

    #[test]
    fn compound_arguments_convert_and_round_trip() {
        let fixture = Fixture::new();
        let func = fixture.func("compound");
        let params: Vec<(&str, Type)> = func.params().collect();
        let item = json!({
            "sku": "A-1", "category": "part", "tags": ["fragile", "hazardous"],
            "dims": {"width": 1.5, "depth": -2.25}, "grade": "Ω",
            "history": [-9007199254740993i64, "9223372036854775807"],
            "last-event": {"shipped": ["acme", 7]}
        });
        let args = json!([
            item,
            [],
            [0, 255],
            [[null, "x"]],
            ["f9", "f0"],
            "lost",
            "tool",
            [-5, null, {"err": 3}],
            {"ok": null},
            {"ok": 4},
            {"err": "bad"}
        ]);
        let values = json_to_params(&args, &params).expect("convert");
        assert_eq!(values[5], Val::Variant("lost".into(), None));
        assert_eq!(
            values[0],
            Val::Record(vec![
                ("sku".into(), Val::String("A-1".into())),
                ("category".into(), Val::Enum("part".into())),
                (
                    "tags".into(),
                    Val::Flags(vec!["fragile".into(), "hazardous".into()])
                ),
                (
                    "dims".into(),
                    Val::Option(Some(Box::new(Val::Record(vec![
                        ("width".into(), Val::Float32(1.5)),
                        ("depth".into(), Val::Float64(-2.25)),
                    ]))))
                ),
                ("grade".into(), Val::Char('Ω')),
                (
                    "history".into(),
                    Val::List(vec![Val::S64(-9007199254740993), Val::S64(i64::MAX)])
                ),
                (
                    "last-event".into(),
                    Val::Variant(
                        "shipped".into(),
                        Some(Box::new(Val::Tuple(vec![
                            Val::String("acme".into()),
                            Val::U32(7)
                        ])))
                    )
                ),
            ])
        );
        // And back: JSON -> Val -> JSON -> Val gives the same values.
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let back: Vec<Value> = values
            .iter()
            .zip(&types)
            .map(|(v, t)| val_to_json(v, t).expect("to json"))
            .collect();
        assert_eq!(back[5], json!("lost"));
        assert_eq!(back[7], json!([-5, null, {"err": 3}]));
        assert_eq!(back[8], json!({"ok": null}));
        let again = json_to_params(&Value::Array(back), &params).expect("convert again");
        assert_eq!(again, values);

        // Arguments by name work too.
        let named: Map<String, Value> = params
            .iter()
            .zip(args.as_array().expect("array"))
            .map(|((name, _), v)| ((*name).to_owned(), v.clone()))
            .collect();
        assert_eq!(
            json_to_params(&Value::Object(named), &params).expect("named"),
            values
        );
    }

    #[test]
    fn scalars_and_special_floats() {
        let fixture = Fixture::new();
        let func = fixture.func("scalars");
        let params: Vec<(&str, Type)> = func.params().collect();
        let args = json!([
            true,
            -128,
            255,
            -32768,
            65535,
            -1,
            4294967295u32,
            "-9223372036854775808",
            18446744073709551615u64,
            "NaN",
            "-inf",
            "🦀",
            "text"
        ]);
        let values = json_to_params(&args, &params).expect("convert");
        assert_eq!(values[8], Val::U64(u64::MAX));
        assert_eq!(values[7], Val::S64(i64::MIN));
        assert!(matches!(values[9], Val::Float32(f) if f.is_nan()));
        assert_eq!(
            val_to_json(&values[10], &params[10].1).expect("json"),
            json!("-inf")
        );
        assert_eq!(
            val_to_json(&values[11], &params[11].1).expect("json"),
            json!("🦀")
        );
    }

    #[test]
    fn bad_arguments_say_what_and_where() {
        let fixture = Fixture::new();
        let func = fixture.func("scalars");
        let params: Vec<(&str, Type)> = func.params().collect();
        let mut args = json!([true, 1, 256, 0, 0, 0, 0, 0, 0, 0.5, 0.5, "c", "s"]);
        let err = json_to_params(&args, &params).unwrap_err();
        assert_eq!(err.to_string(), "at c: 256 is out of range for u8");
        args[2] = json!(1);
        args[11] = json!("two");
        let err = json_to_params(&args, &params).unwrap_err();
        assert!(err.to_string().contains("exactly one character"), "{err}");
        let err = json_to_params(&json!([1, 2]), &params).unwrap_err();
        assert!(
            err.to_string().contains("takes 13 arguments but 2"),
            "{err}"
        );

        let func = fixture.func("compound");
        let params: Vec<(&str, Type)> = func.params().collect();
        let err = json_to_val(&json!({"sku": "x"}), &params[0].1).unwrap_err();
        assert!(
            err.to_string().contains("missing field `category`"),
            "{err}"
        );
        let err = json_to_val(&json!({"teleported": 1}), &params[5].1).unwrap_err();
        assert!(err.to_string().contains("no case `teleported`"), "{err}");
        let err = json_to_val(&json!(["f10"]), &params[4].1).unwrap_err();
        assert!(err.to_string().contains("no flag `f10`"), "{err}");
        let err = json_to_val(&json!({"maybe": 1}), &params[9].1).unwrap_err();
        assert!(err.to_string().contains("{\"ok\": value}"), "{err}");
    }
}
