//! Caps the concurrent instances of one component. Requests that find every instance busy
//! wait in a bounded first-come-first-served queue, each until its own deadline.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// What a freed slot (or a scale-down to zero) tells a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// The slot is yours: it was handed over without being freed, so nobody can take it first.
    Granted,
    /// The component was scaled to zero instances: stop waiting.
    Refused,
}

/// Counters and waiters, behind the gate's mutex (never held across an await).
#[derive(Debug)]
struct GateState {
    max_instances: u32,
    queue_bound: u32,
    in_flight: usize,
    /// Requests waiting now (live entries of `waiters`).
    queued: usize,
    /// Waiters in arrival order. An entry whose request stopped waiting (deadline, caller
    /// gone) stays until it is reached or pruned; sending to it fails, so it is skipped.
    waiters: VecDeque<oneshot::Sender<Admission>>,
}

impl GateState {
    /// Hands one slot to the oldest live waiter; false if there is none.
    fn hand_to_waiter(&mut self) -> bool {
        while let Some(waiter) = self.waiters.pop_front() {
            if waiter.send(Admission::Granted).is_ok() {
                self.queued -= 1;
                return true;
            }
        }
        false
    }

    /// Frees one running slot: it goes straight to the oldest waiter unless the cap was
    /// lowered below what is running.
    fn release(&mut self) {
        if self.in_flight > self.max_instances as usize || !self.hand_to_waiter() {
            self.in_flight -= 1;
        }
    }

    /// Drops the entries of requests that stopped waiting once they outnumber the live ones
    /// (amortised: a component whose callers keep giving up does not grow the queue forever).
    fn prune(&mut self) {
        if self.waiters.len() > 2 * self.queued + 64 {
            self.waiters.retain(|waiter| !waiter.is_closed());
        }
    }
}

/// Why the gate turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Refused at once: the wait queue is at its bound, or the cap is zero.
    Full {
        /// The cap when refused.
        max_instances: u32,
        /// Requests waiting when refused.
        queued: usize,
    },
    /// Waited the whole allowed time without an instance coming free.
    TimedOut {
        /// The cap when the wait ended.
        max_instances: u32,
        /// How long it waited.
        waited: Duration,
    },
}

/// A resizable counting gate: at most `max_instances` permits out, at most `queue_bound`
/// waiters, served in arrival order. Taking a free permit is one uncontended lock and no
/// allocation; only a request that has to wait allocates (its wake-up channel).
#[derive(Debug)]
pub(crate) struct InstanceGate {
    state: Mutex<GateState>,
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
                waiters: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is plain counters and a queue, always consistent between statements that
        // cannot panic: a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the cap and queue bound. Raising the cap admits waiters at once; lowering it
    /// lets running instances finish and admits new ones only once fewer than the new cap
    /// run; zero also turns away every waiting request. A lower bound does not evict waiters.
    pub(crate) fn resize(&self, max_instances: u32, queue_bound: u32) {
        let mut state = self.lock();
        state.max_instances = max_instances;
        state.queue_bound = queue_bound;
        if max_instances == 0 {
            for waiter in std::mem::take(&mut state.waiters) {
                if waiter.send(Admission::Refused).is_ok() {
                    state.queued -= 1;
                }
            }
            return;
        }
        while state.in_flight < max_instances as usize && state.hand_to_waiter() {
            state.in_flight += 1;
        }
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

    /// Takes a permit: at once if an instance is free, else after waiting (in arrival order)
    /// at most `max_wait`. Refused at once when `queue_bound` requests already wait or the cap
    /// is zero. Cancel-safe: a dropped wait leaves the queue, and a slot handed to it in the
    /// meantime goes on to the next waiter.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        max_wait: Duration,
    ) -> Result<InstancePermit, Refusal> {
        let receiver = {
            let mut state = self.lock();
            // Freed slots go straight to waiters, so a free slot means nobody waits: taking
            // it cannot jump the queue.
            if state.in_flight < state.max_instances as usize {
                state.in_flight += 1;
                return Ok(InstancePermit { gate: self.clone() });
            }
            if state.max_instances == 0 || state.queued >= state.queue_bound as usize {
                return Err(Refusal::Full {
                    max_instances: state.max_instances,
                    queued: state.queued,
                });
            }
            let (sender, receiver) = oneshot::channel();
            state.prune();
            state.waiters.push_back(sender);
            state.queued += 1;
            receiver
        };
        let mut waiting = Waiting {
            gate: self,
            receiver,
            settled: false,
        };
        match tokio::time::timeout(max_wait, &mut waiting.receiver).await {
            Ok(Ok(admission)) => {
                waiting.settled = true;
                match admission {
                    Admission::Granted => Ok(InstancePermit { gate: self.clone() }),
                    Admission::Refused => Err(Refusal::Full {
                        max_instances: 0,
                        queued: 0,
                    }),
                }
            }
            // The sender is only dropped unsent for a receiver that is gone: not this one.
            // Treat it like a refusal; dropping `waiting` fixes the count.
            Ok(Err(_)) => Err(Refusal::Full {
                max_instances: self.max_instances(),
                queued: self.queued(),
            }),
            Err(_elapsed) => {
                drop(waiting);
                Err(Refusal::TimedOut {
                    max_instances: self.max_instances(),
                    waited: max_wait,
                })
            }
        }
    }
}

