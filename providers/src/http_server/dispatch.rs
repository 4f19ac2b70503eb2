//! Serving one request: the body limit, then the component on this host (co-location fast
//! path) or on another host over the lattice; the response body that never passes a cut-off
//! response for a complete one.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use trellis_host::runtime::{HttpResponseBody, PreparedComponent};

use super::lattice::forward;
use super::settings::DEFAULT_REMOTE_TIMEOUT;
use super::wire::BodyError;
use super::Shared;

/// The body of every response the server sends: a component's own body (this process), or
/// any other body (messages, bodies arriving over the lattice). Either ends in an error
/// instead of a clean end when the response must not pass for complete: the component failed
/// while producing it, the lattice transfer failed, or the request body passed
/// `max_content_len` after the response had started. A server then aborts the response.
pub(crate) struct ResponseBody {
    source: Source,
    /// Set when the request body passed the limit.
    request_over_limit: Option<Arc<AtomicBool>>,
}

enum Source {
    Component(HttpResponseBody),
    Other(UnsyncBoxBody<Bytes, BodyError>),
}

impl ResponseBody {
    /// A body produced by a component running in this process.
    pub fn component(body: HttpResponseBody) -> Self {
        Self {
            source: Source::Component(body),
            request_over_limit: None,
        }
    }

    /// Any other body.
    pub fn other<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        Self {
            source: Source::Other(body.boxed_unsync()),
            request_over_limit: None,
        }
    }

    /// Makes the body fail once `flag` is set (the request body passed the limit).
    fn cut_off_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.request_over_limit = Some(flag);
        self
    }

    fn over_limit(&self) -> bool {
        self.request_over_limit
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.source {
            Source::Component(body) => Pin::new(body).poll_frame(cx),
            Source::Other(body) => Pin::new(body).poll_frame(cx),
        };
        if polled.is_ready() && self.over_limit() {
            // What the component made of the failed read (an early end, say) must not reach
            // the client as a complete response.
            self.request_over_limit = None;
            return Poll::Ready(Some(Err(BodyError::InternalError(Some(
                "the request body passed this server's max_content_len after the response had started"
                    .to_string(),
            )))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        !self.over_limit()
            && match &self.source {
                Source::Component(body) => body.is_end_stream(),
                Source::Other(body) => body.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Component(body) => body.size_hint(),
            Source::Other(body) => body.size_hint(),
        }
    }
}

/// A plain-text response (errors and refusals), always with a message saying why.
pub(crate) fn text_response(
    status: StatusCode,
    message: impl Into<String>,
) -> Response<ResponseBody> {
    let mut message = message.into();
    message.push('\n');
    let mut response = Response::new(ResponseBody::other(
        http_body_util::Full::new(Bytes::from(message)).map_err(|never| match never {}),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Counts the bytes of a request body and fails it once it passes the limit, recording that
/// so the server answers 413 whatever the component made of the failed read.
pub(crate) struct LimitedBody<B> {
    inner: Pin<Box<B>>,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`, failing past `limit` bytes and setting `exceeded`.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Self {
            inner: Box::pin(inner),
            limit,
            seen: 0,
            exceeded,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        self.exceeded.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(BodyError::HttpRequestBodySize(Some(
                            self.seen,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The 413 answer for a request body over `limit` bytes.
pub(crate) fn too_large(limit: u64) -> Response<ResponseBody> {
    text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than this server's limit of {limit} bytes (config `max_content_len`)"),
    )
}

/// Serves `request` with component `target`.
pub(crate) async fn dispatch<B>(
    shared: &Shared,
    target: &str,
    request: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    let limit = shared.settings.max_content_len;
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return too_large(limit);
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| LimitedBody::new(body, limit, exceeded.clone()));
    let local = if shared.settings.colocation {
        shared.env.local_component(target)
    } else {
        None
    };
    let response = match local {
        Some(prepared) => call_component(&prepared, request, shared.settings.timeout).await,
        None => {
            let timeout = shared.settings.timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT);
            forward(
                &shared.env.client,
                &shared.env.lattice,
                target,
                request,
                timeout,
            )
            .await
        }
    };
    if exceeded.load(Ordering::SeqCst) {
        return too_large(limit);
    }
    // The request body may still pass the limit while the response streams.
    response.map(|body| body.cut_off_when(exceeded))
}

/// Calls a component running in this process, mapping its failures to statuses with
/// messages (503 busy with `Retry-After`, 504 deadline, 500 trap and others).
pub(crate) async fn call_component<B>(
    prepared: &PreparedComponent,
    request: Request<B>,
    timeout: Option<Duration>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    let call = prepared.handle_http(request);
    let result = match timeout {
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => {
                return text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "component {} did not answer within {} ms (config `timeout_ms`)",
                        prepared.id(),
                        limit.as_millis()
                    ),
                )
            }
        },
        None => call.await,
    };
    match result {
        Ok(response) => response.map(ResponseBody::component),
        Err(error) => {
            let status = error.status_code();
            // The runtime logs failures at most once a second per component; one warning per
            // request would turn a flood of requests into a flood of log lines.
            tracing::debug!(component_id = prepared.id(), %status, error = %format!("{error:#}"), "HTTP request failed in the component");
            let mut response = text_response(status, format!("{error}"));
            if let Some(secs) = error.retry_after_secs() {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            response
        }
    }
}
