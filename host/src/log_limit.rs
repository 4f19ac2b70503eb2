//! Rate-limited logging for events that a hostile or broken peer can repeat at will (a
//! component failing mid-response, a flood of connections): at most one line per interval, with
//! a count of the occurrences the limiter swallowed since the last line.
//!
//! ```
//! use std::time::Duration;
//! use trellis_host::log_limit::LogLimiter;
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
    /// since the last line; `None` (and the occurrence counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        // +1 so that the first call (at 0 ms) is let through.
        let now = u64::try_from(epoch().elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
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
}
