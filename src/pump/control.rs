//! What the gateway tells one session from outside its connections: that the gateway drains
//! (its turn in the drain window came), that an operator closed it, and that `shutdown_grace`
//! passed (the cut). One small block per session, shared by the session and its registry entry:
//! three flags and the waker of the one task that waits on them. Telling a session is setting a
//! flag and waking that task; waiting costs the session no future of its own and no node in a
//! gateway-wide tree of tokens.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// The gateway drains: the session is closed with `drain_close_code`.
const DRAIN: u8 = 1;
/// An operator closed the session: it is closed with 1008.
const CLOSE: u8 = 2;
/// `shutdown_grace` passed: the session is cut without a Close.
const CUT: u8 = 4;

/// What a session has been told, as one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Told(u8);

impl Told {
    /// Anything at all.
    pub(crate) const ANY: Told = Told(DRAIN | CLOSE | CUT);
    /// Only the cut.
    pub(crate) const CUT: Told = Told(CUT);

    pub fn drain(self) -> bool {
        self.0 & DRAIN != 0
    }

    pub fn close(self) -> bool {
        self.0 & CLOSE != 0
    }

    pub fn cut(self) -> bool {
        self.0 & CUT != 0
    }

    fn any_of(self, mask: Told) -> bool {
        self.0 & mask.0 != 0
    }
}

/// The session's control block. Each event is told at most once and stays told.
#[derive(Default)]
pub struct SessionControl {
    told: AtomicU8,
    /// The task that waits (the session's, on a worker or on a session thread); one at a time.
    waker: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for SessionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SessionControl").field(&self.told()).finish()
    }
}

impl SessionControl {
    /// The gateway drains: close the session with `drain_close_code`.
    pub fn drain(&self) {
        self.tell(DRAIN);
    }

    /// An operator closes the session: close it with 1008.
    pub fn close(&self) {
        self.tell(CLOSE);
    }

    /// `shutdown_grace` passed: cut the session without a Close.
    pub fn cut(&self) {
        self.tell(CUT);
    }

    /// What the session has been told so far.
    pub fn told(&self) -> Told {
        Told(self.told.load(Ordering::Acquire))
    }

    fn tell(&self, event: u8) {
        if self.told.fetch_or(event, Ordering::AcqRel) & event != 0 {
            return;
        }
        super::wake_slot(&self.waker);
    }

    /// Ready with what was told once any event of `mask` is; until then the calling task is
    /// woken when the session is told anything (it replaces the task that waited before).
    pub(crate) fn poll_told(&self, cx: &mut Context<'_>, mask: Told) -> Poll<Told> {
        let told = self.told();
        if told.any_of(mask) {
            return Poll::Ready(told);
        }
        super::store_waker(&self.waker, cx);
        // Told while the waker was being stored: not lost.
        let told = self.told();
        if told.any_of(mask) {
            return Poll::Ready(told);
        }
        Poll::Pending
    }

    /// Wait until any event of `mask` is told.
    pub(crate) fn told_of(&self, mask: Told) -> impl Future<Output = Told> + '_ {
        std::future::poll_fn(move |cx| self.poll_told(cx, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Count;
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn each_event_is_told_once_wakes_the_waiter_and_stays_told() {
        let control = SessionControl::default();
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(control.poll_told(&mut cx, Told::ANY).is_pending());
        control.close();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Told again: nothing new, no second wake-up.
        control.close();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        let Poll::Ready(told) = control.poll_told(&mut cx, Told::ANY) else {
            panic!("the close was told");
        };
        assert!(told.close() && !told.drain() && !told.cut());
        // Still told at the next look: a flag, not a one-time signal.
        assert!(control.poll_told(&mut cx, Told::ANY).is_ready());
    }

    #[test]
    fn a_wait_for_the_cut_ignores_the_other_events_but_is_woken_by_them() {
        let control = SessionControl::default();
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(control.poll_told(&mut cx, Told::CUT).is_pending());
        control.drain();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(control.poll_told(&mut cx, Told::CUT).is_pending());
        control.cut();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        let Poll::Ready(told) = control.poll_told(&mut cx, Told::CUT) else {
            panic!("the cut was told");
        };
        assert!(told.cut() && told.drain() && !told.close());
    }

    #[test]
    fn the_latest_waiter_is_the_one_woken() {
        let control = SessionControl::default();
        let first = Arc::new(Count(AtomicU64::new(0)));
        let second = Arc::new(Count(AtomicU64::new(0)));
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        assert!(control
            .poll_told(&mut Context::from_waker(&w1), Told::ANY)
            .is_pending());
        assert!(control
            .poll_told(&mut Context::from_waker(&w2), Told::ANY)
            .is_pending());
        control.drain();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }
}
