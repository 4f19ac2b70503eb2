//! W3C trace context (`traceparent`, version 00) in and out of `tracing` spans.
//!
//! `traceparent: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`. It travels in
//! the `traceparent` header of lattice calls over NATS, in the traceparent string of direct
//! call frames, and in HTTP requests (also those the http-server forwards over the lattice).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Parses a `traceparent`; `None` for anything malformed (including all-zero ids and the
/// reserved version `ff`).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version) || !hex(trace_id) || !hex(span_id) || !hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The `traceparent` of a span context; `None` when it is not valid.
pub fn format_traceparent(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` naming `span` as the parent, when tracing is on and `span` is real.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !crate::traces_enabled() || span.is_none() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    format_traceparent(span_ref.span_context())
}

/// The `traceparent` of the current span (see [`traceparent_of`]).
pub fn current_traceparent() -> Option<String> {
    if !crate::traces_enabled() {
        return None;
    }
    traceparent_of(&tracing::Span::current())
}

/// Makes the remote span `traceparent` names the parent of `span` (nothing when either is
/// absent or malformed). Call it before the span is first entered.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if span.is_none() {
        return;
    }
    if let Some(remote) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

/// Runs `emit` with the current span's OpenTelemetry context attached, so that the log
/// records it emits carry the span's trace and span ids. Spans are not made current in
/// OpenTelemetry on every enter (that would cost work on every poll of a traced request);
/// code that logs inside an invocation (guest output, `wasi:logging`, failure reports)
/// calls this, once per record. Plain `emit()` unless both logs and traces are exported.
pub fn in_current_trace<R>(emit: impl FnOnce() -> R) -> R {
    if !crate::logs_enabled() || !crate::traces_enabled() {
        return emit();
    }
    let span = tracing::Span::current();
    if span.is_none() {
        return emit();
    }
    let _attached = span.context().attach();
    emit()
}

/// The trace id of the current span as 32 hex digits, if tracing (for tests and logs).
pub fn current_trace_id() -> Option<String> {
    current_traceparent().and_then(|tp| tp.split('-').nth(1).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(text).expect("valid");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(format_traceparent(&context).as_deref(), Some(text));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
