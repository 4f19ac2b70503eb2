//! The bytes of the direct path: the connection handshake and the call/answer frames.
//!
//! Everything is little-endian. A string is a `u16` length and UTF-8 bytes; an empty optional
//! string means "absent".
//!
//! - **Handshake**: the caller sends [`MAGIC`], a `u16` token length and the token; the callee
//!   answers one byte, [`HANDSHAKE_OK`] or [`HANDSHAKE_REFUSED`] (and then closes).
//! - **Frame**: `u32` length of what follows, `u8` kind, `u64` call id, then the body.
//!   - [`Kind::Call`]: `u64` deadline (unix ms), strings target, interface, function, source,
//!     link, traceparent, content encoding; the rest is the encoded params.
//!   - [`Kind::Result`]: the encoded results.
//!   - [`Kind::Error`]: string kind (as [`InvocationError::kind`]), `u64` size, `u64` limit
//!     (both 0 unless payload-too-large), the rest a UTF-8 message.
//!   - [`Kind::NotServed`]: empty; the target does not run on this host (any more). The call
//!     was not made, so the caller may send it over NATS instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::invocation::error::InvocationError;
use crate::invocation::wire::{unix_millis, CallContext};

/// Opens every direct connection: names the protocol and its version.
pub const MAGIC: &[u8; 8] = b"TRLSDIR1";
/// The callee accepted the token.
pub const HANDSHAKE_OK: u8 = 0;
/// The callee refused the token (or the magic); it closes the connection.
pub const HANDSHAKE_REFUSED: u8 = 1;
/// Longest token a handshake may carry.
pub const MAX_TOKEN: usize = 256;
/// Bytes of a frame's fixed head: length, kind, call id.
pub const HEAD_LEN: usize = 4 + 1 + 8;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Caller -> callee: one call.
    Call = 1,
    /// Callee -> caller: the call's results.
    Result = 2,
    /// Callee -> caller: the call failed; a typed [`InvocationError`].
    Error = 3,
    /// Callee -> caller: the target is not served here; the call was not made.
    NotServed = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Call,
            2 => Self::Result,
            3 => Self::Error,
            4 => Self::NotServed,
            _ => return None,
        })
    }
}

/// A frame's fixed head, read before its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the body that follows the head.
    pub body_len: usize,
    /// What the frame is.
    pub kind: Kind,
    /// Matches an answer to its call, chosen by the caller.
    pub call_id: u64,
}

/// Reads a frame head; `max_body` bounds the body so a peer cannot make us allocate at will.
pub fn parse_head(head: &[u8; HEAD_LEN], max_body: usize) -> Result<Head, String> {
    let mut buf = &head[..];
    let len = buf.get_u32_le() as usize;
    let kind = buf.get_u8();
    let call_id = buf.get_u64_le();
    let kind = Kind::from_byte(kind).ok_or_else(|| format!("unknown frame kind {kind}"))?;
    let body_len = len
        .checked_sub(1 + 8)
        .ok_or_else(|| format!("frame length {len} is shorter than its head"))?;
    if body_len > max_body {
        return Err(format!(
            "a {body_len}-byte frame is over this connection's {max_body}-byte limit"
        ));
    }
    Ok(Head {
        body_len,
        kind,
        call_id,
    })
}

/// The head of a frame whose body is `body_len` bytes.
fn put_head(out: &mut BytesMut, kind: Kind, call_id: u64, body_len: usize) {
    // Bodies are bounded well below 4 GiB by the callers' payload caps.
    let len = u32::try_from(body_len + 1 + 8).unwrap_or(u32::MAX);
    out.put_u32_le(len);
    out.put_u8(kind as u8);
    out.put_u64_le(call_id);
}

fn put_str(out: &mut BytesMut, value: &str) {
    let bytes = value.as_bytes();
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16_le(len as u16);
    out.put_slice(&bytes[..len]);
}

fn str_len(value: &str) -> usize {
    2 + value.len().min(usize::from(u16::MAX))
}

