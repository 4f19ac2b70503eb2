//! The remote path: forwarding a request to whichever host runs the component
//! ([`forward`]), and the hosts' side that answers such requests
//! ([`serve_components_over_lattice`]). The wire form is in [`super::wire`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Message, RequestErrorKind, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::{JoinHandle, JoinSet};
use trellis_host::Host;

use super::dispatch::{call_component, text_response, ResponseBody};
use super::wire::{
    http_subject, inline_budget, offer_body, serve_body_pulls, BodyError, BodyReader, LatticeBody,
    RequestHead, ResponseHead, INLINE_WINDOW, PULL_IDLE_TIMEOUT,
};

/// Extra time the forwarding side waits past the request's timeout, so the serving host's
/// own 504 (with its message) arrives before the NATS request gives up.
const REPLY_MARGIN: Duration = Duration::from_millis(500);
/// How often the set of served components is re-checked even without a change (to retry a
/// subscription that failed or ended).
const COMPONENT_RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait for one subscription to be registered with the NATS server. The resync loop
/// waits on it, so without a bound a stalled connection would also keep it from closing the
/// subscriptions of components that stopped.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body arriving over the lattice that keeps a helper task (serving the request
/// body's chunks) alive until the response is done.
struct GuardedBody {
    inner: LatticeBody,
    _guard: Option<AbortOnDrop>,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `request` to the host running `component_id` and returns its response: 503 when no
/// host runs it, 504 when no reply comes within `timeout`, 502 for transport failures.
pub(crate) async fn forward<B>(
    client: &async_nats::Client,
    lattice: &str,
    component_id: &str,
    request: Request<B>,
    timeout: Duration,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let (parts, body) = request.into_parts();
    let mut head = RequestHead {
        method: parts.method,
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers: parts.headers,
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        pull_subject: None,
    };
    if let Some(authority) = parts.uri.authority() {
        if !head.headers.contains_key(http::header::HOST) {
            if let Ok(value) = http::HeaderValue::from_str(authority.as_str()) {
                head.headers.insert(http::header::HOST, value);
            }
        }
    }
    let mut reader = BodyReader::new(body);
    let budget = inline_budget(client, head.encoded_len());
    let (first, ended) = match reader.read_up_to(budget, Some(INLINE_WINDOW)).await {
        Ok(read) => read,
        Err(error) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("reading the request body failed: {error}"),
            )
        }
    };
    let mut guard = None;
    if !ended {
        match offer_body(client, reader).await {
            Ok((inbox, task)) => {
                head.pull_subject = Some(inbox);
                guard = Some(AbortOnDrop(task));
            }
            Err(error) => {
                return text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot forward the request body over the lattice: {error:#}"),
                )
            }
        }
    }
    let subject = http_subject(lattice, component_id);
    let nats_request = async_nats::Request::new()
        .payload(head.to_message(&first))
        .timeout(Some(timeout + REPLY_MARGIN));
    let reply = match client.send_request(subject, nats_request).await {
        Ok(reply) => reply,
        Err(error) => {
            return match error.kind() {
                RequestErrorKind::NoResponders => text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "component {component_id} is not running on any host of lattice {lattice}"
                    ),
                ),
                RequestErrorKind::TimedOut => text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "component {component_id} did not answer within {} ms",
                        timeout.as_millis()
                    ),
                ),
                _ => text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("forwarding the request to component {component_id} failed: {error}"),
                ),
            }
        }
    };
    let (head, first) = match ResponseHead::decode(reply.payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!(
                "the host running component {component_id} sent a malformed response: {error:#}"
            ),
            )
        }
    };
    let body = match head.pull_subject {
        Some(subject) => LatticeBody::pulled(client.clone(), first, subject, PULL_IDLE_TIMEOUT),
        None => LatticeBody::full(first),
    };
    let body = GuardedBody {
        inner: body,
        _guard: guard,
    };
    let mut response = Response::new(ResponseBody::other(body));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

/// Keeps every HTTP-serving component of `host` reachable over the lattice: one queue
/// subscription on `trellis.http.{lattice}.{component_id}` (queue group = the component id)
/// per running component that exports `wasi:http/incoming-handler`, opened when it starts and
/// closed when it stops. Runs until the returned future is dropped (which closes them all).
pub async fn serve_components_over_lattice(host: Arc<Host>) {
    let mut served: HashMap<String, ComponentSubscription> = HashMap::new();
    // Follow the host's component set: resync at once on every start/stop, and now and then
    // to retry subscriptions that failed.
    let mut changes = host.components.changes();
    let mut resync = tokio::time::interval(COMPONENT_RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = resync.tick() => {}
        }
        let running: HashMap<String, bool> = host
            .components
            .all()
            .iter()
            .map(|c| (c.prepared.id().to_string(), c.prepared.exports_http()))
            .filter(|(_, http)| *http)
            .collect();
        served.retain(|id, subscription| {
            let keep = running.contains_key(id) && !subscription.task.is_finished();
            if !keep {
                tracing::debug!(component_id = %id, "no longer serving HTTP over the lattice");
            }
            keep
        });
        for id in running.keys() {
            if served.contains_key(id) {
                continue;
            }
            let opened = tokio::time::timeout(
                SUBSCRIBE_TIMEOUT,
                ComponentSubscription::open(host.clone(), id),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "NATS did not confirm the subscription within {} s",
                    SUBSCRIBE_TIMEOUT.as_secs()
                ))
            });
            match opened {
                Ok(subscription) => {
                    served.insert(id.clone(), subscription);
                }
                Err(error) => {
                    tracing::warn!(component_id = %id, error = %format!("{error:#}"), "cannot serve the component's HTTP over the lattice; retrying");
                }
            }
        }
    }
}

