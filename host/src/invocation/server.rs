//! The serving side of the invocation protocol: one [`InvocationServer`] per target id.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use async_nats::{HeaderMap, Message, Subject, Subscriber};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::direct::{DirectListener, Registration};
use super::error::InvocationError;
use super::subject::{parse_call_subject, target_wildcard};
use super::wire::{
    chunk_size, header_str, header_u64, remaining, CallContext, DEFAULT_CALL_TIMEOUT,
    DEFAULT_MAX_CALL_PAYLOAD, HEADER_DOWNLOAD, HEADER_PEER, HEADER_SEQ, HEADER_SIZE, HEADER_UPLOAD,
    PEER_ASK,
};

/// One call delivered to a server's handler.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// Interface of the called function, e.g. `trellis:demo/inventory@0.1.0`.
    pub interface: String,
    /// Name of the called function, e.g. `echo-item`.
    pub function: String,
    /// The encoded parameter list (reassembled if it came in chunks).
    pub params: Bytes,
    /// Trace context, source, link, deadline and encoding from the call's headers.
    pub context: CallContext,
}

/// Work a handler leaves for after its reply is sent.
pub type AfterSend = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A handler's answer: the encoded results, and optionally work to do only once they are on
/// their way (e.g. tearing the finished instance down and preparing the next one, which take
/// tens of microseconds and must not delay the reply). Handlers may also answer plain [`Bytes`].
pub struct Reply {
    /// The encoded result list.
    pub payload: Bytes,
    /// Run after the reply is published, in the call's task.
    pub after_send: Option<AfterSend>,
}

impl Reply {
    /// A reply carrying `payload`, running `after_send` once it is sent.
    pub fn then(payload: Bytes, after_send: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            payload,
            after_send: Some(Box::pin(after_send)),
        }
    }
}

impl From<Bytes> for Reply {
    fn from(payload: Bytes) -> Self {
        Self {
            payload,
            after_send: None,
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("payload_len", &self.payload.len())
            .field("after_send", &self.after_send.is_some())
            .finish()
    }
}

/// Limits of an [`InvocationServer`], and whether it also answers direct calls.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Most handlers running at once, over NATS and direct together; further calls wait.
    pub max_concurrency: usize,
    /// Largest params or results, in bytes, a call may carry.
    pub max_payload: usize,
    /// Also answer calls that peer hosts send straight to this listener (see
    /// [`super::direct`]); `None` serves NATS only.
    pub direct: Option<DirectListener>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 256,
            max_payload: DEFAULT_MAX_CALL_PAYLOAD,
            direct: None,
        }
    }
}

/// A handler with its types erased: what both the NATS and the direct path call.
pub(crate) type CallHandler =
    Arc<dyn Fn(IncomingCall) -> BoxFuture<'static, Result<Reply, InvocationError>> + Send + Sync>;

/// Answers the calls to one target, whichever way they arrive: the handler, the concurrency
/// bound they share and the payload cap.
pub(crate) struct Answerer {
    handler: CallHandler,
    permits: Arc<Semaphore>,
    max_payload: usize,
}

impl Answerer {
    /// Splits a finished call for sending: the results (over the cap they become
    /// payload-too-large), and the work to run once they are sent (see [`after_sent`]).
    pub(crate) fn split(
        &self,
        result: Result<Reply, InvocationError>,
    ) -> (Result<Bytes, InvocationError>, Option<AfterSend>) {
        match result {
            Ok(reply) if reply.payload.len() > self.max_payload => (
                Err(InvocationError::PayloadTooLarge {
                    size: reply.payload.len() as u64,
                    limit: self.max_payload as u64,
                }),
                reply.after_send,
            ),
            Ok(reply) => (Ok(reply.payload), reply.after_send),
            Err(error) => (Err(error), None),
        }
    }