/// A call as it travels: who is called and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFrame {
    /// The component id the call is for.
    pub target_id: String,
    /// Interface of the called function.
    pub interface: String,
    /// The called function.
    pub function: String,
    /// Trace context, source, link, encoding; `deadline` is always set on the wire.
    pub context: CallContext,
    /// The encoded params.
    pub params: Bytes,
}

/// The strings of a call frame, in order.
fn call_fields<'a>(
    target_id: &'a str,
    interface: &'a str,
    function: &'a str,
    context: &'a CallContext,
) -> [&'a str; 7] {
    fn opt(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or("")
    }
    [
        target_id,
        interface,
        function,
        opt(&context.source_id),
        opt(&context.link_name),
        opt(&context.traceparent),
        opt(&context.content_encoding),
    ]
}

/// Bytes of the body of a call frame, or `None` when one of its strings is over the 64 KiB a
/// frame string can hold ([`encode_call`] would cut it): such a call must go through NATS.
pub fn call_body_len(
    target_id: &str,
    interface: &str,
    function: &str,
    context: &CallContext,
    params_len: usize,
) -> Option<usize> {
    call_fields(target_id, interface, function, context)
        .iter()
        .try_fold(8 + params_len, |len, field| {
            (field.len() <= usize::from(u16::MAX)).then_some(len + 2 + field.len())
        })
}

/// Encodes a call frame with the effective `deadline`. A string over 64 KiB is cut; callers
/// check [`call_body_len`] first.
pub fn encode_call(
    call_id: u64,
    target_id: &str,
    interface: &str,
    function: &str,
    context: &CallContext,
    deadline: SystemTime,
    params: &[u8],
) -> Bytes {
    let fields = call_fields(target_id, interface, function, context);
    let body_len = 8 + fields.iter().map(|f| str_len(f)).sum::<usize>() + params.len();
    let mut out = BytesMut::with_capacity(HEAD_LEN + body_len);
    put_head(&mut out, Kind::Call, call_id, body_len);
    out.put_u64_le(unix_millis(deadline));
    for field in fields {
        put_str(&mut out, field);
    }
    out.put_slice(params);
    out.freeze()
}

/// Decodes a call frame's body.
pub fn decode_call(mut body: Bytes) -> Result<CallFrame, String> {
    if body.len() < 8 {
        return Err("a call frame ends before its deadline".into());
    }
    let deadline = UNIX_EPOCH + Duration::from_millis(body.get_u64_le());
    let mut next = |what: &str| take_str(&mut body, what);
    let target_id = next("target")?;
    let interface = next("interface")?;
    let function = next("function")?;
    let optional = |s: String| (!s.is_empty()).then_some(s);
    let source_id = optional(next("source")?);
    let link_name = optional(next("link")?);
    let traceparent = optional(next("traceparent")?);
    let content_encoding = optional(next("content encoding")?);
    Ok(CallFrame {
        target_id,
        interface,
        function,
        context: CallContext {
            traceparent,
            source_id,
            link_name,
            deadline: Some(deadline),
            content_encoding,
        },
        params: body,
    })
}

fn take_str(body: &mut Bytes, what: &str) -> Result<String, String> {
    if body.len() < 2 {
        return Err(format!("a frame ends before its {what}"));
    }
    let len = usize::from(body.get_u16_le());
    if body.len() < len {
        return Err(format!("a frame ends inside its {what}"));
    }
    let bytes = body.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("the {what} is not UTF-8"))
}

/// The head of a result frame; the results follow it as they are (no copy).
pub fn result_head(call_id: u64, results_len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(HEAD_LEN);
    put_head(&mut out, Kind::Result, call_id, results_len);
    out.freeze()
}

/// A complete not-served frame.
pub fn encode_not_served(call_id: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HEAD_LEN);
    put_head(&mut out, Kind::NotServed, call_id, 0);
    out.freeze()
}

