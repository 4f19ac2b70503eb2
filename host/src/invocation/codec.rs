//! Compact binary codec for component-model values, driven by the function's WIT types.
//!
//! The encoding carries no type tags: both sides know the function signature, so a value is
//! written as the smallest thing that, together with its [`Type`], identifies it:
//!
//! | kind | bytes |
//! | --- | --- |
//! | `bool` | one byte, `0` or `1` (anything else is rejected) |
//! | `s8`, `u8` | one byte |
//! | `u16`, `u32`, `u64` | unsigned LEB128 |
//! | `s16`, `s32`, `s64` | zigzag, then unsigned LEB128 |
//! | `f32`, `f64` | IEEE-754 bits, little-endian, 4 or 8 bytes (NaN payloads kept) |
//! | `char` | the scalar value as unsigned LEB128 (surrogates and > 0x10FFFF rejected) |
//! | `string` | LEB128 byte length, then UTF-8 |
//! | `list<T>` | LEB128 element count, then the elements |
//! | `map<K, V>` | LEB128 entry count, then key, value, key, value… |
//! | fixed-length list | the elements (the length is in the type) |
//! | `record`, `tuple` | the fields in declaration order |
//! | `variant` | LEB128 case index, then the payload if the case has one |
//! | `enum` | LEB128 case index |
//! | `option<T>` | `0`, or `1` then the value |
//! | `result<T, E>` | `0` then the ok payload (if typed), or `1` then the err payload (if typed) |
//! | `flags` | a bit set, `ceil(n / 8)` bytes, bit `i` of byte `i / 8` is flag `i` |
//!
//! Why LEB128: RPC arguments are dominated by small numbers (lengths, counts, indices,
//! quantities), which take one byte instead of four or eight; a varint is still bounded (at
//! most 10 bytes for 64 bits) and cheap to decode. Floats stay fixed-width because their
//! bits are not small. A parameter list is the concatenation of its values.
//!
//! Decoding treats the input as hostile: every length is checked against the remaining
//! bytes before use, varints that overflow or are over-long are rejected, nesting deeper
//! than [`MAX_DEPTH`] is rejected, allocation is bounded by the input size (never by a
//! length prefix alone), nothing panics, and every error names where in the value it was.

use std::fmt;

use wasmtime::component::types::{Type, Variant};
use wasmtime::component::Val;

/// Deepest nesting of values the codec (and the JSON converter) accepts.
pub const MAX_DEPTH: usize = 64;

/// Most elements a list of zero-byte elements (e.g. `list<tuple<>>`) may claim, since such a
/// list's count cannot be checked against the remaining input.
pub const MAX_ZERO_SIZED_ELEMENTS: u64 = 1 << 16;

/// Why a value could not be encoded or decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    /// Location inside the value, outermost first, e.g. `param 1 (item).field dims.some`.
    path: Vec<String>,
    /// What was wrong.
    message: String,
}

impl CodecError {
    /// A new error with `message` and no location yet.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            message: message.into(),
        }
    }

    /// Adds an outer location segment (errors are built inside-out).
    pub fn at(mut self, segment: impl Into<String>) -> Self {
        self.path.push(segment.into());
        self
    }

    /// What was wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The location, outermost first, joined by `.` (empty at the top level).
    pub fn location(&self) -> String {
        let mut segments: Vec<&str> = self.path.iter().map(String::as_str).collect();
        segments.reverse();
        segments.join(".")
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "at {}: {}", self.location(), self.message)
        }
    }
}

impl std::error::Error for CodecError {}

/// The error for kinds that only make sense inside one store.
fn not_transferable(kind: &str) -> CodecError {
    CodecError::new(format!(
        "{kind} values are handles into one host's store: resources cannot cross the lattice"
    ))
}

/// A short name of a type's kind, for error messages.
pub(crate) fn kind_name(ty: &Type) -> &'static str {
    match ty {
        Type::Bool => "bool",
        Type::S8 => "s8",
        Type::U8 => "u8",
        Type::S16 => "s16",
        Type::U16 => "u16",
        Type::S32 => "s32",
        Type::U32 => "u32",
        Type::S64 => "s64",
        Type::U64 => "u64",
        Type::Float32 => "f32",
        Type::Float64 => "f64",
        Type::Char => "char",
        Type::String => "string",
        Type::List(_) => "list",
        Type::Map(_) => "map",
        Type::Record(_) => "record",
        Type::Tuple(_) => "tuple",
        Type::Variant(_) => "variant",
        Type::Enum(_) => "enum",
        Type::Option(_) => "option",
        Type::Result(_) => "result",
        Type::Flags(_) => "flags",
        Type::Own(_) => "own resource",
        Type::Borrow(_) => "borrowed resource",
        Type::Future(_) => "future",
        Type::Stream(_) => "stream",
        Type::ErrorContext => "error-context",
        Type::FixedLengthList(_) => "fixed-length list",
    }
}

