//! How an HTTP request travels over the lattice to the host that runs its component, and how
//! the response comes back.
//!
//! # Wire form
//!
//! **Subject**: `trellis.http.{lattice}.{component_id}` (the id escaped with
//! [`escape_token`]); every host running the component subscribes in queue group
//! `{component_id}`, so exactly one replica answers.
//!
//! **Message** (request payload and reply payload alike): `u32` little-endian head length, the
//! head, then the first part of the body. Strings and byte strings in the head are a `u32` LE
//! length and the bytes. Nothing is JSON; the body is never re-encoded.
//!
//! - Request head: version `1`, flags (`1` = the body continues), `u32` timeout in ms,
//!   method, URI (path and query), the pull subject when the body continues, then the header
//!   count (`u32`) and name/value pairs.
//! - Response head: version `1`, flags, `u16` status, the pull subject when the body
//!   continues, the header count and pairs.
//!
//! **Large or streaming bodies**: a body that does not fit in one NATS message (or is still
//! being produced after a short window) continues on a pull subject: the receiver sends
//! requests carrying the `u64` LE chunk sequence number (from 0) and each reply is one byte of
//! kind ([`CHUNK_MORE`], [`CHUNK_LAST`] or [`CHUNK_ERROR`]) followed by the chunk (or an error
//! message). Pulling is the flow control: the sender never has more than one chunk in flight.
//! A small request and its small response cost exactly one NATS request/reply.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::{RequestErrorKind, Subscriber};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use trellis_host::invocation::subject::escape_token;

/// Version byte of every head.
const WIRE_VERSION: u8 = 1;
/// Head flag: the body continues on the pull subject.
const FLAG_MORE: u8 = 1;
/// Chunk reply kind: data, more follows.
pub(crate) const CHUNK_MORE: u8 = 0;
/// Chunk reply kind: data, the body ends here.
pub(crate) const CHUNK_LAST: u8 = 1;
/// Chunk reply kind: the body failed; the rest is a UTF-8 message.
pub(crate) const CHUNK_ERROR: u8 = 2;
/// Bytes of a NATS message left for the protocol line, NATS headers and our head framing.
const MESSAGE_ALLOWANCE: usize = 1024;
/// How long a body sender waits for further frames before sending what it has and switching
/// to pulls (so streaming bodies stream instead of being buffered whole).
pub(crate) const INLINE_WINDOW: Duration = Duration::from_millis(20);
/// How long a body sender waits for the next pull before giving up on the receiver.
pub(crate) const PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of bodies in transit: the `wasi:http` error type, which both hyper and the
/// component runtime accept.
pub(crate) type BodyError = wasmtime_wasi_http::Error;

/// The subject requests for `component_id` in `lattice` are sent to.
pub fn http_subject(lattice: &str, component_id: &str) -> String {
    format!("trellis.http.{lattice}.{}", escape_token(component_id))
}

/// The head of a forwarded request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RequestHead {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    /// Time the serving host may take to produce the response head.
    pub timeout_ms: u32,
    /// Where to pull the rest of the body from, when it continues.
    pub pull_subject: Option<String>,
}

/// The head of a forwarded response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Where to pull the rest of the body from, when it continues.
    pub pull_subject: Option<String>,
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    // Heads are bounded by the NATS max payload, far below u32::MAX.
    out.put_u32_le(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32_le(u32::try_from(headers.len()).unwrap_or(u32::MAX));
    for (name, value) in headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

/// Frames a head and the first part of the body as one message.
fn frame_message(head: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + head.len() + body.len());
    out.put_u32_le(u32::try_from(head.len()).unwrap_or(u32::MAX));
    out.put_slice(head);
    out.put_slice(body);
    out.freeze()
}

