//! The live view operators get: the open sessions (with the switch that closes each), whether
//! the gateway takes new connections, and which configuration generation is in force (with its
//! limits). Session bookkeeping and the configuration's one writer write it; the admin endpoint
//! reads it. It depends on nothing of the server, so the admin endpoint does not either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::config::Config;
use crate::pump::SessionInfo;

/// A session as the admin endpoint shows it: the block it shares with the session (its names,
/// live counters and control block).
pub type LiveSession = Arc<SessionInfo>;

/// What the gateway told every session, those that register later included.
const TOLD_DRAIN_STARTED: u8 = 1;
const TOLD_DRAIN_ALL: u8 = 2;
const TOLD_CUT: u8 = 4;

/// The configuration generation in force, as the admin endpoint shows it: when it was applied
/// and the limits the status page sets the live counts against.
#[derive(Debug, Clone)]
pub struct ConfigInfo {
    /// 1 for the configuration the gateway started with, one more for each applied since.
    pub generation: u64,
    /// When the gateway started (the first generation was applied).
    pub started: SystemTime,
    /// When this generation was applied.
    pub loaded: SystemTime,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Route paths with their `max_sessions`, in configuration order.
    pub routes: Vec<(String, Option<usize>)>,
}

/// Open sessions by id, readiness, and the configuration generation in force.
#[derive(Default)]
pub struct Registry {
    /// Shared with the sessions: a table sized for thousands of sessions keeps room for more
    /// than it holds, and an empty slot then costs a pointer, not a whole entry.
    sessions: Mutex<HashMap<u64, LiveSession>>,
    /// False before the listeners are bound and while draining.
    ready: AtomicBool,
    /// `None` until the first configuration is applied.
    config: Mutex<Option<ConfigInfo>>,
    /// `TOLD_*`: changed only with `sessions` locked, so a session registering is told what
    /// every session was told before it, and told again by whatever comes after.
    told_all: AtomicU8,
}

impl Registry {
    /// Register `session` (under its id). It is told at once what every session was told
    /// before: to drain (the drain walk passed, or it drains at the start and the drain
    /// started), to cut.
    pub fn insert(&self, session: LiveSession) {
        let mut sessions = self.lock();
        let told = self.told_all.load(Ordering::Relaxed);
        if told & TOLD_DRAIN_ALL != 0 || (told & TOLD_DRAIN_STARTED != 0 && session.drains_at_start)
        {
            session.control.drain();
        }
        if told & TOLD_CUT != 0 {
            session.control.cut();
        }
        sessions.insert(session.id, session);
    }

    /// Take session `id` out (it ended).
    pub fn remove(&self, id: u64) -> Option<LiveSession> {
        self.lock().remove(&id)
    }

    /// The open sessions, locked while the guard lives (keep it short).
    pub fn sessions(&self) -> MutexGuard<'_, HashMap<u64, LiveSession>> {
        self.lock()
    }

    /// Ask session `id` to close with 1008; its route, or `None` when there is no such session.
    pub fn close(&self, id: u64) -> Option<String> {
        let sessions = self.lock();
        let s = sessions.get(&id)?;
        s.control.close();
        Some(s.route.path.clone())
    }

    /// The ids of the open sessions in the order a drain tells them (oldest first).
    pub fn drain_order(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Tell session `id` that the gateway drains (it is closed with `drain_close_code`); false
    /// when it has ended already.
    pub fn drain(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(s) => {
                s.control.drain();
                true
            }
            None => false,
        }
    }

    /// The gateway starts draining: the sessions that drain at the start are told now, and
    /// those that register later at once.
    pub fn drain_started(&self) {
        self.tell_all(TOLD_DRAIN_STARTED, |s| {
            if s.drains_at_start {
                s.control.drain();
            }
        });
    }

    /// Tell every session, open or yet to register, that the gateway drains (the end of the
    /// drain walk: whoever was not told by name is told now).
    pub fn drain_all(&self) {
        self.tell_all(TOLD_DRAIN_STARTED | TOLD_DRAIN_ALL, |s| s.control.drain());
    }

    /// Cut every session, open or yet to register (`shutdown_grace` passed).
    pub fn cut_all(&self) {
        self.tell_all(TOLD_CUT, |s| s.control.cut());
    }

    fn tell_all(&self, told: u8, tell: impl Fn(&SessionInfo)) {
        let sessions = self.lock();
        self.told_all.fetch_or(told, Ordering::Relaxed);
        for s in sessions.values() {
            tell(s);
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Record that `config` is now the configuration in force (a new generation).
    pub fn config_applied(&self, config: &Config) {
        let now = SystemTime::now();
        let mut info = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, started) = match info.as_ref() {
            Some(i) => (i.generation.saturating_add(1), i.started),
            None => (1, now),
        };
        *info = Some(ConfigInfo {
            generation,
            started,
            loaded: now,
            max_connections: config.http.max_connections,
            max_connections_per_ip: config.http.max_connections_per_ip,
            routes: config
                .routes
                .iter()
                .map(|r| (r.path.clone(), r.max_sessions))
                .collect(),
        });
    }

    /// The configuration generation in force; `None` before the first is applied.
    pub fn config(&self) -> Option<ConfigInfo> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, LiveSession>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, drains_at_start: bool) -> LiveSession {
        Arc::new(SessionInfo::for_tests(id, drains_at_start))
    }

    #[test]
    fn the_drain_start_tells_only_the_sessions_that_drain_at_once() {
        let registry = Registry::default();
        let (open, early) = (session(1, false), session(2, true));
        registry.insert(open.clone());
        registry.insert(early.clone());
        registry.drain_started();
        assert!(!open.control.told().drain());
        assert!(early.control.told().drain());
        // Those that register later are told as they register, by the same rule.
        let (late, late_early) = (session(3, false), session(4, true));
        registry.insert(late.clone());
        registry.insert(late_early.clone());
        assert!(!late.control.told().drain());
        assert!(late_early.control.told().drain());
        registry.drain_all();
        assert!(open.control.told().drain() && late.control.told().drain());
        let after = session(5, false);
        registry.insert(after.clone());
        let told = after.control.told();
        assert!(told.drain() && !told.cut() && !told.close());
    }

    #[test]
    fn the_cut_reaches_open_and_later_sessions_and_close_reaches_one() {
        let registry = Registry::default();
        let (a, b) = (session(1, false), session(2, false));
        registry.insert(a.clone());
        registry.insert(b.clone());
        assert_eq!(registry.close(2).as_deref(), Some("/r"));
        assert_eq!(registry.close(9), None);
        assert!(b.control.told().close() && !a.control.told().close());
        registry.cut_all();
        assert!(a.control.told().cut() && b.control.told().cut());
        assert!(!a.control.told().drain());
        let c = session(3, false);
        registry.insert(c.clone());
        assert!(c.control.told().cut());
        // A session that ended is not told.
        assert!(registry.remove(1).is_some());
        assert!(!registry.drain(1));
    }
}
