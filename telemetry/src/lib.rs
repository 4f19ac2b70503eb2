//! Telemetry of Trellis processes: traces, metrics and logs over OTLP/HTTP (protobuf), and a
//! Prometheus text endpoint. See docs/observability.md for what is emitted.
//!
//! - [`init`] installs the process's `tracing` subscriber: the human-readable stderr log as
//!   before, plus (when enabled) a `tracing-opentelemetry` layer exporting spans, a bridge
//!   exporting log events with the trace and span ids of the span they happened in, and an
//!   OpenTelemetry meter provider exporting the instruments of [`metrics`].
//! - [`spans`] makes the spans of the well-known operations (HTTP ingress, component
//!   invocations, calls between components, capability operations); each is one branch and
//!   no allocation when tracing is off ([`traces_enabled`]).
//! - [`propagation`] reads and writes W3C `traceparent` values, the form the trace context
//!   takes in NATS headers, direct-call frames and HTTP requests.
//!
//! Export never blocks the caller: spans and logs go through the SDK's batch processors
//! (bounded queues, dropped when full) on their own threads, and the HTTP requests to the
//! collector run on the process's tokio runtime ([`export`]). A collector that cannot be
//! reached costs one warning a minute.

pub mod config;
pub mod export;
pub mod log_limit;
pub mod metrics;
pub mod prometheus;
pub mod propagation;
pub mod spans;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

pub use config::{Signals, TelemetryConfig};

static TRACES: AtomicBool = AtomicBool::new(false);
static METRICS: AtomicBool = AtomicBool::new(false);
static LOGS: AtomicBool = AtomicBool::new(false);
static HOST_ID: OnceLock<Box<str>> = OnceLock::new();
static CHILD_ENV: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();

/// Variables to give a child process (a provider the host starts) so that it exports
/// telemetry as this process was told to ([`TelemetryConfig::child_env`]); empty before
/// [`init`].
pub fn child_env() -> Vec<(&'static str, String)> {
    CHILD_ENV.get().cloned().unwrap_or_default()
}

/// Whether spans are exported: the one branch the hot paths take before making a span.
#[inline]
pub fn traces_enabled() -> bool {
    TRACES.load(Ordering::Relaxed)
}

/// Whether metrics are recorded (exported over OTLP or served to Prometheus).
#[inline]
pub fn metrics_enabled() -> bool {
    METRICS.load(Ordering::Relaxed)
}

/// Whether log records are exported over OTLP.
#[inline]
pub fn logs_enabled() -> bool {
    LOGS.load(Ordering::Relaxed)
}

/// Records the id of the host this process runs, put on its spans (`trellis.host.id`). The
/// first call wins (one host per process in production).
pub fn set_host_id(id: &str) {
    let _ = HOST_ID.set(id.into());
}

/// The id given to [`set_host_id`], or `""`.
pub fn host_id() -> &'static str {
    HOST_ID.get().map_or("", |id| id)
}

/// The exporters of a process; dropping it flushes and stops them (at most a few seconds
/// when the collector does not answer).
#[must_use = "dropping the guard stops exporting"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    logger: Option<SdkLoggerProvider>,
    meter: Option<SdkMeterProvider>,
    prometheus: Option<prometheus::PrometheusServer>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.tracer.is_some())
            .field("logs", &self.logger.is_some())
            .field("metrics", &self.meter.is_some())
            .field(
                "prometheus",
                &self.prometheus.as_ref().map(|p| p.local_addr()),
            )
            .finish()
    }
}

impl Telemetry {
    /// The address the Prometheus endpoint listens on, if it was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.prometheus.as_ref().map(|p| p.local_addr())
    }

    /// Flushes what is queued and stops the exporters.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        TRACES.store(false, Ordering::Relaxed);
        LOGS.store(false, Ordering::Relaxed);
        // The SDK's shutdown waits (bounded) for its export threads; never on a runtime
        // worker without telling tokio.
        let mut stop = || {
            if let Some(tracer) = self.tracer.take() {
                let _ = tracer.shutdown();
            }
            if let Some(logger) = self.logger.take() {
                let _ = logger.shutdown();
            }
            if let Some(meter) = self.meter.take() {
                let _ = meter.shutdown();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(stop)
            }
            _ => stop(),
        }
        self.prometheus.take();
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Targets whose events are never exported as OTLP logs: the exporter's own path (a failed
/// export logging a line that is exported and fails...).
fn is_export_internal(target: &str) -> bool {
    target.starts_with("trellis_telemetry")
        || target.starts_with("opentelemetry")
        || target.starts_with("hyper")
        || target.starts_with("h2")
        || target.starts_with("rustls")
}

