//! Driving HTTP load with `wrk` and reading its report.

use std::time::Duration;

use anyhow::{bail, Context};

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WrkReport {
    /// Completed requests per second.
    pub requests_per_sec: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// Runs `wrk --latency` against `url` with `connections` connections for `duration`.
/// One connection uses one thread; more use two (the machine's cores are shared with the
/// server under test).
pub async fn run(url: &str, connections: u32, duration: Duration) -> anyhow::Result<WrkReport> {
    run_script(url, connections, duration, None).await
}

/// Like [`run`], with a wrk Lua script (`-s`) shaping the requests.
pub async fn run_script(
    url: &str,
    connections: u32,
    duration: Duration,
    script: Option<&std::path::Path>,
) -> anyhow::Result<WrkReport> {
    let threads = connections.clamp(1, 2);
    let mut command = tokio::process::Command::new("wrk");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{}s", duration.as_secs().max(1)),
            "--latency".to_string(),
            url.to_string(),
        ])
        .output()
        .await
        .context("cannot run wrk (install it with `sudo apt-get install -y wrk`)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

/// Reads the report `wrk --latency` prints.
pub fn parse(text: &str) -> anyhow::Result<WrkReport> {
    let mut report = WrkReport::default();
    let (mut rate, mut p50, mut p99) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => rate = Some(v.parse::<f64>()?),
            (Some("50%"), Some(v)) => p50 = Some(duration_ms(v)?),
            (Some("99%"), Some(v)) => p99 = Some(duration_ms(v)?),
            (Some(n), Some("requests")) => report.requests = n.parse()?,
            _ => {}
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.errors += n.trim().parse::<u64>()?;
        }
        if let Some(list) = line.strip_prefix("Socket errors:") {
            for part in list.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    report.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    report.requests_per_sec = rate.context("no Requests/sec line")?;
    report.p50_ms = p50.context("no 50% line (was --latency given?)")?;
    report.p99_ms = p99.context("no 99% line")?;
    Ok(report)
}

/// `12.34us`, `1.20ms`, `2.00s`, `1.00m` in milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in `{text}`"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad number in `{text}`"))?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => bail!("unknown unit `{other}` in `{text}`"),
    };
    Ok(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 2s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21ms  345.67us   9.87ms   80.00%
    Req/Sec    20.12k     1.23k   22.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.30ms
     90%    1.70ms
     99%    2.50s
  80000 requests in 2.00s, 9.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  40012.34
Transfer/sec:      4.50MB
";

    #[test]
    fn reads_rate_percentiles_and_errors() {
        let r = parse(SAMPLE).expect("parses");
        assert!((r.requests_per_sec - 40012.34).abs() < 1e-6);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 2500.0).abs() < 1e-9);
        assert_eq!(r.requests, 80000);
        assert_eq!(r.errors, 12);
    }

    #[test]
    fn refuses_a_report_without_latency() {
        assert!(parse("Requests/sec: 5\n").is_err());
        assert!(duration_ms("12").is_err());
        assert!(duration_ms("1.0parsec").is_err());
    }
}