/// One component's lattice HTTP subscription; dropping it unsubscribes and cancels its
/// requests in flight.
struct ComponentSubscription {
    task: JoinHandle<()>,
}

impl Drop for ComponentSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ComponentSubscription {
    async fn open(host: Arc<Host>, component_id: &str) -> anyhow::Result<Self> {
        let subject = http_subject(&host.lattice, component_id);
        let subscriber = host
            .client
            .queue_subscribe(subject.clone(), component_id.to_string())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        host.client
            .flush()
            .await
            .with_context(|| format!("registering the subscription to {subject}"))?;
        tracing::debug!(component_id, %subject, "serving HTTP over the lattice");
        let task = tokio::spawn(answer_requests(host, component_id.to_string(), subscriber));
        Ok(Self { task })
    }
}

async fn answer_requests(host: Arc<Host>, component_id: String, mut subscriber: Subscriber) {
    // Owned here: aborting this task aborts every request in flight.
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            message = subscriber.next() => {
                let Some(message) = message else {
                    break;
                };
                requests.spawn(answer_request(host.clone(), component_id.clone(), message));
            }
        }
    }
}

async fn answer_request(host: Arc<Host>, component_id: String, message: Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let response = match RequestHead::decode(message.payload) {
        Err(error) => text_response(
            StatusCode::BAD_REQUEST,
            format!("malformed forwarded request: {error:#}"),
        ),
        Ok((head, first)) => run_request(&host, &component_id, head, first).await,
    };
    if let Err(error) = send_response(&host.client, reply, response).await {
        tracing::debug!(component_id, error = %format!("{error:#}"), "could not deliver an HTTP response over the lattice");
    }
}

async fn run_request(
    host: &Host,
    component_id: &str,
    head: RequestHead,
    first: Bytes,
) -> Response<ResponseBody> {
    let Some(running) = host.components.get(component_id) else {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "component {component_id} is not running on host {} any more",
                host.identity.host_id
            ),
        );
    };
    let body = match head.pull_subject {
        Some(subject) => {
            LatticeBody::pulled(host.client.clone(), first, subject, PULL_IDLE_TIMEOUT)
        }
        None => LatticeBody::full(first),
    };
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.headers_mut() = head.headers;
    match head.uri.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(error) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("invalid request URI `{}`: {error}", head.uri),
            )
        }
    }
    let timeout = Duration::from_millis(u64::from(head.timeout_ms.max(1)));
    call_component(&running.prepared, request, Some(timeout)).await
}

/// Replies with `response`: inline when it fits and is produced quickly, else the head and
/// the first part, then the rest served to the caller's pulls.
async fn send_response(
    client: &async_nats::Client,
    reply: Subject,
    response: Response<ResponseBody>,
) -> anyhow::Result<()> {
    let (parts, body) = response.into_parts();
    let mut head = ResponseHead {
        status: parts.status,
        headers: parts.headers,
        pull_subject: None,
    };
    let budget = inline_budget(client, head.encoded_len());
    let mut reader = BodyReader::new(body);
    match reader.read_up_to(budget, Some(INLINE_WINDOW)).await {
        Ok((data, true)) => client
            .publish(reply, head.to_message(&data))
            .await
            .context("publishing the response"),
        Ok((data, false)) => {
            let inbox = client.new_inbox();
            let pulls = client
                .subscribe(inbox.clone())
                .await
                .context("subscribing to serve the response body in chunks")?;
            head.pull_subject = Some(inbox);
            client
                .publish(reply, head.to_message(&data))
                .await
                .context("publishing the response head")?;
            serve_body_pulls(client.clone(), pulls, reader).await;
            Ok(())
        }
        Err(error) => {
            let failed = text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the component failed while producing the response body: {error}"),
            );
            let (parts, _) = failed.into_parts();
            let head = ResponseHead {
                status: parts.status,
                headers: parts.headers,
                pull_subject: None,
            };
            client
                .publish(
                    reply,
                    head.to_message(
                        format!(
                            "the component failed while producing the response body: {error}\n"
                        )
                        .as_bytes(),
                    ),
                )
                .await
                .context("publishing the error response")
        }
    }
}
