//! The caller's side of the direct path: which peers serve which targets, and one
//! multiplexed connection per peer.

use std::collections::HashMap;
use std::future::Future as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OnceCell};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use super::frame::{self, Kind};
use super::listener::MAX_CALL_FRAME;
use super::{Advertisement, MAX_ENDPOINTS, PROBE_EVERY};
use crate::invocation::error::InvocationError;
use crate::invocation::wire::{remaining, CallContext, DEFAULT_MAX_CALL_PAYLOAD};

/// Longest wait for a peer to accept a connection and the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an endpoint that refused us (or could not be reached) is not tried again.
const REFUSED_FOR: Duration = Duration::from_secs(30);
/// A frame write that cannot finish within this long gives the connection up.
const WRITE_STALL: Duration = Duration::from_secs(30);

type ConnectionCell = Arc<OnceCell<Arc<PeerConnection>>>;
/// The write side of a connection to a peer, shared by the calls on it.
type PeerWriter = Arc<tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>>;

/// What a caller knows about peers it can call directly: the endpoints learned per target
/// and the open connections. One per host, shared by its invocation clients.
pub struct DirectPeers {
    book: Mutex<PeerBook>,
    max_result: usize,
}

/// Endpoints are shared (`Arc`) so picking one for a call copies no strings.
#[derive(Default)]
struct PeerBook {
    routes: HashMap<String, TargetRoute>,
    connections: HashMap<Arc<Advertisement>, ConnectionCell>,
    refused: HashMap<Arc<Advertisement>, Instant>,
}

#[derive(Default)]
struct TargetRoute {
    endpoints: Vec<Arc<Advertisement>>,
    next: usize,
    calls: u32,
}

impl std::fmt::Debug for DirectPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let book = self.book();
        f.debug_struct("DirectPeers")
            .field("targets", &book.routes.len())
            .field("connections", &book.connections.len())
            .finish()
    }
}

impl Default for DirectPeers {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CALL_PAYLOAD)
    }
}

/// How a direct attempt ended.
enum Attempt {
    /// The peer answered (results or a typed error), or the call may have run: final.
    Final(Result<Bytes, InvocationError>),
    /// The call was not made; send it over NATS.
    NotMade(String),
    /// The peer does not serve the target (any more); the call was not made.
    NotServed,
}

impl DirectPeers {
    /// Peers for a caller that accepts results up to `max_result` bytes.
    pub fn new(max_result: usize) -> Self {
        Self {
            book: Mutex::default(),
            max_result,
        }
    }

    fn book(&self) -> MutexGuard<'_, PeerBook> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers that `target_id` answers at the endpoint a NATS reply advertised.
    pub(crate) fn learn(&self, target_id: &str, advertisement: &str) {
        let Some(endpoint) = Advertisement::parse(advertisement) else {
            tracing::debug!(
                advertisement,
                "ignoring a malformed direct-call advertisement"
            );
            return;
        };
        if !endpoint.reachable_from_here() {
            return;
        }
        let endpoint = Arc::new(endpoint);
        let mut book = self.book();
        let now = Instant::now();
        book.refused.retain(|_, until| *until > now);
        if book.refused.contains_key(&endpoint) {
            return;
        }
        let route = book.routes.entry(target_id.to_owned()).or_default();
        if !route.endpoints.contains(&endpoint) && route.endpoints.len() < MAX_ENDPOINTS {
            tracing::debug!(
                target_id,
                address = endpoint.address,
                "learned a direct endpoint"
            );
            route.endpoints.push(endpoint);
        }
    }

    /// The number of endpoints known for `target_id`.
    pub fn endpoints_of(&self, target_id: &str) -> usize {
        self.book()
            .routes
            .get(target_id)
            .map_or(0, |route| route.endpoints.len())
    }

    /// Picks the endpoint for this call, or `None` for NATS (nothing known, or a probe).
    fn route(&self, target_id: &str) -> Option<(Arc<Advertisement>, ConnectionCell)> {
        let mut book = self.book();
        let route = book.routes.get_mut(target_id)?;
        route.calls = route.calls.wrapping_add(1);
        if route.endpoints.is_empty() || route.calls % PROBE_EVERY == 0 {
            return None;
        }
        let endpoint = route.endpoints[route.next % route.endpoints.len()].clone();
        route.next = route.next.wrapping_add(1);
        let cell = match book.connections.get(&endpoint) {
            Some(cell) => cell.clone(),
            None => book
                .connections
                .entry(endpoint.clone())
                .or_default()
                .clone(),
        };
        Some((endpoint, cell))
    }

    /// Stops calling `target_id` at `endpoint`.
    fn forget(&self, target_id: &str, endpoint: &Advertisement) {
        let mut book = self.book();
        if let Some(route) = book.routes.get_mut(target_id) {
            route.endpoints.retain(|known| **known != *endpoint);
            if route.endpoints.is_empty() {
                book.routes.remove(target_id);
            }
        }
    }

