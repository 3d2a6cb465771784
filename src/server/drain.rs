//! The staggered drain: on shutdown, the open sessions are told (each closes with
//! `drain_close_code`) one after another, spread evenly over `drain_window`, so that clients
//! that reconnect on seeing their Close do not all arrive at the next instance in the same
//! moment.
//!
//! Owns the schedule only: one task walks the sessions sorted by id (the order they opened),
//! telling session `i` of `n` at `start + window * i / n`; sessions that open after the list was
//! taken, or that the registry no longer knows, are told together when the walk ends. (Fallback
//! sessions are told at the start, [`Registry::drain_started`]: their clients cannot open new
//! requests once the gateway stops accepting.) It holds
//! one id per session and no task per session. The Close itself, and the closing handshake
//! that follows, are the pump's; the bound on the whole drain (`shutdown_grace`) is the caller's.

use std::time::Duration;

use crate::registry::Registry;
use crate::ws::CloseCode;

/// How the gateway drains: `drain_window` and `drain_close_code`, read at start (like
/// `shutdown_grace`).
#[derive(Debug, Clone, Copy)]
pub(super) struct DrainPlan {
    pub(super) window: Duration,
    pub(super) code: CloseCode,
}

/// Tell every open session, spread over `window`, then every session the walk did not name
/// (those that opened since, and any that register later). With a zero window, every session is
/// told at once.
pub(super) async fn stagger(registry: &Registry, window: Duration) {
    if !window.is_zero() {
        let order = registry.drain_order();
        let n = order.len() as u128;
        let start = tokio::time::Instant::now();
        let window_nanos = window.as_nanos();
        for (i, id) in order.into_iter().enumerate() {
            // window * i / n, in whole nanoseconds (i < n, so this is below `window`).
            let offset = window_nanos * i as u128 / n;
            let at = start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
            // Sessions whose time has come are told without a sleep each.
            if at > tokio::time::Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            registry.drain(id);
        }
    }
    registry.drain_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::SessionInfo;
    use crate::registry::LiveSession;
    use std::sync::Arc;

    fn session(id: u64) -> LiveSession {
        Arc::new(SessionInfo::for_tests(id, false))
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_told_evenly_over_the_window_in_id_order() {
        let registry = Registry::default();
        let mut tokens = Vec::new();
        // Inserted out of order: the schedule follows the ids.
        for id in [3u64, 0, 2, 1] {
            let t = session(id);
            registry.insert(t.clone());
            tokens.push((id, t));
        }
        tokens.sort_by_key(|(id, _)| *id);
        let start = tokio::time::Instant::now();
        let window = Duration::from_secs(4);
        let walk = stagger(&registry, window);
        tokio::pin!(walk);
        let mut told_at = Vec::new();
        let mut done = false;
        while !done {
            tokio::select! {
                () = &mut walk => done = true,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            for (id, t) in &tokens {
                if t.control.told().drain() && !told_at.iter().any(|(i, _)| i == id) {
                    told_at.push((*id, start.elapsed()));
                }
            }
        }
        let ms: Vec<(u64, u128)> = told_at.iter().map(|(i, d)| (*i, d.as_millis())).collect();
        // Session i of 4 at 1 s * i (seen within the 10 ms the observer sleeps).
        assert_eq!(ms.len(), 4, "{ms:?}");
        for (k, (id, at)) in ms.iter().enumerate() {
            assert_eq!(*id, k as u64, "{ms:?}");
            let want = 1000 * k as u128;
            assert!(*at >= want && *at <= want + 10, "{ms:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_tells_everyone_at_once() {
        let registry = Registry::default();
        let t = session(7);
        registry.insert(t.clone());
        stagger(&registry, Duration::ZERO).await;
        assert!(t.control.told().drain());
        let late = session(8);
        registry.insert(late.clone());
        let told = late.control.told();
        assert!(told.drain(), "a session opened after the walk is told too");
        assert!(!told.close() && !told.cut());
    }
}
