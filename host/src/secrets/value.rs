//! A secret's value in memory: a type that never prints what it holds.

/// A secret's value. `Debug` and `Display` print `<redacted>`, so a value cannot reach a log
/// through formatting; [`SecretValue::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Value);

/// The two shapes `wasmcloud:secrets` knows.
#[derive(Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    Bytes(Vec<u8>),
}

/// What [`SecretValue::expose`] returns: the value, borrowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ExposedSecret<'a> {
    /// A text secret.
    Text(&'a str),
    /// A binary secret.
    Bytes(&'a [u8]),
}

impl SecretValue {
    /// A text secret.
    pub fn text(value: impl Into<String>) -> Self {
        Self(Value::Text(value.into()))
    }

    /// A binary secret.
    pub fn bytes(value: impl Into<Vec<u8>>) -> Self {
        Self(Value::Bytes(value.into()))
    }

    /// The value itself. Call sites are the places secrets leave their wrapper: keep them few.
    pub fn expose(&self) -> ExposedSecret<'_> {
        match &self.0 {
            Value::Text(text) => ExposedSecret::Text(text),
            Value::Bytes(bytes) => ExposedSecret::Bytes(bytes),
        }
    }

    /// The value's length in bytes (safe to log).
    pub fn len(&self) -> usize {
        match &self.0 {
            Value::Text(text) => text.len(),
            Value::Bytes(bytes) => bytes.len(),
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Debug for ExposedSecret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
