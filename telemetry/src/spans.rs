//! The spans of the operations Trellis traces. Every function returns [`Span::none`] at the
//! cost of one atomic load when tracing is off, and otherwise a span whose fields follow the
//! OpenTelemetry semantic conventions where they exist (HTTP, RPC, messaging) and
//! `trellis.*` names otherwise. Names and attributes are listed in docs/observability.md.
//!
//! Only spans of this module are exported (the OTLP trace layer filters on its target), so
//! the `tracing` spans elsewhere in the code cost nothing extra.

use tracing::field::Empty;
use tracing::Span;

use crate::propagation::set_remote_parent;
use crate::{host_id, traces_enabled};

/// The target of every span this module makes (what the OTLP layer lets through).
pub const TARGET: &str = "trellis_telemetry::spans";

/// The server span of one HTTP request at the ingress (the http-server provider), a child
/// of the request's own `traceparent` header when it has one. Fill in the status with
/// [`record_http_status`].
pub fn http_server(
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
    component_id: &str,
) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    let header = |name: http::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let span = tracing::info_span!(
        target: TARGET,
        "http.server",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = path,
        url.scheme = "http",
        server.address = header(http::header::HOST),
        user_agent.original = header(http::header::USER_AGENT),
        http.response.status_code = Empty,
        trellis.component.id = component_id,
        trellis.host.id = host_id(),
    );
    set_remote_parent(
        &span,
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
    );
    span
}

/// Records the response status on an [`http_server`] span (5xx marks it an error).
pub fn record_http_status(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// The span of one component invocation: an instance of `component_id` running
/// `interface`.`function` on this host, with `traceparent` (if any) as its remote parent.
pub fn invocation(
    component_id: &str,
    interface: &str,
    function: &str,
    traceparent: Option<&str>,
) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "component.invocation",
        otel.name = format!("{component_id} {interface}.{function}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        error.message = Empty,
        trellis.component.id = component_id,
        trellis.interface = interface,
        trellis.function = function,
        trellis.host.id = host_id(),
    );
    set_remote_parent(&span, traceparent);
    span
}

/// The client span of a call from `source_id` to `target_id` over the lattice; its
/// `traceparent` ([`crate::propagation::traceparent_of`]) goes with the call.
pub fn rpc_client(source_id: &str, target_id: &str, interface: &str, function: &str) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "rpc.client",
        otel.name = format!("{interface}/{function}"),
        otel.kind = "client",
        otel.status_code = Empty,
        error.message = Empty,
        rpc.system = "trellis",
        rpc.service = interface,
        rpc.method = function,
        trellis.source.id = source_id,
        trellis.target.id = target_id,
        trellis.transport = Empty,
        trellis.host.id = host_id(),
    )
}

/// The server span of a lattice call arriving for `target_id` (over NATS or a direct
/// connection), a child of the caller's client span.
pub fn rpc_server(
    target_id: &str,
    interface: &str,
    function: &str,
    source_id: Option<&str>,
    traceparent: Option<&str>,
) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "rpc.server",
        otel.name = format!("{interface}/{function}"),
        otel.kind = "server",
        otel.status_code = Empty,
        error.message = Empty,
        rpc.system = "trellis",
        rpc.service = interface,
        rpc.method = function,
        trellis.source.id = source_id.unwrap_or(""),
        trellis.target.id = target_id,
        trellis.host.id = host_id(),
    );
    set_remote_parent(&span, traceparent);
    span
}

/// The client span of a capability operation (`capability` is the WIT package, e.g.
/// `wasi:keyvalue`, `operation` its function), a child of the invocation making it.
pub fn capability(capability: &str, operation: &str) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "capability",
        otel.name = format!("{capability}.{operation}"),
        otel.kind = "client",
        otel.status_code = Empty,
        error.message = Empty,
        trellis.capability = capability,
        trellis.operation = operation,
        trellis.host.id = host_id(),
    )
}

/// The producer span of a message published on NATS `subject` by `component_id`.
pub fn messaging_publish(subject: &str, component_id: &str) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "messaging.publish",
        otel.name = "publish",
        otel.kind = "producer",
        otel.status_code = Empty,
        error.message = Empty,
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = subject,
        trellis.component.id = component_id,
        trellis.host.id = host_id(),
    )
}

/// The consumer span of a message from `subject` delivered to `component_id`'s handler, a
/// child of the publisher's span when the message carried its `traceparent`.
pub fn messaging_process(subject: &str, component_id: &str, traceparent: Option<&str>) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "messaging.process",
        otel.name = "process",
        otel.kind = "consumer",
        otel.status_code = Empty,
        error.message = Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = subject,
        trellis.component.id = component_id,
        trellis.host.id = host_id(),
    );
    set_remote_parent(&span, traceparent);
    span
}

/// The server span of a control-interface request (`operation`, e.g. `component.scale`).
pub fn control(operation: &str, traceparent: Option<&str>) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "control",
        otel.name = format!("ctl {operation}"),
        otel.kind = "server",
        otel.status_code = Empty,
        error.message = Empty,
        trellis.control.operation = operation,
        trellis.host.id = host_id(),
    );
    set_remote_parent(&span, traceparent);
    span
}

/// The span of one reconcile pass of `app` by `trellis wadm`; record the plan with
/// [`record_reconcile`].
pub fn reconcile(app: &str, version: &str) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "wadm.reconcile",
        otel.name = format!("reconcile {app}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        error.message = Empty,
        trellis.app.name = app,
        trellis.app.version = version,
        trellis.reconcile.commands = Empty,
        trellis.reconcile.plan = Empty,
    )
}

/// Records the commands a reconcile pass sent and a short description of its plan.
pub fn record_reconcile(span: &Span, commands: usize, plan: &str) {
    if span.is_none() {
        return;
    }
    span.record("trellis.reconcile.commands", commands as u64);
    span.record("trellis.reconcile.plan", plan);
}

/// Marks `span` failed with `message`.
pub fn record_error(span: &Span, message: &dyn std::fmt::Display) {
    if span.is_none() {
        return;
    }
    span.record("otel.status_code", "error");
    span.record("error.message", tracing::field::display(message));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cost_nothing_while_tracing_is_off() {
        // No `init` in this test process: tracing is off.
        assert!(!traces_enabled());
        assert!(invocation("c", "i", "f", None).is_none());
        assert!(rpc_client("a", "b", "i", "f").is_none());
        assert!(rpc_server("b", "i", "f", None, None).is_none());
        assert!(capability("wasi:keyvalue", "get").is_none());
        assert!(http_server("GET", "/", &http::HeaderMap::new(), "c").is_none());
        assert!(crate::propagation::current_traceparent().is_none());
    }
}
