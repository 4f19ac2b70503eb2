//! The telemetry flags of `trellis host` and `trellis wadm` (see docs/observability.md).

use std::net::SocketAddr;

/// OTLP export and the Prometheus endpoint. The collector, headers, sampler and service
/// name come from the standard `OTEL_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Export traces, metrics and logs over OTLP/HTTP (protobuf) to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (default http://localhost:4318). wasmCloud's
    /// `--enable-observability` / `WASMCLOUD_OBSERVABILITY_ENABLED` work too.
    #[arg(
        long = "otel",
        visible_alias = "enable-observability",
        env = "TRELLIS_OTEL",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub otel: bool,
    /// Base URL of the OTLP/HTTP collector (`/v1/traces`... are appended); overrides
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, env = "TRELLIS_OTEL_ENDPOINT", value_name = "URL")]
    pub otel_endpoint: Option<String>,
    /// Serve the metrics as Prometheus text at http://ADDR/metrics.
    #[arg(long, env = "TRELLIS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl TelemetryArgs {
    /// The telemetry settings of a process named `service_name`.
    pub fn config(&self, service_name: &str) -> trellis_telemetry::TelemetryConfig {
        trellis_telemetry::TelemetryConfig {
            otel: self.otel,
            endpoint: self.otel_endpoint.clone(),
            metrics_listen: self.metrics_listen,
            service_name: service_name.to_string(),
        }
    }
}
