//! Serving one request: the body limit, then the component on this host (co-location fast
//! path) or on another host over the lattice.

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
use trellis_host::runtime::PreparedComponent;

use super::lattice::forward;
use super::settings::DEFAULT_REMOTE_TIMEOUT;
use super::wire::BodyError;
use super::Shared;

/// The body of every response the server sends.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BodyError>;

/// A plain-text response (errors and refusals), always with a message saying why.
pub(crate) fn text_response(
    status: StatusCode,
    message: impl Into<String>,
) -> Response<ResponseBody> {
    let mut message = message.into();
    message.push('\n');
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
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

fn too_large(limit: u64) -> Response<ResponseBody> {
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
    response
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
        Ok(response) => response,
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
