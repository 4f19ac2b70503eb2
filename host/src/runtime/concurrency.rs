//! Caps the concurrent instances of one component, with a bounded queue of waiters.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Counters protected by the gate's mutex (never held across an await).
#[derive(Debug)]
struct GateState {
    max_instances: u32,
    queue_bound: u32,
    in_flight: usize,
    queued: usize,
}

/// The gate refused a request: `max_instances` busy and `queued` already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GateFull {
    pub(crate) max_instances: u32,
    pub(crate) queued: usize,
}

/// A resizable counting gate: at most `max_instances` permits out, at most `queue_bound` waiters.
#[derive(Debug)]
pub(crate) struct InstanceGate {
    state: Mutex<GateState>,
    freed: Notify,
}

impl InstanceGate {
    /// A gate with the given cap and queue bound.
    pub(crate) fn new(max_instances: u32, queue_bound: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                max_instances,
                queue_bound,
                in_flight: 0,
                queued: 0,
            }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is plain counters, always consistent: a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the cap and queue bound. Raising the cap wakes waiters; lowering it lets running
    /// instances finish and admits new ones only once fewer than the new cap are running.
    pub(crate) fn resize(&self, max_instances: u32, queue_bound: u32) {
        {
            let mut state = self.lock();
            state.max_instances = max_instances;
            state.queue_bound = queue_bound;
        }
        self.freed.notify_waiters();
    }

    /// Current cap.
    pub(crate) fn max_instances(&self) -> u32 {
        self.lock().max_instances
    }

    /// Instances running now.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Requests waiting now.
    pub(crate) fn queued(&self) -> usize {
        self.lock().queued
    }

    /// Waits for a permit, or fails at once if the queue is full. Cancel-safe.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<InstancePermit, GateFull> {
        let mut waiting: Option<QueuedMarker> = None;
        loop {
            let mut freed = pin!(self.freed.notified());
            // Register before checking, so a release between the check and the await wakes us.
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.max_instances as usize {
                    state.in_flight += 1;
                    if let Some(mut marker) = waiting.take() {
                        marker.armed = false;
                        state.queued -= 1;
                    }
                    return Ok(InstancePermit { gate: self.clone() });
                }
                // With a cap of zero no slot will free up until a scale-up: refuse, don't queue.
                if waiting.is_none() || state.max_instances == 0 {
                    if state.max_instances == 0 || state.queued >= state.queue_bound as usize {
                        return Err(GateFull {
                            max_instances: state.max_instances,
                            queued: state.queued,
                        });
                    }
                    state.queued += 1;
                    waiting = Some(QueuedMarker {
                        gate: self.clone(),
                        armed: true,
                    });
                }
            }
            freed.await;
        }
    }
}

/// Counts a waiter in the queue; un-counts it if the waiting future is dropped.
struct QueuedMarker {
    gate: Arc<InstanceGate>,
    armed: bool,
}

impl Drop for QueuedMarker {
    fn drop(&mut self) {
        if self.armed {
            self.gate.lock().queued -= 1;
            // We may have consumed a wake-up meant for someone else: pass it on.
            self.gate.freed.notify_one();
        }
    }
}

/// One running instance; frees the slot when dropped.
#[derive(Debug)]
pub(crate) struct InstancePermit {
    gate: Arc<InstanceGate>,
}

impl Drop for InstancePermit {
    fn drop(&mut self) {
        self.gate.lock().in_flight -= 1;
        self.gate.freed.notify_one();
    }
}

/// How many spare instances (made ahead of their call, see
/// `PreparedComponent::prepare_spare`) the whole runtime may hold at once, so spares never
/// take the pool slots that running calls need.
#[derive(Debug)]
pub(crate) struct SpareBudget {
    live: AtomicUsize,
    max: usize,
}

impl SpareBudget {
    /// A budget of `max` spares.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            live: AtomicUsize::new(0),
            max,
        })
    }

    /// Room for one more spare, or `None` when the budget is used up.
    pub(crate) fn try_reserve(self: &Arc<Self>) -> Option<SpareToken> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < self.max).then_some(live + 1)
            })
            .ok()
            .map(|_| SpareToken {
                budget: self.clone(),
            })
    }
}

/// One spare's share of the [`SpareBudget`], returned on drop.
#[derive(Debug)]
pub(crate) struct SpareToken {
    budget: Arc<SpareBudget>,
}

impl Drop for SpareToken {
    fn drop(&mut self) {
        self.budget.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod spare_budget_tests {
    use super::SpareBudget;

    #[test]
    fn the_budget_caps_live_spares_and_frees_on_drop() {
        let budget = SpareBudget::new(2);
        let first = budget.try_reserve().expect("room for one");
        let second = budget.try_reserve().expect("room for two");
        assert!(budget.try_reserve().is_none(), "a third must be refused");
        drop(first);
        let third = budget.try_reserve().expect("room again after a drop");
        drop((second, third));
        assert!(SpareBudget::new(0).try_reserve().is_none());
    }
}