    /// Waits for a concurrency permit (until `deadline`), then runs the call.
    pub(crate) async fn answer(
        &self,
        call: IncomingCall,
        deadline: SystemTime,
    ) -> Result<Reply, InvocationError> {
        let time_left = remaining(deadline)
            .ok_or_else(|| InvocationError::deadline("the call arrived after its deadline"))?;
        let permit = tokio::time::timeout(time_left, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                InvocationError::deadline(format!(
                    "the target stayed at its concurrency limit for {} ms",
                    time_left.as_millis()
                ))
            })?
            .map_err(|_| InvocationError::transport("the target is stopping"))?;
        let result = self.run(call, deadline).await;
        drop(permit);
        result
    }

    /// Runs the handler within `deadline`; a panic becomes a trap.
    async fn run(
        &self,
        call: IncomingCall,
        deadline: SystemTime,
    ) -> Result<Reply, InvocationError> {
        let work = AssertUnwindSafe((self.handler)(call)).catch_unwind();
        let time_left = remaining(deadline)
            .ok_or_else(|| InvocationError::deadline("the call arrived after its deadline"))?;
        match tokio::time::timeout(time_left, work).await {
            Err(_) => Err(InvocationError::deadline(format!(
                "the handler did not finish within {} ms",
                time_left.as_millis()
            ))),
            Ok(Err(_panic)) => Err(InvocationError::trap("the call's handler panicked")),
            Ok(Ok(result)) => result,
        }
    }
}

/// Serves calls to one target id. Dropping it unsubscribes, leaves the direct listener and
/// cancels calls in flight.
#[derive(Debug)]
pub struct InvocationServer {
    target_id: String,
    task: JoinHandle<()>,
    _direct: Option<Registration>,
}

impl Drop for InvocationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl InvocationServer {
    /// Subscribes to every call to `target_id` in `lattice` (queue group = the target id, so
    /// replicas on several hosts share the load) and answers each with `handler`. With
    /// [`ServerOptions::direct`], the same handler also answers direct calls, and NATS replies
    /// tell callers where to send them.
    ///
    /// Returns once the subscription is registered with the NATS server.
    pub async fn serve<H, F, R>(
        nats: async_nats::Client,
        lattice: &str,
        target_id: &str,
        options: ServerOptions,
        handler: H,
    ) -> anyhow::Result<Self>
    where
        H: Fn(IncomingCall) -> F + Send + Sync + 'static,
        F: Future<Output = Result<R, InvocationError>> + Send + 'static,
        R: Into<Reply> + Send + 'static,
    {
        let subject = target_wildcard(lattice, target_id);
        let subscriber = nats
            .queue_subscribe(subject.clone(), target_id.to_owned())
            .await
            .with_context(|| format!("subscribing to {subject} for target {target_id}"))?;
        nats.flush()
            .await
            .with_context(|| format!("registering the subscription to {subject}"))?;
        let handler: CallHandler =
            Arc::new(move |call| handler(call).map(|result| result.map(Into::into)).boxed());
        let answerer = Arc::new(Answerer {
            handler,
            permits: Arc::new(Semaphore::new(options.max_concurrency.max(1))),
            max_payload: options.max_payload,
        });
        let direct = options
            .direct
            .as_ref()
            .map(|listener| listener.register(target_id, answerer.clone()));
        let advertisement = options
            .direct
            .as_ref()
            .map(|listener| Arc::<str>::from(listener.advertisement()));
        let task = tokio::spawn(accept_calls(nats, subscriber, answerer, advertisement));
        Ok(Self {
            target_id: target_id.to_owned(),
            task,
            _direct: direct,
        })
    }

    /// The target id this server answers for.
    pub fn target_id(&self) -> &str {
        &self.target_id
    }
}

