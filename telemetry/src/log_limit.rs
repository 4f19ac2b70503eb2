//! Rate-limited logging for events that a hostile or broken peer can repeat at will (a
//! component failing mid-response, a flood of connections): at most one line per interval, with
//! a count of the occurrences the limiter swallowed since the last line.
//!
//! ```
//! use std::time::Duration;
//! use trellis_telemetry::log_limit::LogLimiter;
//!
//! static REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(10));
//! if let Some(suppressed) = REFUSED.allow() {
//!     tracing::warn!(suppressed, "refusing a connection");
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lets one log line through per interval and counts the rest. Lock-free; a `const`
/// constructor so it can be a `static` next to the code that logs.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which nothing is let through (0: not yet).
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// The process-wide zero of the limiters' clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    /// A limiter letting one line through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        // `as_millis` is u128; intervals are seconds to minutes.
        Self {
            interval_ms: interval.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many occurrences were swallowed
    /// since the last line; `None` (and the occurrence counted) otherwise. Every occurrence is
    /// counted exactly once, whatever the threads racing.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`Self::allow`] at a given instant (for tests, and callers that already read the clock).
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        // +1 so that the first call (at 0 ms) is let through.
        let now = u64::try_from(now.saturating_duration_since(epoch()).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let next = self.next_ms.load(Ordering::Acquire);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_line_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_zero_interval_lets_everything_through() {
        let limiter = LogLimiter::new(Duration::ZERO);
        assert_eq!(limiter.allow(), Some(0));
        // Same millisecond or not, `next` never lies ahead of `now`.
        assert_eq!(limiter.allow(), Some(0));
    }

    #[test]
    fn one_line_per_interval_counting_what_was_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let start = epoch() + Duration::from_secs(1000);
        assert_eq!(
            limiter.allow_at(start),
            Some(0),
            "the first occurrence logs"
        );
        for ms in [1, 10, 500, 999] {
            assert_eq!(limiter.allow_at(start + Duration::from_millis(ms)), None);
        }
        // The line after the interval reports the four held back.
        assert_eq!(
            limiter.allow_at(start + Duration::from_millis(1000)),
            Some(4)
        );
        assert_eq!(limiter.allow_at(start + Duration::from_millis(1500)), None);
        assert_eq!(
            limiter.allow_at(start + Duration::from_millis(2100)),
            Some(1)
        );
        // After a quiet spell the next occurrence logs at once, alone.
        assert_eq!(limiter.allow_at(start + Duration::from_secs(60)), Some(0));
    }

    #[test]
    fn a_flood_from_many_threads_logs_once_and_loses_no_count() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let now = epoch() + Duration::from_secs(2000);
        let lines: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = &limiter;
                    scope.spawn(move || {
                        (0..1000)
                            .filter_map(|_| limiter.allow_at(now))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("worker"))
                .collect()
        });
        assert_eq!(
            lines,
            vec![0],
            "4000 occurrences in one instant make one line"
        );
        let later = limiter
            .allow_at(now + Duration::from_secs(1))
            .expect("the next interval logs");
        assert_eq!(later, 3999, "every occurrence held back is counted once");
    }
}
