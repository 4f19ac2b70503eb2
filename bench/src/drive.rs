//! Closed-loop load from inside the harness: `in_flight` workers each repeat one operation
//! until the time is up, and every latency is kept.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;

/// What a closed-loop run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

/// Runs `op` in `in_flight` concurrent loops for `duration` after a short warm-up.
pub async fn closed_loop<F, Fut>(
    in_flight: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<LoadReport>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    // Warm-up: connections, caches, JIT'd paths.
    for _ in 0..20 {
        op().await
            .context("the operation fails before the measurement")?;
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let op = op.clone();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op().await {
                    Ok(()) => latencies.push(t.elapsed().as_nanos() as u64),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    let mut all = Vec::new();
    let mut report = LoadReport::default();
    while let Some(joined) = workers.join_next().await {
        let (latencies, errors, first_error) = joined.context("a load worker panicked")?;
        all.extend(latencies);
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    report.ops = all.len() as u64;
    report.ops_per_sec = report.ops as f64 / elapsed;
    report.p50_ms = percentile_ns(&all, 0.50) / 1e6;
    report.p99_ms = percentile_ns(&all, 0.99) / 1e6;
    Ok(report)
}

/// The `q` quantile of sorted nanosecond samples (0 when empty).
pub fn percentile_ns(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_ns(&samples, 0.5), 51.0);
        assert_eq!(percentile_ns(&samples, 0.99), 99.0);
        assert_eq!(percentile_ns(&[], 0.5), 0.0);
    }

    #[tokio::test]
    async fn counts_operations_and_errors() {
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let report = closed_loop(2, Duration::from_millis(50), move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
                if n > 25 && n.is_multiple_of(2) {
                    anyhow::bail!("even");
                }
                Ok(())
            }
        })
        .await
        .expect("runs");
        assert!(report.ops > 0 && report.errors > 0, "{report:?}");
        assert_eq!(report.first_error.as_deref(), Some("even"));
    }
}
