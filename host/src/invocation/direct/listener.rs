//! The callee's side of the direct path: one TCP listener per host that answers calls for the
//! targets registered with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt as _, BufReader, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;

use super::frame::{self, Kind};
use super::tls::ServerIdentity;
use super::Advertisement;
use crate::invocation::error::InvocationError;
use crate::invocation::server::{after_sent, Answerer};
use crate::invocation::wire::DEFAULT_CALL_TIMEOUT;
use crate::invocation::IncomingCall;

/// How long a connecting peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest call frame body accepted; bigger params go over NATS in chunks.
pub(crate) const MAX_CALL_FRAME: usize = super::MAX_DIRECT_PARAMS + 64 * 1024;
/// Bytes of call frames one connection may have in flight before its reader waits.
const CONNECTION_BUDGET: usize = 16 * 1024 * 1024;
/// Each call counts at least this much against [`CONNECTION_BUDGET`] (bounds the call count).
const MIN_CALL_COST: usize = 1024;
/// Results up to this size are copied behind their head and written in one syscall.
const COALESCE_RESULT: usize = 16 * 1024;

type Targets = RwLock<HashMap<String, Arc<Answerer>>>;
/// The write side of one accepted (TLS) connection.
type ConnectionWriter = Mutex<WriteHalf<TlsStream<TcpStream>>>;

/// Answers direct calls from peer hosts for the targets registered with it.
///
/// Cheap to clone; the listener and every connection stop when the last clone is dropped.
#[derive(Clone)]
pub struct DirectListener {
    inner: Arc<ListenerInner>,
}

struct ListenerInner {
    local_addr: SocketAddr,
    advertisement: String,
    targets: Arc<Targets>,
    accept: JoinHandle<()>,
}

