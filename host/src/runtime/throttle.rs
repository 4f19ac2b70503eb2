//! Rate-limited logging of failed and refused invocations: a flood of bad requests becomes at
//! most one log line a second per component and kind, carrying how many it stands for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::component::InvocationError;

/// Shortest time between two log lines of one kind for one component.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one event through per [`LOG_INTERVAL`] and counts the ones held back in between.
/// Lock-free; the count is exact (events held back are reported with the next line).
#[derive(Debug)]
pub(crate) struct LogThrottle {
    origin: Instant,
    /// Milliseconds since `origin` before which no line may be logged.
    next_line_ms: AtomicU64,
    /// Events since the last line, this one included once it is counted.
    pending: AtomicU64,
}

impl LogThrottle {
    /// A throttle that lets the first event through.
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            next_line_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Counts one event at `now`. Returns how many events the caller's log line stands for
    /// (this one and those held back since the last line), or `None` to log nothing.
    pub(crate) fn record(&self, now: Instant) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let now_ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        let next = self.next_line_ms.load(Ordering::Acquire);
        if now_ms < next {
            return None;
        }
        let after = now_ms.saturating_add(LOG_INTERVAL.as_millis() as u64);
        // Of several events racing past the interval, one logs.
        self.next_line_ms
            .compare_exchange(next, after, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(self.pending.swap(0, Ordering::AcqRel))
    }
}

/// The per-component log of invocations that did not succeed: refusals (every instance busy)
/// and failures (traps, deadlines, memory, anything else), each at most once a second.
#[derive(Debug)]
pub(crate) struct FailureLog {
    refused: LogThrottle,
    failed: LogThrottle,
}

impl FailureLog {
    /// An empty log.
    pub(crate) fn new() -> Self {
        Self {
            refused: LogThrottle::new(),
            failed: LogThrottle::new(),
        }
    }

    /// Notes that an invocation of `component_id` ended with `error`; logs a warning if the
    /// last one of its kind was logged more than [`LOG_INTERVAL`] ago.
    pub(crate) fn note(&self, component_id: &str, error: &InvocationError) {
        let now = Instant::now();
        if error.is_refusal() {
            if let Some(refused) = self.refused.record(now) {
                tracing::warn!(
                    component_id,
                    refused,
                    error = %error,
                    "requests were turned away: every instance of the component was busy \
                     (at most one line a second; `refused` counts them since the last line)"
                );
            }
        } else if let Some(failed) = self.failed.record(now) {
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
    use super::*;

    #[test]
    fn one_line_a_second_counting_the_events_held_back() {
        let throttle = LogThrottle::new();
        let start = throttle.origin;
        assert_eq!(throttle.record(start), Some(1), "the first event logs");
        for ms in [1, 10, 500, 999] {
            assert_eq!(throttle.record(start + Duration::from_millis(ms)), None);
        }
        // The line after the interval stands for the four held back and itself.
        assert_eq!(
            throttle.record(start + Duration::from_millis(1000)),
            Some(5)
        );
        assert_eq!(throttle.record(start + Duration::from_millis(1500)), None);
        assert_eq!(
            throttle.record(start + Duration::from_millis(2100)),
            Some(2)
        );
        // A quiet spell: the next event logs at once, alone.
        assert_eq!(throttle.record(start + Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn a_flood_from_many_threads_logs_once_and_loses_no_count() {
        let throttle = std::sync::Arc::new(LogThrottle::new());
        let now = throttle.origin + Duration::from_secs(5);
        let lines: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let throttle = throttle.clone();
                    scope.spawn(move || {
                        (0..1000)
                            .filter_map(|_| throttle.record(now))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("worker"))
                .collect()
        });
        assert_eq!(lines.len(), 1, "4000 events in one instant make one line");
        let later = throttle
            .record(now + LOG_INTERVAL)
            .expect("the next interval logs");
        assert_eq!(lines[0] + later, 4001, "every event is counted once");
    }

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
