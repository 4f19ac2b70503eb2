//! Wasmtime engine construction: pooling allocator sized from the machine's memory, with a
//! fallback to on-demand allocation, and the epoch ticker that drives execution deadlines.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the engine's epoch advances. Running guests are interrupted (and yield to the
/// async executor) at most this often; deadlines are precise to about one tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Memory budgeted per pooled instance slot when sizing the pool from available memory.
/// Most instances touch a few MiB; the pool only reserves address space, not RAM.
const MEMORY_PER_SLOT_MB: u64 = 16;
/// Fewest pooled instance slots (also used when /proc/meminfo is unreadable: a 512 MB device).
const MIN_POOL_SLOTS: u32 = 16;
/// Most pooled instance slots, whatever the machine.
const MAX_POOL_SLOTS: u32 = 1000;
/// Core module instances per component instance reserved in the pool (a Rust wasip2 component
/// has the main module plus adapter/shim modules).
const CORE_INSTANCES_PER_SLOT: u32 = 8;
/// Linear memories per component instance reserved in the pool.
const MEMORIES_PER_SLOT: u32 = 2;
/// Tables per component instance reserved in the pool.
const TABLES_PER_SLOT: u32 = 4;

/// Reads `MemAvailable` (or `MemTotal` if absent) from /proc/meminfo, in MiB.
pub(crate) fn available_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb / 1024)
        })
    };
    field("MemAvailable").or_else(|| field("MemTotal"))
}

/// Number of concurrent component instances the pool is sized for.
pub(crate) fn pool_slots_for_memory(available_mb: Option<u64>) -> u32 {
    let slots = available_mb.map_or(u64::from(MIN_POOL_SLOTS), |mb| mb / MEMORY_PER_SLOT_MB);
    u32::try_from(slots)
        .unwrap_or(MAX_POOL_SLOTS)
        .clamp(MIN_POOL_SLOTS, MAX_POOL_SLOTS)
}

/// The engine plus how its instances are allocated.
pub(crate) struct EngineSetup {
    /// The engine.
    pub(crate) engine: Engine,
    /// Pooled instance slots, or `None` when instances are allocated on demand.
    pub(crate) pool_slots: Option<u32>,
}

/// The configuration shared by the pooled and the on-demand engine.
fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // The on-disk cache of compiled components is ours (see cache.rs); wasmtime's own cache is off.
    config.cache(None);
    config
}

/// The process's address-space limit (`ulimit -v`, RLIMIT_AS) in bytes, if it has one.
pub(crate) fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    (read == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Virtual memory reserved up front for one linear memory when address space is scarce: a
/// sixty-fourth of the limit (8 MiB under `ulimit -v 524288`), between 1 and 64 MiB. Memories
/// may still grow past it (they move); accesses are bounds-checked instead of relying on a
/// 4 GiB reservation and guard pages.
fn scarce_memory_reservation(limit: Option<u64>) -> u64 {
    const MIB: u64 = 1024 * 1024;
    limit.map_or(64 * MIB, |bytes| (bytes / 64).clamp(MIB, 64 * MIB))
}

/// The on-demand configuration for a process that cannot reserve 4 GiB per linear memory
/// (an address-space limit, or a pool that could not be reserved).
fn scarce_config(limit: Option<u64>) -> Config {
    let mut config = base_config();
    config
        .memory_reservation(scarce_memory_reservation(limit))
        .memory_guard_size(64 * 1024)
        .memory_reservation_for_growth(1024 * 1024);
    config
}

/// Builds the engine. `pool_slots` overrides the slot count derived from the machine's memory.
/// Under an address-space limit (`ulimit -v`, common on small devices and in some container
/// runtimes), or when the pool cannot be reserved, instances are allocated on demand with small
/// memory reservations (see [`scarce_memory_reservation`]), with one warning saying so.
pub(crate) fn build_engine(pool_slots: Option<u32>) -> anyhow::Result<EngineSetup> {
    if let Some(limit) = address_space_limit() {
        tracing::warn!(
            limit_mb = limit / (1024 * 1024),
            "the process has an address-space limit (ulimit -v): instances are allocated on demand with small memory reservations (slower instantiation and memory access)"
        );
        let engine = Engine::new(&scarce_config(Some(limit)))
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine under an address-space limit")?;
        return Ok(EngineSetup {
            engine,
            pool_slots: None,
        });
    }
    let slots = pool_slots.unwrap_or_else(|| pool_slots_for_memory(available_memory_mb()));
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
        .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
        .total_stacks(slots)
        // Keep few idle slots warm so RSS stays low on small devices.
        .max_unused_warm_slots(slots.min(16));
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    match Engine::new(&config) {
        Ok(engine) => Ok(EngineSetup {
            engine,
            pool_slots: Some(slots),
        }),
        Err(pool_error) => {
            tracing::warn!(
                error = %format!("{pool_error:#}"),
                slots,
                "could not reserve the pooling allocator; falling back to on-demand instance allocation (slower instantiation)"
            );
            let engine = Engine::new(&scarce_config(None))
                .map_err(anyhow::Error::from)
                .context("creating the wasmtime engine with on-demand allocation")?;
            Ok(EngineSetup {
                engine,
                pool_slots: None,
            })
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread (it must keep ticking
/// even when every async worker is busy running guest code). Stops and joins on drop.
pub(crate) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    pub(crate) fn start(engine: Engine) -> anyhow::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("trellis-epoch".to_string())
            .spawn(move || {
                // A message or a dropped sender both mean stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .context("starting the epoch ticker thread")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread exits within one tick once the sender is gone.
            let _ = thread.join();
        }
    }
}