impl Drop for ListenerInner {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl std::fmt::Debug for DirectListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectListener")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl DirectListener {
    /// Listens on `listen` and tells callers to dial `advertise` (default: the bound address,
    /// which must then not be a wildcard such as `0.0.0.0`).
    pub async fn bind(listen: SocketAddr, advertise: Option<String>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for direct calls on {listen}"))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let dial = match advertise {
            Some(address) => address,
            None if local_addr.ip().is_unspecified() => bail!(
                "direct calls listen on {local_addr}, which peers cannot dial: give the address \
                 they should use (--direct-advertise HOST:PORT) or listen on a specific one"
            ),
            None => local_addr.to_string(),
        };
        let token = format!("{:032x}", rand::random::<u128>());
        let identity = ServerIdentity::generate()?;
        let advertisement = Advertisement {
            address: dial,
            token: token.clone(),
            machine: super::machine_id().to_owned(),
            fingerprint: identity.fingerprint.clone(),
        }
        .to_string();
        let targets = Arc::new(Targets::default());
        let accept = tokio::spawn(accept_connections(
            listener,
            identity.acceptor,
            token.into(),
            targets.clone(),
        ));
        tracing::debug!(%local_addr, "listening for direct calls");
        Ok(Self {
            inner: Arc::new(ListenerInner {
                local_addr,
                advertisement,
                targets,
                accept,
            }),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// What NATS replies carry so callers can come here directly: address, token, machine and
    /// the SHA-256 of the listener's TLS certificate.
    pub fn advertisement(&self) -> &str {
        &self.inner.advertisement
    }

    /// Answers direct calls to `target_id` with `answerer` until the registration is dropped.
    /// The registration keeps the listener running.
    pub(crate) fn register(&self, target_id: &str, answerer: Arc<Answerer>) -> Registration {
        write_targets(&self.inner.targets).insert(target_id.to_owned(), answerer.clone());
        Registration {
            listener: self.clone(),
            target_id: target_id.to_owned(),
            answerer,
        }
    }
}

fn write_targets(
    targets: &Targets,
) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Answerer>>> {
    targets
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A target's place in a [`DirectListener`]; dropping it stops direct calls to the target
/// (callers then get "not served" and go through NATS).
pub(crate) struct Registration {
    listener: DirectListener,
    target_id: String,
    answerer: Arc<Answerer>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("target_id", &self.target_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut targets = write_targets(&self.listener.inner.targets);
        // A newer server for the same id may have replaced this one: leave it alone.
        if targets
            .get(&self.target_id)
            .is_some_and(|current| Arc::ptr_eq(current, &self.answerer))
        {
            targets.remove(&self.target_id);
        }
    }
}

async fn accept_connections(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    token: Arc<str>,
    targets: Arc<Targets>,
) {
    // Owned here: aborting the accept task drops every connection and its calls.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        token.clone(),
                        targets.clone(),
                    ));
                }
                Err(error) => {
                    // Out of descriptors and the like: say so and let the condition pass.
                    tracing::warn!(%error, "cannot accept a direct connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    token: Arc<str>,
    targets: Arc<Targets>,
) {
    let _ = stream.set_nodelay(true);
    // One bound for the TLS handshake and the token that follows it.
    let handshake_ends = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let stream = match tokio::time::timeout_at(handshake_ends, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "refused a direct connection: no TLS handshake");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "refused a direct connection: no TLS handshake within 5 s");
            return;
        }
    };
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let hello = tokio::time::timeout_at(handshake_ends, frame::read_hello(&mut read)).await;
    let accepted = match hello {
        Err(_) => Err("no handshake within 5 s".to_string()),
        Ok(Err(reason)) => Err(reason),
        Ok(Ok(offered)) if same_secret(offered.as_bytes(), token.as_bytes()) => Ok(()),
        Ok(Ok(_)) => Err("wrong token (a stale advertisement, or not a lattice member)".into()),
    };
    if let Err(reason) = accepted {
        tracing::debug!(%peer, reason, "refused a direct connection");
        let _ = write.write_all(&[frame::HANDSHAKE_REFUSED]).await;
        let _ = write.flush().await;
        return;
    }
    if write.write_all(&[frame::HANDSHAKE_OK]).await.is_err() || write.flush().await.is_err() {
        return;
    }
    let writer = Arc::new(Mutex::new(write));
    let budget = Arc::new(Semaphore::new(CONNECTION_BUDGET));
    // Owned here: when the connection ends, its unfinished calls are dropped with it.
    let mut calls = JoinSet::new();
    loop {
        while calls.try_join_next().is_some() {}
        let (head, body) = match frame::read_frame(&mut read, MAX_CALL_FRAME).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(reason) => {
                tracing::warn!(%peer, reason, "closing a direct connection that broke the protocol");
                break;
            }
        };
        if head.kind != Kind::Call {
            tracing::warn!(%peer, kind = ?head.kind, "closing a direct connection: a caller sent an answer frame");
            break;
        }
        let cost = u32::try_from(body.len().max(MIN_CALL_COST)).unwrap_or(u32::MAX);
        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
            break;
        };
        let targets = targets.clone();
        let writer = writer.clone();
        calls.spawn(async move {
            answer_call(head.call_id, body, &targets, &writer).await;
            drop(permit);
        });
    }
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer_call(call_id: u64, body: Bytes, targets: &Targets, writer: &ConnectionWriter) {
    let call = match frame::decode_call(body) {
        Ok(call) => call,
        Err(reason) => {
            let error = InvocationError::bad_request(format!("malformed direct call: {reason}"));
            send(writer, frame::encode_error(call_id, &error), None).await;
            return;
        }
    };
    let answerer = targets
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&call.target_id)
        .cloned();
    let Some(answerer) = answerer else {
        send(writer, frame::encode_not_served(call_id), None).await;
        return;
    };
    let deadline = call
        .context
        .deadline
        .unwrap_or_else(|| SystemTime::now() + DEFAULT_CALL_TIMEOUT);
    let incoming = IncomingCall {
        interface: call.interface,
        function: call.function,
        params: call.params,
        context: call.context,
    };
    let (result, after_send) = answerer.split(answerer.answer(incoming, deadline).await);
    match result {
        Ok(results) => {
            let head = frame::result_head(call_id, results.len());
            send(writer, head, Some(results)).await;
        }
        // The component went away between the lookup and the call: nothing ran, so the
        // caller may still find it elsewhere over NATS.
        Err(InvocationError::NoResponders { .. }) => {
            send(writer, frame::encode_not_served(call_id), None).await;
        }
        Err(error) => send(writer, frame::encode_error(call_id, &error), None).await,
    }
    after_sent(after_send).await;
}

/// Writes one frame (`head` then `rest`) whole and flushes it out of TLS, under the
/// connection's write lock.
async fn send(writer: &ConnectionWriter, head: Bytes, rest: Option<Bytes>) {
    let mut writer = writer.lock().await;
    let written = match rest {
        None => writer.write_all(&head).await,
        Some(rest) if rest.len() <= COALESCE_RESULT => {
            let mut frame = BytesMut::with_capacity(head.len() + rest.len());
            frame.extend_from_slice(&head);
            frame.extend_from_slice(&rest);
            writer.write_all(&frame).await
        }
        Some(rest) => match writer.write_all(&head).await {
            Ok(()) => writer.write_all(&rest).await,
            Err(error) => Err(error),
        },
    };
    let written = match written {
        Ok(()) => writer.flush().await,
        Err(error) => Err(error),
    };
    if let Err(error) = written {
        tracing::debug!(%error, "a direct caller went away before its answer");
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