    /// Drops the connection in `cell` so the next call dials again.
    fn drop_connection(&self, endpoint: &Advertisement, cell: &ConnectionCell) {
        let mut book = self.book();
        if book
            .connections
            .get(endpoint)
            .is_some_and(|current| Arc::ptr_eq(current, cell))
        {
            book.connections.remove(endpoint);
        }
    }

    /// Stops using `endpoint` for every target for a while.
    fn refuse(&self, endpoint: &Arc<Advertisement>) {
        let mut book = self.book();
        for route in book.routes.values_mut() {
            route.endpoints.retain(|known| known != endpoint);
        }
        book.routes.retain(|_, route| !route.endpoints.is_empty());
        book.connections.remove(endpoint);
        book.refused
            .insert(endpoint.clone(), Instant::now() + REFUSED_FOR);
    }

    /// Tries the call directly. `None` means it was not made: send it over NATS.
    pub(crate) async fn call(
        &self,
        target_id: &str,
        interface: &str,
        function: &str,
        params: &[u8],
        context: &CallContext,
        deadline: SystemTime,
    ) -> Option<Result<Bytes, InvocationError>> {
        // A string too long for a frame would be cut, and a frame over the listener's limit
        // would make it close the connection under every call on it: NATS carries those.
        frame::call_body_len(target_id, interface, function, context, params.len())
            .filter(|len| *len <= MAX_CALL_FRAME)?;
        let (endpoint, cell) = self.route(target_id)?;
        let max_body = self.max_result + 64 * 1024;
        let connected = cell
            .get_or_try_init(|| PeerConnection::open(&endpoint, deadline, max_body))
            .await;
        let connection = match connected {
            Ok(connection) => connection.clone(),
            Err(reason) => {
                tracing::debug!(
                    target_id,
                    address = endpoint.address,
                    reason,
                    "direct endpoint unusable; calling over NATS"
                );
                self.refuse(&endpoint);
                return None;
            }
        };
        let encode = |call_id| {
            frame::encode_call(
                call_id, target_id, interface, function, context, deadline, params,
            )
        };
        match connection.call(encode, deadline).await {
            Attempt::Final(result) => Some(result),
            Attempt::NotServed => {
                tracing::debug!(
                    target_id,
                    address = endpoint.address,
                    "the target no longer runs at a direct endpoint"
                );
                self.forget(target_id, &endpoint);
                None
            }
            Attempt::NotMade(reason) => {
                tracing::debug!(
                    target_id,
                    address = endpoint.address,
                    reason,
                    "direct connection lost; calling over NATS"
                );
                self.drop_connection(&endpoint, &cell);
                None
            }
        }
    }
}

/// An answer the reader hands to the waiting call.
enum Answer {
    Result(Bytes),
    Error(InvocationError),
    NotServed,
    Broken(String),
}

/// Calls waiting for their answers on one connection, and whether it still works.
#[derive(Default)]
struct Pending {
    calls: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    closed: AtomicBool,
}

