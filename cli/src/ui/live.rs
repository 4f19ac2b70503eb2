//! Live updates: one subscription to the lattice's events (and the reconciler's status
//! updates) fanned out to every connected browser as server-sent events, plus fresh snapshots
//! when something changed.
//!
//! Idle cost stays flat: the event subscription is one NATS interest, and snapshots (which
//! ask hosts and the reconciler) are gathered only while at least one browser is connected:
//! after events, debounced, and every few seconds.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, Notify};

use super::metrics::Metrics;
use super::snapshot::{self, ManifestCache, Snapshot};
use super::{build, error_response, Body};
use crate::lattice_client::LatticeClient;

/// Events kept for a browser that connects later.
const RECENT_EVENTS: usize = 200;
/// How often a connected browser gets a fresh snapshot even without events.
const REFRESH: Duration = Duration::from_secs(5);
/// How long to let a burst of events settle before gathering a snapshot.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// A snapshot younger than this is reused for a new request.
const REUSE: Duration = Duration::from_millis(1000);
/// The most browsers streaming at once.
const MAX_STREAMS: usize = 64;
/// A comment line sent this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// One lattice event as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// The event name (`component_scaled`, ...), or `app_status` for the reconciler's updates.
    pub name: String,
    /// The publishing host (or the app, for status updates).
    pub source: String,
    /// The event's time, as published.
    pub time: String,
    /// Its data, secret-looking values redacted; heartbeats carry only a summary.
    pub data: Value,
}

#[derive(Default)]
struct Tracked {
    /// When each host was last heard from (heartbeat or start).
    heartbeats: HashMap<String, Instant>,
    /// The last health each provider reported: `(host, provider) -> healthy`.
    health: HashMap<(String, String), bool>,
    /// The latest events, oldest first.
    recent: VecDeque<EventView>,
}

/// The live side of the dashboard, shared by every request.
pub struct Live {
    client: LatticeClient,
    frames: broadcast::Sender<Arc<str>>,
    changed: Notify,
    tracked: Mutex<Tracked>,
    latest: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    gathering: tokio::sync::Mutex<(ManifestCache, Metrics)>,
    streams: AtomicUsize,
}

impl Live {
    /// Subscribes to the lattice's events and starts the background tasks.
    pub async fn start(
        client: LatticeClient,
        metrics_urls: Vec<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let lattice = client.lattice().to_string();
        let events = client
            .nats()
            .subscribe(trellis_protocol::subjects::all_events(&lattice))
            .await
            .context("cannot subscribe to lattice events")?;
        let statuses = client
            .nats()
            .subscribe(format!("wadm.status.{lattice}.*"))
            .await
            .context("cannot subscribe to app status updates")?;
        let (frames, _) = broadcast::channel(256);
        let live = Arc::new(Self {
            client,
            frames,
            changed: Notify::new(),
            tracked: Mutex::new(Tracked::default()),
            latest: Mutex::new(None),
            gathering: tokio::sync::Mutex::new((ManifestCache::new(), Metrics::new(metrics_urls))),
            streams: AtomicUsize::new(0),
        });
        tokio::spawn(watch(Arc::downgrade(&live), events, statuses));
        tokio::spawn(refresh(Arc::downgrade(&live)));
        Ok(live)
    }

    /// A snapshot no older than a second, gathering one when needed.
    pub async fn snapshot_now(&self) -> anyhow::Result<Arc<Snapshot>> {
        if let Some(snapshot) = self.cached(REUSE) {
            return Ok(snapshot);
        }
        self.gather().await
    }