impl RequestHead {
    fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(64 + self.uri.len() + self.headers.len() * 32);
        out.put_u8(WIRE_VERSION);
        out.put_u8(if self.pull_subject.is_some() {
            FLAG_MORE
        } else {
            0
        });
        out.put_u32_le(self.timeout_ms);
        put_bytes(&mut out, self.method.as_str().as_bytes());
        put_bytes(&mut out, self.uri.as_bytes());
        if let Some(pull) = &self.pull_subject {
            put_bytes(&mut out, pull.as_bytes());
        }
        put_headers(&mut out, &self.headers);
        out
    }

    /// The message carrying this head and the first part of the body.
    pub fn to_message(&self, body: &[u8]) -> Bytes {
        frame_message(&self.encode(), body)
    }

    /// Bytes this head takes, to size the inline body (a pull subject is counted generously).
    pub fn encoded_len(&self) -> usize {
        self.encode().len() + 128
    }

    /// Splits a message into its head and first body part.
    pub fn decode(message: Bytes) -> anyhow::Result<(Self, Bytes)> {
        let (mut head, body) = split_message(message)?;
        let flags = read_version_and_flags(&mut head)?;
        let timeout_ms = read_u32(&mut head)?;
        let method = Method::from_bytes(&read_bytes(&mut head)?).context("invalid HTTP method")?;
        let uri = String::from_utf8(read_bytes(&mut head)?.to_vec()).context("URI is not UTF-8")?;
        let pull_subject = read_pull_subject(&mut head, flags)?;
        let headers = read_headers(&mut head)?;
        Ok((
            Self {
                method,
                uri,
                headers,
                timeout_ms,
                pull_subject,
            },
            body,
        ))
    }
}

impl ResponseHead {
    fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(64 + self.headers.len() * 32);
        out.put_u8(WIRE_VERSION);
        out.put_u8(if self.pull_subject.is_some() {
            FLAG_MORE
        } else {
            0
        });
        out.put_u16_le(self.status.as_u16());
        if let Some(pull) = &self.pull_subject {
            put_bytes(&mut out, pull.as_bytes());
        }
        put_headers(&mut out, &self.headers);
        out
    }

    /// The message carrying this head and the first part of the body.
    pub fn to_message(&self, body: &[u8]) -> Bytes {
        frame_message(&self.encode(), body)
    }

    /// Bytes this head takes, to size the inline body (a pull subject is counted generously).
    pub fn encoded_len(&self) -> usize {
        self.encode().len() + 128
    }

    /// Splits a message into its head and first body part.
    pub fn decode(message: Bytes) -> anyhow::Result<(Self, Bytes)> {
        let (mut head, body) = split_message(message)?;
        let flags = read_version_and_flags(&mut head)?;
        if head.remaining() < 2 {
            bail!("response head is truncated");
        }
        let status = StatusCode::from_u16(head.get_u16_le()).context("invalid HTTP status")?;
        let pull_subject = read_pull_subject(&mut head, flags)?;
        let headers = read_headers(&mut head)?;
        Ok((
            Self {
                status,
                headers,
                pull_subject,
            },
            body,
        ))
    }
}

fn split_message(mut message: Bytes) -> anyhow::Result<(Bytes, Bytes)> {
    if message.len() < 4 {
        bail!("message is too short for a head");
    }
    let head_len = message.get_u32_le() as usize;
    if head_len > message.len() {
        bail!(
            "head of {head_len} bytes does not fit the {} bytes received",
            message.len()
        );
    }
    let head = message.split_to(head_len);
    Ok((head, message))
}

fn read_version_and_flags(head: &mut Bytes) -> anyhow::Result<u8> {
    if head.remaining() < 2 {
        bail!("head is truncated");
    }
    let version = head.get_u8();
    if version != WIRE_VERSION {
        bail!("unsupported wire version {version} (this host speaks {WIRE_VERSION})");
    }
    Ok(head.get_u8())
}

fn read_u32(head: &mut Bytes) -> anyhow::Result<u32> {
    if head.remaining() < 4 {
        bail!("head is truncated");
    }
    Ok(head.get_u32_le())
}

fn read_bytes(head: &mut Bytes) -> anyhow::Result<Bytes> {
    let len = read_u32(head)? as usize;
    if len > head.remaining() {
        bail!("a field of {len} bytes overruns the head");
    }
    Ok(head.split_to(len))
}

fn read_pull_subject(head: &mut Bytes, flags: u8) -> anyhow::Result<Option<String>> {
    if flags & FLAG_MORE == 0 {
        return Ok(None);
    }
    let subject =
        String::from_utf8(read_bytes(head)?.to_vec()).context("pull subject is not UTF-8")?;
    Ok(Some(subject))
}