impl Pending {
    fn calls(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a call from [`Pending`] however its wait ends (answer, deadline, cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    call_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.calls().remove(&self.call_id);
    }
}

/// One connection to a peer's listener, shared by every call to that peer.
struct PeerConnection {
    address: String,
    writer: PeerWriter,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PeerConnection {
    /// Dials `endpoint` and completes the handshake, within the call's deadline.
    async fn open(
        endpoint: &Advertisement,
        deadline: SystemTime,
        max_body: usize,
    ) -> Result<Arc<Self>, String> {
        let limit = remaining(deadline).unwrap_or_default().min(CONNECT_TIMEOUT);
        tokio::time::timeout(limit, Self::dial(endpoint, max_body))
            .await
            .map_err(|_| format!("no connection within {} ms", limit.as_millis()))?
    }

    async fn dial(endpoint: &Advertisement, max_body: usize) -> Result<Arc<Self>, String> {
        let stream = TcpStream::connect(&endpoint.address)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        let stream = super::tls::connect_pinned(stream, &endpoint.fingerprint)
            .await
            .map_err(|e| format!("TLS with the advertised certificate: {e}"))?;
        let (mut read, mut write) = tokio::io::split(stream);
        write
            .write_all(&frame::encode_hello(&endpoint.token))
            .await
            .map_err(|e| format!("sending the handshake: {e}"))?;
        write
            .flush()
            .await
            .map_err(|e| format!("sending the handshake: {e}"))?;
        let verdict = read
            .read_u8()
            .await
            .map_err(|e| format!("reading the handshake answer: {e}"))?;
        if verdict != frame::HANDSHAKE_OK {
            return Err("the peer refused the token".into());
        }
        let pending = Arc::new(Pending::default());
        let reader = tokio::spawn(read_answers(read, pending.clone(), max_body));
        Ok(Arc::new(Self {
            address: endpoint.address.clone(),
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            pending,
            next_id: AtomicU64::new(1),
            reader,
        }))
    }

    /// Sends the call frame `encode` makes for a fresh call id and waits for its answer
    /// until `deadline`.
    async fn call(&self, encode: impl FnOnce(u64) -> Bytes, deadline: SystemTime) -> Attempt {
        let call_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(call_id);
        let (sender, answer) = oneshot::channel();
        self.pending.calls().insert(call_id, sender);
        let _guard = PendingGuard {
            pending: &self.pending,
            call_id,
        };
        // Checked after registering, so a reader that closes now still answers this call.
        if self.pending.closed.load(Ordering::Acquire) {
            return Attempt::NotMade("the connection is closed".into());
        }
        if let Err(reason) = write_whole(&self.writer, &self.pending, frame).await {
            self.pending.closed.store(true, Ordering::Release);
            return Attempt::NotMade(reason);
        }
        let Some(time_left) = remaining(deadline) else {
            return Attempt::Final(Err(InvocationError::deadline(format!(
                "the deadline passed while calling {} directly",
                self.address
            ))));
        };
        match tokio::time::timeout(time_left, answer).await {
            Err(_) => Attempt::Final(Err(InvocationError::deadline(format!(
                "no answer from {} within {} ms",
                self.address,
                time_left.as_millis()
            )))),
            Ok(Err(_)) => Attempt::Final(Err(InvocationError::transport(format!(
                "the direct connection to {} closed during the call; the call may have run, so \
                 retry only if it is safe to run twice",
                self.address
            )))),
            Ok(Ok(Answer::Result(results))) => Attempt::Final(Ok(results)),
            Ok(Ok(Answer::Error(error))) => Attempt::Final(Err(error)),
            Ok(Ok(Answer::NotServed)) => Attempt::NotServed,
            Ok(Ok(Answer::Broken(reason))) => {
                Attempt::Final(Err(InvocationError::transport(format!(
                    "the direct connection to {} broke during the call ({reason}); the call may \
                     have run, so retry only if it is safe to run twice",
                    self.address
                ))))
            }
        }
    }
}

/// Writes `frame` whole and flushes it through TLS. The write is polled once in place (the
/// common case: the socket takes it all); if it cannot finish at once, it finishes in a task
/// of its own, so a call dropped meanwhile cannot leave half a frame on the connection. A
/// write stalled for [`WRITE_STALL`] marks the connection closed before it lets go of it.
async fn write_whole(
    writer: &PeerWriter,
    pending: &Arc<Pending>,
    frame: Bytes,
) -> Result<(), String> {
    let mut guard = writer.clone().lock_owned().await;
    if pending.closed.load(Ordering::Acquire) {
        return Err("the connection is closed".into());
    }
    let mut write = Box::pin(async move {
        guard.write_all(&frame).await?;
        guard.flush().await
    });
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let finished = match first {
        Poll::Ready(done) => done,
        Poll::Pending => {
            let pending = pending.clone();
            let finish = tokio::spawn(async move {
                match tokio::time::timeout(WRITE_STALL, &mut write).await {
                    Ok(done) => done,
                    Err(_) => {
                        // Half a frame may be out: no later call may follow it.
                        pending.closed.store(true, Ordering::Release);
                        drop(write);
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the peer read nothing for {} s", WRITE_STALL.as_secs()),
                        ))
                    }
                }
            });
            finish.await.map_err(|e| format!("writing a call: {e}"))?
        }
    };
    finished.map_err(|error| format!("writing a call: {error}"))
}

/// Hands each answer to its waiting call until the connection ends; then fails the rest.
async fn read_answers(
    read: ReadHalf<TlsStream<TcpStream>>,
    pending: Arc<Pending>,
    max_body: usize,
) {
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let reason = loop {
        let (head, body) = match frame::read_frame(&mut read, max_body).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the peer closed the connection".to_string(),
            Err(reason) => break reason,
        };
        let answer = match head.kind {
            Kind::Result => Answer::Result(body),
            Kind::NotServed => Answer::NotServed,
            Kind::Error => Answer::Error(frame::decode_error(body).unwrap_or_else(|reason| {
                InvocationError::transport(format!("malformed error answer: {reason}"))
            })),
            Kind::Call => break "the peer sent a call on a caller's connection".to_string(),
        };
        if let Some(waiting) = pending.calls().remove(&head.call_id) {
            let _ = waiting.send(answer);
        }
    };
    pending.closed.store(true, Ordering::Release);
    let waiting: Vec<_> = pending.calls().drain().collect();
    for (_, call) in waiting {
        let _ = call.send(Answer::Broken(reason.clone()));
    }
}