    fn cached(&self, max_age: Duration) -> Option<Arc<Snapshot>> {
        let latest = self.latest.lock().ok()?;
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, s)| Arc::clone(s))
    }

    /// Gathers a fresh snapshot (one at a time) and decorates it with what the event stream
    /// taught: heartbeat ages and provider health.
    async fn gather(&self) -> anyhow::Result<Arc<Snapshot>> {
        let mut guard = self.gathering.lock().await;
        // Someone else may have gathered while this waited.
        if let Some(snapshot) = self.cached(Duration::from_millis(200)) {
            return Ok(snapshot);
        }
        let (cache, metrics) = &mut *guard;
        let mut snapshot = snapshot::gather(&self.client, cache).await;
        metrics.decorate(&mut snapshot).await;
        if let Ok(tracked) = self.tracked.lock() {
            for host in &mut snapshot.hosts {
                host.heartbeat_age_ms = tracked
                    .heartbeats
                    .get(&host.id)
                    .map(|at| at.elapsed().as_millis() as u64);
            }
            for workload in snapshot
                .workloads
                .iter_mut()
                .filter(|w| w.kind == "provider")
            {
                let states: Vec<bool> = workload
                    .placements
                    .iter()
                    .filter_map(|p| {
                        tracked
                            .health
                            .get(&(p.host_id.clone(), workload.id.clone()))
                            .copied()
                    })
                    .collect();
                if !states.is_empty() {
                    let healthy = states.iter().all(|h| *h);
                    workload.health = Some(if healthy { "healthy" } else { "unhealthy" }.into());
                }
            }
        }
        let snapshot = Arc::new(snapshot);
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some((Instant::now(), Arc::clone(&snapshot)));
        }
        Ok(snapshot)
    }

    /// Marks the lattice as changed: connected browsers get a fresh snapshot soon.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Gathers and sends a snapshot to every connected browser now (after an action).
    pub async fn push_snapshot(&self) {
        if self.frames.receiver_count() == 0 {
            return;
        }
        if let Ok(snapshot) = self.gather().await {
            if let Some(frame) = sse_frame("snapshot", &*snapshot) {
                let _ = self.frames.send(frame);
            }
        }
    }

    /// `GET /api/events`: a snapshot and the recent events, then everything new.
    pub async fn stream(self: &Arc<Self>) -> Response<Body> {
        if self.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::SeqCst);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many dashboard pages are open; close some",
            );
        }
        let guard = StreamGuard(Arc::clone(self));
        // Subscribe first so nothing published while gathering is missed.
        let receiver = self.frames.subscribe();
        let mut first: Vec<Arc<str>> = Vec::new();
        match self.snapshot_now().await {
            Ok(snapshot) => first.extend(sse_frame("snapshot", &*snapshot)),
            Err(e) => first.extend(sse_frame("problem", &format!("{e:#}"))),
        }
        if let Ok(tracked) = self.tracked.lock() {
            let backlog: Vec<&EventView> = tracked.recent.iter().collect();
            first.extend(sse_frame("backlog", &backlog));
        }
        let state = (first.into_iter(), receiver, guard);
        let stream =
            futures::stream::unfold(state, |(mut first, mut receiver, guard)| async move {
                if let Some(frame) = first.next() {
                    return Some((frame_bytes(&frame), (first, receiver, guard)));
                }
                loop {
                    match tokio::time::timeout(KEEPALIVE, receiver.recv()).await {
                        Ok(Ok(frame)) => {
                            return Some((frame_bytes(&frame), (first, receiver, guard)))
                        }
                        // Too slow a reader: it skipped some events; the next snapshot catches up.
                        Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                        Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                        Err(_) => {
                            let ping = Arc::<str>::from(": keepalive\n\n");
                            return Some((frame_bytes(&ping), (first, receiver, guard)));
                        }
                    }
                }
            });
        let mut response = build(
            StatusCode::OK,
            "text/event-stream",
            StreamBody::new(stream).boxed_unsync(),
        );
        response.headers_mut().insert(
            "x-accel-buffering",
            hyper::header::HeaderValue::from_static("no"),
        );
        response
    }

    /// Records one event and sends it to connected browsers.
    fn record(&self, event: EventView) {
        if let Ok(mut tracked) = self.tracked.lock() {
            match event.name.as_str() {
                "host_heartbeat" | "host_started" => {
                    tracked
                        .heartbeats
                        .insert(event.source.clone(), Instant::now());
                }
                "host_stopped" => {
                    tracked.heartbeats.remove(&event.source);
                }
                "health_check_passed" | "health_check_failed" | "health_check_status" => {
                    let provider = event
                        .data
                        .get("provider_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let host = event
                        .data
                        .get("host_id")
                        .and_then(Value::as_str)
                        .unwrap_or(&event.source)
                        .to_string();
                    let healthy = match event.name.as_str() {
                        "health_check_passed" => true,
                        "health_check_failed" => false,
                        _ => event
                            .data
                            .get("healthy")
                            .and_then(Value::as_bool)
                            .unwrap_or(true),
                    };
                    tracked.health.insert((host, provider), healthy);
                }
                _ => {}
            }
            if tracked.recent.len() >= RECENT_EVENTS {
                tracked.recent.pop_front();
            }
            tracked.recent.push_back(event.clone());
        }
        if self.frames.receiver_count() > 0 {
            if let Some(frame) = sse_frame("lattice", &event) {
                let _ = self.frames.send(frame);
            }
        }
        // Heartbeats and periodic health say nothing new; everything else may change the page.
        if !matches!(
            event.name.as_str(),
            "host_heartbeat" | "health_check_status"
        ) {
            self.changed();
        }
    }
}

/// Counts a streaming browser; dropping it (the browser went away) frees its slot.
struct StreamGuard(Arc<Live>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn frame_bytes(frame: &Arc<str>) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::copy_from_slice(frame.as_bytes())))
}

