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
/// Default execution deadline of one invocation: 10 s (`max_execution_time_ms` overrides it
/// per component).
///
/// Components here mostly serve HTTP. A handler answers in milliseconds; one still running
/// after 10 s is almost always stuck (a loop, an upstream that never answers), and until the
/// deadline stops it, it holds one of the component's `count` instances that the component's
/// other requests are waiting for: with `count: 1` a single looping request stalls the whole
/// component for this long. wasmCloud's 10 minutes, or the 30 s used before, kept a stuck
/// instance far longer than any HTTP client waits. The same bound also limits how long a
/// request waits for a free instance, so the longest a client can wait on the runtime is
/// twice this, 20 s: still below the 30 s at which common HTTP clients and gateways give up,
/// and the http server's 60 s default for requests forwarded over the lattice. Components
/// that legitimately run longer (streaming, long polling, batch work) raise it with
/// `max_execution_time_ms`.
pub const DEFAULT_MAX_EXECUTION_TIME_MS: u64 = 10_000;
/// Default wait-queue places per instance of a component (see [`DEFAULT_MAX_QUEUE_CAP`]).
///
/// A request that finds every instance busy waits for one until its deadline, as in
/// wasmCloud 1.x; the queue bound only decides when waiting is hopeless and the request is
/// better refused at once (503 with `Retry-After`). A burst is not overload: 50 clients
/// hitting `count: 1` need 49 places, and refusing them (the former default of 4 per
/// instance turned away a third to two thirds of such requests) only makes clients retry.
/// Real overload is a queue that cannot drain before its requests' deadlines: at 10 ms a
/// request (a slow-ish handler; hello takes about 0.1 ms) one instance serves 1000 requests
/// within the 10 s default deadline, so past 1000 waiters per instance most would time out
/// anyway. Waiting costs the gate no memory beyond a queue entry (the request's connection
/// is open whether it waits or is refused).
pub const DEFAULT_QUEUED_PER_INSTANCE: u32 = 1000;
/// Most requests the default wait queue of one component holds, whatever its instance count:
/// 10 000 waiting requests are 10 000 open connections, more than a small host's file
/// descriptor limit usually allows, so a longer queue is overload on any device.
pub const DEFAULT_MAX_QUEUE_CAP: u32 = 10_000;

/// Resource limits applied to each instance of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentLimits {
    /// Maximum total linear memory of one instance, in MiB.
    pub max_memory_mb: u32,
    /// Maximum wall-clock time of one invocation, in milliseconds; a request waiting for a
    /// free instance also waits at most this long.
    pub max_execution_time_ms: u64,
    /// Maximum number of requests waiting for a free instance; `None` means
    /// [`DEFAULT_QUEUED_PER_INSTANCE`] per instance, at most [`DEFAULT_MAX_QUEUE_CAP`].
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
        self.max_queued_requests.unwrap_or_else(|| {
            max_instances
                .saturating_mul(DEFAULT_QUEUED_PER_INSTANCE)
                .min(DEFAULT_MAX_QUEUE_CAP)
        })
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