/// A complete error frame.
pub fn encode_error(call_id: u64, error: &InvocationError) -> Bytes {
    let (size, limit) = match error {
        InvocationError::PayloadTooLarge { size, limit } => (*size, *limit),
        _ => (0, 0),
    };
    let message = error.wire_message();
    let kind = error.kind();
    let body_len = str_len(kind) + 16 + message.len();
    let mut out = BytesMut::with_capacity(HEAD_LEN + body_len);
    put_head(&mut out, Kind::Error, call_id, body_len);
    put_str(&mut out, kind);
    out.put_u64_le(size);
    out.put_u64_le(limit);
    out.put_slice(message.as_bytes());
    out.freeze()
}

/// Decodes an error frame's body into the typed error it carries.
pub fn decode_error(mut body: Bytes) -> Result<InvocationError, String> {
    let kind = take_str(&mut body, "error kind")?;
    if body.len() < 16 {
        return Err("an error frame ends before its sizes".into());
    }
    let size = body.get_u64_le();
    let limit = body.get_u64_le();
    Ok(InvocationError::from_parts(&kind, size, limit, &body))
}

/// Reads the next frame: `Ok(None)` at a clean end of stream (between frames). The body grows
/// as its bytes arrive, so an announced length alone never allocates it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body: usize,
) -> Result<Option<(Head, Bytes)>, String> {
    let mut head = [0u8; HEAD_LEN];
    let first = reader
        .read(&mut head)
        .await
        .map_err(|e| format!("reading a frame: {e}"))?;
    if first == 0 {
        return Ok(None);
    }
    reader
        .read_exact(&mut head[first..])
        .await
        .map_err(|e| format!("reading a frame head: {e}"))?;
    let head = parse_head(&head, max_body)?;
    let mut body = Vec::with_capacity(head.body_len.min(64 * 1024));
    let read = reader
        .take(head.body_len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(|e| format!("reading a frame body: {e}"))?;
    if read < head.body_len {
        return Err(format!(
            "the connection closed inside a frame ({read} of {} bytes)",
            head.body_len
        ));
    }
    Ok(Some((head, Bytes::from(body))))
}

/// Reads the caller's half of the handshake and returns its token.
pub async fn read_hello<R: AsyncRead + Unpin>(reader: &mut R) -> Result<String, String> {
    let mut magic = [0u8; MAGIC.len()];
    reader
        .read_exact(&mut magic)
        .await
        .map_err(|e| format!("reading the handshake: {e}"))?;
    if &magic != MAGIC {
        return Err("the peer does not speak the trellis direct protocol".into());
    }
    let len = usize::from(
        reader
            .read_u16_le()
            .await
            .map_err(|e| format!("reading the token length: {e}"))?,
    );
    if len > MAX_TOKEN {
        return Err(format!(
            "a {len}-byte token is over the {MAX_TOKEN}-byte limit"
        ));
    }
    let mut token = vec![0u8; len];
    reader
        .read_exact(&mut token)
        .await
        .map_err(|e| format!("reading the token: {e}"))?;
    String::from_utf8(token).map_err(|_| "the token is not UTF-8".into())
}

/// The caller's half of the handshake.
pub fn encode_hello(token: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(MAGIC.len() + 2 + token.len());
    out.put_slice(MAGIC);
    put_str(&mut out, token);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(frame: &[u8]) -> Head {
        let head: [u8; HEAD_LEN] = frame[..HEAD_LEN].try_into().expect("head");
        parse_head(&head, 1 << 20).expect("valid head")
    }

    #[tokio::test]
    async fn frames_are_read_back_from_a_stream_and_truncation_is_an_error() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode_not_served(1));
        stream.extend_from_slice(&result_head(2, 3));
        stream.extend_from_slice(b"abc");
        let mut reader = &stream[..];
        let (head, body) = read_frame(&mut reader, 16)
            .await
            .expect("ok")
            .expect("frame");
        assert_eq!(
            (head.kind, head.call_id, body.len()),
            (Kind::NotServed, 1, 0)
        );
        let (head, body) = read_frame(&mut reader, 16)
            .await
            .expect("ok")
            .expect("frame");
        assert_eq!((head.kind, head.call_id), (Kind::Result, 2));
        assert_eq!(body.as_ref(), b"abc");
        assert!(read_frame(&mut reader, 16)
            .await
            .expect("clean end")
            .is_none());

        let mut cut = &stream[..stream.len() - 1];
        read_frame(&mut cut, 16)
            .await
            .expect("first")
            .expect("frame");
        let error = read_frame(&mut cut, 16).await.expect_err("cut body");
        assert!(error.contains("inside a frame"), "{error}");

        let hello = encode_hello("secret");
        assert_eq!(read_hello(&mut &hello[..]).await.expect("hello"), "secret");
        let error = read_hello(&mut &b"GET / HTTP/1.1\r\n"[..])
            .await
            .expect_err("not ours");
        assert!(error.contains("does not speak"), "{error}");
    }

    #[test]
    fn a_call_round_trips_with_its_context() {
        let context = CallContext {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            source_id: Some("caller".into()),
            link_name: Some("alt".into()),
            deadline: None,
            content_encoding: None,
        };
        let deadline = UNIX_EPOCH + Duration::from_millis(1_900_000_000_123);
        let frame = encode_call(
            7,
            "callee",
            "trellis:demo/inventory@0.1.0",
            "echo",
            &context,
            deadline,
            b"\x01\x02",
        );
        let head = head_of(&frame);
        assert_eq!(head.kind, Kind::Call);
        assert_eq!(head.call_id, 7);
        assert_eq!(head.body_len, frame.len() - HEAD_LEN);
        let call = decode_call(frame.slice(HEAD_LEN..)).expect("decodes");
        assert_eq!(call.target_id, "callee");
        assert_eq!(call.interface, "trellis:demo/inventory@0.1.0");
        assert_eq!(call.function, "echo");
        assert_eq!(call.params.as_ref(), b"\x01\x02");
        assert_eq!(
            call.context,
            CallContext {
                deadline: Some(deadline),
                ..context
            }
        );
    }

    #[test]
    fn every_error_kind_round_trips() {
        let errors = [
            InvocationError::LinkNotFound {
                message: "no link".into(),
            },
            InvocationError::NoResponders {
                target_id: "x".into(),
            },
            InvocationError::deadline("late"),
            InvocationError::trap("unreachable executed"),
            InvocationError::PayloadTooLarge { size: 9, limit: 3 },
            InvocationError::bad_request("no such function"),
            InvocationError::transport("gone"),
        ];
        for error in errors {
            let frame = encode_error(3, &error);
            let head = head_of(&frame);
            assert_eq!((head.kind, head.call_id), (Kind::Error, 3));
            let back = decode_error(frame.slice(HEAD_LEN..)).expect("decodes");
            assert_eq!(back, error);
        }
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let mut head = [0u8; HEAD_LEN];
        head[..4].copy_from_slice(&100u32.to_le_bytes());
        head[4] = 9;
        let error = parse_head(&head, 1 << 20).expect_err("unknown kind");
        assert!(error.contains("unknown frame kind 9"), "{error}");

        head[4] = Kind::Call as u8;
        head[..4].copy_from_slice(&3u32.to_le_bytes());
        let error = parse_head(&head, 1 << 20).expect_err("short length");
        assert!(error.contains("shorter than its head"), "{error}");

        head[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = parse_head(&head, 1 << 20).expect_err("oversized");
        assert!(error.contains("over this connection's"), "{error}");

        let truncated = encode_call(
            1,
            "callee",
            "i",
            "f",
            &CallContext::default(),
            SystemTime::now(),
            b"",
        );
        for cut in HEAD_LEN..truncated.len() - 1 {
            let body = truncated.slice(HEAD_LEN..cut);
            assert!(decode_call(body).is_err(), "a call cut at {cut} decoded");
        }
        let error = decode_error(Bytes::from_static(b"\x05\x00tra")).expect_err("cut kind");
        assert!(error.contains("inside its error kind"), "{error}");
    }
}
