//! The instruments Trellis records. Each `record_*` function is one atomic load and nothing
//! else while metrics are off ([`crate::metrics_enabled`]).
//!
//! | instrument | kind | attributes |
//! | --- | --- | --- |
//! | `trellis.component.invocations` | counter | `component.id`, `interface`, `function` |
//! | `trellis.component.invocation.errors` | counter | same |
//! | `trellis.component.invocation.duration` | histogram (s) | same |
//! | `trellis.component.instances.in_use` | gauge | `component.id` |
//! | `trellis.component.requests.waiting` | gauge | `component.id` |
//! | `http.server.request.duration` | histogram (s) | `http.request.method`, `http.response.status_code` |
//! | `trellis.nats.reconnects` | counter | |
//! | `trellis.wadm.reconcile.duration` | histogram (s) | `app`, `status` |

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// Bucket bounds (seconds) of the duration histograms: 100 µs to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

struct Instruments {
    invocations: Counter<u64>,
    invocation_errors: Counter<u64>,
    invocation_duration: Histogram<f64>,
    http_duration: Histogram<f64>,
    nats_reconnects: Counter<u64>,
    reconcile_duration: Histogram<f64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// What a gauge source reports for one component: instances in use, requests waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentLoad {
    /// The component id.
    pub component_id: String,
    /// Instances running a call now.
    pub in_use: u64,
    /// Calls waiting for a free instance.
    pub waiting: u64,
}

/// A source of [`ComponentLoad`]s, asked at each collection.
pub type LoadSource = Arc<dyn Fn() -> Vec<ComponentLoad> + Send + Sync>;

fn load_sources() -> &'static Mutex<Vec<LoadSource>> {
    static SOURCES: OnceLock<Mutex<Vec<LoadSource>>> = OnceLock::new();
    SOURCES.get_or_init(Mutex::default)
}

/// Registers a source of the instance gauges (a host registers its components). Sources
/// stay for the life of the process; a source of a stopped host should return nothing.
pub fn add_load_source(source: LoadSource) {
    load_sources()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(source);
}

fn all_loads() -> Vec<ComponentLoad> {
    let sources: Vec<LoadSource> = load_sources()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    sources.iter().flat_map(|source| source()).collect()
}

/// Creates the instruments on `provider` (once per process).
pub(crate) fn install(provider: &SdkMeterProvider) {
    let meter = provider.meter("trellis");
    let duration = |name: &'static str, description: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(description)
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build()
    };
    let instruments = Instruments {
        invocations: meter
            .u64_counter("trellis.component.invocations")
            .with_description("Component invocations")
            .build(),
        invocation_errors: meter
            .u64_counter("trellis.component.invocation.errors")
            .with_description("Component invocations that failed")
            .build(),
        invocation_duration: duration(
            "trellis.component.invocation.duration",
            "Duration of component invocations",
        ),
        http_duration: duration(
            "http.server.request.duration",
            "Duration of HTTP requests at the ingress",
        ),
        nats_reconnects: meter
            .u64_counter("trellis.nats.reconnects")
            .with_description("NATS connections re-established after a loss")
            .build(),
        reconcile_duration: duration(
            "trellis.wadm.reconcile.duration",
            "Duration of reconcile passes per application",
        ),
    };
    let _ = INSTRUMENTS.set(instruments);
    meter
        .u64_observable_gauge("trellis.component.instances.in_use")
        .with_description("Component instances running a call")
        .with_callback(|observer| {
            for load in all_loads() {
                observer.observe(
                    load.in_use,
                    &[KeyValue::new("component.id", load.component_id)],
                );
            }
        })
        .build();
    meter
        .u64_observable_gauge("trellis.component.requests.waiting")
        .with_description("Calls waiting for a free component instance")
        .with_callback(|observer| {
            for load in all_loads() {
                observer.observe(
                    load.waiting,
                    &[KeyValue::new("component.id", load.component_id)],
                );
            }
        })
        .build();
}

fn instruments() -> Option<&'static Instruments> {
    if !crate::metrics_enabled() {
        return None;
    }
    INSTRUMENTS.get()
}

/// The attributes of the invocation metrics of one function of one component. Building
/// them allocates; recording with them ([`record_invocation_with`]) does not, so code that
/// calls the same function again and again keeps one.
#[derive(Debug, Clone)]
pub struct InvocationLabels([KeyValue; 3]);

impl InvocationLabels {
    /// The labels of `interface`.`function` of `component_id`.
    pub fn new(component_id: &str, interface: &str, function: &str) -> Self {
        Self([
            KeyValue::new("component.id", component_id.to_string()),
            KeyValue::new("interface", interface.to_string()),
            KeyValue::new("function", function.to_string()),
        ])
    }
}

/// Records one invocation of `interface`.`function` of `component_id`.
pub fn record_invocation(
    component_id: &str,
    interface: &str,
    function: &str,
    duration: Duration,
    ok: bool,
) {
    if instruments().is_none() {
        return;
    }
    record_invocation_with(
        &InvocationLabels::new(component_id, interface, function),
        duration,
        ok,
    );
}

/// Records one invocation of the function `labels` name.
pub fn record_invocation_with(labels: &InvocationLabels, duration: Duration, ok: bool) {
    let Some(instruments) = instruments() else {
        return;
    };
    let attributes = &labels.0;
    instruments.invocations.add(1, attributes);
    if !ok {
        instruments.invocation_errors.add(1, attributes);
    }
    instruments
        .invocation_duration
        .record(duration.as_secs_f64(), attributes);
}

/// The `http.request.method` attribute: the method's name when it is one of the standard
/// methods, `_OTHER` otherwise (as the HTTP semantic conventions ask: a client cannot make
/// up new series by sending made-up methods).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("_OTHER")
}

/// Records one HTTP request answered at the ingress.
pub fn record_http_request(method: &str, status: u16, duration: Duration) {
    let Some(instruments) = instruments() else {
        return;
    };
    instruments.http_duration.record(
        duration.as_secs_f64(),
        &[
            KeyValue::new("http.request.method", method_label(method)),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ],
    );
}

/// Records a NATS reconnection.
pub fn record_nats_reconnect() {
    if let Some(instruments) = instruments() {
        instruments.nats_reconnects.add(1, &[]);
    }
}

/// Records one reconcile pass of `app` ending in `status` (`ok`, `failed`...).
pub fn record_reconcile(app: &str, status: &'static str, duration: Duration) {
    let Some(instruments) = instruments() else {
        return;
    };
    instruments.reconcile_duration.record(
        duration.as_secs_f64(),
        &[
            KeyValue::new("app", app.to_string()),
            KeyValue::new("status", status),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("get"), "_OTHER");
        assert_eq!(method_label("BREW"), "_OTHER");
    }
}
