//! When a timer link fires: a fixed interval or a cron expression, and the tick numbers every
//! host derives alike from the wall clock (so hosts agree on which tick is which without
//! talking to each other).

use std::collections::HashMap;
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};

/// Link config key: a fixed interval (`500ms`, `10s`, `5m`, `1h`; a bare number is seconds).
pub const INTERVAL_KEY: &str = "interval";
/// Link config key: a cron expression, evaluated in UTC (5 fields, or 6 with seconds first).
pub const CRON_KEY: &str = "cron";
/// Link config key: bytes handed to every tick (as UTF-8 text).
pub const PAYLOAD_KEY: &str = "payload";

/// The shortest interval a link may ask for: each tick costs a KV write per host.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// When a link's ticks are due.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every `Duration`, aligned to the Unix epoch (tick `n` is due at `n × interval`).
    Interval(Duration),
    /// At every time the cron expression matches (UTC).
    Cron(Box<croner::Cron>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Interval(a), Self::Interval(b)) => a == b,
            (Self::Cron(a), Self::Cron(b)) => a.pattern.to_string() == b.pattern.to_string(),
            _ => false,
        }
    }
}

impl Eq for Schedule {}

/// One due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Interval: `scheduled_ms / interval_ms`; cron: the scheduled time in Unix seconds.
    pub number: u64,
    /// When it is due, in milliseconds since the Unix epoch.
    pub scheduled_ms: u64,
}

/// Parses an interval: an unsigned integer with an optional unit (`ms`, `s`, `m`, `h`;
/// seconds without one).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("interval `{text}` does not start with a whole number"))?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "interval `{text}` has unit `{other}`; use ms, s, m or h"
            ))
        }
    };
    let millis = value
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("interval `{text}` is too long"))?;
    let interval = Duration::from_millis(millis);
    if interval < MIN_INTERVAL {
        return Err(format!(
            "interval `{text}` is shorter than the minimum of {} ms",
            MIN_INTERVAL.as_millis()
        ));
    }
    Ok(interval)
}

impl Schedule {
    /// The schedule a link's settings ask for: exactly one of `interval` and `cron`.
    pub fn from_settings(settings: &HashMap<String, String>) -> Result<Self, String> {
        let get = |key: &str| {
            settings
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        match (get(INTERVAL_KEY), get(CRON_KEY)) {
            (Some(_), Some(_)) => Err(format!(
                "set `{INTERVAL_KEY}` or `{CRON_KEY}`, not both"
            )),
            (None, None) => Err(format!(
                "a timer link needs `{INTERVAL_KEY}` (e.g. `10s`) or `{CRON_KEY}` (e.g. `*/5 * * * *`) in its config"
            )),
            (Some(interval), None) => parse_interval(interval).map(Self::Interval),
            (None, Some(expression)) => croner::Cron::from_str(expression)
                .map(|cron| Self::Cron(Box::new(cron)))
                .map_err(|e| format!("cron expression `{expression}` is not valid: {e}")),
        }
    }

    /// The first tick due strictly after `now_ms` (milliseconds since the Unix epoch), or
    /// `None` when there is none (a cron expression that never matches again).
    pub fn next_after(&self, now_ms: u64) -> Option<Tick> {
        match self {
            Self::Interval(interval) => {
                let step = u64::try_from(interval.as_millis()).ok()?.max(1);
                let number = now_ms / step + 1;
                Some(Tick {
                    number,
                    scheduled_ms: number.checked_mul(step)?,
                })
            }
            Self::Cron(cron) => {
                let now = Utc
                    .timestamp_millis_opt(i64::try_from(now_ms).ok()?)
                    .single()?;
                let next: DateTime<Utc> = cron.find_next_occurrence(&now, false).ok()?;
                let seconds = u64::try_from(next.timestamp()).ok()?;
                Some(Tick {
                    number: seconds,
                    scheduled_ms: seconds.checked_mul(1_000)?,
                })
            }
        }
    }

    /// The schedule in words, for logs and events.
    pub fn describe(&self) -> String {
        match self {
            Self::Interval(interval) => format!("every {} ms", interval.as_millis()),
            Self::Cron(cron) => format!("cron `{}` (UTC)", cron.pattern),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn intervals_take_units_and_refuse_nonsense() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval(" 250ms "), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_interval("30"), Ok(Duration::from_secs(30)));
        for bad in [
            "",
            "s",
            "10 days",
            "-1s",
            "1.5s",
            "50ms",
            "99999999999999999999h",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interval_ticks_are_numbered_from_the_epoch() {
        let schedule = Schedule::Interval(Duration::from_secs(1));
        assert_eq!(
            schedule.next_after(10_000),
            Some(Tick {
                number: 11,
                scheduled_ms: 11_000
            })
        );
        assert_eq!(
            schedule.next_after(10_999),
            Some(Tick {
                number: 11,
                scheduled_ms: 11_000
            })
        );
    }

    #[test]
    fn cron_ticks_are_numbered_by_their_second() {
        let schedule = Schedule::from_settings(&settings(&[("cron", "*/5 * * * *")]))
            .expect("a valid expression");
        // 1970-01-01T00:01:00Z → the next multiple of five minutes is 00:05:00.
        assert_eq!(
            schedule.next_after(60_000),
            Some(Tick {
                number: 300,
                scheduled_ms: 300_000
            })
        );
        let with_seconds =
            Schedule::from_settings(&settings(&[("cron", "*/10 * * * * *")])).expect("valid");
        assert_eq!(with_seconds.next_after(1_000).map(|t| t.number), Some(10));
    }

    #[test]
    fn settings_need_exactly_one_schedule() {
        assert!(Schedule::from_settings(&settings(&[])).is_err());
        assert!(
            Schedule::from_settings(&settings(&[("interval", "1s"), ("cron", "* * * * *")]))
                .is_err()
        );
        assert!(Schedule::from_settings(&settings(&[("cron", "not a cron")])).is_err());
        assert_eq!(
            Schedule::from_settings(&settings(&[("interval", "2s"), ("cron", " ")])),
            Ok(Schedule::Interval(Duration::from_secs(2)))
        );
    }
}
