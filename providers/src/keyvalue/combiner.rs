//! Counter increments on a compare-and-set store (NATS JetStream KV), combined per key.
//!
//! Fifty instances incrementing one key on one host would otherwise race each other: every
//! compare-and-set but one fails, is retried, and under enough load some give up. Instead,
//! the increments of one key on this host queue up, and one driver task at a time turns the
//! whole queue into a single compare-and-set of the sum. Each caller still gets its own
//! result, the value the counter had right after its delta, as if the queued increments had
//! been applied one by one in arrival order, so no two callers see the same value.
//!
//! Writers on other hosts (and `set`/`swap` on this one) can still change the key between
//! the read and the write; a failed compare-and-set re-reads and retries after a random
//! pause (full jitter, growing from [`BACKOFF_BASE`] to [`BACKOFF_CAP`]) until the earliest
//! deadline of the batch ([`INCREMENT_DEADLINE`] after its caller arrived). A caller that
//! gave up waiting (its call timed out or was dropped) before its batch started is left out
//! of the sum.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::backend::{add, parse_counter, CounterRange, StorageError};

/// How long after a caller arrives its increment may keep retrying; below the 5 s operation
/// timeout so the caller hears the combiner's own answer.
pub(crate) const INCREMENT_DEADLINE: Duration = Duration::from_secs(4);

/// The first retry after a conflict waits up to this long (then 2x, 4x, ... up to the cap).
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(1);

/// The longest pause between two attempts after conflicts.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_millis(50);

/// A key's stored value and the version a compare-and-set must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned {
    /// The version (NATS KV revision); 0 when the key has never been written.
    pub(crate) version: u64,
    /// The value, `None` when absent or deleted.
    pub(crate) value: Option<Bytes>,
}

/// A store with versioned reads and compare-and-set writes.
pub(crate) trait CasStore: Send + Sync + 'static {
    /// The key's value and version now.
    fn read(&self, key: &str) -> impl Future<Output = Result<Versioned, StorageError>> + Send;

    /// Writes `value` if the key is still at `version`: `Some(new version)` when written,
    /// `None` when another writer changed it first.
    fn write(
        &self,
        key: &str,
        version: u64,
        value: Bytes,
    ) -> impl Future<Output = Result<Option<u64>, StorageError>> + Send;
}

/// One queued increment.
struct Waiter {
    delta: i128,
    range: CounterRange,
    deadline: Instant,
    reply: oneshot::Sender<Result<i128, StorageError>>,
}

