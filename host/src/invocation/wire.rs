//! Header names, the per-call context and size arithmetic shared by client and server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;

/// W3C trace context of the call.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Id of the calling component or provider.
pub const HEADER_SOURCE: &str = "trellis-source";
/// Name of the link the call travels over.
pub const HEADER_LINK: &str = "trellis-link";
/// Absolute deadline of the call, unix milliseconds.
pub const HEADER_DEADLINE: &str = "trellis-deadline";
/// How the params/results are encoded (see [`ENCODING_COMPONENT_VALUES`]).
pub const HEADER_CONTENT_ENCODING: &str = "content-encoding";
/// Present on error replies: the [`super::InvocationError::kind`].
pub const HEADER_ERROR: &str = "trellis-error";
/// Total size in bytes of a chunked payload (and the size of a payload-too-large error).
pub const HEADER_SIZE: &str = "trellis-size";
/// The limit a payload-too-large error refers to.
pub const HEADER_LIMIT: &str = "trellis-limit";
/// On the server's reply to a chunked call's first message: the subject to send chunks to.
pub const HEADER_UPLOAD: &str = "trellis-upload";
/// On a chunked result: the subject to pull the result's chunks from.
pub const HEADER_DOWNLOAD: &str = "trellis-download";
/// Sequence number (from 0) of a chunk, on uploads and on download pulls.
pub const HEADER_SEQ: &str = "trellis-seq";
/// On a call: [`PEER_ASK`] when the caller can make direct calls. On its reply: where the
/// target may be called directly (see [`super::direct`]).
pub const HEADER_PEER: &str = "trellis-peer";
/// The value of [`HEADER_PEER`] on a call.
pub const PEER_ASK: &str = "ask";

/// The content encoding of [`super::codec`]: component-model values, tag-free, LEB128.
pub const ENCODING_COMPONENT_VALUES: &str = "trellis-cv1";

/// Default cap on a call's params or results (64 MiB).
pub const DEFAULT_MAX_CALL_PAYLOAD: usize = 64 * 1024 * 1024;
/// Default timeout of a call without an explicit deadline.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a chunk message left for its own headers and the protocol line.
pub(crate) const CHUNK_HEADER_ALLOWANCE: usize = 512;

/// Per-call metadata carried in headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    /// W3C `traceparent` of the caller's span, if tracing.
    pub traceparent: Option<String>,
    /// Id of the caller (component or provider id).
    pub source_id: Option<String>,
    /// Link name the call is made over.
    pub link_name: Option<String>,
    /// Absolute deadline; `None` means the client's default timeout from now.
    pub deadline: Option<SystemTime>,
    /// Encoding of the params; `None` means [`ENCODING_COMPONENT_VALUES`].
    pub content_encoding: Option<String>,
}

impl CallContext {
    /// Writes the context into NATS headers, with `deadline` as the effective deadline.
    pub(crate) fn to_headers(&self, deadline: SystemTime) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(traceparent) = &self.traceparent {
            headers.insert(HEADER_TRACEPARENT, traceparent.as_str());
        }
        if let Some(source) = &self.source_id {
            headers.insert(HEADER_SOURCE, source.as_str());
        }
        if let Some(link) = &self.link_name {
            headers.insert(HEADER_LINK, link.as_str());
        }
        headers.insert(HEADER_DEADLINE, unix_millis(deadline).to_string().as_str());
        headers.insert(
            HEADER_CONTENT_ENCODING,
            self.content_encoding
                .as_deref()
                .unwrap_or(ENCODING_COMPONENT_VALUES),
        );
        headers
    }

    /// Reads the context from a call's headers (missing or malformed fields become `None`).
    pub(crate) fn from_headers(headers: Option<&HeaderMap>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let text = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        Self {
            traceparent: text(HEADER_TRACEPARENT),
            source_id: text(HEADER_SOURCE),
            link_name: text(HEADER_LINK),
            deadline: headers
                .get(HEADER_DEADLINE)
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            content_encoding: text(HEADER_CONTENT_ENCODING),
        }
    }
}

/// Milliseconds since the unix epoch (0 before it).
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Time left until `deadline`, `None` once it has passed.
pub(crate) fn remaining(deadline: SystemTime) -> Option<Duration> {
    deadline
        .duration_since(SystemTime::now())
        .ok()
        .filter(|d| !d.is_zero())
}

/// Bytes `headers` take on the wire (mirrors the NATS header block framing).
pub(crate) fn headers_wire_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for value in values {
            len += AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2;
        }
    }
    len
}

/// Payload bytes of one chunk for a server whose max payload is `max_payload`.
pub(crate) fn chunk_size(max_payload: usize) -> usize {
    max_payload.saturating_sub(CHUNK_HEADER_ALLOWANCE).max(1024)
}

/// A header as a `u64`, if present and well-formed.
pub(crate) fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// A header as a string, if present.
pub(crate) fn header_str<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}
