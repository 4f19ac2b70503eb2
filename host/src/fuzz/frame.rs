//! Fuzz tests of the direct-call frames: heads, call and error bodies, the stream reader and
//! the handshake, on arbitrary bytes, truncations and round trips of generated frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use super::{config, text};
use crate::invocation::direct::frame::{self, Head, Kind, HEAD_LEN, MAGIC, MAX_TOKEN};
use crate::invocation::{CallContext, InvocationError};

/// A reader that hands out its bytes in the given chunk sizes (cycled) and answers every other
/// poll with `Pending`, so the reader's partial-read paths run.
struct Trickle<'a> {
    data: &'a [u8],
    chunks: Vec<usize>,
    turn: usize,
    stall: bool,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8], chunks: &[usize]) -> Self {
        Self {
            data,
            chunks: chunks.iter().map(|c| (*c).max(1)).collect(),
            turn: 0,
            stall: false,
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.stall = !this.stall;
        if this.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let chunk = this
            .chunks
            .get(this.turn % this.chunks.len().max(1))
            .copied();
        this.turn += 1;
        let n = chunk
            .unwrap_or(usize::MAX)
            .min(buf.remaining())
            .min(this.data.len());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Reads every frame of `stream` until a clean end or an error; returns them and the error.
fn read_all(
    stream: &[u8],
    chunks: &[usize],
    max_body: usize,
) -> (Vec<(Head, Bytes)>, Option<String>) {
    let mut reader = Trickle::new(stream, chunks);
    let mut frames = Vec::new();
    // Every frame consumes at least a head, so this bounds the loop.
    for _ in 0..=stream.len() / HEAD_LEN {
        match futures::executor::block_on(frame::read_frame(&mut reader, max_body)) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(reason) => return (frames, Some(reason)),
        }
    }
    panic!(
        "read_frame returned more frames than a {}-byte stream holds",
        stream.len()
    );
}

/// An optional context field as the frame can carry it: absent, or non-empty.
fn optional_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text(24).prop_filter("empty means absent", |s| !s.is_empty()))
}

/// A call as `encode_call` takes it.
#[derive(Debug, Clone)]
struct GeneratedCall {
    call_id: u64,
    target_id: String,
    interface: String,
    function: String,
    context: CallContext,
    deadline_ms: u64,
    params: Vec<u8>,
}

impl GeneratedCall {
    fn encode(&self) -> Bytes {
        frame::encode_call(
            self.call_id,
            &self.target_id,
            &self.interface,
            &self.function,
            &self.context,
            UNIX_EPOCH + Duration::from_millis(self.deadline_ms),
            &self.params,
        )
    }
}

fn call() -> impl Strategy<Value = GeneratedCall> {
    (
        any::<u64>(),
        (text(24), text(48), text(24)),
        (
            optional_text(),
            optional_text(),
            optional_text(),
            optional_text(),
        ),
        any::<u64>(),
        vec(any::<u8>(), 0..128),
    )
        .prop_map(
            |(
                call_id,
                (target_id, interface, function),
                (source, link, trace, encoding),
                deadline_ms,
                params,
            )| {
                GeneratedCall {
                    call_id,
                    target_id,
                    interface,
                    function,
                    context: CallContext {
                        traceparent: trace,
                        source_id: source,
                        link_name: link,
                        // The frame always carries the effective deadline, not this one.
                        deadline: None,
                        content_encoding: encoding,
                    },
                    deadline_ms,
                    params,
                }
            },
        )
}

fn invocation_error() -> impl Strategy<Value = InvocationError> {
    prop_oneof![
        text(40).prop_map(|message| InvocationError::LinkNotFound { message }),
        text(40).prop_map(|target_id| InvocationError::NoResponders { target_id }),
        text(40).prop_map(InvocationError::deadline),
        text(40).prop_map(InvocationError::trap),
        (any::<u64>(), any::<u64>())
            .prop_map(|(size, limit)| InvocationError::PayloadTooLarge { size, limit }),
        text(40).prop_map(InvocationError::bad_request),
        text(40).prop_map(InvocationError::transport),
    ]
}

/// One frame of any kind, encoded, with what reading it back must give.
fn any_frame() -> impl Strategy<Value = (Bytes, Kind, u64)> {
    prop_oneof![
        call().prop_map(|c| (c.encode(), Kind::Call, c.call_id)),
        (any::<u64>(), vec(any::<u8>(), 0..64)).prop_map(|(id, results)| {
            let mut bytes = frame::result_head(id, results.len()).to_vec();
            bytes.extend_from_slice(&results);
            (Bytes::from(bytes), Kind::Result, id)
        }),
        (any::<u64>(), invocation_error()).prop_map(|(id, error)| (
            frame::encode_error(id, &error),
            Kind::Error,
            id
        )),
        any::<u64>().prop_map(|id| (frame::encode_not_served(id), Kind::NotServed, id)),
    ]
}

