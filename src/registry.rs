//! The live view operators get: the open sessions (with the switch that closes each), whether
//! the gateway takes new connections, and which configuration generation is in force (with its
//! limits). Session bookkeeping and the configuration's one writer write it; the admin endpoint
//! reads it. It depends on nothing of the server, so the admin endpoint does not either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::config::Config;
use crate::pump::{SessionControl, SessionStats};

/// A session as the admin endpoint shows it.
pub struct LiveSession {
    pub route: String,
    pub client: SocketAddr,
    pub subject: Option<String>,
    /// The backend connected (`host:port` or `unix:/path`): the pool's choice or the session's
    /// own target.
    pub backend: String,
    pub started: SystemTime,
    pub stats: Arc<SessionStats>,
    /// What the gateway tells the session: drain (its turn in the drain window), operator close,
    /// the cut at `shutdown_grace`.
    pub control: Arc<SessionControl>,
    /// Told to drain as soon as the gateway starts draining, not in its turn of the window (a
    /// fallback session: its client cannot open another request once the gateway stops
    /// accepting, so the Close must go out in the one it has open).
    pub drains_at_start: bool,
}

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
    /// Boxed: a table sized for thousands of sessions keeps room for more than it holds, and an
    /// empty slot then costs a pointer, not a whole entry.
    sessions: Mutex<HashMap<u64, Box<LiveSession>>>,
    /// False before the listeners are bound and while draining.
    ready: AtomicBool,
    /// `None` until the first configuration is applied.
    config: Mutex<Option<ConfigInfo>>,
    /// `TOLD_*`: changed only with `sessions` locked, so a session registering is told what
    /// every session was told before it, and told again by whatever comes after.
    told_all: AtomicU8,
}

impl Registry {
    /// Register session `id`. It is told at once what every session was told before: to drain
    /// (the drain walk passed, or it drains at the start and the drain started), to cut.
    pub fn insert(&self, id: u64, session: LiveSession) {
        let mut sessions = self.lock();
        let told = self.told_all.load(Ordering::Relaxed);
        if told & TOLD_DRAIN_ALL != 0 || (told & TOLD_DRAIN_STARTED != 0 && session.drains_at_start)
        {
            session.control.drain();
        }
        if told & TOLD_CUT != 0 {
            session.control.cut();
        }
        sessions.insert(id, Box::new(session));
    }

    /// Take session `id` out: its entry, whose names the session's access line reuses.
    pub fn remove(&self, id: u64) -> Option<LiveSession> {
        self.lock().remove(&id).map(|s| *s)
    }

    /// The open sessions, locked while the guard lives (keep it short).
    pub fn sessions(&self) -> MutexGuard<'_, HashMap<u64, Box<LiveSession>>> {
        self.lock()
    }

    /// Ask session `id` to close with 1008; its route, or `None` when there is no such session.
    pub fn close(&self, id: u64) -> Option<String> {
        let sessions = self.lock();
        let s = sessions.get(&id)?;
        s.control.close();
        Some(s.route.clone())
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

    fn tell_all(&self, told: u8, tell: impl Fn(&LiveSession)) {
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

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Box<LiveSession>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(drains_at_start: bool) -> (LiveSession, Arc<SessionControl>) {
        let control = Arc::new(SessionControl::default());
        let s = LiveSession {
            route: "/r".into(),
            client: "127.0.0.1:1".parse().expect("addr"),
            subject: None,
            backend: "b".into(),
            started: SystemTime::now(),
            stats: Arc::default(),
            control: control.clone(),
            drains_at_start,
        };
        (s, control)
    }

    #[test]
    fn the_drain_start_tells_only_the_sessions_that_drain_at_once() {
        let registry = Registry::default();
        let (open, open_c) = session(false);
        let (early, early_c) = session(true);
        registry.insert(1, open);
        registry.insert(2, early);
        registry.drain_started();
        assert!(!open_c.told().drain());
        assert!(early_c.told().drain());
        // Those that register later are told as they register, by the same rule.
        let (late, late_c) = session(false);
        let (late_early, late_early_c) = session(true);
        registry.insert(3, late);
        registry.insert(4, late_early);
        assert!(!late_c.told().drain());
        assert!(late_early_c.told().drain());
        registry.drain_all();
        assert!(open_c.told().drain() && late_c.told().drain());
        let (after, after_c) = session(false);
        registry.insert(5, after);
        assert!(after_c.told().drain());
        assert!(!after_c.told().cut() && !after_c.told().close());
    }

    #[test]
    fn the_cut_reaches_open_and_later_sessions_and_close_reaches_one() {
        let registry = Registry::default();
        let (a, a_c) = session(false);
        let (b, b_c) = session(false);
        registry.insert(1, a);
        registry.insert(2, b);
        assert_eq!(registry.close(2).as_deref(), Some("/r"));
        assert_eq!(registry.close(9), None);
        assert!(b_c.told().close() && !a_c.told().close());
        registry.cut_all();
        assert!(a_c.told().cut() && b_c.told().cut());
        assert!(!a_c.told().drain());
        let (c, c_c) = session(false);
        registry.insert(3, c);
        assert!(c_c.told().cut());
        // A session that ended is not told.
        assert!(registry.remove(1).is_some());
        assert!(!registry.drain(1));
    }
}