/// One request's place in the queue; leaves it when the wait ends without a decision.
struct Waiting<'a> {
    gate: &'a Arc<InstanceGate>,
    receiver: oneshot::Receiver<Admission>,
    settled: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.gate.lock();
        // After `close`, nothing more can be sent: either a decision arrived before (and was
        // counted out of `queued` by its sender), or this request is still counted as waiting.
        self.receiver.close();
        match self.receiver.try_recv() {
            // A slot was handed over as we gave up: pass it on.
            Ok(Admission::Granted) => state.release(),
            Ok(Admission::Refused) => {}
            Err(_) => state.queued -= 1,
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
        self.gate.lock().release();
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

#[cfg(test)]
mod gate_tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Generous bound for any single step (never reached unless the gate is broken).
    const STEP: Duration = Duration::from_secs(60);

    /// Polls `condition` until it holds (fails after [`STEP`]).
    async fn wait_until(condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Polls `future` once (registering it, e.g. in the queue) without waiting.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_request_finding_no_free_instance_waits_and_is_served_in_arrival_order() {
        let gate = InstanceGate::new(1, 1000);
        let held = gate.acquire(STEP).await.expect("a free instance");
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for arrival in 0..50 {
            let gate_for_task = gate.clone();
            let order_tx = order_tx.clone();
            waiters.push(tokio::spawn(async move {
                let permit = gate_for_task.acquire(STEP).await?;
                order_tx.send(arrival).expect("the test listens");
                drop(permit);
                Ok::<(), Refusal>(())
            }));
            // One at a time, so arrival order is known.
            wait_until(|| gate.queued() == arrival + 1).await;
        }
        assert_eq!(gate.in_flight(), 1);
        drop(held);
        for waiter in waiters {
            tokio::time::timeout(STEP, waiter)
                .await
                .expect("served in time")
                .expect("joined")
                .expect("a waiting request is served, not refused");
        }
        let mut served = Vec::new();
        while let Ok(arrival) = order_rx.try_recv() {
            served.push(arrival);
        }
        assert_eq!(
            served,
            (0..50).collect::<Vec<_>>(),
            "first come, first served"
        );
        assert_eq!((gate.in_flight(), gate.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline_and_leaves_the_queue() {
        let gate = InstanceGate::new(1, 10);
        let held = gate.acquire(STEP).await.expect("a free instance");
        let refusal = gate
            .acquire(Duration::from_millis(20))
            .await
            .expect_err("the only instance stays busy");
        assert_eq!(
            refusal,
            Refusal::TimedOut {
                max_instances: 1,
                waited: Duration::from_millis(20)
            }
        );
        assert_eq!(gate.queued(), 0, "a timed-out request no longer waits");
        drop(held);
        assert_eq!(
            gate.in_flight(),
            0,
            "the freed slot is not handed to the gone waiter"
        );
        let again = gate.acquire(STEP).await.expect("free again");
        drop(again);
    }

    #[tokio::test]
    async fn requests_are_refused_only_once_the_queue_is_at_its_bound() {
        let gate = InstanceGate::new(1, 3);
        let held = gate.acquire(STEP).await.expect("a free instance");
        let mut waiters = Vec::new();
        for queued in 1..=3 {
            let gate_for_task = gate.clone();
            waiters.push(tokio::spawn(async move {
                gate_for_task.acquire(STEP).await.map(drop)
            }));
            wait_until(|| gate.queued() == queued).await;
        }
        let refusal = gate.acquire(STEP).await.expect_err("past the bound");
        assert_eq!(
            refusal,
            Refusal::Full {
                max_instances: 1,
                queued: 3
            }
        );
        drop(held);
        for waiter in waiters {
            tokio::time::timeout(STEP, waiter)
                .await
                .expect("served in time")
                .expect("joined")
                .expect("the requests within the bound are served");
        }
        let zero_bound = InstanceGate::new(1, 0);
        let held = zero_bound.acquire(STEP).await.expect("a free instance");
        assert!(matches!(
            zero_bound.acquire(STEP).await,
            Err(Refusal::Full { queued: 0, .. })
        ));
        drop(held);
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_request_that_gave_up_goes_to_the_next() {
        let gate = InstanceGate::new(1, 10);
        let held = gate.acquire(STEP).await.expect("a free instance");
        let mut first = Box::pin(gate.acquire(STEP));
        assert!(poll_once(first.as_mut()).is_pending(), "first waits");
        let mut second = pin!(gate.acquire(STEP));
        assert!(poll_once(second.as_mut()).is_pending(), "second waits");
        assert_eq!(gate.queued(), 2);
        // The freed slot goes to `first`, which gives up before it looks.
        drop(held);
        assert_eq!((gate.in_flight(), gate.queued()), (1, 1));
        drop(first);
        assert_eq!((gate.in_flight(), gate.queued()), (1, 0), "passed on");
        let permit = tokio::time::timeout(STEP, second)
            .await
            .expect("in time")
            .expect("second gets the slot first gave up");
        drop(permit);
        assert_eq!(gate.in_flight(), 0);

        // A request that gives up before any slot frees just leaves the queue.
        let held = gate.acquire(STEP).await.expect("a free instance");
        let mut gone = Box::pin(gate.acquire(STEP));
        assert!(poll_once(gone.as_mut()).is_pending());
        drop(gone);
        assert_eq!(gate.queued(), 0);
        drop(held);
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test]
    async fn scaling_up_admits_waiters_and_scaling_to_zero_turns_them_away() {
        let gate = InstanceGate::new(1, 10);
        let held = gate.acquire(STEP).await.expect("a free instance");
        let mut first = pin!(gate.acquire(STEP));
        assert!(poll_once(first.as_mut()).is_pending());
        let mut second = pin!(gate.acquire(STEP));
        assert!(poll_once(second.as_mut()).is_pending());

        gate.resize(2, 10);
        let admitted = tokio::time::timeout(STEP, first)
            .await
            .expect("in time")
            .expect("a scale-up admits the oldest waiter");
        assert_eq!((gate.in_flight(), gate.queued()), (2, 1));

        gate.resize(0, 0);
        assert_eq!(
            tokio::time::timeout(STEP, second)
                .await
                .expect("in time")
                .expect_err("a scale to zero turns waiters away"),
            Refusal::Full {
                max_instances: 0,
                queued: 0
            }
        );
        assert!(matches!(
            gate.acquire(STEP).await,
            Err(Refusal::Full {
                max_instances: 0,
                ..
            })
        ));

        // Running instances finish; a slot freed above the lowered cap is not reused.
        gate.resize(1, 10);
        drop(held);
        assert_eq!(gate.in_flight(), 1);
        let mut third = pin!(gate.acquire(STEP));
        assert!(
            poll_once(third.as_mut()).is_pending(),
            "still at the cap of 1"
        );
        drop(admitted);
        let last = tokio::time::timeout(STEP, third)
            .await
            .expect("in time")
            .expect("admitted once below the cap");
        drop(last);
        assert_eq!((gate.in_flight(), gate.queued()), (0, 0));
    }

    #[tokio::test]
    async fn abandoned_waits_do_not_grow_the_queue_without_bound() {
        let gate = InstanceGate::new(1, 10);
        let held = gate.acquire(STEP).await.expect("a free instance");
        for _ in 0..10_000 {
            let mut gone = Box::pin(gate.acquire(STEP));
            assert!(poll_once(gone.as_mut()).is_pending());
        }
        assert_eq!(gate.queued(), 0);
        assert!(
            gate.lock().waiters.len() <= 64 + 1,
            "entries of gone waiters are pruned"
        );
        drop(held);
    }
}
