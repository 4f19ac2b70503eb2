//! Per-component resource limits (`component_limits` in wasmCloud's control API) and the store's memory limiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

/// `component_limits` key for the memory limit of one instance, in MiB (wasmCloud's name).
pub const MAX_MEMORY_MB_KEY: &str = "max_memory_mb";
/// `component_limits` key for the execution deadline of one invocation, in milliseconds (wasmCloud's name).
pub const MAX_EXECUTION_TIME_MS_KEY: &str = "max_execution_time_ms";
/// `component_limits` key for how many requests may wait for a free instance (Trellis extension).
pub const MAX_QUEUED_REQUESTS_KEY: &str = "max_queued_requests";

/// Default memory limit of one instance: 64 MiB.
///
/// Typical HTTP components (Rust, TinyGo) live in 1-10 MiB of linear memory; 64 MiB leaves
/// room for buffering bodies of several MB while still letting a 512 MB device run several
/// instances concurrently without a single runaway guest exhausting the host.
pub const DEFAULT_MAX_MEMORY_MB: u32 = 64;
/// Default execution deadline of one invocation: 30 s.
///
/// wasmCloud uses 10 minutes, which keeps a stuck instance (and its concurrency slot) busy far
/// longer than any HTTP client waits; 30 s matches common HTTP gateway timeouts.
pub const DEFAULT_MAX_EXECUTION_TIME_MS: u64 = 30_000;
/// Upper bound of the default wait queue of a component (the default is 4x its max instances).
pub const DEFAULT_MAX_QUEUE_CAP: u32 = 1000;

/// Resource limits applied to each instance of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentLimits {
    /// Maximum total linear memory of one instance, in MiB.
    pub max_memory_mb: u32,
    /// Maximum wall-clock time of one invocation, in milliseconds.
    pub max_execution_time_ms: u64,
    /// Maximum number of requests waiting for a free instance; `None` means 4x the max
    /// instances, capped at 1000 (`DEFAULT_MAX_QUEUE_CAP`).
    pub max_queued_requests: Option<u32>,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        Self {
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            max_execution_time_ms: DEFAULT_MAX_EXECUTION_TIME_MS,
            max_queued_requests: None,
        }
    }
}

impl ComponentLimits {
    /// Parses the `component_limits` map of a scale/update command. Missing keys take their
    /// defaults; unknown keys are ignored (they may belong to a newer host); malformed or zero
    /// values are an error naming the key.
    pub fn from_map(map: &HashMap<String, String>) -> anyhow::Result<Self> {
        let mut limits = Self::default();
        if let Some(raw) = map.get(MAX_MEMORY_MB_KEY) {
            limits.max_memory_mb = parse_positive(MAX_MEMORY_MB_KEY, raw)?;
        }
        if let Some(raw) = map.get(MAX_EXECUTION_TIME_MS_KEY) {
            limits.max_execution_time_ms = parse_positive(MAX_EXECUTION_TIME_MS_KEY, raw)?;
        }
        if let Some(raw) = map.get(MAX_QUEUED_REQUESTS_KEY) {
            let value: u32 = raw.trim().parse().with_context(|| {
                format!(
                    "component limit {MAX_QUEUED_REQUESTS_KEY} must be a whole number, got {raw:?}"
                )
            })?;
            limits.max_queued_requests = Some(value);
        }
        Ok(limits)
    }

    /// Renders the limits as a `component_limits` map (the inverse of [`ComponentLimits::from_map`]).
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::new();
        map.insert(
            MAX_MEMORY_MB_KEY.to_string(),
            self.max_memory_mb.to_string(),
        );
        map.insert(
            MAX_EXECUTION_TIME_MS_KEY.to_string(),
            self.max_execution_time_ms.to_string(),
        );
        if let Some(queued) = self.max_queued_requests {
            map.insert(MAX_QUEUED_REQUESTS_KEY.to_string(), queued.to_string());
        }
        map
    }

    /// The execution deadline as a [`Duration`].
    pub fn max_execution_time(&self) -> Duration {
        Duration::from_millis(self.max_execution_time_ms)
    }

    /// The memory limit in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        usize::try_from(u64::from(self.max_memory_mb) * 1024 * 1024).unwrap_or(usize::MAX)
    }

    /// How many requests may wait for an instance when the component runs `max_instances`.
    pub fn queue_bound(&self, max_instances: u32) -> u32 {
        self.max_queued_requests
            .unwrap_or_else(|| max_instances.saturating_mul(4).min(DEFAULT_MAX_QUEUE_CAP))
    }
}

/// Parses a strictly positive integer limit.
fn parse_positive<T>(key: &str, raw: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr + Default + PartialEq,
{
    let value: T = raw.trim().parse().map_err(|_| {
        anyhow::anyhow!("component limit {key} must be a positive whole number, got {raw:?}")
    })?;
    if value == T::default() {
        bail!("component limit {key} must be greater than zero");
    }
    Ok(value)
}

/// Enforces the memory limit of one instance: the sum of all its linear memories (a component
/// usually has several core modules, each with its own memory) may not exceed the limit.
///
/// A refused growth makes `memory.grow` return -1 to the guest, as the spec requires; most
/// guests then abort, and the runtime reports the invocation as `MemoryExceeded` because
/// `exceeded` was set.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    granted_bytes: usize,
    exceeded: Arc<AtomicBool>,
}

/// Most table elements an instance may have (tables hold function references; generous).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    /// Creates a limiter; `exceeded` is set when a growth is refused.
    pub(crate) fn new(max_bytes: usize, exceeded: Arc<AtomicBool>) -> Self {
        Self {
            max_bytes,
            granted_bytes: 0,
            exceeded,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current);
        let total = self.granted_bytes.saturating_add(delta);
        if total > self.max_bytes {
            self.exceeded.store(true, Ordering::SeqCst);
            return Ok(false);
        }
        self.granted_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