fn chunking() -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..32, 1..6)
}

proptest! {
    #![proptest_config(config(512, "proptest-regressions/fuzz/frame.txt"))]

    /// A head parses exactly when its kind is known and its length covers the head and stays
    /// within the limit.
    #[test]
    fn heads_parse_exactly_when_valid(head in any::<[u8; HEAD_LEN]>(), max_body in 0usize..(1 << 21)) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let valid = (1..=4).contains(&head[4]) && len >= 9 && len - 9 <= max_body;
        match frame::parse_head(&head, max_body) {
            Ok(parsed) => {
                prop_assert!(valid, "accepted {head:?}");
                prop_assert_eq!(parsed.body_len, len - 9);
                prop_assert_eq!(parsed.kind as u8, head[4]);
                prop_assert_eq!(parsed.call_id, u64::from_le_bytes(head[5..].try_into().unwrap_or_default()));
            }
            Err(reason) => {
                prop_assert!(!valid, "refused a valid head: {reason}");
                prop_assert!(!reason.is_empty());
            }
        }
    }

    /// Call bodies of arbitrary bytes decode or fail, and whatever decodes re-encodes to the
    /// same bytes (the format has one encoding per call).
    #[test]
    fn call_bodies_of_any_bytes_decode_canonically(body in vec(any::<u8>(), 0..256)) {
        if let Ok(call) = frame::decode_call(Bytes::from(body.clone())) {
            let deadline = call.context.deadline.unwrap_or(UNIX_EPOCH);
            let again = frame::encode_call(
                0, &call.target_id, &call.interface, &call.function, &call.context, deadline,
                &call.params,
            );
            prop_assert_eq!(&again[HEAD_LEN..], &body[..]);
        }
    }

    /// Error bodies of arbitrary bytes decode to a known error kind or fail.
    #[test]
    fn error_bodies_of_any_bytes_decode_or_fail(body in vec(any::<u8>(), 0..128)) {
        if let Ok(error) = frame::decode_error(Bytes::from(body)) {
            prop_assert!(!error.kind().is_empty());
        }
    }

    /// Any byte stream, read in any chunks, gives frames within the limit and then a clean end
    /// or an error, never a hang or a panic.
    #[test]
    fn streams_of_any_bytes_end_cleanly_or_fail(
        prefix in vec(any_frame(), 0..3),
        junk in vec(any::<u8>(), 0..256),
        max_body in 0usize..512,
        chunks in chunking(),
    ) {
        let mut stream: Vec<u8> = prefix.iter().flat_map(|(bytes, _, _)| bytes.to_vec()).collect();
        stream.extend_from_slice(&junk);
        let (frames, _) = read_all(&stream, &chunks, max_body);
        let mut consumed = 0;
        for (head, body) in &frames {
            prop_assert!(head.body_len <= max_body);
            prop_assert_eq!(body.len(), head.body_len);
            consumed += HEAD_LEN + body.len();
        }
        prop_assert!(consumed <= stream.len());
    }

    /// Generated calls come back whole through the stream reader and the call decoder.
    #[test]
    fn calls_round_trip(call in call(), chunks in chunking()) {
        let bytes = call.encode();
        let announced = frame::call_body_len(
            &call.target_id, &call.interface, &call.function, &call.context, call.params.len(),
        );
        prop_assert_eq!(announced, Some(bytes.len() - HEAD_LEN));
        let (frames, error) = read_all(&bytes, &chunks, 1 << 16);
        prop_assert_eq!(error, None);
        prop_assert_eq!(frames.len(), 1);
        let (head, body) = frames.into_iter().next().unwrap_or_else(|| unreachable!());
        prop_assert_eq!((head.kind, head.call_id), (Kind::Call, call.call_id));
        let decoded = frame::decode_call(body).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&decoded.target_id, &call.target_id);
        prop_assert_eq!(&decoded.interface, &call.interface);
        prop_assert_eq!(&decoded.function, &call.function);
        prop_assert_eq!(decoded.params.as_ref(), &call.params[..]);
        let expected = CallContext {
            deadline: Some(UNIX_EPOCH + Duration::from_millis(call.deadline_ms)),
            ..call.context.clone()
        };
        prop_assert_eq!(decoded.context, expected);
    }

    /// A stream cut anywhere inside a frame is an error; cut between frames, a clean end. A
    /// call body cut before its params is an error; cut inside them, shorter params.
    #[test]
    fn truncated_calls_are_errors(call in call(), chunks in chunking()) {
        let bytes = call.encode();
        let params_at = bytes.len() - call.params.len();
        for cut in 0..bytes.len() {
            let (frames, error) = read_all(&bytes[..cut], &chunks, 1 << 16);
            prop_assert!(frames.is_empty());
            prop_assert_eq!(error.is_none(), cut == 0, "cut at {}: {:?}", cut, error);
            if cut >= HEAD_LEN {
                let decoded = frame::decode_call(bytes.slice(HEAD_LEN..cut));
                if cut < params_at {
                    prop_assert!(decoded.is_err(), "a call cut at {} of {} decoded", cut, bytes.len());
                } else {
                    let decoded = decoded.map_err(TestCaseError::fail)?;
                    prop_assert_eq!(decoded.params.as_ref(), &call.params[..cut - params_at]);
                }
            }
        }
    }

    /// Every error kind comes back as the same typed error.
    #[test]
    fn errors_round_trip(error in invocation_error(), call_id in any::<u64>()) {
        let bytes = frame::encode_error(call_id, &error);
        let (frames, failure) = read_all(&bytes, &[bytes.len()], 1 << 16);
        prop_assert_eq!(failure, None);
        let (head, body) = frames.into_iter().next().unwrap_or_else(|| unreachable!());
        prop_assert_eq!((head.kind, head.call_id), (Kind::Error, call_id));
        prop_assert_eq!(frame::decode_error(body).map_err(TestCaseError::fail)?, error);
    }

    /// A run of frames of every kind is read back in order, then a clean end.
    #[test]
    fn frame_sequences_round_trip(frames in vec(any_frame(), 0..8), chunks in chunking()) {
        let stream: Vec<u8> = frames.iter().flat_map(|(bytes, _, _)| bytes.to_vec()).collect();
        let (read, error) = read_all(&stream, &chunks, 1 << 16);
        prop_assert_eq!(error, None);
        prop_assert_eq!(read.len(), frames.len());
        for ((head, body), (bytes, kind, call_id)) in read.iter().zip(&frames) {
            prop_assert_eq!((head.kind, head.call_id), (*kind, *call_id));
            prop_assert_eq!(body.as_ref(), &bytes[HEAD_LEN..]);
        }
    }

    /// The handshake reader takes any bytes: a token only after the magic, within the limit.
    #[test]
    fn handshakes_of_any_bytes_are_read_or_refused(
        with_magic in any::<bool>(),
        rest in vec(any::<u8>(), 0..(MAX_TOKEN + 16)),
        chunks in chunking(),
    ) {
        let mut bytes = Vec::new();
        if with_magic {
            bytes.extend_from_slice(MAGIC);
        }
        bytes.extend_from_slice(&rest);
        let mut reader = Trickle::new(&bytes, &chunks);
        if let Ok(token) = futures::executor::block_on(frame::read_hello(&mut reader)) {
            prop_assert!(bytes.starts_with(MAGIC));
            prop_assert!(token.len() <= MAX_TOKEN);
            prop_assert_eq!(
                usize::from(u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]])),
                token.len()
            );
        }
    }

    /// Tokens up to the limit come back from the handshake.
    #[test]
    fn handshakes_round_trip(token in text(64).prop_filter("fits", |t| t.len() <= MAX_TOKEN), chunks in chunking()) {
        let bytes = frame::encode_hello(&token);
        let mut reader = Trickle::new(&bytes, &chunks);
        let read = futures::executor::block_on(frame::read_hello(&mut reader));
        prop_assert_eq!(read, Ok(token));
    }
}

/// A string over what a frame string holds is reported before encoding (the call then goes
/// through NATS), rather than cut.
#[test]
fn strings_too_long_for_a_frame_are_reported() {
    let fits = "a".repeat(usize::from(u16::MAX));
    let over = "a".repeat(usize::from(u16::MAX) + 1);
    let context = CallContext::default();
    assert_eq!(
        frame::call_body_len(&fits, "i", "f", &context, 3),
        Some(8 + 2 + fits.len() + 2 + 1 + 2 + 1 + 4 * 2 + 3)
    );
    assert_eq!(frame::call_body_len(&over, "i", "f", &context, 0), None);
    let context = CallContext {
        traceparent: Some(over),
        ..CallContext::default()
    };
    assert_eq!(frame::call_body_len("t", "i", "f", &context, 0), None);
}