/// Combines concurrent increments of each key of one store (see the module docs).
pub(crate) struct Combiner<S> {
    store: Arc<S>,
    /// Keys with a driver running, and the increments waiting for its next batch.
    queues: Mutex<HashMap<String, Vec<Waiter>>>,
    deadline: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl<S: CasStore> Combiner<S> {
    /// A combiner writing to `store`, with the default [`INCREMENT_DEADLINE`].
    pub(crate) fn new(store: Arc<S>) -> Self {
        Self::with_deadline(store, INCREMENT_DEADLINE)
    }

    /// A combiner whose increments give up `deadline` after their caller arrived.
    pub(crate) fn with_deadline(store: Arc<S>, deadline: Duration) -> Self {
        Self {
            store,
            queues: Mutex::new(HashMap::new()),
            deadline,
        }
    }

    /// Adds `delta` to the counter at `key`, which must stay within `range`, and returns the
    /// counter's value right after this delta.
    pub(crate) async fn increment(
        self: &Arc<Self>,
        key: &str,
        delta: i128,
        range: CounterRange,
    ) -> Result<i128, StorageError> {
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter {
            delta,
            range,
            deadline: Instant::now() + self.deadline,
            reply,
        };
        let start_driver = {
            let mut queues = lock(&self.queues);
            match queues.get_mut(key) {
                Some(queue) => {
                    queue.push(waiter);
                    false
                }
                None => {
                    queues.insert(key.to_owned(), vec![waiter]);
                    true
                }
            }
        };
        if start_driver {
            // A task of its own, so a caller that stops waiting cannot strand the others.
            tokio::spawn(self.clone().drive(key.to_owned()));
        }
        answer.await.map_err(|_| {
            StorageError::Other(format!(
                "the increment of `{key}` was abandoned: its driver stopped (is the host shutting down?)"
            ))
        })?
    }

    /// Applies the queued increments of `key`, batch after batch, until none are left.
    async fn drive(self: Arc<Self>, key: String) {
        let mut guard = DriverGuard {
            queues: &self.queues,
            key: &key,
            armed: true,
        };
        // The last value this driver wrote: the next batch tries it before reading.
        let mut known: Option<Versioned> = None;
        loop {
            let batch = {
                let mut queues = lock(&self.queues);
                let queue = queues.get_mut(&key).map(std::mem::take).unwrap_or_default();
                let batch: Vec<Waiter> =
                    queue.into_iter().filter(|w| !w.reply.is_closed()).collect();
                if batch.is_empty() {
                    queues.remove(&key);
                    guard.armed = false;
                    return;
                }
                batch
            };
            known = self.apply(&key, batch, known).await;
        }
    }

    /// One compare-and-set for the sum of `batch`, retried on conflicts until the batch's
    /// deadline; answers every waiter. Returns what was written, if anything.
    async fn apply(
        &self,
        key: &str,
        batch: Vec<Waiter>,
        mut known: Option<Versioned>,
    ) -> Option<Versioned> {
        let deadline = batch
            .iter()
            .map(|w| w.deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + self.deadline);
        let mut conflicts: u32 = 0;
        loop {
            let (state, from_cache) = match known.take() {
                Some(state) => (state, true),
                None => match bounded(deadline, key, "read", self.store.read(key)).await {
                    Ok(state) => (state, false),
                    Err(e) => {
                        fail_all(batch, &e);
                        return None;
                    }
                },
            };
            let (outcomes, total) = match plan(key, state.value.as_deref(), &batch) {
                Ok(plan) => plan,
                Err(e) => {
                    fail_all(batch, &e);
                    return None;
                }
            };
            let Some(total) = total else {
                // Nothing to write (every delta was refused): answer from this read.
                answer_all(batch, outcomes);
                return Some(state);
            };
            let value = Bytes::from(total.to_string());
            match bounded(
                deadline,
                key,
                "write",
                self.store.write(key, state.version, value.clone()),
            )
            .await
            {
                Ok(Some(version)) => {
                    answer_all(batch, outcomes);
                    return Some(Versioned {
                        version,
                        value: Some(value),
                    });
                }
                Ok(None) if from_cache => {
                    // Someone else wrote since this driver's last write; read and try again.
                    continue;
                }
                Ok(None) => {
                    conflicts = conflicts.saturating_add(1);
                    let pause = backoff(conflicts);
                    if Instant::now() + pause >= deadline {
                        let e = StorageError::Other(format!(
                            "`{key}` kept changing under writers on other hosts; gave up after \
                             {conflicts} conflicting attempts, at the {} ms increment deadline \
                             (nothing was added)",
                            self.deadline.as_millis()
                        ));
                        fail_all(batch, &e);
                        return None;
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    fail_all(batch, &e);
                    return None;
                }
            }
        }
    }
}

/// Runs one store operation, giving up at `deadline`.
async fn bounded<T>(
    deadline: Instant,
    key: &str,
    what: &str,
    op: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout_at(deadline, op).await {
        Ok(result) => result,
        Err(_) if what == "write" => Err(StorageError::Other(format!(
            "the store did not confirm the increment of `{key}` in time; it may or may not have \
             been applied"
        ))),
        Err(_) => Err(StorageError::Other(format!(
            "the store did not answer the {what} of `{key}` in time (nothing was added)"
        ))),
    }
}

/// Each waiter's result, in batch order, and the final value to write (`None` when every
/// delta was refused, so nothing changes).
type BatchPlan = (Vec<Result<i128, StorageError>>, Option<i128>);

/// Each waiter's result when the batch is applied in order to `current`, and the final value
/// to write (`None` when every delta was refused, so nothing changes).
fn plan(key: &str, current: Option<&[u8]>, batch: &[Waiter]) -> Result<BatchPlan, StorageError> {
    let mut value = match current {
        Some(bytes) => parse_counter(key, bytes)?,
        None => 0,
    };
    let mut changed = false;
    let outcomes = batch
        .iter()
        .map(|w| {
            let next = add(key, value, w.delta, w.range)?;
            value = next;
            changed = true;
            Ok(next)
        })
        .collect();
    Ok((outcomes, changed.then_some(value)))
}

fn answer_all(batch: Vec<Waiter>, outcomes: Vec<Result<i128, StorageError>>) {
    for (waiter, outcome) in batch.into_iter().zip(outcomes) {
        // A caller that stopped waiting no longer needs its answer.
        let _ = waiter.reply.send(outcome);
    }
}

fn fail_all(batch: Vec<Waiter>, error: &StorageError) {
    for waiter in batch {
        let _ = waiter.reply.send(Err(error.clone()));
    }
}

/// A random pause in `[0, min(cap, base * 2^(conflicts - 1))]` (full jitter), so hosts that
/// collided do not collide again in lockstep.
fn backoff(conflicts: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << conflicts.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    // Every `RandomState` is freshly keyed, which makes its hash of nothing a random number.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_nanos(random % (nanos + 1))
}

/// Removes the key's queue if its driver ends without doing so (a panic, or the runtime
/// shutting down), so later increments start a new driver instead of queueing forever.
struct DriverGuard<'a> {
    queues: &'a Mutex<HashMap<String, Vec<Waiter>>>,
    key: &'a str,
    armed: bool,
}

impl Drop for DriverGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Dropping the waiters tells their callers the increment was abandoned.
            lock(self.queues).remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A compare-and-set store in memory; `conflicts` writes fail because "another host"
    /// adds `interference` first.
    #[derive(Default)]
    struct FakeStore {
        state: Mutex<(u64, Option<Bytes>)>,
        conflicts: AtomicUsize,
        interference: i128,
        reads: AtomicUsize,
        writes: AtomicUsize,
    }

