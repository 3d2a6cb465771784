//! Polling a future only after one of its own wake-ups.
//!
//! A session's two halves (and the gateway's cut-off beside them) are futures of one task, and
//! a task is polled as a whole: without this, data arriving for one half polls the other half
//! too, and with it every timer, token and word of the other half it waits on. [`Gated`]
//! hands the future it wraps a waker of its own, which marks the future woken and then wakes the
//! task. The task is polled as before, but the wrapped future only once at the start and then
//! after its waker fired; other polls of the task skip it (an uncontended lock and an atomic
//! swap). Inside a half, a [`Gate`] does the same for the futures that only carry control events
//! (the other half's word, timers, cancellation), so that a pass of the data path polls none of
//! them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// What a [`Gate`]'s waker shares with it.
struct GateState {
    /// The wrapped future's waker fired since it was last polled.
    woken: AtomicBool,
    /// The task's waker, as of its latest poll.
    task: Mutex<Option<Waker>>,
}

impl Wake for GateState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        super::wake_slot(&self.task);
    }
}

/// A waker of its own for some futures, and whether it fired since they were last polled.
pub(crate) struct Gate {
    state: Arc<GateState>,
    waker: Waker,
    /// The task's waker last handed to `state` (compared without taking its lock).
    task: Option<Waker>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        let state = Arc::new(GateState {
            // Polled at the first poll of the task.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(state.clone());
        Gate {
            state,
            waker,
            task: None,
        }
    }

    /// Run `poll` (which polls the gated futures) with the gate's waker if it fired since the
    /// last time, or if the futures changed since ([`Gate::open`]); `Pending` without running
    /// it otherwise. After `Ready` the next call runs it again: `poll` may have returned before
    /// polling every future, or replaced the one that completed.
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the flag is read: a wake-up between the two is not lost. The lock is
        // taken only when the task's waker changed (in practice, at the first poll).
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            *self.state.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            self.task = Some(waker);
        }
        if !self.state.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let r = poll(&mut Context::from_waker(&self.waker));
        if r.is_ready() {
            self.open();
        }
        r
    }

    /// A gated future was replaced or re-armed outside [`Gate::poll`]: run it at the next call.
    pub(crate) fn open(&self) {
        self.state.woken.store(true, Ordering::Release);
    }
}

/// A future polled only once woken through its own waker (see the module doc).
pub(crate) struct Gated<F> {
    fut: F,
    gate: Gate,
}

impl<F> Gated<F> {
    pub(crate) fn new(fut: F) -> Gated<F> {
        Gated {
            fut,
            gate: Gate::new(),
        }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let fut = &mut this.fut;
        this.gate.poll(cx, |cx| Pin::new(fut).poll(cx))
    }
}

/// Run two futures to their ends together (a session's halves), each polled only after a
/// wake-up of its own ([`Gated`]). Like `tokio::join!` of two gated futures, without its
/// per-poll bookkeeping: the first is always polled first.
pub(crate) async fn join_gated<A, B>(a: A, b: B) -> (A::Output, B::Output)
where
    A: Future + Unpin,
    B: Future + Unpin,
{
    let (mut a, mut b) = (Gated::new(a), Gated::new(b));
    let (mut done_a, mut done_b) = (None, None);
    std::future::poll_fn(move |cx| {
        if done_a.is_none() {
            if let Poll::Ready(out) = Pin::new(&mut a).poll(cx) {
                done_a = Some(out);
            }
        }
        if done_b.is_none() {
            if let Poll::Ready(out) = Pin::new(&mut b).poll(cx) {
                done_b = Some(out);
            }
        }
        match (done_a.take(), done_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (done_a, done_b) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn a_gated_future_sees_its_own_wake_ups() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let waiter = std::pin::pin!(async move { n.notified().await });
        let mut gated = Gated::new(waiter);
        // Registers its waiter at the first poll, then completes once notified.
        assert!(poll_once(&mut gated).await.is_pending());
        assert!(poll_once(&mut gated).await.is_pending());
        notify.notify_one();
        assert!(poll_once(&mut gated).await.is_ready());
    }

    #[tokio::test]
    async fn joined_futures_both_finish_and_each_is_polled_on_its_own_wake_ups() {
        let polls = std::cell::Cell::new(0);
        let counting = std::future::poll_fn(|_| {
            polls.set(polls.get() + 1);
            Poll::<()>::Pending
        });
        let counting = std::pin::pin!(counting);
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let first = std::pin::pin!(async move {
            n.notified().await;
            7
        });
        let mut joined = std::pin::pin!(join_gated(first, counting));
        for _ in 0..3 {
            assert!(poll_once(&mut joined).await.is_pending());
        }
        // The second was polled once (at the start): nothing woke it since.
        assert_eq!(polls.get(), 1);
        notify.notify_one();
        assert!(poll_once(&mut joined).await.is_pending());
        assert_eq!(polls.get(), 1);

        let a = std::pin::pin!(async { 1 });
        let b = std::pin::pin!(async {
            tokio::task::yield_now().await;
            "two"
        });
        assert_eq!(join_gated(a, b).await, (1, "two"));
    }

    #[tokio::test]
    async fn a_gated_future_is_not_polled_without_a_wake_up() {
        let polls = std::cell::Cell::new(0);
        let counting = std::future::poll_fn(|_| {
            polls.set(polls.get() + 1);
            Poll::<()>::Pending
        });
        let counting = std::pin::pin!(counting);
        let mut gated = Gated::new(counting);
        for _ in 0..3 {
            assert!(poll_once(&mut gated).await.is_pending());
        }
        assert_eq!(polls.get(), 1);
        gated.gate.waker.wake_by_ref();
        assert!(poll_once(&mut gated).await.is_pending());
        assert_eq!(polls.get(), 2);
    }
}
