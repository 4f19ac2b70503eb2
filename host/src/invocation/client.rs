//! The calling side of the invocation protocol.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::{HeaderMap, Message, Request, RequestErrorKind};
use bytes::{Bytes, BytesMut};
use tracing::Instrument as _;

use super::direct::{DirectPeers, MAX_DIRECT_PARAMS};
use super::error::InvocationError;
use super::subject::call_subject;
use super::wire::{
    chunk_size, header_str, header_u64, headers_wire_len, remaining, CallContext,
    DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_CALL_PAYLOAD, HEADER_DOWNLOAD, HEADER_ERROR, HEADER_PEER,
    HEADER_SEQ, HEADER_SIZE, HEADER_UPLOAD, PEER_ASK,
};

/// Calls functions of targets anywhere in a lattice over NATS.
///
/// Cheap to clone: it shares the NATS connection.
#[derive(Debug, Clone)]
pub struct InvocationClient {
    nats: async_nats::Client,
    lattice: String,
    max_payload: usize,
    default_timeout: Duration,
    direct: Option<Arc<DirectPeers>>,
}

/// What a request step was, for error messages and for mapping "no responders".
enum Step<'a> {
    /// The call itself (or its first message): no responders means the target is not running.
    Call { target_id: &'a str },
    /// A chunk transfer with a server that already answered: no responders means it went away.
    Transfer(&'static str),
}

impl InvocationClient {
    /// A client for `lattice` with the default payload cap (64 MiB) and timeout (10 s).
    pub fn new(nats: async_nats::Client, lattice: impl Into<String>) -> Self {
        Self {
            nats,
            lattice: lattice.into(),
            max_payload: DEFAULT_MAX_CALL_PAYLOAD,
            default_timeout: DEFAULT_CALL_TIMEOUT,
            direct: None,
        }
    }

    /// Sends calls straight to the hosts that serve their targets once NATS replies have
    /// said where (see [`super::direct`]), falling back to NATS whenever that cannot be done.
    pub fn with_direct_peers(mut self, peers: Arc<DirectPeers>) -> Self {
        self.direct = Some(peers);
        self
    }

    /// Sets the largest params or results a call may carry, in bytes.
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets the timeout of calls whose [`CallContext::deadline`] is `None`.
    pub fn with_default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// The lattice this client calls into.
    pub fn lattice(&self) -> &str {
        &self.lattice
    }

    /// Calls `function` of `interface` (e.g. `trellis:demo/inventory@0.1.0`) on `target_id`.
    ///
    /// `params` is the encoded parameter list (see [`super::codec`]); the reply is the encoded
    /// result list. Small payloads travel as one NATS request/reply, or directly to a known
    /// peer (see [`Self::with_direct_peers`]); params or results over the server's max payload
    /// are chunked (see the module docs).
    pub async fn invoke(
        &self,
        target_id: &str,
        interface: &str,
        function: &str,
        params: Bytes,
        mut context: CallContext,
    ) -> Result<Bytes, InvocationError> {
        if !trellis_telemetry::traces_enabled() {
            return self
                .invoke_untraced(target_id, interface, function, params, context)
                .await;
        }
        // A client span whose context travels with the call (NATS header or direct frame).
        let span = trellis_telemetry::spans::rpc_client(
            context.source_id.as_deref().unwrap_or(""),
            target_id,
            interface,
            function,
        );
        if let Some(traceparent) = trellis_telemetry::propagation::traceparent_of(&span) {
            context.traceparent = Some(traceparent);
        }
        let result = self
            .invoke_untraced(target_id, interface, function, params, context)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            trellis_telemetry::spans::record_error(&span, error);
        }
        result
    }

    async fn invoke_untraced(
        &self,
        target_id: &str,
        interface: &str,
        function: &str,
        params: Bytes,
        context: CallContext,
    ) -> Result<Bytes, InvocationError> {
        let deadline = context
            .deadline
            .unwrap_or_else(|| SystemTime::now() + self.default_timeout);
        self.check_size(params.len() as u64)?;
        if let Some(peers) = &self.direct {
            if params.len() <= MAX_DIRECT_PARAMS {
                let direct = peers
                    .call(target_id, interface, function, &params, &context, deadline)
                    .await;
                if let Some(result) = direct {
                    record_transport("direct");
                    // Over the cap like a chunked result would be.
                    return result.and_then(|results| {
                        self.check_size(results.len() as u64).map(|()| results)
                    });
                }
            }
        }
        record_transport("nats");
        let subject = call_subject(&self.lattice, target_id, interface, function);
        let mut headers = context.to_headers(deadline);
        if self.direct.is_some() {
            headers.insert(HEADER_PEER, PEER_ASK);
        }
        let server_max = self.nats.server_info().max_payload;
        let call = Step::Call { target_id };

        let reply = if headers_wire_len(&headers) + params.len() <= server_max {
            self.request(subject, headers, params, deadline, &call)
                .await?
        } else {
            headers.insert(HEADER_SIZE, params.len().to_string().as_str());
            let start = self
                .request(subject, headers, Bytes::new(), deadline, &call)
                .await?;
            raise_error(&start)?;
            let upload = header_str(start.headers.as_ref(), HEADER_UPLOAD)
                .ok_or_else(|| {
                    InvocationError::transport(
                        "the target answered a chunked call without an upload subject",
                    )
                })?
                .to_owned();
            self.upload(upload, params, chunk_size(server_max), deadline)
                .await?
        };
        if let Some(peers) = &self.direct {
            if let Some(advertisement) = header_str(reply.headers.as_ref(), HEADER_PEER) {
                peers.learn(target_id, advertisement);
            }
        }
        self.read_reply(reply, deadline).await
    }

    /// Payload-too-large when `size` bytes of params or results are over this client's cap.
    fn check_size(&self, size: u64) -> Result<(), InvocationError> {
        if size > self.max_payload as u64 {
            return Err(InvocationError::PayloadTooLarge {
                size,
                limit: self.max_payload as u64,
            });
        }
        Ok(())
    }

    /// Sends `params` in chunks; returns the reply to the last chunk (the call's reply).
    async fn upload(
        &self,
        subject: String,
        params: Bytes,
        chunk: usize,
        deadline: SystemTime,
    ) -> Result<Message, InvocationError> {
        let total = params.len();
        let mut offset = 0;
        let mut seq = 0u64;
        loop {
            let end = (offset + chunk).min(total);
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_SEQ, seq.to_string().as_str());
            let reply = self
                .request(
                    subject.clone(),
                    headers,
                    params.slice(offset..end),
                    deadline,
                    &Step::Transfer("uploading params"),
                )
                .await?;
            if end == total {
                return Ok(reply);
            }
            raise_error(&reply)?;
            offset = end;
            seq += 1;
        }
    }

    /// Turns a call's reply into its result: an error, an inline payload or a chunked one.
    async fn read_reply(
        &self,
        reply: Message,
        deadline: SystemTime,
    ) -> Result<Bytes, InvocationError> {
        raise_error(&reply)?;
        let Some(download) = header_str(reply.headers.as_ref(), HEADER_DOWNLOAD) else {
            return Ok(reply.payload);
        };
        let size = header_u64(reply.headers.as_ref(), HEADER_SIZE).ok_or_else(|| {
            InvocationError::transport("a chunked result arrived without a valid trellis-size")
        })?;
        self.check_size(size)?;
        // `size` is bounded by the cap; still grow as chunks arrive rather than trusting it.
        let size = size as usize;
        let mut result = BytesMut::new();
        let mut seq = 0u64;
        while result.len() < size {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_SEQ, seq.to_string().as_str());
            let chunk = self
                .request(
                    download.to_owned(),
                    headers,
                    Bytes::new(),
                    deadline,
                    &Step::Transfer("downloading results"),
                )
                .await?;
            raise_error(&chunk)?;
            if chunk.payload.is_empty() {
                return Err(InvocationError::transport(format!(
                    "result chunk {seq} is empty after {} of {size} bytes",
                    result.len()
                )));
            }
            if result.len() + chunk.payload.len() > size {
                return Err(InvocationError::transport(format!(
                    "result chunks exceed the announced {size} bytes"
                )));
            }
            result.extend_from_slice(&chunk.payload);
            seq += 1;
        }
        Ok(result.freeze())
    }

    async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        deadline: SystemTime,
        step: &Step<'_>,
    ) -> Result<Message, InvocationError> {
        let what = match step {
            Step::Call { target_id } => *target_id,
            Step::Transfer(what) => what,
        };
        let timeout = remaining(deadline).ok_or_else(|| {
            InvocationError::deadline(format!("the deadline passed before calling {what}"))
        })?;
        let request = Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(timeout));
        self.nats
            .send_request(subject, request)
            .await
            .map_err(|error| match (error.kind(), step) {
                (RequestErrorKind::NoResponders, Step::Call { target_id }) => {
                    InvocationError::NoResponders {
                        target_id: (*target_id).to_owned(),
                    }
                }
                (RequestErrorKind::NoResponders, Step::Transfer(what)) => {
                    InvocationError::transport(format!("the target went away while {what}"))
                }
                (RequestErrorKind::TimedOut, _) => InvocationError::deadline(format!(
                    "no reply from {what} within {} ms",
                    timeout.as_millis()
                )),
                (_, _) => InvocationError::transport(format!("request to {what} failed: {error}")),
            })
    }
}

/// Returns the typed error an error reply carries.
/// Notes on the current client span which path the call took.
fn record_transport(transport: &'static str) {
    if trellis_telemetry::traces_enabled() {
        tracing::Span::current().record("trellis.transport", transport);
    }
}

fn raise_error(message: &Message) -> Result<(), InvocationError> {
    match header_str(message.headers.as_ref(), HEADER_ERROR) {
        None => Ok(()),
        Some(kind) => Err(InvocationError::from_wire(
            kind,
            message.headers.as_ref().unwrap_or(&HeaderMap::new()),
            &message.payload,
        )),
    }
}
