//! One HTTP connection's liveness: the header-read and idle timeouts, and the log line when a
//! response is cut off.
//!
//! A connection is always in one phase: waiting for a request head (from its accept, or from
//! the first byte of a keep-alive request), serving a request (from the head to the end of the
//! response body), or idle (between a response and the next request's first byte). The socket
//! wrapper ([`TrackedIo`]), the service and the response body ([`TrackedBody`]) move it along
//! with one atomic store each; a watchdog ([`Clock::watch`]) closes the connection when the
//! head or idle phase outlasts its limit. The watchdog only wakes at deadlines (at most every
//! `min(header_read_timeout, idle_timeout)`), never per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use trellis_host::log_limit::LogLimiter;

use super::dispatch::ResponseBody;
use super::wire::BodyError;

/// Waiting for (the rest of) a request head.
const HEAD: u64 = 0;
/// Serving a request.
const BUSY: u64 = 1;
/// Between a response and the next request.
const IDLE: u64 = 2;
/// The phase is in the low bits of the state, the phase's start (ms since accept) above.
const PHASE_BITS: u32 = 2;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;

/// At most one warning per this interval about responses cut off.
static CUT_OFF: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// The header-read and idle limits of a listener's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Longest wait for a complete request head.
    pub header_read: Option<Duration>,
    /// Longest wait, after a response, for the next request.
    pub idle: Option<Duration>,
}

/// Where one connection is in its request cycle.
#[derive(Debug)]
pub(crate) struct Clock {
    accepted: Instant,
    state: AtomicU64,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The request head did not arrive in time.
    HeaderRead,
    /// No next request came in time.
    Idle,
}

impl Clock {
    /// A connection accepted now, waiting for its first request head.
    pub fn new() -> Self {
        Self {
            accepted: Instant::now(),
            state: AtomicU64::new(HEAD),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX >> PHASE_BITS)
    }

    fn enter(&self, phase: u64) {
        self.state
            .store((self.now_ms() << PHASE_BITS) | phase, Ordering::Relaxed);
    }

    /// A request head was read: no limit applies until its response is done.
    pub fn request_started(&self) {
        self.state.store(BUSY, Ordering::Relaxed);
    }

    /// The response was sent (or dropped): the idle limit applies.
    pub fn response_done(&self) {
        self.enter(IDLE);
    }

    /// Bytes arrived: on an idle connection they start a request head.
    fn bytes_arrived(&self) {
        if self.state.load(Ordering::Relaxed) & PHASE_MASK == IDLE {
            self.enter(HEAD);
        }
    }

    /// Resolves when the connection has been waiting for a head, or idle, past its limit.
    /// Never resolves when both limits are off.
    pub async fn watch(&self, limits: Timeouts) -> Expired {
        let Some(tick) = [limits.header_read, limits.idle]
            .into_iter()
            .flatten()
            .min()
        else {
            return std::future::pending().await;
        };
        loop {
            let state = self.state.load(Ordering::Relaxed);
            let since = self.accepted + Duration::from_millis(state >> PHASE_BITS);
            let (limit, expired) = match state & PHASE_MASK {
                HEAD => (limits.header_read, Expired::HeaderRead),
                IDLE => (limits.idle, Expired::Idle),
                _ => (None, Expired::Idle),
            };
            let now = Instant::now();
            // Sleeping at most `tick` catches a phase that started while asleep: its deadline
            // is at least `tick` after its start.
            let mut wake = now + tick;
            if let Some(limit) = limit {
                let deadline = since + limit;
                if now >= deadline {
                    return expired;
                }
                wake = wake.min(deadline);
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// The socket, telling the clock when bytes arrive.
pub(crate) struct TrackedIo {
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl TrackedIo {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream, clock: Arc<Clock>) -> Self {
        Self { stream, clock }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body on its way to the client: moves the clock to idle when it is done, and
/// logs (rate-limited) when it is cut off.
pub(crate) struct TrackedBody {
    body: ResponseBody,
    clock: Arc<Clock>,
}

impl TrackedBody {
    /// Tracks `body`, a response of the connection timed by `clock`.
    pub fn new(body: ResponseBody, clock: Arc<Clock>) -> Self {
        Self { body, clock }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.clock.response_done();
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            if let Some(suppressed) = CUT_OFF.allow() {
                tracing::warn!(%error, suppressed, "aborting an HTTP response after it started (the connection is closed without completing it)");
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Timeouts = Timeouts {
        header_read: Some(Duration::from_secs(10)),
        idle: Some(Duration::from_secs(60)),
    };

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_completes_expires_at_the_header_limit() {
        let clock = Clock::new();
        let started = Instant::now();
        assert_eq!(clock.watch(LIMITS).await, Expired::HeaderRead);
        // Virtual time: not before the limit, and not a tick late.
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_gets_the_idle_limit_and_a_new_head_the_header_limit() {
        let clock = Arc::new(Clock::new());
        clock.request_started();
        tokio::time::advance(Duration::from_secs(100)).await;
        clock.response_done();
        let watching = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.watch(LIMITS).await })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!watching.is_finished(), "idle for 30 s of 60");
        // The first byte of the next request: 10 s from now.
        clock.bytes_arrived();
        let head_started = Instant::now();
        assert_eq!(watching.await.unwrap(), Expired::HeaderRead);
        assert!(head_started.elapsed() >= Duration::from_secs(9));
        assert!(head_started.elapsed() < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_never_expire_and_no_limits_mean_none() {
        let clock = Clock::new();
        clock.request_started();
        let watched = tokio::time::timeout(Duration::from_secs(3600), clock.watch(LIMITS));
        assert!(watched.await.is_err());
        let clock = Clock::new();
        let off = Timeouts {
            header_read: None,
            idle: None,
        };
        let watched = tokio::time::timeout(Duration::from_secs(3600), clock.watch(off));
        assert!(watched.await.is_err());
    }
}