/// A short name of a value's kind, for error messages.
pub(crate) fn val_kind_name(val: &Val) -> &'static str {
    match val {
        Val::Bool(_) => "bool",
        Val::S8(_) => "s8",
        Val::U8(_) => "u8",
        Val::S16(_) => "s16",
        Val::U16(_) => "u16",
        Val::S32(_) => "s32",
        Val::U32(_) => "u32",
        Val::S64(_) => "s64",
        Val::U64(_) => "u64",
        Val::Float32(_) => "f32",
        Val::Float64(_) => "f64",
        Val::Char(_) => "char",
        Val::String(_) => "string",
        Val::List(_) => "list",
        Val::Map(_) => "map",
        Val::Record(_) => "record",
        Val::Tuple(_) => "tuple",
        Val::Variant(_, _) => "variant",
        Val::Enum(_) => "enum",
        Val::Option(_) => "option",
        Val::Result(_) => "result",
        Val::Flags(_) => "flags",
        Val::Resource(_) => "resource",
        Val::Future(_) => "future",
        Val::Stream(_) => "stream",
        Val::ErrorContext(_) => "error-context",
        Val::FixedLengthList(_) => "fixed-length list",
    }
}

fn mismatch(ty: &Type, val: &Val) -> CodecError {
    CodecError::new(format!(
        "type mismatch: the signature says {} but the value is a {}",
        kind_name(ty),
        val_kind_name(val)
    ))
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Encodes a whole parameter or result list: `values[i]` must have type `types[i]`.
pub fn encode_values(values: &[Val], types: &[Type]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(16 * values.len());
    encode_values_into(values, types, &mut out)?;
    Ok(out)
}

/// Like [`encode_values`], appending to `out`.
pub fn encode_values_into(
    values: &[Val],
    types: &[Type],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if values.len() != types.len() {
        return Err(CodecError::new(format!(
            "the signature has {} values but {} were given",
            types.len(),
            values.len()
        )));
    }
    for (index, (val, ty)) in values.iter().zip(types).enumerate() {
        encode_value(val, ty, out).map_err(|e| e.at(format!("value {index}")))?;
    }
    Ok(())
}

/// Encodes one value of type `ty`, appending to `out`.
pub fn encode_value(val: &Val, ty: &Type, out: &mut Vec<u8>) -> Result<(), CodecError> {
    encode_at(val, ty, out, 0)
}

fn write_uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_sleb(out: &mut Vec<u8>, value: i64) {
    // Zigzag keeps small negative numbers small.
    write_uleb(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    write_uleb(out, len as u64);
}

fn case_index(variant: &Variant, name: &str) -> Result<(usize, Option<Type>), CodecError> {
    variant
        .cases()
        .enumerate()
        .find(|(_, case)| case.name == name)
        .map(|(index, case)| (index, case.ty))
        .ok_or_else(|| CodecError::new(format!("the variant has no case named `{name}`")))
}

fn encode_payload(
    payload: Option<&Val>,
    ty: Option<&Type>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), CodecError> {
    match (payload, ty) {
        (None, None) => Ok(()),
        (Some(val), Some(ty)) => encode_at(val, ty, out, depth),
        (Some(_), None) => Err(CodecError::new("a payload was given but the type has none")),
        (None, Some(_)) => Err(CodecError::new("the type has a payload but none was given")),
    }
}

fn encode_at(val: &Val, ty: &Type, out: &mut Vec<u8>, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::new(format!(
            "values nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let next = depth + 1;
    match (ty, val) {
        (Type::Bool, Val::Bool(b)) => out.push(u8::from(*b)),
        (Type::S8, Val::S8(v)) => out.push(*v as u8),
        (Type::U8, Val::U8(v)) => out.push(*v),
        (Type::S16, Val::S16(v)) => write_sleb(out, i64::from(*v)),
        (Type::U16, Val::U16(v)) => write_uleb(out, u64::from(*v)),
        (Type::S32, Val::S32(v)) => write_sleb(out, i64::from(*v)),
        (Type::U32, Val::U32(v)) => write_uleb(out, u64::from(*v)),
        (Type::S64, Val::S64(v)) => write_sleb(out, *v),
        (Type::U64, Val::U64(v)) => write_uleb(out, *v),
        (Type::Float32, Val::Float32(v)) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        (Type::Float64, Val::Float64(v)) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        (Type::Char, Val::Char(c)) => write_uleb(out, u64::from(u32::from(*c))),
        (Type::String, Val::String(s)) => {
            write_len(out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        (Type::List(list), Val::List(items)) => {
            let elem = list.ty();
            write_len(out, items.len());
            if matches!(elem, Type::U8) {
                out.reserve(items.len());
            }
            for (index, item) in items.iter().enumerate() {
                encode_at(item, &elem, out, next).map_err(|e| e.at(format!("[{index}]")))?;
            }
        }
        (Type::FixedLengthList(list), Val::FixedLengthList(items) | Val::List(items)) => {
            let elem = list.ty();
            if items.len() != list.len() as usize {
                return Err(CodecError::new(format!(
                    "the fixed-length list needs {} elements but has {}",
                    list.len(),
                    items.len()
                )));
            }
            for (index, item) in items.iter().enumerate() {
                encode_at(item, &elem, out, next).map_err(|e| e.at(format!("[{index}]")))?;
            }
        }
        (Type::Map(map), Val::Map(entries)) => {
            let (key_ty, value_ty) = (map.key(), map.value());
            write_len(out, entries.len());
            for (index, (key, value)) in entries.iter().enumerate() {
                encode_at(key, &key_ty, out, next).map_err(|e| e.at(format!("[{index}].key")))?;
                encode_at(value, &value_ty, out, next)
                    .map_err(|e| e.at(format!("[{index}].value")))?;
            }
        }
        (Type::Record(record), Val::Record(fields)) => {
            if fields.len() != record.fields().len() {
                return Err(CodecError::new(format!(
                    "the record has {} fields but the value has {}",
                    record.fields().len(),
                    fields.len()
                )));
            }
            for (index, field) in record.fields().enumerate() {
                // Values built by wasmtime are in declaration order; accept any order otherwise.
                let value = match fields.get(index) {
                    Some((name, value)) if name == field.name => value,
                    _ => fields
                        .iter()
                        .find(|(name, _)| name == field.name)
                        .map(|(_, value)| value)
                        .ok_or_else(|| {
                            CodecError::new(format!("the record lacks field `{}`", field.name))
                        })?,
                };
                encode_at(value, &field.ty, out, next)
                    .map_err(|e| e.at(format!("field {}", field.name)))?;
            }
        }
        (Type::Tuple(tuple), Val::Tuple(items)) => {
            if items.len() != tuple.types().len() {
                return Err(CodecError::new(format!(
                    "the tuple has {} elements but the value has {}",
                    tuple.types().len(),
                    items.len()
                )));
            }
            for (index, (item, item_ty)) in items.iter().zip(tuple.types()).enumerate() {
                encode_at(item, &item_ty, out, next).map_err(|e| e.at(format!("{index}")))?;
            }
        }
        (Type::Variant(variant), Val::Variant(name, payload)) => {
            let (index, payload_ty) = case_index(variant, name)?;
            write_len(out, index);
            encode_payload(payload.as_deref(), payload_ty.as_ref(), out, next)
                .map_err(|e| e.at(format!("case {name}")))?;
        }
        (Type::Enum(enum_ty), Val::Enum(name)) => {
            let index = enum_ty
                .names()
                .position(|case| case == name)
                .ok_or_else(|| CodecError::new(format!("the enum has no case `{name}`")))?;
            write_len(out, index);
        }
        (Type::Option(option), Val::Option(value)) => match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                encode_at(value, &option.ty(), out, next).map_err(|e| e.at("some"))?;
            }
        },
        (Type::Result(result), Val::Result(value)) => match value {
            Ok(payload) => {
                out.push(0);
                encode_payload(payload.as_deref(), result.ok().as_ref(), out, next)
                    .map_err(|e| e.at("ok"))?;
            }
            Err(payload) => {
                out.push(1);
                encode_payload(payload.as_deref(), result.err().as_ref(), out, next)
                    .map_err(|e| e.at("err"))?;
            }
        },
        (Type::Flags(flags), Val::Flags(set)) => {
            let names: Vec<&str> = flags.names().collect();
            let mut bits = vec![0u8; names.len().div_ceil(8)];
            for name in set {
                let index = names
                    .iter()
                    .position(|candidate| candidate == name)
                    .ok_or_else(|| CodecError::new(format!("the flags have no flag `{name}`")))?;
                bits[index / 8] |= 1 << (index % 8);
            }
            out.extend_from_slice(&bits);
        }
        (Type::Own(_) | Type::Borrow(_), _) | (_, Val::Resource(_)) => {
            return Err(not_transferable("resource"))
        }
        (Type::Future(_), _) | (_, Val::Future(_)) => return Err(not_transferable("future")),
        (Type::Stream(_), _) | (_, Val::Stream(_)) => return Err(not_transferable("stream")),
        (Type::ErrorContext, _) | (_, Val::ErrorContext(_)) => {
            return Err(not_transferable("error-context"))
        }
        (ty, val) => return Err(mismatch(ty, val)),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Decodes a whole parameter or result list of the given types; all bytes must be used.
pub fn decode_values(bytes: &[u8], types: &[Type]) -> Result<Vec<Val>, CodecError> {
    let mut reader = Reader { bytes, pos: 0 };
    let mut values = Vec::with_capacity(types.len());
    for (index, ty) in types.iter().enumerate() {
        let value = reader
            .value(ty, 0)
            .map_err(|e| e.at(format!("value {index}")))?;
        values.push(value);
    }
    reader.finish()?;
    Ok(values)
}

/// Decodes exactly one value of type `ty`; all bytes must be used.
pub fn decode_value(bytes: &[u8], ty: &Type) -> Result<Val, CodecError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(ty, 0)?;
    reader.finish()?;
    Ok(value)
}

/// Smallest number of bytes any value of `ty` encodes to (0 for zero-sized types).
fn min_encoded_len(ty: &Type, depth: usize) -> usize {
    if depth > MAX_DEPTH {
        return 0;
    }
    match ty {
        Type::Record(record) => record
            .fields()
            .map(|field| min_encoded_len(&field.ty, depth + 1))
            .sum(),
        Type::Tuple(tuple) => tuple.types().map(|t| min_encoded_len(&t, depth + 1)).sum(),
        Type::FixedLengthList(list) => {
            min_encoded_len(&list.ty(), depth + 1).saturating_mul(list.len() as usize)
        }
        Type::Flags(flags) => flags.names().len().div_ceil(8),
        Type::Float32 => 4,
        Type::Float64 => 8,
        _ => 1,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(CodecError::new(format!(
                "{extra} unexpected bytes after the last value"
            ))),
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], CodecError> {
        if len > self.remaining() {
            return Err(CodecError::new(format!(
                "truncated input: {what} needs {len} bytes but only {} remain",
                self.remaining()
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn byte(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn uleb(&mut self, what: &str) -> Result<u64, CodecError> {
        let mut result = 0u64;
        for index in 0..10 {
            let byte = self.byte(what)?;
            let bits = u64::from(byte & 0x7f);
            if index == 9 && bits > 1 {
                return Err(CodecError::new(format!("{what}: varint overflows 64 bits")));
            }
            result |= bits << (7 * index);
            if byte & 0x80 == 0 {
                if byte == 0 && index > 0 {
                    return Err(CodecError::new(format!(
                        "{what}: over-long varint encoding"
                    )));
                }
                return Ok(result);
            }
        }
        Err(CodecError::new(format!(
            "{what}: varint longer than 10 bytes"
        )))
    }

    fn sleb(&mut self, what: &str) -> Result<i64, CodecError> {
        let raw = self.uleb(what)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn unsigned<T: TryFrom<u64>>(&mut self, what: &str) -> Result<T, CodecError> {
        let raw = self.uleb(what)?;
        T::try_from(raw).map_err(|_| CodecError::new(format!("{raw} is out of range for {what}")))
    }

    fn signed<T: TryFrom<i64>>(&mut self, what: &str) -> Result<T, CodecError> {
        let raw = self.sleb(what)?;
        T::try_from(raw).map_err(|_| CodecError::new(format!("{raw} is out of range for {what}")))
    }

    /// A count of items that each need at least `min_item_len` bytes, checked against the
    /// remaining input so that it can bound an allocation.
    fn count(&mut self, what: &str, min_item_len: usize) -> Result<usize, CodecError> {
        let count = self.uleb(what)?;
        let fits = match self.remaining().checked_div(min_item_len) {
            None => count <= MAX_ZERO_SIZED_ELEMENTS,
            Some(most) => count <= most as u64,
        };
        if !fits {
            return Err(CodecError::new(format!(
                "{what} claims {count} elements but only {} bytes remain",
                self.remaining()
            )));
        }
        // `fits` bounds count by the remaining length, which is a usize.
        usize::try_from(count).map_err(|_| CodecError::new(format!("{what} is too large")))
    }

    fn case(&mut self, what: &str, count: usize) -> Result<usize, CodecError> {
        let index = self.uleb(what)?;
        if index >= count as u64 {
            return Err(CodecError::new(format!(
                "{what} {index} is out of range: the type has {count} cases"
            )));
        }
        Ok(index as usize)
    }

    fn payload(&mut self, ty: Option<Type>, depth: usize) -> Result<Option<Box<Val>>, CodecError> {
        match ty {
            None => Ok(None),
            Some(ty) => Ok(Some(Box::new(self.value(&ty, depth)?))),
        }
    }

    fn value(&mut self, ty: &Type, depth: usize) -> Result<Val, CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::new(format!(
                "values nest deeper than {MAX_DEPTH} levels"
            )));
        }
        let next = depth + 1;
        Ok(match ty {
            Type::Bool => match self.byte("bool")? {
                0 => Val::Bool(false),
                1 => Val::Bool(true),
                other => return Err(CodecError::new(format!("invalid bool byte {other}"))),
            },
            Type::S8 => Val::S8(self.byte("s8")? as i8),
            Type::U8 => Val::U8(self.byte("u8")?),
            Type::S16 => Val::S16(self.signed("s16")?),
            Type::U16 => Val::U16(self.unsigned("u16")?),
            Type::S32 => Val::S32(self.signed("s32")?),
            Type::U32 => Val::U32(self.unsigned("u32")?),
            Type::S64 => Val::S64(self.sleb("s64")?),
            Type::U64 => Val::U64(self.uleb("u64")?),
            Type::Float32 => {
                let raw = self.take(4, "f32")?;
                Val::Float32(f32::from_bits(u32::from_le_bytes([
                    raw[0], raw[1], raw[2], raw[3],
                ])))
            }
            Type::Float64 => {
                let raw = self.take(8, "f64")?;
                let mut bits = [0u8; 8];
                bits.copy_from_slice(raw);
                Val::Float64(f64::from_bits(u64::from_le_bytes(bits)))
            }
            Type::Char => {
                let raw: u32 = self.unsigned("char")?;
                Val::Char(char::from_u32(raw).ok_or_else(|| {
                    CodecError::new(format!("{raw:#x} is not a Unicode scalar value"))
                })?)
            }
            Type::String => {
                let len = self.count("string length", 1)?;
                let raw = self.take(len, "string")?;
                let text = std::str::from_utf8(raw)
                    .map_err(|e| CodecError::new(format!("string is not UTF-8: {e}")))?;
                Val::String(text.to_owned())
            }
            Type::List(list) => {
                let elem = list.ty();
                if matches!(elem, Type::U8) {
                    let len = self.count("list length", 1)?;
                    let raw = self.take(len, "list<u8>")?;
                    Val::List(raw.iter().map(|b| Val::U8(*b)).collect())
                } else {
                    let count = self.count("list length", min_encoded_len(&elem, 0))?;
                    let mut items = Vec::with_capacity(count.min(4096));
                    for index in 0..count {
                        items.push(
                            self.value(&elem, next)
                                .map_err(|e| e.at(format!("[{index}]")))?,
                        );
                    }
                    Val::List(items)
                }
            }
            Type::FixedLengthList(list) => {
                let elem = list.ty();
                let count = list.len() as usize;
                let min = min_encoded_len(&elem, 0);
                if min > 0 && count > self.remaining() / min {
                    return Err(CodecError::new(format!(
                        "truncated input: a fixed-length list of {count} elements cannot fit in {} bytes",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(count.min(4096));
                for index in 0..count {
                    items.push(
                        self.value(&elem, next)
                            .map_err(|e| e.at(format!("[{index}]")))?,
                    );
                }
                Val::FixedLengthList(items)
            }
            Type::Map(map) => {
                let (key_ty, value_ty) = (map.key(), map.value());
                let min = min_encoded_len(&key_ty, 0) + min_encoded_len(&value_ty, 0);
                let count = self.count("map length", min)?;
                let mut entries = Vec::with_capacity(count.min(4096));
                for index in 0..count {
                    let key = self
                        .value(&key_ty, next)
                        .map_err(|e| e.at(format!("[{index}].key")))?;
                    let value = self
                        .value(&value_ty, next)
                        .map_err(|e| e.at(format!("[{index}].value")))?;
                    entries.push((key, value));
                }
                Val::Map(entries)
            }
            Type::Record(record) => {
                let mut fields = Vec::with_capacity(record.fields().len());
                for field in record.fields() {
                    let value = self
                        .value(&field.ty, next)
                        .map_err(|e| e.at(format!("field {}", field.name)))?;
                    fields.push((field.name.to_owned(), value));
                }
                Val::Record(fields)
            }
            Type::Tuple(tuple) => {
                let mut items = Vec::with_capacity(tuple.types().len());
                for (index, item_ty) in tuple.types().enumerate() {
                    items.push(
                        self.value(&item_ty, next)
                            .map_err(|e| e.at(format!("{index}")))?,
                    );
                }
                Val::Tuple(items)
            }
            Type::Variant(variant) => {
                let index = self.case("variant case", variant.cases().len())?;
                let case = variant
                    .cases()
                    .nth(index)
                    .ok_or_else(|| CodecError::new("variant case vanished"))?;
                let name = case.name.to_owned();
                let payload = self
                    .payload(case.ty, next)
                    .map_err(|e| e.at(format!("case {name}")))?;
                Val::Variant(name, payload)
            }
            Type::Enum(enum_ty) => {
                let index = self.case("enum case", enum_ty.names().len())?;
                let name = enum_ty
                    .names()
                    .nth(index)
                    .ok_or_else(|| CodecError::new("enum case vanished"))?;
                Val::Enum(name.to_owned())
            }
            Type::Option(option) => match self.byte("option tag")? {
                0 => Val::Option(None),
                1 => Val::Option(Some(Box::new(
                    self.value(&option.ty(), next).map_err(|e| e.at("some"))?,
                ))),
                other => return Err(CodecError::new(format!("invalid option tag {other}"))),
            },
            Type::Result(result) => match self.byte("result tag")? {
                0 => Val::Result(Ok(self
                    .payload(result.ok(), next)
                    .map_err(|e| e.at("ok"))?)),
                1 => Val::Result(Err(self
                    .payload(result.err(), next)
                    .map_err(|e| e.at("err"))?)),
                other => return Err(CodecError::new(format!("invalid result tag {other}"))),
            },
            Type::Flags(flags) => {
                let names: Vec<&str> = flags.names().collect();
                let bits = self.take(names.len().div_ceil(8), "flags")?;
                let mut set = Vec::new();
                for (index, name) in names.iter().enumerate() {
                    if bits[index / 8] & (1 << (index % 8)) != 0 {
                        set.push((*name).to_owned());
                    }
                }
                let unused_bits = names.len() % 8;
                if unused_bits != 0 {
                    if let Some(last) = bits.last() {
                        if last >> unused_bits != 0 {
                            return Err(CodecError::new("flags set bits past the last flag"));
                        }
                    }
                }
                Val::Flags(set)
            }
            Type::Own(_) | Type::Borrow(_) => return Err(not_transferable("resource")),
            Type::Future(_) => return Err(not_transferable("future")),
            Type::Stream(_) => return Err(not_transferable("stream")),
            Type::ErrorContext => return Err(not_transferable("error-context")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::fixture_types::Fixture;

    fn some(v: Val) -> Option<Box<Val>> {
        Some(Box::new(v))
    }

    fn scalars(seed: i64) -> Vec<Val> {
        vec![
            Val::Bool(seed % 2 == 0),
            Val::S8(seed as i8),
            Val::U8(seed as u8),
            Val::S16(seed as i16),
            Val::U16(seed as u16),
            Val::S32(seed as i32),
            Val::U32(seed as u32),
            Val::S64(seed),
            Val::U64(seed as u64),
            Val::Float32(seed as f32 * 0.5),
            Val::Float64(seed as f64 / 3.0),
            Val::Char(char::from_u32((seed as u32) % 0xD000).unwrap_or('x')),
            Val::String(format!("s{seed}-ünï🦀")),
        ]
    }

    fn item(sku: &str, dims: bool) -> Val {
        Val::Record(vec![
            ("sku".into(), Val::String(sku.into())),
            ("category".into(), Val::Enum("part".into())),
            (
                "tags".into(),
                Val::Flags(vec!["fragile".into(), "hazardous".into()]),
            ),
            (
                "dims".into(),
                Val::Option(if dims {
                    some(Val::Record(vec![
                        ("width".into(), Val::Float32(1.5)),
                        ("depth".into(), Val::Float64(-1e300)),
                    ]))
                } else {
                    None
                }),
            ),
            ("grade".into(), Val::Char('Ω')),
            (
                "history".into(),
                Val::List(vec![Val::S64(i64::MIN), Val::S64(0), Val::S64(i64::MAX)]),
            ),
            (
                "last-event".into(),
                Val::Variant(
                    "shipped".into(),
                    some(Val::Tuple(vec![Val::String("acme".into()), Val::U32(7)])),
                ),
            ),
        ])
    }

    fn compound() -> Vec<Val> {
        vec![
            item("A-1", true),
            Val::List(vec![item("B-1", false), item("B-2", true)]),
            Val::List((0..=255u8).map(Val::U8).collect()),
            Val::List(vec![
                Val::List(vec![]),
                Val::List(vec![
                    Val::Option(None),
                    Val::Option(some(Val::String(String::new()))),
                ]),
            ]),
            Val::Flags(vec!["f0".into(), "f8".into(), "f9".into()]),
            Val::Variant("lost".into(), None),
            Val::Enum("consumable".into()),
            Val::Tuple(vec![
                Val::S32(-5),
                Val::Option(some(Val::U64(u64::MAX))),
                Val::Result(Err(some(Val::U8(9)))),
            ]),
            Val::Result(Ok(None)),
            Val::Result(Ok(some(Val::U32(3)))),
            Val::Result(Err(some(Val::String("bad".into())))),
        ]
    }

    #[test]
    fn scalars_round_trip_at_extremes() {
        let fixture = Fixture::new();
        let types = fixture.params("scalars");
        for seed in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            127,
            128,
            300,
            i64::MIN,
            i64::MAX,
        ] {
            let values = scalars(seed);
            let bytes = encode_values(&values, &types).expect("encode");
            let decoded = decode_values(&bytes, &types).expect("decode");
            assert_eq!(decoded, values, "seed {seed}");
        }
        let extremes = vec![
            Val::Bool(true),
            Val::S8(i8::MIN),
            Val::U8(u8::MAX),
            Val::S16(i16::MIN),
            Val::U16(u16::MAX),
            Val::S32(i32::MIN),
            Val::U32(u32::MAX),
            Val::S64(i64::MIN),
            Val::U64(u64::MAX),
            Val::Float32(f32::NAN),
            Val::Float64(f64::NEG_INFINITY),
            Val::Char(char::MAX),
            Val::String(String::new()),
        ];
        let bytes = encode_values(&extremes, &types).expect("encode");
        assert_eq!(decode_values(&bytes, &types).expect("decode"), extremes);
    }

    #[test]
    fn small_numbers_take_one_byte() {
        let fixture = Fixture::new();
        let types = fixture.params("scalars");
        let bytes = encode_values(&scalars(3), &types).expect("encode");
        // 9 one-byte integers + bool, 4 + 8 float bytes, 1 char byte ('\u{3}'), string.
        let string_len = "s3-ünï🦀".len();
        assert_eq!(bytes.len(), 9 + 12 + 1 + 1 + string_len);
    }

    #[test]
    fn compound_kinds_round_trip() {
        let fixture = Fixture::new();
        let types = fixture.params("compound");
        let values = compound();
        let bytes = encode_values(&values, &types).expect("encode");
        assert_eq!(decode_values(&bytes, &types).expect("decode"), values);

        let results = fixture.results("compound");
        for result in [
            Val::Result(Ok(some(item("R", true)))),
            Val::Result(Err(some(Val::String("nope".into())))),
        ] {
            let bytes = encode_values(std::slice::from_ref(&result), &results).expect("encode");
            assert_eq!(
                decode_values(&bytes, &results).expect("decode"),
                vec![result]
            );
        }
    }

    #[test]
    fn record_fields_in_any_order_encode_in_declaration_order() {
        let fixture = Fixture::new();
        let types = fixture.params("compound");
        let Val::Record(mut fields) = item("X", true) else {
            unreachable!()
        };
        let in_order = encode_values(
            std::slice::from_ref(&Val::Record(fields.clone())),
            &types[..1],
        )
        .expect("encode");
        fields.reverse();
        let reversed = encode_values(&[Val::Record(fields)], &types[..1]).expect("encode reversed");
        assert_eq!(in_order, reversed);
    }

    #[test]
    fn deep_nesting_round_trips_within_the_limit() {
        let fixture = Fixture::new();
        let types = fixture.params("deep");
        let mut value = Val::U8(42);
        for _ in 0..10 {
            value = Val::Option(some(value));
        }
        let bytes = encode_values(std::slice::from_ref(&value), &types).expect("encode");
        assert_eq!(decode_values(&bytes, &types).expect("decode"), vec![value]);
    }

    #[test]
    fn encoding_rejects_values_that_do_not_match_the_type() {
        let fixture = Fixture::new();
        let types = fixture.params("compound");
        let mut values = compound();
        values[6] = Val::Enum("spaceship".into());
        let err = encode_values(&values, &types).unwrap_err();
        assert!(err.to_string().contains("spaceship"), "{err}");
        assert!(err.to_string().contains("value 6"), "{err}");

        let mut values = compound();
        values[2] = Val::String("not a list".into());
        let err = encode_values(&values, &types).unwrap_err();
        assert!(err.message().contains("type mismatch"), "{err}");

        let err = encode_values(&compound()[..3], &types).unwrap_err();
        assert!(err.message().contains("11 values but 3"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let fixture = Fixture::new();
        for (name, values) in [("scalars", scalars(-12345)), ("compound", compound())] {
            let types = fixture.params(name);
            let bytes = encode_values(&values, &types).expect("encode");
            for cut in 0..bytes.len() {
                let result = decode_values(&bytes[..cut], &types);
                assert!(
                    result.is_err(),
                    "{name}: decoding {cut} of {} bytes",
                    bytes.len()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let err = decode_values(&longer, &types).unwrap_err();
            assert!(err.message().contains("1 unexpected bytes"), "{err}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let fixture = Fixture::new();
        let type_sets = [
            fixture.params("scalars"),
            fixture.params("compound"),
            fixture.params("deep"),
            fixture.params("units"),
            fixture.results("compound"),
        ];
        // A small deterministic xorshift generator: no external fuzzing dependency needed.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = encode_values(&compound(), &type_sets[1]).expect("encode");
        for round in 0..3000 {
            let len = (next() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && !valid.is_empty() {
                // Mutate a valid encoding instead: flips get deeper into the structure.
                bytes = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            for types in &type_sets {
                let _ = decode_values(&bytes, types);
            }
        }
    }

    #[test]
    fn hostile_lengths_are_rejected_before_allocating() {
        let fixture = Fixture::new();
        let types = fixture.params("compound");
        // item.sku claims a string of u64::MAX bytes.
        let mut bytes = Vec::new();
        write_uleb(&mut bytes, u64::MAX);
        let err = decode_values(&bytes, &types).unwrap_err();
        assert!(err.to_string().contains("string length"), "{err}");
        assert!(err.to_string().contains("field sku"), "{err}");

        // A list of one-byte `result`s claiming 2^40 elements.
        let units = fixture.params("units");
        let mut bytes = Vec::new();
        write_uleb(&mut bytes, 1 << 40);
        let err = decode_values(&bytes, &units).unwrap_err();
        assert!(err.message().contains("claims"), "{err}");
        // ... but a modest one decodes.
        let mut bytes = Vec::new();
        write_uleb(&mut bytes, 3);
        bytes.extend_from_slice(&[0, 1, 0]);
        assert_eq!(
            decode_values(&bytes, &units).expect("decode"),
            vec![Val::List(vec![
                Val::Result(Ok(None)),
                Val::Result(Err(None)),
                Val::Result(Ok(None)),
            ])]
        );
    }

    #[test]
    fn invalid_scalars_are_named() {
        let fixture = Fixture::new();
        let types = fixture.params("scalars");
        let mut bytes = encode_values(&scalars(5), &types).expect("encode");
        bytes[0] = 2;
        let err = decode_values(&bytes, &types).unwrap_err();
        assert_eq!(err.to_string(), "at value 0: invalid bool byte 2");

        // Over-long and overflowing varints.
        let mut reader = Reader {
            bytes: &[0x80, 0x00],
            pos: 0,
        };
        assert!(reader
            .uleb("n")
            .unwrap_err()
            .message()
            .contains("over-long"));
        let mut reader = Reader {
            bytes: &[0xff; 11],
            pos: 0,
        };
        assert!(reader
            .uleb("n")
            .unwrap_err()
            .message()
            .contains("overflows"));
        // A surrogate is not a char.
        let char_ty = &types[11];
        let mut bytes = Vec::new();
        write_uleb(&mut bytes, 0xD800);
        let err = decode_value(&bytes, char_ty).unwrap_err();
        assert!(err.message().contains("not a Unicode scalar"), "{err}");
        // u16 out of range.
        let mut bytes = Vec::new();
        write_uleb(&mut bytes, 70_000);
        let err = decode_value(&bytes, &types[4]).unwrap_err();
        assert!(err.message().contains("out of range for u16"), "{err}");
    }

    #[test]
    fn flag_bits_past_the_last_flag_are_rejected() {
        let fixture = Fixture::new();
        let types = fixture.params("compound");
        let tags = &types[4];
        assert_eq!(
            decode_value(&[0b0000_0001, 0b0000_0011], tags).expect("decode"),
            Val::Flags(vec!["f0".into(), "f8".into(), "f9".into()])
        );
        let err = decode_value(&[0, 0b0000_0100], tags).unwrap_err();
        assert!(err.message().contains("past the last flag"), "{err}");
    }

    #[test]
    fn variant_and_enum_indices_are_checked() {
        let fixture = Fixture::new();
        let types = fixture.params("compound");
        let err = decode_value(&[3], &types[5]).unwrap_err();
        assert!(
            err.message().contains("variant case 3 is out of range"),
            "{err}"
        );
        let err = decode_value(&[9], &types[6]).unwrap_err();
        assert!(err.message().contains("enum case 9"), "{err}");
    }
}