    impl FakeStore {
        fn value(&self) -> i128 {
            let state = lock(&self.state);
            state
                .1
                .as_deref()
                .map(|b| parse_counter("k", b).expect("a number"))
                .unwrap_or(0)
        }
    }

    impl CasStore for FakeStore {
        async fn read(&self, _key: &str) -> Result<Versioned, StorageError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            let state = lock(&self.state);
            Ok(Versioned {
                version: state.0,
                value: state.1.clone(),
            })
        }

        async fn write(
            &self,
            _key: &str,
            version: u64,
            value: Bytes,
        ) -> Result<Option<u64>, StorageError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            let interfere = self
                .conflicts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let mut state = lock(&self.state);
            if interfere {
                let current = state
                    .1
                    .as_deref()
                    .map(|b| parse_counter("k", b).expect("a number"))
                    .unwrap_or(0);
                state.0 += 1;
                state.1 = Some(Bytes::from((current + self.interference).to_string()));
            }
            if state.0 != version {
                return Ok(None);
            }
            state.0 += 1;
            state.1 = Some(value);
            Ok(Some(state.0))
        }
    }

    /// Starts `n` increments of `k` by 1, each polled once (so queued) before any other
    /// task runs, then waits for all of them; the results sorted.
    async fn concurrent_increments(combiner: &Arc<Combiner<FakeStore>>, n: usize) -> Vec<i128> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            let combiner = combiner.clone();
            let mut call =
                Box::pin(async move { combiner.increment("k", 1, CounterRange::U64).await });
            assert!(futures::poll!(call.as_mut()).is_pending());
            all.push(call);
        }
        let mut results: Vec<i128> = futures::future::join_all(all)
            .await
            .into_iter()
            .map(|r| r.expect("increment"))
            .collect();
        results.sort_unstable();
        results
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_each_count_once_with_distinct_results() {
        let store = Arc::new(FakeStore::default());
        let combiner = Arc::new(Combiner::new(store.clone()));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let combiner = combiner.clone();
            tasks.push(tokio::spawn(async move {
                combiner.increment("k", 1, CounterRange::U64).await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("task").expect("increment"));
        }
        results.sort_unstable();
        assert_eq!(results, (1..=50).collect::<Vec<i128>>());
        assert_eq!(store.value(), 50);
        assert!(lock(&combiner.queues).is_empty(), "the driver finished");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn increments_queued_together_become_one_compare_and_set() {
        let store = Arc::new(FakeStore::default());
        let combiner = Arc::new(Combiner::new(store.clone()));
        // All 50 are queued before the driver first runs (one thread).
        let results = concurrent_increments(&combiner, 50).await;
        assert_eq!(results, (1..=50).collect::<Vec<i128>>());
        assert_eq!(store.value(), 50);
        assert_eq!(store.writes.load(Ordering::SeqCst), 1, "one write for 50");
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);

        // The next batch reuses the driver's own write when the driver is still running;
        // a new driver reads again. Either way the count goes on.
        let results = concurrent_increments(&combiner, 10).await;
        assert_eq!(results, (51..=60).collect::<Vec<i128>>());
        assert_eq!(store.value(), 60);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn conflicts_with_other_writers_are_retried_and_nothing_is_lost() {
        let store = Arc::new(FakeStore {
            conflicts: AtomicUsize::new(3),
            interference: 10,
            ..FakeStore::default()
        });
        let combiner = Arc::new(Combiner::new(store.clone()));
        let results = concurrent_increments(&combiner, 20).await;
        // Three writes by "another host" (+10 each) came first; ours follow one by one.
        assert_eq!(results, (31..=50).collect::<Vec<i128>>());
        assert_eq!(store.value(), 50);
        assert_eq!(store.writes.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn endless_conflicts_fail_at_the_deadline_with_a_clear_error() {
        let store = Arc::new(FakeStore {
            conflicts: AtomicUsize::new(usize::MAX),
            interference: 1,
            ..FakeStore::default()
        });
        // Long enough that the first read answers even on a loaded machine (the fake store
        // answers at once): what runs out is the retries, not the read.
        let combiner = Arc::new(Combiner::with_deadline(
            store.clone(),
            Duration::from_secs(1),
        ));
        let error = combiner
            .increment("k", 1, CounterRange::U64)
            .await
            .expect_err("cannot succeed");
        let StorageError::Other(message) = error else {
            panic!("unexpected error kind: {error:?}");
        };
        assert!(
            message.contains("kept changing") && message.contains("nothing was added"),
            "{message}"
        );
        assert!(store.writes.load(Ordering::SeqCst) > 1, "it retried");
    }

    #[test]
    fn a_batch_applies_in_order_and_refuses_only_the_deltas_out_of_range() {
        let waiter = |delta: i128, range: CounterRange| Waiter {
            delta,
            range,
            deadline: Instant::now(),
            reply: oneshot::channel().0,
        };
        let batch = [
            waiter(1, CounterRange::U64),
            waiter(-5, CounterRange::U64),
            waiter(-5, CounterRange::I64),
            waiter(2, CounterRange::U64),
        ];
        let (outcomes, total) = plan("k", Some(b"3"), &batch).expect("plan");
        assert_eq!(outcomes[0], Ok(4));
        assert!(outcomes[1].is_err(), "u64 counters cannot go below 0");
        assert_eq!(outcomes[2], Ok(-1));
        assert!(outcomes[3].is_err(), "-1 is out of range for a u64 counter");
        assert_eq!(total, Some(-1));

        let (outcomes, total) = plan("k", None, &batch[1..2]).expect("plan");
        assert!(outcomes[0].is_err());
        assert_eq!(total, None, "nothing to write");
        assert!(plan("k", Some(b"abc"), &batch).is_err());
    }

    #[test]
    fn backoff_grows_to_the_cap_and_stays_within_it() {
        for conflicts in 1..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << (conflicts - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(backoff(conflicts) <= ceiling);
        }
        let pauses: Vec<Duration> = (0..32).map(|_| backoff(20)).collect();
        assert!(
            pauses.iter().any(|p| *p != pauses[0]),
            "the pauses are random"
        );
    }
}
