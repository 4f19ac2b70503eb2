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
use tokio::sync::oneshot;
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

/// Marks a 503 from a host that no longer runs the component (as opposed to one the component
/// itself produced), so the forwarding side may try another host.
const NOT_HERE_HEADER: &str = "trellis-component-not-here";
/// How long a stopped component's subscription keeps answering "not here" before it is
/// unsubscribed. async-nats forgets a draining subscription once its UNSUB is written, so a
/// request the server routed to it just before reading that UNSUB is dropped on arrival, and
/// the forwarding host waits out its whole timeout. Answering "not here" for a while first
/// (the forwarder then asks another replica) moves the unsubscription away from the moment a
/// component stops, when requests for it are most likely in flight.
const STOPPED_GRACE: Duration = Duration::from_secs(2);

/// Whether `head` is a serving host's "the component does not run here any more".
fn is_not_here(head: &ResponseHead) -> bool {
    head.status == StatusCode::SERVICE_UNAVAILABLE && head.headers.contains_key(NOT_HERE_HEADER)
}

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
    let message = head.to_message(&first);
    // A host that stopped the component just as the request reached it answers "not here";
    // a request whose body travelled whole is sent once more, so another host running the
    // component serves it (or NATS says no one does).
    let mut attempts = if guard.is_none() { 2 } else { 1 };
    let reply = loop {
        attempts -= 1;
        let nats_request = async_nats::Request::new()
            .payload(message.clone())
            .timeout(Some(timeout + REPLY_MARGIN));
        match client.send_request(subject.clone(), nats_request).await {
            Ok(reply) => match ResponseHead::decode(reply.payload) {
                Ok((head, _)) if attempts > 0 && is_not_here(&head) => continue,
                decoded => break Ok(decoded),
            },
            Err(error) => break Err(error),
        }
    };
    let decoded = match reply {
        Ok(decoded) => decoded,
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
    let (mut head, first) = match decoded {
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
    head.headers.remove(NOT_HERE_HEADER);
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
///
/// A component that stops has its subscription drained, not dropped: a request the NATS server
/// delivered just before the unsubscription reached it still gets an answer (a 503 saying the
/// component no longer runs here), where dropping the subscription would lose it and leave the
/// forwarding host waiting out its whole timeout. Requests already running finish.
pub async fn serve_components_over_lattice(host: Arc<Host>) {
    let mut served: HashMap<String, ComponentSubscription> = HashMap::new();
    // Owns every subscription task, serving or draining: dropping this future aborts them all.
    let mut tasks = JoinSet::new();
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
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
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
                subscription.close();
            }
            keep
        });
        for id in running.keys() {
            if served.contains_key(id) {
                continue;
            }
            let opened = tokio::time::timeout(
                SUBSCRIBE_TIMEOUT,
                ComponentSubscription::open(host.clone(), id, &mut tasks),
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

/// One component's lattice HTTP subscription. [`ComponentSubscription::close`] (or dropping
/// it) drains it: the subscription ends once what NATS already delivered is answered.
struct ComponentSubscription {
    task: tokio::task::AbortHandle,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ComponentSubscription {
    fn drop(&mut self) {
        self.close();
    }
}

impl ComponentSubscription {
    async fn open(
        host: Arc<Host>,
        component_id: &str,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Self> {
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
        let (stop, stopped) = oneshot::channel();
        let task = tasks.spawn(answer_requests(
            host,
            component_id.to_string(),
            subscriber,
            stopped,
        ));
        Ok(Self {
            task,
            stop: Some(stop),
        })
    }

    /// Starts draining: no new requests reach this host for the component.
    fn close(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn answer_requests(
    host: Arc<Host>,
    component_id: String,
    mut subscriber: Subscriber,
    mut stop: oneshot::Receiver<()>,
) {
    // Owned here: aborting this task aborts every request in flight.
    let mut requests = JoinSet::new();
    let mut stopping = false;
    let mut draining = false;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            _ = &mut stop, if !stopping => {
                // The component is gone: requests still arriving are answered "not here"
                // until the grace period ends.
                stopping = true;
                grace.as_mut().reset(tokio::time::Instant::now() + STOPPED_GRACE);
            }
            _ = &mut grace, if stopping && !draining => {
                draining = true;
                if let Err(error) = subscriber.drain().await {
                    tracing::debug!(component_id, error = %error, "could not drain the lattice HTTP subscription");
                    break;
                }
            }
            message = subscriber.next() => {
                let Some(message) = message else {
                    break;
                };
                requests.spawn(answer_request(host.clone(), component_id.clone(), message));
            }
        }
    }
    // The subscription is gone; let the requests it took finish (each is bounded by its own
    // timeout).
    while requests.join_next().await.is_some() {}
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
        let mut response = text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "component {component_id} is not running on host {} any more",
                host.identity.host_id
            ),
        );
        response
            .headers_mut()
            .insert(NOT_HERE_HEADER, http::HeaderValue::from_static("1"));
        return response;
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