/// One server-sent event: `event: NAME` and the value as one line of JSON.
fn sse_frame<T: Serialize + ?Sized>(name: &str, value: &T) -> Option<Arc<str>> {
    let json = serde_json::to_string(value).ok()?;
    Some(Arc::from(format!("event: {name}\ndata: {json}\n\n")))
}

/// Reads lattice events and status updates until the server goes away.
async fn watch(
    live: std::sync::Weak<Live>,
    mut events: async_nats::Subscriber,
    mut statuses: async_nats::Subscriber,
) {
    loop {
        let view = tokio::select! {
            Some(msg) = events.next() => event_view(&msg.payload),
            Some(msg) = statuses.next() => status_view(&msg.subject, &msg.payload),
            else => return,
        };
        let Some(live) = live.upgrade() else { return };
        if let Some(view) = view {
            live.record(view);
        }
    }
}

/// Sends connected browsers a snapshot after changes (debounced) and every [`REFRESH`].
async fn refresh(live: std::sync::Weak<Live>) {
    loop {
        // Upgraded once per round, so the server going away ends this task.
        let Some(live) = live.upgrade() else { return };
        let changed = tokio::select! {
            _ = live.changed.notified() => true,
            _ = tokio::time::sleep(REFRESH) => false,
        };
        if changed {
            tokio::time::sleep(DEBOUNCE).await;
        }
        live.push_snapshot().await;
    }
}

/// A CloudEvent as the page shows it; `None` when it does not parse.
fn event_view(payload: &[u8]) -> Option<EventView> {
    let event: Value = serde_json::from_slice(payload).ok()?;
    let kind = event.get("type").and_then(Value::as_str)?;
    let name = kind
        .strip_prefix(trellis_protocol::events::EVENT_TYPE_PREFIX)
        .unwrap_or(kind)
        .to_string();
    let data = event.get("data").cloned().unwrap_or(Value::Null);
    let data = if name == "host_heartbeat" {
        // The whole inventory is in the snapshot; the log needs only the counts.
        serde_json::json!({
            "friendly_name": data.get("friendly_name"),
            "components": data.get("components").and_then(Value::as_array).map(Vec::len),
            "providers": data.get("providers").and_then(Value::as_array).map(Vec::len),
        })
    } else {
        snapshot::redact_json(&data)
    };
    Some(EventView {
        name,
        source: text(&event, "source"),
        time: text(&event, "time"),
        data,
    })
}

/// A reconciler status update (`wadm.status.{lattice}.{app}`) as an event.
fn status_view(subject: &str, payload: &[u8]) -> Option<EventView> {
    let app = subject.rsplit('.').next().unwrap_or_default().to_string();
    let data: Value = serde_json::from_slice(payload).ok()?;
    Some(EventView {
        name: "app_status".into(),
        source: app,
        time: String::new(),
        data: serde_json::json!({
            "status": data.pointer("/status/type").or_else(|| data.pointer("/info/type")),
            "message": data.pointer("/status/message").or_else(|| data.pointer("/info/message")),
        }),
    })
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_and_heartbeats_summarized() {
        let heartbeat = serde_json::json!({
            "specversion": "1.0", "id": "1", "type": "com.wasmcloud.lattice.host_heartbeat",
            "source": "NHOST", "time": "t",
            "data": {"friendly_name": "h", "components": [{"id": "a"}, {"id": "b"}], "providers": []}
        });
        let view = event_view(heartbeat.to_string().as_bytes()).expect("view");
        assert_eq!(view.name, "host_heartbeat");
        assert_eq!(view.source, "NHOST");
        assert_eq!(view.data["components"], 2);
        let config = serde_json::json!({
            "type": "com.wasmcloud.lattice.config_set", "source": "N",
            "data": {"config_name": "db", "password": "hunter2"}
        });
        let view = event_view(config.to_string().as_bytes()).expect("view");
        assert!(!view.data.to_string().contains("hunter2"));
        assert!(event_view(b"not json").is_none());
    }

    #[test]
    fn frames_are_one_json_line() {
        let frame = sse_frame("lattice", &serde_json::json!({"a": "x\ny"})).expect("frame");
        assert_eq!(&*frame, "event: lattice\ndata: {\"a\":\"x\\ny\"}\n\n");
    }

    #[test]
    fn status_updates_name_the_app() {
        let view = status_view(
            "wadm.status.default.hello",
            br#"{"status":{"type":"deployed"},"scalers":[]}"#,
        )
        .expect("view");
        assert_eq!(view.source, "hello");
        assert_eq!(view.data["status"], "deployed");
    }
}
