//! Per-component request and error rates, from what hosts already measure.
//!
//! A host counts every component invocation and every failed one
//! (`trellis.component.invocations`, `trellis.component.invocation.errors`) but publishes the
//! counters only on its Prometheus endpoint (`trellis host --metrics-listen`), not over NATS.
//! So the dashboard reads those endpoints when given them (`trellis up` gives its host's) and
//! turns two readings into rates. Without an endpoint the rates are shown as unavailable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use super::snapshot::Snapshot;

/// How long one endpoint may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an endpoint's answer read.
const MAX_SCRAPE_BYTES: usize = 4 * 1024 * 1024;

/// Counter readings per component: `(invocations, errors)`.
type Counts = HashMap<String, (f64, f64)>;

/// Rates computed over less time than this are too noisy: the previous ones are kept.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Reads Prometheus endpoints and remembers the last reading of each.
#[derive(Debug)]
pub struct Metrics {
    urls: Vec<String>,
    last: HashMap<String, (Instant, Counts)>,
    /// The last rates: component -> (calls/s, errors/s); `None` before two readings.
    rates: Option<HashMap<String, (f64, f64)>>,
}

impl Metrics {
    /// Reads `urls` (each `http://HOST:PORT/PATH`).
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            last: HashMap::new(),
            rates: None,
        }
    }

    /// Fills `rps` and `error_rate` of the snapshot's components from the last two readings
    /// at least [`MIN_INTERVAL`] apart (nothing before there are two).
    pub async fn decorate(&mut self, snapshot: &mut Snapshot) {
        snapshot.metrics_enabled = !self.urls.is_empty();
        let due = self
            .last
            .values()
            .map(|(at, _)| at.elapsed())
            .min()
            .is_none_or(|age| age >= MIN_INTERVAL);
        if due {
            self.read(&mut snapshot.problems).await;
        }
        let Some(rates) = &self.rates else { return };
        for workload in snapshot
            .workloads
            .iter_mut()
            .filter(|w| w.kind == "component")
        {
            let (rps, eps) = rates.get(&workload.id).copied().unwrap_or_default();
            workload.rps = Some(rps);
            workload.error_rate = Some(if rps > 0.0 { (eps / rps).min(1.0) } else { 0.0 });
        }
    }

    /// Reads every endpoint and, where there is an earlier reading, the rates since then.
    async fn read(&mut self, problems: &mut Vec<String>) {
        let mut rates: HashMap<String, (f64, f64)> = HashMap::new();
        let mut compared = false;
        for url in self.urls.clone() {
            let text = match scrape(&url).await {
                Ok(text) => text,
                Err(e) => {
                    problems.push(format!("metrics at {url}: {e:#}"));
                    continue;
                }
            };
            let now = Instant::now();
            let counts = parse_counts(&text);
            if let Some((then, before)) = self.last.get(&url) {
                let seconds = now.duration_since(*then).as_secs_f64();
                if seconds > 0.0 {
                    compared = true;
                    for (component, (calls, errors)) in &counts {
                        let (calls_before, errors_before) =
                            before.get(component).copied().unwrap_or_default();
                        let entry = rates.entry(component.clone()).or_default();
                        entry.0 += increase(calls_before, *calls) / seconds;
                        entry.1 += increase(errors_before, *errors) / seconds;
                    }
                }
            }
            self.last.insert(url, (now, counts));
        }
        if compared {
            self.rates = Some(rates);
        }
    }
}

/// How much a counter grew; one that went down was reset (the host restarted), so it grew
/// by its whole new value.
fn increase(before: f64, now: f64) -> f64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// Sums the invocation and error counters per `component_id` label.
fn parse_counts(text: &str) -> Counts {
    let mut out = Counts::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let is_error = line.starts_with("trellis_component_invocation_errors");
        let is_call = line.starts_with("trellis_component_invocations");
        if !(is_error || is_call) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some(component) = label(series, "component_id") else {
            continue;
        };
        let entry = out.entry(component).or_default();
        if is_error {
            entry.1 += value;
        } else {
            entry.0 += value;
        }
    }
    out
}

/// The value of label `name` in a series `metric{a="x",name="y"}`.
fn label(series: &str, name: &str) -> Option<String> {
    let inside = series.split_once('{')?.1.strip_suffix('}')?;
    let start = inside.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &inside[start..];
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.extend(chars.next()),
            '"' => return Some(value),
            c => value.push(c),
        }
    }
    None
}

/// GETs `url` (plain http) and returns the body as text.
async fn scrape(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// metrics endpoints are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            anyhow::bail!("answered {}", response.status());
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_bytes();
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", SCRAPE_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_per_component() {
        let text = r#"# HELP trellis_component_invocations_total Component invocations
# TYPE trellis_component_invocations_total counter
trellis_component_invocations_total{component_id="a",function="handle",interface="x"} 10
trellis_component_invocations_total{component_id="a",function="other",interface="x"} 5
trellis_component_invocations_total{component_id="b\"q",function="f"} 1
trellis_component_invocation_errors_total{component_id="a",function="handle"} 3
trellis_component_invocation_duration_seconds_bucket{component_id="a",le="0.1"} 99
"#;
        let counts = parse_counts(text);
        assert_eq!(counts["a"], (15.0, 3.0));
        assert_eq!(counts["b\"q"], (1.0, 0.0));
        assert_eq!(counts.len(), 2);
    }
}