async fn accept_calls(
    nats: async_nats::Client,
    mut subscriber: Subscriber,
    answerer: Arc<Answerer>,
    advertisement: Option<Arc<str>>,
) {
    // Owned here: aborting this task drops the set, which aborts every call in flight.
    let mut calls = JoinSet::new();
    loop {
        tokio::select! {
            Some(finished) = calls.join_next(), if !calls.is_empty() => {
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "an invocation task panicked");
                    }
                }
            }
            message = subscriber.next() => {
                let Some(message) = message else {
                    tracing::debug!("invocation subscription closed");
                    break;
                };
                let Ok(permit) = answerer.permits.clone().acquire_owned().await else {
                    break;
                };
                let nats = nats.clone();
                let answerer = answerer.clone();
                let advertisement = advertisement.clone();
                calls.spawn(async move {
                    handle_call(nats, message, &answerer, advertisement).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn handle_call(
    nats: async_nats::Client,
    message: Message,
    answerer: &Answerer,
    advertisement: Option<Arc<str>>,
) {
    let Some(mut reply_to) = message.reply.clone() else {
        tracing::debug!(subject = %message.subject, "ignoring a call without a reply subject");
        return;
    };
    let context = CallContext::from_headers(message.headers.as_ref());
    let deadline = context
        .deadline
        .unwrap_or_else(|| SystemTime::now() + DEFAULT_CALL_TIMEOUT);
    // Tell a caller that asks where it may call this target directly next time.
    let advertisement = advertisement
        .filter(|_| header_str(message.headers.as_ref(), HEADER_PEER) == Some(PEER_ASK));
    let result = run_call(&nats, message, context, answerer, deadline, &mut reply_to).await;
    let (result, after_send) = answerer.split(result);
    let sent = send_result(&nats, reply_to, result, deadline, advertisement.as_deref()).await;
    if let Err(error) = sent {
        tracing::warn!(%error, "could not deliver a call's result");
    }
    after_sent(after_send).await;
}

/// Runs a reply's after-send work, first letting the task that writes the reply run.
pub(crate) async fn after_sent(after_send: Option<AfterSend>) {
    if let Some(after_send) = after_send {
        tokio::task::yield_now().await;
        after_send.await;
    }
}

async fn run_call(
    nats: &async_nats::Client,
    message: Message,
    context: CallContext,
    answerer: &Answerer,
    deadline: SystemTime,
    reply_to: &mut Subject,
) -> Result<Reply, InvocationError> {
    let (interface, function) = parse_call_subject(&message.subject).ok_or_else(|| {
        InvocationError::bad_request(format!("malformed call subject {}", message.subject))
    })?;
    let params = match header_u64(message.headers.as_ref(), HEADER_SIZE) {
        None => message.payload,
        Some(size) => receive_upload(nats, size, answerer.max_payload, deadline, reply_to).await?,
    };
    let call = IncomingCall {
        interface,
        function,
        params,
        context,
    };
    answerer.run(call, deadline).await
}

/// Receives a chunked parameter payload of `size` bytes. `reply_to` follows the caller: on
/// return it is the reply subject of the last message received (where the answer must go).
async fn receive_upload(
    nats: &async_nats::Client,
    size: u64,
    max_payload: usize,
    deadline: SystemTime,
    reply_to: &mut Subject,
) -> Result<Bytes, InvocationError> {
    if size > max_payload as u64 {
        return Err(InvocationError::PayloadTooLarge {
            size,
            limit: max_payload as u64,
        });
    }
    if size == 0 {
        return Err(InvocationError::bad_request(
            "a chunked call announced 0 bytes",
        ));
    }
    let size = size as usize;
    let inbox = nats.new_inbox();
    let mut chunks = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| InvocationError::transport(format!("subscribing for the upload: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_UPLOAD, inbox.as_str());
    nats.publish_with_headers(reply_to.clone(), headers, Bytes::new())
        .await
        .map_err(|e| InvocationError::transport(format!("accepting the upload: {e}")))?;

    let mut params = BytesMut::new();
    let mut seq = 0u64;
    loop {
        let chunk = next_message(&mut chunks, deadline, "the next params chunk").await?;
        let Some(chunk_reply) = chunk.reply else {
            continue;
        };
        *reply_to = chunk_reply;
        if header_u64(chunk.headers.as_ref(), HEADER_SEQ) != Some(seq) {
            return Err(InvocationError::transport(format!(
                "params chunk out of order: expected {seq}"
            )));
        }
        if chunk.payload.is_empty() || params.len() + chunk.payload.len() > size {
            return Err(InvocationError::transport(format!(
                "params chunk {seq} of {} bytes does not fit the announced {size} bytes ({} received)",
                chunk.payload.len(),
                params.len()
            )));
        }
        params.extend_from_slice(&chunk.payload);
        if params.len() == size {
            return Ok(params.freeze());
        }
        nats.publish(reply_to.clone(), Bytes::new())
            .await
            .map_err(|e| InvocationError::transport(format!("acknowledging chunk {seq}: {e}")))?;
        seq += 1;
    }
}

async fn next_message(
    subscriber: &mut Subscriber,
    deadline: SystemTime,
    what: &str,
) -> Result<Message, InvocationError> {
    let time_left = remaining(deadline)
        .ok_or_else(|| InvocationError::deadline(format!("deadline passed waiting for {what}")))?;
    match tokio::time::timeout(time_left, subscriber.next()).await {
        Err(_) => Err(InvocationError::deadline(format!(
            "deadline passed waiting for {what}"
        ))),
        Ok(None) => Err(InvocationError::transport(format!(
            "the connection closed waiting for {what}"
        ))),
        Ok(Some(message)) => Ok(message),
    }
}

/// Answers a call (results already capped by [`Answerer::split`]): inline for small results
/// (with the direct `advertisement` if given), via pulled chunks for large ones.
async fn send_result(
    nats: &async_nats::Client,
    reply_to: Subject,
    result: Result<Bytes, InvocationError>,
    deadline: SystemTime,
    advertisement: Option<&str>,
) -> anyhow::Result<()> {
    let server_max = nats.server_info().max_payload;
    // Room for the header block that carries the advertisement, if any.
    let header_room = advertisement.map_or(0, |a| a.len() + 64);
    match result {
        Ok(bytes) if bytes.len() + header_room <= server_max => match advertisement {
            None => nats.publish(reply_to, bytes).await,
            Some(advertisement) => {
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_PEER, advertisement);
                nats.publish_with_headers(reply_to, headers, bytes).await
            }
        }
        .context("publishing the result"),
        Ok(bytes) => serve_download(nats, reply_to, bytes, chunk_size(server_max), deadline).await,
        Err(error) => {
            let (headers, body) = error.to_wire();
            nats.publish_with_headers(reply_to, headers, body)
                .await
                .context("publishing the error")
        }
    }
}

/// Announces a chunked result and hands out its chunks until the caller has all of them.
async fn serve_download(
    nats: &async_nats::Client,
    reply_to: Subject,
    result: Bytes,
    chunk: usize,
    deadline: SystemTime,
) -> anyhow::Result<()> {
    let inbox = nats.new_inbox();
    let mut pulls = nats
        .subscribe(inbox.clone())
        .await
        .context("subscribing for the result download")?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_SIZE, result.len().to_string().as_str());
    headers.insert(HEADER_DOWNLOAD, inbox.as_str());
    nats.publish_with_headers(reply_to, headers, Bytes::new())
        .await
        .context("announcing the result download")?;
    let chunks = result.len().div_ceil(chunk);
    let mut served = vec![false; chunks];
    let mut remaining_chunks = chunks;
    while remaining_chunks > 0 {
        let pull = next_message(&mut pulls, deadline, "the caller to pull result chunks")
            .await
            .map_err(anyhow::Error::new)?;
        let Some(pull_reply) = pull.reply else {
            continue;
        };
        let seq = header_u64(pull.headers.as_ref(), HEADER_SEQ)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| *s < chunks);
        match seq {
            Some(seq) => {
                let start = seq * chunk;
                let end = (start + chunk).min(result.len());
                nats.publish(pull_reply, result.slice(start..end))
                    .await
                    .context("publishing a result chunk")?;
                if !served[seq] {
                    served[seq] = true;
                    remaining_chunks -= 1;
                }
            }
            None => {
                let (headers, body) = InvocationError::transport(format!(
                    "result chunk request without a valid {HEADER_SEQ} (there are {chunks} chunks)"
                ))
                .to_wire();
                nats.publish_with_headers(pull_reply, headers, body)
                    .await
                    .context("rejecting a bad chunk request")?;
            }
        }
    }
    Ok(())
}
