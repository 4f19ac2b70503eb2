//! `--metrics-listen ADDR`: the same instruments as OTLP, as Prometheus text (format 0.0.4)
//! at `GET http://ADDR/metrics`, collected at each scrape.
//!
//! Names: dots become `_`, counters end in `_total`, histograms in seconds end in
//! `_seconds` (`_bucket`, `_sum`, `_count`); attributes become labels the same way
//! (`component.id` -> `component_id`).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use tokio::task::JoinHandle;

/// A pull reader shared by the meter provider and the endpoint.
#[derive(Debug, Clone)]
pub struct PrometheusReader(Arc<ManualReader>);

impl PrometheusReader {
    /// A cumulative reader (what Prometheus expects).
    pub fn new() -> Self {
        Self(Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        ))
    }

    /// Collects now and renders Prometheus text.
    pub fn render(&self) -> String {
        let mut metrics = ResourceMetrics::default();
        if self.0.collect(&mut metrics).is_err() {
            return String::new();
        }
        render(&metrics)
    }
}

impl Default for PrometheusReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricReader for PrometheusReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The endpoint's task; dropping it stops listening.
#[derive(Debug)]
pub struct PrometheusServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PrometheusServer {
    /// Binds `addr` and serves `reader` there.
    pub async fn start(addr: SocketAddr, reader: PrometheusReader) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for Prometheus scrapes on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // Scrapers are few; bound the connections anyway.
                while connections.len() >= 64 {
                    connections.join_next().await;
                }
                while connections.try_join_next().is_some() {}
                let reader = reader.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let reader = reader.clone();
                        async move { Ok::<_, Infallible>(answer(&reader, &request)) }
                    });
                    // Bounded as a whole (a slow or idle scraper costs one task, a minute).
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn answer(reader: &PrometheusReader, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let response = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            reader.render(),
        ),
        (&http::Method::GET, _) => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
        _ => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    }
}

/// A Prometheus metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, anything else `_`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<(&str, &str)>,
) -> String {
    let mut parts: Vec<String> = attributes
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                sanitize(kv.key.as_str()),
                escape_label(&kv.value.to_string())
            )
        })
        .collect();
    if let Some((key, value)) = extra {
        parts.push(format!("{key}=\"{}\"", escape_label(value)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

trait Num: Copy {
    fn text(self) -> String;
}
impl Num for f64 {
    fn text(self) -> String {
        if self.is_infinite() {
            if self > 0.0 {
                "+Inf".into()
            } else {
                "-Inf".into()
            }
        } else {
            format!("{self}")
        }
    }
}
impl Num for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}
impl Num for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

fn render_data<T: Num>(out: &mut String, base: &str, unit: &str, help: &str, data: &MetricData<T>) {
    let seconds = unit == "s";
    match data {
        MetricData::Gauge(gauge) => {
            let name = if seconds {
                format!("{base}_seconds")
            } else {
                base.to_string()
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for point in gauge.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value().text()
                );
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base.to_string(), "gauge")
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for point in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value().text()
                );
            }
        }
        MetricData::Histogram(histogram) => {
            let name = if seconds {
                format!("{base}_seconds")
            } else {
                base.to_string()
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0u64;
                let counts: Vec<u64> = point.bucket_counts().collect();
                for (i, bound) in point.bounds().enumerate() {
                    cumulative += counts.get(i).copied().unwrap_or(0);
                    let le = bound.text();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        labels(point.attributes(), Some(("le", &le)))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    labels(point.attributes(), Some(("le", "+Inf"))),
                    point.count()
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{} {}",
                    labels(point.attributes(), None),
                    point.sum().text()
                );
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    labels(point.attributes(), None),
                    point.count()
                );
            }
        }
        // Not configured for any instrument here.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// Prometheus text of one collection.
pub fn render(metrics: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            let base = sanitize(metric.name());
            let help = metric.description().replace('\n', " ");
            match metric.data() {
                AggregatedMetrics::F64(data) => {
                    render_data(&mut out, &base, metric.unit(), &help, data)
                }
                AggregatedMetrics::U64(data) => {
                    render_data(&mut out, &base, metric.unit(), &help, data)
                }
                AggregatedMetrics::I64(data) => {
                    render_data(&mut out, &base, metric.unit(), &help, data)
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn renders_counters_and_histograms() {
        let reader = PrometheusReader::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter("test");
        let counter = meter.u64_counter("trellis.component.invocations").build();
        counter.add(3, &[KeyValue::new("component.id", "echo\"1")]);
        let histogram = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        histogram.record(0.5, &[KeyValue::new("http.response.status_code", 200)]);
        let text = reader.render();
        assert!(
            text.contains("trellis_component_invocations_total{component_id=\"echo\\\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "http_server_request_duration_seconds_bucket{http_response_status_code=\"200\",le=\"1\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "http_server_request_duration_seconds_count{http_response_status_code=\"200\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("a.b-c"), "a_b_c");
        assert_eq!(sanitize("9x"), "_9x");
    }
}
