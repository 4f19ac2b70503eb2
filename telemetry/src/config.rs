//! What to export and where: `--otel` / `TRELLIS_OTEL` (or wasmCloud's
//! `--enable-observability` / `WASMCLOUD_OBSERVABILITY_ENABLED`) switches OTLP export on; the
//! standard `OTEL_*` variables say the rest.
//!
//! | variable | effect |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL, `/v1/{traces,metrics,logs}` appended (default `http://localhost:4318`) |
//! | `OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT` | one signal's full URL |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `..._{SIGNAL}_HEADERS` | `key=value,...` sent with each export |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | only `http/protobuf` is built (anything else: a warning) |
//! | `OTEL_{TRACES,METRICS,LOGS}_EXPORTER` | `none` turns that signal off |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler (default parent-based always-on) |
//! | `OTEL_BSP_*`, `OTEL_BLRP_*` | batch sizes and queue bounds |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | milliseconds between metric exports (default 60000) |
//! | `OTEL_SDK_DISABLED=true` | everything off |

use std::net::SocketAddr;
use std::time::Duration;

/// Variable switching OTLP export on (set for the provider processes a host starts).
pub const ENV_OTEL: &str = "TRELLIS_OTEL";
/// wasmCloud's name for [`ENV_OTEL`].
pub const ENV_WASMCLOUD_OBSERVABILITY: &str = "WASMCLOUD_OBSERVABILITY_ENABLED";
/// Variable with the collector's base URL (the `--otel-endpoint` flag).
pub const ENV_OTEL_ENDPOINT: &str = "TRELLIS_OTEL_ENDPOINT";

/// Telemetry settings of one process, from its flags; [`TelemetryConfig::signals`] adds the
/// environment.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Export over OTLP (`--otel`).
    pub otel: bool,
    /// Base URL of the collector (`--otel-endpoint`); `None` leaves it to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Serve Prometheus text at `http://ADDR/metrics` (`--metrics-listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
}

/// Which signals go out over OTLP, after the environment had its say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// Spans.
    pub traces: bool,
    /// Metrics.
    pub metrics: bool,
    /// Log records.
    pub logs: bool,
    /// Settings that were ignored, to log once the subscriber is up.
    pub warnings: Vec<String>,
}

impl Signals {
    /// Whether anything is exported over OTLP.
    pub fn any(&self) -> bool {
        self.traces || self.metrics || self.logs
    }
}

/// `true`, `1`, `yes`, `on` (any case).
pub fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn env_truthy(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| truthy(&v))
}

impl TelemetryConfig {
    /// Settings of a process started without telemetry flags (a provider process): the
    /// environment only.
    pub fn from_env(service_name: impl Into<String>) -> Self {
        Self {
            otel: false,
            endpoint: None,
            metrics_listen: None,
            service_name: service_name.into(),
        }
    }

    /// Whether OTLP export is on: the flag, `TRELLIS_OTEL` or
    /// `WASMCLOUD_OBSERVABILITY_ENABLED`, unless `OTEL_SDK_DISABLED=true`.
    pub fn otel_enabled(&self) -> bool {
        (self.otel || env_truthy(ENV_OTEL) || env_truthy(ENV_WASMCLOUD_OBSERVABILITY))
            && !env_truthy("OTEL_SDK_DISABLED")
    }

    /// The base endpoint from the flag or `TRELLIS_OTEL_ENDPOINT`.
    fn base_endpoint(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var(ENV_OTEL_ENDPOINT).ok())
            .filter(|e| !e.trim().is_empty())
    }

    /// The URL for one signal (`traces`, `metrics`, `logs`) when the command line set a base;
    /// `None` lets the exporter read `OTEL_EXPORTER_OTLP_{SIGNAL_}ENDPOINT`. A per-signal
    /// variable wins over the flag (it is the more specific setting).
    pub fn signal_endpoint(&self, signal: &str) -> Option<String> {
        let specific = format!(
            "OTEL_EXPORTER_OTLP_{}_ENDPOINT",
            signal.to_ascii_uppercase()
        );
        if std::env::var_os(&specific).is_some() {
            return None;
        }
        self.base_endpoint()
            .map(|base| format!("{}/v1/{signal}", base.trim_end_matches('/')))
    }

    /// The metric export interval (`OTEL_METRIC_EXPORT_INTERVAL` ms, default 60 s).
    pub fn metrics_interval(&self) -> Duration {
        std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(Duration::from_secs(60), Duration::from_millis)
    }

    /// Which signals are exported, with warnings for settings this build cannot honour.
    pub fn signals(&self) -> Signals {
        let mut signals = Signals::default();
        if !self.otel_enabled() {
            return signals;
        }
        for (signal, on) in [
            ("TRACES", &mut signals.traces),
            ("METRICS", &mut signals.metrics),
            ("LOGS", &mut signals.logs),
        ] {
            let var = format!("OTEL_{signal}_EXPORTER");
            *on = match std::env::var(&var) {
                Ok(v) if v.trim().eq_ignore_ascii_case("none") => false,
                Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("otlp") => true,
                Ok(v) => {
                    signals
                        .warnings
                        .push(format!("{var}={v} is not supported; exporting over OTLP"));
                    true
                }
                Err(_) => true,
            };
            for protocol_var in [
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
                format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"),
            ] {
                if let Ok(protocol) = std::env::var(&protocol_var) {
                    if protocol.trim() != "http/protobuf" && !protocol.trim().is_empty() {
                        signals.warnings.push(format!(
                            "{protocol_var}={protocol} is not supported by this build; using http/protobuf"
                        ));
                    }
                }
            }
        }
        signals.warnings.dedup();
        signals
    }

    /// Variables for a child process (a provider the host starts) so that it exports the
    /// same way: the flags turned into their variables. `OTEL_*` variables are inherited.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if self.otel_enabled() {
            env.push((ENV_OTEL, "1".to_string()));
            if let Some(endpoint) = self.base_endpoint() {
                env.push((ENV_OTEL_ENDPOINT, endpoint));
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "TRUE", " yes ", "on"] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "false", "", "no", "off", "maybe"] {
            assert!(!truthy(v), "{v}");
        }
    }

    #[test]
    fn flag_endpoint_gets_signal_paths() {
        let config = TelemetryConfig {
            otel: true,
            endpoint: Some("http://collector:4318/".into()),
            ..TelemetryConfig::default()
        };
        // (The per-signal variables are not set in the test environment.)
        assert_eq!(
            config.signal_endpoint("traces").as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            config.child_env(),
            vec![
                (ENV_OTEL, "1".to_string()),
                (ENV_OTEL_ENDPOINT, "http://collector:4318/".to_string())
            ]
        );
    }

    #[test]
    fn off_without_flag_exports_nothing() {
        let config = TelemetryConfig::default();
        if std::env::var_os(ENV_OTEL).is_none()
            && std::env::var_os(ENV_WASMCLOUD_OBSERVABILITY).is_none()
        {
            assert!(!config.signals().any());
            assert!(config.child_env().is_empty());
        }
    }
}