/// Installs the process's subscriber (stderr log with `RUST_LOG`, default `default_filter`)
/// and, as `config` says, the OTLP exporters and the Prometheus endpoint. Must run inside a
/// tokio runtime (the exporters' HTTP requests run on it). Errors only for a Prometheus
/// address that cannot be bound; a bad OTLP setting is a warning and that signal stays off.
pub async fn init(config: TelemetryConfig, default_filter: &str) -> anyhow::Result<Telemetry> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter))
    };
    // The exported spans are for the collector, not the stderr log (formatting their fields
    // for every request would cost more than the spans themselves).
    let fmt_filter = filter().add_directive(
        format!("{}=off", spans::TARGET)
            .parse()
            .map_err(|e| anyhow::anyhow!("the span filter directive: {e}"))?,
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(fmt_filter);
    let signals = config.signals();
    let _ = CHILD_ENV.set(config.child_env());
    let mut warnings = signals.warnings.clone();
    let resource = resource(&config);
    let handle = tokio::runtime::Handle::current();

    let tracer = if signals.traces {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(export::TokioHttpClient::new(handle.clone(), "traces"))
            .with_optional_endpoint(config.signal_endpoint("traces"))
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(exporter)
                    .build(),
            ),
            Err(error) => {
                warnings.push(format!("traces stay off: {error}"));
                None
            }
        }
    } else {
        None
    };
    let logger = if signals.logs {
        match opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(export::TokioHttpClient::new(handle.clone(), "logs"))
            .with_optional_endpoint(config.signal_endpoint("logs"))
            .build()
        {
            Ok(exporter) => Some(
                SdkLoggerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(exporter)
                    .build(),
            ),
            Err(error) => {
                warnings.push(format!("logs stay off: {error}"));
                None
            }
        }
    } else {
        None
    };
    let prometheus_reader = config
        .metrics_listen
        .map(|_| prometheus::PrometheusReader::new());
    let meter = if signals.metrics || prometheus_reader.is_some() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        if signals.metrics {
            match opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_http_client(export::TokioHttpClient::new(handle.clone(), "metrics"))
                .with_optional_endpoint(config.signal_endpoint("metrics"))
                .build()
            {
                Ok(exporter) => {
                    builder = builder.with_reader(
                        PeriodicReader::builder(exporter)
                            .with_interval(config.metrics_interval())
                            .build(),
                    );
                }
                Err(error) => warnings.push(format!("OTLP metrics stay off: {error}")),
            }
        }
        if let Some(reader) = &prometheus_reader {
            builder = builder.with_reader(reader.clone());
        }
        Some(builder.build())
    } else {
        None
    };

    let trace_layer = tracer.as_ref().map(|provider| {
        // Per span, only what an operator reads: the attributes `spans` sets. Source
        // locations, thread names, targets and busy/idle timings describe Trellis' own Rust
        // code and cost work on every span and on every poll of an instrumented future.
        // Context activation (making a span's OpenTelemetry context current on every enter)
        // is off too: it costs work on every poll, and only log records need it; the places
        // that log inside an invocation attach the context themselves, once per line
        // (`propagation::in_current_trace`).
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("trellis"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            // Only the spans of `spans` (made only while tracing is on), whatever RUST_LOG
            // says. The level hint keeps `trace!`/`debug!` call sites everywhere else
            // switched off for good instead of asked on every call.
            .with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    meta.is_span() && meta.target() == spans::TARGET
                })
                .with_max_level_hint(tracing::Level::INFO),
            )
    });
    let log_layer = logger.as_ref().map(|provider| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(provider)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !is_export_internal(meta.target())
            }))
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(trace_layer)
        .with(log_layer)
        .try_init();

    if let Some(provider) = &meter {
        metrics::install(provider);
        METRICS.store(true, Ordering::Relaxed);
    }
    if tracer.is_some() {
        TRACES.store(true, Ordering::Relaxed);
    }
    if logger.is_some() {
        LOGS.store(true, Ordering::Relaxed);
    }
    let prometheus = match (config.metrics_listen, prometheus_reader) {
        (Some(addr), Some(reader)) => {
            Some(prometheus::PrometheusServer::start(addr, reader).await?)
        }
        _ => None,
    };
    for warning in warnings {
        tracing::warn!(target: "trellis_telemetry", "{warning}");
    }
    if signals.any() {
        tracing::info!(
            target: "trellis_telemetry",
            traces = tracer.is_some(),
            metrics = signals.metrics,
            logs = logger.is_some(),
            "exporting telemetry over OTLP/HTTP"
        );
    }
    if let Some(server) = &prometheus {
        tracing::info!(target: "trellis_telemetry", addr = %server.local_addr(), "serving Prometheus metrics at /metrics");
    }
    Ok(Telemetry {
        tracer,
        logger,
        meter,
        prometheus,
    })
}

/// `service.name` (from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` when set, else the
/// process's default), `service.version`, and `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(config: &TelemetryConfig) -> Resource {
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let named_by_env = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attrs| attrs.contains("service.name="));
    if !named_by_env {
        builder = builder.with_service_name(config.service_name.clone());
    }
    builder.build()
}

/// `with_endpoint` only when one was configured on the command line; otherwise the exporter
/// reads `OTEL_EXPORTER_OTLP_{SIGNAL_}ENDPOINT` itself.
trait OptionalEndpoint: Sized {
    fn with_optional_endpoint(self, endpoint: Option<String>) -> Self;
}

impl<T: opentelemetry_otlp::WithExportConfig> OptionalEndpoint for T {
    fn with_optional_endpoint(self, endpoint: Option<String>) -> Self {
        match endpoint {
            Some(endpoint) => self.with_endpoint(endpoint),
            None => self,
        }
    }
}
