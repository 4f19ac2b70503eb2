//! The response body of [`super::PreparedComponent::handle_http`]: the guest's body, made to
//! fail when the invocation fails while it is still being produced.
//!
//! wasmtime-wasi-http ends a response body cleanly when the store that produces it is dropped,
//! whether the guest finished the body or trapped half-way through. A server relaying that
//! would send a complete-looking, truncated response. Here the invocation records how it ended
//! ([`HttpOutcome`]) before its store is dropped, and the body turns an end that comes from a
//! failed invocation into an error, so a server aborts the response (HTTP/1.1: no terminating
//! chunk) and the client sees it was cut off.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::component::InvocationFlags;

/// The invocation is still running.
const RUNNING: u8 = 0;
/// The guest returned normally.
const SUCCEEDED: u8 = 1;
/// A failure is being recorded (its message is not set yet).
const FAILING: u8 = 2;
/// The invocation failed (trap, deadline, memory, cancelled).
const FAILED: u8 = 3;

/// How an HTTP invocation ended, recorded before its store is dropped (so before its response
/// body can end) and read by [`HttpResponseBody`].
#[derive(Debug, Default)]
pub(super) struct HttpOutcome {
    state: AtomicU8,
    failure: OnceLock<String>,
}

impl HttpOutcome {
    /// Records a normal return (unless a failure was recorded first).
    pub fn succeeded(&self) {
        let _ =
            self.state
                .compare_exchange(RUNNING, SUCCEEDED, Ordering::Release, Ordering::Relaxed);
    }

    /// Records a failure and why (the first record wins).
    pub fn failed(&self, why: impl FnOnce() -> String) {
        if self
            .state
            .compare_exchange(RUNNING, FAILING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let _ = self.failure.set(why());
            // Publish the message with the state: readers load the state with Acquire.
            self.state.store(FAILED, Ordering::Release);
        }
    }

    /// Why the invocation failed, once it has.
    fn failure(&self) -> Option<&str> {
        (self.state.load(Ordering::Acquire) == FAILED).then(|| {
            self.failure
                .get()
                .map_or("the invocation failed", String::as_str)
        })
    }
}

/// The response body of an HTTP invocation: the bytes the guest writes, ending in an error
/// (`internal-error` naming the failure) instead of a clean end when the invocation fails
/// before the guest finished the body.
pub struct HttpResponseBody {
    inner: HyperOutgoingBody,
    invocation: Arc<InvocationFlags>,
    done: bool,
}

impl HttpResponseBody {
    pub(super) fn new(inner: HyperOutgoingBody, invocation: Arc<InvocationFlags>) -> Self {
        Self {
            inner,
            invocation,
            done: false,
        }
    }
}

impl std::fmt::Debug for HttpResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponseBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Body for HttpResponseBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.done = true;
                // The body's channel closed: either the guest finished it, or its store was
                // dropped (the invocation ended). A failed invocation has said so by now.
                match self.invocation.http.failure() {
                    Some(why) => Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(
                        Some(format!("the response body was cut off: {why}")),
                    )))),
                    None => Poll::Ready(None),
                }
            }
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                Poll::Ready(Some(Err(error)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn body(flags: &Arc<InvocationFlags>) -> HttpResponseBody {
        let inner = http_body_util::Full::new(Bytes::from_static(b"part"))
            .map_err(|never| match never {})
            .boxed_unsync();
        HttpResponseBody::new(inner, flags.clone())
    }

    #[tokio::test]
    async fn ends_cleanly_while_running_or_after_success() {
        for succeed in [false, true] {
            let flags = Arc::new(InvocationFlags::default());
            if succeed {
                flags.http.succeeded();
            }
            let collected = body(&flags).collect().await.unwrap().to_bytes();
            assert_eq!(&collected[..], b"part");
        }
    }

    #[tokio::test]
    async fn ends_in_an_error_naming_the_failure() {
        let flags = Arc::new(InvocationFlags::default());
        flags.http.failed(|| "component x trapped".to_string());
        flags.http.succeeded(); // too late: the failure stands
        let mut body = body(&flags);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(
            format!("{error:?}").contains("component x trapped"),
            "{error:?}"
        );
        assert!(body.frame().await.is_none());
    }
}
