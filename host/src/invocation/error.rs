//! The typed errors of a lattice call and their wire form.
//!
//! On the wire an error is a reply carrying the header `trellis-error: <kind>` and a UTF-8
//! message body; `payload-too-large` also carries `trellis-size` and `trellis-limit`.

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::wire::{HEADER_ERROR, HEADER_LIMIT, HEADER_SIZE};

/// Why a lattice call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationError {
    /// The caller has no link for the import (raised on the caller's side, never sent).
    LinkNotFound {
        /// Human-readable description: source, interface and link name.
        message: String,
    },
    /// Nothing in the lattice subscribes to the target's subject.
    NoResponders {
        /// The target id that was called.
        target_id: String,
    },
    /// The call's deadline passed before a reply arrived (or before the handler finished).
    DeadlineExceeded {
        /// What was being waited for.
        message: String,
    },
    /// The target trapped or its handler failed; carries the target's message.
    Trap {
        /// The trap or failure message from the target.
        message: String,
    },
    /// A parameter or result payload is over the size limit.
    PayloadTooLarge {
        /// Size of the payload in bytes.
        size: u64,
        /// The limit it exceeds, in bytes.
        limit: u64,
    },
    /// The target could not make sense of the call (unknown function, undecodable params).
    BadRequest {
        /// What was wrong with the request.
        message: String,
    },
    /// NATS or the chunking protocol failed (connection lost, protocol violation).
    Transport {
        /// What failed.
        message: String,
    },
}

impl InvocationError {
    /// A [`InvocationError::Trap`] with `message`.
    pub fn trap(message: impl Into<String>) -> Self {
        Self::Trap {
            message: message.into(),
        }
    }

    /// A [`InvocationError::BadRequest`] with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// A [`InvocationError::Transport`] with `message`.
    pub fn transport(message: impl Into<String>) -> Self {
        Self::Transport {
            message: message.into(),
        }
    }

    /// A [`InvocationError::DeadlineExceeded`] with `message`.
    pub fn deadline(message: impl Into<String>) -> Self {
        Self::DeadlineExceeded {
            message: message.into(),
        }
    }

    /// The `trellis-error` header value for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LinkNotFound { .. } => "link-not-found",
            Self::NoResponders { .. } => "no-responders",
            Self::DeadlineExceeded { .. } => "deadline-exceeded",
            Self::Trap { .. } => "trap",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::BadRequest { .. } => "bad-request",
            Self::Transport { .. } => "transport",
        }
    }

    /// The wire form: headers (`trellis-error` and, for payload-too-large, the sizes) and a
    /// UTF-8 message body.
    pub fn to_wire(&self) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_ERROR, self.kind());
        if let Self::PayloadTooLarge { size, limit } = self {
            headers.insert(HEADER_SIZE, size.to_string().as_str());
            headers.insert(HEADER_LIMIT, limit.to_string().as_str());
        }
        (headers, Bytes::from(self.wire_message()))
    }

    /// The message part of the wire form (the target id for no-responders).
    pub(crate) fn wire_message(&self) -> String {
        match self {
            Self::LinkNotFound { message }
            | Self::DeadlineExceeded { message }
            | Self::Trap { message }
            | Self::BadRequest { message }
            | Self::Transport { message } => message.clone(),
            Self::NoResponders { target_id } => target_id.clone(),
            Self::PayloadTooLarge { .. } => self.to_string(),
        }
    }

    /// Rebuilds an error from a reply whose `trellis-error` header is `kind`. An unknown kind
    /// (a newer peer) becomes a [`InvocationError::Transport`] that names it.
    pub fn from_wire(kind: &str, headers: &HeaderMap, body: &[u8]) -> Self {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Self::from_parts(kind, number(HEADER_SIZE), number(HEADER_LIMIT), body)
    }

    /// Rebuilds an error from its kind, sizes (payload-too-large only) and message bytes.
    pub(crate) fn from_parts(kind: &str, size: u64, limit: u64, body: &[u8]) -> Self {
        let message = String::from_utf8_lossy(body).into_owned();
        match kind {
            "link-not-found" => Self::LinkNotFound { message },
            "no-responders" => Self::NoResponders { target_id: message },
            "deadline-exceeded" => Self::DeadlineExceeded { message },
            "trap" => Self::Trap { message },
            "payload-too-large" => Self::PayloadTooLarge { size, limit },
            "bad-request" => Self::BadRequest { message },
            "transport" => Self::Transport { message },
            other => Self::Transport {
                message: format!(
                    "the target answered with an unknown error kind `{other}`: {message}"
                ),
            },
        }
    }
}

impl fmt::Display for InvocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkNotFound { message } => write!(f, "link not found: {message}"),
            Self::NoResponders { target_id } => {
                write!(
                    f,
                    "target {target_id} is not running anywhere in the lattice"
                )
            }
            Self::DeadlineExceeded { message } => write!(f, "deadline exceeded: {message}"),
            Self::Trap { message } => write!(f, "the target trapped: {message}"),
            Self::PayloadTooLarge { size, limit } => write!(
                f,
                "payload too large: {size} bytes is over the limit of {limit} bytes"
            ),
            Self::BadRequest { message } => write!(f, "bad request: {message}"),
            Self::Transport { message } => write!(f, "lattice transport failed: {message}"),
        }
    }
}

impl std::error::Error for InvocationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_its_wire_form() {
        let errors = [
            InvocationError::LinkNotFound {
                message: "c1 has no link `default` for wasi:keyvalue/store".into(),
            },
            InvocationError::NoResponders {
                target_id: "callee".into(),
            },
            InvocationError::deadline("after 2s"),
            InvocationError::trap("wasm trap: unreachable"),
            InvocationError::PayloadTooLarge {
                size: 70_000_000,
                limit: 67_108_864,
            },
            InvocationError::bad_request("no function `x`"),
            InvocationError::transport("connection lost"),
        ];
        for error in errors {
            let (headers, body) = error.to_wire();
            let kind = headers.get(HEADER_ERROR).expect("kind header").as_str();
            assert_eq!(InvocationError::from_wire(kind, &headers, &body), error);
        }
    }
}