fn read_headers(head: &mut Bytes) -> anyhow::Result<HeaderMap> {
    let count = read_u32(head)? as usize;
    // Each pair takes at least 8 bytes: do not trust the count beyond what is there.
    if count > head.remaining() / 8 {
        bail!("header count {count} overruns the head");
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name = HeaderName::from_bytes(&read_bytes(head)?).context("invalid header name")?;
        let value =
            HeaderValue::from_maybe_shared(read_bytes(head)?).context("invalid header value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The largest body part that fits in one message next to a head of `head_len` bytes.
pub(crate) fn inline_budget(client: &async_nats::Client, head_len: usize) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(head_len + MESSAGE_ALLOWANCE)
        .max(1024)
}

/// The size of one pulled chunk.
pub(crate) fn chunk_budget(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(MESSAGE_ALLOWANCE)
        .max(1024)
}

/// Reads a body in bounded pieces.
pub(crate) struct BodyReader<B> {
    body: Pin<Box<B>>,
    pending: Option<Bytes>,
    done: bool,
}

impl<B> BodyReader<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        let done = body.is_end_stream();
        Self {
            body: Box::pin(body),
            pending: None,
            done,
        }
    }

    async fn next_data(&mut self) -> Result<Option<Bytes>, String> {
        if let Some(pending) = self.pending.take() {
            return Ok(Some(pending));
        }
        while !self.done {
            match self.body.frame().await {
                None => self.done = true,
                Some(Err(error)) => {
                    self.done = true;
                    return Err(error.to_string());
                }
                Some(Ok(frame)) => {
                    if self.body.is_end_stream() {
                        self.done = true;
                    }
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Reads up to `limit` bytes. Waits for at least one piece of data (or the end); further
    /// pieces are only waited for until `window` after the call, when given. Returns the bytes
    /// and whether the body has ended.
    pub async fn read_up_to(
        &mut self,
        limit: usize,
        window: Option<Duration>,
    ) -> Result<(Bytes, bool), String> {
        let deadline = window.map(|w| tokio::time::Instant::now() + w);
        let mut buf = BytesMut::new();
        while buf.len() < limit {
            let next = match deadline {
                Some(deadline) if !buf.is_empty() => {
                    match tokio::time::timeout_at(deadline, self.next_data()).await {
                        Ok(next) => next?,
                        Err(_) => break,
                    }
                }
                _ => self.next_data().await?,
            };
            let Some(mut data) = next else {
                break;
            };
            let room = limit - buf.len();
            if data.len() > room {
                self.pending = Some(data.split_off(room));
            }
            buf.extend_from_slice(&data);
        }
        let ended = self.done && self.pending.is_none();
        Ok((buf.freeze(), ended))
    }
}

/// Answers pulls for the rest of a body on `pulls` until it is fully sent, the receiver stops
/// pulling for [`PULL_IDLE_TIMEOUT`], or the body fails.
pub(crate) async fn serve_body_pulls<B>(
    client: async_nats::Client,
    mut pulls: Subscriber,
    mut reader: BodyReader<B>,
) where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let chunk = chunk_budget(&client);
    let mut expected = 0u64;
    loop {
        let pull = match tokio::time::timeout(PULL_IDLE_TIMEOUT, pulls.next()).await {
            Ok(Some(pull)) => pull,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("the receiver stopped pulling a body; dropping it");
                return;
            }
        };
        let Some(reply) = pull.reply else {
            continue;
        };
        let seq = (pull.payload.len() == 8).then(|| pull.payload.clone().get_u64_le());
        let (kind, data) = if seq != Some(expected) {
            (
                CHUNK_ERROR,
                Bytes::from(format!("expected a pull for chunk {expected}")),
            )
        } else {
            match reader.read_up_to(chunk, None).await {
                Ok((data, true)) => (CHUNK_LAST, data),
                Ok((data, false)) => (CHUNK_MORE, data),
                Err(error) => (CHUNK_ERROR, Bytes::from(error)),
            }
        };
        let mut message = BytesMut::with_capacity(1 + data.len());
        message.put_u8(kind);
        message.put_slice(&data);
        if let Err(error) = client.publish(reply, message.freeze()).await {
            tracing::debug!(%error, "could not send a body chunk");
            return;
        }
        if kind != CHUNK_MORE {
            return;
        }
        expected += 1;
    }
}

/// Sends the rest of `reader` to whoever pulls it: subscribes to a fresh inbox and returns it
/// with the task serving the pulls. The task ends by itself (body sent, idle, or failed).
pub(crate) async fn offer_body<B>(
    client: &async_nats::Client,
    reader: BodyReader<B>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let inbox = client.new_inbox();
    let pulls = client
        .subscribe(inbox.clone())
        .await
        .context("subscribing to serve a body in chunks")?;
    let task = tokio::spawn(serve_body_pulls(client.clone(), pulls, reader));
    Ok((inbox, task))
}

/// A body arriving over the lattice: the inline first part, then chunks pulled on demand.
pub(crate) struct LatticeBody {
    first: Option<Bytes>,
    rest: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
}

impl LatticeBody {
    /// A body that is all here.
    pub fn full(data: Bytes) -> Self {
        Self {
            first: (!data.is_empty()).then_some(data),
            rest: None,
        }
    }

    /// A body starting with `first` whose rest is pulled from `subject`. The pulling task
    /// stops when the body is dropped, ends, fails, or a pull waits longer than `pull_timeout`.
    pub fn pulled(
        client: async_nats::Client,
        first: Bytes,
        subject: String,
        pull_timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(pull_chunks(client, subject, tx, pull_timeout));
        Self {
            first: (!first.is_empty()).then_some(first),
            rest: Some(rx),
        }
    }
}

async fn pull_chunks(
    client: async_nats::Client,
    subject: String,
    tx: mpsc::Sender<Result<Bytes, BodyError>>,
    pull_timeout: Duration,
) {
    let mut seq = 0u64;
    loop {
        let request = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(&seq.to_le_bytes()))
            .timeout(Some(pull_timeout));
        let reply = tokio::select! {
            reply = client.send_request(subject.clone(), request) => reply,
            () = tx.closed() => return,
        };
        let item = match reply {
            Err(error) => Err(match error.kind() {
                RequestErrorKind::TimedOut => {
                    BodyError::InternalError(Some("timed out pulling a body chunk".into()))
                }
                RequestErrorKind::NoResponders => {
                    BodyError::InternalError(Some("the sender of the body went away".into()))
                }
                _ => BodyError::InternalError(Some(format!("pulling a body chunk: {error}"))),
            }),
            Ok(message) => {
                let mut payload = message.payload;
                if payload.is_empty() {
                    Err(BodyError::InternalError(Some("empty body chunk".into())))
                } else {
                    let kind = payload.get_u8();
                    match kind {
                        CHUNK_MORE | CHUNK_LAST => {
                            let last = kind == CHUNK_LAST;
                            if !payload.is_empty() && tx.send(Ok(payload)).await.is_err() {
                                return;
                            }
                            if last {
                                return;
                            }
                            seq += 1;
                            continue;
                        }
                        _ => Err(BodyError::InternalError(Some(
                            String::from_utf8_lossy(&payload).into_owned(),
                        ))),
                    }
                }
            }
        };
        let _ = tx.send(item).await;
        return;
    }
}

impl Body for LatticeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match rest.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item.map(Frame::data))),
            Poll::Ready(None) => {
                self.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.first, &self.rest) {
            (Some(first), None) => SizeHint::with_exact(first.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let head = RequestHead {
            method: Method::POST,
            uri: "/echo?x=1".into(),
            headers,
            timeout_ms: 1234,
            pull_subject: Some("_INBOX.abc".into()),
        };
        let message = head.to_message(b"hello");
        let (decoded, body) = RequestHead::decode(message).unwrap();
        assert_eq!(decoded, head);
        assert_eq!(&body[..], b"hello");
    }

    #[test]
    fn response_head_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let head = ResponseHead {
            status: StatusCode::IM_A_TEAPOT,
            headers,
            pull_subject: None,
        };
        let (decoded, body) = ResponseHead::decode(head.to_message(b"")).unwrap();
        assert_eq!(decoded, head);
        assert!(body.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            &b"\x05\x00\x00\x00\x01"[..],
            &b"\xff\xff\xff\xff"[..],
            &b"\x06\x00\x00\x00\x01\x00\xff\xff\xff\xff"[..],
        ] {
            assert!(RequestHead::decode(Bytes::copy_from_slice(bytes)).is_err());
            assert!(ResponseHead::decode(Bytes::copy_from_slice(bytes)).is_err());
        }
    }

    #[tokio::test]
    async fn reader_splits_at_the_limit() {
        let body = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let mut reader = BodyReader::new(body);
        let (first, ended) = reader.read_up_to(4, None).await.unwrap();
        assert_eq!((&first[..], ended), (&b"0123"[..], false));
        let (rest, ended) = reader.read_up_to(100, None).await.unwrap();
        assert_eq!((&rest[..], ended), (&b"456789"[..], true));
    }
}
