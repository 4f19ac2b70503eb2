//! Rate-limited logging of failed and refused invocations: a flood of bad requests becomes at
//! most one log line a second per component and kind, carrying how many it stands for.

use std::time::Duration;

use super::component::InvocationError;
use crate::log_limit::LogLimiter;

/// Shortest time between two log lines of one kind for one component.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The per-component log of invocations that did not succeed: refusals (every instance busy)
/// and failures (traps, deadlines, memory, anything else), each at most once a second.
#[derive(Debug)]
pub(crate) struct FailureLog {
    refused: LogLimiter,
    failed: LogLimiter,
}

impl FailureLog {
    /// An empty log.
    pub(crate) fn new() -> Self {
        Self {
            refused: LogLimiter::new(LOG_INTERVAL),
            failed: LogLimiter::new(LOG_INTERVAL),
        }
    }

    /// Notes that an invocation of `component_id` ended with `error`; logs a warning if the
    /// last one of its kind was logged more than [`LOG_INTERVAL`] ago.
    pub(crate) fn note(&self, component_id: &str, error: &InvocationError) {
        // Each line stands for the occurrences held back since the last one, and itself.
        if error.is_refusal() {
            if let Some(refused) = self.refused.allow().map(|held| held + 1) {
                tracing::warn!(
                    component_id,
                    refused,
                    error = %error,
                    "requests were turned away: every instance of the component was busy \
                     (at most one line a second; `refused` counts them since the last line)"
                );
            }
        } else if let Some(failed) = self.failed.allow().map(|held| held + 1) {
            tracing::warn!(
                component_id,
                failed,
                error = %format!("{error:#}"),
                "component invocations failed (at most one line a second; `failed` counts \
                 them since the last line, `error` is the latest)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Records the `refused` and `failed` counts of warnings.
    struct CountRecorder(std::sync::Arc<std::sync::Mutex<Vec<(&'static str, u64)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountRecorder {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Counts(Vec<(&'static str, u64)>);
            impl tracing::field::Visit for Counts {
                fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                    match field.name() {
                        "refused" => self.0.push(("refused", value)),
                        "failed" => self.0.push(("failed", value)),
                        _ => {}
                    }
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            if *event.metadata().level() == tracing::Level::WARN {
                let mut counts = Counts(Vec::new());
                event.record(&mut counts);
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(counts.0);
            }
        }
    }

    #[test]
    fn a_flood_of_refusals_and_traps_becomes_a_line_a_second_of_each() {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(CountRecorder(lines.clone()));
        let busy = InvocationError::Busy {
            component_id: "flooded".into(),
            max_instances: 1,
            queued: 1000,
        };
        let trap = InvocationError::Trap {
            component_id: "flooded".into(),
            message: "unreachable".into(),
        };
        let log = FailureLog::new();
        let started = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..1000 {
                log.note("flooded", &busy);
                log.note("flooded", &trap);
            }
        });
        // However slow this machine, no more than one line per started second of each kind.
        let most_lines = 1 + started.elapsed().as_secs() as usize;
        let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for kind in ["refused", "failed"] {
            let counts: Vec<u64> = lines
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, count)| *count)
                .collect();
            assert!(
                !counts.is_empty() && counts.len() <= most_lines,
                "{kind}: {counts:?}"
            );
            assert_eq!(counts[0], 1, "the first {kind} line is logged at once");
            assert!(counts.iter().sum::<u64>() <= 1000, "{kind}: {counts:?}");
        }
    }
}
